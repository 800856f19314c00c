"""Training and evaluation transforms of whole batches of uint8 images.

Crops, flips, random erasing, mixup and cutmix are drawn per image but computed for the whole
batch at once (one ``grid_sample`` or one gather instead of a Python loop over images), which
keeps the data path off the critical path on a 2-core CPU. RandAugment and TrivialAugment draw
an operation per image too, and run one batched call per operation (``autoaugment``, checked
against torchvision.transforms.v2 operation by operation). All draws use torch's global
generator, which the task seeds per batch, so that an epoch replays exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.image_classification.autoaugment import rand_augment, trivial_augment
from tasks.image_classification.config import ImageDataConfig

__all__ = [
    "TrainAugment",
    "eval_transform",
    "mix_batch",
    "normalize",
    "random_erase",
    "shift",
    "soft_cross_entropy",
]


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 ``[B, 3, H, W]`` -> float32 ``(x / 255 - mean) / std``."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - m) / s


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def eval_transform(images: Tensor, cfg: ImageDataConfig) -> Tensor:
    """Evaluation: resize stored ``[B, 3, S, S]`` uint8 to ``image_size`` and normalize."""
    return normalize(_resize(images, cfg.image_size), cfg.mean, cfg.std)


def random_resized_crop(images: Tensor, size: int, scale: tuple[float, float]) -> Tensor:
    """A random crop per image (area fraction in ``scale``, aspect 3/4..4/3) resized to ``size``.

    One affine grid per image and a single ``grid_sample`` for the batch (bilinear).
    """
    b = images.shape[0]
    area = torch.empty(b).uniform_(*scale)
    log_ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3))
    w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # crop width / image width
    h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    cx = (torch.rand(b) * 2 - 1) * (1 - w)  # centre in [-1, 1] coordinates, crop inside
    cy = (torch.rand(b) * 2 - 1) * (1 - h)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = F.affine_grid(theta.to(images.device), [b, 3, size, size], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def shift(images: Tensor, pixels: int) -> Tensor:
    """``[B, C, H, W]`` images moved ``pixels`` down and right (up and left when negative),
    the uncovered border filled by reflection: one of `pad_crop`'s windows, chosen.
    """
    p = abs(pixels)
    padded = F.pad(images, [p] * 4, mode="reflect")  # [B, C, H + 2p, W + 2p]
    start = p - pixels  # the window's top-left corner in the padded image: 0 or 2p
    return padded[..., start : start + images.shape[-2], start : start + images.shape[-1]]


def pad_crop(images: Tensor, padding: int) -> Tensor:
    """Reflection-pads by ``padding`` and crops back a random window per image (CIFAR recipe)."""
    if padding == 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images.float(), [padding] * 4, mode="reflect").to(images.dtype)
    oy = torch.randint(0, 2 * padding + 1, (b, 1))
    ox = torch.randint(0, 2 * padding + 1, (b, 1))
    rows = (oy + torch.arange(h)).to(images.device)  # [B, H]
    cols = (ox + torch.arange(w)).to(images.device)  # [B, W]
    batch = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, 3]
    return out.permute(0, 3, 1, 2).contiguous()


def random_erase(images: Tensor, p: float, scale: tuple[float, float] = (0.02, 1 / 3)) -> Tensor:
    """Zeroes (the mean, after normalization) one random rectangle in a fraction ``p`` of images.

    Rectangles have an area fraction in ``scale`` and aspect 0.3..3.3 (Zhong et al. 2020).
    """
    b, _, h, w = images.shape
    apply = torch.rand(b) < p
    area = torch.empty(b).uniform_(*scale) * h * w
    log_ratio = torch.empty(b).uniform_(math.log(0.3), math.log(1 / 0.3))
    eh = (area * log_ratio.exp()).sqrt().round().clamp(1, h).long()
    ew = (area / log_ratio.exp()).sqrt().round().clamp(1, w).long()
    top = (torch.rand(b) * (h - eh + 1)).long()
    left = (torch.rand(b) * (w - ew + 1)).long()
    ys, xs = torch.arange(h), torch.arange(w)
    in_rows = (ys[None] >= top[:, None]) & (ys[None] < (top + eh)[:, None])  # [B, H]
    in_cols = (xs[None] >= left[:, None]) & (xs[None] < (left + ew)[:, None])  # [B, W]
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]).to(images.device)
    return images.masked_fill(mask[:, None], 0.0)


def mix_batch(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    mix_prob: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Mixup (Zhang et al. 2018) or cutmix (Yun et al. 2019) of a batch with its reverse.

    Each image is paired with the image at the mirrored batch position; one ``lam`` per batch.
    With both alphas set, each batch picks one of the two with equal odds.

    Returns:
        ``(images, targets)``: the mixed images and ``[B, num_classes]`` soft targets.
    """
    targets = F.one_hot(labels, num_classes).float()
    alphas = [(name, a) for name, a in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if a > 0]
    if not alphas or torch.rand(()) >= mix_prob:
        return images, targets
    kind, alpha = alphas[int(torch.randint(len(alphas), ()))]
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = images.flip(0)
    if kind == "mixup":
        mixed = images * lam + partner * (1 - lam)
    else:
        h, w = images.shape[-2:]
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, w)
        mixed = images.clone()
        mixed[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the box was clipped: the true area
    return mixed, targets * lam + targets.flip(0) * (1 - lam)


def soft_cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of ``[B, C]`` logits against class indices ``[B]`` or soft targets ``[B, C]``.

    Label smoothing moves ``label_smoothing`` of each target's mass to the uniform distribution.
    """
    if targets.dim() == 1:
        return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
    num_classes = logits.shape[-1]
    targets = targets * (1 - label_smoothing) + label_smoothing / num_classes
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


class TrainAugment:
    """The training transform of a batch: crop, flip, auto-augment, normalize, erase, mix.

    Args:
        cfg: The data config (``crop``, ``hflip``, ``auto_augment``, ``random_erasing``,
            ``mixup_alpha``, ``cutmix_alpha``, ``mean``, ``std``, ``image_size``...).
        num_classes: Classes of the soft targets.
    """

    def __init__(self, cfg: ImageDataConfig, num_classes: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 ``[B, 3, S, S]`` and labels ``[B]`` -> float ``[B, 3, s, s]`` and targets.

        Targets are ``[B]`` class indices, or ``[B, C]`` soft targets when mixing is on.
        """
        cfg = self.cfg
        if cfg.crop == "resized":
            images = random_resized_crop(images, cfg.image_size, (cfg.crop_scale, 1.0))
        else:
            if cfg.crop == "pad":
                images = pad_crop(images, cfg.padding)
            images = _resize(images, cfg.image_size)
        if cfg.hflip:
            flip = (torch.rand(images.shape[0]) < 0.5).to(images.device)[:, None, None, None]
            images = torch.where(flip, images.flip(-1), images)
        if cfg.auto_augment == "trivialaugment":
            images = trivial_augment(images)
        elif cfg.auto_augment == "randaugment":
            images = rand_augment(images, cfg.randaugment_num_ops, cfg.randaugment_magnitude)
        x = normalize(images, cfg.mean, cfg.std)
        if cfg.random_erasing > 0:
            x = random_erase(x, cfg.random_erasing)
        if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
            return mix_batch(
                x, labels, self.num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob
            )
        return x, labels
