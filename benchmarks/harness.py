"""Side-by-side timing: ours and a peer in one process, alternating, median of N runs.

Every row of the suite is a `Row`: two callables doing the same work on the same shapes and
dtype, timed in turn (ours, peer, ours, peer, ...) after warm-up so that drifting clocks and
caches hit both equally. The ratio is peer time over our time: above 1 means we are faster.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")

__all__ = [
    "RESULTS",
    "Row",
    "format_table",
    "machine_description",
    "matmul_peak_flops",
    "peak_rss_mib",
    "time_pair",
    "write_section",
]


@dataclass
class Row:
    """One measured comparison.

    Attributes:
        name: What was measured.
        peer: The peer's name.
        ours_s: Our median seconds per call.
        peer_s: The peer's median seconds per call.
        items: Work items per call (images, tokens, sentences) for throughput.
        unit: What an item is.
        notes: Extra measured figures (MFU, memory).
    """

    name: str
    peer: str
    ours_s: float
    peer_s: float
    items: float = 1.0
    unit: str = "calls"
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Peer time over our time: above 1 means we are faster."""
        return self.peer_s / self.ours_s


def format_table(rows: list[Row]) -> str:
    """The rows as a Markdown table: throughputs (or MiB), the ratio and the notes."""
    lines = [
        "| row | peer | ours | peer | ratio (peer time / ours) | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.unit == "MiB":
            ours, peer = f"{r.ours_s:.0f} MiB", f"{r.peer_s:.0f} MiB"
        else:
            ours = f"{r.items / r.ours_s:,.0f} {r.unit}/s"
            peer = f"{r.items / r.peer_s:,.0f} {r.unit}/s"
        notes = "; ".join(f"{k}: {v}" for k, v in r.notes.items())
        lines.append(f"| {r.name} | {r.peer} | {ours} | {peer} | {r.ratio:.2f}x | {notes} |")
    return "\n".join(lines)


def time_pair(
    ours: Callable[[], object], peer: Callable[[], object], repeats: int = 5, warmup: int = 2
) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``peer``, alternating after ``warmup`` calls of each."""
    for _ in range(warmup):
        ours()
        peer()
    ours_times, peer_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours()
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        peer()
        peer_times.append(time.perf_counter() - start)
    return statistics.median(ours_times), statistics.median(peer_times)


def matmul_peak_flops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Measured peak FLOP/s of one large square matmul in ``dtype`` (the MFU denominator)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def peak_rss_mib(prelude: str, code: str) -> float:
    """Peak resident memory (MiB) that ``code`` adds, in a fresh Python process.

    A separate process per measurement, so that neither model's allocations are hidden by the
    other's. ``prelude`` (the imports) runs first; a thread then samples the process's current
    RSS every millisecond while ``code`` runs, and the peak over the RSS just before is reported
    (the kernel's own high-water mark would still hold the imports' transient peak).
    """
    script = f"""
import threading, time
{prelude}
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * {os.sysconf("SC_PAGE_SIZE")}
base, peak, done = rss(), [0], threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)
watcher = threading.Thread(target=watch)
watcher.start()
{code}
done.set()
watcher.join()
print(max(peak[0], rss()) - base)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=os.getcwd()
    )
    return int(result.stdout.strip().splitlines()[-1]) / 2**20


def machine_description(threads: int | None = None, children: bool = False) -> str:
    """CPU model, cores used, torch version: the context every figure needs.

    Args:
        threads: Threads the figures used; torch's current setting by default.
        children: Report the peak RSS of the largest child process (rows measured in fresh
            processes) instead of this process's own.
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    rss = resource.getrusage(who).ru_maxrss // 1024
    threads = torch.get_num_threads() if threads is None else threads
    return (
        f"{cpu}, {threads} threads, torch {torch.__version__}, "
        f"Python {platform.python_version()} (harness RSS {rss} MiB)"
    )


def write_section(name: str, text: str) -> None:
    """Replaces the section ``name`` of RESULTS.md (between its markers), keeping the others.

    Each script owns one section, so the suite, the fault injection and the lecture table can
    rewrite their own figures without touching each other's.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{text.strip()}\n{end}"
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if begin in current:
        head, rest = current.split(begin, 1)
        current = head + section + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(current)
