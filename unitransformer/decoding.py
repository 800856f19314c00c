"""Decoding for encoder-decoder models: greedy search, beam search and sampling.

The functions need only the encode/decode surface of `Seq2SeqTransformer`, so any model with it
works (the RNN baseline of the translation task too):

- ``model.encode(src_ids [B, S]) -> (memory [B, S, D], memory_padding_mask [B, S])``, the mask
  ``True`` at padding;
- ``model.new_cache()`` -> a cache with ``reorder(index, source_index=None)`` and ``offset``;
- ``model.decode(tgt_ids [B * n, t], memory [B, S, D], memory_padding_mask [B, S], cache)
  -> logits [B * n, t, V]``, where ``memory`` may have fewer rows than ``tgt_ids``: ``n``
  hypotheses per source, stored contiguously.

Special ids default to ``model.config.bos_id``, ``eos_id`` and ``pad_id``. Padding (and ``bos``
unless it is also ``eos``) is never generated. Outputs hold neither ``bos`` nor ``eos``. A
sentence of ``src_len`` non-padding tokens gets at most ``int(max_len_a * src_len + max_len_b)``
tokens. Call the functions on a model in eval mode; they run without autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from unitransformer.errors import UserError

__all__ = [
    "DecodingError",
    "EncoderDecoder",
    "Hypothesis",
    "beam_search",
    "greedy_decode",
    "length_penalty_factor",
    "sample",
]


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
class _Special:
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
) -> _Special:
    config = getattr(model, "config", None)

    def pick(value: int | None, name: str) -> int:
        value = getattr(config, name, None) if value is None else value
        if value is None:
            raise DecodingError(f"{name} was not given and model.config has no {name}")
        return int(value)

    bos_id, eos_id, pad_id = pick(bos, "bos_id"), pick(eos, "eos_id"), pick(pad, "pad_id")
    banned = sorted({pad_id, bos_id} - {eos_id})
    banned_ids = torch.tensor(banned, dtype=torch.long, device=device)
    return _Special(bos_id, eos_id, pad_id, banned_ids)


def _prepare(
    model: EncoderDecoder, src_ids: Tensor, ids: tuple[int | None, ...], a: float, b: float
) -> tuple[_Special, Tensor]:
    """The special ids and each sentence's limit ``int(a * src_len + b)``, ``[B]``."""
    if src_ids.dim() != 2:
        raise DecodingError(f"src_ids has shape {tuple(src_ids.shape)}; expected [batch, len]")
    if a < 0 or b < 0:
        raise DecodingError(f"max_len_a={a}, max_len_b={b}: expected both >= 0")
    special = _special_ids(model, src_ids.device, *ids)
    src_len = src_ids.ne(special.pad).sum(1)  # [B], padding excluded
    return special, (a * src_len.double() + b).floor().long()


