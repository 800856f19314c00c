"""The MLP and the two Transformer blocks, pre-LN or post-LN, with stochastic depth."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from unitransformer.attention import Attention, CrossAttentionCache, SelfAttentionCache
from unitransformer.dropout import Dropout

__all__ = ["ACTIVATIONS", "DecoderBlock", "DropPath", "EncoderBlock", "MLP", "hidden_dim"]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def hidden_dim(dim: int, mlp_ratio: float, mlp_dim: int | None) -> int:
    """The MLP's hidden width: ``mlp_dim`` if given, else ``dim * mlp_ratio``."""
    return mlp_dim if mlp_dim is not None else int(round(dim * mlp_ratio))


class MLP(nn.Module):
    """``fc2(dropout(act(fc1(x))))``: the position-wise feed-forward network."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; expected one of {sorted(ACTIVATIONS)}")
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = ACTIVATIONS[activation]
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample during training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        # The per-sample mask is scaled, not the activation: one full-size product, not two.
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep.div_(1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _Block(nn.Module):
    """What both blocks share: the residual wrapper around each sub-layer."""

    def __init__(self, norm_first: bool, dropout: float, drop_path: float) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.dropout = Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def residual(
        self, x: Tensor, norm: nn.LayerNorm, sublayer: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """``x + f(norm(x))`` (pre-LN) or ``norm(x + f(x))`` (post-LN)."""
        if self.norm_first:
            return x + self.drop_path(self.dropout(sublayer(norm(x))))
        return norm(x + self.drop_path(self.dropout(sublayer(x))))


class EncoderBlock(_Block):
    """Self-attention and MLP, each in a residual: the block of the ViT and of the encoder.

    Args:
        dim: Model width.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width over ``dim`` (ignored when ``mlp_dim`` is given).
        mlp_dim: MLP hidden width.
        qkv_bias: Bias on the q, k, v projections.
        dropout: Dropout on each residual branch.
        attn_dropout: Dropout on attention probabilities.
        activation_dropout: Dropout after the MLP's activation.
        drop_path: Stochastic-depth rate of this block.
        norm_first: Pre-LN (ViT) if True, post-LN (original Transformer, Marian) if False.
        activation: The MLP's activation, a key of `ACTIVATIONS`.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        mlp_dim: int | None = None,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        drop_path: float = 0.0,
        norm_first: bool = True,
        activation: str = "gelu",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(norm_first, dropout, drop_path)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_dropout=attn_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        hidden = hidden_dim(dim, mlp_ratio, mlp_dim)
        self.mlp = MLP(dim, hidden, activation, activation_dropout)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """``x [B, T, dim]`` -> ``[B, T, dim]``; ``key_padding_mask [B, T]`` is True at padding."""
        x = self.residual(x, self.norm1, lambda h: self.attn(h, key_padding_mask=key_padding_mask))
        x = self.residual(x, self.norm2, self.mlp)
        return x


class DecoderBlock(_Block):
    """Causal self-attention, cross-attention to the encoder's output, and MLP.

    Takes the same arguments as `EncoderBlock`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        mlp_dim: int | None = None,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        drop_path: float = 0.0,
        norm_first: bool = True,
        activation: str = "gelu",
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(norm_first, dropout, drop_path)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.self_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_dropout=attn_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_dropout=attn_dropout)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        hidden = hidden_dim(dim, mlp_ratio, mlp_dim)
        self.mlp = MLP(dim, hidden, activation, activation_dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor | None = None,
        self_cache: SelfAttentionCache | None = None,
        cross_cache: CrossAttentionCache | None = None,
    ) -> Tensor:
        """``x [B, T, dim]`` attends causally to itself and to ``memory [B_m, S, dim]``.

        ``memory`` may have fewer rows than ``x`` (beams sharing a source, see `Attention`).
        """
        x = self.residual(x, self.norm1, lambda h: self.self_attn(h, causal=True, cache=self_cache))
        x = self.residual(
            x,
            self.norm2,
            lambda h: self.cross_attn(
                h, memory, key_padding_mask=memory_padding_mask, cache=cross_cache
            ),
        )
        x = self.residual(x, self.norm3, self.mlp)
        return x
