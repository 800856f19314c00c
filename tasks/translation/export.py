"""``unitransformer export``: a translation run as a CTranslate2 model directory.

The exported directory holds CTranslate2's ``model.bin``, ``config.json`` and vocabularies, and
the run's sentencepiece model(s) (``spm.model``, or ``source.model`` and ``target.model``) with
their ``tokenizer.json``, so that `SentencePieceTokenizer.load` reads them back. Use it as::

    import ctranslate2, sentencepiece as spm
    translator = ctranslate2.Translator("runs/multi30k_en_de/ctranslate2")
    sp = spm.SentencePieceProcessor(model_file="runs/multi30k_en_de/ctranslate2/spm.model")
    pieces = sp.encode("A dog runs.", out_type=str)      # eos is appended by CTranslate2
    best = translator.translate_batch([pieces], beam_size=5)[0].hypotheses[0]
    print(sp.decode(best))

What maps onto CTranslate2's ``TransformerSpec``: pre-LN (``norm_first``, with the stacks'
final LayerNorm) or post-LN blocks; the activation; token embeddings and their ``sqrt(dim)``
scale; shared or separate embeddings and output layer; ``final_logits_bias``; the LayerNorm
epsilon. Positions are written as an explicit table of ``max_len`` rows: CTranslate2's own
sinusoids use the frequencies ``10000^(-i / (dim/2 - 1))`` (tensor2tensor), ours
``10000^(-2i / dim)`` (Vaswani et al., fairseq, Marian), so its computed table would differ.
Learned positions are a table already. Sources and outputs are limited to ``max_len``
positions, as in our model.

Our decoding never generates padding, nor ``bos`` unless it is also ``eos``; the export makes
the same rule part of the model, as a ``-1e4`` output bias on those ids (no softmax mass left).

Decoding options differ in one place: CTranslate2's ``length_penalty`` divides a score by
``length ** alpha``, ours by the GNMT ``((5 + length) / 6) ** alpha``. The two agree at
``alpha = 0``; CTranslate2's ``max_decoding_length`` counts eos, our length limits do not.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from unitransformer.embeddings import LearnedPositions, SinusoidalPositions, sinusoids
from unitransformer.errors import UserError
from unitransformer.models.seq2seq import Seq2SeqTransformer

__all__ = [
    "BANNED_LOGIT",
    "FORMATS",
    "QUANTIZATIONS",
    "ExportError",
    "add_commands",
    "ctranslate2_spec",
    "export_ctranslate2",
    "export_run",
]

FORMATS = ("ctranslate2",)
QUANTIZATIONS = ("float32", "int8")
# Output bias of the ids our decoding never generates: exp(-1e4) is 0 in every float type, and
# -1e4 stays finite in float16, so CTranslate2's float16 compute types keep it too.
BANNED_LOGIT = -1e4
EXPORT_INFO = "export.json"

# Our activation names -> CTranslate2's `common_spec.Activation` member names.
_ACTIVATIONS = {
    "relu": "RELU",
    "gelu": "GELU",
    "gelu_tanh": "GELUTanh",
    "silu": "SWISH",
    "swish": "SWISH",
}


class ExportError(UserError, ValueError):
    """A model, run directory or output directory that cannot be exported as asked."""


def _ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError:
        raise ExportError(
            "exporting to CTranslate2 needs the ctranslate2 package: pip install ctranslate2"
        ) from None
    return ctranslate2


def _array(tensor: Tensor) -> np.ndarray:
    # float32 whatever the model's dtype: CTranslate2 quantizes from float32 itself.
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy().copy()


def _linear(spec: Any, weight: Tensor, bias: Tensor | None) -> None:
    spec.weight = _array(weight)  # [out, in], the layout of both libraries
    if bias is not None:
        spec.bias = _array(bias)


def _norm(spec: Any, norm: nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _check_model(model: nn.Module) -> Seq2SeqTransformer:
    """The model if CTranslate2 can represent it; else an `ExportError` saying what cannot."""
    if not isinstance(model, Seq2SeqTransformer):
        raise ExportError(
            f"only Seq2SeqTransformer models can be exported to CTranslate2, not "
            f"{type(model).__name__} (the RNN baseline has no CTranslate2 counterpart)"
        )
    c = model.config
    if c.activation not in _ACTIVATIONS:
        raise ExportError(f"activation {c.activation!r} has no CTranslate2 counterpart")
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    if any(m.weight is None or m.bias is None for m in norms):
        raise ExportError("LayerNorms without an affine weight and bias cannot be exported")
    if len({m.eps for m in norms}) > 1:
        raise ExportError(f"LayerNorms with different eps {sorted({m.eps for m in norms})}")
    for stack in (model.encoder, model.decoder):
        # CTranslate2 has a final LayerNorm only in pre-LN stacks (and then optional).
        if isinstance(stack.norm, nn.LayerNorm) and not c.norm_first:
            raise ExportError("a post-LN stack with a final LayerNorm cannot be exported")
    return model


def _positions(model: Seq2SeqTransformer) -> np.ndarray:
    """The position table ``[max_len, dim]``, from position 0 (what CTranslate2 indexes)."""
    positions = model.positions
    if isinstance(positions, LearnedPositions):
        return _array(positions.weight)
    if isinstance(positions, SinusoidalPositions):
        return _array(sinusoids(torch.arange(model.config.max_len), model.config.dim))
    raise ExportError(f"positions of type {type(positions).__name__} cannot be exported")


def _set_encoder(spec: Any, model: Seq2SeqTransformer, positions: np.ndarray) -> None:
    spec.embeddings[0].weight = _array(model.src_embed.weight)
    spec.scale_embeddings = float(model.src_embed.scale)
    spec.position_encodings.encodings = positions
    if model.config.norm_first:
        _norm(spec.layer_norm, model.encoder.norm)
    for layer, block in zip(spec.layer, model.encoder.blocks, strict=True):
        attention = layer.self_attention
        _linear(attention.linear[0], block.attn.qkv.weight, block.attn.qkv.bias)  # fused q, k, v
        _linear(attention.linear[1], block.attn.proj.weight, block.attn.proj.bias)
        _norm(attention.layer_norm, block.norm1)
        _linear(layer.ffn.linear_0, block.mlp.fc1.weight, block.mlp.fc1.bias)
        _linear(layer.ffn.linear_1, block.mlp.fc2.weight, block.mlp.fc2.bias)
        _norm(layer.ffn.layer_norm, block.norm2)


def _output_bias(model: Seq2SeqTransformer) -> np.ndarray:
    c = model.config
    bias = np.zeros(c.tgt_vocab_size, dtype=np.float32)
    if model.final_logits_bias is not None:
        bias = _array(model.final_logits_bias)
    bias[sorted({c.pad_id, c.bos_id} - {c.eos_id})] = BANNED_LOGIT
    return bias


def _set_decoder(spec: Any, model: Seq2SeqTransformer, positions: np.ndarray) -> None:
    spec.embeddings.weight = _array(model.tgt_embed.weight)
    spec.scale_embeddings = float(model.tgt_embed.scale)
    spec.position_encodings.encodings = positions
    if model.config.norm_first:
        _norm(spec.layer_norm, model.decoder.norm)
    for layer, block in zip(spec.layer, model.decoder.blocks, strict=True):
        own, cross = block.self_attn, block.cross_attn
        _linear(layer.self_attention.linear[0], own.qkv.weight, own.qkv.bias)
        _linear(layer.self_attention.linear[1], own.proj.weight, own.proj.bias)
        _norm(layer.self_attention.layer_norm, block.norm1)
        # Cross-attention: CTranslate2 splits the query rows from the fused key-value rows.
        inner = cross.inner_dim
        bias = cross.qkv.bias
        _linear(layer.attention.linear[0], cross.qkv.weight[:inner], _rows(bias, None, inner))
        _linear(layer.attention.linear[1], cross.qkv.weight[inner:], _rows(bias, inner, None))
        _linear(layer.attention.linear[2], cross.proj.weight, cross.proj.bias)
        _norm(layer.attention.layer_norm, block.norm2)
        _linear(layer.ffn.linear_0, block.mlp.fc1.weight, block.mlp.fc1.bias)
        _linear(layer.ffn.linear_1, block.mlp.fc2.weight, block.mlp.fc2.bias)
        _norm(layer.ffn.layer_norm, block.norm3)
    _linear(spec.projection, model.output.weight, torch.from_numpy(_output_bias(model)))


def _rows(bias: Tensor | None, start: int | None, end: int | None) -> Tensor | None:
    return None if bias is None else bias[start:end]


def _check_vocabulary(name: str, tokens: Sequence[str], size: int, required: list[str]) -> None:
    if len(tokens) != size:
        raise ExportError(f"the {name} vocabulary has {len(tokens)} tokens; the model has {size}")
    if len(set(tokens)) != len(tokens):
        raise ExportError(f"the {name} vocabulary has duplicate tokens")
    missing = [t for t in required if t not in tokens]
    if missing:
        raise ExportError(f"the {name} vocabulary lacks {missing}")


def ctranslate2_spec(
    model: nn.Module,
    source_vocabulary: Sequence[str],
    target_vocabulary: Sequence[str],
    unk_token: str = "<unk>",
) -> Any:
    """The CTranslate2 ``TransformerSpec`` of a `Seq2SeqTransformer`, weights set.

    Args:
        model: The model; its config's ``bos_id``, ``eos_id`` and ``pad_id`` pick the special
            tokens out of the vocabularies.
        source_vocabulary: The token string of each source id.
        target_vocabulary: The token string of each target id.
        unk_token: The token CTranslate2 maps unknown input tokens to.

    Returns:
        A validated ``ctranslate2.specs.TransformerSpec`` (not quantized, not saved).

    Raises:
        ExportError: A model CTranslate2 cannot represent, or vocabularies that do not fit it.
    """
    ct2 = _ctranslate2()
    specs = ct2.specs
    m = _check_model(model)
    c = m.config
    bos, eos = target_vocabulary[c.bos_id], target_vocabulary[c.eos_id]
    _check_vocabulary("source", source_vocabulary, c.src_vocab_size, [unk_token, eos])
    _check_vocabulary("target", target_vocabulary, c.tgt_vocab_size, [unk_token])
    activation = getattr(specs.Activation, _ACTIVATIONS[c.activation])
    layers = dict(num_heads=c.num_heads, pre_norm=c.norm_first, activation=activation)
    spec = specs.TransformerSpec(
        specs.TransformerEncoderSpec(c.encoder_depth, **layers),
        specs.TransformerDecoderSpec(c.decoder_depth, **layers),
    )
    positions = _positions(m)
    _set_encoder(spec.encoder, m, positions)
    _set_decoder(spec.decoder, m, positions)
    spec.register_source_vocabulary(list(source_vocabulary))
    spec.register_target_vocabulary(list(target_vocabulary))
    config = spec.config
    config.unk_token, config.bos_token, config.eos_token = unk_token, bos, eos
    config.decoder_start_token = bos
    # Our sources end with eos (`SentencePieceTokenizer.encode_source`): CTranslate2 adds it.
    config.add_source_eos = True
    config.layer_norm_epsilon = next(x.eps for x in m.modules() if isinstance(x, nn.LayerNorm))
    try:
        spec.validate()
    except ValueError as error:
        raise ExportError(f"CTranslate2 refused the model: {error}") from None
    return spec


def export_ctranslate2(
    model: nn.Module,
    output_dir: str | Path,
    source_vocabulary: Sequence[str],
    target_vocabulary: Sequence[str],
    *,
    quantization: str = "float32",
    unk_token: str = "<unk>",
    force: bool = False,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Writes a `Seq2SeqTransformer` as a CTranslate2 model directory.

    The directory is written beside ``output_dir`` and renamed into place, so an interrupted
    export leaves no half-written model.

    Args:
        model: The model (any dtype and device).
        output_dir: The directory to create.
        source_vocabulary: The token string of each source id.
        target_vocabulary: The token string of each target id.
        quantization: ``float32``, or ``int8`` (weights stored as int8, per output row scales).
        unk_token: The token CTranslate2 maps unknown input tokens to.
        force: Replace an existing ``output_dir``.
        write_extra: Writes more files (a tokenizer) into the directory before it is moved
            into place.

    Returns:
        ``output_dir``.

    Raises:
        ExportError: As `ctranslate2_spec`; an unknown quantization; an existing
            ``output_dir`` without ``force``.
    """
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantization!r}; expected one of {list(QUANTIZATIONS)}")
    out = Path(output_dir)
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    spec = ctranslate2_spec(model, source_vocabulary, target_vocabulary, unk_token)
    spec.optimize(quantization=quantization)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        spec.save(str(staging))
        if write_extra is not None:
            write_extra(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _pieces(processor: Any) -> list[str]:
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def export_run(
    run_dir: str | Path,
    output_dir: str | Path | None = None,
    *,
    quantization: str = "float32",
    checkpoint: str = "best",
    force: bool = False,
) -> Path:
    """Exports the Transformer of a translation run directory, with its sentencepiece models.

    Args:
        run_dir: A translation run directory of ``unitransformer train``.
        output_dir: Where to write; ``RUN_DIR/ctranslate2`` (``ctranslate2-int8`` for int8).
        quantization: ``float32`` or ``int8``.
        checkpoint: Which weights: ``best``, ``last``, ``averaged`` or ``ema``.
        force: Replace an existing output directory.

    Returns:
        The output directory.

    Raises:
        ExportError, UserError: Not a translation run, an RNN run, or as `export_ctranslate2`.
    """
    from tasks.translation.task import TranslationTask

    _ctranslate2()  # A missing package is said before minutes of loading.
    run = Path(run_dir)
    suffix = "" if quantization == "float32" else f"-{quantization}"
    out = Path(output_dir) if output_dir is not None else run / f"ctranslate2{suffix}"
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    task, model = TranslationTask.from_run_dir(run, checkpoint)
    tokenizer = task.tokenizer
    unk = tokenizer.source.id_to_piece(tokenizer.unk_id)
    info = {"run_dir": str(run), "checkpoint": checkpoint, "quantization": quantization}
    export_ctranslate2(
        model,
        out,
        _pieces(tokenizer.source),
        _pieces(tokenizer.target),
        quantization=quantization,
        unk_token=unk,
        force=force,
        write_extra=lambda folder: _write_tokenizer(folder, tokenizer, info),
    )
    return out


def _write_tokenizer(folder: Path, tokenizer: Any, info: dict[str, str]) -> None:
    tokenizer.save(folder)  # the sentencepiece model(s) beside the model, to tokenize with
    (folder / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def export_command(args: argparse.Namespace) -> int:
    """Runs ``unitransformer export``."""
    out = export_run(
        args.run_dir,
        args.output,
        quantization=args.quantization,
        checkpoint=args.checkpoint,
        force=args.force,
    )
    print(f"exported {args.run_dir} ({args.checkpoint}, {args.quantization}) to {out}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``export`` to the ``unitransformer`` command line."""
    parser = subparsers.add_parser(
        "export",
        help="export a translation run for another inference engine (CTranslate2)",
        description=(
            "Writes the Transformer of a translation run as a CTranslate2 model directory, with "
            "the run's sentencepiece model(s) beside it. CTranslate2 appends eos to the source "
            "pieces itself; its length_penalty is length**alpha, not GNMT's (equal at 0)."
        ),
    )
    parser.add_argument("run_dir", help="translation run directory of `unitransformer train`")
    parser.add_argument("--format", required=True, choices=FORMATS, help="the target format")
    parser.add_argument("--output", "-o", help="output directory (default: RUN_DIR/ctranslate2)")
    parser.add_argument(
        "--quantization", default="float32", choices=QUANTIZATIONS, help="weight type"
    )
    parser.add_argument("--checkpoint", default="best", choices=["best", "last", "averaged", "ema"])
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.set_defaults(func=export_command)
