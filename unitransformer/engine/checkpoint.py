"""Run directories and checkpoints: atomic, checksummed, loadable without executing code.

Layout of a run directory::

    config.yaml                      the resolved config
    <task assets>                    tokenizer, label names... (written by the task)
    metrics.jsonl, metrics.csv       one row per logged value
    tensorboard/, curves.png
    checkpoints/step_00000100/       model.safetensors, ema.safetensors, state.pt, meta.json
    checkpoints/best.json            which step is the best, and its metric
    checkpoints/averaged/            model.safetensors, meta.json

A checkpoint directory is written under a temporary name, each file fsync'ed, then renamed into
place, so a crash never leaves a half-written checkpoint under a real name. ``meta.json`` holds
the SHA-256 of every file: a checkpoint truncated or corrupted later is detected and named, and
the previous good one is used. Weights are safetensors; the rest of the state (optimizer,
scheduler, scaler, RNG, data position) is tensors and plain Python values that
``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from unitransformer.adapt import load_state_dict_strict
from unitransformer.errors import UserError

__all__ = [
    "CheckpointError",
    "average_checkpoints",
    "capture_rng",
    "checkpoint_dirs",
    "ensure_writable",
    "latest_checkpoint",
    "load_weights",
    "read_run_config",
    "restore_rng",
    "verify_checkpoint",
    "write_checkpoint",
]

log = logging.getLogger("unitransformer")
CHECKPOINTS = "checkpoints"
CONFIG_FILE = "config.yaml"


class CheckpointError(UserError):
    """A checkpoint is missing, truncated or corrupted; the message names the file."""


def _fsync_dir(path: Path) -> None:
    # The rename itself is only durable once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file, fsync and `os.replace`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # safetensors refuses tensors sharing storage (tied embeddings): store each one separately.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def write_checkpoint(
    directory: Path,
    weights: dict[str, dict[str, Tensor]],
    state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Writes a checkpoint directory atomically.

    Args:
        directory: Its final path (replaced if it exists).
        weights: ``{"model": state_dict, "ema": state_dict}``, each saved as ``<name>.safetensors``.
        state: Optimizer/scheduler/RNG/position state, saved as ``state.pt``.
        meta: JSON-able facts (step, metric) saved with the checksums in ``meta.json``.
    """
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for name, tensors in weights.items():
            save_file(_plain_tensors(tensors), str(tmp / f"{name}.safetensors"))
        if state is not None:
            torch.save(state, tmp / "state.pt")
        files = sorted(p.name for p in tmp.iterdir())
        for name in files:
            _fsync_file(tmp / name)
        record = {**(meta or {}), "files": {name: sha256(tmp / name) for name in files}}
        atomic_write_text(tmp / "meta.json", json.dumps(record, indent=1))
        _fsync_dir(tmp)
    except OSError as e:
        # A full disk: drop the half-written copy; the previous checkpoints stay as they are.
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"{directory}: cannot write the checkpoint ({e.strerror}); the previous ones are kept"
        ) from None
    old = None
    if directory.exists():  # A directory cannot be os.replace'd onto a non-empty one.
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
    os.replace(tmp, directory)
    _fsync_dir(directory.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """Checks every file of a checkpoint against its recorded SHA-256.

    Returns:
        The checkpoint's ``meta.json``.

    Raises:
        CheckpointError: Naming the missing, truncated or corrupted file.
    """
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{meta_path}: missing or unreadable checkpoint record") from None
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: file of the checkpoint is missing")
        if sha256(path) != digest:
            raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted)")
    return meta


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The step checkpoints of a run, oldest first (temporary leftovers excluded)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")]
    return sorted(dirs, key=lambda p: int(p.name.removeprefix("step_")))


def step_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of optimizer step ``step`` lives."""
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that passes its checksums, warning about each bad newer one."""
    for directory in reversed(checkpoint_dirs(run_dir)):
        try:
            return directory, verify_checkpoint(directory)
        except CheckpointError as e:
            log.warning("skipping a bad checkpoint: %s; trying the previous one", e)
    return None


def load_tensors(directory: Path, name: str = "model") -> dict[str, Tensor]:
    """The tensors of ``<name>.safetensors`` in a checkpoint directory."""
    return load_file(str(directory / f"{name}.safetensors"))


def load_state(directory: Path) -> dict[str, Any]:
    """The training state of a checkpoint; ``weights_only=True`` never executes code."""
    path = directory / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses anything but tensors and plain values: its code never runs.
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain values "
            "(loading them could run code)"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable training state ({e})") from None


