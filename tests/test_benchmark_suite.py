"""Smoke runs of the side-by-side suite and the beam-search rows (``--quick``: tiny shapes).

The figures themselves come from ``python benchmarks/run.py`` and ``benchmarks/decoding.py``,
never from tests; this only keeps every row runnable, side by side, with a positive ratio.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of the repository, not installed.

from benchmarks import run as suite  # noqa: E402
from benchmarks.harness import RESULTS  # noqa: E402

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
    from benchmarks import decoding

    assert decoding.main(["--quick", "--threads", "1"]) == 0
    rows = _rows(capsys.readouterr().out)
    peers = {m["peer"] for m in rows}
    assert {"HF generate fp32", "CTranslate2 float32", "CTranslate2 int8"} <= peers
    assert any("default path" in m["name"] for m in rows)
