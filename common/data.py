"""Reading face data into memory, and preparing it for a model.

`load_data(path)` picks the reader for what `path` holds:
  * FER2013 CSV: fer2013.csv (emotion,pixels,Usage) or icml_face_data.csv (emotion, Usage, pixels),
    plain or gzip-compressed (.csv.gz): common/fer2013.py.
  * The Kaggle FER2013 image folders: train/<class>/Training_*.jpg and
    test/<class>/{PublicTest,PrivateTest}_*.jpg: common/fer2013.py.
  * The Kaggle AffectNet tree: Train/ and Test/ class folders and/or labels.csv: common/affectnet.py.
  * AffectNet in the "YOLO format" layout: data.yaml beside train|valid|test/{images,labels}:
    common/affectnet_yolo.py.
  * None or "builtin": the drawn faces of common/builtin_faces.py (no download needed);
    "builtin-affectnet": their 8-class 96x96 colour variant.
  * labels="ferplus" relabels a FER2013 CSV with FER+'s crowd votes: common/ferplus.py.
Every reader returns a FaceData (common/facedata.py): uint8 images, labels and class names per split.

Why not torchvision.datasets.FER2013? It merges PublicTest and PrivateTest into one "test"
split, so there is no validation split to select checkpoints on without peeking at the test
set, and it insists on the md5 of one particular copy of the file.

The rest of this file turns uint8 images into what a model takes: eval_transform, preprocess_face
and ImageDataset.
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from common.affectnet import is_affectnet_tree, read_affectnet
from common.affectnet_yolo import is_yolo_tree, read_yolo
from common.builtin_faces import make_builtin_dataset
from common.facedata import DataError, cached, ensure_val_split, file_fingerprint, folder_fingerprint, image_to_array
from common.fer2013 import read_fer2013_csv, read_fer2013_folders
from common.ferplus import apply_ferplus_labels
from common.runtime import DATA_DIR


# ---------------------------------------------------------------- choosing a reader

def find_default_data():
    """data/fer2013.csv(.gz), data/icml_face_data.csv(.gz) or a data/fer2013/ image-folder tree."""
    for name in ["fer2013.csv", "fer2013.csv.gz", "icml_face_data.csv", "icml_face_data.csv.gz", "fer2013"]:
        if (DATA_DIR / name).exists():
            return DATA_DIR / name
    return None


def compressed_twin(path):
    """x.csv <-> x.csv.gz: the same FER2013 CSV, as Kaggle ships it or gzip-compressed."""
    if path.name.endswith(".csv"):
        return path.with_name(path.name + ".gz")
    if path.name.endswith(".csv.gz"):
        return path.with_name(path.name.removesuffix(".gz"))
    return path


def find_default_affectnet():
    """data/affectnet/ (or data/AffectNet/) holding an AffectNet tree, or data/YOLO_format/."""
    for name in ("affectnet", "AffectNet", "YOLO_format"):
        path = DATA_DIR / name
        if is_yolo_tree(path) or is_affectnet_tree(path):
            return path
    return None


def load_data(path=None, seed=0, val_fraction=0.1, use_cache=True, labels="fer2013", ferplus=None,
              ferplus_mode="majority", min_relfc=None):
    """Load any supported source into a FaceData with uint8 tensors.

    labels="ferplus" relabels a FER2013 CSV with the FER+ votes in `ferplus` (fer2013new.csv):
    8 classes; with ferplus_mode="probability" the train split's labels are vote shares (N, 8).
    min_relfc keeps only the AffectNet train rows whose labels.csv relFCs is at least that.
    """
    if path is None or str(path) in ("builtin", "builtin-affectnet"):
        if min_relfc is not None:
            raise DataError("the built-in faces have no relFCs scores; drop --min-relfc or give --data an AffectNet tree")
        variant = "affectnet" if str(path) == "builtin-affectnet" else "fer2013"
        return make_builtin_dataset(seed=0, variant=variant)  # the built-in set is fixed; `seed` only varies training
    path = Path(path)
    other = compressed_twin(path)
    if not path.exists() and other.exists():  # data/fer2013.csv asked for, .csv.gz is what there is
        print(f"{path}: not found; reading {other}, the same CSV with or without gzip")
        path = other
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; give --data a FER2013 CSV (.csv/.csv.gz) "
                        f"or an image-folder tree, or leave --data out to use the built-in faces")
    if is_yolo_tree(path):
        if min_relfc is not None:
            raise DataError(f"{path}: --min-relfc needs relFCs scores, and a YOLO-format tree "
                            f"(data.yaml + labels/*.txt) has none; drop --min-relfc")
        data = read_yolo(path, use_cache)
    elif is_affectnet_tree(path):
        data = read_affectnet(path, seed, val_fraction, use_cache, min_relfc)
    elif min_relfc is not None:
        raise DataError(f"{path}: --min-relfc needs an AffectNet tree whose labels.csv has a relFCs column")
    elif path.is_dir():
        data = cached(path, folder_fingerprint(path), read_fer2013_folders, use_cache)
    else:
        data = cached(path, file_fingerprint(path), read_fer2013_csv, use_cache)
    if labels == "ferplus":
        data = apply_ferplus_labels(data, ferplus, ferplus_mode)
    return ensure_val_split(data, val_fraction, seed)


# ---------------------------------------------------------------- tensors for a model

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
