"""Stage 06's lesson: weights trained elsewhere become the start point of a FER2013 network.

A grey face is an RGB face with R = G = B, so grey_first_layer sums each first-layer kernel over its
colours (scaled for the new normalisation). Each FER2013 output starts as the AffectNet output of
the same emotion (TO_AFFECTNET); AffectNet's contempt is dropped. start_model picks one of three
start points (--init): 04's AffectNet weights, random weights, or torchvision's ImageNet ResNet-18.
"""
from pathlib import Path

import torch

from common.checkpoint import load_checkpoint
from common.runtime import UserError, import_sibling

AFFECTNET_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "04_affectnet-affectnet.pt"
IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # its normalisation
TO_AFFECTNET = {  # a FER2013 or FER+ class -> the AffectNet class whose output it starts as
    "angry": "anger", "anger": "anger", "contempt": "contempt", "disgust": "disgust",
    "fear": "fear", "happy": "happy", "happiness": "happy", "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "neutral": "neutral",
}
model_lib = import_sibling(__file__, "model")  # this stage's networks


def cached_download(url, flag):
    """The file at `url` in torch's cache (~/.cache/torch/hub/checkpoints/), downloaded once.
    Without a network: a one-line error saying where to put the file by hand, or which `flag`
    names a file instead."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target))
    except OSError as e:  # no network, a proxy, a firewall: URLError is an OSError
        raise UserError(f"could not download {url} ({e}); download it where you have internet "
                        f"and place it at {target}, or pass {flag} FILE") from None
    return target


def grey_first_layer(state, conv, bn, source, target):
    """In `state`: an RGB first convolution (no bias) and its BatchNorm, made for grey input."""
    weight = state[conv]  # (out, 3, k, k)
    rgb_mean = torch.tensor(source["mean"]).view(1, 3, 1, 1)
    rgb_std = torch.tensor(source["std"]).view(1, 3, 1, 1)
    # grey x = (g - m) / s, and colour c sees (g - m_c) / s_c = x * s / s_c + (m - m_c) / s_c
    scaled = weight * target["std"][0] / rgb_std
    state[conv] = scaled.sum(dim=1, keepdim=True)  # (out, 1, k, k)
    shift = (target["mean"][0] - rgb_mean) / rgb_std  # what each colour channel adds everywhere
    constant = (weight * shift).sum(dim=(1, 2, 3))  # (out,) the response to that constant
    state[bn + ".running_mean"] = state[bn + ".running_mean"] - constant  # BatchNorm removes it


def from_affectnet(checkpoint, class_names, preprocessing):
    """04's network with a 04 checkpoint's weights, for grey faces and `class_names`."""
    model = model_lib.AffectNetCNN(num_classes=len(class_names), in_channels=1)
    state = dict(checkpoint["model"])
    state.pop("to_gray.weights", None)  # a --grayscale run's RGB mix: grey input needs none
    if state["features.0.0.weight"].shape[1] == 3:
        source = checkpoint["preprocessing"]
        grey_first_layer(state, "features.0.0.weight", "features.0.1", source, preprocessing)
    rows = [checkpoint["class_names"].index(TO_AFFECTNET[name]) for name in class_names]
    state["classifier.4.weight"] = state["classifier.4.weight"][rows]  # each emotion's own row
    state["classifier.4.bias"] = state["classifier.4.bias"][rows]
    model.load_state_dict(state)
    return model


def imagenet_resnet18(num_classes, preprocessing, weights_file):
    """06's ResNet-18 with torchvision's ImageNet weights from `weights_file`, for grey faces."""
    model = model_lib.build_resnet18(num_classes)
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    grey_first_layer(state, "conv1.weight", "bn1", IMAGENET, preprocessing)
    state["fc.weight"] = model.fc.weight.detach()  # the new head keeps its random start
    state["fc.bias"] = model.fc.bias.detach()
    model.load_state_dict(state)
    return model


def start_model(args, class_names, preprocessing):
    """The network and the weights it starts from. Only this differs between the runs compared."""
    if args.init == "scratch":
        return model_lib.build_model(len(class_names), 1), {"arch": "affectnet-cnn"}
    if args.init == "imagenet":
        weights = args.init_weights or cached_download(IMAGENET_URL, "--init-weights")
        model = imagenet_resnet18(len(class_names), preprocessing, weights)
        return model, {"arch": "resnet18"}
    weights = args.init_weights or AFFECTNET_WEIGHTS
    source = load_checkpoint(weights)
    if source.get("stage") != "04_affectnet":
        raise UserError(f"{weights}: was trained by {source.get('stage', 'no stage')}, not "
                        f"04_affectnet; pass a 04_affectnet best.pt or weights file")
    model = from_affectnet(source, class_names, preprocessing)
    return model, {"arch": "affectnet-cnn"}
