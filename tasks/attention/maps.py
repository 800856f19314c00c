"""Attention of trained models, ready to draw: ViT rollout and per-head maps, MT alignments.

The probabilities are recomputed on demand by `record_attention` for the chosen layers only; the
models keep running the fast SDPA kernel everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tasks.attention.figures import alignment_figure, vit_attention_figure
from unitransformer import Seq2SeqTransformer, VisionTransformer
from unitransformer.attention_maps import attention_rollout, record_attention
from unitransformer.decoding import greedy_decode
from unitransformer.errors import UserError

__all__ = [
    "Alignment",
    "ViTAttention",
    "draw_alignment",
    "draw_vit_attention",
    "translation_alignment",
    "vit_attention",
]


@dataclass
class ViTAttention:
    """What a ViT attended to for one image.

    Attributes:
        logits: ``[classes]``.
        rollout: ``[gh, gw]``: rollout from the class token (or all tokens, for mean pooling).
        cls_attention: ``[layers, heads, gh, gw]``: the class token's attention to each patch.
    """

    logits: Tensor
    rollout: np.ndarray
    cls_attention: np.ndarray


@torch.no_grad()
def vit_attention(model: nn.Module, image: Tensor) -> ViTAttention:
    """Runs ``model`` on one preprocessed ``image [3, H, W]`` and collects its attention.

    Raises:
        UserError: When the model is not a `VisionTransformer` (e.g. the ResNet baseline).
    """
    if not isinstance(model, VisionTransformer):
        raise UserError(
            f"attention maps need a ViT run; this run's model is {type(model).__name__}"
        )
    depth = len(model.encoder.blocks)
    names = [f"encoder.blocks.{i}.attn" for i in range(depth)]
    with record_attention(model, names) as maps:
        logits = model(image[None])[0]
    attns = [maps[n].float() for n in names]  # each [1, heads, T, T]
    grid = (image.shape[-2] // model.config.patch_size, image.shape[-1] // model.config.patch_size)
    prefix = model.num_prefix_tokens
    rollout = attention_rollout(attns)[0]  # [T, T]
    if prefix:  # the class token's row: what flowed into the token that is classified
        flow = rollout[0, prefix:]
        per_head = torch.stack([a[0, :, 0, prefix:] for a in attns])  # [L, H, N]
    else:  # mean pooling classifies the average token: average the rows
        flow = rollout.mean(0)
        per_head = torch.stack([a[0].mean(1) for a in attns])
    return ViTAttention(
        logits=logits,
        rollout=flow.reshape(grid).numpy(),
        cls_attention=per_head.reshape(depth, -1, *grid).numpy(),
    )


@dataclass
class Alignment:
    """Cross-attention of a translation.

    Attributes:
        source_pieces: Source subword tokens, eos included.
        target_pieces: Predicted target subword tokens, eos included.
        translation: The detokenized translation.
        cross_attention: ``[layers, heads, len(target_pieces), len(source_pieces)]``.
    """

    source_pieces: list[str]
    target_pieces: list[str]
    translation: str
    cross_attention: np.ndarray


@torch.no_grad()
def translation_alignment(model: nn.Module, tokenizer: object, sentence: str) -> Alignment:
    """Translates ``sentence`` greedily, then records the cross-attention of that translation.

    Raises:
        UserError: When the model is not a `Seq2SeqTransformer` (e.g. the RNN baseline).
    """
    if not isinstance(model, Seq2SeqTransformer):
        raise UserError(
            f"alignment heatmaps need a Transformer run; this run's model is {type(model).__name__}"
        )
    src = torch.tensor([tokenizer.encode_source(sentence)])
    hypothesis = greedy_decode(model, src)[0]
    c = model.config
    tgt_in = torch.tensor([[c.bos_id, *hypothesis]])  # predicts hypothesis + eos
    names = [f"decoder.blocks.{i}.cross_attn" for i in range(c.decoder_depth)]
    with record_attention(model, names) as maps:
        model(src, tgt_in)
    cross = torch.stack([maps[n][0].float() for n in names])  # [L, H, T, S]
    return Alignment(
        source_pieces=[tokenizer.source.id_to_piece(i) for i in src[0].tolist()],
        target_pieces=[tokenizer.target.id_to_piece(i) for i in [*hypothesis, c.eos_id]],
        translation=tokenizer.decode_target(hypothesis),
        cross_attention=cross.numpy(),
    )


def draw_vit_attention(
    attention: ViTAttention, image: Tensor, patch_size: int, class_names: list[str], path: Path
) -> Path:
    """The PNG of `vit_attention_figure` for ``image`` (``uint8 [3, H, W]``, as loaded)."""
    probs = attention.logits.softmax(-1)
    top = int(probs.argmax())
    title = f"predicted {class_names[top]} ({probs[top]:.0%})"
    pixels = image.permute(1, 2, 0).float().numpy() / 255.0
    return vit_attention_figure(
        pixels, patch_size, attention.rollout, attention.cls_attention, path, title
    )


def draw_alignment(alignment: Alignment, path: Path) -> Path:
    """The PNG of `alignment_figure` for one translation."""
    return alignment_figure(
        alignment.source_pieces, alignment.target_pieces, alignment.cross_attention, path
    )
