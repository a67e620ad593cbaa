"""Reading FER2013: the CSV (fer2013.csv or icml_face_data.csv, plain or .gz) and the Kaggle image folders.

    fer2013.csv                     emotion,pixels,Usage; 48x48 gray pixels as 2304 numbers
    fer2013/train/<class>/Training_*.jpg
    fer2013/test/<class>/{PublicTest,PrivateTest}_*.jpg

Both give uint8 (N, 1, 48, 48) images and labels in the CSV's order (FER2013_CLASSES).
"""
import csv
import warnings
from pathlib import Path

import numpy as np
import torch

from common.facedata import (FER2013_CLASSES, SPLITS, USAGE_TO_SPLIT, DataError, FaceData, read_image, read_text,
                             report_skipped, split_fer2013_line, visible_files)

FER_PIXELS = 48 * 48


# ---------------------------------------------------------------- the CSV

def read_fer2013_csv(path):
    """fer2013.csv or icml_face_data.csv (header names may carry spaces), .gz or not."""
    path = Path(path)
    try:
        lines = read_text(path).splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read as a CSV ({e}); is it a FER2013 .csv or .csv.gz?") from None
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: file is empty; expected a FER2013 CSV with the header emotion,pixels,Usage")
    header = next(csv.reader([lines[0]]))
    columns = [name.strip().lower() for name in header]
    for needed in ("emotion", "pixels"):
        if needed not in columns:
            raise DataError(f"{path}: missing column '{needed}' (header is {','.join(header)}); "
                            f"expected emotion,pixels,Usage as in fer2013.csv")
    i_emotion, i_pixels = columns.index("emotion"), columns.index("pixels")
    i_usage = columns.index("usage") if "usage" in columns else None
    labels, usages, pixel_rows, line_nos = [], [], [], []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        row = split_fer2013_line(line, len(header))
        if len(row) != len(header):
            raise DataError(f"{path}: line {line_no}: {len(row)} fields, the header has {len(header)}")
        labels.append(_parse_label(path, line_no, row[i_emotion]))
        usage = row[i_usage].strip() if i_usage is not None else "Training"
        if usage not in USAGE_TO_SPLIT:
            raise DataError(f"{path}: line {line_no}: unknown Usage '{usage}'; expected Training, PublicTest or PrivateTest")
        usages.append(usage)
        pixels = row[i_pixels].strip()
        if pixels.count(" ") != FER_PIXELS - 1 and len(pixels.split()) != FER_PIXELS:
            raise DataError(f"{path}: line {line_no}: {len(pixels.split())} pixel values, expected "
                            f"{FER_PIXELS} (48x48); fix or delete that row")
        pixel_rows.append(pixels)
        line_nos.append(line_no)
    if not labels:
        raise DataError(f"{path}: has a header but no rows")
    images = _parse_pixels(path, pixel_rows, line_nos).reshape(-1, 1, 48, 48)
    labels = np.array(labels, dtype=np.int64)
    usages = np.array(usages)
    splits = {}
    for usage, split in USAGE_TO_SPLIT.items():
        mask = usages == usage
        if mask.any():
            splits[split] = (torch.from_numpy(images[mask]), torch.from_numpy(labels[mask]))
    return FaceData(splits, list(FER2013_CLASSES), source=str(path))


def _parse_label(path, line_no, text):
    try:
        label = int(text.strip())
    except ValueError:
        label = None
    if label is None or not 0 <= label < len(FER2013_CLASSES):
        raise DataError(f"{path}: line {line_no}: unknown label '{text.strip()}' in column emotion; "
                        f"expected 0-6 ({', '.join(FER2013_CLASSES)})")
    return label


def _parse_pixels(path, pixel_rows, line_nos):
    """All rows in one NumPy call (seconds instead of a minute for 35k rows); on failure,
    look row by row for the culprit so the error can name it."""
    expected = len(pixel_rows) * FER_PIXELS
    try:
        with warnings.catch_warnings():  # older NumPy warns and stops early at a non-numeric token
            warnings.simplefilter("ignore", DeprecationWarning)
            values = np.fromstring(" ".join(pixel_rows), dtype=np.int32, sep=" ")
    except ValueError:  # newer NumPy raises instead
        values = np.zeros(0, np.int32)
    if values.size == expected and (values.size == 0 or (values.min() >= 0 and values.max() <= 255)):
        return values.astype(np.uint8)
    for line_no, pixels in zip(line_nos, pixel_rows):
        for token in pixels.split():
            if not token.isdigit() or int(token) > 255:
                raise DataError(f"{path}: line {line_no}: pixel value '{token[:20]}' is not an "
                                f"integer 0-255; fix or delete that row")
    raise DataError(f"{path}: pixel column could not be parsed; check the file is a FER2013 CSV")


# ---------------------------------------------------------------- the image folders

def _child_dir(root, name):
    """root/name, matching the name case-insensitively (copies differ: train/ vs Train/)."""
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() == name:
            return child
    return None


def read_fer2013_folders(root):
    """train/<class>/*.jpg and test/<class>/*.jpg; test/ split by the PublicTest_/PrivateTest_ prefix.

    Images in sub-folders of a class folder belong to that class; a file that lies in no class
    folder, or cannot be decoded, is skipped and reported (every run: the cache keeps the list).
    """
    root = Path(root)
    train_dir, test_dir = _child_dir(root, "train"), _child_dir(root, "test")
    if train_dir is None and test_dir is None:
        raise DataError(f"{root}: expected train/ and test/ folders with one sub-folder per class "
                        f"({', '.join(FER2013_CLASSES)})")
    collected = {split: ([], []) for split in SPLITS}
    skipped = []
    for split_dir in (d for d in (train_dir, test_dir) if d is not None):
        skipped += [(p, "not inside a class folder") for p in sorted(split_dir.iterdir())
                    if p.is_file() and not p.name.startswith(".")]
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            name = class_dir.name.lower()
            if name not in FER2013_CLASSES:
                raise DataError(f"{class_dir}: unknown class folder '{class_dir.name}'; "
                                f"expected one of {', '.join(FER2013_CLASSES)}")
            label = FER2013_CLASSES.index(name)  # CSV order, never alphabetical
            for file in visible_files(class_dir):
                image = read_image(file, size=48, channels=1, skipped=skipped)
                if image is None:
                    continue
                if split_dir is train_dir:
                    split = "train"
                else:
                    split = "val" if file.name.startswith("PublicTest") else "test"
                collected[split][0].append(image)
                collected[split][1].append(label)
    report_skipped(skipped, root)
    splits = {split: (torch.from_numpy(np.stack(imgs)), torch.tensor(labels, dtype=torch.long))
              for split, (imgs, labels) in collected.items() if imgs}
    if not splits:
        raise DataError(f"{root}: no readable images found under train/ or test/")
    return FaceData(splits, list(FER2013_CLASSES), source=str(root), skipped=[(str(p), why) for p, why in skipped])
