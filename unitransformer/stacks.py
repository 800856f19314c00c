"""`Encoder` and `Decoder`: stacks of blocks. The ViT and the translation model share `Encoder`."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from unitransformer.attention import CrossAttentionCache, SelfAttentionCache
from unitransformer.layers import DecoderBlock, EncoderBlock

__all__ = ["Decoder", "DecoderCache", "Encoder"]


def _drop_path_rates(rate: float, depth: int) -> list[float]:
    # Stochastic depth grows linearly with depth (Huang et al. 2016; DeiT).
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


class Encoder(nn.Module):
    """A stack of `EncoderBlock`, with a final LayerNorm when the blocks are pre-LN.

    Args:
        dim: Model width.
        depth: Number of blocks.
        num_heads: Attention heads.
        drop_path: Stochastic-depth rate of the last block (0 for the first, linear between).
        final_norm: LayerNorm after the last block; defaults to ``norm_first`` (a pre-LN stack
            leaves its output un-normalized otherwise).
        **block_args: The other arguments of `EncoderBlock` (``mlp_ratio``, ``norm_first``...).
    """

    block_class = EncoderBlock

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        drop_path: float = 0.0,
        final_norm: bool | None = None,
        **block_args: object,
    ) -> None:
        super().__init__()
        rates = _drop_path_rates(drop_path, depth)
        self.blocks = nn.ModuleList(
            self.block_class(dim, num_heads, drop_path=r, **block_args) for r in rates
        )
        norm_first = bool(block_args.get("norm_first", True))
        eps = float(block_args.get("norm_eps", 1e-5))
        use_norm = norm_first if final_norm is None else final_norm
        self.norm = nn.LayerNorm(dim, eps=eps) if use_norm else nn.Identity()

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x [B, T, dim]`` -> ``[B, T, dim]``; ``key_padding_mask [B, T]`` is True at padding."""
        for block in self.blocks:
            x = block(x, key_padding_mask)
        return self.norm(x)


@dataclass
class DecoderCache:
    """Per-layer caches of an incremental decode, and how many steps it has seen."""

    self_attn: list[SelfAttentionCache] = field(default_factory=list)
    cross_attn: list[CrossAttentionCache] = field(default_factory=list)
    offset: int = 0

    @classmethod
    def empty(cls, depth: int, capacity: int = 64) -> DecoderCache:
        """A fresh cache for a decoder of ``depth`` layers."""
        return cls(
            [SelfAttentionCache(capacity) for _ in range(depth)],
            [CrossAttentionCache() for _ in range(depth)],
        )

    def reorder(self, index: Tensor, source_index: Tensor | None = None) -> None:
        """Keeps hypotheses ``index``, and sources ``source_index`` if given (retired ones go)."""
        for cache in self.self_attn:
            cache.reorder(index)
        if source_index is not None:
            for cache in self.cross_attn:
                cache.reorder(source_index)


class Decoder(Encoder):
    """A stack of `DecoderBlock`; takes the same arguments as `Encoder`."""

    block_class = DecoderBlock

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """``x [B, T, dim]`` (only the new steps when ``cache`` is given) -> ``[B, T, dim]``."""
        for i, block in enumerate(self.blocks):
            self_cache = cache.self_attn[i] if cache is not None else None
            cross_cache = cache.cross_attn[i] if cache is not None else None
            x = block(x, memory, memory_padding_mask, self_cache, cross_cache)
        if cache is not None:
            cache.offset += x.shape[1]
        return self.norm(x)
