"""Side-by-side timing: ours and a peer in one process, alternating, median of N runs.

Every row of the suite is a `Row`: two callables doing the same work on the same shapes and
dtype, timed in turn (ours, peer, ours, peer, ...) after warm-up so that drifting clocks and
caches hit both equally. The ratio is peer time over our time: above 1 means we are faster.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
    "release_openmp_threads",
    "time_pair",
    "time_pair_alone",
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
        ours_times.append(_seconds(ours))
        peer_times.append(_seconds(peer))
    return statistics.median(ours_times), statistics.median(peer_times)


def _seconds(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def release_openmp_threads() -> None:
    """Ends the calling thread's OpenMP thread pool (``omp_pause_resource_all``, OpenMP 5.0).

    libgomp shortens its workers' spin-wait from 300,000 to 100 iterations once the process
    holds more OpenMP threads than it has cores, so that workers sleep between parallel
    regions. A peer that runs its own thread pool (CTranslate2's translator threads each own
    one) thus slows ours merely by existing, and ours slows it: 138 -> 98 sentences/s in
    row 4 with one idle second pool (RESULTS.md). The next parallel region starts a new pool.
    """
    with contextlib.suppress(OSError, AttributeError):  # no libgomp: nothing to release
        ctypes.CDLL("libgomp.so.1").omp_pause_resource_all(1)  # omp_pause_hard


def time_pair_alone(
    ours: Callable[[], object],
    open_peer: Callable[[], contextlib.AbstractContextManager[Callable[[], object]]],
    repeats: int = 5,
    warmup: int = 2,
) -> tuple[float, float]:
    """`time_pair` for a peer with thread pools of its own: each side runs with the only pool.

    Each peer run gets a fresh peer from ``open_peer()`` (entered, then our OpenMP pool ended
    by `release_openmp_threads`, warmed up by one call, timed) whose pools end when it is
    closed, before our next run. Building and warming are untimed.
    """
    for _ in range(warmup):
        ours()
    with _peer_alone(open_peer) as peer:
        for _ in range(warmup - 1):
            peer()
    ours_times, peer_times = [], []
    for _ in range(repeats):
        ours_times.append(_seconds(ours))
        with _peer_alone(open_peer) as peer:
            peer_times.append(_seconds(peer))
    return statistics.median(ours_times), statistics.median(peer_times)


@contextlib.contextmanager
def _peer_alone(
    open_peer: Callable[[], contextlib.AbstractContextManager[Callable[[], object]]],
) -> Iterator[Callable[[], object]]:
    """A fresh peer, warmed up by one call, with the calling thread's OpenMP pool ended after
    building it (CTranslate2 loads a model with parallel regions on the calling thread)."""
    with open_peer() as peer:
        release_openmp_threads()
        peer()
        yield peer


def matmul_peak_flops(
    dtype: torch.dtype = torch.float32, sizes: tuple[int, ...] = (2048, 4096), repeats: int = 5
) -> float:
    """Measured peak FLOP/s of large square matmuls in ``dtype`` (the MFU denominator).

    The best of ``repeats`` runs at each of ``sizes``: on a shared 2-core VM one size measured
    once read 147-189 GFLOP/s in one process, below what a model's own matmuls reached minutes
    later, and an MFU above 100% followed. Callers take the max over several calls around the
    timed rows, so that the denominator is measured at the rows' own moments.
    """
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


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
