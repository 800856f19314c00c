"""The Vision Transformer of "An image is worth 16x16 words" (Dosovitskiy et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn

from unitransformer.adapt import resample_pos_embed
from unitransformer.dropout import Dropout, PatchDropout
from unitransformer.embeddings import ConvStem, PatchEmbedding
from unitransformer.stacks import Encoder

__all__ = ["VIT_SIZES", "ViTConfig", "VisionTransformer"]


@dataclass
class ViTConfig:
    """The shape and regularization of a `VisionTransformer`.

    Attributes:
        image_size: Side of the (square) training images; sets the position-embedding grid.
        patch_size: Side of a square patch.
        in_chans: Image channels.
        num_classes: Classes; 0 gives a model without a head (features only).
        dim: Token width.
        depth: Encoder blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        qkv_bias: Bias on the q, k, v projections.
        pool: ``cls`` (class token, the paper) or ``mean`` (average of the patch tokens).
        stem: ``patch`` (a linear projection of each patch, the paper's ViT) or ``conv`` (a
            small convolutional stem, the paper's hybrid; ``patch_size`` a power of two).
        stem_width: Channels of the conv stem's first convolution.
        stem_blocks: Residual blocks after each strided convolution of the conv stem (0: none).
        stem_input_blocks: Residual blocks of the conv stem at the input resolution, after a
            stride-1 convolution (0: none; the stem starts with a strided convolution).
        stem_widths: Channels of each conv-stem stage (see `ConvStem`); empty doubles
            ``stem_width`` at each strided convolution.
        stem_downsample: ``stride`` (stride-2 convolutions) or ``pool`` (stride-1
            convolutions, each followed by a 2x2 max-pool) in the conv stem.
        dropout: Dropout on the embeddings and residual branches.
        attn_dropout: Dropout on attention probabilities.
        drop_path: Stochastic-depth rate of the last block.
        patch_drop: Fraction of the patch tokens each training image drops before the
            encoder (PatchDropout; see `unitransformer.dropout.patch_dropout`): 0.5 halves the
            encoder's work. Evaluation keeps every token.
        norm_eps: LayerNorm epsilon (1e-6 in the paper's code).
    """

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pool: Literal["cls", "mean"] = "cls"
    stem: Literal["patch", "conv"] = "patch"
    stem_width: int = 32
    stem_blocks: int = 0
    stem_input_blocks: int = 0
    stem_widths: tuple[int, ...] = ()
    stem_downsample: Literal["stride", "pool"] = "stride"
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    patch_drop: float = 0.0
    norm_eps: float = 1e-6

    @classmethod
    def named(cls, size: str, **overrides: object) -> ViTConfig:
        """A config of a named size (see `VIT_SIZES`) with fields overridden."""
        if size not in VIT_SIZES:
            raise ValueError(f"unknown size {size!r}; expected one of {sorted(VIT_SIZES)}")
        return replace(VIT_SIZES[size], **overrides)


VIT_SIZES: dict[str, ViTConfig] = {
    # The paper's table 1, at patch 16 (and 32), with DeiT's Ti and S.
    "ti16": ViTConfig(dim=192, depth=12, num_heads=3),
    "s16": ViTConfig(dim=384, depth=12, num_heads=6),
    "b16": ViTConfig(dim=768, depth=12, num_heads=12),
    "b32": ViTConfig(patch_size=32, dim=768, depth=12, num_heads=12),
    "l16": ViTConfig(dim=1024, depth=24, num_heads=16),
    "l32": ViTConfig(patch_size=32, dim=1024, depth=24, num_heads=16),
    "h14": ViTConfig(patch_size=14, dim=1280, depth=32, num_heads=16),
    # Small images: CIFAR-sized (patch 4 on 32x32: 64 tokens) and 8x8 digits (patch 2: 16 tokens).
    "ti4_32": ViTConfig(
        image_size=32, patch_size=4, num_classes=10, dim=192, depth=9, num_heads=12, mlp_ratio=2.0
    ),
    "s4_32": ViTConfig(
        image_size=32, patch_size=4, num_classes=10, dim=384, depth=7, num_heads=12, mlp_ratio=3.0
    ),
    "digits": ViTConfig(
        image_size=8, patch_size=2, num_classes=10, dim=64, depth=4, num_heads=4, mlp_ratio=2.0
    ),
}


class VisionTransformer(nn.Module):
    """An image cut into patches becomes a sequence of tokens for the shared `Encoder`."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        c = self.config = config
        if c.image_size % c.patch_size:
            raise ValueError(
                f"image_size={c.image_size} is not a multiple of patch_size={c.patch_size}"
            )
        if c.stem == "conv":
            self.patch_embed: nn.Module = ConvStem(
                c.dim,
                c.patch_size,
                c.in_chans,
                c.stem_width,
                c.stem_blocks,
                c.stem_input_blocks,
                c.stem_widths,
                c.stem_downsample,
            )
        else:
            self.patch_embed = PatchEmbedding(c.dim, c.patch_size, c.in_chans)
        self.grid = (c.image_size // c.patch_size,) * 2
        self.num_prefix_tokens = 1 if c.pool == "cls" else 0
        if c.pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        else:
            self.register_parameter("cls_token", None)
        num_tokens = self.num_prefix_tokens + self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, c.dim))
        self.pos_drop = Dropout(c.dropout)
        self.patch_drop = PatchDropout(c.patch_drop, self.num_prefix_tokens)
        self.encoder = Encoder(
            c.dim,
            c.depth,
            c.num_heads,
            drop_path=c.drop_path,
            mlp_ratio=c.mlp_ratio,
            qkv_bias=c.qkv_bias,
            dropout=c.dropout,
            attn_dropout=c.attn_dropout,
            norm_first=True,
            activation="gelu",
            norm_eps=c.norm_eps,
        )
        self.head = nn.Linear(c.dim, c.num_classes) if c.num_classes else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)  # a zero head starts from uniform predictions

    def _pos_embed(self, grid: tuple[int, int]) -> Tensor:
        # An image of another size gets its positions interpolated on the fly; the stored
        # parameter is unchanged (use `adapt.resample_pos_embed` to make it permanent).
        return resample_pos_embed(self.pos_embed, grid, self.num_prefix_tokens, self.grid)

    def forward_features(self, images: Tensor) -> Tensor:
        """``images [B, C, H, W]`` -> normalized tokens ``[B, prefix + N, dim]``."""
        x = self.patch_embed(images)  # [B, N, dim]
        grid = (
            images.shape[-2] // self.config.patch_size,
            images.shape[-1] // self.config.patch_size,
        )
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self._pos_embed(grid))
        return self.encoder(self.patch_drop(x))  # [B, prefix + kept, dim]

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Pools tokens ``[B, T, dim]`` (class token or mean) and classifies them."""
        if self.config.pool == "cls":
            x = features[:, 0]
        else:
            x = features[:, self.num_prefix_tokens :].mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, images: Tensor) -> Tensor:
        """``images [B, C, H, W]`` -> logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(images))
