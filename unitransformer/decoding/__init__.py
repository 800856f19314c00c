"""Decoding for encoder-decoder models: greedy search, beam search and sampling.

The functions need only the encode/decode surface of `Seq2SeqTransformer`, so any model with it
works (the RNN baseline of the translation task too):

- ``model.encode(src_ids [B, S]) -> (memory [B, S, D], memory_padding_mask [B, S])``, the mask
  ``True`` at padding;
- ``model.new_cache()`` -> a cache with ``reorder(index, source_index=None)`` and ``offset``;
- ``model.decode(tgt_ids [B * n, t], memory [B, S, D], memory_padding_mask [B, S], cache)
  -> logits [B * n, t, V]``, where ``memory`` may have fewer rows than ``tgt_ids``: ``n``
  hypotheses per source, stored contiguously.

Special ids default to ``model.config.bos_id``, ``eos_id`` and ``pad_id``. Padding (and ``bos``
unless it is also ``eos``) is never generated. Outputs hold neither ``bos`` nor ``eos``. A
sentence of ``src_len`` non-padding tokens gets at most ``int(max_len_a * src_len + max_len_b)``
tokens. Call the functions on a model in eval mode; they run without autograd.
"""

from unitransformer.decoding.beam import beam_search
from unitransformer.decoding.common import (
    DecodingError,
    EncoderDecoder,
    Hypothesis,
    length_penalty_factor,
)
from unitransformer.decoding.search import greedy_decode, sample

__all__ = [
    "DecodingError",
    "EncoderDecoder",
    "Hypothesis",
    "beam_search",
    "greedy_decode",
    "length_penalty_factor",
    "sample",
]
