"""sentencepiece tokenization: trained on the training data, cached, saved in the run directory.

Special ids are the same in every vocabulary: pad 0, unk 1, bos 2, eos 3. A source sentence is
encoded as its pieces followed by eos; a target sentence as its pieces alone (the batch adds bos
to the decoder input and eos to the labels).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import sentencepiece as spm

from unitransformer.errors import UserError

__all__ = ["PAD_ID", "SentencePieceTokenizer", "SpmSettings", "atomic_write_bytes"]

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_META = "tokenizer.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class SpmSettings:
    """How the sentencepiece models are trained (see `TranslationDataConfig`)."""

    model_type: Literal["unigram", "bpe"] = "unigram"
    vocab_size: int = 8000
    joint: bool = True
    character_coverage: float = 1.0
    max_sentences: int = 1_000_000


def _train_model(lines: Sequence[str], settings: SpmSettings) -> bytes:
    """One sentencepiece model trained on ``lines``, as its serialized proto."""
    lines = [line for line in lines if line]
    if not lines:
        raise UserError("the training data has no non-empty lines to train sentencepiece on")
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=writer,
            model_type=settings.model_type,
            vocab_size=settings.vocab_size,
            character_coverage=settings.character_coverage,
            input_sentence_size=settings.max_sentences,
            shuffle_input_sentence=True,
            # A small corpus may not support the requested size: take what it supports.
            hard_vocab_limit=False,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            minloglevel=2,
            num_threads=max(1, min(4, os.cpu_count() or 1)),
        )
    except RuntimeError as error:
        raise UserError(
            f"data.vocab_size={settings.vocab_size}: sentencepiece could not train ({error})"
        ) from None
    return writer.getvalue()


def _processor(proto: bytes) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=proto)


class SentencePieceTokenizer:
    """Source and target sentencepiece models (the same one when the vocabulary is joint).

    Args:
        source_proto: The serialized source model.
        target_proto: The serialized target model; None for a joint vocabulary.
    """

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, source_proto: bytes, target_proto: bytes | None = None) -> None:
        self._protos = (source_proto, target_proto)
        self.source = _processor(source_proto)
        self.target = self.source if target_proto is None else _processor(target_proto)

    @property
    def joint(self) -> bool:
        """Whether source and target share one vocabulary."""
        return self._protos[1] is None

    @property
    def src_vocab_size(self) -> int:
        """Size of the source vocabulary."""
        return self.source.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        """Size of the target vocabulary."""
        return self.target.get_piece_size()

    def encode_source(self, text: str) -> list[int]:
        """The source ids of ``text``: its pieces, then eos."""
        return [*self.source.encode(text), self.eos_id]

    def encode_target(self, text: str) -> list[int]:
        """The target pieces of ``text``, without bos or eos."""
        return self.target.encode(text)

    def decode_target(self, ids: Sequence[int]) -> str:
        """Detokenized text of target ids (specials dropped)."""
        return self.target.decode([i for i in ids if i > EOS_ID])

    @classmethod
    def train(
        cls, source_lines: Sequence[str], target_lines: Sequence[str], settings: SpmSettings
    ) -> SentencePieceTokenizer:
        """Trains on the training data: one model on both sides if joint, else one per side."""
        if settings.joint:
            return cls(_train_model([*source_lines, *target_lines], settings))
        return cls(_train_model(source_lines, settings), _train_model(target_lines, settings))

    def save(self, folder: Path) -> None:
        """Writes the model(s) and a small JSON description to ``folder``, atomically."""
        folder = Path(folder)
        if self.joint:
            atomic_write_bytes(folder / "spm.model", self._protos[0])
        else:
            atomic_write_bytes(folder / "source.model", self._protos[0])
            atomic_write_bytes(folder / "target.model", self._protos[1] or b"")
        meta = {"joint": self.joint, "pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
        atomic_write_bytes(folder / _META, json.dumps(meta, indent=2).encode())

    @classmethod
    def load(cls, folder: Path) -> SentencePieceTokenizer:
        """Reads what `save` wrote.

        Raises:
            UserError: If the folder lacks the files or they are not sentencepiece models.
        """
        folder = Path(folder)
        try:
            meta = json.loads((folder / _META).read_text())
            if meta["joint"]:
                return cls((folder / "spm.model").read_bytes())
            return cls(
                (folder / "source.model").read_bytes(), (folder / "target.model").read_bytes()
            )
        except (OSError, KeyError, json.JSONDecodeError, RuntimeError) as error:
            raise UserError(f"{folder}: not a readable tokenizer folder ({error})") from None

    @classmethod
    def train_cached(
        cls,
        source_lines: Sequence[str],
        target_lines: Sequence[str],
        settings: SpmSettings,
        cache_dir: Path,
    ) -> SentencePieceTokenizer:
        """`train`, unless a model trained on the same lines with the same settings is cached."""
        digest = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
        for lines in (source_lines, target_lines):
            digest.update(b"\x00side\x00")
            for line in lines:
                digest.update(line.encode() + b"\n")
        entry = Path(cache_dir) / digest.hexdigest()[:32]
        if (entry / _META).exists():
            return cls.load(entry)
        tokenizer = cls.train(source_lines, target_lines, settings)
        # An unwritable cache only costs retraining next time; the run still works.
        with contextlib.suppress(OSError):
            tokenizer.save(entry)
        return tokenizer


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/unitransformer/spm`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "unitransformer" / "spm"
