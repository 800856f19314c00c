"""The child process of ``fault_injection.py``: the engine's toy task, with test hooks.

    python benchmarks/fault_child.py RUN_DIR [overrides ...]

Two hooks, switched on by environment variables so the engine itself is unchanged:
``FAULT_PROGRESS`` names a file that gets one byte per batch (the parent counts them to time its
kills), and ``FAULT_WRITE_PAUSE`` makes each checkpoint file be written in two halves with that
many seconds between them (a kill in the pause leaves a truncated file).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

TOY = Path(__file__).resolve().parents[1] / "tests" / "engine_toy.py"


def _slow_write(path: str | os.PathLike, data: bytes, pause: float) -> None:
    # Half the bytes reach the disk, then a pause: a kill now leaves a truncated file.
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        time.sleep(pause)
        f.write(data[len(data) // 2 :])


def _install_slow_writes(pause: float) -> None:
    """Makes the checkpoint module write ``model.safetensors`` and ``state.pt`` slowly."""
    import io

    import safetensors.torch
    import torch

    from unitransformer.engine import checkpoint

    real_save = torch.save

    def save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        _slow_write(filename, safetensors.torch.save(tensors, metadata=metadata), pause)

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if not isinstance(f, (str, os.PathLike)):
            real_save(obj, f, *args, **kwargs)
            return
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        _slow_write(f, buffer.getvalue(), pause)

    checkpoint.save_file = save_file
    torch.save = save


def child_main(argv: list[str]) -> int:
    """Trains the toy task in ``argv[0]``; the hooks come from ``FAULT_*`` variables."""
    import logging

    sys.path.insert(0, str(TOY.parent))
    import engine_toy

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    pause = float(os.environ.get("FAULT_WRITE_PAUSE", "0"))
    if pause > 0:
        _install_slow_writes(pause)
    progress = os.environ.get("FAULT_PROGRESS")
    if progress:
        real_loss = engine_toy.ToyTask.loss

        def loss(self: object, model: object, batch: dict) -> object:
            with open(progress, "a") as f:  # One byte per batch: the parent counts them.
                f.write(".")
            return real_loss(self, model, batch)

        engine_toy.ToyTask.loss = loss
    return engine_toy.main(argv)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
