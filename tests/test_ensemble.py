"""05_deploy/ensemble.py: members' and ensemble's numbers agree with each stage's own evaluation,
per-member channels, weights fitted on validation only, refusals, and the ensemble as one ONNX file.

Members are tiny checkpoints trained here on the small built-in FER2013 CSV. The ONNX test needs
the deploy packages (pip install -r 05_deploy/requirements.txt) and skips without them.
"""
import json

import pytest
import torch
from conftest import REPO, load_stage_module
from PIL import Image

from analysis.tencrop import evaluate_tencrop
from common.builtin_faces import make_builtin_dataset
from common.checkpoint import load_checkpoint, save_checkpoint
from common.data import ImageDataset, eval_transform, load_data
from common.runtime import UserError, import_sibling

ensemble_lib = import_sibling(REPO / "05_deploy" / "ensemble.py", "ensemble")


@pytest.fixture(scope="module")
def members(small_csv, tmp_path_factory):
    """best.pt of a 2-epoch 01_baseline and a 1-epoch 04_affectnet (gray, 48x48) run on the small CSV."""
    root = tmp_path_factory.mktemp("members")
    load_stage_module("01_baseline", "train").main(["--data", str(small_csv), "--epochs", "2", "--out", str(root / "01")])
    load_stage_module("04_affectnet", "train").main(["--data", str(small_csv), "--epochs", "1", "--num-workers", "0",
                                                     "--image-size", "48", "--out", str(root / "04")])
    return [root / "01" / "best.pt", root / "04" / "best.pt"]


def stage_probs(path, split, tta="none"):
    """A member's probabilities as its own stage's eval.py computes them."""
    checkpoint = load_checkpoint(path)
    eval_lib = load_stage_module(checkpoint["stage"], "eval")
    data = load_data(checkpoint["config"]["data"])
    loader = torch.utils.data.DataLoader(ImageDataset(*data.split(split), eval_transform(checkpoint["preprocessing"])),
                                         batch_size=256)
    model = eval_lib.load_model(checkpoint)
    result = evaluate_tencrop(model, loader, "cpu") if tta == "tencrop" else eval_lib.evaluate(model, loader, "cpu")
    return result["probs"], result["labels"]


def test_members_and_mean_match_each_stages_own_evaluation(members, tmp_path, capsys):
    result = ensemble_lib.main([*map(str, members), "--out", str(tmp_path / "ens")])
    printed = capsys.readouterr().out.splitlines()
    probs = [stage_probs(path, "test") for path in members]
    labels = probs[0][1]
    for report, (p, _) in zip(result["members"], probs):
        assert report["accuracy"] == pytest.approx((p.argmax(1) == labels).float().mean().item())
    mean = (probs[0][0] + probs[1][0]) / 2
    assert result["ensemble"]["accuracy"] == pytest.approx((mean.argmax(1) == labels).float().mean().item())
    assert result["weights"] == [0.5, 0.5]

    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in printed if line.startswith("| ")]
    assert table[0][:6] == ["model", "weight", "accuracy", "macro-F1", "angry", "disgust"]
    assert [row[0] for row in table[1:]] == [f"01_baseline `{members[0]}`", f"04_affectnet `{members[1]}`", "**ensemble**"]
    ensemble_row = table[-1]
    assert ensemble_row[2] == f"{100 * result['ensemble']['accuracy']:.1f}%"
    assert [float(x) for x in ensemble_row[4:]] == pytest.approx(
        [row["f1"] for row in result["ensemble"]["per_class"]], abs=5e-4)
    assert printed[-1].startswith("ensemble: accuracy ")

    out = tmp_path / "ens"
    assert (out / "confusion.png").is_file()
    saved = json.loads((out / "report.json").read_text())
    assert saved["split"] == "test" and [m["stage"] for m in saved["members"]] == ["01_baseline", "04_affectnet"]
    assert sum(map(sum, saved["ensemble"]["confusion_matrix"])) == len(labels)
    packed = torch.load(out / "ensemble.pt", weights_only=True)  # plain types, like every checkpoint
    assert packed["stage"] == "ensemble" and packed["weights"] == [0.5, 0.5] and "optimizer" not in packed["members"][0]
    with pytest.raises(UserError, match="already exists"):  # nothing is overwritten
        ensemble_lib.main([*map(str, members), "--out", str(out)])


def test_tencrop_members_match_eval_tencrop(members, tmp_path):
    checkpoints = [load_checkpoint(path) for path in members]
    ensemble = ensemble_lib.from_checkpoint(ensemble_lib.ensemble_checkpoint(checkpoints, members, [0.5, 0.5]))
    data = load_data(checkpoints[0]["config"]["data"])
    probs, _ = ensemble_lib.member_probabilities(ensemble, ensemble_lib.pixel_loader(*data.split("test"), 48), "cpu",
                                                 "tencrop")
    for member_probs, path in zip(probs, members):
        torch.testing.assert_close(member_probs, stage_probs(path, "test", "tencrop")[0], atol=1e-5, rtol=1e-4)


