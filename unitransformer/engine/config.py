"""Typed configuration of the engine's parts, shared by every task's config.

A task's top-level config is a dataclass with a ``task`` name, its own ``model`` and ``data``
parts, and these engine parts as ``optim``, ``schedule``, ``train`` and ``eval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from unitransformer.errors import UserError

__all__ = [
    "ConfigError",
    "ConfigValueError",
    "EvalConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "require",
]


class ConfigError(UserError):
    """A config file or override is wrong: the message names the file or override and the key."""


class ConfigValueError(ConfigError, ValueError):
    """A value out of its allowed range; the loader prefixes the key's full dotted path.

    Attributes:
        key: The field name within its dataclass.
        value: The rejected value.
        expected: What is allowed, in words (e.g. ``"> 0"``).
    """

    def __init__(self, key: str, value: Any, expected: str) -> None:
        super().__init__(f"{key}={value!r} is out of range (expected {expected})")
        self.key = key
        self.value = value
        self.expected = expected


def require(config: object, key: str, ok: bool, expected: str) -> None:
    """Raises `ConfigValueError` for ``config.<key>`` unless ``ok``; for ``__post_init__`` checks.

    Task configs use it too, so every range error reads the same way.
    """
    if not ok:
        raise ConfigValueError(key, getattr(config, key), expected)


@dataclass
class OptimConfig:
    """The optimizer.

    Attributes:
        name: ``adamw``, ``adam``, or ``muon`` (Muon on the hidden weight matrices and
            kernels, AdamW on the rest; `unitransformer.engine.muon`).
        lr: Peak learning rate (Muon's updates are scaled to AdamW's, so one value serves both).
        betas: Adam's beta1 and beta2.
        eps: Adam's epsilon.
        weight_decay: Decoupled weight decay (not applied where the task's groups say so).
        clip_grad_norm: Clip the global gradient norm to this; 0 disables clipping.
        muon_momentum: Muon's Nesterov momentum (``name: muon`` only).
        muon_exclude: Substrings of the names of weight matrices that stay on AdamW under
            ``name: muon``: the output layer, which Muon's method leaves to AdamW.
        muon_precision: The dtype of Muon's Newton-Schulz iterations: ``bf16``, ``fp32``, or
            ``auto``, bf16 when the training runs under bf16 autocast (``train.precision``
            resolved), where bf16 matmuls are fast, else fp32.
    """

    name: Literal["adamw", "adam", "muon"] = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.05
    clip_grad_norm: float = 1.0
    muon_momentum: float = 0.95
    muon_exclude: tuple[str, ...] = ("head", "output")
    muon_precision: Literal["auto", "fp32", "bf16"] = "auto"

    def __post_init__(self) -> None:
        require(self, "lr", self.lr > 0, "> 0")
        require(self, "muon_momentum", 0 <= self.muon_momentum < 1, "in [0, 1)")
        require(self, "betas", all(0 <= b < 1 for b in self.betas), "two values in [0, 1)")
        require(self, "eps", self.eps > 0, "> 0")
        require(self, "weight_decay", self.weight_decay >= 0, ">= 0")
        require(self, "clip_grad_norm", self.clip_grad_norm >= 0, ">= 0 (0 disables clipping)")


@dataclass
class ScheduleConfig:
    """The learning-rate schedule.

    Attributes:
        name: ``cosine`` (warmup, then cosine decay to ``min_lr_ratio * lr``),
            ``inverse_sqrt`` (warmup, then lr * sqrt(warmup / step)), or ``constant`` (after warmup).
        warmup_steps: Linear warmup from 0 to ``lr`` over this many optimizer steps.
        min_lr_ratio: Final learning rate of the cosine schedule, as a fraction of ``lr``.
    """

    name: Literal["cosine", "inverse_sqrt", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        require(self, "warmup_steps", self.warmup_steps >= 0, ">= 0")
        require(self, "min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]")
        if self.name == "inverse_sqrt":
            # lr * sqrt(warmup / step) is undefined without a warmup.
            require(self, "warmup_steps", self.warmup_steps > 0, "> 0 for inverse_sqrt")


@dataclass
class TrainConfig:
    """The training loop.

    Attributes:
        max_steps: Optimizer steps to train for (the budget; epochs follow from the data).
        max_seconds: A time budget, in ``train_seconds`` summed over resumes; 0: none. Training
            stops at the first step past it (or at ``max_steps``, whichever comes first), and
            the cosine schedule decays over whichever of the two runs out first, so the same
            config fills its hours on a slow CPU and stops at ``max_steps`` on a fast GPU.
            The learning rate then depends on the clock: runs are not bit-reproducible.
        grad_accum: Batches per optimizer step.
        precision: ``auto`` (bf16 autocast where the hardware has native bf16 matrix
            multiplies: AVX-512 BF16 or AMX CPUs, Ampere or newer GPUs; fp32 elsewhere),
            ``fp32``, ``bf16`` (autocast, CPU or CUDA) or ``fp16`` (autocast + scaler, CUDA).
        device: ``auto`` (cuda, then mps, then cpu), or a torch device string.
        compile: Wrap the model in ``torch.compile`` (on a CPU without a C++ compiler, a
            warning and eager training instead).
        ema_decay: Keep an exponential moving average of the weights; 0 disables it.
        seed: Seed of everything random: init, data order, dropout, augmentation.
        deterministic: Deterministic algorithms (bit-exact resume and DDP checks on CPU).
        log_every: Optimizer steps between progress lines / metric rows.
        checkpoint_every: Optimizer steps between checkpoints.
        keep_last: Checkpoints kept besides the best one.
        max_nonfinite: Consecutive NaN/Inf losses (steps skipped) before training stops.
        fsdp: Shard the model with FSDP2 (``fully_shard``) under torchrun.
        num_threads: CPU threads for torch; 0 leaves torch's default.
        tensorboard: Also write TensorBoard events (if tensorboard is installed).
    """

    max_steps: int = 1000
    max_seconds: float = 0.0
    grad_accum: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    compile: bool = False
    ema_decay: float = 0.0
    seed: int = 0
    deterministic: bool = False
    log_every: int = 50
    checkpoint_every: int = 500
    keep_last: int = 3
    max_nonfinite: int = 5
    fsdp: bool = False
    num_threads: int = 0
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for key in ("max_steps", "grad_accum", "log_every", "checkpoint_every", "keep_last"):
            require(self, key, getattr(self, key) >= 1, ">= 1")
        require(self, "max_nonfinite", self.max_nonfinite >= 1, ">= 1")
        require(self, "max_seconds", self.max_seconds >= 0, ">= 0 (0: no time budget)")
        require(self, "ema_decay", 0 <= self.ema_decay < 1, "in [0, 1) (0 disables EMA)")
        require(self, "num_threads", self.num_threads >= 0, ">= 0 (0 keeps torch's default)")
        require(self, "seed", self.seed >= 0, ">= 0")


@dataclass
class EvalConfig:
    """Evaluation during training.

    Attributes:
        every: Optimizer steps between evaluations (and at the end); 0: only at the end.
        metric: The metric that picks the best checkpoint (a key of the task's `evaluate`).
        mode: ``max`` if larger is better, else ``min``.
        early_stopping: Stop after this many evaluations without improvement; 0 disables it.
        average_last: At the end, average the last N checkpoints into ``averaged``; 0 disables.
    """

    every: int = 500
    metric: str = "accuracy"
    mode: Literal["max", "min"] = "max"
    early_stopping: int = 0
    average_last: int = 0

    def __post_init__(self) -> None:
        require(self, "every", self.every >= 0, ">= 0 (0: only at the end)")
        require(self, "early_stopping", self.early_stopping >= 0, ">= 0 (0 disables it)")
        require(self, "average_last", self.average_last >= 0, ">= 0 (0 disables it)")
