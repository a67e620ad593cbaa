"""Stage 07 model: 03_attention's CBAM attention CNN, unchanged. This stage changes how the
network is trained (faster, on more processes), not what it is, so results compare one to one.

Three stages of [conv, conv, max-pool, CBAM] widen 32 -> 64 -> 128 channels. CBAM, the
Convolutional Block Attention Module (Woo et al., 2018), re-weights a stage's features twice:
channel attention decides *what* matters (which feature maps: "mouth corner up", "brow
lowered"), then spatial attention decides *where* (a 0-1 weight for every position, so
background and hair can be turned down). Both are sigmoid gates learned from the features
themselves, so they cost few parameters; the spatial map is what `eval.py --attention` draws.

Shapes for a 48x48 grayscale face, batch B:
    input                                          (B, 1, 48, 48)
    stage 1: 2x (conv 3x3, BN, ReLU), pool, CBAM   (B, 32, 24, 24)   spatial map (B, 1, 24, 24)
    stage 2: 2x (conv 3x3, BN, ReLU), pool, CBAM   (B, 64, 12, 12)   spatial map (B, 1, 12, 12)
    stage 3: 2x (conv 3x3, BN, ReLU), pool, CBAM   (B, 128, 6, 6)    spatial map (B, 1, 6, 6)
    global average pool, flatten                   (B, 128)
    linear, BN, ReLU, dropout 0.5                  (B, 256)
    linear                                         (B, 7)   logits, one per emotion
"""
import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels, out_channels):
    # bias=False: the BatchNorm right after subtracts the mean, which would cancel any bias
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ChannelAttention(nn.Module):
    """A weight in [0, 1] per channel, from one small MLP applied to the average- and the
    max-pooled feature maps (the average sees how much of a feature there is, the max whether
    it fires strongly anywhere)."""

    def __init__(self, channels, reduction=8):
        super().__init__()
        hidden = max(channels // reduction, 4)  # the paper's 16: 2 hidden units for 32 channels
        self.mlp = nn.Sequential(  # 1x1 convolutions = a linear layer applied to (B, C, 1, 1)
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x):
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))  # (B, C, 1, 1)
        peak = self.mlp(F.adaptive_max_pool2d(x, 1))  # (B, C, 1, 1)
        return torch.sigmoid(avg + peak)  # (B, C, 1, 1)


class SpatialAttention(nn.Module):
    """A weight in [0, 1] per position, from a convolution over the channel-wise average and max.

    7x7 as in the CBAM paper, whose ablation found 7x7 better than 3x3: a position's weight
    should depend on its neighbourhood (is this dark patch an eye, given what is around it?).
    The attention notebook describes 1x1, which sees one position only; see the exercises.
    """

    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x):
        average = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        peak = x.amax(dim=1, keepdim=True)  # (B, 1, H, W)
        pooled = torch.cat([average, peak], dim=1)  # (B, 2, H, W)
        return torch.sigmoid(self.conv(pooled))  # (B, 1, H, W)


class CBAM(nn.Module):
    """Channel attention, then spatial attention; keeps the last spatial map for plotting."""

    def __init__(self, channels, reduction=8, kernel_size=7):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)
        self.last_map = None

    def forward(self, x):
        x = x * self.channel(x)  # (B, C, H, W) * (B, C, 1, 1)
        spatial = self.spatial(x)  # (B, 1, H, W)
        self.last_map = spatial.detach()
        return x * spatial


class AttentionCNN(nn.Module):
    def __init__(
        self,
        num_classes=7,
        in_channels=1,
        widths=(32, 64, 128),
        dropout=0.5,
        kernel_size=7,
    ):
        super().__init__()
        stages = []
        channels = in_channels
        for width in widths:
            stages.append(nn.Sequential(
                conv_bn_relu(channels, width),
                conv_bn_relu(width, width),
                nn.MaxPool2d(2),
                CBAM(width, kernel_size=kernel_size),
            ))
            channels = width
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)  # any input size -> one number per channel
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, 256, bias=False),
            nn.BatchNorm1d(256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):
        x = self.features(x)  # (B, 128, 6, 6)
        x = self.pool(x)  # (B, 128, 1, 1)
        return self.classifier(x)  # (B, num_classes)

    @torch.no_grad()
    def attention_maps(self, x):
        """Where the network looks: every CBAM's spatial map for images x (B, C, H, W), upsampled
        to H x W and averaged, (B, 1, H, W) in [0, 1]. Early maps are sharp, the last one
        (6x6) is the one the classifier reads; the average shows both. Call in eval mode."""
        self(x)
        size = x.shape[-2:]  # the input's H x W
        maps = []
        for cbam in [m for m in self.modules() if isinstance(m, CBAM)]:
            maps.append(F.interpolate(cbam.last_map, size, mode="bilinear", align_corners=False))
        return torch.stack(maps).mean(dim=0)


def build_model(num_classes, in_channels=1, **kw):
    return AttentionCNN(num_classes=num_classes, in_channels=in_channels, **kw)


if __name__ == "__main__":
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(num_classes=7).eval()
    with FlopCounterMode(display=False) as counter:  # counts 2 FLOPs per multiply-add
        logits = model(torch.zeros(1, 1, 48, 48))
    n_params = sum(p.numel() for p in model.parameters())
    attention = model.attention_maps(torch.zeros(1, 1, 48, 48))
    print(f"{n_params:,} parameters, output {tuple(logits.shape)}, "
          f"{counter.get_total_flops() / 2e6:.0f}M multiply-adds per 48x48 image, "
          f"attention map {tuple(attention.shape)}")
