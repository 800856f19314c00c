"""The lecture's baseline: a GRU encoder-decoder with attention.

The encoder is a (bi)directional GRU over packed sequences, so padding never changes a
sentence's annotations. The decoder is the input-feeding decoder of Luong et al. (2015): at each
step a GRU reads the target embedding and the previous attentional vector, attends to the
annotations with its new top-layer state, and mixes state and context into the next attentional
vector, from which the next token is predicted. The attention score is Bahdanau et al.'s (2015)
``additive`` one, or Luong's ``dot`` or ``general``. Following Nematus (Sennrich et al. 2017),
the decoder starts from ``tanh(W mean(annotations))``, so everything it needs is in the memory.

`RNNSeq2Seq` has the encode/decode surface of `Seq2SeqTransformer`, so `unitransformer.decoding`
and the translation task drive both models alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from unitransformer.dropout import Dropout
from unitransformer.errors import UserError

__all__ = ["RNNAttention", "RNNConfig", "RNNDecoderCache", "RNNSeq2Seq"]

ATTENTION_KINDS = ("additive", "dot", "general")


@dataclass
class RNNConfig:
    """The shape of an `RNNSeq2Seq`.

    Attributes:
        src_vocab_size: Source vocabulary size.
        tgt_vocab_size: Target vocabulary size.
        pad_id: Padding token id (sources are right-padded with it).
        bos_id: The token the decoder starts from.
        eos_id: The token that ends a sentence.
        emb_dim: Token-embedding width.
        hidden_dim: GRU width (per direction in the encoder).
        num_layers: GRU layers of the encoder and of the decoder.
        bidirectional: A bidirectional encoder (annotations are ``2 * hidden_dim`` wide).
        dropout: Dropout on embeddings, between GRU layers and before the output layer.
        attention: ``additive`` (Bahdanau), ``dot`` or ``general`` (Luong).
        tie_embeddings: The output layer shares the target embedding (the attentional vector
            is then ``emb_dim`` wide).
    """

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    emb_dim: int = 256
    hidden_dim: int = 256
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.2
    attention: Literal["additive", "dot", "general"] = "additive"
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise UserError(
                f"RNN attention={self.attention!r}: expected one of {list(ATTENTION_KINDS)}"
            )
        if self.attention == "dot" and self.encoder_dim != self.hidden_dim:
            raise UserError(
                "RNN attention='dot' scores the decoder state against the annotations, so "
                f"their widths must match, but the bidirectional encoder's are {self.encoder_dim}"
                f" and hidden_dim is {self.hidden_dim}; use bidirectional=False or 'general'"
            )
        for name in ("emb_dim", "hidden_dim", "num_layers"):
            if getattr(self, name) < 1:
                raise UserError(f"RNN {name}={getattr(self, name)}: expected >= 1")

    @property
    def encoder_dim(self) -> int:
        """Width of the annotations (the memory)."""
        return self.hidden_dim * (2 if self.bidirectional else 1)


class RNNDecoderCache:
    """The decoder's state between incremental `RNNSeq2Seq.decode` calls.

    Attributes:
        hidden: GRU state ``[num_layers, B, hidden_dim]``.
        feed: The last attentional vector ``[B, out_dim]`` (input feeding).
        keys: The projected memory ``[B_src, S, key_dim]``, computed once per source.
        offset: Target steps decoded so far.
    """

    def __init__(self) -> None:
        self.hidden: Tensor | None = None
        self.feed: Tensor | None = None
        self.keys: Tensor | None = None
        self.offset = 0

    def reorder(self, index: Tensor, source_index: Tensor | None = None) -> None:
        """Keeps hypotheses ``index``, and sources ``source_index`` if given (retired ones go)."""
        if self.hidden is not None and self.feed is not None:
            self.hidden = self.hidden.index_select(1, index)
            self.feed = self.feed.index_select(0, index)
        if source_index is not None and self.keys is not None:
            self.keys = self.keys.index_select(0, source_index)


class RNNAttention(nn.Module):
    """Attention of a decoder state over the encoder annotations.

    Args:
        kind: ``additive``: ``v^T tanh(W_q s + W_k h)`` (Bahdanau); ``dot``: ``s^T h``;
            ``general``: ``s^T W_a h`` (both Luong).
        query_dim: Width of the decoder state ``s``.
        key_dim: Width of the annotations ``h``.
    """

    def __init__(self, kind: str, query_dim: int, key_dim: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "additive":
            self.query_proj = nn.Linear(query_dim, query_dim)
            self.key_proj: nn.Module = nn.Linear(key_dim, query_dim, bias=False)
            self.v = nn.Linear(query_dim, 1, bias=False)
        elif kind == "general":
            self.key_proj = nn.Linear(key_dim, query_dim, bias=False)
        else:
            self.key_proj = nn.Identity()

    def project_keys(self, memory: Tensor) -> Tensor:
        """The query-independent part of the scores, ``[B, S, D]`` -> ``[B, S, key_dim]``."""
        return self.key_proj(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, padding_mask: Tensor) -> Tensor:
        """The context ``[B, encoder_dim]`` of ``query [B, query_dim]``.

        Args:
            query: The decoder state.
            keys: `project_keys` of the memory ``[B, S, key_dim]``.
            memory: The annotations ``[B, S, encoder_dim]``.
            padding_mask: ``[B, S]``, True at padding.
        """
        if self.kind == "additive":
            hidden = torch.tanh(self.query_proj(query)[:, None] + keys)  # [B, S, query_dim]
            scores = self.v(hidden).squeeze(-1)  # [B, S]
        else:
            scores = (keys @ query[:, :, None]).squeeze(-1)  # [B, S]
        scores = scores.masked_fill(padding_mask, float("-inf"))
        # An all-padding source would give NaN; its context is zero instead.
        probs = scores.softmax(-1).nan_to_num(0.0)
        return (probs[:, None] @ memory).squeeze(1)  # [B, encoder_dim]


class RNNSeq2Seq(nn.Module):
    """GRU encoder-decoder with attention, with the surface of `Seq2SeqTransformer`.

    ``forward(src_ids, tgt_ids)`` is teacher forcing: ``tgt_ids`` start with ``bos_id`` and the
    logits predict the next token at each position.
    """

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        c = self.config = config
        out_dim = c.emb_dim if c.tie_embeddings else c.hidden_dim
        between = c.dropout if c.num_layers > 1 else 0.0  # nn.GRU warns on 1 layer otherwise
        self.src_embed = nn.Embedding(c.src_vocab_size, c.emb_dim, padding_idx=c.pad_id)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.emb_dim, padding_idx=c.pad_id)
        self.encoder = nn.GRU(
            c.emb_dim,
            c.hidden_dim,
            c.num_layers,
            batch_first=True,
            dropout=between,
            bidirectional=c.bidirectional,
        )
        self.init_state = nn.Linear(c.encoder_dim, c.num_layers * c.hidden_dim)
        self.decoder = nn.GRU(
            c.emb_dim + out_dim, c.hidden_dim, c.num_layers, batch_first=True, dropout=between
        )
        self.attention = RNNAttention(c.attention, c.hidden_dim, c.encoder_dim)
        self.combine = nn.Linear(c.encoder_dim + c.hidden_dim, out_dim, bias=False)
        self.output = nn.Linear(out_dim, c.tgt_vocab_size)
        self.dropout = Dropout(c.dropout)
        if c.tie_embeddings:
            self.output.weight = self.tgt_embed.weight

    def encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Encodes right-padded ``src_ids [B, S]``.

        Returns:
            The annotations ``[B, S, encoder_dim]`` (zero at padding) and the padding mask
            ``[B, S]`` (True at padding).
        """
        padding_mask = src_ids.eq(self.config.pad_id)
        # pack_padded_sequence rejects empty sequences; an all-padding row reads one pad.
        lengths = (~padding_mask).sum(1).clamp(min=1).cpu()
        x = self.dropout(self.src_embed(src_ids))  # [B, S, emb_dim]
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src_ids.shape[1])
        return memory, padding_mask

    def _initial_state(self, memory: Tensor, padding_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The first GRU state ``[layers, B, H]`` and input-feeding vector ``[B, out_dim]``."""
        valid = (~padding_mask).unsqueeze(-1).to(memory.dtype)  # [B, S, 1]
        mean = (memory * valid).sum(1) / valid.sum(1).clamp(min=1.0)  # [B, encoder_dim]
        hidden = torch.tanh(self.init_state(mean))  # [B, layers * H]
        hidden = hidden.view(-1, self.config.num_layers, self.config.hidden_dim)
        feed = memory.new_zeros(memory.shape[0], self.combine.out_features)
        return hidden.transpose(0, 1).contiguous(), feed

    def _memory_for(
        self, rows: int, memory: Tensor, padding_mask: Tensor, cache: RNNDecoderCache | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Memory, mask and keys with one row per target row (the RNN shares nothing)."""
        keys = cache.keys if cache is not None and cache.keys is not None else None
        if keys is None:
            keys = self.attention.project_keys(memory)
            if cache is not None:
                cache.keys = keys
        groups = rows // memory.shape[0]
        if groups > 1:
            # n hypotheses per source, contiguous: [B_src, ...] -> [B_src * n, ...]
            memory = memory.repeat_interleave(groups, 0)
            padding_mask = padding_mask.repeat_interleave(groups, 0)
            keys = keys.repeat_interleave(groups, 0)
        return memory, padding_mask, keys

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor,
        cache: RNNDecoderCache | None = None,
    ) -> Tensor:
        """Next-token logits ``[B, T, tgt_vocab]`` for ``tgt_ids [B, T]``.

        With a ``cache`` (from `new_cache`), ``tgt_ids`` holds only the steps not yet decoded;
        ``memory [B_src, S, D]`` may have fewer rows than ``tgt_ids`` (``n`` hypotheses per
        source, contiguous).
        """
        rows, steps = tgt_ids.shape
        memory, padding_mask, keys = self._memory_for(rows, memory, memory_padding_mask, cache)
        if cache is not None and cache.hidden is not None and cache.feed is not None:
            hidden, feed = cache.hidden, cache.feed
        else:
            hidden, feed = self._initial_state(memory, padding_mask)
        embedded = self.dropout(self.tgt_embed(tgt_ids))  # [B, T, emb_dim]
        outputs = []
        # Input feeding makes each step depend on the last one's output: no parallel time.
        for t in range(steps):
            x = torch.cat([embedded[:, t], feed], -1)[:, None]  # [B, 1, emb_dim + out_dim]
            out, hidden = self.decoder(x, hidden)
            state = out[:, 0]  # [B, H], the top layer
            context = self.attention(state, keys, memory, padding_mask)
            feed = torch.tanh(self.combine(torch.cat([context, state], -1)))  # [B, out_dim]
            outputs.append(feed)
        if cache is not None:
            cache.hidden, cache.feed = hidden, feed
            cache.offset += steps
        return self.output(self.dropout(torch.stack(outputs, 1)))  # [B, T, V]

    def new_cache(self) -> RNNDecoderCache:
        """An empty incremental-decoding cache for `decode`."""
        return RNNDecoderCache()

    def forward(self, src_ids: Tensor, tgt_ids: Tensor) -> Tensor:
        """Teacher-forced logits ``[B, T, tgt_vocab]``."""
        memory, padding_mask = self.encode(src_ids)
        return self.decode(tgt_ids, memory, padding_mask)
