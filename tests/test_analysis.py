"""Exploration, evaluation analysis (confusion, calibration, mistakes, ten-crop, Grad-CAM),
stage comparison and the TensorBoard notice, on tiny fixtures with hand-computed answers."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from analysis import explore as explore_lib
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


# ---------------------------------------------------------------- confusion, calibration, mistakes

# Five predictions over three classes; confidences 0.9 (right), 0.75 (wrong), 0.7 (right), 0.45 (right), 0.55 (wrong).
PROBS = torch.tensor([[0.9, 0.05, 0.05], [0.75, 0.15, 0.1], [0.2, 0.7, 0.1], [0.3, 0.25, 0.45], [0.1, 0.35, 0.55]])
LABELS = torch.tensor([0, 1, 1, 2, 0])


def test_confusion_and_calibration_match_hand_computed_values(tmp_path):
    from analysis.calibration import calibration, most_confident_mistakes, write_eval_figures
    from common.metrics import confusion_matrix
    preds = PROBS.argmax(1)
    assert confusion_matrix(LABELS, preds, 3).tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    calib = calibration(PROBS, LABELS, n_bins=5)  # bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]
    assert [b["count"] for b in calib["bins"]] == [0, 0, 2, 2, 1]
    assert [b["accuracy"] for b in calib["bins"]] == pytest.approx([0, 0, 0.5, 0.5, 1.0])
    assert [b["confidence"] for b in calib["bins"]] == pytest.approx([0, 0, 0.5, 0.725, 0.9])
    assert calib["ece"] == pytest.approx(2 / 5 * 0 + 2 / 5 * 0.225 + 1 / 5 * 0.1)  # 0.11
    assert most_confident_mistakes(PROBS, LABELS).tolist() == [1, 4]  # 0.75 before 0.55
    images = torch.randint(0, 256, (5, 1, 48, 48), dtype=torch.uint8)
    result = {"labels": LABELS, "preds": preds, "probs": PROBS}
    extra = write_eval_figures(tmp_path, images, result, ["a", "b", "c"], "fixed")
    assert extra["ece"] == pytest.approx(calibration(PROBS, LABELS)["ece"])  # eval uses the default 15 bins
    for name in ("confusion_normalized.png", "reliability.png", "mistakes.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_a_perfectly_calibrated_set_has_zero_ece():
    from analysis.calibration import calibration
    probs = torch.tensor([[0.75, 0.25]] * 4)  # says 75%, right 3 times out of 4
    assert calibration(probs, torch.tensor([0, 0, 0, 1]))["ece"] == pytest.approx(0.0)


# ---------------------------------------------------------------- ten-crop

def test_ten_crops_shape_mirrors_and_centre():
    from analysis.tencrop import ten_crops
    images = torch.randn(2, 1, 48, 48)
    crops = ten_crops(images)
    assert crops.shape == (2, 10, 1, 48, 48)
    assert torch.equal(crops[:, 5:], crops[:, :5].flip(-1))  # the last five mirror the first five
    assert torch.allclose(ten_crops(images, zoom=1.0)[:, 4], images)  # no zoom: the centre crop is the image
    assert not torch.allclose(crops[:, 0], crops[:, 3])  # opposite corners are different views


def test_evaluate_tencrop_averages_the_crops():
    from analysis.tencrop import evaluate_tencrop, ten_crops
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    images, labels = torch.randn(5, 1, 48, 48), torch.tensor([0, 1, 2, 0, 1])
    model(images)  # materialise the lazy layer
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=2)
    result = evaluate_tencrop(model, loader, torch.device("cpu"))
    with torch.no_grad():
        expected = torch.stack([model(ten_crops(images)[:, k]).softmax(1) for k in range(10)]).mean(0)
        single = model(images).softmax(1)
    assert torch.allclose(result["probs"], expected, atol=1e-6)
    assert not torch.allclose(result["probs"], single, atol=1e-3)
    assert result["accuracy"] == pytest.approx((expected.argmax(1) == labels).double().mean().item())


# ---------------------------------------------------------------- Grad-CAM

class TinyAttentionNet(torch.nn.Module):
    """Two convolutions, then CBAM-like attention (1x1 channel MLP, one-map spatial conv) and a head."""

    def __init__(self, inplace=False):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 8, 3, padding=1)
        self.relu = torch.nn.ReLU(inplace=inplace)
        self.channel_mlp = torch.nn.Conv2d(8, 8, 1)
        self.spatial = torch.nn.Conv2d(2, 1, 7, padding=3)
        self.head = torch.nn.Linear(8, 3)

    def attention_maps(self, x):
        return torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))[:, 0]

    def forward(self, x):
        x = self.relu(self.conv2(torch.relu(self.conv1(x))))  # (B, 8, H, W)
        x = x * torch.sigmoid(self.channel_mlp(x.mean((2, 3), keepdim=True)))
        x = x * torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
        return self.head(x.mean((2, 3)))


def test_gradcam_targets_the_last_feature_conv_not_the_attention_convs():
    from analysis.heatmaps import find_gradcam_layer
    model = TinyAttentionNet()
    assert find_gradcam_layer(model, (1, 16, 16)) is model.conv2
    model.gradcam_layer = "conv1"  # a model may name its own target
    assert find_gradcam_layer(model, (1, 16, 16)) is model.conv1


def test_gradcam_survives_an_inplace_relu_after_the_conv():
    from analysis.heatmaps import grad_cam
    torch.manual_seed(0)
    model, images = TinyAttentionNet(inplace=False), torch.randn(3, 1, 16, 16)
    inplace = TinyAttentionNet(inplace=True)
    inplace.load_state_dict(model.state_dict())
    cams, probs = grad_cam(model, images)
    cams_inplace, _ = grad_cam(inplace, images)
    assert cams.shape == (3, 16, 16) and probs.shape == (3, 3)
    assert torch.allclose(cams, cams_inplace, atol=1e-6)


def test_gradcam_grid_puts_attention_beside_gradcam(monkeypatch, tmp_path, tiny_faces):
    from analysis import heatmaps
    from analysis.heatmaps import plot_heatmap_grid
    from common.facedata import PREPROCESSING
    images, labels = tiny_faces.splits["train"]
    seen = {}
    monkeypatch.setattr(heatmaps, "plot_heatmap_grid", lambda *a, **kw: seen.update(kw, images=a[0]))
    model = TinyAttentionNet()
    heatmaps.write_gradcam(model, images, labels, tiny_faces.class_names, PREPROCESSING["fer2013"],
                           torch.device("cpu"), tmp_path / "unused.png", per_class=2)
    attention = seen["attention"]
    assert attention.shape == (len(seen["images"]), 48, 48)
    assert attention.min() >= 0 and attention.max() <= 1
    cams = torch.rand(len(attention), 48, 48)
    n = len(attention)
    args = (seen["images"], cams, labels[:n], labels[:n], torch.ones(n), tiny_faces.class_names)
    plot_heatmap_grid(*args, tmp_path / "plain.png", per_class=2)
    plot_heatmap_grid(*args, tmp_path / "both.png", per_class=2, attention=attention)
    assert Image.open(tmp_path / "both.png").width > 1.5 * Image.open(tmp_path / "plain.png").width


# ---------------------------------------------------------------- eval.py on a trained 01_baseline

@pytest.fixture(scope="module")
def trained_baseline(faces_csv, tmp_path_factory):
    from conftest import load_stage_module
    out = tmp_path_factory.mktemp("run01_analysis")
    load_stage_module("01_baseline", "train").main(["--data", str(faces_csv), "--epochs", "3", "--out", str(out)])
    return out


def test_eval_writes_analysis_tencrop_and_gradcam(trained_baseline, small_faces, capsys):
    from conftest import load_stage_module
    from analysis.heatmaps import grad_cam
    from common.checkpoint import load_checkpoint
    from common.data import eval_transform
    eval_lib = load_stage_module("01_baseline", "eval")
    eval_lib.main(["--checkpoint", str(trained_baseline / "best.pt"), "--split", "test", "--tta", "tencrop", "--gradcam"])
    printed = capsys.readouterr().out
    assert "ten-crop: accuracy" in printed and "(single crop:" in printed and "ECE" in printed
    out = trained_baseline / "eval_test"
    for name in ("confusion.png", "confusion_normalized.png", "mistakes.png", "reliability.png", "gradcam.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert 0 <= report["ece"] <= 1 and sum(b["count"] for b in report["calibration_bins"]) == 120
    assert 0 <= report["tencrop"]["accuracy"] <= 1
    checkpoint = load_checkpoint(trained_baseline / "best.pt")
    model = eval_lib.load_model(checkpoint)
    images = small_faces.splits["test"][0][:8]
    batch = torch.stack([eval_transform(checkpoint["preprocessing"])(image) for image in images])
    cams, _ = grad_cam(model, batch)
    assert cams.shape == (8, 48, 48)
    assert cams.min() >= 0 and cams.max() <= 1
    assert (cams.flatten(1).std(dim=1) > 0.05).all()  # a trained model looks somewhere in particular
    assert not torch.allclose(cams[0], cams[1], atol=0.05)  # and somewhere different per face


# ---------------------------------------------------------------- stage comparison

def fake_run(folder, epochs, seconds, data, test=None):
    """A run folder as 01_baseline/train.py leaves it, with an untrained model (no training needed)."""
    from conftest import load_stage_module
    from common.checkpoint import save_checkpoint, write_json, write_metrics_csv
    from common.facedata import FER2013_CLASSES, PREPROCESSING
    config = {**vars(load_stage_module("01_baseline", "train").get_args([])[0]), "data": data, "epochs": epochs}
    write_json(folder / "config.json", config)
    history = [{"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.3 + 0.1 * e,
                "val_f1": 0.2 + 0.1 * e - 0.15 * (e == epochs), "lr": 1e-3, "img_per_s": 100.0 * e,
                "seconds": seconds} for e in range(1, epochs + 1)]
    write_metrics_csv(folder / "metrics.csv", history)
    model = load_stage_module("01_baseline", "model").build_model(7)
    save_checkpoint(folder / "best.pt", {"stage": "01_baseline", "model": model.state_dict(), "config": config,
                                         "class_names": list(FER2013_CLASSES), "preprocessing": PREPROCESSING["fer2013"]})
    if test:
        write_json(folder / "eval_test" / "report.json", {"accuracy": test[0], "macro_f1": test[1]})
    return folder


def test_compare_lists_every_run_with_its_numbers(tmp_path, capsys):
    from analysis import compare
    runs = tmp_path / "runs" / "01_baseline"
    a = fake_run(runs / "a", epochs=3, seconds=10.0, data="builtin", test=(0.612, 0.5432))
    b = fake_run(runs / "b", epochs=4, seconds=6.0, data="/data/fer2013.csv")
    (tmp_path / "runs" / "explore").mkdir()  # what `runs/*/*` also matches: skipped with a note
    rows = compare.main([str(a), str(b), str(tmp_path / "runs" / "explore"), "--out", str(tmp_path / "c.png")])
    table = capsys.readouterr()
    lines = [line for line in table.out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(lines) == 3 and [r["run"] for r in rows] == ["a", "b"]
    row_a, row_b = lines[1], lines[2]
    assert row_a.startswith("| a | 01_baseline | builtin | 1,232,775 | 3 (2) | 50.0% | 0.400 | 61.2% | 0.543 | 10.0 | 200 |")
    assert row_b.startswith("| b | 01_baseline | fer2013.csv | 1,232,775 | 4 (3) | 60.0% | 0.500 | – | – | 6.0 | 250 |")
    assert "`python 01_baseline/train.py --epochs 3`" in row_a
    assert "`python 01_baseline/train.py --data /data/fer2013.csv --epochs 4`" in row_b
    assert "note: skipped" in table.err and (tmp_path / "c.png").stat().st_size > 0


def test_compare_with_no_run_folder_is_a_one_line_error(run, tmp_path):
    result = run("-m", "analysis.compare", tmp_path, "--out", tmp_path / "c.png")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: none of the 1 folder(s)")


def test_by_source_groups_accuracy_and_mistakes_by_file_name(tmp_path, run):
    from analysis.by_source import group_rows, source_of
    assert source_of("data/test/images/ffhq_12.png") == "ffhq_"
    assert source_of("image0001234.jpg") == "image"
    rows = [{"file": f"ffhq_{i}.png", "label": "happy", "prediction": "happy"} for i in range(6)]
    rows += [{"file": f"image{i:04d}.jpg", "label": "sad", "prediction": "fear"} for i in range(3)]
    rows += [{"file": "image9999.jpg", "label": "sad", "prediction": "sad"}]
    rows += [{"file": "ffhq_99.png", "label": "fear", "prediction": "happy"}]
    table = group_rows(rows)
    assert table[0] == ("ffhq_", 7, pytest.approx(6 / 7), pytest.approx(1 / 4))
    assert table[1] == ("image", 4, pytest.approx(1 / 4), pytest.approx(3 / 4))
    csv_file = tmp_path / "predictions.csv"
    csv_file.write_text("index,file,label,prediction,confidence\n" + "".join(
        f"{i},{r['file']},{r['label']},{r['prediction']},0.5\n" for i, r in enumerate(rows)))
    printed = run("-m", "analysis.by_source", csv_file)
    assert printed.returncode == 0, printed.stderr
    assert "ffhq_" in printed.stdout and "75.0%" in printed.stdout
    no_files = tmp_path / "fer.csv"
    no_files.write_text("index,file,label,prediction,confidence\n0,,happy,happy,0.9\n")
    refused = run("-m", "analysis.by_source", no_files)
    assert refused.returncode != 0 and "no file names" in refused.stderr
