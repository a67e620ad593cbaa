"""Export a checkpoint of any stage to ONNX, with its class names and preprocessing inside.

    python 05_deploy/export.py --checkpoint runs/01_baseline/<run>/best.pt  # -> <run>/best.onnx
    python 05_deploy/export.py --checkpoint runs/03_attention/<run>/best.pt --out fer.onnx
    python 05_deploy/export.py --checkpoint weights/01_baseline-fer2013.pt  # -> runs/shipped/<name>
    python 05_deploy/export.py --checkpoint runs/05_deploy/<ensemble>/ensemble.pt  # one graph

The file has a dynamic batch axis (input "images" (N, C, H, W) float, output "logits" (N, K)) and
carries in its metadata everything a runtime needs to use it: `stage`, `class_names` (JSON list)
and `preprocessing` (JSON: size, channels, mean, std, applied to 0-1 pixels). After writing, the
export runs a batch through PyTorch and onnxruntime and fails unless they agree to 1e-4. All of it
happens in a temporary file beside the target, which replaces the target only once the check passed:
a failed export (or a full disk) leaves a previous .onnx byte for byte as it was.

What the export needs: torch 2.9+ exports through torch.export (the "dynamo" exporter, the
default here), which needs the `onnxscript` package (it brings `onnx`); onnxruntime runs the
parity check. `--exporter torchscript` uses the older exporter, deprecated since torch 2.9,
which needs no onnxscript. All are in 05_deploy/requirements.txt.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import argparse
import io
import json
import os
import tempfile
import warnings

import torch

from common.checkpoint import WriteError, default_output_dir, load_checkpoint
from common.data import eval_transform
from common.guard import output_file, positive_int
from common.runtime import UserError, import_sibling

faces = import_sibling(__file__, "faces")
TOLERANCE = 1e-4  # largest |onnxruntime - pytorch| logit difference accepted


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="best.pt or last.pt of any stage's run folder, or a file in weights/")
    parser.add_argument(
        "--out",
        type=output_file,
        help="ONNX file to write (default: the checkpoint's path with .onnx; "
             "runs/shipped/<name>/<name>.onnx for a file in weights/)",
    )
    parser.add_argument(
        "--exporter",
        choices=["dynamo", "torchscript"],
        default="dynamo",
        help="dynamo: torch.export-based, needs onnxscript; torchscript: the deprecated one",
    )
    parser.add_argument(
        "--check-batch",
        type=positive_int,
        default=8,
        help="images in the parity check",
    )
    return parser.parse_args(argv)


def export_onnx(model, example, path, exporter):
    """Write `model` to `path` with a dynamic batch axis, as one self-contained file."""
    with warnings.catch_warnings():
        # 03_attention keeps its last attention maps on the modules for plotting; the exporter
        # warns that they are not buffers, which does not matter for inference.
        warnings.filterwarnings(
            "ignore",
            message="The tensor attributes .* were assigned during export",
        )
        if exporter == "dynamo":
            faces.require("onnxscript", "onnxscript")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                # weights inside the .onnx, not in a .onnx.data file beside it
                external_data=False,
                verbose=False,
            )
        else:
            # we chose the deprecated exporter on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )


def add_metadata(path, checkpoint):
    """Store stage, class names and preprocessing as ONNX metadata, so the file is used alone."""
    onnx = faces.require("onnx", "onnx")
    model = onnx.load(str(path))
    values = {
        "stage": checkpoint["stage"],
        "class_names": json.dumps(list(checkpoint["class_names"])),
        "preprocessing": json.dumps(dict(checkpoint["preprocessing"])),
    }
    del model.metadata_props[:]
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = (f"{checkpoint['stage']} facial-expression classifier: "
                        f"input 'images' (N, C, H, W) float, "
                        f"preprocessed as in metadata 'preprocessing'; "
                        f"output 'logits' (N, K), K = class_names")
    onnx.checker.check_model(model)
    # the temporary file; main() puts it in place once the parity check passed
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
        f.flush()
        os.fsync(f.fileno())  # on disk before it replaces the target


def check_parity(model, path, preprocessing, batch_size):
    """Max |logits| difference between PyTorch and onnxruntime on random images, preprocessed as
    real faces are (so the inputs span the range the model sees)."""
    generator = torch.Generator().manual_seed(0)
    size, channels = preprocessing["size"], preprocessing["channels"]
    images = torch.randint(
        0,
        256,
        (batch_size, channels, size, size),
        dtype=torch.uint8,
        generator=generator,
    )
    batch = eval_transform(preprocessing)(images)
    with torch.inference_mode():
        expected = model(batch).numpy()
    ort = faces.require("onnxruntime", "onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
    return float(abs(got - expected).max())


def main(argv=None):
    args = get_args(argv)
    # on the CPU; refuses bare weights and NaN weights
    checkpoint = load_checkpoint(args.checkpoint)
    model = faces.model_from_checkpoint(checkpoint, args.checkpoint)
    out = (
        Path(args.out)
        if args.out
        else default_output_dir(args.checkpoint, Path(args.checkpoint).stem + ".onnx")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    # replaced over `out` at the end
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        diff = export_checked(model, checkpoint, args, Path(tmp), out)
        os.replace(tmp, out)  # only now, after the parity check, does a previous .onnx go
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB)")
    return {"out": out, "max_abs_diff": diff, "size_bytes": out.stat().st_size}


def export_checked(model, checkpoint, args, tmp, out):
    """Export into `tmp`, add the metadata, and compare onnxruntime with PyTorch; the largest
    difference."""
    pre = checkpoint["preprocessing"]
    # batch 2: 1 could be baked in as fixed
    example = torch.zeros(2, pre["channels"], pre["size"], pre["size"])
    # the exporter prints progress lines; keep them for a failure message only
    stdout = io.StringIO()
    try:
        sys.stdout, saved = stdout, sys.stdout
        export_onnx(model, example, tmp, args.exporter)
        add_metadata(tmp, checkpoint)
    except UserError:
        raise
    except OSError as e:  # a full disk or a folder that cannot be written
        raise WriteError(f"{out}: could not be written: {(e.strerror or str(e)).lower()}; "
                         f"the previous file, if any, is unchanged") from None
    except Exception as e:
        raise UserError(f"{args.checkpoint}: ONNX export failed "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    finally:
        sys.stdout = saved
    diff = check_parity(model, tmp, pre, args.check_batch)
    print(f"exported {checkpoint['stage']} ({len(checkpoint['class_names'])} classes, input "
          f"N x {pre['channels']} x {pre['size']} x {pre['size']}) "
          f"with the {args.exporter} exporter")
    print(f"parity: max |onnxruntime - pytorch| = {diff:.1e} "
          f"over {args.check_batch} images' logits (tolerance {TOLERANCE:.0e})")
    if not diff < TOLERANCE:
        raise UserError(f"{out}: onnxruntime and PyTorch disagree by {diff:.1e} "
                        f"(more than {TOLERANCE:.0e}); "
                        f"not written (a previous file is unchanged); do not deploy this model")
    return diff


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
