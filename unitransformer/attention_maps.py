"""Looking at attention: record the probabilities of chosen layers, and attention rollout.

Models run the fast SDPA kernel, which never forms the probabilities. `record_attention` switches
the chosen `Attention` modules to the plain-math path for the duration of a ``with`` block only,
so the normal forward pass is untouched (no hooks, no extra work) outside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from unitransformer.attention import Attention

__all__ = ["attention_rollout", "record_attention"]


@contextmanager
def record_attention(
    model: nn.Module, names: list[str] | None = None
) -> Iterator[dict[str, Tensor]]:
    """Records the attention probabilities of ``model``'s `Attention` modules.

    Args:
        model: Any module containing `Attention` modules.
        names: Qualified module names to record (e.g. ``encoder.blocks.0.attn``); all of them
            when omitted.

    Yields:
        A dict filled when the block exits: module name -> probabilities ``[B, H, T, S]`` of the
        last call inside the block.

    Raises:
        KeyError: When a name is not an `Attention` module of the model.
    """
    modules = {n: m for n, m in model.named_modules() if isinstance(m, Attention)}
    chosen = list(modules) if names is None else names
    unknown = [n for n in chosen if n not in modules]
    if unknown:
        raise KeyError(f"not Attention modules of the model: {unknown}; known: {list(modules)}")
    records: dict[str, Tensor] = {}
    for name in chosen:
        modules[name].keep_attention = True
        modules[name].last_attention = None
    try:
        yield records
    finally:
        for name in chosen:
            module = modules[name]
            if module.last_attention is not None:
                records[name] = module.last_attention
            module.keep_attention = False
            module.last_attention = None


def attention_rollout(attentions: list[Tensor], head_fusion: str = "mean") -> Tensor:
    """Attention rollout (Abnar and Zuidema 2020): attention flowed through all layers.

    Each layer's head-fused attention is mixed with the identity for the residual connection,
    ``0.5 * A + 0.5 * I``, re-normalized, and the layers are multiplied from the first on.

    Args:
        attentions: Per layer, probabilities ``[B, H, T, T]`` (first layer first).
        head_fusion: ``mean``, ``max`` or ``min`` over heads.

    Returns:
        ``[B, T, T]``: row ``i`` is how much each input token flowed into output token ``i``;
        every row sums to 1.
    """
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion={head_fusion!r}; expected one of {sorted(fuse)}")
    rollout = None
    for attn in attentions:
        a = fuse[head_fusion](attn.float())  # [B, T, T]
        eye = torch.eye(a.shape[-1], device=a.device).expand_as(a)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    if rollout is None:
        raise ValueError("attention_rollout needs at least one layer")
    return rollout
