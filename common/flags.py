"""The command-line flags every stage's train.py shares, added to its parser in one call.

A stage's get_args() makes its parser with `stage_parser(__doc__)`, adds --data and --epochs
itself (their help and defaults differ between datasets and recipes), then `add_run_flags(parser)`,
then its own flags. A stage that needs another default for a shared flag says so in one visible
line after the call, with the reason:

    add_run_flags(parser)
    parser.set_defaults(num_workers=1)  # why this stage wants it

Kept in one place so that --help reads the same in every stage (tests/test_structure.py compares
the flags of consecutive stages, read from each stage's own parser).
"""
import argparse

from common.guard import non_negative_int, output_dir, positive_float, positive_int


def stage_parser(doc):
    """An ArgumentParser described by the first line of the script's docstring. --help shows every
    flag's default, filled in by argparse, so no help text repeats a default that may change."""
    return argparse.ArgumentParser(
        description=doc.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def add_run_flags(parser):
    """--batch-size, --lr, --seed, --device, --num-workers, --out, --resume, --overwrite, --labels,
    --ferplus, --ferplus-mode, --tensorboard and --wandb, in this order."""
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per step")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling, dropout")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--num-workers", type=non_negative_int, default=0, help="loader processes")
    parser.add_argument("--out", type=output_dir, help="run folder (default: runs/<stage>/<time>)")
    parser.add_argument("--resume", help="last.pt of a stopped run: continue it in its folder")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    parser.add_argument("--labels", choices=["fer2013", "ferplus"], default="fer2013")
    parser.add_argument("--ferplus", help="FER+ votes (fer2013new.csv) for --labels ferplus")
    parser.add_argument("--ferplus-mode", choices=["majority", "probability"], default="majority")
    parser.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    parser.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
