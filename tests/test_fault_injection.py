"""The short version of benchmarks/fault_injection.py: three SIGKILLs, one mid-checkpoint-write.

The long run (12 kills, counts in RESULTS.md) is ``python benchmarks/fault_injection.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of the repository, not installed.

from benchmarks.fault_injection import run_faults  # noqa: E402

pytestmark = pytest.mark.slow


def test_three_kills_one_mid_write_one_corruption_then_identical_weights(tmp_path):
    report = run_faults(tmp_path, kills=3, seed=1, max_steps=36)
    counts = report.counts()
    assert counts["kills"] == 3
    # The modes cycle mid-write, random, corrupt: two kills wait for a checkpoint being written.
    assert counts["kills_in_checkpoint_write"] >= 2
    assert counts["checkpoints_corrupted"] == counts["corruptions_named_and_skipped"] == 1
    assert report.failures == []
    # The last child always gets past loading, so at least its resume was checked.
    assert report.rounds[-1].resume_ok is True
    assert counts["resumes_correct"] == counts["resumes_checked"] >= 2
    assert report.weights_equal and report.final_step == 36
