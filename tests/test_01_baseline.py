"""01_baseline: the model, a run that learns, the run folder, eval outputs, resume, bad input."""
import json

import pytest
import torch
from conftest import LOG_LINE, REPO, load_stage_module

from common.checkpoint import load_checkpoint, read_metrics_csv

STAGE = "01_baseline"


def test_output_shape_and_parameter_count_match_readme():
    model = load_stage_module(STAGE, "model").build_model(num_classes=7)
    assert model(torch.zeros(3, 1, 48, 48)).shape == (3, 7)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 1_232_775  # 832 + 51,264 + 1,179,776 + 903
    assert f"{n_params:,}" in (REPO / STAGE / "README.md").read_text()


def test_overfits_one_small_batch(small_faces):
    torch.manual_seed(0)
    model = load_stage_module(STAGE, "model").build_model(num_classes=7)
    images = small_faces.splits["train"][0][:32].float() / 255
    labels = small_faces.splits["train"][1][:32]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert (model(images).argmax(1) == labels).float().mean() == 1.0


@pytest.fixture(scope="module")
def trained_run(faces_csv, tmp_path_factory):
    """A short in-process run on the small built-in faces, shared by the tests below."""
    out = tmp_path_factory.mktemp("run01")
    train = load_stage_module(STAGE, "train")
    history = train.main(["--data", str(faces_csv), "--epochs", "6", "--out", str(out), "--patience", "6"])
    return out, history


def test_short_run_learns_and_writes_the_run_folder(trained_run):
    out, history = trained_run
    assert len(history) == 6
    assert max(row["val_acc"] for row in history) > 0.5  # chance is 1/7; the majority class is 25%
    for name in ("best.pt", "last.pt", "metrics.csv", "config.json", "curves.png"):
        assert (out / name).is_file(), name
    assert [row["epoch"] for row in read_metrics_csv(out / "metrics.csv")] == list(range(1, 7))
    best = load_checkpoint(out / "best.pt")
    assert best["best_f1"] == pytest.approx(max(row["val_f1"] for row in history))
    assert json.loads((out / "config.json").read_text())["epochs"] == 6


def test_eval_reports_table_confusion_and_json(trained_run, capsys):
    out, _ = trained_run
    report = load_stage_module(STAGE, "eval").main(["--checkpoint", str(out / "best.pt"), "--split", "test"])
    printed = capsys.readouterr().out
    assert "macro-F1" in printed and "true \\ pred" in printed
    saved = json.loads((out / "eval_test" / "report.json").read_text())
    assert (out / "eval_test" / "confusion.png").is_file()
    cm = torch.tensor(saved["confusion_matrix"])
    assert cm.sum() == 120 and saved["split"] == "test"
    assert saved["accuracy"] == pytest.approx(cm.diag().sum().item() / 120) == pytest.approx(report["accuracy"])
    assert [row["support"] for row in saved["per_class"]] == cm.sum(1).tolist()
    rows = read_metrics_csv(out / "eval_test" / "predictions.csv")  # one row per test image
    assert len(rows) == 120
    assert sum(row["label"] == row["prediction"] for row in rows) == cm.diag().sum().item()


def test_checkpoint_round_trip_gives_the_same_predictions(trained_run, small_faces):
    out, _ = trained_run
    checkpoint = torch.load(out / "best.pt", map_location="cpu", weights_only=True)  # plain types only
    model = load_stage_module(STAGE, "eval").load_model(checkpoint).eval()
    again = load_stage_module(STAGE, "eval").load_model(load_checkpoint(out / "best.pt")).eval()
    x = torch.randn(4, 1, 48, 48)
    assert torch.equal(model(x), again(x))
    assert checkpoint["class_names"][3] == "happy" and checkpoint["stage"] == STAGE


def test_resume_continues_exactly_where_a_run_stopped(faces_csv, tmp_path):
    train = load_stage_module(STAGE, "train")
    common = ["--data", str(faces_csv), "--patience", "9"]
    straight = train.main(common + ["--epochs", "3", "--out", str(tmp_path / "straight")])
    train.main(common + ["--epochs", "2", "--out", str(tmp_path / "stopped")])
    resumed = train.main(["--resume", str(tmp_path / "stopped" / "last.pt"), "--epochs", "3"])
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert resumed[-1]["val_loss"] == pytest.approx(straight[-1]["val_loss"], abs=1e-6)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "stopped" / "last.pt")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert len(read_metrics_csv(tmp_path / "stopped" / "metrics.csv")) == 3


def test_quick_start_command_runs_from_the_repo_root(run, tmp_path):
    """`python 01_baseline/train.py` as the README gives it (one epoch, built-in faces)."""
    result = run(f"{STAGE}/train.py", "--epochs", "1", "--out", tmp_path / "quick", "--data", "builtin")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("args: ") and lines[1].startswith(f"stage {STAGE} | device cpu")
    assert LOG_LINE.match(lines[2]), lines[2]
    assert lines[-1].startswith("done | best epoch 1")
    assert "Traceback" not in result.stderr


def test_eval_without_a_test_split_says_so_in_one_line(run, trained_run, tmp_path):
    out, _ = trained_run
    dev = tmp_path / "dev.csv"
    rows = [line for line in open(load_checkpoint(out / "best.pt")["config"]["data"]) if "PrivateTest" not in line]
    dev.write_text("".join(rows))
    result = run(f"{STAGE}/eval.py", "--checkpoint", out / "best.pt", "--data", dev)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"error: {dev}: has no PrivateTest rows, so no 'test' split; use the "
                                                  "complete fer2013.csv (Training, PublicTest and PrivateTest rows; "
                                                  "see README), or pick another --split"]


@pytest.mark.parametrize("args,message", [
    (["--data", "missing.csv"], "missing.csv: no such file or folder"),
    (["--resume", "missing/last.pt"], "missing/last.pt: checkpoint not found"),
])
def test_bad_input_is_one_line_without_traceback(run, args, message):
    result = run(f"{STAGE}/train.py", *args, "--epochs", "1")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
