"""Devices and multi-process training: DDP (gloo on CPU, NCCL on CUDA) and FSDP2 under torchrun.

``torchrun --nproc_per_node N`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) starts one process per device; each
trains on its share of every global batch and DDP averages the gradients, so N processes
take the same steps as one process on the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from unitransformer.errors import UserError

__all__ = [
    "DistInfo",
    "all_reduce_max",
    "all_reduce_sum",
    "barrier",
    "cleanup_distributed",
    "full_state_dict",
    "init_distributed",
    "select_device",
    "wrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True under a launcher with more than one process."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r}: expected an integer") from None


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks cuda (this process's GPU), then mps, then cpu; else the named device.

    Raises:
        UserError: The named device is not available.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"train.device={name!r}: not a torch device (e.g. auto, cpu, cuda:0)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name!r}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"train.device={name!r}: MPS is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Joins the process group that the launcher's environment describes (if any).

    A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) needs no process group.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    info = DistInfo(_env_int("RANK", 0), world_size, _env_int("LOCAL_RANK", 0))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=info.rank, world_size=world_size)
    return info


def cleanup_distributed() -> None:
    """Leaves the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Waits for every rank (a no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: float, device: torch.device) -> float:
    """The sum of ``value`` over ranks (itself in a single process)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor)


def all_reduce_max(value: float, device: torch.device) -> float:
    """The maximum of ``value`` over ranks, e.g. "did any rank see a NaN"."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor)


def wrap_model(model: nn.Module, device: torch.device, info: DistInfo, fsdp: bool) -> nn.Module:
    """Wraps ``model`` for data parallelism: DDP, or FSDP2 (``fully_shard``) when ``fsdp``.

    FSDP2 shards every block of every `nn.ModuleList` (the encoder and decoder blocks) and
    then the root, so that only one block's full weights are gathered at a time.
    """
    if not info.enabled:
        if fsdp:
            raise UserError("train.fsdp=true needs several processes (start with torchrun)")
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block)
        fully_shard(model)
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def full_state_dict(model: nn.Module, fsdp: bool) -> dict[str, Tensor]:
    """The model's whole state dict on CPU (gathered from the shards under FSDP2)."""
    if not fsdp:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def set_full_state_dict(model: nn.Module, state: dict[str, Tensor], fsdp: bool) -> None:
    """Loads a whole state dict (scattering it into shards under FSDP2)."""
    if not fsdp:
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def optimizer_state(model: nn.Module, optimizer: Any, fsdp: bool) -> dict[str, Any]:
    """The optimizer's state dict (whole, gathered, under FSDP2)."""
    if not fsdp:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: nn.Module, optimizer: Any, state: Any, fsdp: bool) -> None:
    """Restores what `optimizer_state` returned."""
    if not fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, state, options=options)
