"""What every reader of face data builds on: the class tables, the errors, the FaceData container,
the split rules, image decoding and the parse cache.

This module imports nothing from the rest of the course. Each reader (fer2013.py, ferplus.py,
affectnet.py, affectnet_yolo.py, builtin_faces.py) imports it and nothing else of ours, and
data.py, which picks a reader for --data, imports the readers: the imports run one way.

Splits everywhere: Training -> "train", PublicTest -> "val", PrivateTest -> "test". Where a
source has no validation split, a seeded, stratified 10% of train becomes "val".
"""
import csv
import gzip
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# ---------------------------------------------------------------- class tables
# The orders differ between datasets, so every reader maps to the tables here and never to
# alphabetical order (an image-folder copy of FER2013 sorted by name would put "fear" before
# "happy" and silently shuffle the labels).

# FER2013 label order: the integers 0-6 in fer2013.csv / icml_face_data.csv.
FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]

# FER+ vote columns in fer2013new.csv (after "Usage" and "Image name").
FERPLUS_CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]

# Kaggle AffectNet folder / labels.csv names (8 classes: FER2013's 7 plus contempt).
AFFECTNET_CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]

# How images are fed to a network trained on each kind of data. A checkpoint stores the spec it
# was trained with, so evaluation and the deploy tools preprocess exactly as training did.
# FER2013 mean/std: 131.0 +- 64.3 on a 0-255 scale (the data-exploration notebook of the source write-ups).
PREPROCESSING = {
    "fer2013": {"size": 48, "channels": 1, "mean": [131.0 / 255], "std": [64.3 / 255]},
    # ImageNet statistics are the usual choice for colour faces trained from scratch too.
    "affectnet": {"size": 96, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}

SPLITS = ["train", "val", "test"]
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLIT_TO_USAGE = {split: usage for usage, split in USAGE_TO_SPLIT.items()}


# ---------------------------------------------------------------- errors

class UserError(Exception):
    """Bad input from the user (a file, a flag). Scripts print its one-line message, no traceback.

    Every error of the course derives from it. It is defined here, at the bottom of the imports,
    so that every module, this one included, can raise it."""


class DataError(UserError):
    """Bad input. The message is one line: the file (and row), what is wrong, what to do."""


# ---------------------------------------------------------------- the container

@dataclass
class FaceData:
    splits: dict  # split name -> (images uint8 (N, C, H, W), labels int64 (N,))
    class_names: list
    preprocessing: dict = field(default_factory=lambda: dict(PREPROCESSING["fer2013"]))
    source: str = ""
    skipped: list = field(default_factory=list)  # (file, why) for every file a reader could not use
    files: dict = field(default_factory=dict)  # split -> each image's file, where a reader knows it

    def split(self, name):
        if name not in self.splits and self.class_names == list(FER2013_CLASSES):
            usage = SPLIT_TO_USAGE[name]  # FER2013 names its splits by the Usage column
            raise DataError(f"{self.source}: has no {usage} rows, so no '{name}' split; use the complete "
                            f"fer2013.csv (Training, PublicTest and PrivateTest rows; see README), "
                            f"or pick another --split")
        if name not in self.splits:
            have = ", ".join(self.splits) or "none"
            raise DataError(f"{self.source}: has no '{name}' split (it has: {have}); "
                            f"pass data that includes it, or pick another --split")
        return self.splits[name]

    def sizes(self):
        return {name: len(labels) for name, (_, labels) in self.splits.items()}


# ---------------------------------------------------------------- split rules

def stratified_split(labels, fraction, seed):
    """Indices (keep, held_out): `fraction` of every class held out, the same for the same seed."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_held = int(round(fraction * len(idx))) if len(idx) > 1 else 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def note_carved_val(source, fraction, seed):
    print(f"note: {source} has no validation split; using a stratified {fraction:.0%} "
          f"of train (seed {seed}) as val", file=sys.stderr)


def ensure_val_split(data, val_fraction=0.1, seed=0):
    """Carve a stratified `val_fraction` of train into "val" when the source has no validation split."""
    if "val" in data.splits or "train" not in data.splits:
        return data
    images, labels = data.splits["train"]
    keep, val = stratified_split(labels.numpy(), val_fraction, seed)
    splits = {"train": (images[keep], labels[keep]), "val": (images[val], labels[val])}
    if "test" in data.splits:
        splits["test"] = data.splits["test"]
    data.splits = splits
    data.files = {split: files for split, files in data.files.items() if split == "test"}
    note_carved_val(data.source, val_fraction, seed)
    return data


# ---------------------------------------------------------------- reading files

def read_text(path):
    """The whole file as text; "utf-8-sig" drops the byte-order mark spreadsheet programs put first."""
    if str(path).endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read().decode("utf-8-sig")
    return Path(path).read_text(encoding="utf-8-sig")


def split_fer2013_line(line, n_fields):
    """FER2013 fields never hold commas, so str.split plus stripping quotes is enough, and much
    faster than the csv module on 35k rows of 2304 numbers; anything else goes through csv."""
    row = line.split(",")
    if '"' not in line:
        return row
    if len(row) == n_fields and all(f.count('"') in (0, 2) for f in row):
        return [f.strip().strip('"') for f in row]
    return next(csv.reader([line]))


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def visible_files(folder):
    """Every file under `folder`, sub-folders included, skipping hidden ones (.DS_Store, .git/), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_image(file, size, channels, skipped):
    """Decode fully (uint8 array (C, size, size)) or record why not and return None.

    Pillow's verify() passes a truncated JPEG; only a full decode notices, so convert()
    (which decodes) is what validates. LOAD_TRUNCATED_IMAGES is deliberately left off.
    """
    try:
        with Image.open(file) as img:
            img = img.convert("L" if channels == 1 else "RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        skipped.append((file, str(e).splitlines()[0] if str(e) else type(e).__name__))
        return None
    return image_to_array(img, size, channels)


def image_to_array(img, size, channels):
    """A PIL image -> uint8 (C, size, size): gray by Pillow's "L" (ITU-R 601 luma) or RGB, resized
    bilinearly. Image files read for training and faces cropped by 05_deploy both go through here."""
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    array = np.array(img, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def report_skipped(skipped, root, show=3):
    if skipped:
        first = "; ".join(f"{p}: {why}" for p, why in skipped[:show])
        print(f"warning: {root}: skipped {len(skipped)} unreadable file(s) (first: {first})", file=sys.stderr)


# ---------------------------------------------------------------- parse cache

# Where parsed data is kept: the repo's .cache/, or FER_CACHE_DIR (tests point it into a temporary folder).
CACHE_DIR = Path(os.environ.get("FER_CACHE_DIR", Path(__file__).resolve().parents[1] / ".cache"))
CACHE_VERSION = 2  # bump when a reader's output changes, so old caches are ignored


def file_fingerprint(path):
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def folder_fingerprint(root):
    """Every file's path, size and mtime: any added, removed or edited image changes the key."""
    entries = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            entries.append(f"{os.path.join(dirpath, name)}|{st.st_size}|{st.st_mtime_ns}")
    return f"{root.resolve()}|" + "\n".join(sorted(entries))


def cached(path, fingerprint, reader, use_cache):
    """Parse once, then reload the arrays from CACHE_DIR (FER2013's CSV: seconds -> a fraction)."""
    if not use_cache:
        return reader(path)
    key = hashlib.sha1(f"v{CACHE_VERSION}|{reader.__name__}|{fingerprint}".encode()).hexdigest()[:16]
    cache_file = CACHE_DIR / f"{path.name}-{key}.npz"
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                splits = {s: (torch.from_numpy(z[f"{s}_images"]), torch.from_numpy(z[f"{s}_labels"]))
                          for s in SPLITS if f"{s}_images" in z}
                skipped = [tuple(str(x) for x in pair) for pair in z["skipped"]]
                data = FaceData(splits, [str(c) for c in z["class_names"]], source=str(path), skipped=skipped)
            report_skipped(skipped, path)  # the same warning as the run that parsed the files
            return data
        except Exception as e:  # a truncated or foreign file: zipfile, zlib, NumPy and KeyError all happen
            print(f"note: parse cache {cache_file} is damaged ({type(e).__name__}); rebuilding it", file=sys.stderr)
    data = reader(path)
    arrays = {"class_names": np.array(data.class_names),
              "skipped": np.array(data.skipped, dtype=str).reshape(-1, 2)}
    for s, (images, labels) in data.splits.items():
        arrays[f"{s}_images"], arrays[f"{s}_labels"] = images.numpy(), labels.numpy()
    write_cache(cache_file, arrays)
    return data


def write_cache(cache_file, arrays):
    """np.savez through a temporary file and a rename, so that a run stopped midway, or a second
    process (torchrun) reading at that moment, never finds half a file. checkpoint.atomic_write
    does the same with more care (fsync, permissions) for files a user keeps; a cache can be rebuilt."""
    tmp = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=f".{cache_file.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, cache_file)
    except OSError as e:  # a read-only checkout or a full disk still trains, only without the cache
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        print(f"warning: could not write parse cache {cache_file} ({e.strerror or e}); continuing without it",
              file=sys.stderr)
