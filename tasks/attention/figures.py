"""The pictures: ViT attention (rollout and per-head), translation alignments, words to patches.

Pure drawing functions over arrays: they know nothing of models or run directories, so they are
easy to test and to reuse. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render straight to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["alignment_figure", "tokens_figure", "vit_attention_figure"]


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _overlay(ax: plt.Axes, image: np.ndarray, heat: np.ndarray, title: str) -> None:
    """Draws ``heat`` (a patch grid) upsampled over ``image`` ``[H, W, 3]`` in 0..1."""
    h, w = image.shape[:2]
    ax.imshow(image, interpolation="nearest")
    # Pixel centres sit on integers: the heat map must cover the same -0.5 .. size - 0.5 box.
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    ax.imshow(heat, cmap="inferno", alpha=0.6, extent=extent, interpolation="bilinear")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def vit_attention_figure(
    image: np.ndarray,
    patch_size: int,
    rollout: np.ndarray,
    cls_attention: np.ndarray,
    path: Path,
    title: str = "",
) -> Path:
    """The image, its patch grid, the rollout overlay, and the class token's attention per head.

    Args:
        image: ``[H, W, 3]`` floats in 0..1 (what the model saw, before normalization).
        patch_size: Side of a patch in pixels.
        rollout: ``[gh, gw]``: attention rollout from the class token to each patch.
        cls_attention: ``[layers, heads, gh, gw]``: the class token's attention to each patch.
        path: Where to write the PNG.
        title: Shown above the figure (e.g. the prediction).
    """
    layers, heads = cls_attention.shape[:2]
    cols = max(heads, 3)
    fig, axes = plt.subplots(
        layers + 1, cols, figsize=(1.8 * cols, 1.8 * (layers + 1)), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(image, interpolation="nearest")
    axes[0, 0].set_title("image", fontsize=8)
    axes[0, 1].imshow(image, interpolation="nearest")
    h, w = image.shape[:2]
    for edge in range(0, max(h, w) + 1, patch_size):
        axes[0, 1].axhline(edge - 0.5, color="white", lw=0.6)
        axes[0, 1].axvline(edge - 0.5, color="white", lw=0.6)
    axes[0, 1].set_title(f"{(h // patch_size) * (w // patch_size)} patches", fontsize=8)
    _overlay(axes[0, 2], image, rollout, "attention rollout")
    for layer in range(layers):
        for head in range(heads):
            _overlay(
                axes[layer + 1, head],
                image,
                cls_attention[layer, head],
                f"layer {layer} head {head}",
            )
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def alignment_figure(
    src_tokens: list[str], tgt_tokens: list[str], cross_attention: np.ndarray, path: Path
) -> Path:
    """Cross-attention alignment heatmaps: per layer with heads averaged, then per head.

    Args:
        src_tokens: Source subword tokens (columns).
        tgt_tokens: Target subword tokens (rows), as predicted.
        cross_attention: ``[layers, heads, len(tgt_tokens), len(src_tokens)]``.
        path: Where to write the PNG.
    """
    layers, heads = cross_attention.shape[:2]
    panels = [(f"layer {i}, heads averaged", cross_attention[i].mean(0)) for i in range(layers)]
    panels += [
        (f"layer {i} head {j}", cross_attention[i, j]) for i in range(layers) for j in range(heads)
    ]
    cols = max(layers, heads)
    rows = math.ceil(len(panels) / cols)
    size = 0.28 * max(len(src_tokens), len(tgt_tokens)) + 1.5
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, weights) in zip(axes.flat, panels, strict=False):
        ax.axis("on")
        ax.imshow(weights, cmap="Blues", vmin=0.0, vmax=max(float(weights.max()), 1e-6))
        ax.set_xticks(range(len(src_tokens)), src_tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tgt_tokens)), tgt_tokens, fontsize=7)
        ax.set_title(title, fontsize=8)
    return _save(fig, path)


def tokens_figure(
    pieces: list[str],
    word_rows: np.ndarray,
    image: np.ndarray,
    patch_size: int,
    patch_rows: np.ndarray,
    path: Path,
) -> Path:
    """From words to patches: both become rows of one token matrix for the same `Encoder`.

    Args:
        pieces: A sentence cut into subword tokens.
        word_rows: ``[len(pieces), dim]``: the embeddings of those tokens (what enters the encoder).
        image: ``[H, W, 3]`` floats in 0..1.
        patch_size: Side of a patch in pixels.
        patch_rows: ``[patches, dim]``: the patch embeddings of that image.
        path: Where to write the PNG.
    """
    h, w = image.shape[:2]
    gh, gw = h // patch_size, w // patch_size
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0, 0]
    ax.axis("off")
    ax.set_title("a sentence, cut into subword tokens", fontsize=9)
    x, y = 0.0, 0.8
    for i, piece in enumerate(pieces):
        width = 0.018 * (len(piece) + 2)  # about one character per 1.8% of the panel
        if x + width > 1.0:  # wrap onto the next line
            x, y = 0.0, y - 0.2
        ax.text(x, y, piece, fontsize=9, ha="left", va="center",
                bbox=dict(boxstyle="round", fc=plt.cm.tab20(i % 20), alpha=0.6))  # fmt: skip
        x += width
    ax = axes[1, 0]
    ax.set_title(f"an image, cut into {gh}x{gw} patches of {patch_size}x{patch_size}", fontsize=9)
    ax.imshow(image, interpolation="nearest")
    for edge in range(0, max(h, w) + 1, patch_size):
        ax.axhline(edge - 0.5, color="white", lw=0.8)
        ax.axvline(edge - 0.5, color="white", lw=0.8)
    ax.axis("off")
    for ax, rows, what in ((axes[0, 1], word_rows, "token"), (axes[1, 1], patch_rows, "patch")):
        ax.imshow(rows, aspect="auto", cmap="coolwarm")
        ax.set_title(
            f"{rows.shape[0]} {what} rows x {rows.shape[1]} dims -> the same Encoder", fontsize=9
        )
        ax.set_xlabel("dim")
        ax.set_ylabel(f"{what} index")
        ax.yaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return _save(fig, path)
