"""Repo paths, seeding, device choice and loading a stage's sibling modules by path."""
import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import torch

# UserError, the course's one error type, is defined in facedata.py, which every other module builds on,
# so that any module can raise it; scripts import it from here, with the rest of what they need.
from common.facedata import UserError  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"
RUNS_DIR = REPO_ROOT / "runs"


def seed_everything(seed):
    """Seed Python, NumPy and torch (CPU and every GPU) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS generators


def seed_worker(worker_id):
    """DataLoader worker_init_fn: each worker gets its own, reproducible Python/NumPy seed.

    torch already seeds workers from the loader's generator; Python's `random` and NumPy are
    not, so without this every worker would draw the same "random" augmentations.
    """
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def loader_generator(seed):
    """A torch.Generator for DataLoader shuffling, independent of the global RNG."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def pick_device(name="auto"):
    """'auto' picks CUDA, then Apple's MPS, then the CPU; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        sys.exit("error: --device mps asked for, but this machine has no Apple GPU; use --device cpu or auto")
    return torch.device(name)


def import_sibling(script_file, module_name):
    """Import `module_name`.py from the folder of `script_file`, by path.

    Every stage has its own model.py and eval.py. Imported by bare name, the first one
    loaded would be reused for every stage in the same process (tests import them all), so
    each is registered under a unique name such as `stage_02_deeper.model`.
    """
    stage_dir = Path(script_file).resolve().parent
    unique_name = f"stage_{stage_dir.name}.{module_name}"
    if unique_name in sys.modules:
        return sys.modules[unique_name]
    spec = importlib.util.spec_from_file_location(unique_name, stage_dir / f"{module_name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[unique_name] = module
    spec.loader.exec_module(module)
    return module


def count_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def open_tensorboard(log_dir):
    """A TensorBoard SummaryWriter when the package is installed, else None and a one-line notice."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: --tensorboard needs the tensorboard package (pip install tensorboard); "
              "continuing without it (metrics.csv has the same numbers)")
        return None
    return SummaryWriter(log_dir=str(log_dir))


def log_scalars(writer, row):
    """One metrics.csv row (a dict with an "epoch" key) as TensorBoard scalars."""
    for key, value in row.items():
        if key != "epoch":
            writer.add_scalar(key, value, row["epoch"])
    writer.flush()
