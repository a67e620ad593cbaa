"""common/: readers in every FER2013 format, the parse cache, the built-in faces, bad input,
metrics, checkpoints and seeding."""
import gzip
import os
import random

import numpy as np
import pytest
import torch
from conftest import tensors_equal
from PIL import Image

from common import checkpoint as ckpt
from common.builtin_faces import make_builtin_dataset, make_faces
from common.data import load_data
from common.facedata import FER2013_CLASSES, DataError, stratified_split
from common.fer2013 import read_fer2013_csv, read_fer2013_folders
from common.metrics import classification_report, confusion_matrix
from common.runtime import UserError, seed_everything


def write_rows(path, header, rows):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def pixels(value=7, n=2304):
    return " ".join([str(value)] * n)


# ---------------------------------------------------------------- readers

def test_fer2013_csv_splits_labels_and_pixels(fer_csv, tiny_faces):
    data = read_fer2013_csv(fer_csv)
    assert data.class_names == FER2013_CLASSES
    assert data.sizes() == {"train": 21, "val": 7, "test": 7}  # Training, PublicTest, PrivateTest
    for split in ("train", "val", "test"):
        images, labels = data.splits[split]
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 48, 48)
        assert tensors_equal(images, tiny_faces.splits[split][0])
        assert tensors_equal(labels, tiny_faces.splits[split][1])


def test_icml_header_with_spaces_and_other_column_order(tmp_path):
    rows = [f'3, Training, "{pixels(1)}"', f'5, PublicTest, "{pixels(2)}"', f'0, PrivateTest, "{pixels(3)}"']
    data = read_fer2013_csv(write_rows(tmp_path / "icml_face_data.csv", "emotion, Usage, pixels", rows))
    assert data.sizes() == {"train": 1, "val": 1, "test": 1}
    assert data.splits["val"][1].tolist() == [5]
    assert data.splits["test"][0].unique().tolist() == [3]


def test_gzip_csv_reads_like_plain(fer_csv, tmp_path):
    gz = tmp_path / "fer2013.csv.gz"
    gz.write_bytes(gzip.compress(fer_csv.read_bytes()))
    plain, packed = read_fer2013_csv(fer_csv), read_fer2013_csv(gz)
    for split in plain.splits:
        assert tensors_equal(plain.splits[split][0], packed.splits[split][0])


def test_only_some_splits_trains_and_missing_split_is_named(tmp_path):
    rows = [f"{i % 7},{pixels(i)},Training" for i in range(14)] + [f"{i % 7},{pixels(i)},PublicTest" for i in range(7)]
    data = load_data(write_rows(tmp_path / "dev.csv", "emotion,pixels,Usage", rows))
    assert data.sizes() == {"train": 14, "val": 7}
    with pytest.raises(DataError, match=r"dev.csv: has no PrivateTest rows, so no 'test' split"):
        data.split("test")


def test_folders_map_names_to_csv_order_and_split_test_by_prefix(fer_folders, tiny_faces):
    data = read_fer2013_folders(fer_folders)
    assert data.sizes() == {"train": 21, "val": 7, "test": 7}
    for split in ("train", "val", "test"):
        # files are read class folder by class folder, so compare label multisets and image sums
        expected = sorted(tiny_faces.splits[split][1].tolist())
        assert sorted(data.splits[split][1].tolist()) == expected
    happy = data.splits["train"][1] == FER2013_CLASSES.index("happy")
    assert happy.any()  # alphabetical order would have made "happy" label 2, not 3


def test_folders_with_capitalised_names_and_no_prefixes_get_a_val_split(tmp_path):
    for i in range(20):
        for split in ("Train", "Test"):
            folder = tmp_path / split / ("Happy" if i % 2 else "sad")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((48, 48), i, np.uint8)).save(folder / f"img{i}.png")
    data = load_data(tmp_path)
    assert data.sizes() == {"train": 18, "val": 2, "test": 20}  # 10% of each class carved from train
    assert set(data.splits["val"][1].tolist()) == {3, 4}


def test_stratified_split_is_seeded_and_per_class():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert np.bincount(labels[held]).tolist() == [5, 3, 2]
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == 100
    assert np.array_equal(held, stratified_split(labels, 0.1, seed=3)[1])
    assert not np.array_equal(held, stratified_split(labels, 0.1, seed=4)[1])


