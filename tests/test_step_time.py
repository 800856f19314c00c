"""Smoke run of `benchmarks/step_time.py` on the digits config: two recipes side by side.

The figures come from running the script, never from tests; this keeps it runnable and checks
that each override reaches the model it times.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of the repository, not installed.

from benchmarks import step_time  # noqa: E402

CONFIG = str(ROOT / "configs/image_classification/digits_vit.yaml")
ROW = re.compile(r"^\| (?P<name>[^|]+) \|(?P<cells>.*)\| (?P<speed>[0-9.]+)x \|$")


def test_variants_are_timed_side_by_side(capsys):
    args = ["--variant", "", "--variant", "model.depth=1", "--steps", "1", "--warmup", "0"]
    assert step_time.main([CONFIG, *args]) == 0
    rows = [m for line in capsys.readouterr().out.splitlines() if (m := ROW.match(line))]
    assert [m["name"].strip() for m in rows] == ["(the config)", "model.depth=1"]
    assert rows[0]["speed"] == "1.00"
    for m in rows:
        cells = [float(c) for c in m["cells"].split("|")]
        assert len(cells) == len(step_time.PARTS) + 2 and cells[-1] > 0  # parts, total, items/s


def test_overrides_reach_the_model():
    shallow = step_time.Variant(CONFIG, ["model.depth=1"])
    deep = step_time.Variant(CONFIG, ["model.depth=2"])
    count = lambda v: sum(p.numel() for p in v.model.parameters())  # noqa: E731
    assert count(shallow) < count(deep)


def test_compile_override_times_the_compiled_model():
    eager = step_time.Variant(CONFIG, [])
    compiled = step_time.Variant(CONFIG, ["train.compile=true"])
    assert eager.forward_model is eager.model
    # The compiled wrapper runs the same module (its weights, optimizer and EMA are shared).
    assert compiled.forward_model is not compiled.model
    assert getattr(compiled.forward_model, "_orig_mod", None) is compiled.model


def test_epoch_picks_the_stage_of_progressive_resizing():
    # The digits are 8x8; with one epoch at 4x4 first, epoch 0 times small images, epoch 1 full.
    stages = ["data.low_res_size=4", "data.low_res_epochs=1"]
    first = step_time.Variant(CONFIG, stages, epoch=0)
    later = step_time.Variant(CONFIG, stages, epoch=1)
    assert next(first.stream)["images"].shape[-1] == 4
    assert next(later.stream)["images"].shape[-1] == 8


def test_a_bad_override_is_one_line_not_a_traceback(capsys):
    assert step_time.main([CONFIG, "--variant", "model.depthh=1", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.depthh" in err and "Traceback" not in err
