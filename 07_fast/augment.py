"""Augmentation of a whole batch at once, on the device that trains: 02_deeper's family of random
flips, affine moves, lighting changes and erased patches, written in plain torch.

torchvision's transforms change one image at a time, in DataLoader worker processes on the CPU:
fast enough to feed a model that trains on the CPU, too slow to feed one on a GPU, which trains
many times faster (benchmark.py measures both sides). Here every step is one tensor operation
over the batch (B, C, H, W), so it runs wherever the batch is, on the GPU with the model, and each
image still draws its own random parameters:

    flip      mirrored left-right with probability `flip`
    affine    rotated by up to +-`degrees`, shifted by up to `translate` of the side, scaled by
              1 +- `scale`, sheared by up to +-`shear` degrees: one matrix per image, applied with
              affine_grid/grid_sample (bilinear, black outside the picture, as torchvision fills)
    light     brightness times 1 +- `brightness`, then contrast around the image's mean gray
              times 1 +- `contrast`, clipped to [0, 1] (torchvision's ColorJitter formulas;
              ColorJitter also shuffles the two per image, here brightness always comes first)
    normalise the dataset's mean and std, exactly as the evaluation transform
    erase     with probability `erase`, a rectangle of 2-33% of the image (aspect 0.3-3.3) set to 0,
              the mean after normalisation (torchvision's RandomErasing, which redraws a rectangle
              that does not fit; here its sides are cut to the image)

Every strength set to 0 gives the evaluation transform (tests check it), so `BatchAugment` with
zeros is a fast, batched eval_transform.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

# 03_attention's default set
LIGHT = {"flip": 0.5, "degrees": 15, "brightness": 0.2, "contrast": 0.2}
# 02_deeper's version 3
V3 = {"flip": 0.5, "degrees": 15, "translate": 0.1, "scale": 0.1, "shear": 10,
      "brightness": 0.2, "contrast": 0.2, "erase": 0.1}


def uniform(low, high, n, device):
    """n independent draws from U(low, high): one parameter per image."""
    return low + (high - low) * torch.rand(n, device=device)


class BatchAugment(nn.Module):
    """uint8 images (B, C, H, W) -> augmented, normalised float32 (B, C, size, size),
    on their device.

    The random numbers come from torch's default generator of that device, which the run seeds
    and checkpoints, so a resumed run draws what the uninterrupted run would have drawn.
    """

    def __init__(self, preprocessing, flip=0.0, degrees=0.0, translate=0.0, scale=0.0, shear=0.0,
                 brightness=0.0, contrast=0.0, erase=0.0):
        super().__init__()
        self.size = preprocessing["size"]
        self.flip, self.degrees, self.translate = flip, degrees, translate
        self.scale, self.shear = scale, shear
        self.brightness, self.contrast, self.erase = brightness, contrast, erase
        channels = len(preprocessing["mean"])
        # buffers follow the module to the device (augment.to(device))
        self.register_buffer("mean", torch.tensor(preprocessing["mean"]).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing["std"]).view(1, channels, 1, 1))

    def sample(self, n, device):
        """One value of every random parameter per image: a dict of (n,) tensors."""
        degrees, shear = math.radians(self.degrees), math.radians(self.shear)
        return {
            "flip": torch.rand(n, device=device) < self.flip,
            "angle": uniform(-degrees, degrees, n, device),
            "shift_x": uniform(-self.translate, self.translate, n, device),
            "shift_y": uniform(-self.translate, self.translate, n, device),
            "zoom": uniform(1 - self.scale, 1 + self.scale, n, device),
            "shear": uniform(-shear, shear, n, device),
            "brightness": uniform(1 - self.brightness, 1 + self.brightness, n, device),
            "contrast": uniform(1 - self.contrast, 1 + self.contrast, n, device),
            "erase": torch.rand(n, device=device) < self.erase,
            "erase_area": uniform(0.02, 0.33, n, device),
            "erase_log_ratio": uniform(math.log(0.3), math.log(3.3), n, device),
            # where the rectangle goes, as a fraction of the free room
            "erase_y": torch.rand(n, device=device),
            "erase_x": torch.rand(n, device=device),
        }

    def forward(self, images, params=None):
        params = self.sample(len(images), images.device) if params is None else params
        x = images.float() / 255  # (B, C, H, W) in [0, 1]
        if x.shape[-1] != self.size or x.shape[-2] != self.size:  # as eval_transform's Resize
            x = F.interpolate(
                x,
                size=(self.size, self.size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        if self.flip or self.degrees or self.translate or self.scale or self.shear:
            x = self.move(x, params)
        x = self.relight(x, params)
        x = (x - self.mean) / self.std  # (B, C, size, size), as at test time
        if self.erase:
            x = self.erase_patches(x, params)
        return x

    def move(self, x, p):
        """Flip, rotate, scale, shear and shift, one 2x3 matrix per image, in one grid_sample."""
        cos, sin = p["angle"].cos(), p["angle"].sin()
        mirror = 1 - 2 * p["flip"].float()  # -1 flips the x axis
        # forward map, output = A @ input + t, in coordinates from -1 to 1 across the image:
        # A = rotation @ shear along x @ (zoom and mirror)
        # counter-clockwise: y points down
        rotation = torch.stack([cos, sin, -sin, cos], dim=1).view(-1, 2, 2)
        shear = torch.zeros_like(rotation)
        # x shifts with y, as torchvision
        shear[:, 0, 0], shear[:, 0, 1], shear[:, 1, 1] = 1, -p["shear"].tan(), 1
        zoom = torch.diag_embed(torch.stack([p["zoom"] * mirror, p["zoom"]], dim=1))
        forward_map = rotation @ shear @ zoom  # (B, 2, 2)
        # a fraction of the side; the side is 2 long
        shift = 2 * torch.stack([p["shift_x"], p["shift_y"]], dim=1)
        # grid_sample asks the opposite question: for each output pixel, where in the input to read
        inverse = torch.linalg.inv(forward_map)  # (B, 2, 2)
        theta = torch.cat([inverse, -(inverse @ shift.unsqueeze(2))], dim=2)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def relight(self, x, p):
        """Brightness, then contrast around each image's mean gray, clipped as torchvision does."""
        if self.brightness:
            x = (x * p["brightness"].view(-1, 1, 1, 1)).clamp(0, 1)
        if self.contrast:
            gray = (
                x
                if x.shape[1] == 1
                else (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
            )
            mean = gray.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
            factor = p["contrast"].view(-1, 1, 1, 1)
            x = (factor * x + (1 - factor) * mean).clamp(0, 1)
        return x

    def erase_patches(self, x, p):
        """Set a random rectangle to 0 in the images whose `erase` coin came up."""
        _, _, height, width = x.shape
        area = p["erase_area"] * height * width
        ratio = p["erase_log_ratio"].exp()
        h = (area * ratio).sqrt().round().clamp(1, height)  # (B,) rectangle sizes in pixels
        w = (area / ratio).sqrt().round().clamp(1, width)
        top = (p["erase_y"] * (height - h + 1)).floor()  # (B,) top-left corners that keep it inside
        left = (p["erase_x"] * (width - w + 1)).floor()
        rows = torch.arange(height, device=x.device).view(1, height)
        cols = torch.arange(width, device=x.device).view(1, width)
        in_rows = (
            (rows >= top.view(-1, 1))
            & (rows < (top + h).view(-1, 1))
            & p["erase"].view(-1, 1)
        )  # (B, H)
        in_cols = (cols >= left.view(-1, 1)) & (cols < (left + w).view(-1, 1))  # (B, W)
        mask = in_rows.view(-1, 1, height, 1) & in_cols.view(-1, 1, 1, width)  # (B, 1, H, W)
        return x.masked_fill(mask, 0.0)


def build_augment(preprocessing, augment="light"):
    """The batched counterpart of 03_attention's `--augment light` and `--augment v3`."""
    return BatchAugment(preprocessing, **(LIGHT if augment == "light" else V3))
