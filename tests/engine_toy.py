"""A tiny task for the engine's tests: a 2-layer `Encoder` classifying random fixed sequences.

Run as a script it trains (optionally under a launcher's RANK/WORLD_SIZE environment):
``python tests/engine_toy.py RUN_DIR [key=value ...]``. With ``TOY_CLOCK_TICK=S`` in the
environment the trainer's clock is fake: it moves ``S * (RANK + 1)`` seconds each time it is read,
so ranks disagree about the time by a known factor.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from unitransformer.engine import (
    EvalConfig,
    OptimConfig,
    ScheduleConfig,
    StepOutput,
    TrainConfig,
    Trainer,
    load_config,
    require,
)
from unitransformer.stacks import Encoder


@dataclass
class ToyModelConfig:
    dim: int = 16
    depth: int = 2
    num_heads: int = 2
    dropout: float = 0.1
    num_classes: int = 3


@dataclass
class ToyDataConfig:
    num_examples: int = 64
    seq_len: int = 4
    batch_size: int = 8
    # Seconds of sleep per training batch, so a test can kill the process mid-run.
    sleep: float = 0.0
    # Global batch indices (epoch * batches_per_epoch + i) whose loss is made NaN.
    nan_batches: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        require(self, "batch_size", self.batch_size >= 1, ">= 1")


@dataclass
class ToyConfig:
    task: str = "toy"
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    data: ToyDataConfig = field(default_factory=ToyDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class ToyClassifier(nn.Module):
    def __init__(self, config: ToyModelConfig) -> None:
        super().__init__()
        self.encoder = Encoder(config.dim, config.depth, config.num_heads, dropout=config.dropout)
        self.head = nn.Linear(config.dim, config.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x).mean(dim=1))


class ToyTask:
    item_name = "examples"

    def __init__(self, config: ToyConfig) -> None:
        self.config = config
        g = torch.Generator().manual_seed(1234)
        d, m = config.data, config.model
        self.x = torch.randn(d.num_examples, d.seq_len, m.dim, generator=g)
        self.y = (self.x.sum(dim=(1, 2)) > 0).long() % m.num_classes
        self.prepared: Path | None = None

    def prepare(self, run_dir: Path) -> None:
        labels = Path(run_dir) / "labels.txt"
        if not labels.exists():
            labels.write_text("\n".join(f"class{i}" for i in range(3)) + "\n")
        self.prepared = Path(run_dir)

    def build_model(self) -> nn.Module:
        return ToyClassifier(self.config.model)

    def batches_per_epoch(self, world_size: int = 1) -> int:
        return self.config.data.num_examples // self.config.data.batch_size

    def train_batches(self, epoch: int, rank: int, world_size: int) -> Any:
        d = self.config.data
        order = torch.randperm(d.num_examples, generator=torch.Generator().manual_seed(epoch))
        per_rank = d.batch_size // world_size
        for i in range(self.batches_per_epoch()):
            index = order[i * d.batch_size : (i + 1) * d.batch_size]
            index = index[rank * per_rank : (rank + 1) * per_rank]  # This rank's share.
            bad = epoch * self.batches_per_epoch() + i in d.nan_batches
            yield {"x": self.x[index], "y": self.y[index], "nan": torch.tensor(bad)}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> StepOutput:
        if self.config.data.sleep:
            time.sleep(self.config.data.sleep)
        logits = model(batch["x"])
        loss = nn.functional.cross_entropy(logits, batch["y"])
        if bool(batch["nan"]):
            loss = loss * float("nan")
        accuracy = (logits.argmax(-1) == batch["y"]).float().mean()
        return StepOutput(loss, len(batch["y"]), {"accuracy": accuracy})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        logits = model(self.x)
        loss = nn.functional.cross_entropy(logits, self.y)
        accuracy = (logits.argmax(-1) == self.y).float().mean()
        return {"accuracy": float(accuracy), "loss": float(loss)}

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        decay = [p for p in model.parameters() if p.ndim >= 2]
        rest = [p for p in model.parameters() if p.ndim < 2]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]


def _fake_clock(tick: float) -> None:
    from unitransformer.engine import trainer

    ticks, rate = itertools.count(), tick * (int(os.environ.get("RANK", "0")) + 1)
    trainer.time = SimpleNamespace(perf_counter=lambda: next(ticks) * rate)


def main(argv: list[str]) -> int:
    if os.environ.get("TOY_CLOCK_TICK"):
        _fake_clock(float(os.environ["TOY_CLOCK_TICK"]))
    config = load_config(ToyConfig, None, argv[1:])
    Trainer(ToyTask(config), config, argv[0]).fit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