def prune_checkpoints(run_dir: Path, keep_last: int, keep: set[int]) -> None:
    """Deletes step checkpoints except the newest ``keep_last`` and the steps in ``keep``."""
    dirs = checkpoint_dirs(run_dir)
    for directory in dirs[: max(len(dirs) - keep_last, 0)]:
        if int(directory.name.removeprefix("step_")) not in keep:
            shutil.rmtree(directory, ignore_errors=True)
    # Half-written copies of a writer that was killed (another process id) are never used.
    own = f"-{os.getpid()}"
    for leftover in (Path(run_dir) / CHECKPOINTS).glob(".step_*"):
        if (".tmp-" in leftover.name or ".old-" in leftover.name) and not leftover.name.endswith(
            own
        ):
            shutil.rmtree(leftover, ignore_errors=True)


def read_best(run_dir: Path) -> dict[str, Any] | None:
    """``checkpoints/best.json`` (step, metric, value), or None before the first evaluation."""
    path = Path(run_dir) / CHECKPOINTS / "best.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_best(run_dir: Path, record: dict[str, Any]) -> None:
    """Records which step is the best, atomically."""
    atomic_write_text(Path(run_dir) / CHECKPOINTS / "best.json", json.dumps(record))


def capture_rng() -> dict[str, Any]:
    """Every RNG state that training consumes, as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restores what `capture_rng` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        ("MT19937", keys, np_state["pos"], np_state["has_gauss"], np_state["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The saved config of a run as a plain mapping.

    Raises:
        UserError: ``run_dir`` is not a run directory (no readable ``config.yaml``).
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError:
        raise UserError(f"{run_dir}: not a run directory (no {CONFIG_FILE} in it)") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: unreadable run config ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def ensure_writable(run_dir: Path) -> None:
    """Creates ``run_dir`` and proves it writable, before any training time is spent.

    Raises:
        UserError: The directory cannot be created or written.
    """
    run_dir = Path(run_dir)
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{run_dir}: run directory is not writable ({e.strerror})") from None


def _weights_dir(run_dir: Path, which: str) -> tuple[Path, str]:
    """The checkpoint directory and file name holding ``which`` weights of a run."""
    run_dir = Path(run_dir)
    if which in ("last", "ema"):
        found = latest_checkpoint(run_dir)
        if found is None:
            raise CheckpointError(f"{run_dir}: no valid checkpoint in {run_dir / CHECKPOINTS}")
        directory, meta = found
        name = "model" if which == "last" else "ema"
        if f"{name}.safetensors" not in meta["files"]:
            raise CheckpointError(f"{directory}: no EMA weights (train.ema_decay was 0)")
        return directory, name
    if which == "best":
        best = read_best(run_dir)
        if best is None:
            raise CheckpointError(f"{run_dir}: no best checkpoint (no evaluation has run)")
        return step_dir(run_dir, int(best["step"])), "model"
    if which == "averaged":
        return run_dir / CHECKPOINTS / "averaged", "model"
    raise UserError(f"unknown checkpoint {which!r} (expected best, last, averaged or ema)")


def load_weights(run_dir: str | Path, model: nn.Module, which: str = "best") -> None:
    """Loads a run's ``best``, ``last``, ``averaged`` or ``ema`` weights into ``model``.

    Raises:
        CheckpointError: The checkpoint is absent or fails its checksums (the file is named).
        StateDictMismatchError: The weights do not fit the model (keys and shapes listed).
    """
    directory, name = _weights_dir(Path(run_dir), which)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no {which} checkpoint in this run")
    verify_checkpoint(directory)
    load_state_dict_strict(model, load_tensors(directory, name), source=str(directory))


def average_checkpoints(run_dir: str | Path, last: int) -> Path:
    """Averages the weights of the newest ``last`` valid checkpoints into ``averaged/``.

    Averaging the last checkpoints of a run (Vaswani et al. 2017) smooths out the noise of
    the final steps. Integer buffers are taken from the newest checkpoint.

    Raises:
        CheckpointError: Fewer than one valid checkpoint.
    """
    run_dir = Path(run_dir)
    valid = []
    for directory in reversed(checkpoint_dirs(run_dir)):
        try:
            valid.append((directory, verify_checkpoint(directory)))
        except CheckpointError as e:
            log.warning("not averaging a bad checkpoint: %s", e)
        if len(valid) == last:
            break
    if not valid:
        raise CheckpointError(f"{run_dir}: no valid checkpoint to average")
    total: dict[str, Tensor] = {}
    for directory, _ in valid:
        for key, value in load_tensors(directory).items():
            if value.is_floating_point():
                total[key] = total.get(key, 0) + value.double()
            else:
                total.setdefault(key, value)
    newest = load_tensors(valid[0][0])
    averaged = {
        k: (v / len(valid)).to(newest[k].dtype) if v.is_floating_point() else v
        for k, v in total.items()
    }
    steps = [int(m.get("step", -1)) for _, m in valid]
    return write_checkpoint(
        run_dir / CHECKPOINTS / "averaged", {"model": averaged}, meta={"steps": steps}
    )
