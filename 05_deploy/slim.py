r"""Reduce a training checkpoint to what inference needs, for sharing or for weights/.

    python 05_deploy/slim.py --checkpoint runs/03_attention/<run>/best.pt \
        --out weights/03_attention-fer2013.pt --dtype float16

A best.pt from training also holds the optimizer state, the RNG states and the history, which
only --resume needs: for 02_deeper that is three times the size of the weights. The slim file
keeps the stage, the weights, the class names, the preprocessing and the training config, so
eval.py, export.py and predict.py use it like a best.pt. --dtype float16 stores the weights in
half the size again; --dtype int8 stores kernels and weight matrices in a quarter, one byte per
weight with one scale per output channel. Both are turned back into float32 when loaded. Check with
eval.py how many test predictions change before you share a smaller file.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import argparse

from common.checkpoint import (INFERENCE_KEYS, inference_only, load_checkpoint, save_checkpoint,
                               sha256)
from common.runtime import UserError


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="best.pt of a run folder")
    parser.add_argument(
        "--out",
        required=True,
        help="file to write; an existing file is never replaced",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "int8"],
        help="how to store the weights",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out}: already exists; remove it first or pass another --out")
    checkpoint = load_checkpoint(args.checkpoint)
    missing = [key for key in INFERENCE_KEYS if key not in checkpoint]
    if missing:
        raise UserError(f"{args.checkpoint}: lacks {', '.join(missing)}; "
                        f"pass a best.pt written by a stage's train.py")
    save_checkpoint(out, inference_only(checkpoint, dtype=args.dtype))
    size_kb = out.stat().st_size / 1024
    print(f"wrote {out} | stage {checkpoint['stage']} | {args.dtype} | "
          f"{size_kb:,.0f} KB | sha256 {sha256(out)}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
