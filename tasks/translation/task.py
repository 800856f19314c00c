"""`TranslationTask`: the translation task as the engine sees it (the `Task` protocol)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from tasks.translation.batching import TranslationBatch, collate, token_batches
from tasks.translation.config import TranslationConfig
from tasks.translation.data import Pair, filter_pairs, load_split
from tasks.translation.tokenizer import (
    SentencePieceTokenizer,
    SpmSettings,
    atomic_write_bytes,
    default_cache_dir,
)
from tasks.translation.translator import decode_sources, source_limit
from unitransformer.engine.optim import weight_decay_groups
from unitransformer.engine.task import StepOutput
from unitransformer.errors import UserError
from unitransformer.losses import label_smoothed_cross_entropy

__all__ = ["TranslationConfig", "TranslationTask", "label_smoothed_cross_entropy"]

TOKENIZER_DIR = "tokenizer"
EVAL_DIR = "eval"
Example = tuple[list[int], list[int]]


def _split_name(config: TranslationConfig, split: str) -> str:
    """Maps the engine's generic split names onto the data's split names."""
    aliases = {
        "train": config.data.train_split,
        "val": config.data.valid_split,
        "valid": config.data.valid_split,
        "validation": config.data.valid_split,
        "test": config.data.test_split,
    }
    return aliases.get(split, split)


class TranslationTask:
    """Parallel text in, a `Seq2SeqTransformer` (or the RNN baseline) trained and scored out.

    Args:
        config: The task's whole config.
    """

    def __init__(self, config: TranslationConfig) -> None:
        self.config = config
        self.tokenizer: SentencePieceTokenizer | None = None
        self.run_dir: Path | None = None
        self._train_examples: list[Example] | None = None

    @classmethod
    def from_run_dir(cls, run_dir: Path, which: str = "best") -> tuple[TranslationTask, nn.Module]:
        """The task and trained model of a run directory (for `translate` and the Python API)."""
        from tasks.registry import load_trained

        return load_trained(run_dir, which, expect_task="translation")

    def prepare(self, run_dir: Path) -> None:
        """Loads the run's tokenizer, or trains it on the training data (cached) and saves it."""
        self.run_dir = Path(run_dir)
        folder = self.run_dir / TOKENIZER_DIR
        if (folder / "tokenizer.json").exists():
            self.tokenizer = SentencePieceTokenizer.load(folder)
            return
        data = self.config.data
        pairs = [(s, t) for s, t in load_split(data, data.train_split) if s and t]
        if not pairs:
            where = data.path or data.dataset
            raise UserError(
                f"{where}: the training split {data.train_split!r} ({data.source_lang}-"
                f"{data.target_lang}) has no pair with both sides non-empty"
            )
        settings = SpmSettings(
            model_type=data.spm_model_type,
            vocab_size=data.vocab_size,
            joint=data.joint_vocab,
            character_coverage=data.character_coverage,
            max_sentences=data.spm_sentences,
        )
        cache = Path(data.cache_dir) if data.cache_dir else default_cache_dir()
        self.tokenizer = SentencePieceTokenizer.train_cached(
            [s for s, _ in pairs], [t for _, t in pairs], settings, cache
        )
        self.tokenizer.save(folder)

    def _tokenizer(self) -> SentencePieceTokenizer:
        if self.tokenizer is None:
            raise RuntimeError("TranslationTask.prepare(run_dir) must run first")
        return self.tokenizer

    def build_model(self) -> nn.Module:
        """A fresh Transformer (or RNN) sized to the tokenizer's vocabularies."""
        tok, m = self._tokenizer(), self.config.model
        vocab = dict(
            src_vocab_size=tok.src_vocab_size,
            tgt_vocab_size=tok.tgt_vocab_size,
            pad_id=tok.pad_id,
            bos_id=tok.bos_id,
            eos_id=tok.eos_id,
        )
        if m.arch == "rnn":
            from tasks.translation.rnn import RNNConfig, RNNSeq2Seq

            rnn = RNNConfig(
                **vocab,
                emb_dim=m.rnn_emb_dim,
                hidden_dim=m.rnn_hidden_dim,
                num_layers=m.rnn_num_layers,
                bidirectional=m.rnn_bidirectional,
                attention=m.rnn_attention,
            )
            if m.dropout is not None:
                rnn.dropout = m.dropout
            return RNNSeq2Seq(rnn)
        from unitransformer.models.seq2seq import Seq2SeqTransformer

        config = m.seq2seq_config(**vocab)
        if config.tie_embeddings == "all" and not tok.joint:
            raise UserError(
                "model.tie_embeddings='all' needs one vocabulary: set data.joint_vocab=true "
                "or model.tie_embeddings to 'output' or 'none'"
            )
        return Seq2SeqTransformer(config)

    def _encode(self, pairs: list[Pair]) -> list[Example]:
        tok = self._tokenizer()
        return [(tok.encode_source(s), tok.encode_target(t)) for s, t in pairs]

    def training_examples(self, verbose: bool = False) -> list[Example]:
        """The encoded training pairs that pass the filters (computed once)."""
        if self._train_examples is None:
            data = self.config.data
            pairs = load_split(data, data.train_split)
            encoded = self._encode(pairs)
            # Count the target's eos too: both sides are that long in the batch.
            lengths = [(len(src), len(tgt) + 1) for src, tgt in encoded]
            kept, report = filter_pairs(
                pairs, max_len=data.max_len, max_ratio=data.max_ratio, lengths=lengths
            )
            if verbose:
                print(f"{data.train_split}: {report}", file=sys.stderr)
            if not kept:
                raise UserError(
                    f"data: no training pair of {data.train_split!r} passed the filters"
                )
            self._train_examples = [encoded[i] for i in kept]
        return self._train_examples

    def train_batches(self, epoch: int, rank: int, world_size: int) -> Iterator[TranslationBatch]:
        """Token-budget batches of one epoch for one rank (see `token_batches`)."""
        examples = self.training_examples(verbose=rank == 0 and epoch == 0)
        sizes = [max(len(src), len(tgt) + 1) for src, tgt in examples]
        batches = token_batches(
            sizes,
            self.config.data.max_tokens,
            seed=self.config.train.seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
        )
        tok = self._tokenizer()
        for indices in batches:
            yield collate([examples[i] for i in indices], tok.pad_id, tok.bos_id, tok.eos_id)

    def loss(self, model: nn.Module, batch: TranslationBatch) -> StepOutput:
        """Label-smoothed cross-entropy per target token (padding ignored)."""
        batch = batch.to(next(model.parameters()).device)
        logits = model(batch.src_ids, batch.tgt_in)  # [B, T, V]
        loss, nll, count = label_smoothed_cross_entropy(
            logits.flatten(0, 1),
            batch.tgt_out.flatten(),
            self.config.data.label_smoothing,
            self._tokenizer().pad_id,
        )
        count = max(count, 1)
        return StepOutput(loss / count, num_items=count, logs={"nll": nll.detach() / count})

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        """BLEU, lowercased BLEU and chrF (sacreBLEU, detokenized) of the beam-search output.

        Writes the hypotheses and the scores with their sacreBLEU signatures to
        ``run_dir/eval/{split}.hyp.txt`` and ``{split}.scores.json``, and prints the scores.
        """
        name = _split_name(self.config, split)
        pairs = self.pairs(split)
        limit = self.config.decode.max_sentences
        if limit and split != "test":
            pairs = pairs[:limit]  # a cheap estimate during training; test is always whole
        hypotheses = self.translate_pairs(model, pairs)
        references = [t for _, t in pairs]
        scores, lines = _score(hypotheses, references)
        if self.run_dir is not None:
            out = self.run_dir / EVAL_DIR
            atomic_write_bytes(
                out / f"{name}.hyp.txt", "".join(h + "\n" for h in hypotheses).encode()
            )
            # The decoding settings beside the scores: `evaluate` may override them.
            decode = asdict(self.config.decode)
            report = {"split": name, "scores": scores, "lines": lines, "decode": decode}
            atomic_write_bytes(out / f"{name}.scores.json", json.dumps(report, indent=2).encode())
        print("\n".join(f"{name}: {line}" for line in lines), file=sys.stderr)
        return scores

    def pairs(self, split: str) -> list[Pair]:
        """The (source, reference) pairs of ``split`` (``val``, ``test`` or a split name)."""
        return load_split(self.config.data, _split_name(self.config, split))

    def translate_pairs(self, model: nn.Module, pairs: list[Pair]) -> list[str]:
        """The detokenized beam-search translations of the sources of ``pairs``, in order."""
        tok, decode = self._tokenizer(), self.config.decode
        limit = source_limit(model, decode)
        sources = []
        for source, _ in pairs:
            ids = tok.encode_source(source) if source else []
            sources.append(ids if len(ids) <= limit else [*ids[: limit - 1], tok.eos_id])
        nonempty = [i for i, ids in enumerate(sources) if ids]
        was_training = model.training
        model.eval()
        try:
            found = decode_sources(model, [sources[i] for i in nonempty], decode)
        finally:
            model.train(was_training)
        hypotheses = [""] * len(pairs)
        for i, hyps in zip(nonempty, found, strict=True):
            hypotheses[i] = tok.decode_target(hyps[0])
        return hypotheses

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on weight matrices only: not on biases, norms, embeddings or positions."""
        return weight_decay_groups(model, weight_decay, no_decay=("embed", "positions"))


def _score(hypotheses: list[str], references: list[str]) -> tuple[dict[str, float], list[str]]:
    """The sacreBLEU scores and their printed lines (with signatures)."""
    from sacrebleu.metrics import BLEU, CHRF

    metrics = {"bleu": BLEU(), "bleu_lc": BLEU(lowercase=True), "chrf": CHRF()}
    scores, lines = {}, []
    for key, metric in metrics.items():
        result = metric.corpus_score(hypotheses, [references])
        scores[key] = float(result.score)
        lines.append(f"{result} ({metric.get_signature()})")
    return scores, lines
