"""Image classification: a Vision Transformer or a small-image ResNet-18 on image datasets."""

from tasks.image_classification.config import (
    ImageClassificationConfig,
    ImageDataConfig,
    ImageModelConfig,
)
from tasks.image_classification.task import ImageClassificationTask

__all__ = [
    "ImageClassificationConfig",
    "ImageClassificationTask",
    "ImageDataConfig",
    "ImageModelConfig",
]
