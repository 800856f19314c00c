"""Where a training run stands: the loop's resumable state and the data position it keeps.

A checkpoint stores `LoopState` beside the weights and optimizer, so that a resumed run picks
up at the same step, the same batch of the same epoch, the same best score and the same share
of its time budget. `resumable_batches` is the batch stream that keeps that position current.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from unitransformer.engine.task import Task, batches_from
from unitransformer.errors import UserError

__all__ = ["LoopState", "resumable_batches"]


@dataclass
class LoopState:
    """What the loop needs besides the weights and optimizer to resume exactly."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0
    best_value: float | None = None
    best_step: int = -1
    evals_since_best: int = 0
    nonfinite: int = 0
    # Wall-clock seconds of the processes that led to this state (setup, steps, evaluations),
    # summed over resumes: a training budget ("3 hours on this CPU") survives interruptions.
    # Time a killed process spent after its last checkpoint is lost with its steps.
    train_seconds: float = 0.0

    def record_eval(self, value: float, mode: str) -> bool:
        """Records a validation score of this step; True if it is the best so far.

        Args:
            value: The score of ``eval.metric``.
            mode: ``"max"`` (larger is better) or ``"min"``.
        """
        better = self.best_value is None or (
            value > self.best_value if mode == "max" else value < self.best_value
        )
        if better:
            self.best_value, self.best_step, self.evals_since_best = value, self.step, 0
        else:
            self.evals_since_best += 1
        return better


def resumable_batches(state: LoopState, task: Task, rank: int, world_size: int) -> Iterator[Any]:
    """Batches from ``state``'s saved position on, epoch after epoch, advancing the position.

    Args:
        state: Its ``epoch`` and ``batch_index`` say where to start, and are kept current.
        task: Gives each epoch's batches, in an order fixed by the epoch.
        rank: This process's rank.
        world_size: The number of processes.

    Raises:
        UserError: The task gave no batch for a whole epoch.
    """
    while True:
        seen = False
        source = task.train_batches(state.epoch, rank, world_size)
        for batch in batches_from(source, state.batch_index):
            seen = True
            state.batch_index += 1
            yield batch
        if not seen and state.batch_index == 0:
            raise UserError(f"the task gave no training batches for epoch {state.epoch}")
        state.epoch, state.batch_index = state.epoch + 1, 0
