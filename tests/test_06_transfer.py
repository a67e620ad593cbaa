"""06_transfer: 04's AffectNet weights meet grey FER2013 faces exactly, the ImageNet ResNet-18
start loads a local file and fails in one line without one, and short runs from each start
train, save start.pt and evaluate."""
import urllib.error

import pytest
import torch
from conftest import REPO, load_stage_module
from torchvision.models import resnet18

from common.checkpoint import load_checkpoint, save_checkpoint
from common.facedata import AFFECTNET_CLASSES, FER2013_CLASSES, PREPROCESSING
from common.runtime import UserError

STAGE = "06_transfer"


def affectnet_checkpoint(path, seed=0):
    """A 04_affectnet checkpoint with random weights, in the shipped (inference-only) format."""
    torch.manual_seed(seed)
    model = load_stage_module("04_affectnet", "model").build_model(num_classes=8, in_channels=3)
    for module in model.modules():  # non-trivial BatchNorm statistics, so eval mode is tested too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    state = {
        "stage": "04_affectnet",
        "model": model.state_dict(),
        "model_kwargs": {"grayscale": False},
        "class_names": list(AFFECTNET_CLASSES),
        "preprocessing": {**PREPROCESSING["affectnet"], "size": 48},
        "config": {"seed": seed, "data": "builtin-affectnet"},
        "epoch": 1,
    }
    save_checkpoint(path, state)
    return model.eval(), path


def test_affectnet_start_computes_on_grey_faces_what_04_computed_in_colour(tmp_path):
    model_04, path = affectnet_checkpoint(tmp_path / "04.pt")
    transfer = load_stage_module(STAGE, "transfer")
    fer = PREPROCESSING["fer2013"]
    model_06 = transfer.from_affectnet(load_checkpoint(path), FER2013_CLASSES, fer).eval()
    grey = torch.rand(4, 1, 48, 48)  # pixel values in [0, 1]
    colour = grey.repeat(1, 3, 1, 1)  # the same faces with R = G = B
    rgb = PREPROCESSING["affectnet"]
    as_04_sees_it = (colour - torch.tensor(rgb["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        rgb["std"]).view(1, 3, 1, 1)
    as_06_sees_it = (grey - fer["mean"][0]) / fer["std"][0]
    with torch.no_grad():
        block_04 = model_04.features[0](as_04_sees_it)  # first conv, BatchNorm, ReLU
        block_06 = model_06.features[0](as_06_sees_it)
    inside = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # zero padding differs
    assert torch.allclose(block_06[inside], block_04[inside], atol=1e-4)
    assert not torch.allclose(block_06, block_04, atol=1e-4)  # the border pixels do differ
    assert model_06.features[0][0].weight.shape == (32, 1, 3, 3)
    for i, name in enumerate(FER2013_CLASSES):  # each FER2013 output is its AffectNet emotion's
        j = AFFECTNET_CLASSES.index(transfer.TO_AFFECTNET[name])
        assert torch.equal(model_06.classifier[4].weight[i], model_04.classifier[4].weight[j])
        assert torch.equal(model_06.classifier[4].bias[i], model_04.classifier[4].bias[j])
    later = "features.4.0.weight"
    assert torch.equal(model_06.state_dict()[later], model_04.state_dict()[later])


def test_resnet18_from_a_local_imagenet_file(tmp_path):
    torch.manual_seed(1)
    imagenet = resnet18(weights=None)
    file = tmp_path / "resnet18-f37072fd.pth"
    torch.save(imagenet.state_dict(), file)
    fer = PREPROCESSING["fer2013"]
    model = load_stage_module(STAGE, "transfer").imagenet_resnet18(7, fer, file)
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    imagenet_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = (imagenet.conv1.weight * fer["std"][0] / imagenet_std).sum(dim=1, keepdim=True)
    assert torch.allclose(model.conv1.weight, expected)
    assert torch.equal(model.layer3[0].conv1.weight, imagenet.layer3[0].conv1.weight)
    assert model.eval()(torch.zeros(2, 1, 48, 48)).shape == (2, 7)


def test_imagenet_download_failure_is_one_line_saying_where_to_put_the_file(tmp_path, monkeypatch):
    transfer = load_stage_module(STAGE, "transfer")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as error:
        transfer.cached_download(transfer.IMAGENET_URL, "--init-weights")
    message = str(error.value)
    assert "\n" not in message
    assert "could not download" in message and "--init-weights" in message
    placed = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(placed) in message
    placed.write_bytes(b"weights")  # the file put there by hand is used, with no download
    assert transfer.cached_download(transfer.IMAGENET_URL, "--init-weights") == placed


@pytest.mark.parametrize("init", ["affectnet", "scratch", "imagenet"])
def test_short_run_from_each_start_trains_saves_start_and_evaluates(init, small_csv, tmp_path, run):
    _, weights = affectnet_checkpoint(tmp_path / "04.pt")
    if init == "imagenet":  # a local file in torchvision's format, as one placed by hand
        weights = tmp_path / "resnet18-f37072fd.pth"
        torch.save(resnet18(weights=None).state_dict(), weights)
    out = tmp_path / init
    args = [f"{STAGE}/train.py", "--data", small_csv, "--init", init, "--epochs", "1", "--out", out]
    if init != "scratch":
        args += ["--init-weights", weights]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    start = torch.load(out / "start.pt", weights_only=True)
    transfer = load_stage_module(STAGE, "transfer")
    if init == "affectnet":  # start.pt is 04's network adapted to grey faces and 7 classes
        fer = PREPROCESSING["fer2013"]
        adapted = transfer.from_affectnet(load_checkpoint(weights), FER2013_CLASSES, fer)
        adapted = adapted.state_dict()
        assert all(torch.equal(start[key], adapted[key]) for key in adapted)
    best = load_checkpoint(out / "best.pt")
    assert best["config"]["init"] == init and best["class_names"] == FER2013_CLASSES
    moved = [key for key in start if not torch.equal(start[key], best["model"][key])]
    first = "conv1.weight" if init == "imagenet" else "features.0.0.weight"
    assert first in moved  # it trained
    evaluated = run(f"{STAGE}/eval.py", "--checkpoint", out / "best.pt", "--split", "test")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "macro-F1" in evaluated.stdout


def test_layers_plot_lists_every_conv_and_linear_layer(small_csv, tmp_path, run):
    out = tmp_path / "scratch"
    assert run(f"{STAGE}/train.py", "--data", small_csv, "--init", "scratch", "--epochs", "1",
               "--out", out).returncode == 0
    result = run(f"{STAGE}/layers.py", out / "best.pt", "--out", tmp_path / "change.png")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("  ")]
    assert [name for name, _ in rows][:2] == ["features.0.0", "features.2.0"]
    assert len(rows) == 9  # seven convolutions and two linear layers
    assert all(float(change) > 0 for _, change in rows)
    assert (tmp_path / "change.png").stat().st_size > 0


def test_a_start_that_is_not_a_04_checkpoint_is_a_one_line_error(small_csv, tmp_path, run):
    _, weights = affectnet_checkpoint(tmp_path / "04.pt")
    checkpoint = load_checkpoint(weights)
    checkpoint["stage"] = "02_deeper"
    save_checkpoint(tmp_path / "02.pt", checkpoint)
    result = run(f"{STAGE}/train.py", "--data", small_csv, "--init", "affectnet",
                 "--init-weights", tmp_path / "02.pt", "--epochs", "1", "--out", tmp_path / "run")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "02.pt" in result.stderr and "04_affectnet" in result.stderr
