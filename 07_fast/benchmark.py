"""Images per second of 03_attention and 07_fast side by side, on this machine,
and where the time goes.

    python 07_fast/benchmark.py  # built-in faces, torch's default thread count
    python 07_fast/benchmark.py --data data/fer2013.csv  # FER2013, as in the README's table
    python 07_fast/benchmark.py --threads 1  # one thread per stage (as 1 of 2 torchrun processes)
    python 07_fast/benchmark.py --amp bf16 --compile  # 07_fast with bf16 autocast and torch.compile

Each stage runs with its own defaults (loader workers, augmentation, precision, memory layout) and
its own train_one_epoch and evaluate, in a process of its own, so that peak memory is its own:

    bare fwd+bwd       the training step alone (forward, backward, optimizer step) on a few batches
                       already prepared on the device: what the model could do if data were free
    training loop      train_one_epoch on the stage's real loader: data, augmentation and the step.
                       Bare and loop take turns (--rounds), so a change in the machine's load
                       during the run weighs on both alike
    efficiency         training loop / bare: the share of the model's speed the loop keeps
                       (1 = free data)
    pipeline ceiling   the loader and the augmentation alone, no model: the most images per second
                       this input pipeline can feed. On a GPU the model step gets many times faster
                       and this number does not, so it has to be far above the CPU's training speed.
    eval               evaluate() over the validation split (at most --eval-images of it)
    peak RSS           the most memory the measuring process held, and the largest loader worker

Figures, not pass/fail tests: the targets are printed beside them. Other programs running at the
same time make every number lower; the ratios suffer less.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import subprocess
import time
import types

import torch
import torch.nn as nn

from common.data import eval_transform, load_data
from common.runtime import REPO_ROOT, UserError, import_sibling, pick_device, seed_everything

amp_lib = import_sibling(__file__, "precision")  # 07_fast's choice of autocast dtype
STAGES = ["03_attention", "07_fast"]


def get_args(argv=None):
    # --help: the docstring's first paragraph (argparse joins its two lines)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--data",
        default="builtin",
        help="FER2013 CSV or image folders, or builtin",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per training step (both stages' default)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=60,
        help="timed training steps, for bare and for the loop",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="bare and loop take turns this many times, sharing --steps",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed steps first (allocations, worker start-up)",
    )
    parser.add_argument(
        "--pipeline-batches",
        type=int,
        default=100,
        help="batches timed for the pipeline ceiling",
    )
    parser.add_argument(
        "--eval-images",
        type=int,
        default=2000,
        help="at most this many validation images",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per stage (0: torch's default)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument(
        "--amp",
        choices=["auto", "bf16", "fp16", "off"],
        default="auto",
        help="07_fast's --amp",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="07_fast with torch.compile (compiles during warm-up)",
    )
    # internal: one stage, print JSON
    parser.add_argument("--measure", choices=STAGES, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def images_per_second(run, batches, device):
    seen, seconds = timed(run, batches, device)
    return seen / seconds


def timed(run, batches, device):
    """(images, seconds) of run(batches), counting the images that went through; waits for the
    GPU's queued work."""
    seen = 0

    def counted():
        nonlocal seen
        for images, labels in batches:
            seen += len(labels)
            yield images, labels

    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(counted())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen, time.perf_counter() - start


def new_progress():  # train_one_epoch's running totals, for a loop that is never stopped
    return {"epoch": 1, "step": 0, "loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


# stands in for the Ctrl-C handler: timing never stops early
NEVER_STOP = types.SimpleNamespace(requested=False)


def take(loader, n):
    """n batches of a loader, starting it over as often as needed (a small data set has few
    batches)."""
    return itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), n)


def peak_rss_mb():
    # kilobytes on Linux, bytes on macOS
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kilobytes / (2**20 if platform.system() == "Darwin" else 2**10)


def workers_peak_rss_mb():
    """The largest peak memory (VmHWM) of this process's live children, the loader workers;
    Linux only."""
    tasks = list(Path(f"/proc/{os.getpid()}/task").glob("*/children"))
    if not tasks:
        return None
    peaks = [0.0]
    for pid in " ".join(task.read_text() for task in tasks).split():
        with contextlib.suppress(OSError):  # a child that has just ended
            status = Path(f"/proc/{pid}/status").read_text()
            peaks += [
                int(line.split()[1]) / 1024
                for line in status.splitlines()
                if line.startswith("VmHWM:")
            ]
    return max(peaks) if len(peaks) > 1 else None  # None: no workers (--num-workers 0)


