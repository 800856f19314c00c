"""The RNN baseline: padding invariance, incremental decoding, beams, training, config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tasks.translation.rnn import RNNConfig, RNNSeq2Seq
from unitransformer.errors import UserError

PAD, BOS, EOS = 0, 1, 2
VOCAB = 11
# Every attention score, and a 2-layer unidirectional variant (dot needs equal widths).
VARIANTS = [
    dict(attention="additive"),
    dict(attention="general", num_layers=2),
    dict(attention="dot", bidirectional=False, tie_embeddings=True),
]


def make_model(**overrides: object) -> RNNSeq2Seq:
    torch.manual_seed(0)
    fields: dict = dict(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, emb_dim=12, hidden_dim=12)
    return RNNSeq2Seq(RNNConfig(**(fields | overrides))).eval()


def padded(rows: list[list[int]]) -> Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


SRC = [[3, 4, 5, 6, 7], [8, 9], [10, 3, 4], [5]]
TGT = [[BOS, 4, 4, 9], [BOS, 3, 5, 6, 7, 8], [BOS], [BOS, 10, 10]]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_padded_batch_gives_each_sentence_its_outputs_alone(overrides: dict) -> None:
    model = make_model(**overrides)
    src, tgt = padded(SRC), padded(TGT)
    with torch.no_grad():
        memory, mask = model.encode(src)
        logits = model(src, tgt)
        for i, (s, t) in enumerate(zip(SRC, TGT, strict=True)):
            alone_memory, alone_mask = model.encode(torch.tensor([s]))
            torch.testing.assert_close(memory[i, : len(s)], alone_memory[0])
            assert not alone_mask.any() and mask[i].tolist() == [j >= len(s) for j in range(5)]
            alone = model(torch.tensor([s]), torch.tensor([t]))
            torch.testing.assert_close(logits[i, : len(t)], alone[0], atol=1e-5, rtol=1e-5)
    # Annotations at padding are zero: packing skipped them.
    assert memory[mask].abs().max() == 0


@pytest.mark.parametrize("overrides", VARIANTS)
def test_incremental_decode_with_shared_memory_equals_teacher_forcing(overrides: dict) -> None:
    model = make_model(**overrides)
    src, tgt = padded(SRC), padded(TGT)
    beams = 3
    # Each source's 3 hypotheses: the targets, rolled so that they differ.
    hyps = torch.stack([tgt.roll(k, 0) for k in range(beams)], 1).flatten(0, 1)  # [B * 3, T]
    with torch.no_grad():
        memory, mask = model.encode(src)
        full = model.decode(hyps, memory.repeat_interleave(beams, 0), mask.repeat_interleave(3, 0))
        cache = model.new_cache()
        steps = [model.decode(hyps[:, t : t + 1], memory, mask, cache) for t in range(4)]
        assert cache.offset == 4
        # Reorder: keep the first hypothesis of sources 1 and 3 only, as retiring would.
        keep_sources, keep_rows = torch.tensor([1, 3]), torch.tensor([3, 9])
        cache.reorder(keep_rows, keep_sources)
        rest = model.decode(hyps[keep_rows, 4:], memory[keep_sources], mask[keep_sources], cache)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, :4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rest, full[keep_rows, 4:], atol=1e-5, rtol=1e-5)


def copy_batch(gen: torch.Generator, batch: int = 32) -> tuple[Tensor, Tensor, Tensor]:
    """Sources of 1-6 words; the decoder must copy them and then emit eos."""
    lengths = torch.randint(1, 7, (batch,), generator=gen).tolist()
    src = padded([torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in lengths])
    target = torch.cat([src, torch.full((batch, 1), PAD)], 1)
    target[torch.arange(batch), lengths] = EOS
    tgt_in = torch.cat([torch.full((batch, 1), BOS), target[:, :-1]], 1)
    return src, tgt_in, target


def test_training_on_a_copy_task_reduces_the_loss() -> None:
    model = make_model(emb_dim=16, hidden_dim=24, dropout=0.1).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        src, tgt_in, target = copy_batch(gen)
        loss = F.cross_entropy(model(src, tgt_in).transpose(1, 2), target, ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_tied_output_shares_the_target_embedding() -> None:
    model = make_model(tie_embeddings=True, emb_dim=8, hidden_dim=12)
    assert model.output.weight is model.tgt_embed.weight
    assert model(padded(SRC), padded(TGT)).shape == (4, 6, VOCAB)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(attention="dot"), "attention='dot'.*24.*hidden_dim is 12"),
        (dict(attention="luong"), "attention='luong'.*additive"),
        (dict(num_layers=0), "num_layers=0"),
    ],
)
def test_bad_config_raises_one_clear_error(overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        make_model(**overrides)
