"""`Translator`: a trained run directory (or an opus-mt Marian model) turned into a function
from lines of text to lines of text, streaming in token-budget chunks and keeping line order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from tasks.translation.batching import pad_sequences, token_batches
from tasks.translation.config import DecodeConfig
from unitransformer.engine.runtime import PRECISIONS, autocast, check_precision
from unitransformer.errors import UserError

__all__ = ["MarianTokenizerAdapter", "SourceTokenizer", "Translator", "decode_sources"]


class SourceTokenizer(Protocol):
    """What a `Translator` needs of a tokenizer."""

    def encode_source(self, text: str) -> list[int]:
        """Source ids of ``text`` (ending with eos)."""
        ...

    def decode_target(self, ids: Sequence[int]) -> str:
        """Detokenized text of target ids."""
        ...


class MarianTokenizerAdapter:
    """A ``transformers.MarianTokenizer`` seen as a `SourceTokenizer`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def encode_source(self, text: str) -> list[int]:
        """The Marian source ids (the tokenizer appends eos)."""
        return list(self.tokenizer(text)["input_ids"])

    def decode_target(self, ids: Sequence[int]) -> str:
        """Detokenized text, special tokens dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def source_limit(model: nn.Module, decode: DecodeConfig) -> int:
    """Most source tokens a model is given; longer sources are truncated (documented policy).

    Learned positions end at ``max_len``, so the output limit ``a * S + b`` must fit too.
    """
    config = getattr(model, "config", None)
    max_len = int(getattr(config, "max_len", 1024))
    if getattr(config, "positions", "sinusoidal") == "learned":
        max_len = min(max_len, int((max_len - 1 - decode.max_len_b) / max(decode.max_len_a, 1e-6)))
    return max(max_len, 2)


@torch.no_grad()
def decode_sources(
    model: nn.Module, sources: Sequence[list[int]], decode: DecodeConfig, nbest: int = 1
) -> list[list[list[int]]]:
    """The ``nbest`` best target-token lists of each source, in the order of ``sources``.

    Sources are grouped by length into batches of at most ``decode.max_tokens`` padded tokens;
    ``decode.beam == 1`` with ``nbest == 1`` is greedy decoding.
    """
    from unitransformer.decoding import beam_search, greedy_decode

    device = next(model.parameters()).device
    pad_id = model.config.pad_id
    results: list[list[list[int]]] = [[] for _ in sources]
    budget = max(decode.max_tokens, max((len(s) for s in sources), default=1))
    lengths = dict(max_len_a=decode.max_len_a, max_len_b=decode.max_len_b)
    for indices in token_batches([len(s) for s in sources], budget, shuffle=False):
        src_ids = pad_sequences([sources[i] for i in indices], pad_id).to(device)  # [B, S]
        if decode.beam == 1 and nbest == 1:
            found = [[tokens] for tokens in greedy_decode(model, src_ids, **lengths)]
        else:
            beams = beam_search(
                model,
                src_ids,
                max(decode.beam, nbest),
                nbest=nbest,
                length_penalty=decode.length_penalty,
                **lengths,
            )
            found = [[h.tokens for h in hyps] for hyps in beams]
        for i, hyps in zip(indices, found, strict=True):
            results[i] = hyps
    return results


class Translator:
    """Translates lines of text with a model and its tokenizer.

    Args:
        model: A model with the encode/decode surface (`Seq2SeqTransformer`, the RNN).
        tokenizer: Encodes sources and detokenizes outputs.
        decode: Beam size, length limits and batch budget (defaults of `DecodeConfig`).
        precision: ``auto`` (bf16 autocast where the hardware multiplies bf16 natively, as
            ``train.precision: auto`` does), ``fp32``, ``bf16`` or ``fp16`` (CUDA only).

    Raises:
        UserError: An unknown ``precision``, or fp16 off CUDA.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: SourceTokenizer,
        decode: DecodeConfig | None = None,
        precision: str = "auto",
    ) -> None:
        if precision not in PRECISIONS:
            # The value only: fp16 is checked against the device when decoding (models move).
            check_precision(precision, torch.device("cpu"), "precision")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.decode = decode or DecodeConfig()
        self.precision = precision

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        device: str = "auto",
        checkpoint: str = "best",
        precision: str | None = None,
    ) -> Translator:
        """A run directory of `unitransformer train`, or an opus-mt (Marian) model directory or
        hub name (read through `unitransformer.interop`).

        Args:
            source: The run directory, Marian directory or hub name.
            device: A torch device name; ``auto`` is CUDA when present, else the CPU.
            checkpoint: Which weights of a run directory (``best``, ``last``, ``averaged``...).
            precision: See the class; None takes a run's ``train.precision``, so that
                ``translate`` decodes as ``evaluate`` scored (``auto`` for Marian models).

        Raises:
            UserError: If ``source`` is neither, or its files cannot be read.
        """
        path = Path(source)
        if (path / "tokenizer" / "tokenizer.json").exists():
            from tasks.translation.task import TranslationTask

            task, model = TranslationTask.from_run_dir(path, checkpoint)
            translator = cls(
                model,
                task.tokenizer,  # type: ignore[arg-type]
                task.config.decode,
                precision or task.config.train.precision,
            )
        else:
            translator = cls._from_marian(str(source), precision or "auto")
        translator.model.to(_device(device))
        return translator

    @classmethod
    def _from_marian(cls, source: str, precision: str) -> Translator:
        from unitransformer.interop import load_pretrained_marian

        path = Path(source).expanduser()
        # Hub names look like "Helsinki-NLP/opus-mt-en-de"; anything else is a local path.
        if not path.exists() and (source.startswith(("/", ".", "~")) or source.count("/") > 1):
            raise UserError(f"{source}: no such run directory or Marian model directory")
        if path.exists() and not (path / "config.json").exists():
            raise UserError(
                f"{source}: neither a translation run directory (no tokenizer/tokenizer.json) "
                "nor a Marian model directory (no config.json)"
            )
        model = load_pretrained_marian(source)
        try:
            from transformers import MarianTokenizer

            tokenizer = MarianTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise UserError(f"{source}: could not load the Marian tokenizer ({error})") from None
        decode = DecodeConfig(beam=4, length_penalty=1.0)
        return cls(model, MarianTokenizerAdapter(tokenizer), decode, precision)

    def translate_stream(
        self,
        lines: Iterable[str],
        *,
        beam: int | None = None,
        nbest: int = 1,
        max_tokens: int | None = None,
    ) -> Iterator[list[str]]:
        """Yields the ``nbest`` translations of each line, in order, as soon as its chunk is done.

        Memory stays bounded: lines are read a chunk (a few batches' worth of tokens) at a time.
        An empty or whitespace-only line yields empty strings without touching the model; a line
        longer than the model's positions is truncated to `source_limit` tokens.
        """
        decode = replace(
            self.decode,
            beam=beam if beam is not None else self.decode.beam,
            max_tokens=max_tokens if max_tokens is not None else self.decode.max_tokens,
        )
        if decode.beam < 1 or nbest < 1 or decode.max_tokens < 1:
            raise UserError(
                f"beam, nbest and max_tokens must be >= 1; got {decode.beam}, "
                f"{nbest} and {decode.max_tokens}"
            )
        check_precision(self.precision, self.device, "precision")
        limit = source_limit(self.model, decode)
        chunk: list[list[int]] = []
        tokens = 0
        for line in lines:
            text = line.strip()
            ids = self.tokenizer.encode_source(text) if text else []
            if len(ids) > limit:
                ids = [*ids[: limit - 1], ids[-1]]  # keep the final eos
            chunk.append(ids)
            tokens += len(ids)
            # A chunk of several batches lets length bucketing work within it.
            if tokens >= 4 * decode.max_tokens:
                yield from self._finish(chunk, decode, nbest)
                chunk, tokens = [], 0
        yield from self._finish(chunk, decode, nbest)

    def _finish(
        self, chunk: list[list[int]], decode: DecodeConfig, nbest: int
    ) -> Iterator[list[str]]:
        nonempty = [i for i, ids in enumerate(chunk) if ids]
        # The same autocast as `evaluate` (engine.runtime), so both give the same outputs.
        with autocast(self.device, self.precision):
            found = decode_sources(self.model, [chunk[i] for i in nonempty], decode, nbest)
        outputs = [[""] * nbest for _ in chunk]
        for i, hyps in zip(nonempty, found, strict=True):
            texts = [self.tokenizer.decode_target(tokens) for tokens in hyps]
            outputs[i] = texts + [""] * (nbest - len(texts))
        yield from outputs

    def translate(
        self,
        lines: Iterable[str],
        *,
        beam: int | None = None,
        nbest: int = 1,
        max_tokens: int | None = None,
    ) -> list[str] | list[list[str]]:
        """Translations of ``lines`` in order: one string per line, or with ``nbest > 1`` a list of
        the ``nbest`` best per line (empty strings where the beam found fewer).
        """
        results = list(self.translate_stream(lines, beam=beam, nbest=nbest, max_tokens=max_tokens))
        return [r[0] for r in results] if nbest == 1 else results


def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
