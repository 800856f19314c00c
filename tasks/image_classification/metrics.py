"""Classification metrics: top-k accuracy, the confusion matrix, per-class accuracy, its plot."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "per_class_accuracy", "plot_confusion_matrix", "topk_correct"]


def topk_correct(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """``[B]`` bool: whether each label is among the ``k`` highest logits ``[B, C]``.

    ``k`` larger than the number of classes counts every prediction as correct.
    """
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices  # [B, k]
    return (top == labels[:, None]).any(dim=-1)


def confusion_matrix(predictions: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``[C, C]`` int64 counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: Tensor) -> Tensor:
    """``[C]`` recall of each class (diagonal over row sums); NaN for a class never seen."""
    totals = confusion.sum(dim=1).double()
    correct = confusion.diagonal().double()
    return torch.where(totals > 0, correct / totals.clamp(min=1), torch.nan)


def plot_confusion_matrix(
    confusion: Tensor, class_names: list[str], path: Path, title: str = "Confusion matrix"
) -> None:
    """Writes the row-normalized confusion matrix as a PNG (atomically: temp file, rename)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file only
    import matplotlib.pyplot as plt

    num_classes = len(class_names)
    rates = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    side = min(max(4.0, 0.45 * num_classes + 2), 30.0)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    if num_classes <= 50:  # beyond that the tick labels are unreadable anyway
        ax.set_xticks(range(num_classes), class_names, rotation=90)
        ax.set_yticks(range(num_classes), class_names)
    if num_classes <= 20:
        for i in range(num_classes):
            for j in range(num_classes):
                count = int(confusion[i, j])
                if count:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
