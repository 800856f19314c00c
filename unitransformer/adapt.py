"""Weight adaptation: everything that makes a state dict fit a model it was not made for.

Position-embedding resampling, head reset, and strict loading that reports exactly which keys
are missing, unexpected, or of the wrong shape. The key maps of foreign models live in
`unitransformer.interop`; this module knows nothing of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unitransformer.errors import UserError

__all__ = [
    "StateDictMismatchError",
    "load_state_dict_strict",
    "rename_keys",
    "reset_head",
    "resample_pos_embed",
]


def resample_pos_embed(
    pos_embed: Tensor,
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    old_grid: tuple[int, int] | None = None,
    mode: str = "bicubic",
) -> Tensor:
    """Resizes a ViT's learned position embeddings to another patch grid.

    The prefix tokens (class token) keep their vectors; the patch positions, seen as a
    ``dim``-channel image of the old grid, are interpolated to the new grid.

    Args:
        pos_embed: ``[1, num_prefix_tokens + gh * gw, dim]``.
        new_grid: The new ``(rows, cols)`` of patches.
        num_prefix_tokens: Leading tokens that are not patches.
        old_grid: The old ``(rows, cols)``; a square grid is assumed when omitted.
        mode: Interpolation mode of `torch.nn.functional.interpolate`.

    Returns:
        ``[1, num_prefix_tokens + new_rows * new_cols, dim]``.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if old_grid is None:
        side = math.isqrt(grid.shape[1])
        if side * side != grid.shape[1]:
            raise ValueError(
                f"{grid.shape[1]} patch positions are not a square grid; pass old_grid"
            )
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, *old_grid, dim).permute(0, 3, 1, 2)  # [1, dim, gh, gw]
    grid = F.interpolate(grid.float(), size=new_grid, mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def reset_head(model: nn.Module, num_classes: int, attr: str = "head") -> None:
    """Replaces the classifier ``model.<attr>`` with a fresh one of ``num_classes`` outputs."""
    old = getattr(model, attr)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"model.{attr} is a {type(old).__name__}, not nn.Linear")
    new = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
    nn.init.zeros_(new.weight)
    nn.init.zeros_(new.bias)
    setattr(model, attr, new)


class StateDictMismatchError(UserError, ValueError):
    """A state dict does not fit a model: the message lists every differing key."""


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "checkpoint"
) -> None:
    """Loads ``state_dict`` into ``model`` only if keys and shapes all match.

    Raises:
        StateDictMismatchError: With the missing keys, unexpected keys and shape differences,
            each listed, so the user sees the whole diff at once rather than the first error.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = [
        f"  {k}: {tuple(state_dict[k].shape)} in {source}, {tuple(own[k].shape)} in the model"
        for k in sorted(set(own) & set(state_dict))
        if own[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or wrong:
        lines = [f"{source} does not fit {type(model).__name__}:"]
        lines += [f"  missing: {k}" for k in missing]
        lines += [f"  unexpected: {k}" for k in unexpected]
        if wrong:
            lines += ["  shape differs:", *wrong]
        raise StateDictMismatchError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def rename_keys(
    state_dict: Mapping[str, Tensor], rules: list[tuple[str, str]]
) -> dict[str, Tensor]:
    """Renames each key by the first regex rule that matches it from its start.

    Keys no rule matches are kept as they are, so that strict loading reports them as
    unexpected instead of dropping them silently.
    """
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in compiled:
            if pattern.match(key):
                key = pattern.sub(repl, key, count=1)
                break
        out[key] = value
    return out
