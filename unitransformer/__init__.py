"""unitransformer: one attention core for translation and image classification."""

from unitransformer.attention import (
    Attention,
    CrossAttentionCache,
    SelfAttentionCache,
    attention_reference,
    scaled_dot_product_attention,
)
from unitransformer.dropout import Dropout
from unitransformer.embeddings import (
    LearnedPositions,
    PatchEmbedding,
    SinusoidalPositions,
    TokenEmbedding,
)
from unitransformer.layers import MLP, DecoderBlock, DropPath, EncoderBlock
from unitransformer.models import (
    Seq2SeqConfig,
    Seq2SeqTransformer,
    VisionTransformer,
    ViTConfig,
)
from unitransformer.stacks import Decoder, DecoderCache, Encoder

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "Attention",
    "CrossAttentionCache",
    "Decoder",
    "DecoderBlock",
    "DecoderCache",
    "Dropout",
    "DropPath",
    "Encoder",
    "EncoderBlock",
    "LearnedPositions",
    "PatchEmbedding",
    "SelfAttentionCache",
    "Seq2SeqConfig",
    "Seq2SeqTransformer",
    "SinusoidalPositions",
    "TokenEmbedding",
    "ViTConfig",
    "VisionTransformer",
    "attention_reference",
    "scaled_dot_product_attention",
]
