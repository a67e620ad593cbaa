"""Stage 01 model: the baseline CNN of the source notebooks (version 1).

Two 5x5 convolutions, each followed by ReLU and 2x2 max-pooling, learn local detectors
(edges, then parts such as an eyebrow or a mouth corner); two fully connected layers with
dropout turn them into one score per class. No BatchNorm, and train.py adds only the lightest
augmentation (flip, brightness/contrast): this is the reference every later stage is measured
against.

Shapes for a 48x48 grayscale face, batch B:
    input                     (B, 1, 48, 48)
    conv 5x5 pad 2, ReLU      (B, 32, 48, 48)
    max-pool 2                (B, 32, 24, 24)
    conv 5x5 pad 2, ReLU      (B, 64, 24, 24)
    max-pool 2                (B, 64, 12, 12)
    flatten, dropout 0.3      (B, 9216)
    linear, ReLU, dropout 0.3 (B, 128)
    linear                    (B, 7)   logits, one per emotion
"""
import torch
from torch import nn


class BaselineCNN(nn.Module):
    def __init__(self, num_classes=7, in_channels=1, image_size=48, dropout=0.3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),  # padding 2 keeps the 48x48 size
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 64 * (image_size // 4) ** 2  # two poolings halve each side twice: 48 -> 12
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),  # most parameters sit in the next layer: that is where it overfits
            nn.Linear(flat, 128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        x = self.features(x)  # (B, 64, 12, 12)
        return self.classifier(x)  # (B, num_classes)


def build_model(num_classes, in_channels=1, **kw):
    return BaselineCNN(num_classes=num_classes, in_channels=in_channels, **kw)


if __name__ == "__main__":
    model = build_model(num_classes=7)
    logits = model(torch.zeros(2, 1, 48, 48))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params:,} parameters, output {tuple(logits.shape)}")
