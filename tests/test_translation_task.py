"""The translation task: tokenizer in the run dir, model, batches, loss, evaluation, translate."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tasks.translation import commands
from tasks.translation.config import (
    DecodeConfig,
    TranslationConfig,
    TranslationDataConfig,
    TranslationModelConfig,
)
from tasks.translation.data import DataError
from tasks.translation.task import TranslationTask, label_smoothed_cross_entropy
from tasks.translation.translator import Translator
from unitransformer.engine.task import Task
from unitransformer.errors import UserError

MULTI30K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"
WORDS = ["a", "man", "woman", "dog", "cat", "runs", "sits", "on", "the", "red", "big", "park"]


def sentences(n: int, seed: int) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in torch.randint(2, 8, (n,), generator=gen).tolist():
        out.append(" ".join(WORDS[i] for i in torch.randint(len(WORDS), (k,), generator=gen)))
    return out


def write_corpus(folder: Path) -> None:
    folder.mkdir()
    for split, n, seed in (("train", 200, 0), ("val", 12, 1), ("test", 10, 2)):
        src = sentences(n, seed)
        (folder / f"{split}.en").write_text("\n".join(src) + "\n")
        # The "German" side: the words reversed and upper-cased, a learnable toy mapping.
        tgt = [" ".join(reversed(s.upper().split())) for s in src]
        (folder / f"{split}.de").write_text("\n".join(tgt) + "\n")


def make_config(tmp_path: Path, arch: str = "transformer") -> TranslationConfig:
    if not (tmp_path / "data").exists():
        write_corpus(tmp_path / "data")
    return TranslationConfig(
        model=TranslationModelConfig(arch=arch, size="tiny", dim=32, mlp_dim=64, max_len=64),
        data=TranslationDataConfig(
            path=str(tmp_path / "data"),
            test_split="test",
            vocab_size=48,
            cache_dir=str(tmp_path / "cache"),
            max_tokens=128,
        ),
        decode=DecodeConfig(beam=2, max_len_a=1.0, max_len_b=3, max_tokens=64),
    )


@pytest.fixture()
def task(tmp_path: Path) -> TranslationTask:
    torch.manual_seed(0)
    task = TranslationTask(make_config(tmp_path))
    task.prepare(tmp_path / "run")
    return task


def test_prepare_saves_tokenizer_and_reloads_it(task: TranslationTask, tmp_path: Path) -> None:
    assert isinstance(task, Task)
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").exists()
    again = TranslationTask(task.config)
    again.prepare(tmp_path / "run")
    line = "a man runs on the park"
    assert again.tokenizer.encode_source(line) == task.tokenizer.encode_source(line)
    model = task.build_model()
    assert model.config.src_vocab_size == task.tokenizer.src_vocab_size
    assert (model.config.pad_id, model.config.bos_id, model.config.eos_id) == (0, 2, 3)


def test_label_smoothing_matches_torch_and_ignores_padding() -> None:
    torch.manual_seed(0)
    logits = torch.randn(12, 9)
    target = torch.tensor([4, 5, 0, 7, 1, 0, 0, 8, 2, 3, 0, 6])
    loss, nll, count = label_smoothed_cross_entropy(logits, target, 0.1, ignore_index=0)
    expected = F.cross_entropy(logits, target, label_smoothing=0.1, ignore_index=0, reduction="sum")
    assert count == 8
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(
        nll, F.cross_entropy(logits, target, ignore_index=0, reduction="sum")
    )
    changed = logits.clone()
    changed[target == 0] = torch.randn(4, 9) * 100
    torch.testing.assert_close(label_smoothed_cross_entropy(changed, target, 0.1, 0)[0], loss)


class FixedLogits(nn.Module):
    """Returns given logits, so the test controls what sits at padding positions."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_task_loss_ignores_pad_positions_and_counts_target_tokens(task: TranslationTask) -> None:
    batch = next(iter(task.train_batches(epoch=0, rank=0, world_size=1)))
    pad = batch.tgt_out.eq(task.tokenizer.pad_id)
    assert pad.any(), "the toy batch should have padded targets"
    vocab = task.tokenizer.tgt_vocab_size
    logits = torch.randn(*batch.tgt_out.shape, vocab)
    out = task.loss(FixedLogits(logits), batch)
    assert out.num_items == int((~pad).sum())
    changed = logits.clone()
    changed[pad] = torch.randn(int(pad.sum()), vocab) * 50
    torch.testing.assert_close(task.loss(FixedLogits(changed), batch).loss, out.loss)
    expected = F.cross_entropy(
        logits.flatten(0, 1), batch.tgt_out.flatten(), label_smoothing=0.1, ignore_index=0
    )
    torch.testing.assert_close(out.loss, expected)


