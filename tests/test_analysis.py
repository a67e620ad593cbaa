"""Exploration, evaluation analysis (confusion, calibration, mistakes, ten-crop, Grad-CAM),
stage comparison and the TensorBoard notice, on tiny fixtures with hand-computed answers."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from common import explore as explore_lib
from common.data import load_data


# ---------------------------------------------------------------- exploration

@pytest.fixture
def planted_tree(fer_folders, tiny_faces):
    """The tiny folder tree plus four planted copies, the answers known by construction."""
    train_happy = sorted((fer_folders / "train" / "happy").iterdir())[0]
    public = sorted((fer_folders / "test").glob("*/PublicTest_*"))[0]
    shutil.copy(train_happy, fer_folders / "train" / "happy" / "Training_copy.png")  # same label
    shutil.copy(train_happy, fer_folders / "train" / "sad" / "Training_conflict.png")  # another label
    shutil.copy(train_happy, fer_folders / "test" / "angry" / "PrivateTest_leak.png")  # train -> test
    Image.open(public).save(fer_folders / "train" / "fear" / "Training_fromval.bmp")  # re-encoded val -> train
    return fer_folders


def test_explore_counts_and_finds_planted_duplicates(planted_tree, tiny_faces):
    summary = explore_lib.explore(load_data(planted_tree))
    expected = {split: np.bincount(labels.numpy(), minlength=7) for split, (_, labels) in tiny_faces.splits.items()}
    expected["train"][[3, 4, 2]] += 1  # the happy copy, the sad conflict, the re-encoded val image as fear
    expected["test"][0] += 1  # the leaked training image
    assert summary["counts"] == {split: c.tolist() for split, c in expected.items()}
    dup = summary["duplicates"]
    assert dup["within"] == {"train": 2, "val": 0, "test": 0}  # two extra copies of one happy face
    assert dup["label_conflicts"] == {"train": 1, "val": 0, "test": 0}  # happy and sad on the same pixels
    assert dup["across"] == {"train/val": 1, "train/test": 1, "val/test": 0}


def test_explore_imbalance_and_pixel_statistics_by_hand(tiny_faces):
    images = torch.zeros(6, 1, 48, 48, dtype=torch.uint8)
    images[:2] = 200  # two bright images, four black ones
    tiny_faces.splits = {"train": (images, torch.tensor([3, 3, 3, 3, 0, 0]))}
    summary = explore_lib.explore(tiny_faces)
    imb = summary["imbalance"]["train"]
    assert (imb["ratio"], imb["most"], imb["least"]) == (2.0, "happy", "angry")
    assert imb["missing"] == ["disgust", "fear", "sad", "surprise", "neutral"]
    assert summary["pixels"]["train"]["mean"] == pytest.approx(200 / 3)
    assert summary["pixels"]["train"]["std"] == pytest.approx(200 * np.sqrt(2) / 3, rel=1e-3)  # sqrt(p(1-p)) * 200, p = 1/3
    assert summary["duplicates"]["within"]["train"] == 4  # 2 identical bright + 4 identical black: 2 unique


def test_explore_cli_gives_the_same_numbers_for_csv_and_folders(fer_csv, fer_folders, tmp_path, capsys):
    from_csv = explore_lib.main(["--data", str(fer_csv), "--out", str(tmp_path / "csv")])
    from_folders = explore_lib.main(["--data", str(fer_folders), "--out", str(tmp_path / "folders")])
    assert from_csv["counts"] == from_folders["counts"] and from_csv["duplicates"] == from_folders["duplicates"]
    for split, stats in from_csv["pixels"].items():
        assert stats == pytest.approx(from_folders["pixels"][split])
    printed = capsys.readouterr().out
    assert "imbalance train:" in printed and "duplicates across: train/val 0" in printed
    for name in ("explore.json", "class_counts.png", "samples.png"):
        assert (tmp_path / "csv" / name).is_file(), name
    assert json.loads((tmp_path / "csv" / "explore.json").read_text())["counts"] == from_csv["counts"]


# ---------------------------------------------------------------- TensorBoard notice

def test_tensorboard_missing_gives_a_one_line_notice(monkeypatch, tmp_path, capsys):
    from common.runtime import open_tensorboard
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    assert open_tensorboard(tmp_path) is None
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "tensorboard" in printed[0] and "continuing without it" in printed[0]
