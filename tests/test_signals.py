"""Ctrl-C and SIGTERM stop training after the step under way, with a checkpoint to resume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from engine_toy import ToyConfig, ToyTask

from tasks import cli
from unitransformer.engine import Trainer, load_config
from unitransformer.engine.checkpoint import checkpoint_dirs, load_state, load_tensors
from unitransformer.engine.signals import StopSignals

# Checkpoints far apart (every 100 steps): a checkpoint at the stopping step is the signal's.
BASE = [
    "data.num_examples=32",
    "train.deterministic=true",
    "train.precision=fp32",
    "train.log_every=1",
    "train.checkpoint_every=100",
    "eval.every=3",
    "schedule.warmup_steps=2",
    "train.tensorboard=false",
    "train.max_steps=10",
]


class SignalledTask(ToyTask):
    """The toy task, sending ``signum`` to its own process during the loss of step ``at``."""

    signum, at = signal.SIGTERM, 4

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.calls = 0

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return super().loss(model, batch)


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


def _fit(task_cls: type[ToyTask], run_dir: Path) -> dict:
    config = load_config(ToyConfig, None, BASE)
    return Trainer(task_cls(config), config, run_dir).fit()


def test_sigterm_ends_the_step_saves_it_and_the_resumed_run_matches_a_straight_one(tmp_path):
    straight = _fit(ToyTask, tmp_path / "straight")
    before = signal.getsignal(signal.SIGTERM)
    summary = _fit(SignalledTask, tmp_path / "stopped")
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the trainer's no more
    assert summary["step"] == 4 and summary["interrupted"] == "SIGTERM"
    assert "stopped by SIGTERM at step 4" in summary["stopped"]
    # Step 3's checkpoint holds the best evaluation; step 4's, not due, is the stop's own.
    # The stop skipped the final evaluation.
    saved = checkpoint_dirs(tmp_path / "stopped")
    assert [load_state(d)["loop"]["step"] for d in saved] == [3, 4]
    rows = (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()
    assert [r["step"] for r in map(json.loads, rows) if r["split"] == "val"] == [3]

    resumed = _fit(ToyTask, tmp_path / "stopped")
    assert resumed["step"] == straight["step"] == 10 and resumed["interrupted"] is None
    a = load_tensors(checkpoint_dirs(tmp_path / "straight")[-1])
    b = load_tensors(checkpoint_dirs(tmp_path / "stopped")[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_signal_interrupts_at_once_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGINT)
    signals = StopSignals()
    with pytest.raises(KeyboardInterrupt), signals.installed():
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == "SIGINT"  # the first one only asks
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the second SIGINT did not interrupt")
    assert signal.getsignal(signal.SIGINT) is before


def test_train_exits_with_the_signals_code_after_ctrl_c(tmp_path, monkeypatch, capsys):
    class CtrlC(SignalledTask):
        signum, at = signal.SIGINT, 2

    monkeypatch.setattr(cli, "resolve_task", lambda name, where: (ToyConfig, CtrlC))
    config = tmp_path / "toy.yaml"
    config.write_text("task: toy\n")
    run = tmp_path / "run"
    assert cli.main(["train", str(config), *BASE, "--run-dir", str(run)]) == 130
    out = capsys.readouterr().out
    assert "stopped by SIGINT at step 2" in out and '"interrupted": "SIGINT"' in out
    monkeypatch.setattr(cli, "resolve_task", lambda name, where: (ToyConfig, ToyTask))
    assert cli.main(["train", str(config), *BASE, "--run-dir", str(run)]) == 0
    assert "resuming" in capsys.readouterr().out
