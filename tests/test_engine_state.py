"""The loop's resumable state: best-score bookkeeping and the batch stream's position."""

from __future__ import annotations

from itertools import islice
from typing import Any

import pytest

from unitransformer.engine.state import LoopState, resumable_batches
from unitransformer.errors import UserError


class _Epochs:
    """A task stand-in whose epoch ``e`` yields ``(e, 0) .. (e, n - 1)``."""

    def __init__(self, per_epoch: int) -> None:
        self.per_epoch = per_epoch

    def train_batches(self, epoch: int, rank: int, world_size: int) -> Any:
        return [(epoch, i) for i in range(self.per_epoch)]


@pytest.mark.parametrize(
    ("mode", "scores", "best"), [("max", [0.5, 0.7, 0.6], 0.7), ("min", [3.0, 2.0, 2.5], 2.0)]
)
def test_record_eval_keeps_the_best_and_counts_evaluations_since(
    mode: str, scores: list[float], best: float
) -> None:
    state = LoopState()
    verdicts = []
    for step, score in enumerate(scores, start=1):
        state.step = step * 100
        verdicts.append(state.record_eval(score, mode))
    assert verdicts == [True, True, False]
    assert (state.best_value, state.best_step, state.evals_since_best) == (best, 200, 1)


def test_resumable_batches_start_at_the_saved_position_and_roll_over_epochs() -> None:
    state = LoopState(epoch=1, batch_index=2)
    got = list(islice(resumable_batches(state, _Epochs(3), 0, 1), 3))
    assert got == [(1, 2), (2, 0), (2, 1)]
    assert (state.epoch, state.batch_index) == (2, 2)


def test_resumable_batches_reject_a_task_with_an_empty_epoch() -> None:
    with pytest.raises(UserError, match="no training batches for epoch 0"):
        next(resumable_batches(LoopState(), _Epochs(0), 0, 1))
