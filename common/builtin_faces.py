"""The built-in data set: cartoon faces drawn by code, so every stage trains with no download.

Each class moves a few facial "action units" (brow height and slant, eye opening, mouth curve,
opening and width, a nose wrinkle, a one-sided smirk) away from a neutral face. Every face draws
its own expression intensity, so weak expressions look close to neutral, and then pose, size,
lighting, noise, blur and occluders vary on top. Class sizes follow FER2013 (disgust about 16x
rarer than happy) and 4% of labels are flipped, as in real crowd-labelled data. A baseline CNN
lands well above chance and well below 100%: a small task, not a trivial one.

    python -m common.builtin_faces --write-csv data/builtin/fer2013.csv --write-folders data/builtin/folders
    python -m analysis.explore --data builtin       # their class counts and a grid of samples per class

Deterministic: the same seed gives the same pixels (NumPy's Generator and Pillow's drawing).
"""
import argparse
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from common.facedata import AFFECTNET_CLASSES, FER2013_CLASSES, PREPROCESSING, SPLIT_TO_USAGE, SPLITS, FaceData

# Class mean of each action unit, for an expression at full intensity (0 = the neutral face).
#            brow_up brow_v eye_open mouth_curve mouth_open mouth_wide wrinkle smirk
EXPRESSIONS = {
    "angry":    (-0.8, 1.0, -0.35, -0.35, 0.05, -0.10, 0.2, 0.0),
    "disgust":  (-0.5, 0.5, -0.45, -0.60, 0.15, 0.00, 1.0, 0.2),
    "fear":     (0.7, -0.7, 0.45, -0.25, 0.55, 0.25, 0.0, 0.0),
    "happy":    (0.1, 0.0, -0.20, 1.10, 0.35, 0.20, 0.0, 0.0),
    "sad":      (0.3, -1.0, -0.15, -0.90, 0.00, -0.05, 0.0, 0.0),
    "surprise": (1.1, 0.0, 0.55, 0.00, 1.10, -0.15, 0.0, 0.0),
    "neutral":  (0.0, 0.0, 0.00, 0.00, 0.00, 0.00, 0.0, 0.0),
    "contempt": (0.0, 0.2, -0.10, 0.10, 0.00, 0.00, 0.0, 1.0),
}
ALIASES = {"anger": "angry"}  # AffectNet's spelling
# FER2013 training-set class frequencies (angry ... neutral), used for the imbalance.
FER2013_COUNTS = {"angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "sad": 4830, "surprise": 3171, "neutral": 4965}
AFFECTNET_EXTRA = {"contempt": 1500}  # AffectNet's contempt is rare too
LABEL_NOISE = 0.04


def class_weights(class_names):
    counts = {**FER2013_COUNTS, **AFFECTNET_EXTRA}
    weights = np.array([counts[ALIASES.get(c, c)] for c in class_names], dtype=float)
    return weights / weights.sum()


def draw_face(rng, expression, intensity, size, color):
    """One face as a uint8 array (size, size) or (size, size, 3). Drawn at 2x, then downsampled
    (cheap anti-aliasing)."""
    big = size * 2
    s = big / 96  # all coordinates below are for a 96-pixel canvas
    units = np.array(EXPRESSIONS[expression]) * intensity + rng.normal(0, 0.12, 8)
    brow_up, brow_v, eye_open, curve, mouth_open, mouth_wide, wrinkle, smirk = units
    if color:
        background = tuple(int(v) for v in rng.integers(20, 235, 3))
        skin = tuple(int(v) for v in np.array([225, 180, 150]) * rng.uniform(0.45, 1.1) + rng.normal(0, 10, 3))
        dark = tuple(int(v) for v in rng.integers(10, 80, 3))
    else:
        background = int(rng.integers(10, 245))
        skin = int(rng.integers(110, 230))
        dark = int(rng.integers(0, 70))
    img = Image.new("RGB" if color else "L", (big, big), background)
    d = ImageDraw.Draw(img)
    cx, cy = 48 * s, 50 * s
    fw, fh = rng.uniform(30, 37) * s, rng.uniform(38, 45) * s  # half width / height of the head
    if rng.random() < 0.6:  # hair
        d.ellipse([cx - fw - 3 * s, cy - fh - 5 * s, cx + fw + 3 * s, cy + 0.2 * fh], fill=dark)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    line = max(1, int(round(2.2 * s)))
    eye_y = cy - 0.18 * fh
    for side in (-1, 1):
        ex = cx + side * 0.42 * fw
        eh = max(0.6, 4.2 * (1 + eye_open)) * s  # half height of the eye opening
        d.ellipse([ex - 6.5 * s, eye_y - eh, ex + 6.5 * s, eye_y + eh], fill=(245,) * 3 if color else 245, outline=dark)
        d.ellipse([ex - 2.8 * s, eye_y - min(eh, 2.8 * s), ex + 2.8 * s, eye_y + min(eh, 2.8 * s)], fill=dark)
        by = eye_y - (10 + 6 * brow_up) * s  # brow: the inner end drops for brow_v > 0 (anger)
        inner, outer = ex - side * 7 * s, ex + side * 8 * s
        d.line([inner, by + 4 * brow_v * s, outer, by - 2 * brow_v * s], fill=dark, width=line + 1)
    nose_y = cy + 0.15 * fh
    d.line([cx, eye_y + 4 * s, cx - 2 * s, nose_y, cx + 2 * s, nose_y], fill=dark, width=max(1, line - 1))
    if wrinkle > 0.4:
        for k in range(3):
            y = eye_y + (3 + 2.5 * k) * s
            d.line([cx - 4 * s, y, cx + 4 * s, y - 1 * s], fill=dark, width=1)
    my, half_w = cy + 0.52 * fh, (12 + 6 * mouth_wide) * s
    left_y = my - 7 * curve * s - 5 * max(smirk, 0) * s  # the smirk lifts one corner only
    right_y = my - 7 * curve * s
    mid_y = my + 2 * curve * s
    if mouth_open > 0.3:  # an open mouth: a dark polygon between the lips
        gap = 5 * mouth_open * s
        d.polygon([(cx - half_w, left_y), (cx, mid_y - gap * 0.3), (cx + half_w, right_y), (cx, mid_y + gap)], fill=dark)
    else:
        d.line([(cx - half_w, left_y), (cx - half_w / 2, (left_y + mid_y) / 2 + curve * s), (cx, mid_y),
                (cx + half_w / 2, (right_y + mid_y) / 2 + curve * s), (cx + half_w, right_y)], fill=dark, width=line)
    if rng.random() < 0.25:  # an occluder: a hand, a scarf or sunglasses
        ox, oy = rng.uniform(10, 86) * s, rng.uniform(20, 90) * s
        w, h = rng.uniform(12, 30) * s, rng.uniform(8, 20) * s
        fill = tuple(int(v) for v in rng.integers(0, 255, 3)) if color else int(rng.integers(0, 255))
        d.rectangle([ox - w / 2, oy - h / 2, ox + w / 2, oy + h / 2], fill=fill)
    # Pose: rotate, scale and shift the whole drawing.
    angle = rng.normal(0, 9)
    scale = rng.uniform(0.85, 1.15)
    tx, ty = rng.normal(0, 3.5 * s, 2)
    a = math.radians(angle)
    cos, sin = math.cos(a) / scale, math.sin(a) / scale
    c0 = big / 2
    img = img.transform((big, big), Image.AFFINE, (cos, sin, c0 - cos * c0 - sin * c0 - tx,
                                                   -sin, cos, c0 + sin * c0 - cos * c0 - ty),
                        resample=Image.BILINEAR, fillcolor=background)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0) * s))
    return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32)


