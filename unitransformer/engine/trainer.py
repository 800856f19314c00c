"""The training loop shared by every task: one short loop over optimizer steps.

The loop knows nothing of words or pixels: the task gives the model, batches, loss and metrics
(`unitransformer.engine.task.Task`). Each step draws ``grad_accum`` batches from
``task.train_batches(epoch, rank, world_size)``, epoch after epoch; the data position saved in
a checkpoint is (epoch, batches consumed in it), and resume skips to it, so that a run killed
at any moment and resumed ends with the same weights as an uninterrupted one. Ctrl-C or SIGTERM
during the loop ends the step under way, writes a checkpoint and returns (`signals`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from unitransformer.engine import checkpoint as ckpt
from unitransformer.engine import distributed as D
from unitransformer.engine.loader import config_to_dict
from unitransformer.engine.monitor import MetricsLog, Progress, format_clock, plot_curves
from unitransformer.engine.optim import EMA, build_optimizer, build_scheduler
from unitransformer.engine.runtime import (
    autocast,
    check_precision,
    compile_model,
    describe_precision,
    move_to,
    seed_everything,
)
from unitransformer.engine.signals import StopSignals
from unitransformer.engine.state import LoopState, resumable_batches
from unitransformer.engine.task import Task
from unitransformer.errors import UserError

__all__ = ["Trainer", "TrainingStoppedError"]

log = logging.getLogger("unitransformer")


class TrainingStoppedError(UserError):
    """Training cannot go on (e.g. too many non-finite losses); the last good checkpoint stays."""


class Trainer:
    """Trains ``task`` as ``config`` says, in ``run_dir``, resuming from its last checkpoint.

    Args:
        task: The task (model, data, loss, metrics).
        config: The task's whole config; the engine reads ``optim``, ``schedule``, ``train``
            and ``eval``.
        run_dir: Where the config, assets, checkpoints and metrics go.
    """

    def __init__(self, task: Task, config: Any, run_dir: str | Path) -> None:
        self.task, self.config, self.run_dir = task, config, Path(run_dir)
        self.tc, self.ec = config.train, config.eval
        self.state = LoopState()
        self.stop_reason = ""
        self.signals = StopSignals()
        self.interrupted: str | None = None  # the signal that stopped the loop
        self._saved_step = self._evaluated_step = -1
        self._spent = 0.0  # the part of train.max_seconds used, agreed by all ranks
        self._clock = time.perf_counter()

    def fit(self) -> dict[str, Any]:
        """Trains to ``train.max_steps``, ``train.max_seconds`` or early stopping; a summary.

        Raises:
            UserError: Unwritable run directory, bad device or precision, bad metric name.
            TrainingStoppedError: ``train.max_nonfinite`` non-finite losses in a row.
        """
        self._clock = time.perf_counter()
        self._setup()
        try:
            spent = self.state.train_seconds  # the checkpoint's: the same on every rank
            if self.state.step >= self.tc.max_steps or self._out_of_time(spent):
                self.progress.message(f"{self.run_dir}: already trained to step {self.state.step}")
                return self._summary()
            with self.signals.installed():
                self._loop()
                self._finish()
            return self._summary()
        finally:
            self.progress.close()
            if self.is_main:
                self.metrics.close()
            if self._own_group:
                D.cleanup_distributed()

    # -- setup -------------------------------------------------------------------------------

    def _setup(self) -> None:
        tc = self.tc
        self.device = D.select_device(tc.device, int(os.environ.get("LOCAL_RANK", 0)))
        self.precision = check_precision(tc.precision, self.device, "train.precision")
        if tc.fsdp and tc.ema_decay > 0:
            raise UserError("train.fsdp=true with train.ema_decay>0 is not supported")
        if tc.fsdp and self.config.optim.name == "muon":  # Muon needs whole matrices, not shards.
            raise UserError("train.fsdp=true with optim.name=muon is not supported")
        self._own_group = not dist.is_initialized()
        self.dist = D.init_distributed(self.device)
        self._own_group = self._own_group and dist.is_initialized()
        self.is_main = self.dist.is_main
        if self.is_main:
            ckpt.ensure_writable(self.run_dir)
            text = yaml.safe_dump(config_to_dict(self.config), sort_keys=False)
            ckpt.atomic_write_text(self.run_dir / ckpt.CONFIG_FILE, text)
        seed_everything(tc.seed, tc.deterministic, tc.num_threads)
        self._prepare_task()
        self._build()
        if self.is_main:  # after the checks of the data and the model, whose errors come first
            log.info("%s", describe_precision(tc.precision, self.device))
        self.metrics = (
            MetricsLog(self.run_dir, self.state.step, tc.tensorboard) if self.is_main else None
        )
        unit = getattr(self.task, "item_name", "items")
        self.progress = Progress(self.state.step, tc.max_steps, unit, enabled=self.is_main)
        if tc.max_seconds:
            self.progress.time_left = lambda: tc.max_seconds - self.state.train_seconds

    def _prepare_task(self) -> None:
        # Rank 0 builds the assets (e.g. trains the tokenizer); the others then load them.
        if self.is_main:
            self.task.prepare(self.run_dir)
        D.barrier()
        if not self.is_main:
            self.task.prepare(self.run_dir)

    def _build(self) -> None:
        tc = self.tc
        self.model = self.task.build_model().to(self.device)
        if self.dist.rank > 0:  # Same init everywhere; different dropout per rank.
            torch.manual_seed(tc.seed + self.dist.rank)
        # Every rank reads the checkpoint: each needs the optimizer state and its RNG stream.
        found = ckpt.latest_checkpoint(self.run_dir)
        if found is not None:
            self.model.load_state_dict(ckpt.load_tensors(found[0]))
        self.wrapped = D.wrap_model(self.model, self.device, self.dist, tc.fsdp)
        groups = self.task.param_groups(self.model, self.config.optim.weight_decay)
        self.optimizer = build_optimizer(groups, self.config.optim, self.model, self.precision)
        spent = (lambda: self._spent) if tc.max_seconds else None
        self.scheduler = build_scheduler(self.optimizer, self.config.schedule, tc.max_steps, spent)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.ema = EMA(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
        if found is not None:
            self._restore(*found)
        self.train_model = compile_model(self.wrapped, self.device) if tc.compile else self.wrapped

    def _restore(self, directory: Path, meta: dict[str, Any]) -> None:
        state = ckpt.load_state(directory)
        D.load_optimizer_state(self.model, self.optimizer, state["optimizer"], self.tc.fsdp)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema.safetensors" in meta["files"]:
                self.ema.load_state_dict(ckpt.load_tensors(directory, "ema"))
            else:
                log.warning("%s has no EMA weights; the average restarts here", directory)
        self.state = LoopState(**state["loop"])
        self._saved_step = self.state.step
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            ckpt.restore_rng(rngs[self.dist.rank])
        else:
            log.warning(
                "resuming on %d processes from %d: RNG streams restart from the seed",
                self.dist.world_size,
                len(rngs),
            )
        log.info("resumed from %s (step %d)", directory, self.state.step)

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        stream = resumable_batches(self.state, self.task, self.dist.rank, self.dist.world_size)
        window: dict[str, float] = {}
        items, t0 = 0, time.perf_counter()
        while self.state.step < self.tc.max_steps and not self.stop_reason:
            result = self._train_step(stream)
            if result is None:
                continue
            step_items, values = result
            items += step_items
            for key, value in values.items():
                window[key] = window.get(key, 0.0) + value
            window["_n"] = window.get("_n", 0.0) + 1
            if self.state.step % self.tc.log_every == 0 or self.state.step == self.tc.max_steps:
                rate = items * self.dist.world_size / max(time.perf_counter() - t0, 1e-9)
                self._log_train(window, rate)
                window, items, t0 = {}, 0, time.perf_counter()
            else:
                self.progress.update(self.state.step, values["loss"], values["lr"], 0.0, False)
            self._after_step()
            self._check_signals()
            if self._out_of_time(self._spent * self.tc.max_seconds):
                self.stop_reason = (
                    f"time budget reached at step {self.state.step}: "
                    f"train.max_seconds={self.tc.max_seconds:g}"
                )

    def _check_signals(self) -> None:
        # Every rank must stop at the same step, whichever of them the signal reached.
        if D.all_reduce_max(float(self.signals.received is not None), self.device) > 0:
            self.interrupted = self.signals.received or "a signal to another rank"
            self.stop_reason = (
                f"stopped by {self.interrupted} at step {self.state.step} with a checkpoint: "
                "the same command resumes"
            )

    def _train_step(self, stream: Iterator[Any]) -> tuple[int, dict[str, float]] | None:
        """One optimizer step over ``grad_accum`` batches; None if it was skipped (NaN/Inf)."""
        accum = self.tc.grad_accum
        self.train_model.train()
        total = torch.zeros((), device=self.device)
        items, logs = 0, {}
        for i in range(accum):
            batch = move_to(next(stream), self.device)
            # Gradients are all-reduced once per optimizer step, on the last micro-batch.
            sync = i == accum - 1 or not isinstance(
                self.wrapped, nn.parallel.DistributedDataParallel
            )
            with contextlib.nullcontext() if sync else self.wrapped.no_sync():
                with autocast(self.device, self.precision):
                    out = self.task.loss(self.train_model, batch)
                loss = out.loss.float() / accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.detach()
            items += out.num_items
            for key, value in out.logs.items():
                logs[key] = logs.get(key, 0.0) + float(value) / accum
        if D.all_reduce_max(float(not torch.isfinite(total)), self.device) > 0:
            self._skip_step()
            return None
        self.state.nonfinite = 0
        grad_norm = self._optimizer_step()
        lr = self.scheduler.get_last_lr()[0]
        if self.tc.max_seconds:  # The slowest rank's clock, so that all stop at the same step.
            self._spent = D.all_reduce_max(self._tick(), self.device) / self.tc.max_seconds
        self.scheduler.step()
        self.state.step += 1
        return items, {"loss": float(total), "lr": lr, "grad_norm": grad_norm, **logs}

    def _optimizer_step(self) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.config.optim.clip_grad_norm
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        return float(norm)

    def _skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        s = self.state
        s.nonfinite += 1
        log.warning(
            "non-finite loss at step %d: step skipped (%d in a row, limit %d)",
            s.step + 1,
            s.nonfinite,
            self.tc.max_nonfinite,
        )
        if s.nonfinite >= self.tc.max_nonfinite:
            last = ckpt.latest_checkpoint(self.run_dir)
            kept = f"last good checkpoint: {last[0]}" if last else "no checkpoint was written"
            raise TrainingStoppedError(
                f"training stopped at step {s.step + 1}: {s.nonfinite} non-finite losses in a row "
                f"(train.max_nonfinite={self.tc.max_nonfinite}); {kept}"
            )

    def _log_train(self, window: dict[str, float], rate: float) -> None:
        n = window.pop("_n")
        values = {k: v / n for k, v in window.items()}
        values["lr"] = window["lr"] / n
        values["items_per_s"] = rate
        values["train_seconds"] = self._tick()
        self.progress.update(self.state.step, values["loss"], values["lr"], rate, True)
        if self.is_main:
            self.metrics.write(self.state.step, "train", values)

    def _after_step(self) -> None:
        step, every = self.state.step, self.ec.every
        improved = False
        if every and step % every == 0 and step < self.tc.max_steps:
            improved = self._evaluate()
        if improved or step % self.tc.checkpoint_every == 0:
            self._save()

    # -- evaluation and checkpoints ----------------------------------------------------------

    def _evaluate(self) -> bool:
        """Evaluates on ``val``, tracks the best, and decides early stopping; True if improved."""
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.precision):
            metrics = self.task.evaluate(self.model, "val")
        self.model.train()
        name = self.ec.metric
        if name not in metrics:
            raise UserError(f"eval.metric={name!r}: the task reports {', '.join(sorted(metrics))}")
        value, s = float(metrics[name]), self.state
        self._evaluated_step = s.step
        if self.is_main:
            self.metrics.write(s.step, "val", metrics)
            shown = "  ".join(f"{k} {float(v):.4f}" for k, v in sorted(metrics.items()))
            elapsed = format_clock(self._tick())
            self.progress.message(f"step {s.step} val: {shown}  ({elapsed} of training)")
        better = s.record_eval(value, self.ec.mode)
        if self.ec.early_stopping and s.evals_since_best >= self.ec.early_stopping:
            self.stop_reason = (
                f"early stopping: {s.evals_since_best} evaluations without improvement"
            )
        return better

    def _save(self) -> None:
        """Writes a checkpoint of this step (rank 0), records the best, prunes old ones."""
        s = self.state
        weights = {"model": D.full_state_dict(self.model, self.tc.fsdp)}
        optimizer = D.optimizer_state(self.model, self.optimizer, self.tc.fsdp)
        rngs = [ckpt.capture_rng()]
        if dist.is_initialized():
            rngs = [None] * self.dist.world_size
            dist.all_gather_object(rngs, ckpt.capture_rng())
        if self.is_main:
            self._tick()
            if self.ema is not None:
                weights["ema"] = self.ema.state_dict()
            state = {
                "loop": vars(s).copy(),
                "optimizer": optimizer,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "rng": rngs,
            }
            directory = ckpt.step_dir(self.run_dir, s.step)
            ckpt.write_checkpoint(directory, weights, state, meta={"step": s.step})
            if s.best_step == s.step:
                record = {"step": s.step, "metric": self.ec.metric, "value": s.best_value}
                ckpt.write_best(self.run_dir, record)
            keep = max(self.tc.keep_last, self.ec.average_last)
            ckpt.prune_checkpoints(self.run_dir, keep, {s.best_step})
        self._saved_step = s.step
        D.barrier()

    def _finish(self) -> None:
        if self.interrupted:  # Quick, as a scheduler's grace period wants: no evaluation.
            if self._saved_step != self.state.step:
                self._save()
            self.progress.message(self.stop_reason)
            return
        # The final evaluation, unless early stopping has just evaluated this very step.
        improved = self._evaluated_step != self.state.step and self._evaluate()
        if improved or self._saved_step != self.state.step:
            self._save()
        if self.stop_reason:
            self.progress.message(self.stop_reason)
        if self.is_main and self.ec.average_last:
            ckpt.average_checkpoints(self.run_dir, self.ec.average_last)
        if self.is_main:
            plot_curves(self.run_dir)

    def _out_of_time(self, seconds: float) -> bool:
        return bool(self.tc.max_seconds) and seconds >= self.tc.max_seconds

    def _tick(self) -> float:
        """Adds the time since the last tick to ``train_seconds`` and returns the total."""
        now = time.perf_counter()
        self.state.train_seconds += now - self._clock
        self._clock = now
        return self.state.train_seconds

    def _summary(self) -> dict[str, Any]:
        s = self.state
        best = {"step": s.best_step, "value": s.best_value} if s.best_value is not None else None
        return {
            "step": s.step,
            "best": best,
            "stopped": self.stop_reason or None,
            "interrupted": self.interrupted,
            "train_seconds": round(self._tick(), 1),
        }
