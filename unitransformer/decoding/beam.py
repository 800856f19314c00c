"""Beam search, batched over sentences and beams, with finished sentences leaving the batch."""

from __future__ import annotations

import torch
from torch import Tensor

from unitransformer.decoding.common import (
    DecodingError,
    EncoderDecoder,
    Hypothesis,
    Special,
    length_penalty_factor,
    prepare,
)


class _BeamSearch:
    """The state of a batched beam search over the sentences still being searched.

    Rows are hypotheses, ``n`` per live sentence, contiguous; ``n`` is 1 at the first step
    (all beams would be the same ``bos``) and up to ``beam_size`` after.
    """

    def __init__(
        self,
        model: EncoderDecoder,
        src_ids: Tensor,
        special: Special,
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

    def _step_candidates(self, step: int, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best next tokens of each row and their log-probabilities, ``[b * n, k]``.

        The cumulative scores are added to these ``k`` only, never to all ``[b * n, V]``: the
        sentence-level top-``k`` over ``n * V`` candidates is always within the rows' top-``k``,
        so the search is unchanged.
        """
        inputs = self.tokens[:, step : step + 1]  # [b * n, 1]
        logits = self.model.decode(inputs, self.memory, self.memory_mask, self.cache)[:, -1]
        # Banned before normalizing: the scores are a distribution over the tokens that can
        # actually be generated (as in CTranslate2), so beams rank the same in both.
        logits.index_fill_(1, self.special.banned, float("-inf"))
        # log_softmax is one fused pass on CPU; logsumexp's broadcast subtraction and exp are
        # separate passes (5.2 against 3.1 ms for [500, 8000] at one thread). float32 always.
        lprobs = torch.log_softmax(logits, -1, dtype=torch.float32)  # [b * n, V]
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
        return lprobs.topk(min(k, lprobs.shape[-1]), dim=-1)  # [b * n, k]

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
        # 2 * beam_size candidates: at most n <= beam_size of them end with eos.
        lprobs, candidates = self._step_candidates(step, 2 * self.beam_size)  # [b * n, k]
        batch = self.max_lens.shape[0]
        n, k = lprobs.shape[0] // batch, lprobs.shape[1]
        scores = (self.log_probs[:, None] + lprobs).view(batch, n * k)  # [b, n * k]
        scores, flat = scores.topk(min(2 * self.beam_size, n * k), dim=1)  # [b, k']
        tokens = candidates.view(batch, n * k).gather(1, flat)
        rows = flat // k + torch.arange(batch, device=flat.device)[:, None] * n
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
    special, max_lens = prepare(model, src_ids, (bos_id, eos_id, pad_id), max_len_a, max_len_b)
    if src_ids.shape[0] == 0:
        return []
    search = _BeamSearch(
        model, src_ids, special, max_lens, beam_size, nbest, length_penalty, min_len
    )
    for step in range(int(max_lens.max()) + 1):
        if not search.step(step):
            break
    return [sorted(hyps, key=lambda h: h.score, reverse=True)[:nbest] for hyps in search.finished]
