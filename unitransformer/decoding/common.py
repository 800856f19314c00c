"""What greedy search, sampling and beam search share: arguments, special ids, length limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from unitransformer.errors import UserError


class DecodingError(UserError, ValueError):
    """A decoding argument out of range (beam size, length limits, sampling parameters)."""


class DecodingCache(Protocol):
    """The incremental state of `EncoderDecoder.decode`."""

    offset: int

    def reorder(self, index: Tensor, source_index: Tensor | None = None) -> None: ...


class EncoderDecoder(Protocol):
    """What decoding needs of a model (see the module docstring)."""

    config: Any

    def encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor]: ...

    def decode(
        self, tgt_ids: Tensor, memory: Tensor, memory_padding_mask: Tensor, cache: Any
    ) -> Tensor: ...

    def new_cache(self) -> DecodingCache: ...


@dataclass
class Hypothesis:
    """One finished beam-search hypothesis.

    Attributes:
        tokens: The output tokens, without ``bos`` and ``eos``.
        score: ``log_prob`` divided by the GNMT length penalty (what hypotheses are ranked by).
        log_prob: Sum of the tokens' log-probabilities, the ``eos`` included.
    """

    tokens: list[int]
    score: float
    log_prob: float


@dataclass(frozen=True)
class Special:
    """The special ids of one decoding call and the ids that are never generated."""

    bos: int
    eos: int
    pad: int
    banned: Tensor  # ids never generated, [n_banned]


def length_penalty_factor(length: int | Tensor, alpha: float) -> float | Tensor:
    """The GNMT length penalty ``((5 + length) / 6) ** alpha`` (Wu et al. 2016).

    Args:
        length: Hypothesis length, counting its ``eos`` (as fairseq does).
        alpha: 0 ranks by log-probability; larger values favour longer outputs.
    """
    return ((5 + length) / 6) ** alpha


def _special_ids(
    model: EncoderDecoder, device: torch.device, bos: int | None, eos: int | None, pad: int | None
) -> Special:
    config = getattr(model, "config", None)

    def pick(value: int | None, name: str) -> int:
        value = getattr(config, name, None) if value is None else value
        if value is None:
            raise DecodingError(f"{name} was not given and model.config has no {name}")
        return int(value)

    bos_id, eos_id, pad_id = pick(bos, "bos_id"), pick(eos, "eos_id"), pick(pad, "pad_id")
    banned = sorted({pad_id, bos_id} - {eos_id})
    banned_ids = torch.tensor(banned, dtype=torch.long, device=device)
    return Special(bos_id, eos_id, pad_id, banned_ids)


def prepare(
    model: EncoderDecoder, src_ids: Tensor, ids: tuple[int | None, ...], a: float, b: float
) -> tuple[Special, Tensor]:
    """The special ids and each sentence's limit ``int(a * src_len + b)``, ``[B]``."""
    if src_ids.dim() != 2:
        raise DecodingError(f"src_ids has shape {tuple(src_ids.shape)}; expected [batch, len]")
    if a < 0 or b < 0:
        raise DecodingError(f"max_len_a={a}, max_len_b={b}: expected both >= 0")
    special = _special_ids(model, src_ids.device, *ids)
    src_len = src_ids.ne(special.pad).sum(1)  # [B], padding excluded
    return special, (a * src_len.double() + b).floor().long()