def rgb_twin(checkpoint):
    """The same network for RGB input (as 04_affectnet trains on colour): its first convolution gets one copy of the gray
    kernel per colour, weighed as the gray conversion weighs the colours, so on any face it answers
    exactly as the gray original does on that face's gray version."""
    state = dict(checkpoint["model"])
    [first_conv] = [key for key, value in state.items() if value.ndim == 4 and value.shape[1] == 1]
    state[first_conv] = state[first_conv] * torch.tensor(ensemble_lib.LUMA).view(1, 3, 1, 1)
    pre = checkpoint["preprocessing"]
    return {**checkpoint, "model": state,
            "preprocessing": {**pre, "channels": 3, "mean": pre["mean"] * 3, "std": pre["std"] * 3}}


def test_each_member_gets_the_input_in_its_own_channels(members):
    gray = load_checkpoint(members[0])
    ensemble = ensemble_lib.from_checkpoint(ensemble_lib.ensemble_checkpoint([gray, rgb_twin(gray)], ["gray", "rgb"], [0.5, 0.5]))
    faces = make_builtin_dataset(seed=4, sizes=(16, 0, 0)).splits["train"][0].float() / 255  # gray (16, 1, 48, 48)
    colour = torch.rand(16, 3, 48, 48)
    for images in (faces, colour):  # gray faces repeated for the RGB member; colour faces weighed for the gray one
        gray_probs, rgb_probs = ensemble.member_probs(images)
        torch.testing.assert_close(rgb_probs, gray_probs, atol=1e-5, rtol=1e-4)
    assert gray_probs.std(dim=0).max() > 0.001  # the answers depend on the input, so agreeing means something


def test_fit_weights_uses_the_validation_split_only(members, small_csv, tmp_path, capsys):
    """A member whose class scores are rolled by one class is confidently wrong: its fitted weight is about 0.
    Changing every test label changes nothing: the weights come from PublicTest alone."""
    checkpoint = load_checkpoint(members[0])
    state = dict(checkpoint["model"])
    head_weight, head_bias = list(state)[-2:]  # the last Linear layer: one row per class
    state[head_weight], state[head_bias] = state[head_weight].roll(1, 0), state[head_bias].roll(1, 0)
    save_checkpoint(tmp_path / "rolled.pt", {**checkpoint, "model": state})
    changed = tmp_path / "changed_test_labels.csv"
    lines = small_csv.read_text().splitlines(keepends=True)
    changed.write_text("".join(f"{(int(l[0]) + 1) % 7}{l[1:]}" if "PrivateTest" in l else l for l in lines))

    runs = [ensemble_lib.main([str(members[0]), str(tmp_path / "rolled.pt"), "--fit-weights", "--data", str(data),
                               "--out", str(tmp_path / name)]) for data, name in ((small_csv, "a"), (changed, "b"))]
    assert runs[0]["weights"] == runs[1]["weights"]
    assert runs[0]["weights"][0] > 0.9 and sum(runs[0]["weights"]) == pytest.approx(1)
    assert runs[0]["ensemble"]["accuracy"] != runs[1]["ensemble"]["accuracy"]  # the test labels did change
    assert "weights fitted on val: 01_baseline" in capsys.readouterr().out


def test_refuses_members_with_different_classes_in_one_line(members, tmp_path):
    checkpoint = load_checkpoint(members[0])
    save_checkpoint(tmp_path / "ferplus.pt", {**checkpoint, "class_names": ["neutral", "happiness", "surprise", "sadness",
                                                                            "anger", "disgust", "fear"]})
    with pytest.raises(UserError) as refused:  # the script prints it as one "error: ..." line, like every tool here
        ensemble_lib.main([str(members[0]), str(tmp_path / "ferplus.pt"), "--out", str(tmp_path / "ens")])
    message = str(refused.value)
    assert message.startswith(f"{members[0]} and {tmp_path / 'ferplus.pt'} predict different classes (angry, ")
    assert "\n" not in message and not (tmp_path / "ens").exists()


def test_ensemble_exports_to_one_onnx_file_that_predict_uses(members, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("cv2")
    deploy = {name: import_sibling(REPO / "05_deploy" / f"{name}.py", name) for name in ("export", "faces", "predict")}
    ensemble_lib.main([*map(str, members), "--out", str(tmp_path / "ens")])
    result = deploy["export"].main(["--checkpoint", str(tmp_path / "ens" / "ensemble.pt")])
    assert result["out"] == tmp_path / "ens" / "ensemble.onnx" and result["max_abs_diff"] < 1e-4
    meta = ort.InferenceSession(str(result["out"])).get_modelmeta().custom_metadata_map
    assert meta["stage"] == "ensemble" and json.loads(meta["preprocessing"])["std"] == [1.0]

    onnx_model = deploy["faces"].Classifier(result["out"])
    faces = make_builtin_dataset(seed=4, sizes=(6, 0, 0)).splits["train"][0]
    crops = [face[0].numpy() for face in faces]  # gray (48, 48) uint8, as a cropped photo would be
    expected = sum(0.5 * torch.from_numpy(deploy["faces"].Classifier(path).probabilities(crops)) for path in members)
    torch.testing.assert_close(torch.from_numpy(onnx_model.probabilities(crops)), expected.float(), atol=1e-5, rtol=1e-4)

    folder = tmp_path / "crops"
    folder.mkdir()
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(folder / f"face{i}.png")
    rows, problems = deploy["predict"].main(["--model", str(result["out"]), "--no-detect", str(folder),
                                             "--out", str(tmp_path / "predicted")])
    assert problems == 0 and [len(row["faces"]) for row in rows] == [1] * 6
    assert (tmp_path / "predicted" / "predictions.csv").is_file()
