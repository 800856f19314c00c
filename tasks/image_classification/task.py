"""`ImageClassificationTask`: the engine's `Task` for a ViT or a small-image ResNet-18."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.image_classification.augment import (
    TrainAugment,
    eval_transform,
    shift,
    soft_cross_entropy,
)
from tasks.image_classification.config import ImageClassificationConfig
from tasks.image_classification.convnet import ConvNet
from tasks.image_classification.data import ImageRecords, ImageStore, load_splits
from tasks.image_classification.distill import Teacher, distillation_loss
from tasks.image_classification.images import decode_image, fit_square
from tasks.image_classification.metrics import (
    confusion_matrix,
    per_class_accuracy,
    plot_confusion_matrix,
    topk_correct,
)
from tasks.image_classification.resnet import small_resnet18
from unitransformer.embeddings import ConvStem
from unitransformer.engine.checkpoint import atomic_write_text
from unitransformer.engine.optim import weight_decay_groups
from unitransformer.engine.task import StepOutput
from unitransformer.errors import UserError
from unitransformer.models import VisionTransformer, ViTConfig

__all__ = ["CLASSES_FILE", "PRETRAINED_CONFIG_FILE", "ImageClassificationTask"]

CLASSES_FILE = "classes.json"
# The shape of a fine-tuned ViT, read off the pretrained checkpoint when the run started, so that
# `evaluate` and `classify` rebuild it without the original file (or the hub).
PRETRAINED_CONFIG_FILE = "vit_config.json"
_NO_DECAY_NAMES = ("pos_embed", "cls_token")


class ImageClassificationTask:
    """Image classification: data, model, loss, metrics and parameter groups for the engine.

    Args:
        config: The whole run config (validated here; a bad key raises `UserError`).
    """

    def __init__(self, config: ImageClassificationConfig) -> None:
        config.validate()
        self.config = config
        self.run_dir: Path | None = None
        self.class_names: list[str] | None = None
        self._records: dict[str, ImageRecords] | None = None
        self._stores: dict[str, ImageStore] = {}
        self._loaded_pretrained = False
        self.teacher: Teacher | None = None

    # ----- assets -------------------------------------------------------------------------
    def prepare(self, run_dir: Path) -> None:
        """Loads ``classes.json`` from ``run_dir``, or reads the class names off the data and
        saves them there (so that `classify` needs the run directory only).
        """
        self.run_dir = Path(run_dir)
        path = self.run_dir / CLASSES_FILE
        if path.is_file():
            try:
                names = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as error:
                raise UserError(f"{path}: unreadable class list ({error})") from None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise UserError(f"{path}: expected a JSON list of class names")
            self.class_names = names
            return
        self._load_records()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.class_names, indent=1) + "\n")

    def _load_records(self) -> dict[str, ImageRecords]:
        if self._records is None:
            records, names = load_splits(self.config.data)
            if self.class_names is not None and names != self.class_names:
                raise UserError(
                    f"{self.run_dir}/{CLASSES_FILE}: the run's classes {self.class_names[:10]} "
                    f"differ from the data's {names[:10]}"
                )
            self._records, self.class_names = records, names
        return self._records

    def _store(self, split: str) -> ImageStore:
        if split not in self._stores:
            records = self._load_records()
            if split not in records:
                raise UserError(
                    f"data: no {split!r} split; set data.{split}_split, or data.holdout "
                    f"(val) / data.test_holdout (test) to hold images out of the training split"
                )
            data = self.config.data
            size = data.store_size or data.image_size
            self._stores[split] = ImageStore(
                records[split], size, data.max_memory_mb, data.num_workers
            )
        return self._stores[split]

    @property
    def num_classes(self) -> int:
        """Classes of the run (known after `prepare`)."""
        if self.class_names is None:
            raise RuntimeError("call prepare(run_dir) before building the model")
        return len(self.class_names)

    # ----- model --------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """A fresh ViT or ResNet-18 for the run's classes; a fine-tuning run starts from the
        pretrained checkpoint (new head, positions resampled) the first time it is built.
        """
        m, data = self.config.model, self.config.data
        if m.arch == "resnet18":
            return small_resnet18(self.num_classes)
        if m.arch == "convnet":
            return ConvNet(self.num_classes)
        if m.pretrained is not None:
            return self._pretrained_vit()
        base = ViTConfig.named(m.size) if m.size is not None else ViTConfig()
        config = replace(
            base, **m.vit_overrides(), image_size=data.image_size, num_classes=self.num_classes
        )
        if config.stem == "conv" and config.stem_widths:
            stages = ConvStem.num_stages(config.patch_size, config.stem_input_blocks)
            if len(config.stem_widths) != stages:
                raise UserError(
                    f"model.stem_widths: expected {stages} channel counts, one per stem stage "
                    f"(patch_size={config.patch_size}, stem_input_blocks="
                    f"{config.stem_input_blocks}), got {list(config.stem_widths)}"
                )
        try:
            return VisionTransformer(config)
        except ValueError as error:  # e.g. an image size that is not a multiple of the patch
            raise UserError(f"model / data.image_size: {error}") from None

    def _pretrained_vit(self) -> VisionTransformer:
        m = self.config.model
        saved = self.run_dir / PRETRAINED_CONFIG_FILE if self.run_dir is not None else None
        if saved is not None and saved.is_file() and not self._loaded_pretrained:
            # Resume, evaluate or classify: the checkpoint holds the weights; only the shape
            # is needed, and the pretrained source may no longer be reachable.
            return VisionTransformer(ViTConfig(**json.loads(saved.read_text(encoding="utf-8"))))
        from unitransformer.interop import load_pretrained_vit

        loaded = load_pretrained_vit(
            m.pretrained, num_classes=self.num_classes, image_size=self.config.data.image_size
        )
        config = replace(loaded.config, **m.regularization())
        model = VisionTransformer(config)  # the run's regularization, the pretrained weights
        model.load_state_dict(loaded.state_dict())
        self._loaded_pretrained = True
        if saved is not None:
            atomic_write_text(saved, json.dumps(asdict(config), indent=1) + "\n")
        return model

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """Weight decay on weight matrices and kernels only; none on norms, biases, the
        position embeddings and the class token (as in the ViT and DeiT recipes).
        """
        return weight_decay_groups(model, weight_decay, no_decay=_NO_DECAY_NAMES)

    # ----- training -----------------------------------------------------------------------
    def train_batches(self, epoch: int, rank: int, world_size: int) -> Iterator[dict[str, Tensor]]:
        """Augmented batches of one epoch for ``rank``: ``{"images", "targets", "labels"}``.

        The order and the augmentation depend only on ``(train.seed, epoch)`` (and the batch's
        position), so that a resumed run replays the epoch exactly. Every rank gets
        ``data.batch_size / world_size`` images of each global batch; the last partial global
        batch is dropped so that all ranks take the same number of steps.
        """
        batch_size = self.config.data.batch_size
        if batch_size % world_size:
            raise UserError(
                f"data.batch_size: {batch_size} is not divisible by the {world_size} ranks"
            )
        store = self._store("train")
        augment = TrainAugment(self.config.data, self.num_classes)
        return self._epoch(store, augment, epoch, rank, world_size)

    def _epoch(
        self, store: ImageStore, augment: TrainAugment, epoch: int, rank: int, world_size: int
    ) -> Iterator[dict[str, Tensor]]:
        seed = self.config.train.seed
        order = torch.randperm(len(store), generator=torch.Generator().manual_seed(seed + epoch))
        batch_size = min(self.config.data.batch_size, len(store) - len(store) % world_size)
        for i in range(len(store) // batch_size):
            indices = order[i * batch_size : (i + 1) * batch_size][rank::world_size]
            images, labels = store.get(indices)
            with torch.random.fork_rng(devices=[]):
                # One seed per (run, epoch, batch, rank): reproducible and independent of how
                # much global randomness the model (dropout, drop-path) consumed meanwhile.
                torch.manual_seed(hash((seed, epoch, i, rank)) & 0x7FFF_FFFF_FFFF)
                x, targets = augment(images, labels)
            side = self.config.data.train_side(epoch)
            if side != self.config.data.image_size:
                # After the crop and flip at full size, so that low-res epochs see the same
                # views, only coarser; antialiasing keeps the downscale from aliasing.
                x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
            yield {"images": x, "targets": targets, "labels": labels}

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> StepOutput:
        """Cross-entropy (soft under mixup/cutmix, label-smoothed) and the batch's accuracy."""
        device = next(model.parameters()).device
        images = batch["images"].to(device, non_blocking=True)
        targets = batch["targets"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        logits = model(images)
        loss = soft_cross_entropy(logits, targets, self.config.data.label_smoothing)
        logs = {"accuracy": (logits.detach().argmax(-1) == labels).float().mean()}
        if self.config.distill.teacher is not None:
            teacher = self._teacher()(images)
            loss = distillation_loss(logits, teacher, self.config.distill, loss)
            logs["teacher_accuracy"] = (teacher.argmax(-1) == labels).float().mean()
        return StepOutput(loss=loss, num_items=int(images.shape[0]), logs=logs)

    def _teacher(self) -> Teacher:
        if self.teacher is None:
            data = self.config.data
            keys = {"image_size": data.image_size, "mean": data.mean, "std": data.std}
            self.teacher = Teacher(self.config.distill, keys, list(self.class_names or []))
        return self.teacher

    # ----- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def images(self, split: str, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Decoded ``uint8 [N, 3, S, S]`` images of ``split`` at ``indices``, and their labels."""
        return self._store(split).get(torch.as_tensor(list(indices)))

    def preprocess(self, images: Tensor) -> Tensor:
        """What the model sees at evaluation: ``uint8`` images resized and normalized."""
        return eval_transform(images, self.config.data)

    @torch.no_grad()
    def predict_logits(self, model: nn.Module, split: str) -> tuple[Tensor, Tensor]:
        """``(logits [N, C] float32 on CPU, labels [N])`` of every image of ``split``."""
        store = self._store(split)
        device = next(model.parameters()).device
        step = self.config.data.eval_batch_size
        outputs = []
        for start in range(0, len(store), step):
            images, _ = store.get(torch.arange(start, min(start + step, len(store))))
            x = eval_transform(images, self.config.data).to(device)
            outputs.append(self._logits(model, x).cpu())
        return torch.cat(outputs), store.labels

    def _logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """float32 logits of normalized images ``x``, averaged over the test-time views.

        The views: ``x``; with ``data.eval_shift`` x moved by that many pixels down-right and
        up-left; with ``data.eval_hflip`` the mirror image of each (the classes of photos do
        not change under a left-right flip or a small translation).
        """
        data = self.config.data
        views = [x]
        if data.eval_shift:
            views += [shift(x, data.eval_shift), shift(x, -data.eval_shift)]
        if data.eval_hflip:
            views += [v.flip(-1) for v in views]
        return torch.stack([model(v).float() for v in views]).mean(dim=0)

    def evaluate(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        """Top-1 ``accuracy`` and ``top5`` (fractions in 0..1), mean cross-entropy ``loss``,
        and ``accuracy/<class>`` per class (when there are at most 100 classes; all of them go
        to ``per_class_<split>.json``). Writes ``confusion_<split>.png`` to the run directory.
        """
        was_training = model.training
        model.eval()
        try:
            logits, labels = self.predict_logits(model, split)
        finally:
            model.train(was_training)
        names = self.class_names or []
        confusion = confusion_matrix(logits.argmax(-1), labels, len(names))
        per_class = per_class_accuracy(confusion)
        metrics = {
            "accuracy": float(topk_correct(logits, labels, 1).float().mean()),
            "top5": float(topk_correct(logits, labels, 5).float().mean()),
            "loss": float(torch.nn.functional.cross_entropy(logits, labels)),
        }
        by_class = {name: float(acc) for name, acc in zip(names, per_class.tolist(), strict=True)}
        if len(names) <= 100:
            metrics.update({f"accuracy/{name}": acc for name, acc in by_class.items()})
        if self.run_dir is not None:
            plot_confusion_matrix(
                confusion, names, self.run_dir / f"confusion_{split}.png", f"{split} confusion"
            )
            report = {"per_class_accuracy": by_class, "confusion": confusion.tolist()}
            atomic_write_text(self.run_dir / f"per_class_{split}.json", json.dumps(report) + "\n")
        return metrics

    # ----- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def classify_files(
        self, model: nn.Module, paths: Sequence[str | Path], top_k: int = 5
    ) -> list[list[tuple[str, float]]]:
        """The ``top_k`` (class name, probability) of each image file, most likely first.

        Raises:
            BadImageError: For an unreadable image, naming it (before any image is scored).
        """
        data = self.config.data
        size = data.store_size or data.image_size
        images = torch.stack([fit_square(decode_image(path=p), size) for p in paths])
        device = next(model.parameters()).device
        model.eval()
        probs = self._logits(model, eval_transform(images, data).to(device)).softmax(-1).cpu()
        top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        names = self.class_names or []
        return [
            [(names[i], float(p)) for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
            for row_p, row_i in zip(top.values, top.indices, strict=True)
        ]
