"""Run-time helpers of the loop: seeds and determinism, moving batches, autocast, evaluation."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unitransformer.engine import distributed as D
from unitransformer.engine.batchnorm import load_for_use
from unitransformer.engine.task import Task
from unitransformer.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "autocast",
    "check_precision",
    "compile_model",
    "evaluate_run",
    "fast_bf16",
    "keep_freed_memory",
    "move_to",
    "resolve_precision",
    "seed_everything",
]


def seed_everything(seed: int, deterministic: bool, num_threads: int = 0) -> None:
    """Seeds Python, NumPy and torch; in deterministic mode, only deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(num_threads)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (CUDA docs, "Reproducibility").
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


# glibc's mallopt() parameters (<malloc.h>).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(limit_mib: int = 1024) -> bool:
    """Makes glibc's malloc keep freed blocks of up to ``limit_mib`` MiB for reuse.

    By default glibc serves each block above a threshold (dynamic, at most 32 MiB) with a fresh
    ``mmap`` and hands memory freed at the top of the heap back to the kernel, so the tensors a
    training or decoding step frees and allocates again come back as new pages that fault on
    first touch: in row 4 of the benchmarks (beam 5, 100 sentences), 227,000 minor faults and a
    fifth of the wall time in the kernel per search, and 1.4x the speed without them. The
    setting is process-wide, like the jemalloc or tcmalloc that PyTorch's CPU tuning guide
    preloads; the command line calls this, library users may. It leaves the process holding
    its peak memory. Skipped when the user tunes malloc through the environment.

    Returns:
        Whether the settings took (False off glibc, or when the environment tunes malloc).
    """
    if not sys.platform.startswith("linux") or limit_mib <= 0:
        return False
    if any(k.startswith("MALLOC_") for k in os.environ) or "malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    limit = min(limit_mib, 2047) * 2**20  # a C int
    trim = mallopt(_M_TRIM_THRESHOLD, limit)
    return bool(mallopt(_M_MMAP_THRESHOLD, limit) and trim)


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested in dicts, lists, tuples) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(move_to(v, device) for v in batch)
    if hasattr(batch, "_fields"):  # A namedtuple rebuilds from positional fields.
        return type(batch)(*(move_to(v, device) for v in batch))
    return batch


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (faster than float32).

    CUDA: compute capability 8.0 or newer (Ampere on). CPU: AVX-512 BF16 or AMX tiles; elsewhere
    bf16 is emulated and slower than fp32, so ``auto`` must not pick it.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        # Private probes of torch.cpu; an older or newer torch without them falls back to fp32.
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` with ``auto`` resolved: bf16 where `fast_bf16`, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if fast_bf16(device) else "fp32"


def describe_precision(precision: str, device: torch.device) -> str:
    """One line for the run's log: the device, the precision it runs in, and why.

    ``auto`` on a CPU without AVX-512 BF16 or AMX falls back to fp32, which is several times
    slower than bf16 on one that has them; the line says so, so that a slow run explains itself.
    """
    resolved = resolve_precision(precision, device)
    text = f"device {device.type}, precision {resolved}"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        text += f", {threads} thread{'s' if threads != 1 else ''}"
        if precision == "auto" and resolved == "fp32":
            text += " (auto: this CPU has no AVX-512 BF16 or AMX, where bf16 would be emulated)"
    return text


# The values of ``train.precision`` (engine.config.TrainConfig) and of `translate --precision`.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_precision(precision: str, device: torch.device, key: str) -> str:
    """``precision`` resolved for ``device`` (see `resolve_precision`).

    Raises:
        UserError: ``precision`` is not one of `PRECISIONS`, or is fp16 off CUDA; the message
            names ``key``, the setting it came from.
    """
    if precision not in PRECISIONS:
        raise UserError(f"{key}={precision!r}: expected one of {', '.join(PRECISIONS)}")
    resolved = resolve_precision(precision, device)
    if resolved == "fp16" and device.type != "cuda":
        raise UserError(f"{key}='fp16' needs CUDA (use bf16 on CPU and MPS)")
    return resolved


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for ``train.precision``: bf16 or fp16 autocast, or nothing for fp32."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def compile_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``torch.compile(model)``, or ``model`` itself where compiling cannot work.

    On a CPU, inductor builds its kernels with a C++ compiler (``$CXX``, else ``g++``, ``c++``
    or ``clang++``). A machine without one would fail at the first step with a long compiler
    traceback, so the run goes on eagerly (1.10x slower on the CIFAR ViT) and says why.
    """
    if device.type == "cpu":
        names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
        if not any(shutil.which(name.split()[0]) for name in names):
            log.warning(
                "train.compile=true: no C++ compiler found (tried %s), which torch.compile "
                "needs on a CPU; training eagerly instead",
                ", ".join(names),
            )
            return model
    # Static shapes: a training run sees a few of them (progressive resizing, a last partial
    # batch), and one specialized graph each beats a shape-generic one.
    return torch.compile(model, dynamic=False)


def evaluate_run(
    task: Task, run_dir: str | Path, which: str = "best", split: str = "val"
) -> dict[str, float]:
    """Evaluates a trained run's ``which`` weights on ``split``, from the run directory alone."""
    task.prepare(Path(run_dir))
    model = task.build_model()
    device = D.select_device(task.config.train.device)
    model.to(device)
    with torch.no_grad(), autocast(device, task.config.train.precision):
        # Averaged weights (ema, averaged) get BatchNorm statistics that fit them.
        load_for_use(task, run_dir, model, which)
        return task.evaluate(model.eval(), split)
