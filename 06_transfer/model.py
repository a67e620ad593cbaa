"""Stage 06 model: 04's AffectNet network, or torchvision's ResNet-18, for grey FER2013 faces.

04's classes are copied unchanged, so 04's weights load by name. How trained weights become this
network's start point (colour to grey, 8 classes to 7) is in transfer.py.
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


def build_resnet18(num_classes):
    """torchvision's ResNet-18 for grey faces, random weights (transfer.py loads ImageNet's)."""
    model = resnet18(weights=None)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # grey input
    model.fc = nn.Linear(512, num_classes)  # ImageNet's 1000 classes are of no use here
    return model


def build_model(num_classes, in_channels=1, **kw):
    if kw.get("arch") == "resnet18":  # eval.py rebuilds the network the checkpoint names
        return build_resnet18(num_classes)
    return AffectNetCNN(num_classes=num_classes, in_channels=in_channels)
