"""03_attention: CBAM shapes and ranges, the model, a run that learns, eval with attention maps, resume."""
import json

import pytest
import torch
from conftest import LOG_LINE, REPO, load_stage_module

from common.checkpoint import load_checkpoint, read_metrics_csv

STAGE = "03_attention"


def test_output_shape_and_parameter_count_match_readme():
    model = load_stage_module(STAGE, "model").build_model(num_classes=7)
    assert model(torch.zeros(3, 1, 48, 48)).shape == (3, 7)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 327_629
    assert f"{n_params:,}" in (REPO / STAGE / "README.md").read_text()


def test_cbam_keeps_the_shape_and_its_maps_lie_in_0_1():
    model_lib = load_stage_module(STAGE, "model")
    cbam = model_lib.CBAM(64)
    x = torch.randn(2, 64, 12, 12) * 3
    y = cbam(x)
    assert y.shape == x.shape
    assert cbam.last_map.shape == (2, 1, 12, 12)
    assert 0 <= cbam.last_map.min() and cbam.last_map.max() <= 1
    channel = cbam.channel(x)
    assert channel.shape == (2, 64, 1, 1) and 0 <= channel.min() and channel.max() <= 1
    # the output is the input scaled by both gates, so it can only shrink in magnitude
    assert torch.all(y.abs() <= x.abs() + 1e-6)
    assert sum(p.numel() for p in model_lib.SpatialAttention(7).parameters()) == 2 * 7 * 7


def test_attention_maps_have_the_input_size_and_follow_the_spatial_gates():
    model = load_stage_module(STAGE, "model").build_model(num_classes=7).eval()
    x = torch.randn(4, 1, 48, 48)
    maps = model.attention_maps(x)
    assert maps.shape == (4, 1, 48, 48)
    assert 0 <= maps.min() and maps.max() <= 1
    cbams = [m for m in model.modules() if m.__class__.__name__ == "CBAM"]
    assert [tuple(m.last_map.shape[-2:]) for m in cbams] == [(24, 24), (12, 12), (6, 6)]
    assert not torch.allclose(maps[0], maps[1])  # one map per face, not one for the batch


def test_overfits_one_small_batch(small_faces):
    torch.manual_seed(0)
    model = load_stage_module(STAGE, "model").build_model(num_classes=7)
    images = (small_faces.splits["train"][0][:16].float() / 255 - 0.5) / 0.25
    labels = small_faces.splits["train"][1][:16]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert (model(images).argmax(1) == labels).float().mean() >= 0.9


def test_augment_flag_chooses_the_transform(small_faces):
    train = load_stage_module(STAGE, "train")
    light = train.build_train_transform(small_faces.preprocessing, "light")
    rich = train.build_train_transform(small_faces.preprocessing, "v3")
    names = lambda t: [type(step).__name__ for step in t.transforms]  # noqa: E731
    assert names(light)[:2] == ["RandomHorizontalFlip", "RandomRotation"]
    assert "RandomAffine" in names(rich) and "RandomErasing" in names(rich)
    assert light(small_faces.splits["train"][0][0]).shape == (1, 48, 48)


@pytest.fixture(scope="module")
def trained_run(small_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("run03")
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
    assert load_checkpoint(out / "last.pt")["config"]["augment"] == "light"


def test_eval_writes_the_attention_grid(trained_run, capsys):
    out, _ = trained_run
    report = load_stage_module(STAGE, "eval").main(["--checkpoint", str(out / "best.pt"), "--split", "test",
                                                    "--attention"])
    assert "macro-F1" in capsys.readouterr().out
    folder = out / "eval_test"
    assert (folder / "confusion.png").is_file() and (folder / "attention.png").stat().st_size > 10_000
    saved = json.loads((folder / "report.json").read_text())
    assert saved["accuracy"] == pytest.approx(report["accuracy"]) and sum(map(sum, saved["confusion_matrix"])) == 70


def test_resume_continues_exactly_where_a_run_stopped(small_csv, tmp_path):
    train = load_stage_module(STAGE, "train")
    common = ["--data", str(small_csv), "--num-workers", "0"]
    straight = train.main(common + ["--epochs", "2", "--out", str(tmp_path / "straight")])
    train.main(common + ["--epochs", "1", "--out", str(tmp_path / "stopped")])
    resumed = train.main(["--resume", str(tmp_path / "stopped" / "last.pt"), "--epochs", "2"])
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert resumed[-1]["val_loss"] == pytest.approx(straight[-1]["val_loss"], abs=1e-5)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert all(torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5) for k in a["model"])
    assert a["scheduler"] == b["scheduler"]


def test_cli_run_prints_the_log_lines(run, small_csv, tmp_path):
    result = run(f"{STAGE}/train.py", "--data", small_csv, "--epochs", "1", "--out", tmp_path / "cli")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith(f"stage {STAGE} | device cpu | 327,629 parameters")
    assert LOG_LINE.match(lines[2]), lines[2]
    assert lines[-1].startswith("done | best epoch 1")
