"""The Transformer encoder-decoder of "Attention is all you need", for translation."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unitransformer.dropout import Dropout
from unitransformer.embeddings import LearnedPositions, SinusoidalPositions, TokenEmbedding
from unitransformer.stacks import Decoder, DecoderCache, Encoder

__all__ = ["SEQ2SEQ_SIZES", "Seq2SeqConfig", "Seq2SeqTransformer"]


@dataclass
class Seq2SeqConfig:
    """The shape and regularization of a `Seq2SeqTransformer`.

    Attributes:
        src_vocab_size: Source vocabulary size.
        tgt_vocab_size: Target vocabulary size.
        pad_id: Padding token id; padding masks are derived from it.
        bos_id: The token the decoder starts from.
        eos_id: The token that ends a sentence.
        dim: Model width d_model.
        encoder_depth: Encoder blocks.
        decoder_depth: Decoder blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width over ``dim``, unless ``mlp_dim`` is set.
        mlp_dim: MLP hidden width d_ff.
        activation: MLP activation (relu in the paper, swish in opus-mt).
        norm_first: Pre-LN if True; post-LN (the paper, Marian) if False.
        dropout: Dropout on embeddings and residual branches.
        attn_dropout: Dropout on attention probabilities.
        activation_dropout: Dropout after the MLP activation.
        scale_embedding: Multiply token embeddings by ``sqrt(dim)``.
        positions: ``sinusoidal`` (fixed) or ``learned``.
        max_len: Longest sequence the learned positions cover.
        tie_embeddings: ``none``; ``output`` (target embedding = output projection); ``all``
            (source, target and output share one table; needs one joint vocabulary).
        final_logits_bias: A bias on the output logits (Marian has one).
        qkv_bias: Bias on the q, k, v projections.
        norm_eps: LayerNorm epsilon.
    """

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    dim: int = 512
    encoder_depth: int = 6
    decoder_depth: int = 6
    num_heads: int = 8
    mlp_ratio: float = 4.0
    mlp_dim: int | None = None
    activation: str = "relu"
    norm_first: bool = False
    dropout: float = 0.1
    attn_dropout: float = 0.0
    activation_dropout: float = 0.0
    scale_embedding: bool = True
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_len: int = 1024
    tie_embeddings: Literal["none", "output", "all"] = "all"
    final_logits_bias: bool = False
    qkv_bias: bool = True
    norm_eps: float = 1e-5

    @classmethod
    def named(cls, size: str, **overrides: object) -> Seq2SeqConfig:
        """A config of a named size (see `SEQ2SEQ_SIZES`) with fields overridden."""
        if size not in SEQ2SEQ_SIZES:
            raise ValueError(f"unknown size {size!r}; expected one of {sorted(SEQ2SEQ_SIZES)}")
        return replace(SEQ2SEQ_SIZES[size], **overrides)


SEQ2SEQ_SIZES: dict[str, Seq2SeqConfig] = {
    # The paper's base and big models (Vaswani et al. 2017, table 3).
    "base": Seq2SeqConfig(dim=512, encoder_depth=6, decoder_depth=6, num_heads=8, mlp_dim=2048),
    "big": Seq2SeqConfig(
        dim=1024, encoder_depth=6, decoder_depth=6, num_heads=16, mlp_dim=4096, dropout=0.3
    ),
    # The small model of the best from-scratch Multi30k result (Wu et al., ACL 2021).
    "small": Seq2SeqConfig(
        dim=128, encoder_depth=4, decoder_depth=4, num_heads=4, mlp_dim=256, dropout=0.3
    ),
    "tiny": Seq2SeqConfig(dim=64, encoder_depth=2, decoder_depth=2, num_heads=4, mlp_dim=128),
}


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer: ``encode`` a source, ``decode`` a target against it.

    ``forward(src_ids, tgt_ids)`` is teacher forcing: ``tgt_ids`` are the decoder's inputs
    (starting with ``bos_id``), and the logits predict the next token at each position.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        c = self.config = config
        if c.tie_embeddings == "all" and c.src_vocab_size != c.tgt_vocab_size:
            raise ValueError(
                "tie_embeddings='all' needs one joint vocabulary, but src_vocab_size="
                f"{c.src_vocab_size} and tgt_vocab_size={c.tgt_vocab_size}"
            )
        self.src_embed = TokenEmbedding(c.src_vocab_size, c.dim, c.pad_id, c.scale_embedding)
        if c.tie_embeddings == "all":
            self.tgt_embed = self.src_embed
        else:
            self.tgt_embed = TokenEmbedding(c.tgt_vocab_size, c.dim, c.pad_id, c.scale_embedding)
        if c.positions == "sinusoidal":
            self.positions: nn.Module = SinusoidalPositions(c.dim, c.max_len)
        else:
            self.positions = LearnedPositions(c.dim, c.max_len)
        self.dropout = Dropout(c.dropout)
        stack = dict(
            dim=c.dim,
            num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio,
            mlp_dim=c.mlp_dim,
            qkv_bias=c.qkv_bias,
            dropout=c.dropout,
            attn_dropout=c.attn_dropout,
            activation_dropout=c.activation_dropout,
            norm_first=c.norm_first,
            activation=c.activation,
            norm_eps=c.norm_eps,
        )
        self.encoder = Encoder(depth=c.encoder_depth, **stack)
        self.decoder = Decoder(depth=c.decoder_depth, **stack)
        self.output = nn.Linear(c.dim, c.tgt_vocab_size, bias=False)
        if c.final_logits_bias:
            self.final_logits_bias = nn.Parameter(torch.zeros(c.tgt_vocab_size))
        else:
            self.register_parameter("final_logits_bias", None)
        self._init_weights()
        if c.tie_embeddings != "none":
            self.output.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _embed(self, embed: TokenEmbedding, ids: Tensor, offset: int = 0) -> Tensor:
        x = embed(ids) + self.positions(ids.shape[1], offset)  # [B, T, dim]
        return self.dropout(x)

    def encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Encodes ``src_ids [B, S]``.

        Returns:
            The memory ``[B, S, dim]`` and its padding mask ``[B, S]`` (True at padding).
        """
        padding_mask = src_ids.eq(self.config.pad_id)
        memory = self.encoder(self._embed(self.src_embed, src_ids), padding_mask)
        return memory, padding_mask

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Next-token logits ``[B, T, tgt_vocab]`` for ``tgt_ids [B, T]``.

        With a ``cache`` (from `new_cache`), ``tgt_ids`` holds only the steps not yet decoded;
        ``memory`` may then have fewer rows than ``tgt_ids`` (``n`` beams per source, contiguous).
        """
        offset = cache.offset if cache is not None else 0
        x = self._embed(self.tgt_embed, tgt_ids, offset)
        x = self.decoder(x, memory, memory_padding_mask, cache)
        # One matmul with the bias folded in, rather than a second pass over [B, T, vocab].
        return F.linear(x, self.output.weight, self.final_logits_bias)

    def new_cache(self) -> DecoderCache:
        """An empty incremental-decoding cache for `decode`."""
        return DecoderCache.empty(self.config.decoder_depth)

    def forward(self, src_ids: Tensor, tgt_ids: Tensor) -> Tensor:
        """Teacher-forced logits ``[B, T, tgt_vocab]``."""
        memory, padding_mask = self.encode(src_ids)
        return self.decode(tgt_ids, memory, padding_mask)
