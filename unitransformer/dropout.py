"""Dropout that is cheap on CPU: 16 random bits per element instead of a Bernoulli draw each.

``torch.nn.functional.dropout`` on CPU draws one Bernoulli sample per element, which costs as much
as a matrix multiply of the same tensor in the small models this library trains on 2 cores (a
fifth of a Multi30k training step, measured with ``torch.profiler``). Filling a quarter as many
int64 with random bits and reading them as four int16 each gives the same keep/drop decision,
with the drop probability rounded to a multiple of 1/65536, at about a third of the cost. The
random bits come from torch's default generator, so seeding and checkpointed RNG state cover it.
On CUDA, torch's fused dropout kernel is already fast and is used as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Dropout", "PatchDropout", "dropout", "keep_mask", "patch_dropout"]

_LEVELS = 1 << 16  # int16 values: the resolution of the drop probability


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> Tensor:
    """A boolean mask of ``shape``, each element ``False`` with probability ``p`` (to 1/65536).

    Returns:
        The mask; its exact drop probability is ``round(p * 65536) / 65536``.
    """
    numel = 1
    for size in shape:
        numel *= size
    # random_(min_int64, None) fills all 64 bits; the default random_() leaves the sign bit 0.
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
    bits = words.random_(-(2**63), None).view(torch.int16)[:numel].view(shape)
    return bits >= round(p * _LEVELS) - _LEVELS // 2


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zeroes each element of ``x`` with probability ``p`` and scales the rest by ``1 / (1 - p)``.

    The semantics of ``torch.nn.functional.dropout``; on CPU the mask comes from `keep_mask`,
    and the scale uses the rounded probability, so the expectation stays exactly ``x``.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    dropped = round(p * _LEVELS)
    if x.device.type != "cpu" or dropped >= _LEVELS:
        return F.dropout(x, p, True)
    scale = _LEVELS / (_LEVELS - dropped)
    return x * keep_mask(x.shape, p, x.device) * scale


class Dropout(nn.Module):
    """A drop-in for ``torch.nn.Dropout`` (no parameters, same ``p``) that uses `dropout`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def patch_dropout(x: Tensor, p: float, num_prefix_tokens: int = 0, training: bool = True) -> Tensor:
    """Keeps a random ``1 - p`` of each sequence's tokens (PatchDropout, Liu et al. 2023).

    Unlike `dropout`, whole tokens leave the sequence, so every block after it runs on fewer
    tokens: a ViT trained at ``p = 0.5`` does about half the encoder's work per image, and
    the random subsets regularize it much as random crops do. Each image draws its own subset;
    the prefix tokens (the class token) always stay. Position embeddings must already be
    added, since the kept tokens lose their place in the grid. Nothing is rescaled: at
    evaluation every token is present.

    Args:
        x: Tokens ``[B, prefix + N, dim]``.
        p: Fraction of the ``N`` patch tokens to drop, in ``[0, 1)``; at least one is kept.
        num_prefix_tokens: Leading tokens that are never dropped.
        training: Without it, ``x`` is returned as it is.

    Returns:
        ``[B, prefix + keep, dim]`` with ``keep = max(1, round(N * (1 - p)))``, the kept patch
        tokens in their original order.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1)``.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"patch dropout rate must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
    b, n, dim = patches.shape
    keep = max(1, round(n * (1.0 - p)))
    # The first `keep` of a random permutation per row, sorted back into grid order.
    index = torch.rand(b, n, device=x.device).argsort(dim=1)[:, :keep].sort(dim=1).values
    kept = patches.gather(1, index.unsqueeze(-1).expand(b, keep, dim))  # [B, keep, dim]
    return torch.cat([prefix, kept], dim=1) if num_prefix_tokens else kept


class PatchDropout(nn.Module):
    """`patch_dropout` as a module: drops a fraction ``p`` of the patch tokens in training."""

    def __init__(self, p: float = 0.0, num_prefix_tokens: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"patch dropout rate must be in [0, 1), got {p}")
        self.p = p
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: Tensor) -> Tensor:
        return patch_dropout(x, self.p, self.num_prefix_tokens, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}, num_prefix_tokens={self.num_prefix_tokens}"
