"""Reading face data into memory: uint8 image tensors, integer labels and class names per split.

Supported inputs (`load_data(path)` picks the reader):
  * FER2013 CSV: fer2013.csv (emotion,pixels,Usage) or icml_face_data.csv (emotion, Usage, pixels),
    plain or gzip-compressed (.csv.gz).
  * The Kaggle FER2013 image folders: train/<class>/Training_*.jpg and test/<class>/{PublicTest,PrivateTest}_*.jpg.
  * The Kaggle AffectNet tree: Train/ and Test/ class folders and/or labels.csv (common.affectnet).
  * None or "builtin": the drawn faces of common.builtin_faces (no download needed);
    "builtin-affectnet": their 8-class 96x96 colour variant.

Why not torchvision.datasets.FER2013? It merges PublicTest and PrivateTest into one "test"
split, so there is no validation split to select checkpoints on without peeking at the test
set, and it insists on the md5 of one particular copy of the file.

Splits everywhere: Training -> "train", PublicTest -> "val", PrivateTest -> "test". Where a
source has no validation split, a seeded, stratified 10% of train becomes "val".
"""
import csv
import gzip
import hashlib
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from common.checkpoint import atomic_write
from common.classes import FER2013_CLASSES, PREPROCESSING, SPLITS
from common.runtime import CACHE_DIR, DATA_DIR, UserError

USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SPLIT_TO_USAGE = {split: usage for usage, split in USAGE_TO_SPLIT.items()}
FER_PIXELS = 48 * 48
CACHE_VERSION = 2  # bump when a reader's output changes, so old caches are ignored


class DataError(UserError):
    """Bad input. The message is one line: the file (and row), what is wrong, what to do."""


@dataclass
class FaceData:
    splits: dict  # split name -> (images uint8 (N, C, H, W), labels int64 (N,))
    class_names: list
    preprocessing: dict = field(default_factory=lambda: dict(PREPROCESSING["fer2013"]))
    source: str = ""
    skipped: list = field(default_factory=list)  # (file, why) for every file a reader could not use

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


# ---------------------------------------------------------------- choosing a reader

def find_default_data():
    """data/fer2013.csv(.gz), data/icml_face_data.csv(.gz) or a data/fer2013/ image-folder tree."""
    for name in ["fer2013.csv", "fer2013.csv.gz", "icml_face_data.csv", "icml_face_data.csv.gz", "fer2013"]:
        if (DATA_DIR / name).exists():
            return DATA_DIR / name
    return None


def load_data(path=None, seed=0, val_fraction=0.1, use_cache=True, labels="fer2013", ferplus=None,
              ferplus_mode="majority", min_relfc=None):
    """Load any supported source into a FaceData with uint8 tensors.

    labels="ferplus" relabels a FER2013 CSV with the FER+ votes in `ferplus` (fer2013new.csv):
    8 classes; with ferplus_mode="probability" the train split's labels are vote shares (N, 8).
    min_relfc keeps only the AffectNet train rows whose labels.csv relFCs is at least that.
    """
    from common.affectnet import is_affectnet_tree, read_affectnet  # here: common.affectnet imports this module
    if path is None or str(path) in ("builtin", "builtin-affectnet"):
        from common.builtin_faces import make_builtin_dataset
        if min_relfc is not None:
            raise DataError("the built-in faces have no relFCs scores; drop --min-relfc or give --data an AffectNet tree")
        variant = "affectnet" if str(path) == "builtin-affectnet" else "fer2013"
        return make_builtin_dataset(seed=0, variant=variant)  # the built-in set is fixed; `seed` only varies training
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; give --data a FER2013 CSV (.csv/.csv.gz) "
                        f"or an image-folder tree, or leave --data out to use the built-in faces")
    if is_affectnet_tree(path):
        data = read_affectnet(path, seed, val_fraction, use_cache, min_relfc)
    elif min_relfc is not None:
        raise DataError(f"{path}: --min-relfc needs an AffectNet tree whose labels.csv has a relFCs column")
    elif path.is_dir():
        data = _cached(path, _folder_fingerprint(path), read_fer2013_folders, use_cache)
    else:
        data = _cached(path, _file_fingerprint(path), read_fer2013_csv, use_cache)
    if labels == "ferplus":
        from common.ferplus import apply_ferplus_labels
        data = apply_ferplus_labels(data, ferplus, ferplus_mode)
    return ensure_val_split(data, val_fraction, seed)


