"""Reading AffectNet in the "YOLO format" layout (a common Kaggle copy of AffectNet-8).

    YOLO_format/                    (the folder you pass as --data; names match case-insensitively)
        data.yaml                   names: [Anger, Contempt, Disgust, ...]  (the class index order)
        train/images/image0000006.jpg
        train/labels/image0000006.txt   "4 0.5 0.5 1.0 1.0": class index, then a box
        valid/images/...            the validation split
        test/images/...

An object detector's layout used for whole faces: every label file holds one line whose first
number is the class index in data.yaml's order, and the box covers the whole image, so the box is
ignored. The index is mapped by name onto the course's AffectNet order (common.classes), never
trusted to match it. The copy has no relFCs scores, so --min-relfc cannot apply to it.

An image without a label, a label without an image, an empty label file and an unreadable image
are counted, named (the first few) and skipped. A class index outside data.yaml's names is an
error naming the file: it means the labels and data.yaml belong to different copies.
"""
import re
import sys
from pathlib import Path

import numpy as np
import torch

from common.facedata import (AFFECTNET_CLASSES, PREPROCESSING, DataError, FaceData, cached,
                             folder_fingerprint, read_image)

YAML_NAMES = ("data.yaml", "data.yml")
SPLIT_FOLDERS = {"train": "train", "valid": "val", "val": "val", "test": "test"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# Other spellings of the course's class names that data.yaml files use.
ALIASES = {"angry": "anger", "happiness": "happy", "sadness": "sad", "surprised": "surprise"}
SHOW = 3  # how many example files a warning names


def _child(folder, name):
    """The entry of `folder` called `name`, ignoring case (Train/, TRAIN/ and train/ all occur)."""
    for child in sorted(Path(folder).iterdir()):
        if child.name.lower() == name:
            return child
    return None


def yaml_file(path):
    """data.yaml of a YOLO tree, for the tree's folder or the data.yaml itself; None otherwise."""
    path = Path(path)
    if path.is_file() and path.name.lower() in YAML_NAMES:
        return path
    if not path.is_dir():
        return None
    for name in YAML_NAMES:
        found = _child(path, name)
        if found is not None and found.is_file():
            return found
    return None


def is_yolo_tree(path):
    return path is not None and yaml_file(path) is not None


def read_yaml_names(file):
    """The `names:` list of a data.yaml, without a YAML library.

    Accepts the three spellings YOLO tools write: a flow list `names: [a, b]` (over several lines
    too), a block list (`- a` per line) and a mapping (`0: a` per line).
    """
    text = Path(file).read_text(encoding="utf-8-sig")
    text = re.sub(r"(?m)\s+#.*$|^#.*$", "", text)  # comments
    match = re.search(r"(?m)^names:[ \t]*(.*)$", text)
    if match is None:
        raise DataError(f"{file}: no 'names:' list; it should list the class names in label-index order")
    rest = text[match.start(1):]
    if rest.lstrip().startswith("["):  # a flow list, which may start on the next line
        flow = rest.lstrip()
        end = flow.find("]")
        if end < 0:
            raise DataError(f"{file}: the 'names: [' list is never closed with ']'")
        items = flow[1:end].split(",")
    else:
        items = []
        for line in rest.splitlines()[1:]:
            if not line.strip():
                continue
            if not line[0].isspace() and not line.startswith("-"):
                break  # the next top-level key (a block list may start at column 0)
            item = line.strip()
            if item.startswith("-"):
                items.append(item[1:])
            elif ":" in item:
                items.append(item.split(":", 1)[1])
    names = [item.strip().strip("'\"").strip() for item in items]
    names = [name for name in names if name]
    if not names:
        raise DataError(f"{file}: the 'names:' list is empty; it should list the class names")
    return names


def class_map(file):
    """data.yaml index -> index in the course's AFFECTNET_CLASSES."""
    mapping = []
    for name in read_yaml_names(file):
        course_name = ALIASES.get(name.lower(), name.lower())
        if course_name not in AFFECTNET_CLASSES:
            raise DataError(f"{file}: class '{name}' is not an AffectNet class "
                            f"({', '.join(AFFECTNET_CLASSES)}); rename it in data.yaml")
        mapping.append(AFFECTNET_CLASSES.index(course_name))
    if len(set(mapping)) != len(mapping):
        raise DataError(f"{file}: names the same class twice; each class must appear once")
    return mapping


def read_label(file, mapping):
    """The course class index of one label file, or None for an empty file (YOLO: no object)."""
    lines = [line.split() for line in Path(file).read_text(encoding="utf-8-sig").splitlines()]
    lines = [fields for fields in lines if fields]
    if not lines:
        return None
    indices = set()
    for fields in lines:
        if not re.fullmatch(r"\d+", fields[0]):
            raise DataError(f"{file}: '{fields[0]}' is not a class index; a label line starts with "
                            f"an integer from 0 to {len(mapping) - 1}")
        index = int(fields[0])
        if index >= len(mapping):
            raise DataError(f"{file}: class index {index} is outside data.yaml's {len(mapping)} names "
                            f"(0-{len(mapping) - 1}); this label and data.yaml are from different copies")
        indices.add(index)
    if len(indices) > 1:
        raise DataError(f"{file}: boxes of different classes ({sorted(indices)}); a face crop has one label")
    return mapping[indices.pop()]


def scan_yolo(root):
    """{split: [(image file, course label)]} plus the problems found, without decoding images."""
    root = Path(root)
    mapping = class_map(yaml_file(root))
    problems = {"image without a label": [], "label without an image": [], "empty label": []}
    records = {}
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        split = SPLIT_FOLDERS.get(child.name.lower())
        if split is None:
            continue
        if split in records:
            raise DataError(f"{child}: a second {split} folder; keep one of them")
        images_dir, labels_dir = _child(child, "images"), _child(child, "labels")
        if images_dir is None or labels_dir is None:
            raise DataError(f"{child}: expected images/ and labels/ inside it (the YOLO layout)")
        images = {p.stem: p for p in sorted(images_dir.iterdir())
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}
        labels = {p.stem: p for p in sorted(labels_dir.iterdir())
                  if p.is_file() and p.suffix.lower() == ".txt" and not p.name.startswith(".")}
        problems["image without a label"] += [images[stem] for stem in sorted(images.keys() - labels.keys())]
        problems["label without an image"] += [labels[stem] for stem in sorted(labels.keys() - images.keys())]
        rows = []
        for stem in sorted(images.keys() & labels.keys()):
            label = read_label(labels[stem], mapping)
            if label is None:
                problems["empty label"].append(labels[stem])
                continue
            rows.append((images[stem], label))
        records[split] = rows
    if "train" not in records and "test" not in records:
        raise DataError(f"{root}: has data.yaml but no train/, valid/ or test/ folder beside it")
    return records, problems


def report_problems(root, problems):
    for kind, files in problems.items():
        if files:
            first = ", ".join(str(f) for f in files[:SHOW])
            print(f"warning: {root}: {kind}: skipped {len(files)} (first: {first})", file=sys.stderr)


def read_yolo(path, use_cache=True):
    """The tree as a FaceData: uint8 (N, 3, 96, 96) faces in the course's AffectNet class order.

    `files[split]` names every image of a split in order, so errors can be traced to files.
    """
    root = Path(path)
    if root.is_file():
        root = root.parent  # --data pointed at data.yaml itself
    records, problems = scan_yolo(root)
    size = PREPROCESSING["affectnet"]["size"]
    channels = PREPROCESSING["affectnet"]["channels"]

    def read_yolo_images(_):  # runs on a cache miss only; the name is part of the cache key
        splits = {}
        for split, rows in records.items():
            images = np.zeros((len(rows), channels, size, size), np.uint8)
            labels = np.full(len(rows), -1, np.int64)  # -1 marks an unreadable image
            for i, (file, label) in enumerate(rows):
                image = read_image(file, size, channels, skipped=[])
                if image is not None:
                    images[i] = image
                    labels[i] = label
            splits[split] = (torch.from_numpy(images), torch.from_numpy(labels))
        return FaceData(splits, list(AFFECTNET_CLASSES), source=str(root))

    # The cache holds the decoded arrays; the -1 labels in it say which files could not be read.
    decoded = cached(root, folder_fingerprint(root), read_yolo_images, use_cache)
    problems["unreadable image"] = []
    for split, (_, labels) in decoded.splits.items():
        bad = torch.nonzero(labels < 0).flatten().tolist()
        problems["unreadable image"] += [records[split][i][0] for i in bad]
    report_problems(root, problems)
    splits, files = {}, {}
    for split, (images, labels) in decoded.splits.items():
        keep = torch.nonzero(labels >= 0).flatten()
        if len(keep) == 0:
            raise DataError(f"{root}: the {split} split has no usable images (see the warnings above)")
        splits[split] = (images[keep], labels[keep])
        files[split] = [str(records[split][i][0]) for i in keep.tolist()]
    preprocessing = dict(PREPROCESSING["affectnet"])
    return FaceData(splits, list(AFFECTNET_CLASSES), preprocessing, source=str(root), files=files)
