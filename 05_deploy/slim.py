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

import torch

from common.checkpoint import load_checkpoint, save_checkpoint, sha256
from common.runtime import REPO_ROOT, UserError

# All that a slim file keeps, and what it may add: how to rebuild the model (04_affectnet's
# --grayscale) and how to widen int8 weights back to float32.
INFERENCE_KEYS = ("stage", "model", "class_names", "preprocessing", "config")
OPTIONAL_KEYS = ("model_kwargs", "int8_scales")


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


def inference_only(checkpoint, dtype="float32"):
    """A training checkpoint reduced to what inference needs: no optimizer, scheduler, RNG or
    history.

    dtype="float16" stores every weight in half the bytes. dtype="int8" stores each convolution
    kernel and weight matrix in a quarter: one byte per weight plus one float32 scale per output
    channel (its largest magnitude / 127), so a weight moves by at most half a step of that scale.
    Either way common.checkpoint.load_checkpoint turns them back into float32; check with eval.py
    what the predictions lose."""
    slim = {key: checkpoint[key] for key in INFERENCE_KEYS}
    if "model_kwargs" in checkpoint:  # how to rebuild the model (04_affectnet: --grayscale)
        slim["model_kwargs"] = checkpoint["model_kwargs"]
    if dtype == "float16":
        slim["model"] = {
            name: weight.half() if weight.is_floating_point() else weight
            for name, weight in checkpoint["model"].items()
        }
    elif dtype == "int8":
        slim["model"] = dict(checkpoint["model"])
        slim["int8_scales"] = {}
        for name, weight in checkpoint["model"].items():
            if not weight.is_floating_point() or weight.ndim < 2:
                continue  # biases, BatchNorm and counters stay as they are
            dims = tuple(range(1, weight.ndim))  # everything but the output channel
            scale = weight.abs().amax(dim=dims, keepdim=True).clamp(min=1e-12) / 127
            slim["model"][name] = torch.round(weight / scale).to(torch.int8)
            slim["int8_scales"][name] = scale.float()
    elif dtype != "float32":
        raise ValueError(f"dtype {dtype!r}: use float32, float16 or int8")
    config = dict(checkpoint["config"])
    # Absolute paths of the machine that trained it mean nothing elsewhere: inside the repo they
    # become relative to it, outside it the bare name.
    for key in ("data", "out", "resume"):
        if config.get(key) and Path(config[key]).is_absolute():
            path = Path(config[key]).resolve()
            if path.is_relative_to(REPO_ROOT):
                config[key] = str(path.relative_to(REPO_ROOT))
            else:
                config[key] = path.name
    slim["config"] = config
    return slim


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
