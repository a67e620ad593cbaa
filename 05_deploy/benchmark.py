"""Per-face latency of a checkpoint in PyTorch and in onnxruntime, plus face detection,
on this machine.

    python 05_deploy/benchmark.py --checkpoint runs/01_baseline/<run>/best.pt
    python 05_deploy/benchmark.py --checkpoint runs/0*/*/best.pt --threads 1  # all stages, one core

Per face = preprocess one crop + one forward pass at batch 1, as the webcam demo runs it. The
median of --repeats runs after --warmup runs is printed (the median ignores the odd slow run
caused by other programs). Detection is timed on a 640x480 frame, the usual webcam size. Figures,
not pass/fail thresholds: compare them between machines and backends.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

from common.runtime import UserError, import_sibling

faces = import_sibling(__file__, "faces")
export = import_sibling(__file__, "export")


def get_args(argv=None):
    # --help: the docstring's first paragraph (argparse joins its two lines)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        required=True,
        help="best.pt of one or more runs (any stage)",
    )
    parser.add_argument("--repeats", type=int, default=200, help="timed runs per measurement")
    parser.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="untimed runs first (allocations, caches)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for both backends (0: their default)",
    )
    return parser.parse_args(argv)


def median_ms(fn, repeats, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def photo_face(size=160):
    """A face-sized RGB crop (random pixels: latency does not depend on what the face shows)."""
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


def webcam_frame():
    """A 640x480 RGB photo with a face when scikit-image is installed (the cascade's time depends
    on the picture: noise is rejected early), else noise."""
    cv2 = faces.require("cv2", "opencv-python-headless<5")
    try:
        from skimage.data import astronaut
        return cv2.resize(astronaut(), (640, 480))
    except ImportError:
        return np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)


def main(argv=None):
    args = get_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ort = faces.require("onnxruntime", "onnxruntime")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads | "
          f"torch {torch.__version__} | onnxruntime {ort.__version__} | median of {args.repeats}")
    crop = photo_face()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for checkpoint in args.checkpoint:
            onnx_file = Path(tmp) / f"{len(rows)}.onnx"
            result = export.main(["--checkpoint", str(checkpoint), "--out", str(onnx_file)])
            torch_model, onnx_model = faces.Classifier(checkpoint), faces.Classifier(onnx_file)
            if args.threads:  # onnxruntime's thread count is fixed when the session is made
                options = ort.SessionOptions()
                options.intra_op_num_threads = args.threads
                onnx_model.session = ort.InferenceSession(
                    str(onnx_file),
                    options,
                    providers=["CPUExecutionProvider"],
                )
            face = torch_model.preprocess(crop)[None]  # (1, C, H, W)
            row = {
                "stage": torch_model.stage,
                "parity": result["max_abs_diff"],
                "mb": result["size_bytes"] / 2**20,
                "preprocess": median_ms(
                    lambda: torch_model.preprocess(crop),
                    args.repeats,
                    args.warmup,
                ),
                "pytorch": median_ms(lambda: torch_model.run(face), args.repeats, args.warmup),
                "onnxruntime": median_ms(lambda: onnx_model.run(face), args.repeats, args.warmup),
            }
            rows.append(row)
    frame = webcam_frame()
    detect = {}
    for share in (0.15, 0.05):  # webcam.py's and predict.py's default --min-face
        detector = faces.FaceDetector(min_fraction=share)
        detect[share] = median_ms(lambda: detector(frame), max(10, args.repeats // 10), 3)
    print("| stage | ONNX size | parity (max abs logit diff) | preprocess | PyTorch forward "
          "| onnxruntime forward |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['mb']:.1f} MB | {r['parity']:.1e} | "
              f"{r['preprocess']:.2f} ms | {r['pytorch']:.2f} ms | {r['onnxruntime']:.2f} ms |")
    print(f"Haar face detection, one 640x480 frame: {detect[0.15]:.1f} ms for faces >= 15% "
          f"of its height (webcam.py), {detect[0.05]:.1f} ms for faces >= 5% (predict.py)")
    return rows, detect


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
