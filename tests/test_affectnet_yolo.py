"""common/affectnet_yolo.py on tiny trees written in the Kaggle "YOLO format" layout."""
import numpy as np
import pytest
import torch
from PIL import Image

from common.affectnet_yolo import is_yolo_tree, read_yaml_names, read_yolo
from common.data import find_default_affectnet, load_data
from common.facedata import AFFECTNET_CLASSES, DataError

# The real copy's data.yaml: a flow list over several lines, with a trailing comma.
DATA_YAML = """data: "./YOLO_format"

train: "./train/images"
val: "./valid/images"
test: "./test/images"

nc: 8

names:
  [
    "Anger",
    "Contempt",
    "Disgust",
    "Fear",
    "Happy",
    "Neutral",
    "Sad",
    "Surprise",
  ]

# Network configuration (choose other variations if desired)
network: "yolov8n"
"""


def write_face(path, value):
    """A 96x96 RGB PNG filled with `value` (lossless: the value identifies the image after reading)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((96, 96, 3), value, np.uint8)).save(path)


def write_label(path, index):
    """One line, no trailing newline, a box over the whole image: as the real label files are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{index} 0.499 0.499 0.999 0.999")


def make_yolo_tree(root, yaml_text=DATA_YAML, per_class=2, folders=("train", "valid", "test")):
    """Every split gets per_class faces of each of the 8 yaml classes. A face's value is
    10 * yaml index + i (+80 in valid, +160 in test), so a test can tell where it came from."""
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml_text)
    for offset, folder in enumerate(folders):
        for index in range(8):
            for i in range(per_class):
                name = f"ffhq_{index}{i}" if i == 0 else f"image{index}{i}"
                write_face(root / folder / "images" / f"{name}.png", 80 * offset + 10 * index + i)
                write_label(root / folder / "labels" / f"{name}.txt", index)
    return root


