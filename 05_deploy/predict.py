"""Find faces in photos, read their expressions, save annotated copies and a table of results.

    python 05_deploy/predict.py --model runs/01_baseline/<run>/best.pt photo.jpg  # a checkpoint...
    python 05_deploy/predict.py --model runs/01_baseline/<run>/best.onnx photos/  # ...or its export
    python 05_deploy/predict.py --model best.onnx --no-detect crops/ --out results/  # cropped faces

Each face: OpenCV's Haar cascade finds it, a square crop with a margin goes through the very
preprocessing the model was trained with (common.data.preprocess_face), the model gives one
probability per class. Written to --out: one annotated copy per image (box, top label, a bar
per class), predictions.json and predictions.csv. A file that cannot be read, or has no face,
gets one line and the rest of the batch goes on.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import argparse
import csv
import time

import numpy as np
from PIL import Image, ImageOps

from common.checkpoint import atomic_write, write_json
from common.facedata import IMAGE_SUFFIXES
from common.guard import output_dir
from common.runtime import RUNS_DIR, UserError, import_sibling

faces = import_sibling(__file__, "faces")
# small images (a 48x48 crop) are enlarged for the annotated copy only, so labels read
MIN_ANNOTATED_SIDE = 360


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", help="a run's best.pt (any stage) or a .onnx from export.py "
                                        "(default: the most accurate file in weights/)")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument(
        "--out",
        type=output_dir,
        help="folder for the results (default: runs/05_deploy/predict-<timestamp>)",
    )
    parser.add_argument(
        "--no-detect",
        action="store_true",
        help="each image is already one cropped face",
    )
    faces.add_detector_flags(parser, min_face=0.05, picture="image")
    return parser.parse_args(argv)


def list_images(inputs):
    """(path, problem) pairs: every image file named or inside a named folder, in a stable order."""
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not files:
                yield path, "no image files in this folder"
            yield from ((p, None) for p in files)
        elif path.is_file():
            yield path, None
        else:
            yield path, "no such file or folder"


def read_photo(path):
    """RGB uint8 (H, W, 3), turned upright as the camera's EXIF orientation says (phones store
    portraits sideways; a sideways face is not found)."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: cannot be read as an image "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return np.asarray(img)


def annotate(cv2, image_rgb, results, class_names):
    """A BGR copy with every face drawn on it (enlarged first when the image is small)."""
    scale = max(1.0, MIN_ANNOTATED_SIDE / min(image_rgb.shape[:2]))
    frame = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    if scale > 1:
        frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    for face in results:
        box = [int(round(v * scale)) for v in face["box"]]
        faces.draw_face(
            cv2,
            frame,
            box,
            class_names,
            [face["probabilities"][c] for c in class_names],
        )
    return frame


def free_name(folder, stem, used):
    """<stem>.jpg, or <stem>_2.jpg ... when two inputs share a name."""
    name, n = f"{stem}.jpg", 1
    while name in used:
        n += 1
        name = f"{stem}_{n}.jpg"
    used.add(name)
    return folder / name


def write_csv(path, rows, class_names):
    fields = ["image", "face", "x", "y", "w", "h", "label", "probability", *class_names]

    def write(f):
        writer = csv.writer(f)
        writer.writerow(fields)
        for row in rows:
            for i, face in enumerate(row["faces"]):
                writer.writerow([
                    row["image"],
                    i,
                    *face["box"],
                    face["label"],
                    f"{face['probability']:.4f}",
                    *(f"{face['probabilities'][c]:.4f}" for c in class_names),
                ])

    atomic_write(path, write, mode="w")


def main(argv=None):
    args = get_args(argv)
    args.model = faces.choose_model(args.model)
    classifier = faces.Classifier(args.model)
    cv2 = faces.require("cv2", "opencv-python-headless<5")
    detector = (
        None
        if args.no_detect
        else faces.FaceDetector(min_neighbors=args.min_neighbors, min_fraction=args.min_face)
    )
    out = (
        Path(args.out)
        if args.out
        else RUNS_DIR / "05_deploy" / time.strftime("predict-%Y%m%d-%H%M%S")
    )
    out.mkdir(parents=True, exist_ok=True)
    names = classifier.class_names
    rows, used, problems = [], set(), 0
    for path, problem in list_images(args.inputs):
        try:
            if problem:
                raise UserError(f"{path}: {problem}")
            image = read_photo(path)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            rows.append({"image": str(path), "error": str(e), "faces": []})
            problems += 1
            continue
        boxes = [(0, 0, image.shape[1], image.shape[0])] if detector is None else detector(image)
        crops = [
            image if detector is None else faces.crop_face(image, box, args.margin)[0]
            for box in boxes
        ]
        probs = classifier.probabilities(crops)
        results = [
            {
                "box": list(box),
                "label": names[int(p.argmax())],
                "probability": float(p.max()),
                "probabilities": {c: float(v) for c, v in zip(names, p)},
            }
            for box, p in zip(boxes, probs)
        ]
        row = {"image": str(path), "faces": results}
        if results:
            row["annotated"] = str(free_name(out, path.stem, used))
            _, jpeg = cv2.imencode(
                ".jpg",
                annotate(cv2, image, results, names),
                [cv2.IMWRITE_JPEG_QUALITY, 90],
            )
            # never a half-written picture
            atomic_write(row["annotated"], lambda f: f.write(jpeg.tobytes()))
            found = ", ".join(f"{f['label']} {100 * f['probability']:.0f}%" for f in results)
            print(f"{path}: {len(results)} face{'s' if len(results) > 1 else ''}: {found}")
        else:
            print(f"{path}: no face found "
                  f"(try --min-neighbors 3 or --min-face 0.02; --no-detect for cropped faces)")
        rows.append(row)
    write_json(out / "predictions.json", {
        "model": str(args.model),
        "backend": classifier.backend,
        "stage": classifier.stage,
        "class_names": names,
        "images": rows,
    })
    write_csv(out / "predictions.csv", rows, names)
    n_faces = sum(len(r["faces"]) for r in rows)
    print(f"done | {len(rows)} image(s), {n_faces} face(s), {problems} unreadable | "
          f"{classifier.backend} | wrote {out}")
    return rows, problems


if __name__ == "__main__":
    try:
        _, problems = main()
    except UserError as e:  # bad input: one line saying what to fix, not a traceback
        sys.exit(f"error: {e}")
    sys.exit(1 if problems else 0)
