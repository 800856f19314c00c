"""The lecture table's pieces on tiny budgets: the bag of visual words, budgets, the table."""

from pathlib import Path

import pytest
import torch

from benchmarks.bovw import BagOfVisualWords, BoVWConfig, dense_descriptors
from benchmarks.lecture_table import (
    BOVW_PROBE_IMAGES,
    IMAGES,
    TRANSLATION,
    Result,
    _bovw_subset,
    budget_overrides,
    format_table,
    main,
    probe_step_seconds,
    run_bovw,
    run_system,
    systems,
)
from unitransformer.errors import UserError


def test_descriptors_shape_and_orientation() -> None:
    # A horizontal ramp has every gradient pointing along +x: one orientation bin only.
    ramp = torch.arange(16, dtype=torch.uint8).mul(15).expand(1, 3, 16, 16).contiguous()
    config = BoVWConfig(patch=8, stride=4, cells=2, bins=8)
    desc = dense_descriptors(ramp, config)
    assert desc.shape == (1, 9, 2 * 2 * 8)  # a 3x3 grid of patches, 4 cells of 8 bins
    by_bin = desc[0].view(9, 4, 8).sum((0, 1))
    assert by_bin[0] > 0 and torch.all(by_bin[1:] == 0)
    # Flipped left-right, the gradients point along -x: half a turn, bin 4.
    flipped = dense_descriptors(ramp.flip(-1), config)[0].view(9, 4, 8).sum((0, 1))
    assert flipped[4] > 0 and flipped.argmax() == 4
    with_color = dense_descriptors(ramp, BoVWConfig(patch=8, stride=4, color_weight=1.0))
    assert with_color.shape == (1, 9, 35)


def test_bad_settings_are_one_user_error() -> None:
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(UserError, match="bovw.patch=16"):
        BagOfVisualWords(BoVWConfig(patch=16)).fit(images, torch.arange(4) % 2)
    with pytest.raises(UserError, match="bovw.kernel='poly'"):
        BagOfVisualWords(BoVWConfig(patch=4, kernel="poly")).fit(images, torch.arange(4) % 2)


def test_bovw_svm_on_digits_end_to_end() -> None:
    system = systems(quick=True, budget_minutes=1)[0]
    assert system.bovw is not None and system.split == "test"
    result = run_bovw(system)
    accuracy = float(result.metric.split("%")[0])
    # Chance is 10%; the codebook and SVM must have learned the digits.
    assert accuracy > 80.0, result
    assert result.metric.endswith("test top-1 (360 images)")
    words = system.bovw.words
    assert result.parameters > words * 32  # the codebook, plus the SVM


def test_bovw_subset_is_sized_by_the_budget() -> None:
    images = torch.randint(0, 256, (2500, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(2500) % 10
    config = BoVWConfig(patch=4, stride=2, words=8, kernel="linear")
    assert _bovw_subset(images, labels, None, config) == 2500  # no budget: every image
    assert _bovw_subset(images, labels, 1e-6, config) == BOVW_PROBE_IMAGES  # never below the probe
    assert _bovw_subset(images, labels, 1e6, config) == 2500  # never above the data


def test_budget_overrides_shrink_the_schedule() -> None:
    import yaml

    config = TRANSLATION / "multi30k_en_de.yaml"  # warmup 2,000, a checkpoint every 200 steps
    steps = yaml.safe_load(config.read_text())["train"]["max_steps"] // 100
    got = budget_overrides(config, [], steps)
    assert f"train.max_steps={steps}" in got
    assert "schedule.warmup_steps=20" in got
    assert "train.checkpoint_every=2" in got  # averaging the last 10 needs spaced checkpoints
    assert "eval.every=0" in got
    # Without averaging, one checkpoint at the end.
    assert "train.checkpoint_every=80" in budget_overrides(IMAGES / "cifar10_vit.yaml", [], 80)


def test_probe_times_real_steps(tmp_path: Path) -> None:
    seconds = probe_step_seconds(IMAGES / "digits_vit.yaml", [], tmp_path / "probe", steps=2)
    assert seconds > 0
    assert (tmp_path / "probe" / "classes.json").is_file()  # the task's assets were prepared


def test_missing_data_gives_a_row_saying_so(tmp_path: Path) -> None:
    budgeted = systems(quick=False, budget_minutes=0.5, data=tmp_path)
    assert {s.dataset for s in budgeted} == {"digits", "CIFAR-10", "Multi30k en-de"}
    cifar = next(s for s in budgeted if s.dataset == "CIFAR-10")
    assert cifar.budget_s == 30 and cifar.split == "val"
    result = run_system(cifar, tmp_path / "runs")
    assert result.metric == f"not run: no data at {tmp_path / 'cifar10' / 'train.parquet'}"
    assert not (tmp_path / "runs").exists()


def test_format_table() -> None:
    rows = [
        Result("image classification", "digits", "ViT", 12345, 90.4, "98.3% test top-1"),
        Result("translation", "Multi30k en-de", "Transformer", None, None, "not run: no data"),
    ]
    text = format_table(rows, "python benchmarks/lecture_table.py --quick", "2026-11-24", "cpu")
    lines = text.splitlines()
    assert "Command: `python benchmarks/lecture_table.py --quick`  " in lines
    assert "Date: 2026-11-24  " in lines
    assert "| image classification | digits | ViT | 12,345 | 90 s | 98.3% test top-1 |" in lines
    assert lines[-1] == "| translation | Multi30k en-de | Transformer | - | - | not run: no data |"


def test_budget_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        main(["--budget-minutes", "0", "--no-write"])
