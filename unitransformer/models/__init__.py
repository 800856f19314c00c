"""Complete models built from the shared blocks."""

from unitransformer.models.seq2seq import SEQ2SEQ_SIZES, Seq2SeqConfig, Seq2SeqTransformer
from unitransformer.models.vit import VIT_SIZES, VisionTransformer, ViTConfig

__all__ = [
    "SEQ2SEQ_SIZES",
    "VIT_SIZES",
    "Seq2SeqConfig",
    "Seq2SeqTransformer",
    "ViTConfig",
    "VisionTransformer",
]
