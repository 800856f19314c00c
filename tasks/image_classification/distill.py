"""Knowledge distillation from a trained run (DeiT, Touvron et al. 2021, section 5).

A ViT trained on little data lacks the locality prior of a ConvNet; learning from a ConvNet
teacher's predictions on the same augmented images hands that prior over (DeiT's "hard
distillation" beat the soft kind and the teacher's own accuracy on ImageNet). Here the teacher
is any finished run of this task (its ``distill.checkpoint`` weights, read without executing
code), evaluated in inference mode on each training batch; the student keeps one head, so the
distilled model is an ordinary ViT for ``evaluate``, ``classify`` and fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unitransformer.errors import UserError

__all__ = ["DistillConfig", "Teacher", "distillation_loss"]


@dataclass
class DistillConfig:
    """Distillation from a teacher run (off while ``teacher`` is null).

    Attributes:
        teacher: A run directory of this task (e.g. ``runs/cifar10_convnet``); its images must
            be prepared as the student's are (``data.image_size``, ``mean``, ``std``) and its
            classes must be the student's.
        checkpoint: Which of the teacher run's weights: ``best``, ``last``, ``averaged`` or
            ``ema``.
        kind: ``hard`` (cross-entropy against the teacher's top class, DeiT's choice) or
            ``soft`` (KL divergence to the teacher's tempered distribution, Hinton et al.).
        weight: Share of the distillation term in the loss; the rest is the label loss.
        temperature: Softmax temperature of ``soft`` distillation (the term is scaled by its
            square, so that its gradients keep their size).
    """

    teacher: str | None = None
    checkpoint: Literal["best", "last", "averaged", "ema"] = "best"
    kind: Literal["hard", "soft"] = "hard"
    weight: float = 0.5
    temperature: float = 1.0

    def validate(self) -> None:
        """Raises `UserError` naming the first ``distill.*`` key that is out of range."""
        if self.kind not in ("hard", "soft"):
            raise UserError(f"distill.kind: expected 'hard' or 'soft', got {self.kind!r}")
        if self.checkpoint not in ("best", "last", "averaged", "ema"):
            raise UserError(
                "distill.checkpoint: expected 'best', 'last', 'averaged' or 'ema', "
                f"got {self.checkpoint!r}"
            )
        if not 0.0 <= self.weight <= 1.0:
            raise UserError(f"distill.weight: expected a value in [0, 1], got {self.weight}")
        if self.temperature <= 0:
            raise UserError(f"distill.temperature: expected > 0, got {self.temperature}")


def distillation_loss(
    student: Tensor, teacher: Tensor, config: DistillConfig, label_loss: Tensor
) -> Tensor:
    """``(1 - weight) * label_loss + weight * distillation term`` of ``[B, C]`` logits.

    Args:
        student: The student's logits (with gradients).
        teacher: The teacher's logits on the same images (no gradients).
        config: ``kind``, ``weight`` and ``temperature``.
        label_loss: The student's loss against the labels.
    """
    student, teacher = student.float(), teacher.float()
    if config.kind == "hard":
        term = F.cross_entropy(student, teacher.argmax(dim=-1))
    else:
        t = config.temperature
        log_p = F.log_softmax(student / t, dim=-1)
        log_q = F.log_softmax(teacher / t, dim=-1)
        term = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * t * t
    return (1.0 - config.weight) * label_loss + config.weight * term


class Teacher:
    """A trained run's model, frozen, that scores the student's training batches.

    Loaded on first use, so that ``evaluate`` and ``classify`` of a distilled run never need
    the teacher run.

    Args:
        config: The ``distill`` section (its ``teacher`` set).
        data_keys: The student's ``data.image_size``, ``mean`` and ``std``, which the
            teacher's must equal (the teacher sees the student's normalized batches).
        class_names: The student's classes, which must be the teacher's, in the same order.
    """

    def __init__(
        self, config: DistillConfig, data_keys: dict[str, object], class_names: list[str]
    ) -> None:
        self.config = config
        self.data_keys = data_keys
        self.class_names = class_names
        self.model: nn.Module | None = None

    def _load(self, device: torch.device) -> nn.Module:
        from tasks.registry import load_trained  # the registry imports this task's module

        run_dir = Path(str(self.config.teacher))
        if not run_dir.is_dir():
            raise UserError(f"distill.teacher: {run_dir} is not a run directory")
        task, model = load_trained(run_dir, self.config.checkpoint, "image_classification")
        data = task.config.data
        for key, value in self.data_keys.items():
            if getattr(data, key) != value:
                raise UserError(
                    f"distill.teacher: {run_dir} was trained with data.{key}="
                    f"{getattr(data, key)!r}; the student has {value!r} (they must match)"
                )
        if task.class_names != self.class_names:
            raise UserError(
                f"distill.teacher: {run_dir} has classes {task.class_names}; the student has "
                f"{self.class_names}"
            )
        for param in model.parameters():
            param.requires_grad_(False)
        return model.to(device).eval()

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        """The teacher's logits of normalized ``images [B, 3, H, W]`` (inference mode)."""
        if self.model is None:
            self.model = self._load(images.device)
        return self.model(images)
