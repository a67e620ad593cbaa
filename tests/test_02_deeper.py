"""02_deeper: the model, augmentation, class imbalance options, a run that learns, eval, resume."""
import argparse
import json
import math

import pytest
import torch
from conftest import LOG_LINE, REPO, load_stage_module

from common.builtin_faces import make_builtin_dataset
from common.checkpoint import load_checkpoint, read_metrics_csv
from common.metrics import class_weights
from common.runtime import UserError

STAGE = "02_deeper"


def test_output_shape_and_parameter_count_match_readme():
    model = load_stage_module(STAGE, "model").build_model(num_classes=7)
    assert model(torch.zeros(3, 1, 48, 48)).shape == (3, 7)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 1_231_207
    assert f"{n_params:,}" in (REPO / STAGE / "README.md").read_text()


def test_batchnorm_after_every_conv_and_spatial_dropout_in_every_block():
    model = load_stage_module(STAGE, "model").build_model(num_classes=7)
    layers = list(model.modules())
    convs = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 7
    assert all(isinstance(layers[i + 1], torch.nn.BatchNorm2d) for i in convs)
    assert sum(isinstance(m, torch.nn.Dropout2d) for m in layers) == 4
    assert isinstance(model.pool, torch.nn.AdaptiveAvgPool2d)  # global average pooling: any input size works
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 7)


def test_overfits_one_small_batch(small_faces):
    torch.manual_seed(0)
    model = load_stage_module(STAGE, "model").build_model(num_classes=7)
    images = (small_faces.splits["train"][0][:16].float() / 255 - 0.5) / 0.25
    labels = small_faces.splits["train"][1][:16]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert (model(images).argmax(1) == labels).float().mean() >= 0.9


def test_augmentation_is_random_on_uint8_and_ends_normalised(small_faces):
    train = load_stage_module(STAGE, "train")
    image = small_faces.splits["train"][0][0]  # uint8 (1, 48, 48)
    transform = train.build_train_transform(small_faces.preprocessing)
    torch.manual_seed(0)
    a, b = transform(image), transform(image)
    assert a.dtype == torch.float32 and a.shape == (1, 48, 48)
    assert not torch.equal(a, b)
    mean, std = small_faces.preprocessing["mean"][0], small_faces.preprocessing["std"][0]
    assert (0 - mean) / std - 1e-4 <= a.min() and a.max() <= (1 - mean) / std + 1e-4  # normalised, not 0-255


def test_class_weights_are_inverse_frequency_and_average_one():
    labels = torch.tensor([0] * 8 + [1] * 2 + [2] * 6)
    weights = class_weights(labels, 3)
    assert weights[1] / weights[0] == pytest.approx(4.0)
    assert weights[labels].mean() == pytest.approx(1.0)
    soft = torch.nn.functional.one_hot(labels, 3).float()  # FER+ vote shares give the same weights
    assert torch.allclose(class_weights(soft, 3), weights)


def test_balanced_sampler_draws_classes_about_equally():
    train = load_stage_module(STAGE, "train")
    data = make_builtin_dataset(seed=0, sizes=(700, 70, 7))
    args = argparse.Namespace(batch_size=64, num_workers=0, seed=0, balanced_sampler=True)
    loader, _ = train.build_loaders(args, data)
    torch.manual_seed(0)
    drawn = data.splits["train"][1][list(loader.sampler)]
    share = torch.bincount(drawn, minlength=7).float() / len(drawn)
    plain = torch.bincount(data.splits["train"][1], minlength=7).float() / len(drawn)
    assert plain[1] < 0.03 and plain[3] > 0.2  # disgust rare, happy common, as in FER2013
    assert (share - 1 / 7).abs().max() < 0.06


@pytest.fixture(scope="module")
def trained_run(small_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("run02")
    train = load_stage_module(STAGE, "train")
    history = train.main(["--data", str(small_csv), "--epochs", "4", "--out", str(out), "--num-workers", "0",
                          "--batch-size", "32"])
    return out, history


def test_short_run_learns_and_writes_the_run_folder(trained_run):
    out, history = trained_run
    assert len(history) == 4
    assert min(row["train_loss"] for row in history[1:]) < history[0]["train_loss"]
    for name in ("best.pt", "last.pt", "metrics.csv", "config.json", "curves.png"):
        assert (out / name).is_file(), name
    assert [row["epoch"] for row in read_metrics_csv(out / "metrics.csv")] == list(range(1, 5))
    last = load_checkpoint(out / "last.pt")
    assert last["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]  # from lr towards 0 over 4 epochs
    assert [row["lr"] for row in history] == pytest.approx(cosine)


def test_eval_reports_and_refuses_attention_maps(trained_run, capsys):
    out, _ = trained_run
    eval_lib = load_stage_module(STAGE, "eval")
    report = eval_lib.main(["--checkpoint", str(out / "best.pt"), "--split", "val"])
    assert "macro-F1" in capsys.readouterr().out
    saved = json.loads((out / "eval_val" / "report.json").read_text())
    assert (out / "eval_val" / "confusion.png").is_file()
    assert saved["accuracy"] == pytest.approx(report["accuracy"]) and sum(map(sum, saved["confusion_matrix"])) == 70
    with pytest.raises(UserError, match="no attention maps; use 03_attention"):
        eval_lib.main(["--checkpoint", str(out / "best.pt"), "--split", "val", "--attention"])


def test_resume_restores_model_optimizer_scheduler_and_early_stopping(small_csv, tmp_path):
    train = load_stage_module(STAGE, "train")
    common = ["--data", str(small_csv), "--num-workers", "0", "--class-weights"]
    straight = train.main(common + ["--epochs", "2", "--out", str(tmp_path / "straight")])
    train.main(common + ["--epochs", "1", "--out", str(tmp_path / "stopped")])
    resumed = train.main(["--resume", str(tmp_path / "stopped" / "last.pt"), "--epochs", "2"])
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert resumed[-1]["val_loss"] == pytest.approx(straight[-1]["val_loss"], abs=1e-5)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert all(torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5) for k in a["model"])
    assert a["scheduler"] == b["scheduler"] and a["bad_epochs"] == b["bad_epochs"]
    assert b["config"]["class_weights"] is True


def test_cli_run_with_default_workers_prints_the_log_lines(run, small_csv, tmp_path):
    result = run(f"{STAGE}/train.py", "--data", small_csv, "--epochs", "1", "--out", tmp_path / "cli")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("args: ") and '"num_workers": 1' in lines[0]
    assert lines[1].startswith(f"stage {STAGE} | device cpu | 1,231,207 parameters")
    assert LOG_LINE.match(lines[2]), lines[2]
    assert lines[-1].startswith("done | best epoch")