def test_reads_the_layout_with_valid_as_the_validation_split(tmp_path):
    root = make_yolo_tree(tmp_path / "YOLO_format")
    assert is_yolo_tree(root) and is_yolo_tree(root / "data.yaml")
    data = load_data(root, use_cache=False)
    assert data.class_names == AFFECTNET_CLASSES
    assert data.preprocessing["size"] == 96 and data.preprocessing["channels"] == 3
    assert data.sizes() == {"train": 16, "val": 16, "test": 16}
    images, labels = data.splits["val"]
    assert images.shape == (16, 3, 96, 96) and images.dtype == torch.uint8
    assert labels.tolist() == [(int(v) - 80) // 10 for v in images[:, 0, 0, 0]]
    assert len(data.files["test"]) == 16
    assert sum("ffhq_" in f for f in data.files["test"]) == 8


def test_yaml_order_is_mapped_onto_the_course_order_by_name(tmp_path):
    reordered = ["Happy", "Anger", "Sad", "Contempt", "Surprise", "Fear", "Neutral", "Disgust"]
    yaml_text = "names:\n" + "".join(f"  - {name}\n" for name in reordered) + "nc: 8\n"
    root = make_yolo_tree(tmp_path, yaml_text=yaml_text, per_class=1)
    images, labels = read_yolo(root, use_cache=False).splits["train"]
    for value, label in zip(images[:, 0, 0, 0].tolist(), labels.tolist()):
        yaml_index = value // 10
        assert AFFECTNET_CLASSES[label] == reordered[yaml_index].lower()


@pytest.mark.parametrize("yaml_text", [
    "names: [Anger, Contempt, Disgust, Fear, Happy, Neutral, Sad, Surprise]\n",
    "names:\n  0: anger\n  1: contempt\n  2: disgust\n  3: fear\n  4: happy\n  5: neutral\n  6: sad\n  7: surprise\nnc: 8\n",
    "# classes\nnames:   # in label-index order\n- Anger\n- 'Contempt'\n- Disgust\n- Fear\n- Happy\n- Neutral\n- Sad\n- Surprise\n",
])
def test_the_three_yaml_spellings_of_names(tmp_path, yaml_text):
    (tmp_path / "data.yaml").write_text(yaml_text)
    names = [name.lower() for name in read_yaml_names(tmp_path / "data.yaml")]
    assert names == AFFECTNET_CLASSES


def test_folder_names_in_any_case(tmp_path):
    root = make_yolo_tree(tmp_path, per_class=1, folders=("Train", "VALID", "Test"))
    (root / "Train" / "images").rename(root / "Train" / "Images")
    assert read_yolo(root, use_cache=False).sizes() == {"train": 8, "val": 8, "test": 8}


def test_unpaired_empty_and_unreadable_files_are_counted_named_and_skipped(tmp_path, capsys):
    root = make_yolo_tree(tmp_path, per_class=2)
    write_face(root / "test" / "images" / "original_result.png", 7)  # an image nobody labelled
    write_label(root / "train" / "labels" / "image99.txt", 3)  # a label whose image is gone
    (root / "train" / "labels" / "image01.txt").write_text("")  # YOLO's "no object"
    (root / "valid" / "images" / "image11.png").write_bytes(b"not an image")
    data = read_yolo(root, use_cache=False)
    assert data.sizes() == {"train": 15, "val": 15, "test": 16}
    err = capsys.readouterr().err
    assert "image without a label: skipped 1" in err and "original_result.png" in err
    assert "label without an image: skipped 1" in err and "image99.txt" in err
    assert "empty label: skipped 1" in err and "image01.txt" in err
    assert "unreadable image: skipped 1" in err and "image11.png" in err


def test_counts_are_printed_again_when_the_images_come_from_the_cache(tmp_path, capsys):
    root = make_yolo_tree(tmp_path, per_class=1)
    (root / "valid" / "images" / "image01.png").unlink(missing_ok=True)
    (root / "valid" / "images" / "ffhq_10.png").write_bytes(b"broken")
    first = load_data(root)
    err_first = capsys.readouterr().err
    again = load_data(root)
    err_again = capsys.readouterr().err
    assert "unreadable image: skipped 1" in err_first and "unreadable image: skipped 1" in err_again
    assert torch.equal(first.splits["val"][0], again.splits["val"][0])


def test_a_class_index_outside_the_yaml_is_one_error_naming_the_file(tmp_path):
    root = make_yolo_tree(tmp_path, per_class=1)
    write_label(root / "test" / "labels" / "ffhq_30.txt", 8)
    with pytest.raises(DataError, match=r"ffhq_30\.txt: class index 8 is outside data\.yaml's 8 names"):
        read_yolo(root, use_cache=False)


def test_an_unknown_class_name_in_the_yaml_is_an_error(tmp_path):
    yaml_text = DATA_YAML.replace('"Contempt"', '"Bored"')
    root = make_yolo_tree(tmp_path, yaml_text=yaml_text, per_class=1)
    with pytest.raises(DataError, match="data.yaml: class 'Bored' is not an AffectNet class"):
        read_yolo(root, use_cache=False)


def test_min_relfc_on_a_yolo_tree_is_a_one_line_error(tmp_path):
    root = make_yolo_tree(tmp_path, per_class=1)
    with pytest.raises(DataError, match="--min-relfc needs relFCs scores.*drop --min-relfc"):
        load_data(root, min_relfc=0.8)


def test_the_default_affectnet_folder_can_be_the_yolo_tree(tmp_path, monkeypatch):
    import common.data
    monkeypatch.setattr(common.data, "DATA_DIR", tmp_path)
    assert find_default_affectnet() is None
    make_yolo_tree(tmp_path / "YOLO_format", per_class=1)
    assert find_default_affectnet() == tmp_path / "YOLO_format"


def test_04_trains_on_a_yolo_tree_and_eval_names_each_test_file(tmp_path, run):
    from common.builtin_faces import make_builtin_dataset
    faces = make_builtin_dataset(seed=2, variant="affectnet", sizes=(160, 48, 48))
    root = tmp_path / "YOLO_format"
    (root / "data.yaml").parent.mkdir(parents=True)
    (root / "data.yaml").write_text(DATA_YAML)
    for split, folder in (("train", "train"), ("val", "valid"), ("test", "test")):
        images, labels = faces.splits[split]
        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            name = f"ffhq_{i}" if i % 2 else f"image{i:07d}"
            path = root / folder / "images" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.numpy().transpose(1, 2, 0)).save(path)
            write_label(root / folder / "labels" / f"{name}.txt", label)  # yaml order = course order
    out = tmp_path / "run"
    trained = run("04_affectnet/train.py", "--data", root, "--epochs", "1", "--image-size", "48",
                  "--out", out)
    assert trained.returncode == 0, trained.stderr
    assert "train 160" in trained.stdout and "val 48" in trained.stdout
    evaluated = run("04_affectnet/eval.py", "--checkpoint", out / "best.pt")
    assert evaluated.returncode == 0, evaluated.stderr
    rows = (out / "eval_test" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 48
    assert sum("/test/images/ffhq_" in row for row in rows) == 24
    grouped = run("-m", "analysis.by_source", out / "eval_test" / "predictions.csv")
    assert grouped.returncode == 0 and "ffhq_" in grouped.stdout and "image" in grouped.stdout
