"""Distillation from a teacher run, the fast ConvNet teacher, and the max-pool conv stem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tasks.image_classification.config import (
    ImageClassificationConfig,
    ImageDataConfig,
    ImageModelConfig,
)
from tasks.image_classification.convnet import ConvNet
from tasks.image_classification.distill import DistillConfig, distillation_loss
from tasks.image_classification.task import ImageClassificationTask
from unitransformer.embeddings import ConvStem
from unitransformer.engine.config import TrainConfig
from unitransformer.errors import UserError


def _config(**model: object) -> ImageClassificationConfig:
    return ImageClassificationConfig(
        model=ImageModelConfig(size="digits", depth=1, dim=32, num_heads=2, **model),
        data=ImageDataConfig(holdout=100, batch_size=32),
        train=TrainConfig(max_steps=3, device="cpu", log_every=3, checkpoint_every=3),
    )


def _train(cfg: ImageClassificationConfig, run: Path) -> None:
    from unitransformer.engine.trainer import Trainer

    cfg.eval.every = 0
    Trainer(ImageClassificationTask(cfg), cfg, run).fit()


def test_hard_and_soft_distillation_terms() -> None:
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5)
    label_loss = torch.tensor(2.0)
    hard = DistillConfig(teacher="t", kind="hard", weight=1.0)
    expected = F.cross_entropy(student, teacher.argmax(-1))
    assert torch.allclose(distillation_loss(student, teacher, hard, label_loss), expected)
    hard.weight = 0.0  # the label loss alone
    assert distillation_loss(student, teacher, hard, label_loss).item() == 2.0
    soft = DistillConfig(teacher="t", kind="soft", weight=0.5, temperature=2.0)
    same = distillation_loss(teacher, teacher, soft, label_loss)  # KL of equal distributions: 0
    assert torch.allclose(same, torch.tensor(1.0), atol=1e-6)
    loss = distillation_loss(student, teacher, soft, label_loss)
    p, q = F.log_softmax(student / 2, -1), F.softmax(teacher / 2, -1)
    kl = (q * (q.log() - p)).sum(-1).mean() * 4  # the temperature's square keeps the scale
    assert torch.allclose(loss, 1.0 + 0.5 * kl)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("kind", "medium", "distill.kind: expected 'hard' or 'soft'"),
        ("weight", 1.5, r"distill.weight: expected a value in \[0, 1\]"),
        ("temperature", 0.0, "distill.temperature: expected > 0"),
        ("checkpoint", "first", "distill.checkpoint: expected 'best'"),
    ],
)
def test_bad_distill_keys_name_themselves(key: str, value: object, message: str) -> None:
    config = DistillConfig(teacher="runs/t", **{key: value})  # type: ignore[arg-type]
    with pytest.raises(UserError, match=message):
        config.validate()


def test_a_student_learns_from_a_teacher_run_and_evaluates_without_it(tmp_path: Path) -> None:
    teacher_run = tmp_path / "teacher"
    _train(_config(arch="convnet"), teacher_run)
    student_cfg = _config()
    student_cfg.distill = DistillConfig(teacher=str(teacher_run), checkpoint="last")
    student_run = tmp_path / "student"
    _train(student_cfg, student_run)
    rows = [json.loads(line) for line in (student_run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if row.get("split") == "train"]
    assert train_rows and 0.0 <= train_rows[-1]["teacher_accuracy"] <= 1.0
    # Scoring the distilled run needs its own directory only: the teacher may be gone.
    (teacher_run / "config.yaml").unlink()
    from tasks.registry import load_trained

    task, model = load_trained(student_run, "last", "image_classification")
    assert task.evaluate(model, "val")["accuracy"] >= 0.0


def test_a_teacher_that_prepares_images_otherwise_is_refused(tmp_path: Path) -> None:
    teacher_run = tmp_path / "teacher"
    _train(_config(arch="convnet"), teacher_run)
    cfg = _config()
    cfg.data.mean = (0.4, 0.4, 0.4)
    cfg.distill = DistillConfig(teacher=str(teacher_run), checkpoint="last")
    task = ImageClassificationTask(cfg)
    task.prepare(tmp_path / "student")
    batch = next(iter(task.train_batches(0, 0, 1)))
    with pytest.raises(UserError, match=r"distill.teacher: .*data.mean=.*the student has"):
        task.loss(task.build_model(), batch)
    cfg.distill.teacher = str(tmp_path / "missing")
    task.teacher = None
    with pytest.raises(UserError, match="missing is not a run directory"):
        task.loss(task.build_model(), batch)


def test_convnet_halves_the_grid_per_stage_and_saves_plain_weights() -> None:
    model = ConvNet(10, widths=(8, 16, 32, 32))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    features = model.stages(model.stem(torch.randn(2, 3, 32, 32)))
    assert features.shape == (2, 32, 4, 4)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    fresh = ConvNet(10, widths=(8, 16, 32, 32))
    fresh.load_state_dict(state)
    x = torch.randn(3, 3, 32, 32)
    model.eval(), fresh.eval()
    assert torch.allclose(model(x), fresh(x), atol=1e-6)


def test_pool_stem_downsamples_with_max_pools_and_keeps_stride_names() -> None:
    stride = ConvStem(16, patch_size=4, width=8, blocks=1)
    pool = ConvStem(16, patch_size=4, width=8, blocks=1, downsample="pool")
    x = torch.randn(2, 3, 16, 16)
    assert pool(x).shape == stride(x).shape == (2, 16, 16)
    pools = [m for m in pool.convs if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 2 and not any(isinstance(m, nn.MaxPool2d) for m in stride.convs)
    assert all(m.stride == (1, 1) for m in pool.convs if isinstance(m, nn.Conv2d))
    # The stride stem's parameter names are a checkpoint format: unchanged by the option.
    assert "convs.0.weight" in stride.state_dict() and "convs.1.running_mean" in stride.state_dict()
    with pytest.raises(ValueError, match="downsample: expected 'stride' or 'pool'"):
        ConvStem(16, patch_size=4, downsample="avg")


def test_stem_downsample_reaches_the_model_from_the_config(tmp_path: Path) -> None:
    cfg = _config(stem="conv", patch_size=4, stem_downsample="pool")
    task = ImageClassificationTask(cfg)
    task.prepare(tmp_path)
    model = task.build_model()
    assert any(isinstance(m, nn.MaxPool2d) for m in model.patch_embed.convs)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