def ensure_val_split(data, val_fraction=0.1, seed=0):
    """Carve a stratified `val_fraction` of train into "val" when the source has no validation split."""
    if "val" in data.splits or "train" not in data.splits:
        return data
    images, labels = data.splits["train"]
    keep, val = stratified_split(labels.numpy(), val_fraction, seed)
    data.splits = {"train": (images[keep], labels[keep]), "val": (images[val], labels[val]),
                   **{k: v for k, v in data.splits.items() if k not in ("train", "val")}}
    print(f"note: {data.source} has no validation split; using a stratified {val_fraction:.0%} "
          f"of train (seed {seed}) as val", file=sys.stderr)
    return data


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


# ---------------------------------------------------------------- FER2013 CSV

def _read_text(path):
    """The whole file as text; "utf-8-sig" drops the byte-order mark spreadsheet programs put first."""
    if str(path).endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read().decode("utf-8-sig")
    return Path(path).read_text(encoding="utf-8-sig")


def _split_row(line, n_fields):
    """FER2013 fields never hold commas, so str.split plus stripping quotes is enough, and much
    faster than the csv module on 35k rows of 2304 numbers; anything else goes through csv."""
    row = line.split(",")
    if '"' not in line:
        return row
    if len(row) == n_fields and all(f.count('"') in (0, 2) for f in row):
        return [f.strip().strip('"') for f in row]
    return next(csv.reader([line]))


def read_fer2013_csv(path):
    """fer2013.csv or icml_face_data.csv (header names may carry spaces), .gz or not."""
    path = Path(path)
    try:
        lines = _read_text(path).splitlines()
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
        row = _split_row(line, len(header))
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


# ---------------------------------------------------------------- FER2013 image folders

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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

def _file_fingerprint(path):
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _folder_fingerprint(root):
    """Every file's path, size and mtime: any added, removed or edited image changes the key."""
    entries = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            entries.append(f"{os.path.join(dirpath, name)}|{st.st_size}|{st.st_mtime_ns}")
    return f"{root.resolve()}|" + "\n".join(sorted(entries))


def _cached(path, fingerprint, reader, use_cache):
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
    try:
        atomic_write(cache_file, lambda f: np.savez(f, **arrays))
    except UserError as e:  # a read-only checkout or a full disk still trains, only without the cache
        print(f"warning: could not write parse cache: {e}", file=sys.stderr)
    return data


# ---------------------------------------------------------------- tensors for training

def eval_transform(preprocessing):
    """uint8 (C, H, W) -> normalised float32: the one preprocessing every stage, eval and the
    deploy tools share, so a model always sees images prepared the way it was trained."""
    return v2.Compose([
        v2.Resize((preprocessing["size"], preprocessing["size"]), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(preprocessing["mean"], preprocessing["std"]),
    ])


def preprocess_face(face, preprocessing):
    """A cropped face (PIL image, or NumPy RGB (H, W, 3) / gray (H, W) uint8) -> the float (C, H, W)
    tensor a model trained with `preprocessing` expects: the image readers' conversion, then
    eval_transform. The deploy tools call this, so a demo never prepares faces differently."""
    if isinstance(face, np.ndarray):
        face = Image.fromarray(face)
    array = image_to_array(face, preprocessing["size"], preprocessing["channels"])
    return eval_transform(preprocessing)(torch.from_numpy(array))


class ImageDataset(Dataset):
    """In-memory uint8 images, decoded once; `transform` runs per sample when indexed."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]