def test_cache_reloads_same_data_and_notices_edits(fer_csv):
    first = load_data(fer_csv)
    cached = load_data(fer_csv)
    assert tensors_equal(first.splits["train"][0], cached.splits["train"][0])
    text = fer_csv.read_text().splitlines()
    text[1] = "4" + text[1][1:]  # relabel the first row
    fer_csv.write_text("\n".join(text) + "\n")
    os.utime(fer_csv, ns=(0, 10**9))  # and be sure the mtime differs
    edited = load_data(fer_csv)
    assert edited.splits["train"][1][0].item() == 4


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("header,row,message", [
    ("emotion,pixels,Usage", f"3,{pixels(n=2000)},Training", r"line 3: 2000 pixel values, expected 2304"),
    ("emotion,pixels,Usage", f"3,{pixels()[:-1]}x,Training", r"line 3: pixel value 'x' is not an integer"),
    ("emotion,pixels,Usage", f"3,{pixels(300)},Training", r"line 3: pixel value '300'"),
    ("emotion,Usage", "3,Training", r"missing column 'pixels'"),
    ("emotion,pixels,Usage", f"9,{pixels()},Training", r"line 3: unknown label '9'"),
    ("emotion,pixels,Usage", f"3,{pixels()},Validation", r"line 3: unknown Usage 'Validation'"),
], ids=["pixel-count", "non-numeric", "out-of-range", "missing-column", "unknown-label", "unknown-usage"])
def test_bad_csv_rows_name_file_and_line(tmp_path, header, row, message):
    path = write_rows(tmp_path / "bad.csv", header, [f"1,{pixels()},Training", row] if "pixels" in header else [row])
    with pytest.raises(DataError, match=message) as err:
        read_fer2013_csv(path)
    assert "bad.csv" in str(err.value) and "\n" not in str(err.value)


def test_empty_file_and_missing_path(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv: file is empty"):
        load_data(tmp_path / "empty.csv")
    with pytest.raises(DataError, match="nope.csv: no such file or folder"):
        load_data(tmp_path / "nope.csv")


def test_a_csv_path_reads_its_gzip_twin_and_says_so(fer_csv, tmp_path, capsys):
    packed = tmp_path / "packed" / "fer2013.csv.gz"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(fer_csv.read_bytes()))
    data = load_data(packed.with_name("fer2013.csv"))  # the README's name, the joined file's form
    assert f"reading {packed}" in capsys.readouterr().out
    assert torch.equal(data.split("train")[0], load_data(fer_csv).split("train")[0])
    assert load_data(packed).class_names == data.class_names
    with pytest.raises(DataError, match="nope.csv.gz: no such file or folder"):  # nor its twin
        load_data(tmp_path / "nope.csv.gz")


def test_corrupt_and_non_image_files_are_skipped_and_counted(fer_folders, capsys):
    happy = fer_folders / "train" / "happy"
    good = next(happy.iterdir())
    (happy / "Training_truncated.jpg").write_bytes(_jpeg_bytes()[:300])  # verify() would pass this
    (happy / "Training_notes.jpg").write_text("not an image")
    data = read_fer2013_folders(fer_folders)
    assert data.sizes()["train"] == 21
    err = capsys.readouterr().err
    assert "skipped 2 unreadable file(s)" in err and "Training_truncated.jpg" in err
    assert good.exists()


def test_unknown_class_folder_is_an_error(fer_folders):
    (fer_folders / "train" / "bored").mkdir()
    with pytest.raises(DataError, match=r"bored: unknown class folder 'bored'"):
        read_fer2013_folders(fer_folders)


def test_a_bom_csv_reads_like_a_plain_one(fer_csv, tmp_path):
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + fer_csv.read_bytes())  # what a spreadsheet program saves
    assert read_fer2013_csv(bom).sizes() == read_fer2013_csv(fer_csv).sizes()
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"\xef\xbb\xbfepoch,val_f1\n1,0.5\n")
    assert ckpt.read_metrics_csv(path) == [{"epoch": 1, "val_f1": 0.5}]


