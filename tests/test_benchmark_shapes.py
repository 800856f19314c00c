"""``benchmarks/run.py --set``: the suite's rows on shapes of one's own, for ours and the peer."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of the repository, not installed.

from benchmarks import rows as R  # noqa: E402
from benchmarks import run as suite  # noqa: E402
from benchmarks import shapes  # noqa: E402
from benchmarks.harness import RESULTS, Row  # noqa: E402


@pytest.fixture
def restored_shapes():
    """Puts the suite's shapes back after a test that applies overrides in this process."""
    groups = copy.deepcopy(shapes.GROUPS)
    attention = copy.deepcopy(shapes.ATTENTION)
    yield
    for name, values in groups.items():
        shapes.GROUPS[name].update(values)
    shapes.ATTENTION[:] = attention
    shapes.GROUPS["attention"] = shapes.ATTENTION[0]
    shapes.ACTIVE.clear()


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("vit.dim", "expected GROUP.KEY=VALUE"),
        ("vision.dim=384", "unknown group 'vision'; allowed: attention, vit, seq2seq, decoding"),
        ("vit.width=384", "unknown key 'width'; allowed: vit.image_size, vit.patch_size"),
        ("vit.depth=6.5", "depth must be int, got '6.5'"),
        ("decoding.beam=0", "beam must be positive"),
        ("vit.dim=190", "vit.dim=190 must be a multiple of vit.num_heads=3"),
        ("vit.patch_size=5", "vit.image_size=32 must be a multiple of vit.patch_size=5"),
    ],
)
def test_a_bad_override_is_one_clear_error_before_anything_runs(item, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--rows", "vit", "--set", item])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and expected in err and item in err
    assert "Traceback" not in err


def test_overrides_build_ours_and_the_peer_alike(restored_shapes):
    pytest.importorskip("timm", reason="timm is the ViT peer")
    pytest.importorskip("transformers", reason="Hugging Face Marian is the seq2seq peer")
    shapes.apply(["vit.dim=96", "vit.num_heads=2", "seq2seq.dim=64", "seq2seq.heads=2"])
    assert R.ours_vit().pos_embed.shape[-1] == R.timm_vit().pos_embed.shape[-1] == 96
    ours, marian = R.ours_seq2seq(), R.marian_seq2seq()
    assert ours.config.dim == marian.config.d_model == 64
    assert shapes.ACTIVE == ["vit.dim=96", "vit.num_heads=2", "seq2seq.dim=64", "seq2seq.heads=2"]


def test_an_attention_override_replaces_the_two_shapes_with_one(restored_shapes):
    shapes.apply(["attention.length=9"])
    timed = shapes.ATTENTION  # the list that row 1 reads
    assert timed == [dict(dim=192, heads=3, batch=128, length=9)]


def test_quick_leaves_the_users_overrides_the_last_word():
    line = shapes.describe([*shapes.QUICK, "attention.batch=3"])
    assert "attention.batch=3" in line and "attention.batch=8" not in line
    assert "vit.batch=8" in line  # the rest of --quick stays


@pytest.mark.slow
def test_set_changes_the_rows_in_their_own_process_and_never_rewrites_results(capsys):
    pytest.importorskip("timm", reason="timm's Attention is a peer of row 1")
    before = RESULTS.read_text(encoding="utf-8")
    argv = ["--quick", "--threads", "1", "--rows", "attention", "--set", "attention.length=9"]
    assert suite.main(argv) == 0
    out = capsys.readouterr().out
    assert "Shapes changed: attention.dim=64, attention.heads=2, attention.batch=8" in out
    names = {line.split("|")[1].strip() for line in out.splitlines() if "fwd+bwd" in line}
    assert names == {"attention fwd+bwd B=8 T=9 d=64 h=2"}
    assert RESULTS.read_text(encoding="utf-8") == before


def test_a_full_run_on_other_shapes_is_printed_not_written(monkeypatch):
    written, seen = [], []

    def fake_run_suite(name, repeats, quick, threads, overrides=None) -> list[Row]:
        seen.append(overrides)
        return [Row(f"{name} row", "peer", 1.0, 2.0, 10, "items")]

    monkeypatch.setattr(suite, "run_suite", fake_run_suite)
    monkeypatch.setattr(suite, "write_results", lambda *args: written.append(args))
    assert suite.main(["--set", "seq2seq.length=40"]) == 0
    assert written == [] and seen == [["seq2seq.length=40"]] * len(suite.SUITES)