def make_faces(n, class_names, seed=0, size=48, color=False):
    """n faces with labels drawn with FER2013-like class frequencies. Returns uint8 images
    (n, C, size, size) and int64 labels (n,)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(class_names), size=n, p=class_weights(class_names))
    images = np.empty((n, 3 if color else 1, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    for i, label in enumerate(labels):
        name = ALIASES.get(class_names[label], class_names[label])
        face = draw_face(rng, name, rng.uniform(0.35, 1.25), size, color)
        # Lighting: a brightness gradient in a random direction, then contrast and sensor noise.
        theta = rng.uniform(0, 2 * np.pi)
        light = 1 + rng.uniform(0, 0.8) * (np.cos(theta) * xx + np.sin(theta) * yy)
        if color:
            light = light[..., None]
        face = face * light * rng.uniform(0.7, 1.2) + rng.uniform(-30, 30)
        face = face + rng.normal(0, rng.uniform(2, 14), face.shape)
        face = np.clip(face, 0, 255).astype(np.uint8)
        images[i] = face.transpose(2, 0, 1) if color else face[None]
    noisy = rng.random(n) < LABEL_NOISE  # crowd labels are wrong now and then
    labels[noisy] = (labels[noisy] + rng.integers(1, len(class_names), noisy.sum())) % len(class_names)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def make_builtin_dataset(seed=0, variant="fer2013", sizes=(3000, 600, 600)):
    """The built-in FaceData: train/val/test drawn from separate seeds (no shared faces).

    variant "fer2013": 7 classes, 48x48 grayscale. "affectnet": 8 classes with contempt,
    96x96 colour, like the Kaggle AffectNet copy.
    """
    class_names = list(FER2013_CLASSES if variant == "fer2013" else AFFECTNET_CLASSES)
    spec = dict(PREPROCESSING[variant])
    splits = {}
    for k, (split, n) in enumerate(zip(SPLITS, sizes)):
        splits[split] = make_faces(n, class_names, seed=seed * 1000 + k, size=spec["size"], color=spec["channels"] == 3)
    return FaceData(splits, class_names, spec, source=f"built-in {variant} faces (seed {seed})")


def write_fer2013_csv(data, path):
    """Write 48x48 grayscale FaceData in the fer2013.csv format (emotion,pixels,Usage)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write("emotion,pixels,Usage\n")
        for split, (images, labels) in data.splits.items():
            for image, label in zip(images, labels):
                f.write(f"{int(label)},{' '.join(map(str, image.flatten().tolist()))},{SPLIT_TO_USAGE[split]}\n")


