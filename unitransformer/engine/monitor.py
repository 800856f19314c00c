"""Seeing progress: a progress bar (or plain lines), metric files, TensorBoard, a curves PNG."""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "Progress", "format_clock", "plot_curves"]

log = logging.getLogger("unitransformer")


class MetricsLog:
    """Appends metrics to ``metrics.jsonl`` and ``metrics.csv`` and, if installed, TensorBoard.

    The CSV is in long form (step, split, name, value) so that a metric first logged late in
    a run needs no new column.

    Args:
        run_dir: The run directory.
        resume_step: On resume, rows of steps after it (logged by the interrupted run after
            its last checkpoint) are dropped so that the files read as one clean run.
        tensorboard: Also write TensorBoard events under ``run_dir/tensorboard``.
    """

    def __init__(self, run_dir: Path, resume_step: int = 0, tensorboard: bool = True) -> None:
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.csv = Path(run_dir) / "metrics.csv"
        self._truncate_after(resume_step)
        self.writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed; metrics go to metrics.jsonl/csv only")
            else:
                self.writer = SummaryWriter(
                    str(Path(run_dir) / "tensorboard"),
                    purge_step=resume_step + 1 if resume_step else None,
                )

    def _truncate_after(self, step: int) -> None:
        rows = read_metrics(self.jsonl)
        kept = [r for r in rows if r["step"] <= step]
        if len(kept) == len(rows):
            return
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        with open(self.csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "split", "name", "value"])
            for row in kept:
                for name, value in row.items():
                    if name not in ("step", "split"):
                        writer.writerow([row["step"], row["split"], name, value])

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        """Appends one row: ``values`` of ``split`` (``train``, ``val``...) at ``step``."""
        row = {"step": step, "split": split, **{k: float(v) for k, v in values.items()}}
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        new_csv = not self.csv.exists()
        with open(self.csv, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new_csv:
                writer.writerow(["step", "split", "name", "value"])
            for name, value in values.items():
                writer.writerow([step, split, name, float(value)])
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{split}/{name}", float(value), step)

    def close(self) -> None:
        """Flushes TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a torn last line from a crash is ignored)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


class Progress:
    """A tqdm bar with loss, learning rate, throughput and ETA on a terminal; plain lines else.

    Args:
        start: The step training resumes from.
        total: ``train.max_steps``.
        unit: What throughput counts (``items`` by default: tokens or images).
        enabled: False on ranks other than 0.
    """

    def __init__(self, start: int, total: int, unit: str = "items", enabled: bool = True) -> None:
        self.start, self.total, self.unit, self.enabled = start, total, unit, enabled
        self.t0 = time.perf_counter()
        self._origin: tuple[int, float] | None = None  # (step, time) of the first line
        # Seconds left of a time budget (``train.max_seconds``), which may end before the steps.
        self.time_left: Callable[[], float] | None = None
        self.bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(
        self, step: int, loss: float, lr: float, items_per_s: float, print_line: bool
    ) -> None:
        """Moves the bar to ``step``; without a terminal, prints a line when ``print_line``."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(
                loss=f"{loss:.4f}", lr=f"{lr:.2e}", **{f"{self.unit}/s": f"{items_per_s:.0f}"}
            )
            return
        if print_line:
            now = time.perf_counter()
            # The rate counts from the first line on: start-up (decoding a dataset, a resume's
            # skip to its batch) would otherwise lengthen a long run's ETA for hours.
            origin_step, origin_time = self._origin or (self.start, self.t0)
            self._origin = self._origin or (step, now)
            elapsed = now - origin_time
            rate = (step - origin_step) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            if self.time_left is not None and rate > 0:
                eta = min(eta, max(self.time_left(), 0.0))
            print(
                f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.3e}  "
                f"{items_per_s:.0f} {self.unit}/s  eta {format_clock(eta)}",
                flush=True,
            )

    def message(self, text: str) -> None:
        """Prints ``text`` without breaking the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        """Closes the bar."""
        if self.bar is not None:
            self.bar.close()


def format_clock(seconds: float) -> str:
    """``seconds`` as ``H:MM:SS`` (``?`` for NaN or infinity: no rate measured yet)."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def plot_curves(run_dir: Path, path: Path | None = None) -> Path | None:
    """Draws every logged metric against the step into ``curves.png`` (one panel per name).

    Returns:
        The PNG's path, or None when nothing was logged.
    """
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for row in rows:
        for name, value in row.items():
            if name in ("step", "split"):
                continue
            steps, values = series.setdefault(name, {}).setdefault(row["split"], ([], []))
            steps.append(row["step"])
            values.append(value)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")  # No display needed: the plot only goes to a file.
    import matplotlib.pyplot as plt

    cols = min(len(series), 3)
    rows_n = (len(series) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.5 * cols, 3.2 * rows_n), squeeze=False)
    for ax, (name, splits) in zip(axes.flat, sorted(series.items()), strict=False):
        for split, (steps, values) in sorted(splits.items()):
            ax.plot(steps, values, label=split, marker="." if len(steps) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
    for ax in list(axes.flat)[len(series) :]:
        ax.axis("off")
    fig.tight_layout()
    path = path or Path(run_dir) / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
