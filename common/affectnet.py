"""Reading the Kaggle AffectNet copy: 8 classes of 96x96 RGB faces, optionally filtered by relFCs.

    affectnet/                      (the root you pass as --data; names match case-insensitively)
        labels.csv                  optional: [index,]pth,label,relFCs for every split
        Train/anger/image0000006.jpg
        Train/labels.csv            optional: a CSV inside a split folder covers that split only
        Test/...                    (or train/ val/ test/)

`pth` is relative to a split folder (anger/image0000006.jpg) or to the root (Train/anger/...).
Where the CSV and the folder disagree the CSV label wins; an image that no CSV names keeps its
folder's label. relFCs is a per-image confidence score: the documents trained only on rows with
relFCs >= 0.8. Here that filter (`min_relfc`) touches the train split only, after val has been
carved from it, so runs with different thresholds are validated and tested on the same images.

Rows naming missing files, unknown labels and unreadable images are counted, reported with the
first few paths, and skipped. Decoding is the slow part, so the decoded images are cached; the
CSV is re-read every time (cheap), so the counts are printed on every run.
"""
import csv
import sys
from pathlib import Path

import numpy as np
import torch

from common.facedata import (AFFECTNET_CLASSES, PREPROCESSING, DataError, FaceData, cached, folder_fingerprint,
                             note_carved_val, read_image, stratified_split, visible_files)

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
CSV_NAME = "labels.csv"
SHOW = 3  # how many example paths a warning names


def split_dirs(root):
    """{split: folder} for Train/, Test/, val/... directly under root."""
    found = {}
    for child in sorted(Path(root).iterdir()):
        if child.is_dir() and child.name.lower() in SPLIT_FOLDERS:
            found.setdefault(SPLIT_FOLDERS[child.name.lower()], child)
    return found


def _csv_in(folder):
    return next((p for p in sorted(folder.iterdir()) if p.is_file() and p.name.lower() == CSV_NAME), None)


FER2013_ONLY, AFFECTNET_ONLY = ("angry",), ("anger", "contempt")  # the class folder names that tell them apart


def is_affectnet_tree(path):
    """Split folders plus a labels.csv, a val/ folder or an AffectNet-only class folder (anger,
    contempt). FER2013's Kaggle tree has train/ and test/ with "angry" and no contempt. A tree with
    class folders of both (a contempt/ beside angry/) is an error naming the odd one out: guessing
    would read a FER2013 tree as AffectNet and drop all of its angry faces."""
    if path is None or not Path(path).is_dir():
        return False
    dirs = split_dirs(path)
    if not dirs:
        return False
    if "val" in dirs or _csv_in(Path(path)) or any(_csv_in(d) for d in dirs.values()):
        return True
    classes = [c for d in dirs.values() for c in sorted(d.iterdir()) if c.is_dir()]
    fer = [c for c in classes if c.name.lower() in FER2013_ONLY]
    affectnet = [c for c in classes if c.name.lower() in AFFECTNET_ONLY]
    if fer and affectnet:
        odd, usual, kind = (affectnet[0], fer[0], "FER2013") if len(fer) >= len(affectnet) else (fer[0], affectnet[0], "AffectNet")
        raise DataError(f"{odd}: class folder '{odd.name}' does not belong in this {kind} tree (it has {usual}); "
                        f"move it out, or rename the folders to one dataset's class names")
    return bool(affectnet)


