"""04_affectnet: the model, a short run on an AffectNet-format tree that learns, 8-class eval
outputs, the built-in 8-class default, resuming a killed run on the cosine schedule, --grayscale."""
import json

import numpy as np
import pytest
import torch
from conftest import LOG_LINE, REPO, load_stage_module
from PIL import Image

from common.builtin_faces import make_builtin_dataset
from common.checkpoint import load_checkpoint, read_metrics_csv
from common.facedata import AFFECTNET_CLASSES

STAGE = "04_affectnet"


def write_affectnet_tree(data, root, seed=0):
    """FaceData (train and test) as the Kaggle layout: Train/<class>/*.png, Test/..., and a root
    labels.csv with an index column and relFCs drawn uniformly from [0.5, 1]."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, folder in (("train", "Train"), ("test", "Test")):
        images, labels = data.splits[split]
        for i, (image, label) in enumerate(zip(images, labels)):
            name = data.class_names[int(label)]
            path = root / folder / name / f"image{folder[:2]}{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.numpy().transpose(1, 2, 0)).save(path)
            rows.append(f"{len(rows)},{name}/{path.name},{name},{rng.uniform(0.5, 1):.3f}\n")
    (root / "labels.csv").write_text(",pth,label,relFCs\n" + "".join(rows))
    return root


@pytest.fixture(scope="module")
def affectnet_tree(tmp_path_factory):
    data = make_builtin_dataset(seed=3, variant="affectnet", sizes=(800, 0, 120))
    return write_affectnet_tree(data, tmp_path_factory.mktemp("affectnet"))


def test_output_shape_and_parameter_count_match_readme():
    model_lib = load_stage_module(STAGE, "model")
    model = model_lib.build_model(num_classes=8, in_channels=3)
    assert model(torch.zeros(2, 3, 96, 96)).shape == (2, 8)
    assert model(torch.zeros(2, 3, 48, 48)).shape == (2, 8)  # global average pooling: any input size
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 2_263_592
    assert f"{n_params:,}" in (REPO / STAGE / "README.md").read_text()
    gray = model_lib.build_model(num_classes=8, in_channels=3, grayscale=True)
    assert sum(p.numel() for p in gray.parameters()) == n_params - 2 * 32 * 9  # the first conv sees 1 channel, not 3
    x = torch.rand(2, 3, 96, 96)
    assert torch.allclose(gray.to_gray(x), (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True))


def test_overfits_one_small_batch():
    torch.manual_seed(0)
    model = load_stage_module(STAGE, "model").build_model(num_classes=8, in_channels=3)
    images, labels = make_builtin_dataset(seed=5, variant="affectnet", sizes=(32, 0, 0)).splits["train"]
    images = torch.nn.functional.interpolate(images.float() / 255, size=48)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(60):  # train loss is ~0 by step 30; BatchNorm's running statistics need the rest
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert (model(images).argmax(1) == labels).float().mean() == 1.0


@pytest.fixture(scope="module")
def trained_run(affectnet_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("run04")
    train = load_stage_module(STAGE, "train")
    history = train.main(["--data", str(affectnet_tree), "--image-size", "48", "--batch-size", "32", "--epochs", "8",
                          "--num-workers", "0",
                          "--out", str(out)])
    return out, history


def test_short_run_learns_with_a_cosine_schedule_and_writes_the_run_folder(trained_run, capsys):
    out, history = trained_run
    assert len(history) == 8
    assert max(row["val_acc"] for row in history) > 0.3  # chance is 1/8; always "happy" scores 24% and f1 0.05
    assert max(row["val_f1"] for row in history) > 0.12
    lrs = [row["lr"] for row in history]
    assert lrs[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs, lrs[1:]))  # cosine: down every epoch
    for name in ("best.pt", "last.pt", "metrics.csv", "config.json", "curves.png"):
        assert (out / name).is_file(), name
    best = load_checkpoint(out / "best.pt")
    assert best["class_names"] == AFFECTNET_CLASSES and best["preprocessing"]["size"] == 48
    assert json.loads((out / "config.json").read_text())["image_size"] == 48


def test_eval_reports_eight_classes_on_the_test_folder(trained_run, capsys):
    out, _ = trained_run
    report = load_stage_module(STAGE, "eval").main(["--checkpoint", str(out / "best.pt"), "--split", "test"])
    printed = capsys.readouterr().out
    assert "contempt" in printed and "macro-F1" in printed
    saved = json.loads((out / "eval_test" / "report.json").read_text())
    cm = torch.tensor(saved["confusion_matrix"])
    assert cm.shape == (8, 8) and cm.sum() == 120  # every Test/ image, not filtered by relFCs
    assert len(saved["per_class"]) == 8 and saved["accuracy"] == pytest.approx(report["accuracy"])


def test_builtin_default_is_the_eight_class_colour_variant(monkeypatch, tmp_path, capsys):
    import common.data as data_lib
    small = data_lib.make_builtin_dataset
    monkeypatch.setattr(data_lib, "make_builtin_dataset", lambda **kw: small(**kw, sizes=(96, 32, 8)))  # 96px is slow to draw
    import common.run as run_lib
    monkeypatch.setattr(run_lib, "find_default_affectnet", lambda: None)  # as on a machine without data/affectnet/
    train = load_stage_module(STAGE, "train")
    history = train.main(["--epochs", "1", "--image-size", "32", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0][len("args: "):])["data"] is None
    assert lines[1].startswith("note: training on the built-in 8-class colour faces")
    assert "classes anger, contempt, disgust" in lines[2] and LOG_LINE.match(lines[3]), lines[3]
    assert load_checkpoint(tmp_path / "last.pt")["config"]["data"] == "builtin-affectnet" and len(history) == 1


def test_a_killed_run_resumes_on_the_same_cosine_schedule(affectnet_tree, tmp_path, monkeypatch):
    train = load_stage_module(STAGE, "train")
    common = ["--data", str(affectnet_tree), "--image-size", "32", "--batch-size", "128", "--grayscale", "--epochs", "3",
              "--num-workers", "0"]  # a persistent worker's augmentation RNG is not in the checkpoint
    straight = train.main(common + ["--out", str(tmp_path / "straight")])
    write_metrics = train.write_metrics_csv

    def killed_after_epoch_two(path, history):  # last.pt of epoch 2 is on disk when this runs
        if len(history) == 2:
            raise KeyboardInterrupt
        write_metrics(path, history)

    monkeypatch.setattr(train, "write_metrics_csv", killed_after_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train.main(common + ["--out", str(tmp_path / "killed")])
    monkeypatch.setattr(train, "write_metrics_csv", write_metrics)
    resumed = train.main(["--resume", str(tmp_path / "killed" / "last.pt")])
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert [r["lr"] for r in resumed] == pytest.approx([r["lr"] for r in straight])
    assert resumed[-1]["val_loss"] == pytest.approx(straight[-1]["val_loss"], abs=1e-5)
    checkpoint = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert checkpoint["model_kwargs"] == {"grayscale": True}
    model = load_stage_module(STAGE, "eval").load_model(checkpoint)  # rebuilt with the gray first layer
    assert model.features[0][0].in_channels == 1
    assert len(read_metrics_csv(tmp_path / "killed" / "metrics.csv")) == 3


def test_cli_run_prints_the_log_format_and_relfc_counts(run, affectnet_tree, tmp_path):
    result = run(f"{STAGE}/train.py", "--data", affectnet_tree, "--epochs", "1", "--image-size", "32",
                 "--min-relfc", "0.9", "--out", tmp_path / "cli")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("args: ") and lines[1].startswith(f"stage {STAGE} | device cpu")
    assert LOG_LINE.match(lines[2]), lines[2]
    assert "train rows with relFCs >= 0.9:" in result.stderr and "contempt" in result.stderr
    bad = run(f"{STAGE}/train.py", "--data", "builtin", "--min-relfc", "0.8", "--epochs", "1")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        "error: the built-in faces have no relFCs scores; drop --min-relfc or give --data an AffectNet tree"]
