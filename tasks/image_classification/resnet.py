"""The lecture's baseline: torchvision's ResNet-18 adapted to small (e.g. 32x32) images."""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet18

__all__ = ["small_resnet18"]


def small_resnet18(num_classes: int) -> nn.Module:
    """ResNet-18 (He et al. 2016) with a 3x3 stride-1 stem and no max-pool.

    ImageNet's 7x7 stride-2 stem and max-pool shrink a 32x32 image to 8x8 before the first
    block, which throws away most of CIFAR's detail; the small-image variant keeps 32x32 there.

    Args:
        num_classes: Outputs of the final linear layer (``fc``).
    """
    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
