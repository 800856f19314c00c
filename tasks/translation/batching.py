"""Token-budget batches: sentences of similar length together, at most ``max_tokens`` padded
tokens a batch, shuffled deterministically per (seed, epoch), and split evenly across DDP ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from unitransformer.errors import UserError

__all__ = ["TranslationBatch", "collate", "pad_sequences", "token_batches"]


def _chunk(order: np.ndarray, sizes: np.ndarray, max_tokens: int) -> list[list[int]]:
    """Cuts ``order`` (sorted by size) into runs whose padded size fits ``max_tokens``."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order.tolist():
        size = int(sizes[index])
        if size > max_tokens:
            raise UserError(
                f"data.max_tokens={max_tokens} is smaller than a sentence of {size} tokens; "
                "raise data.max_tokens or lower data.max_len"
            )
        # Padded cost of a batch: its sentence count times its longest sentence.
        if current and max(longest, size) * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, size)
    if current:
        batches.append(current)
    return batches


def _even_out(batches: list[list[int]], world_size: int) -> list[list[int]]:
    """Splits the biggest batches until every rank gets the same number of batches.

    DDP ranks must take the same number of steps; splitting (rather than dropping or repeating)
    keeps every sentence exactly once. Only if no batch can be split are the last ones dropped.
    """
    while len(batches) % world_size:
        biggest = max(range(len(batches)), key=lambda i: len(batches[i]))
        batch = batches[biggest]
        if len(batch) < 2:
            return batches[: len(batches) - len(batches) % world_size]
        half = len(batch) // 2
        batches[biggest : biggest + 1] = [batch[:half], batch[half:]]
    return batches


def token_batches(
    sizes: Sequence[int],
    max_tokens: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
) -> list[list[int]]:
    """The batches (lists of example indices) of one epoch for one rank.

    Args:
        sizes: Each example's padded length (the longer of its source and target sides).
        max_tokens: Most padded tokens (sentences x longest sentence) in one batch.
        seed: The run's seed.
        epoch: The epoch: a different shuffle each epoch, the same one on every rank.
        rank: This process's rank.
        world_size: Number of processes; each gets ``len(all batches) / world_size`` batches.
        shuffle: Shuffle ties within lengths and the order of batches (False for evaluation:
            batches in order of length).

    Raises:
        UserError: If one example alone exceeds ``max_tokens``.
    """
    lengths = np.asarray(sizes, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    # A stable sort keeps the random order among sentences of equal length.
    order = order[np.argsort(lengths[order], kind="stable")]
    batches = _chunk(order, lengths, max_tokens)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches)).tolist()]
    return _even_out(batches, world_size)[rank::world_size]


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """Right-padded ``[B, max_len]`` int64 tensor of ``sequences``."""
    width = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), max(width, 1)), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


@dataclass
class TranslationBatch:
    """Padded tensors of a batch.

    Attributes:
        src_ids: ``[B, S]`` source ids ending with eos.
        tgt_in: ``[B, T]`` decoder inputs: bos, then the target pieces.
        tgt_out: ``[B, T]`` labels: the target pieces, then eos.
    """

    src_ids: Tensor
    tgt_in: Tensor
    tgt_out: Tensor

    def to(self, device: torch.device | str) -> TranslationBatch:
        """The batch on ``device``."""
        return TranslationBatch(
            self.src_ids.to(device), self.tgt_in.to(device), self.tgt_out.to(device)
        )


def collate(
    examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, bos_id: int, eos_id: int
) -> TranslationBatch:
    """Pads (source ids, target pieces) pairs into a `TranslationBatch`."""
    sources = [src for src, _ in examples]
    tgt_in = [[bos_id, *tgt] for _, tgt in examples]
    tgt_out = [[*tgt, eos_id] for _, tgt in examples]
    return TranslationBatch(
        pad_sequences(sources, pad_id),
        pad_sequences(tgt_in, pad_id),
        pad_sequences(tgt_out, pad_id),
    )
