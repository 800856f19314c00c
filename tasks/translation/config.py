"""Typed configuration of the translation task: model, data, decoding, and the engine's parts."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import ClassVar, Literal

from unitransformer.engine.config import EvalConfig, OptimConfig, ScheduleConfig, TrainConfig
from unitransformer.errors import UserError
from unitransformer.models.seq2seq import SEQ2SEQ_SIZES, Seq2SeqConfig

__all__ = [
    "DecodeConfig",
    "TranslationConfig",
    "TranslationDataConfig",
    "TranslationModelConfig",
]


@dataclass
class TranslationModelConfig:
    """The model: a `Seq2SeqTransformer` of a named size, or the RNN baseline.

    Vocabulary sizes and special ids are not set here: they come from the tokenizer.

    Attributes:
        arch: ``transformer`` or ``rnn`` (the lecture's GRU encoder-decoder with attention).
        size: A Transformer size of `SEQ2SEQ_SIZES` (``tiny``, ``small``, ``base``, ``big``).
        dim: Overrides the size's model width.
        encoder_depth: Overrides the size's encoder blocks.
        decoder_depth: Overrides the size's decoder blocks.
        num_heads: Overrides the size's attention heads.
        mlp_dim: Overrides the size's MLP hidden width.
        dropout: Overrides the dropout (Transformer residuals and embeddings; RNN layers).
        attn_dropout: Overrides the dropout on attention probabilities.
        activation_dropout: Overrides the dropout after the MLP activation.
        norm_first: Overrides pre-LN (True) or post-LN (False).
        tie_embeddings: Overrides the sharing of embeddings (``all`` needs a joint vocabulary).
        max_len: Longest sequence (in tokens) the positions cover; longer inputs are truncated.
        rnn_emb_dim: RNN token-embedding width.
        rnn_hidden_dim: RNN hidden width (per direction in the encoder if bidirectional).
        rnn_num_layers: GRU layers of the encoder and of the decoder.
        rnn_bidirectional: A bidirectional RNN encoder.
        rnn_attention: ``additive`` (Bahdanau), ``dot`` or ``general`` (Luong).
    """

    arch: Literal["transformer", "rnn"] = "transformer"
    size: str = "small"
    dim: int | None = None
    encoder_depth: int | None = None
    decoder_depth: int | None = None
    num_heads: int | None = None
    mlp_dim: int | None = None
    dropout: float | None = None
    attn_dropout: float | None = None
    activation_dropout: float | None = None
    norm_first: bool | None = None
    tie_embeddings: Literal["none", "output", "all"] | None = None
    max_len: int = 1024
    rnn_emb_dim: int = 256
    rnn_hidden_dim: int = 256
    rnn_num_layers: int = 1
    rnn_bidirectional: bool = True
    rnn_attention: Literal["additive", "dot", "general"] = "additive"

    def __post_init__(self) -> None:
        if self.size not in SEQ2SEQ_SIZES:
            raise UserError(
                f"model.size: unknown size {self.size!r}; expected one of {sorted(SEQ2SEQ_SIZES)}"
            )

    def seq2seq_config(self, **vocab: int) -> Seq2SeqConfig:
        """The `Seq2SeqConfig` of this size with the overrides and ``vocab`` (sizes, ids) applied."""
        names = {f.name for f in fields(Seq2SeqConfig)}
        overrides = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name in names and getattr(self, f.name) is not None
        }
        return replace(SEQ2SEQ_SIZES[self.size], **overrides, **vocab)


@dataclass
class TranslationDataConfig:
    """Where the parallel data is, how it is filtered, tokenized and batched.

    Attributes:
        source_lang: Source language code (the file suffix, e.g. ``en`` for ``train.en``).
        target_lang: Target language code.
        format: ``text`` (``{prefix}.{lang}`` line-aligned files), ``tsv`` (``{prefix}.tsv``,
            source and target columns), ``jsonl`` (``{prefix}.jsonl``), or ``hf`` (a Hugging Face
            dataset: hub name or local path in ``dataset``).
        path: Folder holding the files (``text``, ``tsv``, ``jsonl``).
        dataset: Hugging Face dataset name or local dataset path (``hf``).
        dataset_config: The dataset's config name, e.g. ``de-en`` for ``wmt14``.
        train_split: Name (file prefix or dataset split) of the training data.
        valid_split: Name of the split evaluated during training (``val``).
        test_split: Name of the split that ``--split test`` scores.
        tsv_columns: Zero-based source and target columns of a TSV line.
        max_len: Drop training pairs with more tokens than this on either side.
        max_ratio: Drop training pairs whose token-length ratio exceeds this.
        spm_model_type: sentencepiece model: ``unigram`` or ``bpe``.
        vocab_size: sentencepiece vocabulary size (per side when not joint).
        joint_vocab: One vocabulary for both languages (needed to tie all embeddings).
        character_coverage: Characters the sentencepiece model covers.
        spm_sentences: Training sentences sentencepiece samples at most.
        cache_dir: Cache of trained sentencepiece models, keyed by data and settings;
            empty: ``~/.cache/unitransformer/spm``.
        max_tokens: Padded tokens per batch (source or target, whichever is longer).
        label_smoothing: Label smoothing of the cross-entropy.
    """

    source_lang: str = "en"
    target_lang: str = "de"
    format: Literal["text", "tsv", "jsonl", "hf"] = "text"
    path: str = "../shared/data/multi30k"
    dataset: str = ""
    dataset_config: str = ""
    train_split: str = "train"
    valid_split: str = "val"
    test_split: str = "test_2016_flickr"
    tsv_columns: tuple[int, int] = (0, 1)
    max_len: int = 256
    max_ratio: float = 3.0
    spm_model_type: Literal["unigram", "bpe"] = "unigram"
    vocab_size: int = 8000
    joint_vocab: bool = True
    character_coverage: float = 1.0
    spm_sentences: int = 1_000_000
    cache_dir: str = ""
    max_tokens: int = 8192
    label_smoothing: float = 0.1


@dataclass
class DecodeConfig:
    """How `evaluate` and `translate` decode.

    Attributes:
        beam: Beam size; 1 is greedy decoding.
        length_penalty: GNMT length-penalty alpha of the beam search.
        max_len_a: Output length limit is ``max_len_a * source_len + max_len_b`` tokens.
        max_len_b: See ``max_len_a``.
        max_tokens: Source tokens per decoding batch.
        max_sentences: Sentences scored during training evaluation at most (0: all).
    """

    beam: int = 5
    length_penalty: float = 1.0
    max_len_a: float = 1.5
    max_len_b: int = 10
    max_tokens: int = 4096
    max_sentences: int = 0


def _default_schedule() -> ScheduleConfig:
    # Vaswani et al.'s schedule: linear warmup, then decay with the inverse square root of the step.
    return ScheduleConfig(name="inverse_sqrt", warmup_steps=4000)


def _default_optim() -> OptimConfig:
    return OptimConfig(name="adam", lr=5e-4, betas=(0.9, 0.98), weight_decay=0.0)


@dataclass
class TranslationConfig:
    """The translation task's whole config (the ``task:`` key of a YAML picks this class)."""

    # What `unitransformer evaluate RUN_DIR key=value` may change: how a model is decoded and
    # run, never what was trained (e.g. a length penalty tuned on the validation set).
    EVALUATE_OVERRIDES: ClassVar[tuple[str, ...]] = ("decode", "train.precision", "train.device")

    task: str = "translation"
    model: TranslationModelConfig = field(default_factory=TranslationModelConfig)
    data: TranslationDataConfig = field(default_factory=TranslationDataConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    optim: OptimConfig = field(default_factory=_default_optim)
    schedule: ScheduleConfig = field(default_factory=_default_schedule)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(metric="bleu", mode="max"))
