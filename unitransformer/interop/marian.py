"""Hugging Face ``MarianMTModel`` (opus-mt) as our post-LN `Seq2SeqTransformer`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from unitransformer.adapt import load_state_dict_strict, rename_keys
from unitransformer.embeddings import sinusoids
from unitransformer.interop.unsupported import require
from unitransformer.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

__all__ = ["marian_state_dict", "seq2seq_from_marian"]

# Hugging Face's activation names -> ours ("gelu" is the exact erf form in both).
_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "swish",
}

# Marian's names -> ours, after q_proj/k_proj/v_proj are fused into one `qkv`.
_RULES = [
    (r"model\.encoder\.embed_tokens\.", "src_embed."),
    (r"model\.decoder\.embed_tokens\.", "tgt_embed."),
    (r"lm_head\.", "output."),
    (r"model\.(encoder|decoder)\.layers\.(\d+)\.", r"\1.blocks.\2."),
]
_LAYER_RULES = {
    "encoder": [
        ("self_attn.qkv.", "attn.qkv."),
        ("self_attn.out_proj.", "attn.proj."),
        ("self_attn_layer_norm.", "norm1."),
        ("final_layer_norm.", "norm2."),
        ("fc1.", "mlp.fc1."),
        ("fc2.", "mlp.fc2."),
    ],
    "decoder": [
        ("self_attn.out_proj.", "self_attn.proj."),
        ("self_attn_layer_norm.", "norm1."),
        ("encoder_attn.qkv.", "cross_attn.qkv."),
        ("encoder_attn.out_proj.", "cross_attn.proj."),
        ("encoder_attn_layer_norm.", "norm2."),
        ("final_layer_norm.", "norm3."),
        ("fc1.", "mlp.fc1."),
        ("fc2.", "mlp.fc2."),
    ],
}
_QKV = re.compile(r"(.*)\.(q|k|v)_proj\.(weight|bias)$")


def _fuse_qkv(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # Marian's separate q_proj, k_proj, v_proj -> one qkv, stacked q, k, v on the output rows.
    out, parts = {}, {}
    for key, value in state_dict.items():
        match = _QKV.match(key)
        if match is None:
            out[key] = value
        else:
            parts.setdefault((match[1], match[3]), {})[match[2]] = value
    for (prefix, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise KeyError(f"{prefix}: only {sorted(qkv)} of q_proj, k_proj, v_proj {kind}")
        out[f"{prefix}.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def _rename_layer_key(key: str) -> str:
    match = re.match(r"(encoder|decoder)\.blocks\.\d+\.", key)
    if match is None:
        return key
    head, rest = key[: match.end()], key[match.end() :]
    for old, new in _LAYER_RULES[match[1]]:
        if rest.startswith(old):
            return head + new + rest[len(old) :]
    return key


def marian_state_dict(
    state_dict: Mapping[str, Tensor], tie_embeddings: Literal["none", "output", "all"] = "none"
) -> dict[str, Tensor]:
    """A ``MarianMTModel`` state dict with our key names.

    Sinusoidal position tables are dropped (ours are computed, not stored), as is the
    ``model.shared`` alias of the tied embeddings; ``final_logits_bias [1, V]`` becomes ``[V]``.
    With tied embeddings our state dict names the shared table under each tied key.
    """
    skip = ("model.shared.", "model.encoder.embed_positions.", "model.decoder.embed_positions.")
    kept = {k: v for k, v in state_dict.items() if not k.startswith(skip)}
    out = {_rename_layer_key(k): v for k, v in rename_keys(_fuse_qkv(kept), _RULES).items()}
    if "final_logits_bias" in out:
        out["final_logits_bias"] = out["final_logits_bias"].reshape(-1)
    if tie_embeddings in ("output", "all") and "tgt_embed.weight" in out:
        out["output.weight"] = out["tgt_embed.weight"]
    if tie_embeddings == "all" and "src_embed.weight" in out:
        out["tgt_embed.weight"] = out["output.weight"] = out["src_embed.weight"]
    return out


def _check_supported(model: Any) -> None:
    config, name = model.config, "MarianMTModel"
    for attr in (
        "normalize_before",
        "layernorm_embedding",
        "normalize_embedding",
        "add_final_layer_norm",
    ):
        require(
            not getattr(config, attr, False), name, f"config.{attr}=True (ours is post-LN Marian)"
        )
    for part in (model.model.encoder, model.model.decoder):
        for attr in ("layernorm_embedding", "layer_norm"):
            require(getattr(part, attr, None) is None, name, f"{type(part).__name__}.{attr} exists")
    require(
        config.activation_function in _ACTIVATIONS,
        name,
        f"activation_function={config.activation_function!r}; expected one of {sorted(_ACTIVATIONS)}",
    )
    require(
        config.encoder_attention_heads == config.decoder_attention_heads
        and config.encoder_ffn_dim == config.decoder_ffn_dim,
        name,
        "the encoder and decoder differ in attention heads or ffn_dim (ours share one setting)",
    )
    require(config.d_model % 2 == 0, name, f"odd d_model={config.d_model}")
    # Our positions are computed, not loaded: make sure Marian's table is the one we compute.
    table = model.model.encoder.embed_positions.weight
    rows = min(table.shape[0], 64)
    expected = sinusoids(torch.arange(rows), config.d_model).to(table)
    require(
        torch.allclose(table[:rows].detach().cpu(), expected.cpu(), atol=1e-4),
        name,
        "its position table is not the [sin | cos] sinusoids from position 0",
    )


def _tie_mode(model: Any) -> Literal["none", "output", "all"]:
    # Read the tying off the parameters themselves: configs and loaders disagree on defaults.
    src = model.model.encoder.embed_tokens.weight
    tgt = model.model.decoder.embed_tokens.weight
    output_tied = model.lm_head.weight is tgt
    if output_tied and src is tgt:
        return "all"
    # Shared source/target tables with a separate output layer have no mode of their own:
    # the two tables become equal copies ("none"), which computes the same logits.
    return "output" if output_tied else "none"


def _config(model: Any, tie: Literal["none", "output", "all"]) -> Seq2SeqConfig:
    c, encoder = model.config, model.model.encoder
    norms = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    require(len(norms) == 1, "MarianMTModel", f"LayerNorms with different eps {norms}")
    return Seq2SeqConfig(
        src_vocab_size=encoder.embed_tokens.num_embeddings,
        tgt_vocab_size=model.lm_head.out_features,
        pad_id=c.pad_token_id,
        bos_id=c.decoder_start_token_id,
        eos_id=c.eos_token_id,
        dim=c.d_model,
        encoder_depth=len(encoder.layers),
        decoder_depth=len(model.model.decoder.layers),
        num_heads=c.encoder_attention_heads,
        mlp_dim=c.encoder_ffn_dim,
        activation=_ACTIVATIONS[c.activation_function],
        norm_first=False,
        dropout=c.dropout,
        attn_dropout=c.attention_dropout,
        activation_dropout=c.activation_dropout,
        scale_embedding=not math.isclose(encoder.embed_scale, 1.0),
        positions="sinusoidal",
        max_len=c.max_position_embeddings,
        tie_embeddings=tie,
        final_logits_bias=True,
        qkv_bias=True,
        norm_eps=norms.pop(),
    )


def seq2seq_from_marian(model: Any) -> Seq2SeqTransformer:
    """Our `Seq2SeqTransformer` with the weights and architecture of a ``MarianMTModel``.

    Maps post-LN blocks, ``scale_embedding``, Marian's sinusoidal positions, shared or
    separate decoder embeddings, a tied or untied ``lm_head``, ``final_logits_bias``, the
    activation, and the pad / eos / decoder-start ids (Marian starts decoding from pad).

    Args:
        model: A ``transformers.MarianMTModel``.

    Returns:
        The converted model, in eval mode, on the CPU and in the dtype of ``model``.

    Raises:
        UnsupportedModelError: For configs we cannot represent (pre-LN ``normalize_before``,
            ``layernorm_embedding``, encoder and decoder of different widths, other activations).
    """
    _check_supported(model)
    tie = _tie_mode(model)
    ours = Seq2SeqTransformer(_config(model, tie)).to(dtype=model.lm_head.weight.dtype)
    state = {k: v.detach().cpu() for k, v in marian_state_dict(model.state_dict(), tie).items()}
    load_state_dict_strict(ours, state, "MarianMTModel")
    return ours.eval()