def measure(stage, args):
    """One stage's numbers, with its own train.py, model.py and eval.py."""
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(0)
    stage_dir = REPO_ROOT / stage
    train = import_sibling(stage_dir / "train.py", "train")
    evaluate = import_sibling(stage_dir / "eval.py", "eval").evaluate
    stage_args, _ = train.get_args(
        ["--data", args.data, "--batch-size", str(args.batch_size), "--device", args.device],
    )
    device = pick_device(stage_args.device)
    data = load_data(args.data)
    val_images, val_labels = data.split("val")
    data.splits["val"] = (val_images[:args.eval_images], val_labels[:args.eval_images])
    train_loader, val_loader = train.build_loaders(stage_args, data)
    model = import_sibling(stage_dir / "model.py", "model").build_model(
        len(data.class_names),
        data.preprocessing["channels"],
    ).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    # bare's input: a few real batches, prepared once (several, so that it does not train on one
    # batch that stays in the CPU's cache)
    prepared = []
    for images, labels in take(train_loader, 4):  # 03: augmented floats; 07: uint8
        if images.dtype == torch.uint8:
            images = eval_transform(data.preprocessing)(images)
        prepared.append((images.to(device), labels.to(device)))

    if stage == "07_fast":  # the techniques of this stage, as its train.py applies them
        model = model.to(memory_format=torch.channels_last)
        augment = train.build_train_transform(data.preprocessing, stage_args.augment).to(device)
        amp_dtype = amp_lib.pick_amp_dtype(device, args.amp)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        precision = f"{str(amp_dtype or torch.float32).removeprefix('torch.')}, channels_last"
        precision += ", compiled" if args.compile else ""
        autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        step_model = torch.compile(model) if args.compile else model

        def loop(batches, augment=augment):
            train.train_one_epoch(
                step_model,
                batches,
                criterion,
                optimizer,
                device,
                None,
                augment,
                amp_dtype,
                scaler,
                new_progress(),
                NEVER_STOP,
            )

        def bare(batches):  # the same loop, fed a batch that needs no augmentation
            loop(batches, augment=nn.Identity())

        def feed(images):
            images = images.to(device, non_blocking=True)
            return augment(images).contiguous(memory_format=torch.channels_last)
    else:
        precision = "float32"
        autocast = contextlib.nullcontext()

        def loop(batches):
            train.train_one_epoch(
                model,
                batches,
                criterion,
                optimizer,
                device,
                new_progress(),
                NEVER_STOP,
            )

        bare = loop

        def feed(images):
            return images.to(device, non_blocking=True)

    def pipeline(batches):
        for images, _ in batches:
            feed(images)

    result = {
        "stage": stage,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "workers": stage_args.num_workers,
        "precision": precision,
        "train_images": len(train_loader.dataset),
        "val_images": len(val_loader.dataset),
    }
    rounds = max(1, min(args.rounds, args.steps))
    steps = -(-args.steps // rounds)  # per round, rounded up
    fixed = itertools.cycle(prepared)
    batches = take(train_loader, args.warmup + rounds * steps)  # one pass: no loader restarts
    bare(itertools.islice(fixed, args.warmup))
    loop(itertools.islice(batches, args.warmup))
    totals = {"bare": [0, 0.0], "loop": [0, 0.0]}  # images, seconds
    for _ in range(rounds):  # taking turns, so that both meet the same load on the machine
        for name, run, source in (("bare", bare, fixed), ("loop", loop, batches)):
            seen, seconds = timed(run, itertools.islice(source, steps), device)
            totals[name][0] += seen
            totals[name][1] += seconds
    result["bare"] = totals["bare"][0] / totals["bare"][1]
    result["loop"] = totals["loop"][0] / totals["loop"][1]
    pipeline(take(train_loader, args.warmup))
    result["ceiling"] = images_per_second(
        pipeline,
        take(train_loader, args.pipeline_batches),
        device,
    )
    with autocast:
        result["eval"] = images_per_second(lambda b: evaluate(model, b, device), val_loader, device)
    result["worker_rss_mb"] = workers_peak_rss_mb()  # while the persistent workers still live
    result["rss_mb"] = peak_rss_mb()
    return result


def main(argv=None):
    args = get_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args)))
        return None
    start = time.time()
    rows = []
    for stage in STAGES:  # one process each: a clean start, and peak memory of that stage alone
        command = [
            sys.executable,
            __file__,
            *(argv if argv is not None else sys.argv[1:]),
            "--measure",
            stage,
        ]
        child = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if child.returncode:
            raise UserError(f"measuring {stage} failed (exit code {child.returncode}); "
                            f"see the messages above")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    first = rows[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs | device {first['device']} | "
          f"torch threads {first['threads']}, interop threads {first['interop_threads']} | "
          f"torch {torch.__version__} | "
          f"data {args.data} (train {first['train_images']}, val {first['val_images']}) | "
          f"batch {args.batch_size}, {args.steps} timed steps in {args.rounds} rounds")
    print("| stage | precision | loader workers | bare fwd+bwd img/s | training loop img/s "
          "| pipeline efficiency | pipeline ceiling img/s | ceiling / training | eval img/s "
          "| peak RSS (worker) |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        r["efficiency"], r["headroom"] = r["loop"] / r["bare"], r["ceiling"] / r["loop"]
        worker = "n/a" if r["worker_rss_mb"] is None else f"{r['worker_rss_mb']:,.0f} MB"
        print(f"| {r['stage']} | {r['precision']} | {r['workers']} | "
              f"{r['bare']:,.0f} | {r['loop']:,.0f} | "
              f"{r['efficiency']:.2f} | {r['ceiling']:,.0f} | {r['headroom']:.1f}x | "
              f"{r['eval']:,.0f} | {r['rss_mb']:,.0f} MB ({worker}) |")
    fast = rows[-1]
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    print(f"targets for 07_fast: pipeline ceiling >= 10x training img/s: {fast['headroom']:.1f}x "
          f"({verdict(fast['headroom'] >= 10)}) | "
          f"pipeline efficiency >= 0.95: {fast['efficiency']:.2f} "
          f"({verdict(fast['efficiency'] >= 0.95)}) | {time.time() - start:.0f} s in all")
    return rows


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