def test_train_batches_budget_determinism_and_learning(task: TranslationTask) -> None:
    batches = list(task.train_batches(epoch=0, rank=0, world_size=1))
    for batch in batches:
        assert batch.src_ids.numel() <= 128 and batch.tgt_in.numel() <= 128
    assert sum(len(b.src_ids) for b in batches) == 200
    again = list(task.train_batches(epoch=0, rank=0, world_size=1))
    assert all(torch.equal(a.src_ids, b.src_ids) for a, b in zip(batches, again, strict=True))
    model = task.build_model()
    optimizer = torch.optim.Adam(task.param_groups(model, 0.0), lr=3e-3)
    first = task.loss(model, batches[0]).loss.item()
    for _ in range(15):
        optimizer.zero_grad()
        task.loss(model, batches[0]).loss.backward()
        optimizer.step()
    assert task.loss(model, batches[0]).loss.item() < first - 0.5


def test_param_groups_exclude_embeddings_norms_and_biases(task: TranslationTask) -> None:
    model = task.build_model()
    decay, no_decay = task.param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model.src_embed.weight) in no_decay_ids
    assert id(model.encoder.blocks[0].norm1.weight) in no_decay_ids
    assert all(p.ndim == 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_evaluate_scores_and_writes_hypotheses(task: TranslationTask, tmp_path: Path) -> None:
    model = task.build_model()
    scores = task.evaluate(model, "test")
    assert {"bleu", "bleu_lc", "chrf"} <= set(scores)
    hyps = (tmp_path / "run" / "eval" / "test.hyp.txt").read_text().split("\n")
    assert len(hyps) == 11 and hyps[-1] == ""  # 10 lines, each newline-terminated
    report = json.loads((tmp_path / "run" / "eval" / "test.scores.json").read_text())
    assert report["scores"] == scores
    assert any("nrefs:1" in line and "case:lc" in line for line in report["lines"])
    assert model.training, "evaluate restores the model's training mode"


def test_rnn_baseline_is_a_model_choice(tmp_path: Path) -> None:
    task = TranslationTask(make_config(tmp_path, arch="rnn"))
    task.prepare(tmp_path / "run")
    model = task.build_model()
    batch = next(iter(task.train_batches(0, 0, 1)))
    assert torch.isfinite(task.loss(model, batch).loss)
    assert set(task.evaluate(model, "val")) >= {"bleu", "chrf"}


def test_tie_all_needs_a_joint_vocabulary(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.data.joint_vocab = False
    config.model.tie_embeddings = "all"
    task = TranslationTask(config)
    task.prepare(tmp_path / "run")
    with pytest.raises(UserError, match="data.joint_vocab"):
        task.build_model()


# --- translate -------------------------------------------------------------------------


@pytest.fixture()
def translator(task: TranslationTask) -> Translator:
    # A few steps of training make outputs differ between inputs, so misalignment would show.
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for batch in list(task.train_batches(0, 0, 1)) * 3:
        optimizer.zero_grad()
        task.loss(model, batch).loss.backward()
        optimizer.step()
    decode = DecodeConfig(beam=1, max_len_a=0.0, max_len_b=4, max_tokens=16)
    return Translator(model, task.tokenizer, decode)


def test_translate_keeps_alignment_with_empty_blank_and_long_lines(translator: Translator) -> None:
    lines = ["a man runs", "", "   \t ", "dog " * 25_000, "the red cat", ""]
    out = translator.translate(lines)
    assert len(out) == len(lines)
    assert out[1] == out[2] == out[5] == ""
    # Each line's translation does not depend on its neighbours (order is kept).
    assert out[0] == translator.translate(["a man runs"])[0]
    assert out[4] == translator.translate(["the red cat"])[0]
    assert len({out[0], out[3], out[4]}) > 1, "a trained model answers inputs differently"
    nbest = translator.translate(lines[:3], beam=3, nbest=2)
    assert [len(h) for h in nbest] == [2, 2, 2] and nbest[1] == ["", ""]


def test_translate_streams_as_it_goes(translator: Translator) -> None:
    consumed = []

    def source() -> Iterator[str]:
        for i, line in enumerate(sentences(40, 5)):
            consumed.append(i)
            yield line

    stream = translator.translate_stream(source(), max_tokens=4)
    next(stream)
    assert len(consumed) < 40, "the first line came out before the whole input was read"
    assert len(list(stream)) == 39


def test_translate_decodes_under_the_asked_autocast(translator: Translator) -> None:
    seen: list[bool] = []
    decode = translator.model.decode

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(torch.is_autocast_enabled("cpu"))
        return decode(*args, **kwargs)

    translator.model.decode = spy  # type: ignore[method-assign]
    outputs = {}
    for precision in ("fp32", "bf16"):
        seen.clear()
        translator.precision = precision
        outputs[precision] = translator.translate(["a man runs", "the red cat"])
        assert seen and all(on == (precision == "bf16") for on in seen), precision
    assert all(outputs["bf16"]), "bf16 decoding translates too"
    with pytest.raises(UserError, match="precision='half': expected one of auto, fp32"):
        Translator(translator.model, translator.tokenizer, precision="half")
    translator.precision = "fp16"
    with pytest.raises(UserError, match="'fp16' needs CUDA"):
        translator.translate(["a man runs"])


def run_translate(tmp_path: Path, translator: Translator, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers())
    args = parser.parse_args(["translate", str(tmp_path), *argv])
    return args.func(args)


def test_translate_command_writes_one_line_per_input_line(
    translator: Translator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Translator, "from_pretrained", classmethod(lambda *a, **k: translator))
    lines = ["a man runs", "", "  ", "the big dog sits on the park"]
    (tmp_path / "in.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    out = tmp_path / "out.txt"
    assert (
        run_translate(tmp_path, translator, "--input", str(tmp_path / "in.txt"), "-o", str(out))
        == 0
    )
    assert out.read_text().split("\n") == [*translator.translate(lines), ""]
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: invalid UTF-8"):
        run_translate(tmp_path, translator, "--input", str(tmp_path / "bad.txt"), "-o", str(out))


def test_ctrl_c_leaves_every_finished_line_on_disk(
    translator: Translator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = sentences(30, 6)

    def interrupted(path: str | None) -> Iterator[str]:
        yield from lines[:20]
        raise KeyboardInterrupt

    monkeypatch.setattr(Translator, "from_pretrained", classmethod(lambda *a, **k: translator))
    monkeypatch.setattr(commands, "_input_lines", interrupted)
    out = tmp_path / "out.txt"
    assert run_translate(tmp_path, translator, "--max-tokens", "4", "-o", str(out)) == 130
    written = out.read_text().split("\n")[:-1]
    assert 10 <= len(written) <= 20
    assert written == translator.translate(lines[: len(written)])


@pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"Multi30k not found at {MULTI30K}")
def test_multi30k_prepare_filter_and_batches(tmp_path: Path) -> None:
    config = TranslationConfig(
        data=TranslationDataConfig(
            path=str(MULTI30K), train_split="val", vocab_size=400, cache_dir=str(tmp_path / "c")
        )
    )
    task = TranslationTask(config)
    task.prepare(tmp_path / "run")
    examples = task.training_examples()
    assert 1000 <= len(examples) <= 1014
    assert sum(len(b.src_ids) for b in task.train_batches(0, 0, 1)) == len(examples)


def make_marian_dir(folder: Path) -> None:
    """A tiny random opus-mt-like directory: Marian weights plus a MarianTokenizer."""
    transformers = pytest.importorskip("transformers")
    from tasks.translation.tokenizer import SentencePieceTokenizer, SpmSettings

    spm = SentencePieceTokenizer.train(
        sentences(80, 7), sentences(80, 8), SpmSettings(vocab_size=40)
    )
    folder.mkdir()
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes(spm._protos[0])
    vocab = {spm.source.id_to_piece(i): i for i in range(spm.src_vocab_size)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    files = {
        k: str(folder / v)
        for k, v in [
            ("source_spm", "source.spm"),
            ("target_spm", "target.spm"),
            ("vocab", "vocab.json"),
        ]
    }
    tokenizer = transformers.MarianTokenizer(**files)
    tokenizer.save_pretrained(folder)
    config = transformers.MarianConfig(
        vocab_size=len(vocab),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.MarianMTModel(config).save_pretrained(folder)


def test_translator_from_a_marian_directory(tmp_path: Path) -> None:
    make_marian_dir(tmp_path / "marian")
    translator = Translator.from_pretrained(tmp_path / "marian", device="cpu")
    translator.decode = DecodeConfig(beam=1, max_len_a=0.0, max_len_b=5)
    lines = ["a man runs", "", "the red dog sits"]
    out = translator.translate(lines)
    assert len(out) == 3 and out[1] == "" and out[0] and "▁" not in out[0]
    assert out[2] == translator.translate([lines[2]])[0]
    assert translator.model.config.bos_id == translator.model.config.pad_id  # Marian starts at pad


def test_from_pretrained_rejects_a_folder_that_is_neither(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="neither a translation run directory"):
        Translator.from_pretrained(tmp_path)
    with pytest.raises(UserError, match="no such run directory"):
        Translator.from_pretrained(tmp_path / "absent")


def test_trained_run_directory_translates_and_averages(tmp_path: Path) -> None:
    from unitransformer.engine import Trainer

    config = make_config(tmp_path)
    config.train = type(config.train)(max_steps=4, checkpoint_every=2, log_every=2, device="cpu")
    config.train.precision = "fp32"
    config.eval.every, config.eval.average_last = 0, 2
    task = TranslationTask(config)
    Trainer(task, config, tmp_path / "run").fit()
    assert (tmp_path / "run" / "eval" / "val.hyp.txt").exists()
    for which in ("best", "averaged"):
        translator = Translator.from_pretrained(tmp_path / "run", device="cpu", checkpoint=which)
        assert translator.translate(["a man runs", ""], beam=1)[1] == ""
        assert translator.precision == "fp32", "the run's own train.precision, as evaluate"
    translator = Translator.from_pretrained(tmp_path / "run", device="cpu", precision="bf16")
    assert translator.precision == "bf16"


def test_evaluate_overrides_change_decoding_only(tmp_path: Path, capsys) -> None:
    import yaml

    from tasks import cli
    from unitransformer.engine.loader import config_to_dict

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(make_config(tmp_path))))
    run = str(tmp_path / "run")
    train = ["train", str(config), "train.max_steps=1", "train.tensorboard=false", "--run-dir", run]
    assert cli.main(train) == 0
    argv = ["evaluate", run, "--split", "test", "--checkpoint", "last"]
    assert cli.main([*argv, "decode.beam=1", "decode.length_penalty=0.5"]) == 0
    report = json.loads((tmp_path / "run" / "eval" / "test.scores.json").read_text())
    assert report["decode"]["beam"] == 1 and report["decode"]["length_penalty"] == 0.5
    assert "beam: 2" in (tmp_path / "run" / "config.yaml").read_text()  # the run is untouched
    capsys.readouterr()
    # What was trained cannot change; a misspelled key gets the closest valid one.
    assert cli.main([*argv, "model.dim=64"]) == 2
    assert (
        "only these keys can be overridden here: decode, train.precision" in capsys.readouterr().err
    )
    assert cli.main([*argv, "decode.lenght_penalty=2"]) == 2
    assert "did you mean 'decode.length_penalty'" in capsys.readouterr().err