def _read_labels_csv(path, problems):
    """Rows of a labels.csv as (pth, label name, relFCs or None, line number)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if "pth" not in header or "label" not in header:
            raise DataError(f"{path}: expected the columns pth,label,relFCs (an index column may lead); "
                            f"the header is {','.join(header) or 'empty'}")
        i_pth, i_label = header.index("pth"), header.index("label")
        i_relfc = header.index("relfcs") if "relfcs" in header else None
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not any(field.strip() for field in row):
                continue
            if len(row) < len(header):
                problems["bad row"].append((f"{path}:{line_no}", f"{len(row)} fields, the header has {len(header)}"))
                continue
            relfc = None
            if i_relfc is not None:
                try:
                    relfc = float(row[i_relfc])
                except ValueError:
                    problems["bad row"].append((f"{path}:{line_no}", f"relFCs '{row[i_relfc]}' is not a number"))
                    continue
            rows.append((row[i_pth].strip().replace("\\", "/").removeprefix("./"), row[i_label].strip(), relfc, line_no))
    return rows, i_relfc is not None


def scan_affectnet(root):
    """Every image of the tree as split -> list of (file, label, relFCs or None), without decoding.

    Also returns the problems found (missing files, unknown labels, bad rows) and how many CSV
    labels overrode their folder, and whether any CSV had a relFCs column.
    """
    root = Path(root)
    dirs = split_dirs(root)
    if not dirs:
        raise DataError(f"{root}: expected Train/ and Test/ (or train/ val/ test/) folders with one "
                        f"sub-folder per class ({', '.join(AFFECTNET_CLASSES)}) and/or a labels.csv")
    problems = {"missing file": [], "path in several splits": [], "unknown label": [], "bad row": []}
    # Images in class folders: the folder name is the label unless a CSV says otherwise.
    on_disk = {split: {} for split in dirs}  # split -> {"anger/x.jpg" lower-cased: (file, folder label)}
    for split, split_dir in dirs.items():
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for file in visible_files(class_dir):  # sub-folders of a class folder hold that class too
                on_disk[split][file.relative_to(split_dir).as_posix().lower()] = (file, class_dir.name.lower())
    # CSV rows: one labels.csv at the root may cover every split, one in a split folder covers that split.
    csvs = [(path, list(dirs)) for path in [_csv_in(root)] if path]
    csvs += [(path, [split]) for split, d in dirs.items() for path in [_csv_in(d)] if path]
    labelled, overridden, has_relfc = {split: {} for split in dirs}, 0, False
    for csv_path, covers in csvs:
        rows, with_relfc = _read_labels_csv(csv_path, problems)
        has_relfc = has_relfc or with_relfc
        for pth, label, relfc, line_no in rows:
            first, _, rest = pth.partition("/")
            if SPLIT_FOLDERS.get(first.lower()) in covers and rest:  # a path relative to the root
                targets = [(SPLIT_FOLDERS[first.lower()], rest)]
            else:
                targets = [(split, pth) for split in covers]
            found = [(split, rel) for split, rel in targets
                     if rel.lower() in on_disk[split] or (dirs[split] / rel).is_file()]
            if not found:
                problems["missing file"].append((f"{csv_path}:{line_no}", pth))
                continue
            if len(found) > 1:  # split-relative, and that name exists in several splits
                problems["path in several splits"].append((f"{csv_path}:{line_no}", f"{pth}: prefix it with its split folder"))
                continue
            if label.lower() not in AFFECTNET_CLASSES:
                problems["unknown label"].append((f"{csv_path}:{line_no}", f"label '{label}'"))
                for split, rel in found:  # a known file with a bad label is skipped, not relabelled by its folder
                    labelled[split][rel.lower()] = None
                continue
            for split, rel in found:
                file, folder = on_disk[split].get(rel.lower(), (dirs[split] / rel, None))
                overridden += folder is not None and folder != label.lower()
                labelled[split][rel.lower()] = (file, AFFECTNET_CLASSES.index(label.lower()), relfc)
    records = {}
    for split in dirs:
        rows = [row for row in labelled[split].values() if row is not None]
        for key, (file, folder) in on_disk[split].items():
            if key in labelled[split] or file.suffix.lower() == ".csv":
                continue
            if folder not in AFFECTNET_CLASSES:
                problems["unknown label"].append((str(file), f"class folder '{file.parent.name}'"))
                continue
            rows.append((file, AFFECTNET_CLASSES.index(folder), None))
        records[split] = sorted(rows, key=lambda row: str(row[0]))
    return records, problems, overridden, has_relfc


def _decode(records):
    """Decode every record; an unreadable image gets label -1 so the cache stays aligned with
    the records (the scan is deterministic for the same files, which the cache key covers)."""
    size, channels = PREPROCESSING["affectnet"]["size"], PREPROCESSING["affectnet"]["channels"]
    splits = {}
    for split, rows in records.items():
        images = np.zeros((len(rows), channels, size, size), np.uint8)
        labels = np.full(len(rows), -1, np.int64)
        for i, (file, label, _) in enumerate(rows):
            image = read_image(file, size, channels, skipped=[])
            if image is not None:
                images[i], labels[i] = image, label
        splits[split] = (torch.from_numpy(images), torch.from_numpy(labels))
    return splits


def _report(root, problems, overridden):
    for kind, items in problems.items():
        if items:
            first = "; ".join(f"{where}: {what}" for where, what in items[:SHOW])
            print(f"warning: {root}: {kind}: skipped {len(items)} (first: {first})", file=sys.stderr)
    if overridden:
        print(f"note: {root}: {overridden} labels.csv label(s) differ from the image's folder; the CSV wins",
              file=sys.stderr)


def filter_by_relfc(root, rows, min_relfc):
    """Keep rows with relFCs >= min_relfc (a row without a score is dropped) and print per class
    how many were kept and lost."""
    keep = [row for row in rows if row[2] is not None and row[2] >= min_relfc]
    kept = np.bincount([row[1] for row in keep], minlength=len(AFFECTNET_CLASSES))
    total = np.bincount([row[1] for row in rows], minlength=len(AFFECTNET_CLASSES))
    per_class = ", ".join(f"{name} {k} kept {t - k} lost" for name, k, t in zip(AFFECTNET_CLASSES, kept, total))
    print(f"note: {root}: train rows with relFCs >= {min_relfc}: {len(keep)} kept, {len(rows) - len(keep)} lost "
          f"({per_class})", file=sys.stderr)
    return keep


def read_affectnet(root, seed=0, val_fraction=0.1, use_cache=True, min_relfc=None):
    """The tree as a FaceData (uint8 (N, 3, 96, 96), AffectNet class order)."""
    root = Path(root)
    records, problems, overridden, has_relfc = scan_affectnet(root)
    dirs = split_dirs(root)
    if min_relfc is not None and not has_relfc:
        raise DataError(f"{root}: --min-relfc needs a labels.csv with a relFCs column; none was found")

    def read_affectnet_images(_):  # runs on a cache miss only; the name is part of the cache key
        return FaceData(_decode(records), list(AFFECTNET_CLASSES), source=str(root))

    decoded = cached(root, folder_fingerprint(root), read_affectnet_images, use_cache).splits
    unreadable = [(str(row[0]), "unreadable image") for split, rows in records.items()
                  for row, label in zip(rows, decoded[split][1].tolist()) if label < 0]
    problems["unreadable image"] = unreadable
    _report(root, problems, overridden)
    readable = {split: [i for i, label in enumerate(decoded[split][1].tolist()) if label >= 0] for split in records}
    if "val" not in records and readable.get("train"):  # carve val before filtering, so it is the same for any threshold
        labels = decoded["train"][1][readable["train"]].numpy()
        keep, held = stratified_split(labels, val_fraction, seed)
        readable["val"] = [readable["train"][i] for i in held]
        readable["train"] = [readable["train"][i] for i in keep]
        decoded["val"], records["val"] = decoded["train"], records["train"]
        note_carved_val(root, val_fraction, seed)
    if min_relfc is not None and "train" in readable:
        rows = [(i, records["train"][i][1], records["train"][i][2]) for i in readable["train"]]
        readable["train"] = [row[0] for row in filter_by_relfc(root, rows, min_relfc)]
    splits = {}
    for split in ("train", "val", "test"):
        if split not in readable:
            continue
        if not readable[split]:
            why = f" after --min-relfc {min_relfc}" if split == "train" and min_relfc is not None else ""
            why = f" (train has too few images per class for a {val_fraction:.0%} val)" if split == "val" and "val" not in dirs else why
            raise DataError(f"{root}: the {split} split has no usable images{why} (see the warnings above); "
                            f"check the folders and labels.csv")
        index = torch.tensor(readable[split], dtype=torch.long)
        splits[split] = (decoded[split][0][index], decoded[split][1][index])
    return FaceData(splits, list(AFFECTNET_CLASSES), dict(PREPROCESSING["affectnet"]), source=str(root))
