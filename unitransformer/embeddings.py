"""Turning inputs into token rows: words (token embeddings), patches, and positions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LearnedPositions",
    "PatchEmbedding",
    "SinusoidalPositions",
    "TokenEmbedding",
    "sinusoids",
]


class TokenEmbedding(nn.Module):
    """A lookup table of token vectors, optionally scaled by ``sqrt(dim)`` (the paper, Marian)."""

    def __init__(
        self, vocab_size: int, dim: int, padding_idx: int | None = None, scale: bool = False
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, dim))
        self.padding_idx = padding_idx
        self.scale = math.sqrt(dim) if scale else 1.0
        nn.init.normal_(self.weight, std=dim**-0.5)
        if padding_idx is not None:
            with torch.no_grad():
                self.weight[padding_idx].zero_()

    def forward(self, ids: Tensor) -> Tensor:
        """``ids [B, T]`` -> ``[B, T, dim]``."""
        x = nn.functional.embedding(ids, self.weight, self.padding_idx)
        return x * self.scale if self.scale != 1.0 else x


def sinusoids(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal position vectors, ``[sin | cos]`` halves (tensor2tensor, fairseq, Marian).

    Column ``i`` of each half uses the frequency ``1 / 10000^(2i / dim)``; computed in float64
    so that long positions stay exact to float32 precision.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0)
        * torch.arange(half, dtype=torch.float64, device=positions.device)
        * 2
        / dim
    )
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]  # [T, dim / 2]
    out = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if dim % 2:
        out = torch.cat([out, out.new_zeros(out.shape[0], 1)], dim=-1)
    return out.float()


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal positions, cached (not saved in checkpoints) and grown on demand."""

    def __init__(self, dim: int, max_len: int = 1024) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("table", sinusoids(torch.arange(max_len), dim), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Positions ``offset .. offset + length - 1`` as ``[length, dim]``."""
        end = offset + length
        if end > self.table.shape[0]:
            self.table = sinusoids(torch.arange(2 * end, device=self.table.device), self.dim)
        return self.table[offset:end]


class LearnedPositions(nn.Module):
    """A learned vector per position (BERT, the ViT), at most ``max_len`` positions."""

    def __init__(self, dim: int, max_len: int = 1024) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Positions ``offset .. offset + length - 1`` as ``[length, dim]``."""
        if offset + length > self.weight.shape[0]:
            raise ValueError(
                f"position {offset + length - 1} is beyond the {self.weight.shape[0]} learned positions"
            )
        return self.weight[offset : offset + length]


class PatchEmbedding(nn.Module):
    """Cuts an image into ``patch_size`` squares and projects each one to a token.

    A strided convolution is exactly "flatten each patch and apply one linear layer".

    Args:
        dim: Token width.
        patch_size: Side of a square patch (16 in "An image is worth 16x16 words").
        in_chans: Image channels.
    """

    def __init__(self, dim: int, patch_size: int = 16, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        """``images [B, C, H, W]`` -> tokens ``[B, (H / p) * (W / p), dim]``, row-major."""
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}"
            )
        x = self.proj(images)  # [B, dim, H / p, W / p]
        return x.flatten(2).transpose(1, 2)  # [B, N, dim]


class ResidualConvBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm around an identity shortcut (ResNet's basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        # Zero-initialized last BatchNorm scale: each block starts as the identity (Goyal et al.).
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` -> ``[B, C, H, W]``."""
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(x + self.bn2(self.conv2(y)), inplace=True)


def _conv_bn_relu(
    in_channels: int, out_channels: int, stride: int, pool: bool = False
) -> list[nn.Module]:
    """A 3x3 convolution (no bias: BatchNorm follows), BatchNorm and ReLU, as layers.

    With ``pool`` a stride-2 step is a stride-1 convolution and a 2x2 max-pool before the
    BatchNorm (the downsampling of Page's and Jordan's fast CIFAR-10 ConvNets): four times the
    convolution's work of a strided one, every output pixel of it seen by the pool.
    """
    if pool and stride == 2:
        conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        return [conv, nn.MaxPool2d(2), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class ConvStem(nn.Module):
    """A convolutional stem that produces the patch tokens (the ViT paper's hybrid).

    ``log2(patch_size)`` stride-2 3x3 convolutions (BatchNorm, ReLU), doubling the channels
    from ``width``, each followed by ``blocks`` residual blocks at its resolution, then a 1x1
    projection to ``dim``: one token per ``patch_size`` square, as `PatchEmbedding` gives, but
    with the convolutional inductive bias that helps ViTs train on small data (Xiao et al.
    2021, "Early convolutions help transformers see better"). With ``blocks`` > 0 the stem is
    a small ResNet, as the paper's hybrid (which takes ResNet-50 stages) is. With
    ``input_blocks`` > 0 a stride-1 3x3 convolution to ``width`` channels and that many
    residual blocks first work at the input resolution, as the first stage of a ResNet for
    small images does (on 32x32 images a stride-2 first convolution leaves 16x16 too early).

    Args:
        dim: Token width.
        patch_size: Total stride, a power of two.
        in_chans: Image channels.
        width: Channels of the first convolution.
        blocks: Residual blocks after each strided convolution.
        input_blocks: Residual blocks at the input resolution (0: the stem starts strided).
        widths: Channels of each stage, first to last (the input-resolution stage, when
            ``input_blocks`` > 0, then one per strided convolution), in place of ``width``
            doubled at each stride; e.g. ``(64, 128, 256)`` gives stages 1-3 of a ResNet-18
            for small images, the stages the paper's hybrid keeps of its ResNet.
        downsample: ``stride`` (stride-2 convolutions) or ``pool`` (a stride-1 convolution
            and a 2x2 max-pool, see `_conv_bn_relu`).
    """

    def __init__(
        self,
        dim: int,
        patch_size: int = 16,
        in_chans: int = 3,
        width: int = 32,
        blocks: int = 0,
        input_blocks: int = 0,
        widths: Sequence[int] = (),
        downsample: str = "stride",
    ) -> None:
        super().__init__()
        if downsample not in ("stride", "pool"):
            raise ValueError(f"downsample: expected 'stride' or 'pool', got {downsample!r}")
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(f"the conv stem needs a power-of-two patch_size, got {patch_size}")
        if blocks < 0 or input_blocks < 0:
            raise ValueError(
                f"the conv stem needs blocks >= 0 and input_blocks >= 0, got {blocks}, "
                f"{input_blocks}"
            )
        self.patch_size = patch_size
        strided = int(math.log2(patch_size))
        stages = self.num_stages(patch_size, input_blocks)
        if widths and (len(widths) != stages or min(widths) < 1):
            raise ValueError(
                f"the conv stem has {stages} stages (patch_size={patch_size}, "
                f"input_blocks={input_blocks}): widths needs {stages} channel counts >= 1, "
                f"got {tuple(widths)}"
            )
        if not widths:
            widths = ([width] if input_blocks else []) + [width * 2**i for i in range(strided)]
        layers: list[nn.Module] = []
        channels = in_chans
        if input_blocks:
            # Appended only when asked, so stems without them keep their parameter names.
            layers += _conv_bn_relu(channels, widths[0], stride=1)
            layers += [ResidualConvBlock(widths[0]) for _ in range(input_blocks)]
            channels = widths[0]
        for out in widths[stages - strided :]:
            layers += _conv_bn_relu(channels, out, stride=2, pool=downsample == "pool")
            layers += [ResidualConvBlock(out) for _ in range(blocks)]
            channels = out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, dim, kernel_size=1)
        # The weights are stored NHWC, as the activations are (see `forward`), so that their
        # gradients come out in the weights' own layout: DDP's buckets need that (it warned
        # "grad strides do not match bucket view strides" and copied at every step).
        # Checkpoints are saved contiguous, so the state dict does not depend on it.
        self.to(memory_format=torch.channels_last)

    @staticmethod
    def num_stages(patch_size: int, input_blocks: int) -> int:
        """Stages of a stem (the length its ``widths`` must have): one per stride, plus one.

        The extra stage is the input-resolution one, present when ``input_blocks`` > 0.
        """
        return int(math.log2(patch_size)) + (1 if input_blocks else 0)

    def forward(self, images: Tensor) -> Tensor:
        """``images [B, C, H, W]`` -> tokens ``[B, (H / p) * (W / p), dim]``, row-major."""
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}"
            )
        # Channels-last input makes oneDNN run every convolution in NHWC without reordering
        # around each one (hybrid ViT step on CPU: 1.10x in bf16, 1.11x in fp32), and the
        # tokens below come out contiguous.
        images = images.contiguous(memory_format=torch.channels_last)
        x = self.proj(self.convs(images))  # [B, dim, H / p, W / p], stored as [B, H/p, W/p, dim]
        return x.flatten(2).transpose(1, 2)  # [B, N, dim]
