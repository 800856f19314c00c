"""A fast small-image ConvNet: the teacher for distillation, and a second baseline.

The layout of the fastest CIFAR-10 trainers (Page's 2018 DAWNBench ResNet-9 and Jordan's 2024
airbench): few layers, most of the width at 16x16 and below, each stage halving the resolution
with a max-pool after its first convolution. It learns CIFAR-10 in a few epochs, which is what
a DeiT-style teacher has to do inside the student's time budget.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn

__all__ = ["ConvNet"]


class ConvGroup(nn.Module):
    """conv 3x3 -> max-pool 2x2 -> BN -> GELU -> conv 3x3 -> BN -> GELU (halves H and W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C_in, H, W]`` -> ``[B, C_out, H / 2, W / 2]``."""
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class ConvNet(nn.Module):
    """A 3x3 stem convolution, three `ConvGroup` stages, a global max-pool and a linear head.

    On 32x32 images the stages work at 32 -> 16, 16 -> 8 and 8 -> 4; about 0.3 GFLOPs per image
    forward with the default widths (ResNet-18 for small images: 0.56).

    Args:
        num_classes: Outputs of the head.
        widths: Channels of the stem and of each of the three stages.
        in_chans: Image channels.
    """

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, int, int, int] = (32, 64, 256, 256),
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.GELU(),
        )
        self.stages = nn.Sequential(*(ConvGroup(a, b) for a, b in pairwise(widths)))
        self.head = nn.Linear(widths[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # oneDNN runs convolutions fastest on NHWC tensors (see `small_resnet18`); checkpoints
        # are saved contiguous, so the state dict does not depend on it.
        self.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> Tensor:
        """``images [B, C, H, W]`` -> logits ``[B, num_classes]``."""
        x = self.stages(self.stem(images.contiguous(memory_format=torch.channels_last)))
        return self.head(torch.amax(x, dim=(2, 3)))  # global max-pool: [B, C]
