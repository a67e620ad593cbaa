"""train.py --wandb: an offline W&B run holding the config, every metrics.csv row, the pictures and
best.pt; --resume continuing the same W&B run; a one-line note when the package is missing.

The W&B tests need `pip install -r requirements-tracking.txt` (CI installs it) and skip without.
They run offline (WANDB_MODE=offline) with every W&B folder in a temporary folder: no network.
"""
import json
import struct
import sys
import time

import pytest
from conftest import STAGES, load_stage_module

from common.checkpoint import load_checkpoint, read_metrics_csv

QUICK = ["--epochs", "1", "--num-workers", "0"]
STAGE_FLAGS = {"04_affectnet": ["--image-size", "48"]}  # 48x48 faces: fast, and the CSV's own size


@pytest.fixture(scope="module")
def offline_wandb(tmp_path_factory):
    """W&B installed, offline, writing only under a temporary folder (its settings are read once per process)."""
    pytest.importorskip("wandb")
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_API_KEY", raising=False)
        for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(name, str(home / name.lower()))
        yield home


def wandb_records(path):
    """The records of an offline run file (run-<id>.wandb): W&B's LevelDB-style log of protobuf records,
    read here instead of through W&B so the test sees exactly what `wandb sync` would upload."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, chunk = 7, b""  # after the header: ":W&B", magic (2 bytes), version (1 byte)
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])  # CRC, length, FULL/FIRST/MIDDLE/LAST
        if pos + 7 + length > len(data):  # still being written
            return
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def finished_records(folder, timeout=60):
    """The records of the run in `folder` once its last (exit) record is on disk. W&B's own process
    writes the file: run.finish() may return a moment before everything is written."""
    deadline = time.time() + timeout
    while True:
        records = list(wandb_records(next(folder.glob("run-*.wandb"))))
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.time() > deadline:
            return records
        time.sleep(0.2)


def read_offline_run(folder):
    """config, history rows and artifact names of one offline-run-<time>-<id> folder."""
    config, rows, artifacts = {}, [], []
    for record in finished_records(folder):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
        elif kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind == "artifact":
            artifacts.append((record.artifact.name, [entry.path for entry in record.artifact.manifest.contents]))
    return config, rows, artifacts


def offline_runs(out):
    return sorted((out / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("stage", STAGES)
def test_wandb_offline_run_holds_config_metrics_pictures_and_best_pt(stage, small_csv, offline_wandb, tmp_path, capsys):
    out = tmp_path / "run"
    train = load_stage_module(stage, "train")
    history = train.main(["--data", str(small_csv), "--out", str(out), "--wandb", *QUICK, *STAGE_FLAGS.get(stage, [])])
    printed = capsys.readouterr().out
    [folder] = offline_runs(out)  # under the run folder: everything about a run in one place
    assert f"upload it later with: wandb sync {folder}" in printed

    config, rows, artifacts = read_offline_run(folder)
    assert config["stage"] == stage and config["lr"] == train.get_args([])[0].lr and config["wandb"] is True
    assert folder.name.endswith(json.loads((out / "config.json").read_text())["wandb_id"])
    metrics = [row for row in rows if "val_f1" in row]
    assert [row["epoch"] for row in metrics] == [r["epoch"] for r in history] == [1]
    csv_row = read_metrics_csv(out / "metrics.csv")[0]
    assert all(metrics[0][key] == pytest.approx(value) for key, value in csv_row.items())
    pictures = {key.split("/")[0] for row in rows for key in row if key.endswith("/path")}
    assert pictures == {"confusion_val", "curves"}
    assert [paths for _, paths in artifacts] == [["best.pt"]]


def test_resume_continues_the_same_wandb_run(small_csv, offline_wandb, tmp_path, capsys):
    train = load_stage_module("01_baseline", "train")
    out = tmp_path / "run"
    train.main(["--data", str(small_csv), "--out", str(out), "--wandb", *QUICK])
    run_id = load_checkpoint(out / "last.pt")["config"]["wandb_id"]
    train.main(["--resume", str(out / "last.pt"), "--epochs", "2"])
    capsys.readouterr()

    first, second = offline_runs(out)  # offline, each session is its own folder; `wandb sync` joins them by id
    assert first.name.endswith(run_id) and second.name.endswith(run_id)
    assert load_checkpoint(out / "last.pt")["config"]["wandb_id"] == run_id
    assert [row["epoch"] for row in read_offline_run(second)[1] if "val_f1" in row] == [2]
    assert json.loads((out / "config.json").read_text())["wandb_id"] == run_id


def test_without_the_package_one_note_and_training_goes_on(small_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    out = tmp_path / "run"
    history = load_stage_module("01_baseline", "train").main(["--data", str(small_csv), "--out", str(out), "--wandb", *QUICK])
    notes = [line for line in capsys.readouterr().out.splitlines() if "wandb" in line and not line.startswith("args:")]
    assert notes == ["note: --wandb needs the wandb package (pip install -r requirements-tracking.txt); "
                     "continuing without it (metrics.csv has the same numbers)"]
    assert len(history) == 1 and (out / "best.pt").is_file() and not (out / "wandb").exists()