def test_skipped_files_are_reported_again_from_the_cache(fer_folders, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("common.facedata.CACHE_DIR", tmp_path / "cache")
    (fer_folders / "train" / "happy" / "Training_notes.jpg").write_text("not an image")
    for _ in range(2):  # parsed, then from the cache
        load_data(fer_folders)
        err = capsys.readouterr().err
        assert "skipped 1 unreadable file(s)" in err and "Training_notes.jpg" in err


def test_a_damaged_cache_is_rebuilt_with_a_notice(fer_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("common.facedata.CACHE_DIR", tmp_path / "cache")
    first = load_data(fer_csv)
    cache = next((tmp_path / "cache").glob("*.npz"))
    cache.write_bytes(cache.read_bytes()[:200])  # truncated
    again = load_data(fer_csv)
    assert f"note: parse cache {cache} is damaged" in capsys.readouterr().err
    assert tensors_equal(first.splits["train"][0], again.splits["train"][0])
    load_data(fer_csv)
    assert "damaged" not in capsys.readouterr().err  # rebuilt


def test_images_in_sub_folders_are_read_and_stray_files_reported(fer_folders, capsys):
    happy = fer_folders / "train" / "happy"
    before = read_fer2013_folders(fer_folders).sizes()["train"]
    (happy / "more").mkdir()
    (happy / "more" / "Training_extra.png").write_bytes(next(happy.glob("*.png")).read_bytes())
    (fer_folders / "train" / "Training_loose.png").write_bytes(next(happy.glob("*.png")).read_bytes())
    data = read_fer2013_folders(fer_folders)
    assert data.sizes()["train"] == before + 1
    assert "Training_loose.png: not inside a class folder" in capsys.readouterr().err


def test_a_fer2013_tree_with_a_foreign_class_folder_is_an_error(fer_folders):
    (fer_folders / "train" / "contempt").mkdir()
    with pytest.raises(DataError, match=r"train/contempt: class folder 'contempt' does not belong in this FER2013 tree"):
        load_data(fer_folders)


def _jpeg_bytes():
    import io
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


# ---------------------------------------------------------------- built-in faces

def test_builtin_faces_are_deterministic_and_seeded():
    a_images, a_labels = make_faces(40, FER2013_CLASSES, seed=5)
    b_images, b_labels = make_faces(40, FER2013_CLASSES, seed=5)
    c_images, _ = make_faces(40, FER2013_CLASSES, seed=6)
    assert tensors_equal(a_images, b_images) and tensors_equal(a_labels, b_labels)
    assert not torch.equal(a_images, c_images)
    assert a_images.dtype == torch.uint8 and a_images.shape == (40, 1, 48, 48)


def test_builtin_faces_are_imbalanced_like_fer2013():
    data = make_builtin_dataset(seed=0)
    counts = torch.bincount(data.splits["train"][1], minlength=7).float()
    share = counts / counts.sum()
    assert share.argmax().item() == FER2013_CLASSES.index("happy")
    assert share.argmin().item() == FER2013_CLASSES.index("disgust")
    assert 0.005 < share[1] < 0.04 and 0.2 < share[3] < 0.3  # FER2013: 1.5% and 25%
    assert data.sizes() == {"train": 3000, "val": 600, "test": 600}
    assert not torch.equal(data.splits["train"][0][:600], data.splits["val"][0])  # splits drawn apart


def test_builtin_colour_variant_has_contempt():
    data = make_builtin_dataset(variant="affectnet", sizes=(40, 8, 8))
    assert "contempt" in data.class_names and len(data.class_names) == 8
    assert data.splits["train"][0].shape[1:] == (3, 96, 96)
    assert data.preprocessing["channels"] == 3


# ---------------------------------------------------------------- metrics

def test_classification_report_matches_hand_computed_values():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    assert confusion_matrix(labels, preds, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    report = classification_report(labels, preds, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    # precision a 2/2, b 1/2, c 1/2; recall a 2/3, b 1/2, c 1/1
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5]
    assert [r["f1"] for r in report["per_class"]] == pytest.approx(f1)
    assert report["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert [r["support"] for r in report["per_class"]] == [3, 2, 1]


def test_macro_f1_skips_classes_absent_from_labels_and_predictions():
    report = classification_report([0, 1], [0, 1], ["a", "b", "c"])
    assert report["macro_f1"] == pytest.approx(1.0)


# ---------------------------------------------------------------- checkpoints and seeding

def test_atomic_write_keeps_the_old_file_when_a_save_fails(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"epoch": 1})

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError):
        ckpt.atomic_write(path, broken)
    assert ckpt.load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_second_ctrl_c_inside_torch_save_exits_130_not_with_torchs_error(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"epoch": 1})

    def interrupted(f):  # as torch.save's zip writer does when the exit is raised inside it
        f.write(b"partial")
        try:
            raise SystemExit(130)  # what StopSignal raises on the second Ctrl-C
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    with pytest.raises(SystemExit) as stop:
        ckpt.atomic_write(path, interrupted)
    assert stop.value.code == 130
    assert ckpt.load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    seed_everything(3)
    ckpt.save_checkpoint(tmp_path / "rng.pt", {"rng": ckpt.get_rng_states()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(99)
    ckpt.set_rng_states(ckpt.load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_bad_checkpoint_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(UserError, match="junk.pt: not a readable checkpoint"):
        ckpt.load_checkpoint(tmp_path / "junk.pt")


def test_a_resumed_epoch_counts_its_training_time_before_the_stop():
    from common.guard import epoch_progress, new_progress, resume_steps, stopped_progress
    loader = torch.utils.data.DataLoader(range(6), generator=torch.Generator())
    stop = type("NoStop", (), {"requested": False})()
    progress = new_progress(1, loader)
    for step, _ in resume_steps(loader, progress, stop):
        progress["step"] = step  # as train_one_epoch records it
        if step == 3:  # the epoch stops here, as after a Ctrl-C; pretend its first part took 40 s
            break
    assert 0 < progress["seconds"] < 40
    progress["seconds"] = 40.0
    resumed = epoch_progress({"progress": stopped_progress(progress)}, 1, loader)
    steps = [step for step, _ in resume_steps(loader, resumed, stop)]
    assert steps == [4, 5, 6]
    assert 40 < resumed["seconds"] < 50  # the 40 s before the stop, plus the three steps after it
    # a last.pt saved before the time was kept resumes with only the time after the stop
    old = {key: value for key, value in stopped_progress(progress).items() if key != "seconds"}
    assert epoch_progress({"progress": old}, 1, loader)["seconds"] == 0.0
