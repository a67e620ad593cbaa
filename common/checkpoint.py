"""Atomic checkpoint and run-file I/O.

A checkpoint holds only plain types (tensors, dicts, lists, str, int, float, bool, None) so
that `torch.load(weights_only=True)` opens it: that mode refuses arbitrary pickled objects,
which is what makes loading a checkpoint from someone else safe.
"""
import csv
import hashlib
import json
import os
import pickle
import random
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from common.runtime import REPO_ROOT, RUNS_DIR, UserError

WEIGHTS_DIR = REPO_ROOT / "weights"  # the trained models that ship with the course
MANIFEST = WEIGHTS_DIR / "manifest.json"  # per file: stage, SHA-256, PrivateTest numbers, how it was made


class WriteError(UserError):
    """A file could not be written (a full disk, a read-only folder); the previous file is unchanged."""


def atomic_write(path, write_fn, mode="wb"):
    """Write through a temporary file in the same folder, then rename over `path`.

    A run killed halfway through a save leaves the previous file intact instead of a
    truncated one (os.replace is atomic on the same file system). The next training run in the
    folder removes the temporary file such a kill leaves behind.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private (0600); give the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):  # ENOSPC, EACCES, EROFS...: one line naming the file, not a traceback
            reason = (e.strerror or type(e).__name__).lower()
            raise WriteError(f"{path}: could not be written: {reason}; the previous file, if any, is unchanged") from None
        if isinstance(e.__context__, SystemExit):  # a second Ctrl-C inside torch.save, which reports it as
            raise e.__context__ from None  # a broken zip file: the exit is what the user asked for
        raise


def save_checkpoint(path, state):
    atomic_write(path, lambda f: torch.save(state, f))


COURSE_KEYS = ("stage", "model", "class_names", "preprocessing")  # what every train.py saves, and eval needs


def load_checkpoint(path):
    """Load on the CPU whatever device saved it; the caller moves the model where it wants.

    Refused, each with one line: a missing or damaged file, a pickle that would run code, bare
    weights (a state_dict) without the course's keys, and weights that are NaN or infinite.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; pass the best.pt or last.pt of a run folder")
    warn_if_altered(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged or foreign file
        refused = re.search(r"GLOBAL ([\w.]+)", str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if refused:  # weights_only refused it: unpickling would import (and could run) that Python object
            raise UserError(f"{path}: refused: loading it would import {refused.group(1)}, which no checkpoint of this "
                            f"course contains; use a best.pt or last.pt written by train.py") from None
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))  # past torch's advice to unpickle anyway
        reason = reason.group(1) if reason else (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: not a readable checkpoint of this course ({reason}); is it a damaged or "
                        f"unfinished copy? Use the best.pt or last.pt of a run folder") from None
    if isinstance(checkpoint, dict) and checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        raise UserError(f"{path}: holds bare model weights (a state_dict), not a checkpoint of this course; "
                        f"use the best.pt or last.pt that a stage's train.py writes")
    if isinstance(checkpoint, dict) and "int8_scales" in checkpoint:  # written by 05_deploy/slim.py --dtype int8
        scales = checkpoint.pop("int8_scales")
        for name, scale in scales.items():
            checkpoint["model"][name] = checkpoint["model"][name].float() * scale
    if isinstance(checkpoint, dict) and "model" in checkpoint:
        weights = [v for v in checkpoint["model"].values() if torch.is_tensor(v) and v.is_floating_point()]
        bad = sum(int((~torch.isfinite(v)).sum()) for v in weights)
        if bad:
            raise UserError(f"{path}: {bad} of its {sum(v.numel() for v in weights)} weights are NaN or infinite "
                            f"(the run that saved it diverged); retrain with a lower --lr")
    return checkpoint


def require_course_keys(checkpoint, path):
    """Stop with one line when `checkpoint` lacks what a course checkpoint always holds."""
    missing = [key for key in COURSE_KEYS if key not in checkpoint]
    if not isinstance(checkpoint, dict) or missing:
        raise UserError(f"{path}: not a checkpoint of this course (no {', '.join(missing) or 'keys'}); "
                        f"pass the best.pt or last.pt of a run folder")


# ---------------------------------------------------------------- shipped weights

def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest():
    """The shipped files as a list of dicts (empty when weights/ has none)."""
    if not MANIFEST.is_file():
        return []
    return json.loads(MANIFEST.read_text())["files"]


def warn_if_altered(path):
    """A shipped file whose bytes differ from the recorded SHA-256 still loads (if it can), with a warning:
    its numbers in the README no longer describe it."""
    path = Path(path).resolve()
    if path.parent != WEIGHTS_DIR:
        return
    for entry in read_manifest():
        if entry["file"] == path.name and sha256(path) != entry["sha256"]:
            print(f"warning: {path}: SHA-256 differs from weights/manifest.json; this is not the shipped file, "
                  f"and the README's numbers do not describe it", file=sys.stderr)


def best_shipped_model(classes=None):
    """The shipped file with the highest PrivateTest accuracy (optionally among those with these classes)."""
    entries = [e for e in read_manifest() if (WEIGHTS_DIR / e["file"]).is_file()
               and (classes is None or e["class_names"] == classes)]
    if not entries:
        return None, None
    best = max(entries, key=lambda e: e["test_accuracy"])
    return WEIGHTS_DIR / best["file"], best


def default_output_dir(checkpoint_path, name):
    """Where eval/export write by default: beside a run's checkpoint, or under runs/shipped/ for a shipped file
    (weights/ holds only what ships)."""
    checkpoint_path = Path(checkpoint_path).resolve()
    if checkpoint_path.parent == WEIGHTS_DIR:
        return RUNS_DIR / "shipped" / checkpoint_path.stem / name
    return checkpoint_path.parent / name


def get_rng_states():
    """Every RNG a training run draws from, as tensors and plain numbers."""
    np_state = np.random.get_state()  # ('MT19937', keys ndarray, pos, has_gauss, cached_gaussian)
    py_state = random.getstate()  # (version, tuple of 625 ints, gauss_next)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
    }


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def write_metrics_csv(path, history):
    """history: a list of per-epoch dicts with the same keys. Rewritten whole each epoch, so a
    resumed run never carries rows from epochs it rolled back."""
    if not history:
        return
    fields = list(history[0].keys())

    def write(f):
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)

    atomic_write(path, write, mode="w")


def read_metrics_csv(path):
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet may add a BOM
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_json(path, obj):
    atomic_write(path, lambda f: json.dump(obj, f, indent=2), mode="w")


def _number(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
