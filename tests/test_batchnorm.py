"""BatchNorm statistics recomputed for averaged weights (EMA, checkpoint averages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from unitransformer.engine import checkpoint as ckpt
from unitransformer.engine.batchnorm import load_for_use, recalibrate_batchnorm
from unitransformer.engine.runtime import evaluate_run
from unitransformer.errors import UserError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.5), nn.Linear(3, 2))


class _Task:
    """Batches whose epoch sets their offset, so that the epoch used can be told apart."""

    config: Any = None

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def train_batches(self, epoch: int, rank: int, world_size: int) -> Any:
        self.epochs.append(epoch)
        g = torch.Generator().manual_seed(epoch)
        for _ in range(50):
            yield torch.randn(16, 4, generator=g) + 10.0 * epoch

    def loss(self, model: nn.Module, batch: Tensor) -> Tensor:
        return model(batch).sum()


def _layer_means(model: nn.Module, batches: list[Tensor]) -> Tensor:
    """The mean of the per-batch means of the BatchNorm layer's input: what it must hold."""
    with torch.no_grad():
        return torch.stack([model[0](b).mean(0) for b in batches]).mean(0)


def test_recalibration_averages_each_batch_equally_and_restores_the_rest() -> None:
    model = _net().eval()
    norm = model[1]
    norm.running_mean.fill_(7.0)
    batches = [torch.randn(16, 4) * 3 + 5 for _ in range(5)]
    rng = torch.get_rng_state()
    used = recalibrate_batchnorm(model, iter(batches), lambda m, b: m(b), num_batches=4)
    assert used == 4
    torch.testing.assert_close(norm.running_mean, _layer_means(model, batches[:4]))
    assert norm.momentum == 0.1  # restored after the cumulative average
    assert not model.training  # back in the mode it came in
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew from a forked stream


def test_recalibration_without_batches_keeps_the_statistics() -> None:
    model = _net()
    model[1].running_mean.fill_(7.0)
    assert recalibrate_batchnorm(model, [], lambda m, b: m(b)) == 0
    assert torch.equal(model[1].running_mean, torch.full((3,), 7.0))
    plain = nn.Sequential(nn.Linear(4, 2))
    assert recalibrate_batchnorm(plain, [torch.randn(2, 4)], lambda m, b: m(b)) == 0


def _run_with_checkpoint(tmp_path: Path, epoch: int) -> tuple[Path, dict[str, Tensor]]:
    weights = _net().state_dict()
    weights["1.running_mean"] = torch.full((3,), 7.0)  # stale, as an average leaves them
    ckpt.write_checkpoint(
        ckpt.step_dir(tmp_path, 40),
        {"model": weights, "ema": weights},
        state={"loop": {"epoch": epoch}},
        meta={"step": 40},
    )
    return tmp_path, weights


@pytest.mark.parametrize("which", ["ema", "last"])
def test_load_for_use_recomputes_only_averaged_weights_on_the_checkpoint_epoch(
    tmp_path: Path, which: str
) -> None:
    run_dir, _ = _run_with_checkpoint(tmp_path, epoch=3)
    task, model = _Task(), _net()
    load_for_use(task, run_dir, model, which)
    if which == "last":  # the model's own statistics are kept
        assert task.epochs == []
        assert torch.equal(model[1].running_mean, torch.full((3,), 7.0))
        return
    assert task.epochs == [3]
    expected = _layer_means(model, list(_Task().train_batches(3, 0, 1))[:32])
    torch.testing.assert_close(model[1].running_mean, expected)
    load_for_use(task, run_dir, model, which, recalibrate=False)
    assert torch.equal(model[1].running_mean, torch.full((3,), 7.0))


def test_evaluate_run_scores_ema_weights_with_recomputed_statistics(tmp_path: Path) -> None:
    run_dir, _ = _run_with_checkpoint(tmp_path, epoch=1)

    class Task(_Task):
        config = type("C", (), {"train": type("T", (), {"device": "cpu", "precision": "fp32"})})

        def prepare(self, run_dir: Path) -> None:
            pass

        def build_model(self) -> nn.Module:
            return _net()

        def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
            return {"mean0": float(model[1].running_mean[0]), "training": float(model.training)}

    scores = evaluate_run(Task(), run_dir, "ema")
    assert scores["mean0"] != pytest.approx(7.0)
    assert scores["training"] == 0.0
    assert evaluate_run(Task(), run_dir, "last")["mean0"] == pytest.approx(7.0)


def test_load_for_use_keeps_averaged_statistics_when_training_data_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir, _ = _run_with_checkpoint(tmp_path, epoch=2)

    class Gone(_Task):
        def train_batches(self, epoch: int, rank: int, world_size: int) -> Any:
            yield from ()
            raise UserError("data.path: /nowhere/train.parquet does not exist")

    model = _net()
    load_for_use(Gone(), run_dir, model, "ema")
    assert torch.equal(model[1].running_mean, torch.full((3,), 7.0))
    assert model[1].momentum == 0.1
    assert "kept as averaged" in caplog.text and "/nowhere/train.parquet" in caplog.text
