"""Stage 04 model: a deeper CNN for 96x96 colour faces and 8 AffectNet classes.

The seven convolutions of the AffectNet write-up's diagram (widths 32-64-64-128-256-256-512,
BatchNorm after every convolution; its table counts eight), finished like the 3-block net of the
first AffectNet write-up: global average pooling and a small head. Global average pooling makes
the head independent of the input size (one number per feature map), so the same model takes
96x96 AffectNet or 48x48 FER2013 faces. To stay trainable on 2 CPU cores, the resolution halves
early: most convolutions run at 24x24 or smaller.

Shapes for a 96x96 RGB face, batch B (a 48x48 face gives half of every side):
    input                            (B, 3, 96, 96)
    conv 32, pool                    (B, 32, 48, 48)
    conv 64, pool                    (B, 64, 24, 24)
    conv 64, conv 128, pool          (B, 128, 12, 12)
    conv 256, pool                   (B, 256, 6, 6)
    conv 256, conv 512               (B, 512, 6, 6)
    global average pool              (B, 512)
    linear, ReLU, dropout 0.5        (B, 128)
    linear                           (B, 8)   logits, one per emotion
"""
import torch
from torch import nn


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


def build_model(num_classes, in_channels=1, **kw):
    return AffectNetCNN(num_classes=num_classes, in_channels=in_channels, **kw)


if __name__ == "__main__":
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(num_classes=8, in_channels=3).eval()
    with FlopCounterMode(display=False) as counter:  # counts 2 FLOPs per multiply-add
        logits = model(torch.zeros(1, 3, 96, 96))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params:,} parameters, output {tuple(logits.shape)}, "
          f"{counter.get_total_flops() / 2e6:.0f}M multiply-adds per 96x96 image")
