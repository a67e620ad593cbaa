"""Stage 06 model: 04's AffectNet network and weights for grey FER2013 faces, or a ResNet-18.

04's classes are copied unchanged, so 04's weights load by name. A grey face is an RGB face with
R = G = B, so grey_first_layer sums each first-layer kernel over its colours (scaled for FER2013's
normalisation), and each FER2013 output starts as the AffectNet output of the same emotion.
"""
import torch
from torch import nn
from torchvision.models import resnet18


def conv_bn_relu(in_channels, out_channels):
    # bias=False: the BatchNorm right after subtracts the mean, which would cancel any bias
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ToGray(nn.Module):
    """RGB -> one luma channel (ITU-R 601 weights), inside the model: --grayscale runs get the same
    RGB tensors as colour runs, so eval.py and the deploy tools need no special case."""

    def __init__(self):
        super().__init__()
        self.register_buffer("weights", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))

    def forward(self, x):
        return (x * self.weights).sum(dim=1, keepdim=True)  # (B, 1, H, W)


class AffectNetCNN(nn.Module):
    def __init__(self, num_classes=8, in_channels=3, grayscale=False, dropout=0.5):
        super().__init__()
        gray = grayscale and in_channels == 3
        self.to_gray = ToGray() if gray else nn.Identity()
        self.features = nn.Sequential(
            conv_bn_relu(1 if gray else in_channels, 32),
            nn.MaxPool2d(2),
            conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            conv_bn_relu(64, 64),
            conv_bn_relu(64, 128),
            nn.MaxPool2d(2),
            conv_bn_relu(128, 256),
            nn.MaxPool2d(2),
            conv_bn_relu(256, 256),
            conv_bn_relu(256, 512),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)  # any input size -> one number per channel
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        x = self.to_gray(x)  # (B, 3, 96, 96), or (B, 1, 96, 96) with grayscale
        x = self.features(x)  # (B, 512, 6, 6)
        x = self.pool(x)  # (B, 512, 1, 1)
        return self.classifier(x)  # (B, num_classes)


IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # its normalisation
TO_AFFECTNET = {  # a FER2013 or FER+ class -> the AffectNet class whose output it starts as
    "angry": "anger", "anger": "anger", "contempt": "contempt", "disgust": "disgust",
    "fear": "fear", "happy": "happy", "happiness": "happy", "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "neutral": "neutral",
}


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
    model = AffectNetCNN(num_classes=len(class_names), in_channels=1)
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


def build_resnet18(num_classes, preprocessing=None, weights_file=None):
    """ResNet-18 for grey faces; ImageNet weights from `weights_file` when given."""
    model = resnet18(weights=None)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # grey input
    model.fc = nn.Linear(512, num_classes)  # ImageNet's 1000 classes are of no use here
    if weights_file is not None:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        grey_first_layer(state, "conv1.weight", "bn1", IMAGENET, preprocessing)
        state["fc.weight"] = model.fc.weight.detach()  # the new head keeps its random start
        state["fc.bias"] = model.fc.bias.detach()
        model.load_state_dict(state)
    return model


def build_model(num_classes, in_channels=1, **kw):
    if kw.get("arch") == "resnet18":  # eval.py rebuilds the network the checkpoint names
        return build_resnet18(num_classes)
    return AffectNetCNN(num_classes=num_classes, in_channels=in_channels)
