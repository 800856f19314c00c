"""The contract between the training engine and a task (translation, image classification).

The engine knows nothing of words or pixels: a task hands it a model, data, a loss and metrics,
and the engine trains, evaluates, checkpoints and resumes. Both tasks implement `Task`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = ["StepOutput", "Task"]


@dataclass
class StepOutput:
    """What a task's loss returns for one batch.

    Attributes:
        loss: The scalar to backpropagate (already averaged as the task wants).
        num_items: What throughput counts: target tokens for translation, images for vision.
        logs: Extra scalars to log (e.g. accuracy of the batch), as Python floats or 0-d tensors.
    """

    loss: Tensor
    num_items: int
    logs: dict[str, float | Tensor] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """A task as the engine sees it. ``config`` is the task's whole typed config dataclass,
    which has the engine's parts as attributes: ``optim``, ``schedule``, ``train``, ``eval``.

    Optionally, a class attribute ``item_name`` (e.g. ``"tokens"``, ``"images"``) names what
    `StepOutput.num_items` counts, for the throughput shown while training.
    """

    config: Any

    def prepare(self, run_dir: Path) -> None:
        """Builds or loads the task's assets (tokenizer, label names) and saves them in
        ``run_dir`` so that `evaluate`, `translate` and `classify` need nothing else.
        """

    def build_model(self) -> nn.Module:
        """A freshly initialized model (the engine loads weights into it when resuming)."""

    def train_batches(self, epoch: int, rank: int, world_size: int) -> Iterable[Any]:
        """The training batches of one epoch for this rank, in a deterministic order that
        depends only on ``epoch`` and the config's seed (so that resume can skip ahead).
        """

    def loss(self, model: nn.Module, batch: Any) -> StepOutput:
        """The training loss of one batch (the model is in train mode)."""

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        """Metrics of ``split`` (model in eval mode, no grad). Must include the metric named
        by ``config.eval.metric``.
        """

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (e.g. no weight decay on norms, biases, embeddings)."""


def batches_from(iterable: Iterable[Any], skip: int) -> Iterator[Any]:
    """Skips the first ``skip`` batches of an epoch (used on resume)."""
    for i, batch in enumerate(iterable):
        if i >= skip:
            yield batch
