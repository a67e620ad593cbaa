"""Shared fixtures: tiny real-format files written per test, stage modules loaded by path, and a
helper that runs a script the way a user does (a subprocess from the repo root)."""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Parse caches go to a throwaway folder, never the user's .cache/ (read when common.runtime loads).
os.environ.setdefault("FER_CACHE_DIR", tempfile.mkdtemp(prefix="fer-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

from common.builtin_faces import make_builtin_dataset, write_fer2013_csv, write_image_folders  # noqa: E402
from common.runtime import import_sibling  # noqa: E402

# The per-epoch log line every stage prints, for tests that read stdout.
LOG_LINE = re.compile(r"^Epoch \d+/\d+ \| train loss \d+\.\d{3} acc \d+\.\d% \| val loss \d+\.\d{3} acc \d+\.\d% "
                      r"f1 \d\.\d{3} \| lr \d\.\de-\d\d \| \d+ img/s \| \d+s( \*)?$")
STAGES = sorted(p.name for p in REPO.glob("[0-9][0-9]_*") if (p / "train.py").is_file())  # the stages that train


def load_stage_module(stage, module):
    """Import NN_stage/module.py under a unique name (four model.py files would collide)."""
    return import_sibling(REPO / stage / f"{module}.py", module)


@pytest.fixture
def stage_module():
    return load_stage_module


def run_script(*args, cwd=REPO, timeout=300):
    """Run `python <args>` from the repo root and return the CompletedProcess (text output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def run():
    return run_script


@pytest.fixture(scope="session")
def small_faces():
    """A small built-in set (7 classes, 48x48), the same for the whole session."""
    return make_builtin_dataset(seed=0, sizes=(1800, 300, 120))


@pytest.fixture(scope="session")
def faces_csv(small_faces, tmp_path_factory):
    """The small built-in set written as fer2013.csv with all three Usage values."""
    path = tmp_path_factory.mktemp("faces") / "fer2013.csv"
    write_fer2013_csv(small_faces, path)
    return path


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory):
    """Fewer faces than faces_csv, for the deeper stages (several times the baseline's cost per image)."""
    path = tmp_path_factory.mktemp("faces-small") / "fer2013.csv"
    write_fer2013_csv(make_builtin_dataset(seed=0, sizes=(256, 70, 70)), path)
    return path


@pytest.fixture
def tiny_faces():
    """A handful of faces per split, for format tests."""
    data = make_builtin_dataset(seed=1, sizes=(21, 7, 7))
    return data


@pytest.fixture
def fer_csv(tiny_faces, tmp_path):
    path = tmp_path / "fer2013.csv"
    write_fer2013_csv(tiny_faces, path)
    return path


@pytest.fixture
def fer_folders(tiny_faces, tmp_path):
    root = tmp_path / "fer2013"
    write_image_folders(tiny_faces, root)
    return root


def tensors_equal(a, b):
    return a.shape == b.shape and torch.equal(a, b)
