"""The run folder: where a training run writes, and the lock that keeps a second run out of it.

A run gets a new runs/<stage>/<timestamp>/ folder, the folder of the run it resumes, or --out. A
folder that already holds a run is never silently replaced. The lock is a file, <folder>/.lock,
holding the process ID of the run that made it: creating it with O_EXCL either succeeds or finds it
there, in one step, so two runs started at the same moment cannot both win. A lock whose process is
gone (a run that was killed) is taken over; the lock is removed when the process ends, however it ends.
"""
import atexit
import os
import time
from pathlib import Path

from common.runtime import RUNS_DIR, UserError

RUN_FILES = ("last.pt", "best.pt", "metrics.csv")  # a folder holding one of these holds a run


def default_run_dir(stage_name):
    """A new, empty runs/<stage>/<timestamp>/ (resolved from the repo root, not the cwd), created here.

    Creating a folder either succeeds or finds it taken, so two runs started in the same second get
    <timestamp> and <timestamp>-2 instead of sharing one folder.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        folder = RUNS_DIR / stage_name / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise UserError(f"{RUNS_DIR / stage_name}: no free run folder name for {stamp}; pass --out")


def claim_run_folder(args, stage):
    """The run folder, locked for this process: a new unique one, the resumed run's, or --out.

    A folder that already holds a run is refused unless --resume continues that very run or
    --overwrite is given. A lock stops a second run in the same folder at once, and goes when the
    process ends. Temporary files a killed save left are removed.
    """
    if not args.out and not args.resume:
        out, created = default_run_dir(stage), True  # made here, so two runs started in the same second get two
    else:
        out = Path(args.out) if args.out else Path(args.resume).resolve().parent
        created = not out.exists() or not any(out.iterdir())
        out.mkdir(parents=True, exist_ok=True)
    lock_run_folder(out, remove_if_unused=created)  # an empty folder is removed again if the run ends before writing to it
    continuing = bool(args.resume) and Path(args.resume).resolve().parent == out.resolve()
    holds_run = [name for name in RUN_FILES if (out / name).exists()]
    if holds_run and not continuing and not args.overwrite:
        release_run_folder(out)
        raise UserError(f"{out}: already holds a run ({', '.join(holds_run)}); continue it with --resume "
                        f"{out / 'last.pt'}, pick another --out, or pass --overwrite to replace it")
    stale = sorted(out.glob(".*.tmp"))
    for file in stale:
        file.unlink()
    if stale:
        print(f"note: {out}: removed {len(stale)} unfinished temporary file(s) of a save that was cut short")
    if continuing:
        print(f"note: continuing the run in {out}")
    elif holds_run:
        for name in RUN_FILES + ("curves.png",):
            (out / name).unlink(missing_ok=True)
        print(f"note: --overwrite: replacing the run in {out}")
    return out


def lock_run_folder(folder, remove_if_unused):
    """Lock `folder` for this process, or stop with one line naming the run that holds it.

    With remove_if_unused, the folder itself is removed again at exit if the run wrote nothing to it.
    """
    lock = Path(folder) / ".lock"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            pid = _pid_in(lock)
            if pid == os.getpid():  # this process (a test calling main() twice) already holds it
                return
            if pid is not None and _alive(pid):
                raise UserError(f"{folder}: in use by another training run (PID {pid}); wait for it to end, "
                                f"stop it, or pick another --out") from None
            lock.unlink(missing_ok=True)  # left by a run that was killed: take it over
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    atexit.register(_unlock, lock, os.getpid(), remove_if_unused)


def release_run_folder(folder):
    """Remove this process's lock on `folder` (at the end of main(); atexit does it after any other exit)."""
    _unlock(Path(folder) / ".lock", os.getpid(), remove_if_unused=False)


def _unlock(lock, pid, remove_if_unused):
    if _pid_in(lock) == pid:
        lock.unlink(missing_ok=True)
        if remove_if_unused and not any(lock.parent.iterdir()):  # the run stopped before writing anything
            lock.parent.rmdir()


def _pid_in(lock):
    try:
        return int(lock.read_text().strip() or -1)
    except (OSError, ValueError):
        return None


def _alive(pid):
    if os.name == "nt":  # signal 0 is not a liveness test on Windows; a stale lock there is removed by hand
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True
