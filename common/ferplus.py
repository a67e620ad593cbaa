"""FER+ labels: FER2013's faces relabelled by 10 crowd workers each (Barsoum et al., 2016).

fer2013new.csv has one row per fer2013.csv row, in the same order (the join is by row position;
"Image name" is a file name, not a row number):

    Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF

A row with an empty image name is not a face: it is dropped. Majority mode takes the emotion with
the most votes and drops a row whose largest vote is "unknown" or "NF" (not a face) or is shared
by two columns. Probability mode trains on the vote shares over the 8 emotions (soft targets, a
float (N, 8) tensor) and keeps tied rows in train, since a tie is just a 50/50 target; val and
test keep the majority label either way, so both modes are scored the same way (as in the paper).

FaceData stores each split separately, in file order. The k-th row of split S is the k-th row of
fer2013.csv whose Usage maps to S, so we re-read fer2013.csv's Usage column (a few seconds at
most) to find each row's position, and insist that fer2013new.csv's Usage matches it row by row:
two files that do not pair up are an error, not a silent shuffle of labels.
"""
import csv
import sys
from pathlib import Path

import numpy as np
import torch

from common.facedata import (FER2013_CLASSES, FERPLUS_CLASSES, SPLIT_TO_USAGE, USAGE_TO_SPLIT, DataError, FaceData,
                             read_text, split_fer2013_line)

VOTE_COLUMNS = FERPLUS_CLASSES + ["unknown", "NF"]
HEADER = ["Usage", "Image name"] + VOTE_COLUMNS


def read_ferplus_csv(path):
    """Usage (list of str), image names (list of str) and votes (int64 (N, 10), VOTE_COLUMNS order)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; --ferplus takes FER+'s fer2013new.csv "
                        f"(github.com/microsoft/FERPlus), put beside fer2013.csv")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [name for name in HEADER if name.lower() not in [h.lower() for h in header]]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)} (header is {','.join(header) or 'empty'}); "
                            f"expected FER+'s fer2013new.csv: {','.join(HEADER)}")
        lower = [h.lower() for h in header]
        i_usage, i_name = lower.index("usage"), lower.index("image name")
        i_votes = [lower.index(name.lower()) for name in VOTE_COLUMNS]
        usages, names, votes = [], [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}: line {line_no}: {len(row)} fields, the header has {len(header)}")
            try:
                votes.append([int(row[i]) for i in i_votes])
            except ValueError:
                raise DataError(f"{path}: line {line_no}: vote counts must be integers; fix or restore that row") from None
            usages.append(row[i_usage].strip())
            names.append(row[i_name].strip())
    return usages, names, np.array(votes, dtype=np.int64).reshape(-1, len(VOTE_COLUMNS))


def fer2013_usages(path):
    """The Usage of every row of a FER2013 CSV, in file order (what read_fer2013_csv splits by)."""
    lines = read_text(path).splitlines()
    header = [name.strip().lower() for name in next(csv.reader([lines[0]]))]
    i_usage = header.index("usage") if "usage" in header else None
    return [split_fer2013_line(line, len(header))[i_usage].strip() if i_usage is not None else "Training"
            for line in lines[1:] if line.strip()]


def vote_labels(votes):
    """Majority labels and the rows each mode keeps, from raw votes (N, 10)."""
    emotion_top = votes[:, :8].max(axis=1)
    clear = (emotion_top > votes[:, 8:].max(axis=1)) & (emotion_top > 0)  # an emotion beats unknown and NF
    tied = (votes[:, :8] == emotion_top[:, None]).sum(axis=1) > 1
    majority = clear & ~tied
    return votes[:, :8].argmax(axis=1), majority, clear


def apply_ferplus_labels(data, ferplus, ferplus_mode="majority"):
    """Relabel a FaceData read from fer2013.csv with the FER+ votes of `ferplus` (fer2013new.csv)."""
    source = Path(data.source)
    if ferplus is None:
        raise DataError("--labels ferplus needs --ferplus PATH/fer2013new.csv (FER+'s votes for fer2013.csv)")
    if not source.is_file() or data.class_names != FER2013_CLASSES:
        raise DataError(f"{data.source}: FER+ labels join fer2013.csv by row position; give --data the "
                        f"fer2013.csv (or icml_face_data.csv) that fer2013new.csv belongs to")
    usages, names, votes = read_ferplus_csv(ferplus)
    fer_usages = fer2013_usages(source)
    if len(usages) != len(fer_usages):
        raise DataError(f"{ferplus}: {len(usages)} rows, but {source} has {len(fer_usages)}; fer2013new.csv "
                        f"must have one row per fer2013.csv row (they are joined by position)")
    for i, (a, b) in enumerate(zip(usages, fer_usages)):
        if a != b:
            raise DataError(f"{ferplus}: row {i + 1} has Usage '{a}' but row {i + 1} of {source} has '{b}'; "
                            f"the two files do not pair up by position")
    labels, majority, clear = vote_labels(votes)
    named = np.array([bool(name) for name in names])
    fer_usages = np.array(fer_usages)
    splits, kept = {}, {}
    for split, (images, _) in data.splits.items():
        rows = np.flatnonzero(fer_usages == SPLIT_TO_USAGE[split])
        assert len(rows) == len(images), "the parse cache is out of date with the CSV"
        soft = ferplus_mode == "probability" and split == "train"
        keep = named[rows] & (clear[rows] if soft else majority[rows])
        if not keep.any():
            raise DataError(f"{ferplus}: no {split} row has a usable FER+ label (all empty names, "
                            f"unknown/NF or tied votes)")
        rows_kept = rows[keep]
        if soft:
            shares = votes[rows_kept, :8] / votes[rows_kept, :8].sum(axis=1, keepdims=True)
            targets = torch.from_numpy(shares.astype(np.float32))
        else:
            targets = torch.from_numpy(labels[rows_kept])
        splits[split] = (images[torch.from_numpy(np.flatnonzero(keep))], targets)
        kept[split] = len(rows_kept)
    if ferplus_mode == "probability" and "val" not in splits:
        raise DataError(f"{data.source}: probability mode needs PublicTest rows for validation (soft train "
                        f"labels cannot be split by class); use the full fer2013.csv")
    in_splits = np.isin(fer_usages, [u for u, s in USAGE_TO_SPLIT.items() if s in data.splits])
    empty = int((~named & in_splits).sum())
    unclear = int((named & ~clear & in_splits).sum())
    tied = int((named & clear & ~majority & in_splits).sum())
    sizes = ", ".join(f"{split} {n}" for split, n in kept.items())
    print(f"note: FER+ labels from {ferplus} ({ferplus_mode}): {int(in_splits.sum())} rows; dropped {empty} with "
          f"no image name, {unclear} whose top vote is unknown/NF, {tied} tied"
          f"{' (kept in train as soft targets)' if ferplus_mode == 'probability' else ''}; kept {sizes}",
          file=sys.stderr)
    return FaceData(splits, list(FERPLUS_CLASSES), dict(data.preprocessing), source=data.source)
