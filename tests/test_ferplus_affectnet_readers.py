"""common/affectnet.py and common/ferplus.py on tiny files in each layout, written per test."""
import numpy as np
import pytest
import torch
from PIL import Image

from common.affectnet import is_affectnet_tree, read_affectnet
from common.builtin_faces import make_builtin_dataset
from common.data import load_data
from common.facedata import AFFECTNET_CLASSES, FERPLUS_CLASSES, DataError
from common.ferplus import VOTE_COLUMNS, apply_ferplus_labels

# ---------------------------------------------------------------- AffectNet


def write_image(path, value):
    """A 96x96 RGB PNG filled with `value` (lossless, so the value identifies the image after reading)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((96, 96, 3), value, np.uint8)).save(path)


def make_tree(root, per_class=(3, 1), capitalise=False):
    """Train/<class>/ and Test/<class>/ with per_class images each; image value = 10 * class + i
    (Train) or 100 + 10 * class + i (Test). Returns {relative path: (split folder, class index)}."""
    written = {}
    for split, n, offset in (("Train", per_class[0], 0), ("Test", per_class[1], 100)):
        for c, name in enumerate(AFFECTNET_CLASSES):
            folder = name.capitalize() if capitalise else name
            for i in range(n):
                rel = f"{folder}/image{offset // 100}{c}{i}.png"  # names unique across splits
                write_image(root / split / rel, offset + 10 * c + i)
                written[f"{split}/{rel}"] = c
    return written


def write_labels(path, rows, index_column=False):
    header = ("," if index_column else "") + "pth,label,relFCs\n"
    lines = [(f"{i}," if index_column else "") + ",".join(map(str, row)) + "\n" for i, row in enumerate(rows)]
    path.write_text(header + "".join(lines))


def values(images):
    return images[:, 0, 0, 0].tolist()


def test_folders_only_with_capitalised_names_read_in_affectnet_order(tmp_path, capsys):
    make_tree(tmp_path, per_class=(10, 1), capitalise=True)
    assert is_affectnet_tree(tmp_path)
    data = read_affectnet(tmp_path, use_cache=False)
    assert data.class_names == AFFECTNET_CLASSES and data.preprocessing["channels"] == 3
    images, labels = data.splits["test"]
    assert images.shape == (8, 3, 96, 96) and images.dtype == torch.uint8
    assert labels.tolist() == [(v - 100) // 10 for v in values(images)]  # "Contempt/" is class 1 whatever its case
    assert data.sizes() == {"train": 72, "val": 8, "test": 8}  # a stratified 10% of Train is val
    assert torch.bincount(data.splits["val"][1]).tolist() == [1] * 8
    assert "no validation split" in capsys.readouterr().err


def test_fer2013_folder_tree_is_not_taken_for_affectnet(fer_folders):
    assert not is_affectnet_tree(fer_folders)
    assert load_data(fer_folders, use_cache=False).class_names[0] == "angry"


@pytest.mark.parametrize("index_column", [False, True])
@pytest.mark.parametrize("relative_to", ["split", "root"])
def test_csv_label_wins_over_the_folder(tmp_path, capsys, index_column, relative_to):
    written = make_tree(tmp_path, per_class=(10, 1))
    rows = []
    for path, c in written.items():
        split, _, rel = path.partition("/")
        label = "contempt" if path == "Test/anger/image100.png" else AFFECTNET_CLASSES[c]  # one disagreement
        rows.append((rel if relative_to == "split" else path, label, 0.9))
    write_labels(tmp_path / "labels.csv", rows, index_column)
    data = read_affectnet(tmp_path, use_cache=False)
    test_images, test_labels = data.splits["test"]
    by_value = dict(zip(values(test_images), test_labels.tolist()))
    assert by_value[100] == AFFECTNET_CLASSES.index("contempt")  # image100 in anger/, labelled contempt
    assert all(by_value[v] == (v - 100) // 10 for v in by_value if v != 100)
    assert "1 labels.csv label(s) differ from the image's folder; the CSV wins" in capsys.readouterr().err


def test_a_split_relative_path_found_in_two_splits_is_reported_not_guessed(tmp_path, capsys):
    for split in ("Train", "Test"):
        for c, name in enumerate(AFFECTNET_CLASSES):
            for i in range(10 if split == "Train" else 1):
                write_image(tmp_path / split / name / f"image{i}.png", 10 * c + i)
    write_labels(tmp_path / "labels.csv", [("anger/image0.png", "contempt", 0.9)])
    data = read_affectnet(tmp_path, use_cache=False)
    assert "path in several splits: skipped 1 (first: " in capsys.readouterr().err
    assert data.splits["test"][1][values(data.splits["test"][0]).index(0)] == 0  # kept its folder label


def test_csv_only_layout_inside_a_split_folder(tmp_path):
    for split, offset in (("train", 0), ("test", 100)):
        rows = []
        for i in range(80 if split == "train" else 16):
            write_image(tmp_path / split / f"img{i}.png", offset + i)
            rows.append((f"img{i}.png", AFFECTNET_CLASSES[i % 8], 1.0))
        write_labels(tmp_path / split / "labels.csv", rows)
    data = read_affectnet(tmp_path, use_cache=False)
    images, labels = data.splits["test"]
    assert sorted(zip(values(images), labels.tolist())) == [(100 + i, i % 8) for i in range(16)]


def test_min_relfc_filters_train_only_and_prints_per_class_counts(tmp_path, capsys):
    written = make_tree(tmp_path, per_class=(10, 2))
    low = {"Train/anger/image000.png", "Train/anger/image001.png", "Train/anger/image002.png"}  # values 0, 1, 2
    write_labels(tmp_path / "labels.csv", [(p, AFFECTNET_CLASSES[c], 0.5 if p in low else 0.9) for p, c in written.items()])
    everything = read_affectnet(tmp_path, use_cache=False)
    capsys.readouterr()
    clean = read_affectnet(tmp_path, use_cache=False, min_relfc=0.8)
    err = capsys.readouterr().err
    train_values = values(everything.splits["train"][0])
    n_lost = sum(v in (0, 1, 2) for v in train_values)  # the low rows that were not carved into val
    assert n_lost >= 2 and everything.sizes() == {"train": 72, "val": 8, "test": 16}
    assert values(clean.splits["train"][0]) == [v for v in train_values if v not in (0, 1, 2)]
    assert torch.equal(clean.splits["val"][0], everything.splits["val"][0])  # val and test do not move with the threshold
    assert torch.equal(clean.splits["test"][0], everything.splits["test"][0])
    assert f"train rows with relFCs >= 0.8: {72 - n_lost} kept, {n_lost} lost" in err
    assert f"(anger {9 - n_lost} kept {n_lost} lost, contempt 9 kept 0 lost," in err


def test_missing_unknown_and_unreadable_are_counted_and_skipped(tmp_path, capsys):
    written = make_tree(tmp_path, per_class=(10, 1))
    rows = [(path, AFFECTNET_CLASSES[c], 0.9) for path, c in written.items()]
    rows += [("Train/anger/gone1.jpg", "anger", 0.9), ("Train/anger/gone2.jpg", "anger", 0.9)]
    rows[0] = (rows[0][0], "smug", 0.9)  # unknown label: the image is skipped, not relabelled by its folder
    write_labels(tmp_path / "labels.csv", rows)
    (tmp_path / "Test" / "sad" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "Test" / "smirk").mkdir()
    write_image(tmp_path / "Test" / "smirk" / "odd.png", 7)
    data = read_affectnet(tmp_path, use_cache=False)
    err = capsys.readouterr().err
    assert "missing file: skipped 2 (first: " in err and "gone1.jpg" in err
    assert "unknown label: skipped 2 (first: " in err and "label 'smug'" in err and "odd.png" in err
    assert "unreadable image: skipped 1 (first: " in err and "broken.jpg" in err
    assert data.sizes()["test"] == 8 and data.sizes()["train"] + data.sizes()["val"] == 79


def test_an_empty_split_is_an_error_that_says_why(tmp_path):
    make_tree(tmp_path)
    write_labels(tmp_path / "labels.csv", [(f"{name}/image0{c}0.png", name, 0.5) for c, name in enumerate(AFFECTNET_CLASSES)])
    with pytest.raises(DataError, match="the train split has no usable images after --min-relfc 0.8"):
        read_affectnet(tmp_path, use_cache=False, min_relfc=0.8)
    with pytest.raises(DataError, match="expected Train/ and Test/"):
        read_affectnet(tmp_path / "Train", use_cache=False)


def test_load_data_dispatches_and_caches_but_still_prints_counts(tmp_path, capsys):
    written = make_tree(tmp_path, per_class=(10, 1))
    write_labels(tmp_path / "labels.csv", [(p, AFFECTNET_CLASSES[c], 0.3 + 0.1 * (c % 7)) for p, c in written.items()])
    first = load_data(tmp_path, min_relfc=0.6)
    again = load_data(tmp_path, min_relfc=0.6)  # from the parse cache
    assert capsys.readouterr().err.count("relFCs >= 0.6") == 2
    assert first.class_names == AFFECTNET_CLASSES and first.preprocessing == again.preprocessing
    assert first.preprocessing["size"] == 96
    for split in first.splits:
        assert torch.equal(first.splits[split][0], again.splits[split][0])
    with pytest.raises(DataError, match="needs an AffectNet tree"):
        bad = tmp_path / "x.csv"
        bad.write_text("emotion,pixels,Usage\n")
        load_data(bad, min_relfc=0.5)


def test_builtin_affectnet_variant_through_load_data(monkeypatch):
    import common.data as data_lib
    small = data_lib.make_builtin_dataset
    monkeypatch.setattr(data_lib, "make_builtin_dataset", lambda **kw: small(**kw, sizes=(400, 8, 8)))  # drawing 96px is slow
    data = load_data("builtin-affectnet")
    assert data.class_names == AFFECTNET_CLASSES and data.preprocessing["channels"] == 3
    images, labels = data.splits["train"]
    assert images.shape[1:] == (3, 96, 96)
    counts = torch.bincount(labels, minlength=8)
    assert (counts > 0).all() and counts[AFFECTNET_CLASSES.index("happy")] > 5 * counts[AFFECTNET_CLASSES.index("contempt")] / 2
    assert not torch.equal(images[:, 0], images[:, 1])  # colour, not gray copied thrice
    with pytest.raises(DataError, match="no relFCs"):
        load_data("builtin-affectnet", min_relfc=0.8)


# ---------------------------------------------------------------- FER+

# Usage in a mixed order, so a join that assumed "all Training rows first" would fail.
USAGES = ["Training", "PrivateTest", "Training", "PublicTest", "Training", "PrivateTest", "PublicTest", "Training",
          "Training", "PublicTest", "Training", "PrivateTest", "Training", "Training", "PublicTest", "PrivateTest"]


def ferplus_votes(row):
    """Row r votes 10 for emotion r % 8, except for the special rows below."""
    votes = [0] * 10
    votes[row % 8] = 8
    votes[(row + 1) % 8] = 2
    return votes


SPECIAL = {
    2: ("", None),  # empty image name: not a face
    3: ("fer0000003.png", [1, 0, 0, 0, 0, 0, 0, 0, 6, 3]),  # top vote unknown
    5: ("fer0000005.png", [0, 0, 0, 0, 0, 0, 0, 0, 1, 9]),  # not a face
    8: ("fer0000008.png", [4, 0, 4, 0, 0, 0, 0, 0, 2, 0]),  # tie neutral / surprise
}


def write_ferplus_pair(tmp_path, usages=USAGES):
    fer = tmp_path / "fer2013.csv"
    fer.write_text("emotion,pixels,Usage\n" + "".join(
        f"{r % 7},{' '.join([str(r)] * 2304)},{u}\n" for r, u in enumerate(usages)))
    lines = []
    for r, usage in enumerate(usages):
        name, votes = SPECIAL.get(r, (f"fer{r:07d}.png", None))
        votes = votes or ferplus_votes(r)
        lines.append(f"{usage},{name},{','.join(map(str, votes))}\n")
    new = tmp_path / "fer2013new.csv"
    new.write_text("Usage,Image name," + ",".join(VOTE_COLUMNS) + "\n" + "".join(lines))
    return fer, new


def test_ferplus_majority_joins_by_row_position_across_mixed_usage(tmp_path, capsys):
    fer, new = write_ferplus_pair(tmp_path)
    data = load_data(fer, labels="ferplus", ferplus=new)
    assert data.class_names == FERPLUS_CLASSES
    seen = []
    for split, (images, labels) in data.splits.items():
        rows = images[:, 0, 0, 0].tolist()  # every pixel of row r is r
        assert labels.dtype == torch.int64
        assert labels.tolist() == [r % 8 for r in rows]  # the vote of that very row
        seen += rows
    assert sorted(seen) == [r for r in range(len(USAGES)) if r not in SPECIAL]
    assert data.splits["val"][0][:, 0, 0, 0].tolist() == [6, 9, 14]  # PublicTest rows 3 (unknown) dropped
    err = capsys.readouterr().err
    assert "16 rows; dropped 1 with no image name, 2 whose top vote is unknown/NF, 1 tied; kept train 6, val 3, test 3" in err


def test_ferplus_probability_targets_sum_to_one_and_keep_ties_in_train(tmp_path):
    fer, new = write_ferplus_pair(tmp_path)
    data = load_data(fer, labels="ferplus", ferplus=new, ferplus_mode="probability")
    images, targets = data.splits["train"]
    assert targets.dtype == torch.float32 and targets.shape == (7, 8)  # 8 Training rows less the empty name
    assert torch.allclose(targets.sum(dim=1), torch.ones(7))
    by_row = dict(zip(images[:, 0, 0, 0].tolist(), targets))
    assert torch.allclose(by_row[8], torch.tensor([0.5, 0, 0.5, 0, 0, 0, 0, 0]))  # the tie, as a 50/50 target
    assert torch.allclose(by_row[0], torch.tensor([0.8, 0.2, 0, 0, 0, 0, 0, 0]))
    assert data.splits["val"][1].dtype == torch.int64 and data.splits["test"][1].dtype == torch.int64
    criterion = torch.nn.CrossEntropyLoss()
    assert criterion(torch.zeros(7, 8), targets).item() == pytest.approx(np.log(8), rel=1e-5)


def test_ferplus_pairing_errors_are_one_clear_line(tmp_path):
    fer, new = write_ferplus_pair(tmp_path)
    fer_data = load_data(fer, use_cache=False)
    short = tmp_path / "short.csv"
    short.write_text("".join(new.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DataError, match=r"15 rows, but .*fer2013.csv has 16; .*joined by position"):
        apply_ferplus_labels(fer_data, short)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text(new.read_text().replace("contempt", "scorn", 1))
    with pytest.raises(DataError, match="missing column\\(s\\) contempt"):
        apply_ferplus_labels(fer_data, wrong)
    swapped = tmp_path / "swapped.csv"
    lines = new.read_text().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]  # same counts per Usage, different positions
    swapped.write_text("".join(lines))
    with pytest.raises(DataError, match="row 1 has Usage 'PrivateTest' but row 1 of .* has 'Training'"):
        apply_ferplus_labels(fer_data, swapped)
    with pytest.raises(DataError, match="needs --ferplus"):
        apply_ferplus_labels(fer_data, None)
    with pytest.raises(DataError, match="join fer2013.csv by row position"):
        apply_ferplus_labels(make_builtin_dataset(sizes=(8, 8, 8)), new)
