"""What the deploy tools share: load a classifier from a checkpoint or an ONNX file, find faces
with OpenCV's Haar cascade, crop them, and draw the results.

Faces are prepared by common.data.preprocess_face, the same conversion, resize and normalisation
the training data went through; a demo that prepares faces its own way (BGR instead of RGB, 0-255
instead of 0-1, another mean) is the usual reason for "it always says neutral".
"""
import importlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import common`

import numpy as np
import torch

from common.checkpoint import best_shipped_model, load_checkpoint
from common.data import preprocess_face
from common.facedata import FER2013_CLASSES
from common.guard import non_negative_float, non_negative_int, positive_float
from common.runtime import REPO_ROOT, UserError, import_sibling

INSTALL_HINT = "pip install -r 05_deploy/requirements.txt"
# OpenCV and its FFmpeg print their own warnings (a missing camera, a bad frame) on top of ours;
# keep errors only, so a problem reads as one line. Read when cv2 is first imported.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
# ONNX metadata keys written by export.py: everything a runtime needs besides the weights.
METADATA_KEYS = ("stage", "class_names", "preprocessing")


def require(module, package):
    """Import an optional deploy package, or stop with one line saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"this tool needs the {package} package: {INSTALL_HINT}") from None


# ---------------------------------------------------------------- the classifier

def choose_model(path):
    """--model as given, or else the most accurate FER2013 model in weights/, saying which."""
    if path:
        return path
    path, entry = best_shipped_model(FER2013_CLASSES)  # 04's AffectNet model scores another test
    if path is None:
        raise UserError("no --model given and no shipped weights in weights/; "
                        "pass a run's best.pt or a .onnx")
    print(f"model: {path.relative_to(REPO_ROOT)} "
          f"(the most accurate shipped model: {entry['stage']}, "
          f"{100 * entry['test_accuracy']:.1f}% on FER2013 PrivateTest); "
          f"pass --model to use another")
    return path


def model_from_checkpoint(checkpoint, path="checkpoint"):
    """Rebuild the model of the stage that trained `checkpoint` (on the CPU, in eval mode)."""
    # ensemble.pt from 05_deploy/ensemble.py: several members in one file
    if checkpoint.get("stage") == "ensemble":
        return import_sibling(__file__, "ensemble").from_checkpoint(checkpoint)
    missing = [
        key
        for key in ("stage", "model", "class_names", "preprocessing")
        if key not in checkpoint
    ]
    if missing:
        raise UserError(f"{path}: not a checkpoint of this course (no {', '.join(missing)}); "
                        f"pass the best.pt of a run folder")
    model_file = REPO_ROOT / checkpoint["stage"] / "model.py"
    if not model_file.is_file():
        raise UserError(f"{path}: was trained by stage {checkpoint['stage']}, "
                        f"but {model_file} is missing")
    model_lib = import_sibling(model_file, "model")  # by path: every stage has its own model.py
    model = model_lib.build_model(
        len(checkpoint["class_names"]),
        checkpoint["preprocessing"]["channels"],
        **checkpoint.get("model_kwargs", {}),
    )
    model.load_state_dict(checkpoint["model"])
    return model.eval()  # dropout off, BatchNorm on its running statistics


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # minus the max: no overflow
    return shifted / shifted.sum(axis=1, keepdims=True)


class Classifier:
    """best.pt (PyTorch) or model.onnx (onnxruntime) behind one call: faces in, probabilities out.

    Both run on the CPU: a checkpoint saved on a GPU loads anywhere (load_checkpoint maps it).
    """

    def __init__(self, path):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: model not found; "
                            f"pass a run's best.pt or a .onnx from 05_deploy/export.py")
        self.path = path
        if path.suffix.lower() == ".onnx":
            self._load_onnx(path)
        else:
            checkpoint = load_checkpoint(path)
            self.model = model_from_checkpoint(checkpoint, path)
            self.stage, self.class_names = checkpoint["stage"], list(checkpoint["class_names"])
            self.preprocessing = dict(checkpoint["preprocessing"])
            self.backend = "pytorch"

    def _load_onnx(self, path):
        ort = require("onnxruntime", "onnxruntime")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise UserError(f"{path}: not a readable ONNX model "
                            f"({str(e).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if not all(key in meta for key in METADATA_KEYS):
            raise UserError(f"{path}: has no class names or preprocessing in its metadata; "
                            f"export it with 05_deploy/export.py")
        self.stage = meta["stage"]
        self.class_names = json.loads(meta["class_names"])
        self.preprocessing = json.loads(meta["preprocessing"])
        self.input_name = self.session.get_inputs()[0].name
        self.backend = "onnxruntime"

    def preprocess(self, face_rgb):
        """An RGB face crop (H, W, 3) uint8 -> the model's input (C, size, size) float."""
        return preprocess_face(face_rgb, self.preprocessing)

    def run(self, batch):
        """Preprocessed faces (N, C, H, W) float tensor -> probabilities (N, num_classes) NumPy."""
        if self.backend == "onnxruntime":
            probs = softmax(self.session.run(None, {self.input_name: batch.numpy()})[0])
        else:
            with torch.inference_mode():
                probs = self.model(batch).softmax(dim=1).numpy()
        # NaN weights (an .onnx exported from a diverged run) give NaN answers
        if not np.isfinite(probs).all():
            raise UserError(f"{self.path}: the model gives NaN probabilities "
                            f"(its weights are not finite); "
                            f"retrain with a lower --lr and export again")
        return probs

    def probabilities(self, faces_rgb):
        if not faces_rgb:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return self.run(torch.stack([self.preprocess(face) for face in faces_rgb]))


# ---------------------------------------------------------------- finding and cropping faces

def add_detector_flags(parser, min_face, picture):
    """The face finder's flags, the same in predict.py and webcam.py; `min_face` is the default
    smallest face, as a share of the `picture`'s ("image" or "frame") short side."""
    parser.add_argument(
        "--margin",
        type=non_negative_float,
        default=0.1,
        help="crop margin around a found face, share of its size",
    )
    parser.add_argument(
        "--min-neighbors",
        type=non_negative_int,
        default=5,
        help="Haar cascade strictness: higher, fewer false faces",
    )
    parser.add_argument(
        "--min-face",
        type=positive_float,
        default=min_face,
        help=f"smallest face searched for, share of the {picture}'s short side (smaller: slower)",
    )


class FaceDetector:
    """OpenCV's frontal-face Haar cascade: fast on a CPU, shipped inside
    opencv-python(-headless) 4.x."""

    def __init__(self, scale_factor=1.1, min_neighbors=5, min_fraction=0.05, max_side=800):
        cv2 = require("cv2", "opencv-python-headless<5")
        cascade = (
            Path(getattr(getattr(cv2, "data", None), "haarcascades", ""))
            / "haarcascade_frontalface_default.xml"
        )
        if not cascade.is_file():  # OpenCV 5 no longer ships the cascades
            raise UserError(f"OpenCV {cv2.__version__} has no Haar cascade files: "
                            f"pip install 'opencv-python-headless<5'")
        self.cv2, self.cascade = cv2, cv2.CascadeClassifier(str(cascade))
        # step between the scales searched: smaller finds more, slower
        self.scale_factor = scale_factor
        # overlapping hits a face needs: higher, fewer false faces
        self.min_neighbors = min_neighbors
        # ignore faces smaller than this share of the image's short side
        self.min_fraction = min_fraction
        # search a copy shrunk to this: a 12-megapixel photo takes seconds at full size
        self.max_side = max_side

    def __call__(self, image_rgb):
        """Boxes (x, y, w, h) as ints, largest face first."""
        gray = self.cv2.cvtColor(image_rgb, self.cv2.COLOR_RGB2GRAY)
        shrink = min(1.0, self.max_side / max(gray.shape))
        if shrink < 1:
            gray = self.cv2.resize(
                gray,
                None,
                fx=shrink,
                fy=shrink,
                interpolation=self.cv2.INTER_AREA,
            )
        gray = self.cv2.equalizeHist(gray)  # the cascade was trained on evenly lit faces
        smallest = max(24, int(self.min_fraction * min(gray.shape)))
        boxes = self.cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(smallest, smallest),
        )
        # back to the image's pixels
        boxes = [tuple(int(round(v / shrink)) for v in box) for box in boxes]
        return sorted(boxes, key=lambda b: -b[2] * b[3])


def crop_face(image, box, margin=0.1):
    """A square around `box` grown by `margin` of its size on every side, clipped to the image.

    FER2013's faces fill their 48x48 frame from forehead to chin; the Haar box is a little
    tighter, so a small margin brings the crop closer to what the model saw in training.
    """
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * margin)
    x0, y0 = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
    x1, y1 = x0 + int(round(side)), y0 + int(round(side))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(image.shape[1], x1), min(image.shape[0], y1)
    return image[y0:y1, x0:x1], (x0, y0, x1 - x0, y1 - y0)


# ---------------------------------------------------------------- drawing

GREEN, WHITE, BLACK = (80, 200, 60), (255, 255, 255), (0, 0, 0)  # BGR, as OpenCV draws


def draw_face(cv2, frame_bgr, box, class_names, probs):
    """A box, the top label with its probability, and one bar per class beside the face."""
    x, y, w, h = box
    top = int(np.argmax(probs))
    thick = max(1, round(min(frame_bgr.shape[:2]) / 300))
    cv2.rectangle(frame_bgr, (x, y), (x + w, y + h), GREEN, thick)
    scale = max(0.35, h / 220)
    label = f"{class_names[top]} {100 * probs[top]:.0f}%"
    (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    # above the box, or below it at the top edge
    ly = y - 4 if y - th - base - 4 >= 0 else y + h + th + 4
    cv2.rectangle(frame_bgr, (x, ly - th - base), (x + tw + 4, ly + base), GREEN, -1)
    cv2.putText(
        frame_bgr,
        label,
        (x + 2, ly),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        BLACK,
        thick,
        cv2.LINE_AA,
    )

    row = max(11, h // len(class_names))  # the bar panel is as tall as the face
    font = row / 30
    name_w = max(
        cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, font, 1)[0][0]
        for n in class_names
    ) + 6
    bar_w = 4 * row
    panel_w, panel_h = name_w + bar_w + 6, row * len(class_names)
    px = x + w + 6 if x + w + 6 + panel_w <= frame_bgr.shape[1] else max(0, x - 6 - panel_w)
    py = min(max(0, y), max(0, frame_bgr.shape[0] - panel_h))
    region = frame_bgr[py:py + panel_h, px:px + panel_w]
    # darken what is behind the panel so the text reads
    region[:] = (0.35 * region).astype(np.uint8)
    for i, (name, p) in enumerate(zip(class_names, probs)):
        ry = py + i * row
        color = GREEN if i == top else WHITE
        cv2.putText(
            frame_bgr,
            name,
            (px + 3, ry + row - 3),
            cv2.FONT_HERSHEY_SIMPLEX,
            font,
            color,
            1,
            cv2.LINE_AA,
        )
        bx = px + name_w
        cv2.rectangle(
            frame_bgr,
            (bx, ry + 2),
            (bx + max(1, int(bar_w * float(p))), ry + row - 2),
            color,
            -1,
        )
