"""Typed configuration of the image-classification task (a ViT or the small-image ResNet-18)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from tasks.image_classification.distill import DistillConfig
from unitransformer.engine.config import EvalConfig, OptimConfig, ScheduleConfig, TrainConfig
from unitransformer.errors import UserError
from unitransformer.models import VIT_SIZES

__all__ = ["ImageClassificationConfig", "ImageDataConfig", "ImageModelConfig"]

SourceKind = Literal["digits", "hub", "parquet", "arrow", "imagefolder", "torchvision_folder"]


# The ViT shape fields a config may override (all set by a pretrained checkpoint instead).
VIT_SHAPE = (
    "patch_size",
    "dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "pool",
    "stem",
    "stem_width",
    "stem_blocks",
    "stem_input_blocks",
    "stem_widths",
    "stem_downsample",
)


@dataclass
class ImageModelConfig:
    """The classifier.

    Attributes:
        arch: ``vit`` (the Vision Transformer), ``resnet18`` (the small-image baseline) or
            ``convnet`` (the fast small-image ConvNet of `convnet.ConvNet`, a distillation
            teacher).
        size: A ViT size of `unitransformer.models.VIT_SIZES`; ``None`` takes every shape
            field below (which must then all be set) directly.
        patch_size: Overrides the size's patch side.
        dim: Overrides the token width.
        depth: Overrides the number of encoder blocks.
        num_heads: Overrides the number of attention heads.
        mlp_ratio: Overrides the MLP hidden width over ``dim``.
        pool: Overrides the pooling, ``cls`` or ``mean``.
        stem: Overrides the tokenizer of the image: ``patch`` (linear patches, the ViT) or
            ``conv`` (a small convolutional stem, the paper's hybrid).
        stem_width: Overrides the channels of the conv stem's first convolution.
        stem_blocks: Overrides the residual blocks after each strided convolution of the stem.
        stem_input_blocks: Overrides the residual blocks of the stem at the input resolution
            (after a stride-1 convolution; 0 starts the stem with a strided convolution).
        stem_widths: Overrides the channels of each stem stage, first to last (the
            input-resolution stage when there is one, then one per strided convolution), e.g.
            ``[64, 128, 256]``: stages 1-3 of a small-image ResNet-18, as the paper's hybrid.
        stem_downsample: Overrides how the conv stem halves the resolution: ``stride``
            (stride-2 convolutions) or ``pool`` (stride-1 convolutions and 2x2 max-pools).
        dropout: Dropout on embeddings and residual branches.
        attn_dropout: Dropout on attention probabilities.
        drop_path: Stochastic-depth rate of the last block.
        patch_drop: Fraction of the patch tokens each training image drops (PatchDropout):
            regularizes, and 0.5 halves the encoder's work per step; evaluation keeps all.
        pretrained: A ViT checkpoint to fine-tune from (a local torchvision/timm file, or a hub
            name when online), loaded through `unitransformer.interop.load_pretrained_vit`
            with a new head and position embeddings resampled to ``data.image_size``.
    """

    arch: Literal["vit", "resnet18", "convnet"] = "vit"
    size: str | None = "digits"
    patch_size: int | None = None
    dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    pool: Literal["cls", "mean"] | None = None
    stem: Literal["patch", "conv"] | None = None
    stem_width: int | None = None
    stem_blocks: int | None = None
    stem_input_blocks: int | None = None
    stem_widths: tuple[int, ...] | None = None
    stem_downsample: Literal["stride", "pool"] | None = None
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    patch_drop: float = 0.0
    pretrained: str | None = None

    def vit_overrides(self) -> dict[str, object]:
        """The ViT fields this config sets (the ``None`` ones keep the size's value)."""
        out: dict[str, object] = {
            k: getattr(self, k) for k in VIT_SHAPE if getattr(self, k) is not None
        }
        out.update(self.regularization())
        return out

    def regularization(self) -> dict[str, float]:
        """The ViT fields a run sets even over a pretrained checkpoint's shape."""
        keys = ("dropout", "attn_dropout", "drop_path", "patch_drop")
        return {key: getattr(self, key) for key in keys}

    def validate(self) -> None:
        """Raises `UserError` naming the first ``model.*`` key that is out of range."""
        if self.arch not in ("vit", "resnet18", "convnet"):
            raise UserError(
                f"model.arch: expected 'vit', 'resnet18' or 'convnet', got {self.arch!r}"
            )
        if self.arch == "vit" and self.pretrained is None:
            if self.size is not None and self.size not in VIT_SIZES:
                raise UserError(
                    f"model.size: expected one of {sorted(VIT_SIZES)} or null, got {self.size!r}"
                )
            if self.size is None:
                for key in ("patch_size", "dim", "depth", "num_heads"):
                    if getattr(self, key) is None:
                        raise UserError(f"model.{key}: required when model.size is null")
        if self.pretrained is not None:
            for key in VIT_SHAPE:
                if getattr(self, key) is not None:
                    raise UserError(
                        f"model.{key}: the pretrained checkpoint sets the shape; leave it null"
                    )
        if self.arch != "vit" and self.pretrained is not None:
            raise UserError("model.pretrained: only a ViT can be fine-tuned (model.arch: vit)")
        if self.stem_width is not None and self.stem_width < 1:
            raise UserError(f"model.stem_width: expected >= 1 channel, got {self.stem_width}")
        if self.stem_widths is not None and min(self.stem_widths, default=1) < 1:
            raise UserError(
                f"model.stem_widths: expected channel counts >= 1, got {list(self.stem_widths)}"
            )
        for key in ("stem_blocks", "stem_input_blocks"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise UserError(f"model.{key}: expected >= 0 blocks, got {getattr(self, key)}")
        for key in ("dropout", "attn_dropout", "drop_path", "patch_drop"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise UserError(f"model.{key}: expected a rate in [0, 1), got {getattr(self, key)}")


@dataclass
class ImageDataConfig:
    """Where the images come from and how they are augmented.

    Attributes:
        source: ``digits`` (scikit-learn's 8x8 digits, built in), ``hub`` (a Hugging Face
            dataset name), ``parquet`` / ``arrow`` (local files of a Hugging Face dataset, or an
            ``arrow`` directory saved with ``save_to_disk``), ``imagefolder`` (Hugging Face's
            ``imagefolder`` loader) or ``torchvision_folder`` (``root/<class>/<image>``).
        path: The local file or directory (every source but ``digits`` and ``hub``). A
            ``parquet`` or ``arrow`` path may hold ``{split}`` (e.g. ``data/{split}.parquet``).
        name: The hub dataset, e.g. ``uoft-cs/cifar10`` (``hub`` only).
        image_column: The image column; discovered (an ``Image`` feature) when ``None``.
        label_column: The label column; discovered (a ``ClassLabel`` feature or ``label``).
        train_split: The split to train on.
        val_split: A split to validate on; ``None`` holds out ``holdout`` training images.
        test_split: A split to test on; ``None`` holds out ``test_holdout`` training images.
        holdout: Training images held out for validation when ``val_split`` is ``None``.
        test_holdout: Training images held out for testing when ``test_split`` is ``None``.
        holdout_seed: Seed of the held-out draw (fixed, so every run sees the same split).
        image_size: Side of the images the model sees.
        store_size: Side at which decoded images are kept in memory (default ``image_size``);
            larger keeps detail for random-resized crops of big photos, smaller saves memory
            (CIFAR kept at 32 and resized to a fine-tuned ViT's 96 on the fly).
        max_memory_mb: Decode every image once and keep the uint8 tensor in memory when it
            takes at most this many MiB; otherwise decode each batch as it is drawn.
        crop: ``resized`` (random resized crop), ``pad`` (pad by ``padding`` and crop
            back, the CIFAR recipe) or ``none``.
        crop_scale: Smallest area fraction of a random resized crop.
        padding: Pixels of reflection padding of the ``pad`` crop.
        hflip: Flip half of the training images left-right (off for digits, text...).
        auto_augment: ``none``, ``randaugment`` or ``trivialaugment`` (per image).
        randaugment_num_ops: Operations RandAugment applies to each image.
        randaugment_magnitude: RandAugment's magnitude (0..30).
        mixup_alpha: Beta(alpha, alpha) of mixup; 0 disables it.
        cutmix_alpha: Beta(alpha, alpha) of cutmix; 0 disables it (both on: one per batch).
        mix_prob: Fraction of batches that are mixed when mixup or cutmix is on.
        random_erasing: Probability of erasing a random rectangle of each image.
        label_smoothing: Weight of the uniform distribution in the training targets.
        mean: Per-channel mean of the normalization (of images in 0..1).
        std: Per-channel standard deviation of the normalization.
        batch_size: Training images per batch, summed over ranks.
        eval_batch_size: Images per evaluation batch.
        eval_hflip: At evaluation and in ``classify``, average the logits of each image and of
            its mirror image (flip test-time augmentation; twice the inference cost).
        eval_shift: At evaluation and in ``classify``, also average the logits of each image
            moved this many pixels down-right and up-left (reflection padding, as the
            training crops pad), and their mirror images with ``eval_hflip``; 0 disables it.
            3x the inference cost.
        num_workers: Threads that decode images (0: one per CPU core).
        low_res_size: Progressive resizing: the side the augmented training images are
            downscaled to (antialiased bilinear) during the first ``low_res_epochs`` epochs,
            where each step is cheaper (a ViT interpolates its position embeddings to the
            smaller grid); evaluation always sees ``image_size``. A list gives stages of
            growing sides (``[16, 24]``), one per entry of ``low_res_epochs``.
        low_res_epochs: Epochs trained at ``low_res_size`` (a list: at each of its sides, in
            order); 0 disables progressive resizing.
    """

    source: SourceKind = "digits"
    path: str | None = None
    name: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    train_split: str = "train"
    val_split: str | None = None
    test_split: str | None = None
    holdout: int = 0
    test_holdout: int = 0
    holdout_seed: int = 0
    image_size: int = 8
    store_size: int | None = None
    max_memory_mb: int = 8192
    crop: Literal["resized", "pad", "none"] = "none"
    crop_scale: float = 0.35
    padding: int = 4
    hflip: bool = False
    auto_augment: Literal["none", "randaugment", "trivialaugment"] = "none"
    randaugment_num_ops: int = 2
    randaugment_magnitude: int = 9
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    random_erasing: float = 0.0
    label_smoothing: float = 0.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    batch_size: int = 128
    eval_batch_size: int = 256
    eval_hflip: bool = False
    eval_shift: int = 0
    num_workers: int = 0
    low_res_size: int | tuple[int, ...] = 0
    low_res_epochs: int | tuple[int, ...] = 0

    def low_res_stages(self) -> list[tuple[int, int]]:
        """The progressive-resizing stages as ``(side, epochs)`` pairs, in training order."""
        sides, epochs = _as_tuple(self.low_res_size), _as_tuple(self.low_res_epochs)
        return list(zip(sides, epochs, strict=False))

    def train_side(self, epoch: int) -> int:
        """The side of the training images of ``epoch`` (0-based) under progressive resizing."""
        end = 0
        for side, epochs in self.low_res_stages():
            end += epochs
            if epoch < end:
                return side
        return self.image_size

    def validate(self) -> None:
        """Raises `UserError` naming the first ``data.*`` key that is missing or out of range."""
        if (
            self.source in ("parquet", "arrow", "imagefolder", "torchvision_folder")
            and not self.path
        ):
            raise UserError(f"data.path: required with data.source: {self.source}")
        if self.source == "hub" and not self.name:
            raise UserError("data.name: required with data.source: hub (e.g. uoft-cs/cifar10)")
        positive = ("image_size", "batch_size", "eval_batch_size", "max_memory_mb")
        for key in positive:
            if getattr(self, key) <= 0:
                raise UserError(
                    f"data.{key}: expected a positive integer, got {getattr(self, key)}"
                )
        nonnegative = ("holdout", "test_holdout", "padding", "eval_shift", "num_workers")
        nonnegative = (*nonnegative, "randaugment_num_ops")
        for key in nonnegative:
            if getattr(self, key) < 0:
                raise UserError(f"data.{key}: expected >= 0, got {getattr(self, key)}")
        unit = ("crop_scale", "mix_prob", "random_erasing", "label_smoothing")
        for key in unit:
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise UserError(f"data.{key}: expected a value in [0, 1], got {getattr(self, key)}")
        if not 0 <= self.randaugment_magnitude <= 30:
            raise UserError(
                f"data.randaugment_magnitude: expected a bin in 0..30, got {self.randaugment_magnitude}"
            )
        for key in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                raise UserError(f"data.{key}: expected >= 0 (0 disables), got {getattr(self, key)}")
        for key in ("mean", "std"):
            if len(getattr(self, key)) != 3:
                raise UserError(f"data.{key}: expected 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise UserError(f"data.std: expected positive values, got {list(self.std)}")
        if self.eval_shift >= self.image_size:
            raise UserError(
                f"data.eval_shift: expected fewer pixels than data.image_size "
                f"({self.image_size}), got {self.eval_shift}"
            )
        if self.store_size is not None and self.store_size <= 0:
            raise UserError(f"data.store_size: expected a positive integer, got {self.store_size}")
        self._validate_low_res()

    def _validate_low_res(self) -> None:
        sides, epochs = _as_tuple(self.low_res_size), _as_tuple(self.low_res_epochs)
        if any(e < 0 for e in epochs):
            raise UserError(f"data.low_res_epochs: expected >= 0, got {self.low_res_epochs}")
        if not any(epochs):
            return  # progressive resizing is off: the sides are ignored
        if len(sides) != len(epochs):
            raise UserError(
                f"data.low_res_size: expected one side per entry of data.low_res_epochs "
                f"({len(epochs)}), got {self.low_res_size}"
            )
        for side, n in zip(sides, epochs, strict=True):
            if n and not 0 < side < self.image_size:
                raise UserError(
                    f"data.low_res_size: expected a side in 1..{self.image_size - 1} (below "
                    f"data.image_size) with data.low_res_epochs: {self.low_res_epochs}, "
                    f"got {self.low_res_size}"
                )


def _as_tuple(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


@dataclass
class ImageClassificationConfig:
    """The whole config of an image-classification run.

    Attributes:
        task: Always ``image_classification`` (picks this task in the registry).
        model: The classifier.
        data: The images and their augmentation.
        optim: The optimizer (AdamW; no decay on norms, biases, pos_embed and cls_token).
        schedule: Warmup then cosine decay.
        train: The loop (steps, precision, EMA of the weights, seed).
        eval: Evaluation; picks the best checkpoint by top-1 ``accuracy`` (a fraction).
        distill: Distillation from a trained teacher run (off unless ``distill.teacher``).
    """

    # What `unitransformer evaluate RUN_DIR key=value` may change: how a model is run, never
    # what was trained or how its inputs are prepared.
    EVALUATE_OVERRIDES: ClassVar[tuple[str, ...]] = (
        "data.eval_batch_size",
        "data.eval_hflip",
        "data.eval_shift",
        "data.num_workers",
        "train.precision",
        "train.device",
    )

    task: str = "image_classification"
    model: ImageModelConfig = field(default_factory=ImageModelConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.05))
    schedule: ScheduleConfig = field(
        default_factory=lambda: ScheduleConfig(name="cosine", warmup_steps=100)
    )
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(metric="accuracy", mode="max"))
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> None:
        """Raises `UserError` naming the first key that is out of range."""
        if self.task != "image_classification":
            raise UserError(f"task: expected 'image_classification', got {self.task!r}")
        self.model.validate()
        self.data.validate()
        self.distill.validate()
        metrics = {"accuracy", "top5", "loss"}
        if self.eval.metric not in metrics:
            raise UserError(
                f"eval.metric: expected one of {sorted(metrics)}, got {self.eval.metric!r}"
            )
