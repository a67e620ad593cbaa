"""What keeps a user's work safe while a stage trains: checked flags, --resume that only continues,
a stop on a diverged loss, and Ctrl-C that saves. The run folder's own safety (locked, never silently
replaced) is in common/runfolder.py.

Every stage's train.py calls these in the same few lines (resume_run and StopSignal through
common/run.py's start_run), so the lesson in train.py stays the recipe.
"""
import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path

from common.checkpoint import get_rng_states, load_checkpoint, require_course_keys, set_rng_states
from common.runfolder import release_run_folder
from common.runtime import UserError
RECIPE_FLAGS_A_RESUME_MAY_CHANGE = ("epochs", "device", "num_workers", "out", "tensorboard")


# ---------------------------------------------------------------- flag types for argparse
# argparse calls these while it parses, so a bad value stops the script before any work, with
# argparse's own "error: argument --flag: ..." line and exit status 2.

def positive_int(text):
    value = _number(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a whole number of at least 1")
    return value


def non_negative_int(text):
    value = _number(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def positive_float(text):
    value = _number(text, float, "a number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number above 0")
    return value


def non_negative_float(text):
    value = _number(text, float, "a number")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number of 0 or more")
    return value


def output_dir(text):
    """A folder this script may create or write into: not a file, not under a file, not read-only."""
    _check_writable(Path(text), is_dir=True)
    return text


def output_file(text):
    """A file this script may create or replace: not a folder, in a folder that can be written."""
    _check_writable(Path(text), is_dir=False)
    return text


def _number(text, cast, what):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def _check_writable(path, is_dir):
    if path.exists() and path.is_dir() != is_dir:
        raise argparse.ArgumentTypeError(f"{path} is {'a file' if is_dir else 'a folder'}; "
                                         f"give {'a folder' if is_dir else 'a file name'}")
    existing = path if is_dir and path.exists() else path.parent  # a file is written by creating one in its folder
    while not existing.exists():  # the folders that would be created: the first one that exists decides
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{path} lies under {existing}, which is a file; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{existing} is read-only for you; choose a folder you can write to")


# ---------------------------------------------------------------- --resume

def resume_run(args, parser, stage):
    """(checkpoint, args): with --resume, the run's last.pt and the recipe it was started with.

    Only last.pt continues a run (best.pt is an earlier epoch: continuing it would throw away the
    epochs after it). Flags a run cannot change midway are named as ignored, never dropped silently.
    """
    if not args.resume:
        return None, args
    path = Path(args.resume)
    if path.name != "last.pt":
        raise UserError(f"{path}: --resume continues a run from its last.pt (best.pt is an earlier epoch, so "
                        f"continuing it would discard the epochs after it); use {path.parent / 'last.pt'}")
    checkpoint = load_checkpoint(path)
    require_course_keys(checkpoint, path)
    if checkpoint["stage"] != stage:
        raise UserError(f"{path}: is a checkpoint of {checkpoint.get('stage')}, not {stage}; continue it with "
                        f"python {checkpoint.get('stage')}/train.py --resume {path}")
    config = checkpoint["config"]
    given = {k: v for k, v in vars(args).items() if v != parser.get_default(k) and k not in ("resume", "overwrite")}
    if given.get("data") and Path(given["data"]).exists():  # config.json holds the absolute path
        given["data"] = str(Path(given["data"]).resolve())
    ignored = [f"--{k.replace('_', '-')} {v}" for k, v in given.items()
               if k not in RECIPE_FLAGS_A_RESUME_MAY_CHANGE and v != config.get(k)]
    if ignored:
        print(f"ignored: {', '.join(ignored)} (a resumed run keeps its data and recipe; start a new run to change them)")
    kept = {k: v for k, v in given.items() if k in RECIPE_FLAGS_A_RESUME_MAY_CHANGE}
    merged = {**vars(args), **config, "out": None, **kept, "resume": args.resume, "overwrite": args.overwrite}
    if merged["epochs"] <= checkpoint["epoch"]:
        raise UserError(f"--epochs {merged['epochs']}: {path} has already trained {checkpoint['epoch']} epochs; "
                        f"pass a larger --epochs to continue it")
    checkpoint["resumed_from"] = str(path)  # for the messages below; not saved again
    return checkpoint, argparse.Namespace(**merged)


def check_same_classes(checkpoint, class_names):
    if checkpoint and list(checkpoint["class_names"]) != list(class_names):
        raise UserError(f"{checkpoint['resumed_from']}: was trained on the classes {checkpoint['class_names']}, "
                        f"but the data now has {class_names}; start a new run for these classes")


# ---------------------------------------------------------------- stopping: signals and divergence

class StopSignal:
    """Ctrl-C (SIGINT) or SIGTERM asks the training loop to stop after the current step; the loop
    saves last.pt and calls exit_if_requested(). A second Ctrl-C stops at once (last.pt keeps its last contents)."""

    def __init__(self, folder):
        self.signum, self.folder = None, folder
        self.previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)}

    @property
    def requested(self):
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.requested:
            raise SystemExit(128 + signum)  # unwinds at once; a half-written temporary file is removed
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (Ctrl-C again to quit at once)",
              file=sys.stderr, flush=True)

    def exit_if_requested(self, stage, last_pt, progress, launcher="python"):
        if not self.requested:
            return
        print(f"stopped at epoch {progress['epoch']} step {progress['step']}; "
              f"continue with: {launcher} {stage}/train.py --resume {last_pt}", flush=True)
        sys.exit(128 + self.signum)  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them

    def close(self):
        """The run is over: the signal handlers from before it, and the run folder unlocked."""
        release_run_folder(self.folder)
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class Diverged(UserError):
    """The loss became NaN or infinite: every later step would spread it through the weights."""