def write_image_folders(data, root):
    """Write FaceData as the Kaggle FER2013 folder tree: train/<class>/Training_N.png and
    test/<class>/{PublicTest,PrivateTest}_N.png."""
    layout = {"train": ("train", "Training"), "val": ("test", "PublicTest"), "test": ("test", "PrivateTest")}
    root = Path(root)
    for split, (images, labels) in data.splits.items():
        folder, prefix = layout[split]
        for i, (image, label) in enumerate(zip(images, labels)):
            out = root / folder / data.class_names[int(label)]
            out.mkdir(parents=True, exist_ok=True)
            array = image.numpy().transpose(1, 2, 0)
            Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(out / f"{prefix}_{i}.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--variant", choices=["fer2013", "affectnet"], default="fer2013")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-csv", help="write the set as fer2013.csv (fer2013 variant)")
    parser.add_argument("--write-folders", help="write the set as Kaggle FER2013 image folders")
    args = parser.parse_args()
    data = make_builtin_dataset(args.seed, args.variant)
    print(data.source, data.sizes(), "classes:", ", ".join(data.class_names))
    if args.write_csv:
        write_fer2013_csv(data, args.write_csv)
        print("wrote", args.write_csv)
    if args.write_folders:
        write_image_folders(data, args.write_folders)
        print("wrote", args.write_folders)


if __name__ == "__main__":
    main()
