"""Greedy search, beam search and sampling against uncached references, on both model kinds."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.translation.rnn import RNNConfig, RNNSeq2Seq
from unitransformer.decoding import (
    DecodingError,
    beam_search,
    greedy_decode,
    length_penalty_factor,
    sample,
)
from unitransformer.decoding.search import _filter_logits
from unitransformer.models import Seq2SeqConfig, Seq2SeqTransformer

PAD, BOS, EOS = 0, 1, 2
VOCAB = 12
KINDS = ["transformer", "rnn"]


def random_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "transformer":
        config = Seq2SeqConfig.named(
            "tiny", src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, dim=32, mlp_dim=64,
            tie_embeddings="none", final_logits_bias=True,
        )  # fmt: skip
        return Seq2SeqTransformer(config)
    config = RNNConfig(
        src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, emb_dim=16, hidden_dim=16, num_layers=2
    )
    return RNNSeq2Seq(config)


@functools.cache
def copy_trained_state(kind: str) -> dict[str, Tensor]:
    """Weights after 40 steps of a copy task: a random model ends at step 0 or never, a barely
    trained one ends with eos at varied lengths, which the tests need."""
    model = random_model(kind).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        lengths = torch.randint(1, 8, (32,), generator=gen).tolist()
        src = sources(tuple(lengths), gen)
        tgt = torch.cat([src, torch.full((32, 1), PAD)], 1)
        tgt[torch.arange(32), lengths] = EOS  # [32, 8]: the source, eos, padding
        tgt_in = torch.cat([torch.full((32, 1), BOS), tgt[:, :-1]], 1)
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.transpose(1, 2), tgt, ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_model(kind: str, eos_bias: float = 0.0) -> nn.Module:
    """A tiny copy-trained model in eval mode; ``eos_bias`` makes ending more or less likely."""
    model = random_model(kind)
    model.load_state_dict(copy_trained_state(kind))
    bias = model.final_logits_bias if kind == "transformer" else model.output.bias
    with torch.no_grad():
        bias[EOS] += eos_bias
    return model.eval()


def sources(
    lengths: tuple[int, ...] = (7, 3, 5, 1, 6, 2), gen: torch.Generator | None = None
) -> Tensor:
    """Right-padded random sources ``[B, max(lengths)]`` of non-special tokens."""
    gen = gen or torch.Generator().manual_seed(1)
    src = torch.full((len(lengths), max(lengths)), PAD)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(3, VOCAB, (n,), generator=gen)
    return src


def limits(src: Tensor, a: float, b: float) -> list[int]:
    return [int(a * n + b) for n in src.ne(PAD).sum(1).tolist()]


def reference_greedy(model: nn.Module, src: Tensor, a: float, b: float) -> list[list[int]]:
    """Argmax over full teacher-forced forward passes, no cache, no retiring."""
    max_lens = limits(src, a, b)
    ys = torch.full((src.shape[0], 1), BOS)
    with torch.no_grad():
        for _ in range(max(max_lens)):
            logits = model(src, ys)[:, -1]
            logits[:, [PAD, BOS]] = float("-inf")
            ys = torch.cat([ys, logits.argmax(-1, keepdim=True)], 1)
    out = []
    for row, limit in zip(ys[:, 1:].tolist(), max_lens, strict=True):
        row = row[:limit]
        out.append(row[: row.index(EOS)] if EOS in row else row)
    return out


def teacher_forced_log_prob(model: nn.Module, src: Tensor, tokens: list[int]) -> float:
    """Sum of the log-probabilities of ``tokens + [eos]`` given ``src [1, S]``."""
    tgt_in = torch.tensor([[BOS, *tokens]])
    target = torch.tensor([[*tokens, EOS]])
    with torch.no_grad():
        lprobs = allowed_log_probs(model(src, tgt_in))
    return lprobs.gather(-1, target[..., None]).sum().item()


def allowed_log_probs(logits: Tensor) -> Tensor:
    """Log-probabilities over the tokens decoding may produce: pad and bos are never generated."""
    logits = logits.float().clone()
    logits[..., [PAD, BOS]] = float("-inf")
    return logits.log_softmax(-1)


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_matches_uncached_argmax_loop(kind: str) -> None:
    model, src = make_model(kind), sources()
    got = greedy_decode(model, src, max_len_a=1.0, max_len_b=1)
    assert got == reference_greedy(model, src, 1.0, 1)
    # The batch must exercise both endings: eos, and the length limit.
    lengths = [len(t) for t in got]
    assert any(n < m for n, m in zip(lengths, limits(src, 1.0, 1), strict=True))
    assert any(n == m for n, m in zip(lengths, limits(src, 1.0, 1), strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_beam_one_equals_greedy(kind: str) -> None:
    # With length_penalty=0 a finished beam-1 hypothesis is never beaten by its continuations,
    # so beam 1 must stop exactly where greedy does.
    model, src = make_model(kind), sources()
    greedy = greedy_decode(model, src, max_len_a=1.0, max_len_b=1)
    beams = beam_search(model, src, 1, length_penalty=0.0, max_len_a=1.0, max_len_b=1)
    assert [hyps[0].tokens for hyps in beams] == greedy


@pytest.mark.parametrize("kind", KINDS)
def test_nbest_sorted_distinct_and_scores_match_teacher_forcing(kind: str) -> None:
    model, src = (
        make_model(
            kind,
        ),
        sources(),
    )
    alpha = 1.0
    beams = beam_search(model, src, 5, nbest=3, length_penalty=alpha, max_len_b=4)
    for i, hyps in enumerate(beams):
        assert len(hyps) == 3
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 3
        alone = src[i : i + 1, : int(src[i].ne(PAD).sum())]
        for h in hyps:
            log_prob = teacher_forced_log_prob(model, alone, h.tokens)
            assert h.log_prob == pytest.approx(log_prob, abs=1e-4)
            penalty = length_penalty_factor(len(h.tokens) + 1, alpha)
            assert h.score == pytest.approx(log_prob / penalty, abs=1e-4)


def all_scores(model: nn.Module, src: Tensor, max_len: int, alpha: float) -> list[float]:
    """Scores of every output of at most ``max_len`` tokens (pad and bos never generated)."""
    words = [t for t in range(VOCAB) if t not in (PAD, BOS, EOS)]
    scores = []
    for length in range(max_len + 1):
        combos = list(itertools.product(words, repeat=length))
        rows = len(combos)
        outputs = torch.tensor(combos, dtype=torch.long).view(rows, length)
        tgt_in = torch.cat([torch.full((rows, 1), BOS), outputs], 1)  # [N, length + 1]
        target = torch.cat([outputs, torch.full((rows, 1), EOS)], 1)
        with torch.no_grad():
            lprobs = allowed_log_probs(model(src.expand(rows, -1), tgt_in))
        log_probs = lprobs.gather(-1, target[..., None]).sum((1, 2))  # [N]
        scores += (log_probs / length_penalty_factor(length + 1, alpha)).tolist()
    return scores


@pytest.mark.parametrize("alpha", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("kind", KINDS)
def test_exhaustive_beam_finds_the_best_output(kind: str, alpha: float) -> None:
    # 9 words and at most 2 tokens: 81 live prefixes at most, so beam 100 prunes nothing and
    # beam search is exact; its best can then never be below beam 1's.
    model, src = make_model(kind), sources((4, 2))
    wide = beam_search(model, src, 100, length_penalty=alpha, max_len_a=0.0, max_len_b=2)
    narrow = beam_search(model, src, 1, length_penalty=alpha, max_len_a=0.0, max_len_b=2)
    for i in range(src.shape[0]):
        alone = src[i : i + 1, : int(src[i].ne(PAD).sum())]
        best = max(all_scores(model, alone, 2, alpha))
        assert wide[i][0].score == pytest.approx(best, abs=1e-4)
        assert wide[i][0].score >= narrow[i][0].score - 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_sentence_alone_equals_sentence_in_padded_batch(kind: str) -> None:
    model, src = make_model(kind), sources()
    greedy = greedy_decode(model, src)
    beams = beam_search(model, src, 4, nbest=2)
    for i in range(src.shape[0]):
        alone = src[i : i + 1, : int(src[i].ne(PAD).sum())]
        assert greedy_decode(model, alone) == [greedy[i]]
        (hyps,) = beam_search(model, alone, 4, nbest=2)
        assert [h.tokens for h in hyps] == [h.tokens for h in beams[i]]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in beams[i]], abs=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_length_limits(kind: str) -> None:
    src = sources()
    never_ends = make_model(kind, eos_bias=-30.0)
    expected = limits(src, 0.5, 1)
    assert [len(t) for t in greedy_decode(never_ends, src, max_len_a=0.5, max_len_b=1)] == expected
    beams = beam_search(never_ends, src, 3, nbest=3, max_len_a=0.5, max_len_b=1)
    assert [{len(h.tokens) for h in hyps} for hyps in beams] == [{n} for n in expected]
    assert greedy_decode(never_ends, src, max_len_a=0.0, max_len_b=0) == [[]] * len(expected)
    ends_at_once = make_model(kind, eos_bias=30.0)
    assert greedy_decode(ends_at_once, src) == [[]] * len(expected)
    beams = beam_search(ends_at_once, src, 3, min_len=3, max_len_a=0.5, max_len_b=1)
    assert [len(hyps[0].tokens) for hyps in beams] == [min(3, n) for n in expected]


class RowCounter(nn.Module):
    """Wraps a model and records how many target rows each ``decode`` call gets."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.config, self.rows = model, model.config, []

    def encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode(src_ids)

    def decode(self, tgt_ids: Tensor, *args: object) -> Tensor:
        self.rows.append(tgt_ids.shape[0])
        return self.model.decode(tgt_ids, *args)

    def new_cache(self) -> object:
        return self.model.new_cache()