def _generate(
    model: EncoderDecoder,
    src_ids: Tensor,
    special: _Special,
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
    special, max_lens = _prepare(model, src_ids, (bos_id, eos_id, pad_id), max_len_a, max_len_b)
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
    special, max_lens = _prepare(model, src_ids, (bos_id, eos_id, pad_id), max_len_a, max_len_b)

    def choose(logits: Tensor) -> Tensor:
        probs = _filter_logits(logits / temperature, top_k, top_p).softmax(-1)  # [b, V]
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _generate(model, src_ids, special, max_lens, choose)


class _BeamSearch:
    """The state of a batched beam search over the sentences still being searched.

    Rows are hypotheses, ``n`` per live sentence, contiguous; ``n`` is 1 at the first step
    (all beams would be the same ``bos``) and up to ``beam_size`` after.
    """

    def __init__(
        self,
        model: EncoderDecoder,
        src_ids: Tensor,
        special: _Special,
        max_lens: Tensor,
        beam_size: int,
        nbest: int,
        alpha: float,
        min_len: int,
    ) -> None:
        self.model, self.special, self.alpha = model, special, alpha
        self.beam_size, self.nbest, self.min_len = beam_size, nbest, min_len
        batch = src_ids.shape[0]
        self.memory, self.memory_mask = model.encode(src_ids)
        self.cache = model.new_cache()
        self.max_lens = max_lens
        self.sentences = torch.arange(batch, device=src_ids.device)  # original index, [b]
        # Column 0 is bos, column t + 1 the token chosen at step t: [b * n, max_len + 1].
        self.tokens = src_ids.new_full((batch, int(max_lens.max()) + 1), special.bos)
        self.log_probs = torch.zeros(batch, device=src_ids.device)  # cumulative, [b * n]
        # The nbest best finished scores of each sentence, descending: [b, nbest].
        self.kept = torch.full((batch, nbest), float("-inf"), device=src_ids.device)
        self.finished: list[list[Hypothesis]] = [[] for _ in range(batch)]

    def _step_log_probs(self, step: int) -> Tensor:
        """Log-probabilities of the next token ``[b * n, V]``, with the length rules applied."""
        inputs = self.tokens[:, step : step + 1]  # [b * n, 1]
        logits = self.model.decode(inputs, self.memory, self.memory_mask, self.cache)[:, -1]
        # Banned before the softmax: the scores are a distribution over the tokens that can
        # actually be generated (as in CTranslate2), so beams rank the same in both.
        logits = logits.float()  # float32 whatever the model's dtype
        logits.index_fill_(1, self.special.banned, float("-inf"))
        lprobs = logits.log_softmax(-1)  # [b * n, V]
        eos = self.special.eos
        eos_lprobs = lprobs[:, eos].clone()
        n = lprobs.shape[0] // self.max_lens.shape[0]
        forced = self.max_lens.eq(step).repeat_interleave(n)  # [b * n] rows at their limit
        if forced.any():  # only at a length limit: no full-vocabulary fill on other steps
            lprobs.masked_fill_(forced[:, None], float("-inf"))
        if step < self.min_len:
            # Too short to end, unless the length limit forces the end.
            eos_lprobs = eos_lprobs.masked_fill(~forced, float("-inf"))
        lprobs[:, eos] = eos_lprobs
        return lprobs

    def _finalize(self, step: int, scores: Tensor, rows: Tensor, tokens: Tensor) -> None:
        """Stores the candidates ``[b, k]`` that end with eos among the best ``beam_size``."""
        rank = torch.arange(scores.shape[1], device=scores.device)
        final = tokens.eq(self.special.eos) & (rank < self.beam_size) & scores.isfinite()
        penalty = length_penalty_factor(step + 1, self.alpha)  # step tokens and the eos
        final_scores = (scores / penalty).masked_fill(~final, float("-inf"))
        self.kept = torch.cat([self.kept, final_scores], 1).topk(self.nbest, dim=1).values
        sentence, candidate = final.nonzero(as_tuple=True)
        if sentence.numel() == 0:
            return
        outputs = self.tokens[rows[sentence, candidate], 1 : step + 1].tolist()
        log_probs = scores[sentence, candidate].tolist()
        for index, out, log_prob in zip(
            self.sentences[sentence].tolist(), outputs, log_probs, strict=True
        ):
            self.finished[index].append(Hypothesis(out, log_prob / penalty, log_prob))

    def _is_done(self, step: int, best: Tensor) -> Tensor:
        """``[b]``: whether no live hypothesis can beat the sentence's nbest-th finished one."""
        # A live score c <= 0 can only fall; divided by the largest penalty a finishing length
        # can get, it bounds every score its continuations can reach.
        finishing = torch.stack([torch.full_like(self.max_lens, step + 2), self.max_lens + 1])
        penalty = length_penalty_factor(finishing.double(), self.alpha).amax(0).float()
        return self.kept[:, -1] >= best / penalty

    def step(self, step: int) -> bool:
        """Extends every live hypothesis by one token; False once all sentences are done."""
        lprobs = self._step_log_probs(step)
        batch, vocab = self.max_lens.shape[0], lprobs.shape[-1]
        n = lprobs.shape[0] // batch
        scores = (self.log_probs[:, None] + lprobs).view(batch, n * vocab)  # [b, n * V]
        # 2 * beam_size candidates: at most n <= beam_size of them end with eos.
        scores, flat = scores.topk(min(2 * self.beam_size, n * vocab), dim=1)  # [b, k]
        tokens = flat % vocab
        rows = flat // vocab + torch.arange(batch, device=flat.device)[:, None] * n
        self._finalize(step, scores, rows, tokens)
        live = scores.masked_fill(tokens.eq(self.special.eos), float("-inf"))
        live, pick = live.topk(min(self.beam_size, live.shape[1]), dim=1)  # [b, n']
        keep = (~self._is_done(step, live[:, 0])).nonzero().squeeze(1)  # [b']
        if keep.numel() == 0:
            return False
        rows = rows.gather(1, pick)[keep].view(-1)  # [b' * n'] parent row of each new row
        retired = keep.numel() < batch
        self.cache.reorder(rows, keep if retired else None)
        self.tokens = self.tokens.index_select(0, rows)
        self.tokens[:, step + 1] = tokens.gather(1, pick)[keep].view(-1)
        self.log_probs = live[keep].view(-1)
        if retired:
            self.memory = self.memory.index_select(0, keep)
            self.memory_mask = self.memory_mask.index_select(0, keep)
            self.sentences, self.max_lens = self.sentences[keep], self.max_lens[keep]
            self.kept = self.kept[keep]
        return True


@torch.no_grad()
def beam_search(
    model: EncoderDecoder,
    src_ids: Tensor,
    beam_size: int = 5,
    *,
    nbest: int = 1,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: float = 10,
    min_len: int = 0,
    bos_id: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> list[list[Hypothesis]]:
    """Beam search, batched over sentences and beams, with the KV cache reordered per step.

    A sentence stops as soon as none of its live hypotheses can beat its ``nbest``-th finished
    one; its rows then leave the batch. At its length limit every live hypothesis is ended with
    eos, so each sentence gets ``nbest`` hypotheses unless fewer exist.

    Args:
        model: An encoder-decoder with the surface of the module docstring.
        src_ids: Source ids ``[B, S]``, right-padded.
        beam_size: Hypotheses kept per sentence and step.
        nbest: Hypotheses returned per sentence (at most ``beam_size``).
        length_penalty: GNMT alpha, see `length_penalty_factor`.
        max_len_a: Output limit ``int(max_len_a * src_len + max_len_b)`` tokens per sentence.
        max_len_b: See ``max_len_a``.
        min_len: Outputs shorter than this (eos excluded) are not allowed, except where the
            length limit is smaller.
        bos_id: Start token; defaults to ``model.config.bos_id`` (likewise eos and pad).
        eos_id: End token.
        pad_id: Padding token.

    Returns:
        Per sentence, up to ``nbest`` distinct hypotheses, best score first.
    """
    if beam_size < 1:
        raise DecodingError(f"beam_size={beam_size}: expected >= 1")
    if not 1 <= nbest <= beam_size:
        raise DecodingError(f"nbest={nbest}: expected between 1 and beam_size={beam_size}")
    if min_len < 0:
        raise DecodingError(f"min_len={min_len}: expected >= 0")
    special, max_lens = _prepare(model, src_ids, (bos_id, eos_id, pad_id), max_len_a, max_len_b)
    if src_ids.shape[0] == 0:
        return []
    search = _BeamSearch(
        model, src_ids, special, max_lens, beam_size, nbest, length_penalty, min_len
    )
    for step in range(int(max_lens.max()) + 1):
        if not search.step(step):
            break
    return [sorted(hyps, key=lambda h: h.score, reverse=True)[:nbest] for hyps in search.finished]
