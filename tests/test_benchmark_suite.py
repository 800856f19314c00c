"""Smoke runs of the side-by-side suite and the beam-search rows (``--quick``: tiny shapes).

The figures themselves come from ``python benchmarks/run.py``, never from tests; this only keeps
every row runnable, side by side, with a positive ratio.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of the repository, not installed.

from benchmarks import run as suite  # noqa: E402
from benchmarks.harness import RESULTS, Row  # noqa: E402

pytestmark = pytest.mark.slow
ROW = re.compile(r"^\| (?P<name>[^|]+) \| (?P<peer>[^|]+) \|.*\| (?P<ratio>[0-9.]+)x \|")


def _rows(text: str) -> list[re.Match]:
    return [m for line in text.splitlines() if (m := ROW.match(line))]


def test_quick_suite_prints_every_row_side_by_side(capsys):
    pytest.importorskip("timm", reason="timm is the ViT peer")
    pytest.importorskip("transformers", reason="Hugging Face Marian is the seq2seq peer")
    before = RESULTS.read_text(encoding="utf-8")
    assert suite.main(["--quick", "--threads", "1", "--rows", "attention", "vit", "seq2seq"]) == 0
    rows = _rows(capsys.readouterr().out)
    names = {m["name"] for m in rows}
    assert {"ViT training step, default path", "seq2seq training step, default path"} <= names
    assert {m["peer"] for m in rows} >= {"timm Attention", "HF MarianMTModel"}
    assert all(float(m["ratio"]) > 0 for m in rows)
    assert RESULTS.read_text(encoding="utf-8") == before  # --quick never rewrites RESULTS.md


def test_quick_beam_rows_run_every_engine(capsys):
    pytest.importorskip("ctranslate2", reason="CTranslate2 is a beam-search peer")
    pytest.importorskip("transformers", reason="Hugging Face generate is a beam-search peer")
    assert suite.main(["--quick", "--threads", "1", "--rows", "decoding"]) == 0
    rows = _rows(capsys.readouterr().out)
    peers = {m["peer"] for m in rows}
    assert {"HF generate fp32", "CTranslate2 float32", "CTranslate2 int8"} <= peers
    assert any("default path" in m["name"] for m in rows)


def test_each_group_runs_in_a_fresh_process():
    import torch

    pytest.importorskip("timm", reason="timm is the attention peer")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        rows = suite.run_suite("attention", 1, True, 1)
        # The group set one thread for itself, in its own process: ours still has two.
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert rows and all(isinstance(row, Row) and row.ours_s > 0 for row in rows)


def test_only_a_full_run_rewrites_results(monkeypatch, capsys):
    groups, written = [], []

    def fake_run_suite(
        name: str, repeats: int, quick: bool, threads: int, overrides=None
    ) -> list[Row]:
        groups.append((name, repeats, threads))
        return [Row(f"{name} row", "peer", 1.0, 2.0, 10, "items")]

    monkeypatch.setattr(suite, "run_suite", fake_run_suite)
    monkeypatch.setattr(suite, "write_results", lambda *args: written.append(args))
    assert suite.main(["--rows", "vit", "--repeats", "7", "--threads", "3"]) == 0
    assert groups == [("vit", 7, 3)] and written == []  # a partial table never lands
    assert suite.main(["--repeats", "7"]) == 0
    assert [name for name, _, _ in groups[1:]] == list(suite.SUITES)
    ((table, command, repeats, threads),) = written
    assert command == "python benchmarks/run.py --repeats 7" and (repeats, threads) == (7, 2)
    assert table.count("| 2.00x |") == len(suite.SUITES)  # every group's row, one table


def test_time_pair_alone_builds_a_fresh_peer_for_each_run_after_ending_our_pool(monkeypatch):
    import contextlib

    from benchmarks import harness

    events: list[str] = []
    monkeypatch.setattr(harness, "release_openmp_threads", lambda: events.append("release"))

    @contextlib.contextmanager
    def open_peer():
        events.append("open")
        yield lambda: events.append("peer")
        events.append("close")

    ours_s, peer_s = harness.time_pair_alone(lambda: events.append("ours"), open_peer, 3, 2)
    assert ours_s >= 0 and peer_s >= 0
    session = ["open", "release", "peer", "peer", "close"]  # warmed up by one call, then timed
    timed = ["ours", *session]
    assert events == ["ours", "ours", *session, *timed * 3]


def test_release_openmp_threads_ends_the_pool_of_the_calling_thread():
    import subprocess

    # In a fresh process, so that no other test's threads are counted.
    script = """
import os, time, torch
torch.set_num_threads(2)
from benchmarks.harness import release_openmp_threads
x = torch.randn(512, 512); (x @ x).sum()
torch.ones(1 << 20).exp_()
with_pool = len(os.listdir("/proc/self/task"))
release_openmp_threads(); time.sleep(0.2)
print(with_pool, len(os.listdir("/proc/self/task")))
"""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("counts threads in /proc (Linux)")
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    with_pool, after = map(int, out)
    assert after < with_pool  # the OpenMP worker is gone; the next parallel region makes one


def test_every_vit_row_is_scored_against_the_best_peak_measured_around_the_group(monkeypatch):
    # Peaks measured before the group and after each of its two rows: 2, 5 and 3 GFLOP/s.
    peaks = iter([2e9, 5e9, 3e9])
    monkeypatch.setattr(suite, "matmul_peak_flops", lambda dtype, sizes: next(peaks))
    variants = [("a", {}, {}), ("b", {}, {})]
    monkeypatch.setattr(suite, "vit_train_variants", lambda quick: variants)
    monkeypatch.setattr(suite.R, "ours_vit", lambda: None)
    monkeypatch.setattr(suite.R, "timm_vit", lambda: None)
    monkeypatch.setattr(suite.R, "vit_train_step", lambda model, batch, **kw: None)
    monkeypatch.setattr(suite.R, "vit_step_flops", lambda model, batch: 1e9)
    times = iter([(0.4, 0.5), (0.2, 0.25)])  # (ours, peer) seconds of each row
    monkeypatch.setattr(suite, "time_pair", lambda ours, peer, repeats: next(times))
    rows = suite.vit_train_rows(repeats=1, quick=True)
    assert [r.notes["fp32 matmul peak"] for r in rows] == ["5 GFLOP/s", "5 GFLOP/s"]
    # 1 GFLOP per step over 0.4 s is 2.5 GFLOP/s: 50% of 5, not 125% of the first peak's 2.
    assert rows[0].notes["MFU (fp32 matmul peak)"] == "ours 50%, timm 40%"
    assert rows[1].notes["MFU (fp32 matmul peak)"] == "ours 100%, timm 80%"
    assert list(rows[0].notes)[:2] == ["MFU (fp32 matmul peak)", "fp32 matmul peak"]


def test_quick_augment_benchmark_prints_both_policies_and_leaves_results(capsys):
    from benchmarks import augment

    before = RESULTS.read_text(encoding="utf-8")
    assert augment.main(["--quick"]) == 0
    rows = _rows(capsys.readouterr().out)
    names = [m["name"] for m in rows]
    assert len(rows) == 4 and sum("TrivialAugment" in n for n in names) == 2
    assert all(float(m["ratio"]) > 0 for m in rows)
    assert RESULTS.read_text(encoding="utf-8") == before
