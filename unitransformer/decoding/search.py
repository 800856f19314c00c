"""Token-by-token decoding that keeps one hypothesis per sentence: greedy search and sampling."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from unitransformer.decoding.common import DecodingError, EncoderDecoder, Special, prepare


def _generate(
    model: EncoderDecoder,
    src_ids: Tensor,
    special: Special,
    max_lens: Tensor,
    choose: Callable[[Tensor], Tensor],
) -> list[list[int]]:
    """One token per step per sentence, ``choose(logits [b, V]) -> [b]``; finished rows retire."""
    batch = src_ids.shape[0]
    limit = int(max_lens.max()) if batch else 0
    out = src_ids.new_full((batch, max(limit, 1)), special.eos)  # [B, limit] tokens
    lengths = torch.zeros_like(max_lens)
    active = max_lens.gt(0).nonzero().squeeze(1)  # original row of each live sentence
    if active.numel() == 0:
        return [[] for _ in range(batch)]
    memory, memory_mask = model.encode(src_ids.index_select(0, active))
    cache = model.new_cache()
    inputs = src_ids.new_full((active.numel(), 1), special.bos)  # [b, 1]
    for step in range(limit):
        logits = model.decode(inputs, memory, memory_mask, cache)[:, -1].float()  # [b, V]
        logits.index_fill_(1, special.banned, float("-inf"))
        tokens = choose(logits)  # [b]
        is_eos = tokens.eq(special.eos)
        out[active, step] = tokens
        # Rewritten each step; a row's last write (the step it retires at) is its length.
        lengths[active] = step + 1 - is_eos.long()
        keep = (~is_eos & max_lens[active].gt(step + 1)).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        if keep.numel() < active.numel():
            # Retire finished sentences: their rows leave the batch and the cache.
            cache.reorder(keep, keep)
            memory, memory_mask = memory.index_select(0, keep), memory_mask.index_select(0, keep)
            active, tokens = active[keep], tokens[keep]
        inputs = tokens[:, None]
    return [row[:n] for row, n in zip(out.tolist(), lengths.tolist(), strict=True)]


@torch.no_grad()
def greedy_decode(
    model: EncoderDecoder,
    src_ids: Tensor,
    *,
    max_len_a: float = 1.5,
    max_len_b: float = 10,
    bos_id: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> list[list[int]]:
    """Greedy search: the most probable next token at each step, batched, with the KV cache.

    Args:
        model: An encoder-decoder with the surface of the module docstring.
        src_ids: Source ids ``[B, S]``, right-padded with ``pad_id``.
        max_len_a: Output limit ``int(max_len_a * src_len + max_len_b)`` tokens per sentence.
        max_len_b: See ``max_len_a``.
        bos_id: Start token; defaults to ``model.config.bos_id`` (likewise eos and pad).
        eos_id: End token.
        pad_id: Padding token.

    Returns:
        Per sentence, its output tokens (without bos and eos).
    """
    special, max_lens = prepare(model, src_ids, (bos_id, eos_id, pad_id), max_len_a, max_len_b)
    return _generate(model, src_ids, special, max_lens, lambda logits: logits.argmax(-1))


def _filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Keeps the ``top_k`` largest logits and the nucleus of mass ``top_p``; ``[b, V]``."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [b, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the more probable ones already reach top_p; the first always stays.
        drop = (probs.cumsum(-1) - probs) >= top_p
        drop = drop.scatter(1, order, drop)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample(
    model: EncoderDecoder,
    src_ids: Tensor,
    *,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    max_len_a: float = 1.5,
    max_len_b: float = 10,
    bos_id: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> list[list[int]]:
    """Ancestral sampling, optionally restricted to the top-k tokens or the top-p nucleus.

    Args:
        model: An encoder-decoder with the surface of the module docstring.
        src_ids: Source ids ``[B, S]``, right-padded.
        top_k: Sample among the ``top_k`` most probable tokens; 0 disables.
        top_p: Sample among the smallest set of tokens whose probability reaches ``top_p``
            (Holtzman et al. 2020); 1.0 disables.
        temperature: Divides the logits; below 1 sharpens, above 1 flattens.
        generator: Random generator, for reproducible samples.
        max_len_a: Output limit ``int(max_len_a * src_len + max_len_b)`` tokens per sentence.
        max_len_b: See ``max_len_a``.
        bos_id: Start token; defaults to ``model.config.bos_id`` (likewise eos and pad).
        eos_id: End token.
        pad_id: Padding token.

    Returns:
        Per sentence, its sampled tokens (without bos and eos).
    """
    if top_k < 0:
        raise DecodingError(f"top_k={top_k}: expected >= 0 (0 disables it)")
    if not 0.0 < top_p <= 1.0:
        raise DecodingError(f"top_p={top_p}: expected a value in (0, 1]")
    if temperature <= 0.0:
        raise DecodingError(f"temperature={temperature}: expected > 0")
    special, max_lens = prepare(model, src_ids, (bos_id, eos_id, pad_id), max_len_a, max_len_b)

    def choose(logits: Tensor) -> Tensor:
        probs = _filter_logits(logits / temperature, top_k, top_p).softmax(-1)  # [b, V]
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _generate(model, src_ids, special, max_lens, choose)