def stop_if_diverged(loss, progress, step=None):
    value = loss.item() if hasattr(loss, "item") else float(loss)
    if not math.isfinite(value):
        where = f"step {step}" if step else "validation"
        raise Diverged(f"the loss is {value} at epoch {progress['epoch']} {where}: training diverged and stops here "
                       f"(last.pt and best.pt keep their previous contents); try a lower --lr")


# ---------------------------------------------------------------- an epoch that can stop and resume midway

def new_progress(epoch, loader):
    """One epoch's running totals, updated by train_one_epoch and saved in last.pt when a signal stops it.
    `loader`: the shuffling generator's state as the epoch starts, so a resume replays the same order."""
    return {"epoch": epoch, "step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0,
            "loader": loader.generator.get_state()}


def stopped_progress(progress):
    """`progress` as last.pt keeps it after a stop: with the random state of that moment."""
    return {**progress, "rng": get_rng_states()}


def resume_steps(batches, progress, stop):
    """(step, batch) for the steps of this epoch not done yet, until a signal asks to stop.

    After a stop midway, the epoch's batches come in the same order again; those trained on before
    the stop are drawn and dropped, then the random state of the moment of the stop is restored, so
    the run goes on exactly as if it had never stopped (with --num-workers 0; see README).
    progress["seconds"] sums the epoch's training time over its parts, before and after a stop.
    """
    started = time.time() - progress["seconds"]
    for step, batch in enumerate(batches, start=1):
        if step < progress["step"]:
            continue
        if step == progress["step"]:
            set_rng_states(progress["rng"])
            continue
        yield step, batch
        progress["seconds"] = time.time() - started
        if stop.requested:  # checked after the step, before the next batch is drawn
            return


def epoch_progress(checkpoint, epoch, loader):
    """The progress of this epoch: where a run stopped midway got to (the loader's shuffle rewound to
    the epoch's start, so the same batches come again), or a new epoch's."""
    progress = checkpoint.get("progress") if checkpoint else None
    if progress is None or progress["epoch"] != epoch:
        return new_progress(epoch, loader)
    loader.generator.set_state(progress["loader"])
    return {"seconds": 0.0, **progress}  # a last.pt saved before "seconds" was kept: time unknown
