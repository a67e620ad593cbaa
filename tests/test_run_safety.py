"""A user's work is never lost or silently replaced: run folders, Ctrl-C and SIGTERM, resume, determinism."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

from common.builtin_faces import make_builtin_dataset, write_fer2013_csv
from common.checkpoint import load_checkpoint, read_metrics_csv
from common.runfolder import claim_run_folder
from common.runtime import UserError

STAGE = "01_baseline"


@pytest.fixture(scope="module")
def csv_1600(tmp_path_factory):
    """Enough training faces (400 steps of 4) for a signal sent 2 s into training to land in the
    middle of the first epoch, on an idle machine too (with 100 steps the epoch could end first)."""
    path = tmp_path_factory.mktemp("faces-1600") / "fer2013.csv"
    write_fer2013_csv(make_builtin_dataset(seed=0, sizes=(1600, 21, 14)), path)
    return path


def weights(path):
    return load_checkpoint(path)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def start(*args, stage=STAGE):
    return subprocess.Popen([sys.executable, f"{stage}/train.py", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_training(process, stage=STAGE):
    """Read stdout up to the header line: from then on the epoch loop runs."""
    lines = []
    while not lines or not lines[-1].startswith(f"stage {stage}"):
        lines.append(process.stdout.readline())
        assert lines[-1], "the run ended before training began"
    time.sleep(2)  # some steps into epoch 1
    return lines


@pytest.mark.parametrize("stage", [STAGE, "07_fast"])  # 07_fast: its own loop, with sums kept on the device
def test_sigint_saves_mid_epoch_and_resume_gives_the_uninterrupted_run(csv_1600, tmp_path, run, stage):
    recipe = ["--data", csv_1600, "--batch-size", "4", "--epochs", "1", "--num-workers", "0"]
    process = start(*recipe, "--out", tmp_path / "stopped", stage=stage)
    wait_for_training(process, stage)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    last = tmp_path / "stopped" / "last.pt"
    progress = load_checkpoint(last)["progress"]  # None if the signal came while validating (a slow machine)
    epoch, step = (progress["epoch"], progress["step"]) if progress else (load_checkpoint(last)["epoch"], 100)
    assert out.splitlines()[-1] == (f"stopped at epoch {epoch} step {step}; "
                                    f"continue with: python {stage}/train.py --resume {last}")
    assert not (tmp_path / "stopped" / ".lock").exists()

    resumed = run(f"{stage}/train.py", "--resume", last)
    assert resumed.returncode == 0, resumed.stderr
    straight = run(f"{stage}/train.py", *recipe, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    assert same_weights(weights(last), weights(tmp_path / "straight" / "last.pt"))
    a, b = read_metrics_csv(tmp_path / "stopped" / "metrics.csv"), read_metrics_csv(tmp_path / "straight" / "metrics.csv")
    assert [r["val_f1"] for r in a] == [r["val_f1"] for r in b]
    if progress:  # the stopped epoch's time is its two parts together, before and after the stop
        assert a[0]["seconds"] > progress["seconds"] > 0
    # 07_fast sums the loss on the device, in float32, and adds the two parts of the stopped epoch afterwards
    tolerance = 0 if stage == STAGE else 1e-6
    assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b], rel=tolerance, abs=0)


def test_sigterm_exits_143_and_a_second_ctrl_c_exits_at_once(csv_1600, tmp_path):
    process = start("--data", csv_1600, "--batch-size", "4", "--epochs", "1", "--out", tmp_path / "term")
    wait_for_training(process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in err
    assert out.splitlines()[-1].startswith("stopped at epoch 1 step ")

    # many epochs, so the run cannot end on its own before the signals arrive
    process = start("--data", csv_1600, "--batch-size", "100", "--epochs", "50", "--out", tmp_path / "twice")
    wait_for_training(process)
    process.send_signal(signal.SIGINT)
    for line in process.stderr:  # ends at EOF: a run that exits without the notice fails below
        if line.startswith("SIGINT: stopping after this step"):
            break
    else:
        pytest.fail("the run ended without saying it would stop after this step")
    process.send_signal(signal.SIGINT)  # while that step still runs
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err
    assert "stopped at epoch" not in out  # it did not wait to save
    assert not list((tmp_path / "twice").glob(".*.tmp"))


def test_same_seed_and_workers_give_identical_runs(small_csv, tmp_path, stage_module):
    train = stage_module(STAGE, "train")
    recipe = ["--data", str(small_csv), "--epochs", "2", "--batch-size", "32", "--num-workers", "0"]
    a = train.main(recipe + ["--out", str(tmp_path / "a")])
    b = train.main(recipe + ["--out", str(tmp_path / "b")])
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert same_weights(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt"))


def test_a_run_folder_is_refused_continued_or_replaced_only_on_request(small_csv, tmp_path, stage_module, capsys):
    train = stage_module(STAGE, "train")
    out = tmp_path / "run"
    recipe = ["--data", str(small_csv), "--batch-size", "64", "--out", str(out)]
    train.main(recipe + ["--epochs", "1"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="already holds a run"):
        train.main(recipe + ["--epochs", "1"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    capsys.readouterr()
    history = train.main(["--resume", str(out / "last.pt"), "--epochs", "2", "--lr", "0.5", "--batch-size", "8"])
    printed = capsys.readouterr().out
    assert "ignored: --batch-size 8, --lr 0.5 (a resumed run keeps its data and recipe" in printed
    assert f"note: continuing the run in {out}" in printed and len(history) == 2
    history = train.main(recipe + ["--epochs", "1", "--overwrite"])
    assert f"note: --overwrite: replacing the run in {out}" in capsys.readouterr().out and len(history) == 1
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_default_run_folders_are_unique_and_stale_temporary_files_go(tmp_path, monkeypatch):
    import common.runfolder as runfolder
    monkeypatch.setattr(runfolder, "RUNS_DIR", tmp_path / "runs")
    args = type("Args", (), {"out": None, "resume": None, "overwrite": False})
    first, second = claim_run_folder(args, "00_test"), claim_run_folder(args, "00_test")
    assert first != second and first.parent == second.parent  # the same second, two folders
    (first / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    args.out = str(first)
    assert claim_run_folder(args, "00_test") == first
    assert not (first / ".last.pt.abc123.tmp").exists()


def test_best_pt_is_saved_before_last_pt(stage_module, small_csv, tmp_path, monkeypatch):
    train = stage_module(STAGE, "train")
    saved = []
    save = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint", lambda path, state: saved.append(path.name) or save(path, state))
    train.main(["--data", str(small_csv), "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "run")])
    assert saved == ["best.pt", "last.pt"]