@pytest.mark.parametrize("kind", KINDS)
def test_finished_sentences_leave_the_batch(kind: str) -> None:
    src = sources()
    counter = RowCounter(make_model(kind))
    outputs = greedy_decode(counter, src, max_len_a=1.0, max_len_b=1)
    assert counter.rows == sorted(counter.rows, reverse=True)
    # Step s decodes exactly the sentences still running: shorter than their limit so far.
    ends = [(len(t), limit) for t, limit in zip(outputs, limits(src, 1.0, 1), strict=True)]
    running = [sum(s < n or s == n < m for n, m in ends) for s in range(len(counter.rows))]
    assert counter.rows == running
    counter.rows.clear()
    beam_search(counter, src, 3, max_len_a=1.0, max_len_b=1)
    assert counter.rows[0] == src.shape[0]  # the first step has one row per sentence
    assert counter.rows[-1] < 3 * src.shape[0]


@pytest.mark.parametrize("kind", KINDS)
def test_sampling(kind: str) -> None:
    model, src = make_model(kind), sources()
    greedy = greedy_decode(model, src)
    gen = torch.Generator().manual_seed(0)
    assert sample(model, src, top_k=1, temperature=2.0, generator=gen) == greedy
    assert sample(model, src, top_p=1e-6, generator=gen) == greedy
    first = sample(model, src, generator=torch.Generator().manual_seed(3), temperature=1.5)
    again = sample(model, src, generator=torch.Generator().manual_seed(3), temperature=1.5)
    assert first == again
    for tokens, limit in zip(first, limits(src, 1.5, 10), strict=True):
        assert len(tokens) <= limit and not {PAD, BOS, EOS} & set(tokens)


