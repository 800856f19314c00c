"""Where a training step of a config spends its time, for recipes side by side.

    .venv/bin/python benchmarks/step_time.py configs/image_classification/cifar10_vit.yaml \\
        --variant "" --variant "model.stem_widths=[32,64,128] model.patch_drop=0.75"

Each ``--variant`` is a space-separated list of dotted overrides ("" is the config as it is).
Every variant builds the task's model, optimizer and EMA as `unitransformer train` does, on the
CPU (the machines this compares recipes for), and times its parts (data, forward, backward,
clipping, optimizer, EMA) over ``--steps`` steps after ``--warmup``, round-robin, so that the
variants share the machine's state (``train.compile=true`` compiles the model, as the trainer
does; its compilation falls in the warm-up steps). The batches are those of epoch ``--epoch``
(default 0): under progressive resizing (``data.low_res_epochs``) the first epochs train on
smaller images, so pass an epoch after them to time the full-size step. The table gives
milliseconds per step and items per second, and each variant's speed relative to the first.
A recipe comparison on one machine, not a peer comparison: prints, writes nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.registry import resolve_task  # noqa: E402
from unitransformer.engine.loader import load_config, read_yaml  # noqa: E402
from unitransformer.engine.optim import EMA, build_optimizer  # noqa: E402
from unitransformer.engine.runtime import (  # noqa: E402
    autocast,
    compile_model,
    keep_freed_memory,
    resolve_precision,
)
from unitransformer.errors import UserError  # noqa: E402

PARTS = ("data", "forward", "backward", "clip", "optimizer", "ema")


class Variant:
    """One recipe: its task, model, optimizer and EMA, and a stream of training batches."""

    def __init__(self, config_path: str, overrides: list[str], epoch: int = 0) -> None:
        data, _ = read_yaml(config_path)
        config_cls, task_cls = resolve_task(data.get("task"), where=config_path)
        self.config = load_config(config_cls, config_path, overrides)
        self.task = task_cls(self.config)
        self.task.prepare(Path(tempfile.mkdtemp(prefix="step_time_")))
        torch.manual_seed(self.config.train.seed)
        self.model = self.task.build_model()
        groups = self.task.param_groups(self.model, self.config.optim.weight_decay)
        decay = self.config.train.ema_decay
        self.ema = EMA(self.model, decay) if decay > 0 else None  # as the trainer: none at 0
        # `train.compile=true` times the compiled forward and backward, as the trainer runs them
        self.device = torch.device("cpu")
        compiled = self.config.train.compile
        self.forward_model = compile_model(self.model, self.device) if compiled else self.model
        self.precision = resolve_precision(self.config.train.precision, self.device)
        self.optimizer = build_optimizer(groups, self.config.optim, self.model, self.precision)
        self.stream = self.task.train_batches(epoch, 0, 1)
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.items = 0

    def step(self, record: bool) -> None:
        """One training step, as the trainer takes it; adds its parts' times if ``record``."""
        marks = [time.perf_counter()]
        batch = next(self.stream)
        marks.append(time.perf_counter())
        with autocast(self.device, self.precision):
            out = self.task.loss(self.forward_model, batch)
        marks.append(time.perf_counter())
        out.loss.float().backward()
        marks.append(time.perf_counter())
        clip = self.config.optim.clip_grad_norm
        params = [p for p in self.model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        marks.append(time.perf_counter())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if self.ema is not None:
            self.ema.update(self.model)
        marks.append(time.perf_counter())
        if record:
            for part, start, end in zip(PARTS, marks, marks[1:], strict=False):
                self.seconds[part] += end - start
            self.items += out.num_items


def table(names: list[str], variants: list[Variant], steps: int) -> str:
    """A markdown table: ms per step of each part, total, items/s, speed against the first."""
    head = "| variant | " + " | ".join(f"{p} ms" for p in PARTS) + " | total ms | items/s | speed |"
    lines = [head, "|---" * (len(PARTS) + 4) + "|"]
    base = None
    for name, v in zip(names, variants, strict=True):
        total = sum(v.seconds.values())
        rate = v.items / total
        base = base or rate
        cells = " | ".join(f"{1000 * v.seconds[p] / steps:.0f}" for p in PARTS)
        lines.append(
            f"| {name or '(the config)'} | {cells} | {1000 * total / steps:.0f} | {rate:.0f} "
            f"| {rate / base:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a training config (YAML)")
    parser.add_argument("--variant", action="append", default=None, help="dotted overrides")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--epoch", type=int, default=0, help="the epoch whose batches are timed")
    args = parser.parse_args(argv)
    keep_freed_memory()
    names = args.variant if args.variant is not None else [""]
    try:
        variants = [Variant(args.config, name.split(), args.epoch) for name in names]
    except UserError as err:  # a bad override or config: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    for i in range(args.warmup + args.steps):
        for v in variants:
            v.step(record=i >= args.warmup)
    info: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    print(f"{args.config}: epoch {args.epoch}, {args.steps} steps after {args.warmup}, {info}")
    print(table(names, variants, args.steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
