"""TrivialAugment Wide and RandAugment computed for a whole batch, one call per operation.

torchvision's ``TrivialAugmentWide`` and ``RandAugment`` draw an operation and a magnitude per
call, so a batch has to go through them image by image: 0.4 ms of Python per CIFAR image, a
quarter of a 16x16 training step on 2 Xeon cores. Here every image still gets its own
operation and magnitude, drawn from the same spaces with the same probabilities, but each
operation runs once over all the images that drew it, with per-image magnitudes as tensors.

Each operation reproduces torchvision.transforms.v2's tensor kernel for uint8 images (the same
inverse affine matrix, sampling grid and nearest sampling with zero fill; the same blend,
rounding and truncation), which ``tests/test_autoaugment.py`` checks operation by operation.
Equalize and autocontrast, already per image in torchvision, are called as they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

__all__ = ["OPS", "apply_ops", "magnitudes", "rand_augment", "trivial_augment"]

# The operations in torchvision's order; TrivialAugment Wide and RandAugment share them.
OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
# Operations whose magnitude is negated with probability 1/2.
_SIGNED = frozenset(
    {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color"}
    | {"Contrast", "Sharpness"}
)


def magnitudes(wide: bool, num_bins: int, height: int, width: int) -> Tensor:
    """The magnitude of every ``(operation, bin)``: ``[len(OPS), num_bins]`` float64.

    Args:
        wide: TrivialAugment Wide's ranges (shear 0.99, translate 32 px, rotate 135 degrees),
            else RandAugment's (0.3, 150/331 of the side, 30 degrees).
        num_bins: Magnitude bins (torchvision's default is 31).
        height: Image height (RandAugment's vertical translation scales with it).
        width: Image width.

    Operations without a magnitude (identity, autocontrast, equalize) have zeros.
    """
    shear, rotate, color = (0.99, 135.0, 0.99) if wide else (0.3, 30.0, 0.9)
    posterize_range = 6 if wide else 4

    def lin(end: float) -> Tensor:
        # float32 as in torchvision, whose magnitudes reach the ops through float().
        return torch.linspace(0.0, end, num_bins)

    table = {
        "ShearX": lin(shear),
        "ShearY": lin(shear),
        "TranslateX": lin(32.0) if wide else lin(150.0 / 331.0 * width),
        "TranslateY": lin(32.0) if wide else lin(150.0 / 331.0 * height),
        "Rotate": lin(rotate),
        "Brightness": lin(color),
        "Color": lin(color),
        "Contrast": lin(color),
        "Sharpness": lin(color),
        "Posterize": (8 - torch.arange(num_bins) / ((num_bins - 1) / posterize_range)).round(),
        "Solarize": torch.linspace(1.0, 0.0, num_bins),
    }
    zeros = torch.zeros(num_bins)
    return torch.stack([table.get(name, zeros).double() for name in OPS])


def _inverse_affine(
    angle: Tensor,
    translate: tuple[Tensor, Tensor],
    shear: tuple[Tensor, Tensor],
    center: tuple[float, float] = (0.0, 0.0),
) -> Tensor:
    """The inverse affine matrix per image as torchvision builds it, in float64: ``[n, 2, 3]``.

    Angles and shears in degrees; ``center`` is ``(x, y)`` from the image centre (the default
    rotates and translates about the centre; ``(-W / 2, -H / 2)`` shears about the corner).
    """
    cx, cy = center
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear[0]), torch.deg2rad(shear[1])
    tx, ty = translate
    # Rotation-shear matrix [[a, b], [c, d]], determinant 1; its inverse is [[d, -b], [-c, a]].
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


def _warp(images: Tensor, matrices: Tensor) -> Tensor:
    """Nearest-neighbour warp of uint8 ``[n, C, H, W]`` by inverse matrices ``[n, 2, 3]``."""
    n, _, h, w = images.shape
    dev = images.device
    theta = matrices.float()
    # torchvision's grid: output pixel centres in pixels about the image centre, mapped by
    # theta and then normalized by half the side (not affine_grid's align_corners maths).
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=dev)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=dev)
    base = torch.stack(
        [xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=dev)], dim=-1
    )  # [H, W, 3]
    scaled = theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], device=dev)  # [n, 3, 2]
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(scaled).view(n, h, w, 2)
    out = F.grid_sample(
        images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out.round_().to(torch.uint8)


def _blend(images: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """``images * ratio + other * (1 - ratio)``, clamped and truncated to uint8 as torchvision."""
    r = ratio.view(-1, 1, 1, 1)
    out = images.float().mul_(r.float())
    # One fused multiply-add in place, as torchvision's add_(alpha=...): bit-identical results.
    out.addcmul_(other, (1.0 - r).float())
    return out.clamp_(0, 255).to(torch.uint8)


def _shear(images: Tensor, m: Tensor, axis: int) -> Tensor:
    zero = torch.zeros_like(m)
    degrees = torch.rad2deg(torch.atan(m))
    shear = (degrees, zero) if axis == 0 else (zero, degrees)
    corner = (-images.shape[-1] / 2, -images.shape[-2] / 2)  # torchvision's center=[0, 0]
    return _warp(images, _inverse_affine(zero, (zero, zero), shear, corner))


def _translate_x(images: Tensor, m: Tensor) -> Tensor:
    zero = torch.zeros_like(m)
    return _warp(images, _inverse_affine(zero, (m.trunc(), zero), (zero, zero)))


def _translate_y(images: Tensor, m: Tensor) -> Tensor:
    zero = torch.zeros_like(m)
    return _warp(images, _inverse_affine(zero, (zero, m.trunc()), (zero, zero)))


def _rotate(images: Tensor, m: Tensor) -> Tensor:
    zero = torch.zeros_like(m)
    # F.rotate turns counter-clockwise: the negated angle of F.affine's convention.
    return _warp(images, _inverse_affine(-torch.remainder(m, 360.0), (zero, zero), (zero, zero)))


def _brightness(images: Tensor, m: Tensor) -> Tensor:
    # torchvision scales without a blend (a blend with black would add zeros).
    out = images.float().mul_((1.0 + m).float().view(-1, 1, 1, 1))
    return out.clamp_(0, 255).to(torch.uint8)


def _color(images: Tensor, m: Tensor) -> Tensor:
    return _blend(images, TF.rgb_to_grayscale(images), 1.0 + m)  # uint8 gray: floored


def _contrast(images: Tensor, m: Tensor) -> Tensor:
    mean = TF.rgb_to_grayscale(images).float().mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean.expand_as(images), 1.0 + m)


def _sharpness(images: Tensor, m: Tensor) -> Tensor:
    c, h, w = images.shape[1:]
    if h <= 2 or w <= 2:
        return images  # no inner pixels to sharpen: torchvision returns such images as they are
    kernel = torch.full((3, 3), 1.0 / 13.0, device=images.device)
    kernel[1, 1] = 5.0 / 13.0
    out = images.float()
    blurred = F.conv2d(out, kernel.expand(c, 1, 3, 3), groups=c).round_()  # [n, C, H-2, W-2]
    inner = out[..., 1:-1, 1:-1]  # the border keeps its pixels, as in PIL and torchvision
    alpha = (1.0 - (1.0 + m)).float().view(-1, 1, 1, 1)
    inner.addcmul_(blurred.sub_(inner), alpha)
    return out.clamp_(0, 255).to(torch.uint8)


def _posterize(images: Tensor, m: Tensor) -> Tensor:
    bits = m.long().view(-1, 1, 1, 1)
    mask = ((255 << (8 - bits)) & 255).to(torch.uint8)  # keeps the top `bits` bits
    return images & mask


def _solarize(images: Tensor, m: Tensor) -> Tensor:
    # torchvision compares uint8 with a Python float, which promotes both to float32.
    threshold = (255.0 * m).float().view(-1, 1, 1, 1)
    return torch.where(images.float() >= threshold, 255 - images, images)


_FUNCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Identity": lambda images, m: images,
    "ShearX": lambda images, m: _shear(images, m, 0),
    "ShearY": lambda images, m: _shear(images, m, 1),
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Rotate": _rotate,
    "Brightness": _brightness,
    "Color": _color,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": lambda images, m: TF.autocontrast(images),
    "Equalize": lambda images, m: TF.equalize(images),
}


def apply_ops(images: Tensor, ops: Tensor, mags: Tensor) -> Tensor:
    """Applies operation ``OPS[ops[i]]`` with magnitude ``mags[i]`` to image ``i``.

    Args:
        images: uint8 ``[B, 3, H, W]``.
        ops: ``[B]`` indices into ``OPS``.
        mags: ``[B]`` float64 magnitudes, signed where the operation is.

    Returns:
        uint8 ``[B, 3, H, W]``: one batched call per operation present, not one per image.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"expected uint8 [B, C, H, W] images, got {images.dtype} {list(images.shape)}"
        )
    out = torch.empty_like(images)  # every image draws one operation, identity included
    for k in ops.unique().tolist():
        idx = (ops == k).nonzero().squeeze(1)
        out[idx] = _FUNCTIONS[OPS[k]](images[idx], mags[idx].to(images.device, torch.float64))
    return out


def _draw(images: Tensor, table: Tensor, bins: Tensor) -> tuple[Tensor, Tensor]:
    """Uniform operations, the given bins, and a fair sign for the signed operations."""
    n = images.shape[0]
    ops = torch.randint(len(OPS), (n,))
    signed = torch.tensor([name in _SIGNED for name in OPS])[ops]
    flip = signed & (torch.rand(n) <= 0.5)  # torchvision's draw: rand() <= 0.5 negates
    mags = table[ops, bins]
    return ops, torch.where(flip, -mags, mags)


def trivial_augment(images: Tensor, num_bins: int = 31) -> Tensor:
    """TrivialAugment Wide: one uniform operation at a uniform magnitude bin per image.

    Args:
        images: uint8 ``[B, 3, H, W]``.
        num_bins: Magnitude bins, as torchvision's ``num_magnitude_bins``.

    Returns:
        uint8 ``[B, 3, H, W]``; draws from torch's global generator.
    """
    table = magnitudes(True, num_bins, images.shape[-2], images.shape[-1])
    bins = torch.randint(num_bins, (images.shape[0],))
    return apply_ops(images, *_draw(images, table, bins))


def rand_augment(
    images: Tensor, num_ops: int = 2, magnitude: int = 9, num_bins: int = 31
) -> Tensor:
    """RandAugment: ``num_ops`` uniform operations in turn per image, all at bin ``magnitude``.

    Args:
        images: uint8 ``[B, 3, H, W]``.
        num_ops: Operations applied to each image, one after another.
        magnitude: The magnitude bin of every operation, ``0 <= magnitude < num_bins``.
        num_bins: Magnitude bins, as torchvision's ``num_magnitude_bins``.

    Returns:
        uint8 ``[B, 3, H, W]``; draws from torch's global generator.
    """
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"magnitude must be in 0..{num_bins - 1}, got {magnitude}")
    table = magnitudes(False, num_bins, images.shape[-2], images.shape[-1])
    bins = torch.full((images.shape[0],), magnitude)
    for _ in range(num_ops):
        images = apply_ops(images, *_draw(images, table, bins))
    return images
