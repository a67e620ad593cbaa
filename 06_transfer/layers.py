"""Which layers moved? Relative weight change per layer between a run's start and its best model.

    python 06_transfer/layers.py runs/06_transfer/affectnet/best.pt runs/06_transfer/scratch/best.pt

Every run of this stage saves start.pt (the weights before the first step) beside best.pt. For
each convolution and linear layer this prints, and plots in layer order,

    change = ||W_best - W_start|| / ||W_start||

A layer that kept what AffectNet taught it changes little; a layer that had to relearn changes a
lot. A run from scratch starts from random weights, so it shows how far training moves a layer
that knew nothing.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import argparse

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt
import torch

from common.checkpoint import load_checkpoint, require_course_keys
from common.guard import output_file
from common.runtime import UserError


def layer_changes(start, best):
    """[(layer name, relative change)] for every conv / linear weight, in the model's order."""
    changes = []
    for name, weight in best.items():
        if not name.endswith("weight") or weight.ndim not in (2, 4):  # conv: 4-D, linear: 2-D
            continue
        before = start[name].float()
        moved = (weight.float() - before).norm() / before.norm()
        changes.append((name.removesuffix(".weight"), moved.item()))
    return changes


def read_run(best_file):
    """(run name, start state_dict, best state_dict) of a run folder's best.pt and start.pt."""
    best = load_checkpoint(best_file)
    require_course_keys(best, best_file)
    start_file = Path(best_file).parent / "start.pt"
    if not start_file.is_file():
        raise UserError(f"{start_file}: not found; only runs of 06_transfer/train.py save start.pt")
    start = torch.load(start_file, map_location="cpu", weights_only=True)
    run = f"{Path(best_file).parent.name} (start: {best['config'].get('init', '?')})"
    return run, start, best["model"]


def plot(results, out):
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(results)
    for i, (run, changes) in enumerate(results):
        xs = [x + i * width for x in range(len(changes))]
        ax.bar(xs, [change for _, change in changes], width=width, label=run)
    names = [name for name, _ in results[0][1]]
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))])
    ax.set_xticklabels([f"{i + 1}" for i in range(len(names))])
    ax.set_xlabel("layer (1 = first convolution, last = output layer)")
    ax.set_ylabel("||W_best - W_start|| / ||W_start||")
    ax.set_title("How far each layer moved during training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="best.pt of one or more 06_transfer runs")
    parser.add_argument(
        "--out",
        type=output_file,
        help="the plot to write (default: weight_change.png in the first run's folder)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.checkpoints[0]).parent / "weight_change.png"
    results = []
    for file in args.checkpoints:
        run, start, best = read_run(file)
        changes = layer_changes(start, best)
        results.append((run, changes))
        print(run)
        for name, change in changes:
            print(f"  {name:<24} {change:6.3f}")
    plot(results, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