def test_filter_logits_keeps_top_k_and_nucleus() -> None:
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()
    kept = lambda top_k, top_p: _filter_logits(logits, top_k, top_p).isfinite()[0].tolist()  # noqa: E731
    assert kept(2, 1.0) == [False, True, False, True]
    assert kept(0, 0.7) == [False, True, False, True]  # 0.5 < 0.7 <= 0.5 + 0.3
    assert kept(0, 0.5) == [False, True, False, False]
    assert kept(0, 0.81) == [False, True, True, True]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda m, s: beam_search(m, s, 0), "beam_size=0"),
        (lambda m, s: beam_search(m, s, 2, nbest=3), "nbest=3"),
        (lambda m, s: greedy_decode(m, s, max_len_a=-1.0), "max_len_a=-1.0"),
        (lambda m, s: sample(m, s, temperature=0.0), "temperature=0.0"),
        (lambda m, s: sample(m, s, top_p=0.0), "top_p=0.0"),
        (lambda m, s: greedy_decode(m, s[0]), "src_ids has shape (7,)"),
    ],
)
def test_bad_arguments_raise_one_clear_error(call: object, name: str) -> None:
    with pytest.raises(DecodingError, match=name.replace("(", r"\(").replace(")", r"\)")):
        call(make_model("rnn"), sources())  # type: ignore[operator]
