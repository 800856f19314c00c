"""Scaled dot-product attention: the kernel, its plain-math reference, and `Attention`.

One `Attention` module serves self-attention and cross-attention: it is cross-attention when a
``context`` is passed. Causality is chosen per call, not at construction, so the same weights can
run a bidirectional encoder pass or a causal decoder pass.

Mask convention: ``key_padding_mask`` is a boolean ``[B, S]`` tensor that is ``True`` where the
key is padding (the convention of ``torch.nn.MultiheadAttention``).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unitransformer.dropout import dropout

__all__ = [
    "Attention",
    "CrossAttentionCache",
    "SelfAttentionCache",
    "attention_reference",
    "build_attention_mask",
    "scaled_dot_product_attention",
]


def build_attention_mask(
    key_padding_mask: Tensor | None, causal: bool, q_len: int, k_len: int, device: torch.device
) -> Tensor | None:
    """Combines key padding and causality into one boolean mask, ``True`` = may attend.

    Causality is aligned bottom-right: query ``i`` of ``q_len`` sees keys up to
    ``k_len - q_len + i``, which is what a decoder with ``k_len - q_len`` cached steps needs.

    Returns:
        ``None`` when nothing is masked, else a mask broadcastable to ``[B, H, q_len, k_len]``.
    """
    mask = None
    if key_padding_mask is not None:
        mask = ~key_padding_mask[:, None, None, :]  # [B, 1, 1, S]
    if causal and q_len > 1:
        offset = k_len - q_len
        causal_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(offset)
        mask = causal_mask if mask is None else mask & causal_mask
    return mask


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> Tensor:
    """The attention kernel, over `torch.nn.functional.scaled_dot_product_attention`.

    Args:
        q: Queries ``[B, H, T, Dh]``.
        k: Keys ``[B, H, S, Dh]``.
        v: Values ``[B, H, S, Dh]``.
        key_padding_mask: ``[B, S]``, ``True`` where the key is padding.
        causal: Whether query ``i`` may only see keys ``<= i`` (bottom-right aligned).
        dropout_p: Dropout on the attention probabilities.

    Returns:
        ``[B, H, T, Dh]``. A query whose keys are all masked gets zeros, never NaN.
    """
    q_len, k_len = q.shape[-2], k.shape[-2]
    backward = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if _cpu_math_is_faster(q, k_len, dropout_p, backward):
        return _attention_math(q, k, v, key_padding_mask, causal, dropout_p)
    if key_padding_mask is None and (not causal or q_len == 1 or q_len == k_len):
        # Let SDPA pick its fastest kernel: no materialized mask at all.
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=causal and q_len > 1
        )
    mask = build_attention_mask(key_padding_mask, causal, q_len, k_len, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if key_padding_mask is not None:
        # A fully padded sequence would give NaN (softmax over nothing); zero those rows.
        out = _zero_fully_padded(out, key_padding_mask)
    return out


def _zero_fully_padded(out: Tensor, key_padding_mask: Tensor) -> Tensor:
    """``out [B, H, T, Dh]`` with the rows of sequences whose keys are all padding zeroed.

    On CPU the check costs no device sync and spares a copy of ``out`` when there are none.
    """
    empty = key_padding_mask.all(dim=-1)[:, None, None, None]  # [B, 1, 1, 1]
    if out.device.type != "cpu" or empty.any():
        out = out.masked_fill(empty, 0.0)
    return out


# Longest key sequence for which the bf16 math path beats SDPA's flash kernel on CPU.
CPU_MATH_MAX_KEYS = 256
# Without a backward, up to this many queries (a beam folded into the query axis against the
# encoder memory) go to the math path, for up to `CPU_MATH_FEW_QUERIES_MAX_KEYS` keys.
CPU_MATH_MAX_QUERIES = 8
CPU_MATH_FEW_QUERIES_MAX_KEYS = 96
# ATen's CPU bmm loops in plain C++ over the batch when contraction x rows x columns of one
# product is below this; a single query only pays off in the math path above it.
CPU_BMM_LOOP_LIMIT = 400
# Inference (no backward) with more queries: the longest key sequence for which the bf16
# math path beats flash on CPUs without AMX tiles.
CPU_MATH_INFERENCE_MAX_KEYS = 200
# ... and the most scores (B x H x T x S) it materializes there: 2**26 float32 are 256 MiB,
# beyond which flash's memory that does not grow with T x S is worth its time.
CPU_MATH_INFERENCE_MAX_SCORES = 2**26


@functools.cache
def _cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, on which SDPA's bf16 flash forward is the faster one."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def _cpu_math_is_faster(q: Tensor, k_len: int, dropout_p: float, backward: bool = True) -> bool:
    """Whether `_attention_math` beats ``F.scaled_dot_product_attention`` for this call.

    Measured with torch 2.14 on 2 cores (``benchmarks/RESULTS.md``, attention rows):
    - SDPA's CPU kernels have no dropout; with dropout it falls back to its own math path,
      which draws a Bernoulli sample per probability. Ours uses the cheap `dropout`.
    - In bf16 the CPU flash kernel's backward is 3-11x slower than in fp32 (B=64, H=8,
      T=20: 54 ms against 5 ms for two bf16 matmuls around an fp32 softmax), and its forward
      loses up to 256 keys too on AMD EPYC. Beyond that the quadratic score matrix costs more
      than it saves.
    - bf16 inference (no ``backward``), several queries: on an Intel Xeon with AMX the flash
      forward is the faster one (ViT inference, 65 keys: 1.09x). Without AMX (AMD EPYC,
      AVX-512 BF16) math is, alone 1.2-2.7x for 20-197 keys (0.94x at 256), in the ViT
      inference row 1.14-1.21x for the whole model. In fp32 math wins alone below 96 keys
      but not in a whole model (ViT inference, the translation encoder: ties), so fp32
      inference stays with flash.
    - One query against a cache (incremental decoding): the fp32 flash kernel takes 1.5-2.5x
      as long as two MKL batched matmuls (500 rows, 8 heads of 32, 16-600 keys), unless the
      products are small enough for ATen's plain bmm loop (`CPU_BMM_LOOP_LIMIT`).
    - A few queries without a backward (beam search's cross-attention: 5 beams folded into
      the query axis against 29 memory keys): math is 2-3x faster than flash with a mask in
      both dtypes (B*H*T = 20,000 rows of 32; 65 keys: 1.25-1.65x; 128-200 keys: a tie).
    """
    if q.device.type != "cpu":
        return False
    if dropout_p > 0.0:
        return True
    q_len = q.shape[-2]
    few_queries = q_len == 1 or (
        not backward and q_len <= CPU_MATH_MAX_QUERIES and k_len <= CPU_MATH_FEW_QUERIES_MAX_KEYS
    )
    low_precision = q.dtype in (torch.bfloat16, torch.float16)
    if low_precision and (backward or few_queries):
        return k_len <= CPU_MATH_MAX_KEYS
    if not low_precision:
        return few_queries and k_len * q.shape[-1] >= CPU_BMM_LOOP_LIMIT
    if q.numel() // q.shape[-1] * k_len > CPU_MATH_INFERENCE_MAX_SCORES:
        return False
    return k_len <= CPU_MATH_INFERENCE_MAX_KEYS and not _cpu_has_amx()


def _attention_math(
    q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool, p: float
) -> Tensor:
    """The kernel as two matmuls around a float32 softmax, with `dropout` on the probabilities."""
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # [B, H, T, S]
    mask = build_attention_mask(key_padding_mask, causal, q.shape[-2], k.shape[-2], q.device)
    if mask is not None:
        # The lowest finite value, not -inf: a fully masked row softmaxes to a uniform row
        # instead of NaN, which would leak into the gradient of v through the matmul.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = dropout(scores.float().softmax(dim=-1), p)  # [B, H, T, S]
    out = probs.to(v.dtype) @ v
    if key_padding_mask is not None:
        out = _zero_fully_padded(out, key_padding_mask)
    return out


def attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    causal: bool = False,
) -> tuple[Tensor, Tensor]:
    """Plain-math attention: ``softmax(q k^T / sqrt(Dh) + mask) v``.

    Used by tests as the ground truth for the kernel, and by `Attention` when the attention
    probabilities are asked for.

    Returns:
        The output ``[B, H, T, Dh]`` and the probabilities ``[B, H, T, S]`` (rows of fully
        masked queries are zero).
    """
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # [B, H, T, S]
    mask = build_attention_mask(key_padding_mask, causal, q.shape[-2], k.shape[-2], q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.float().softmax(dim=-1).nan_to_num(0.0).to(q.dtype)
    return probs @ v, probs


class SelfAttentionCache:
    """Keys and values of the steps decoded so far, in a preallocated buffer.

    The buffer grows by doubling, so appending one step is a copy of that step only; a beam
    reorder leaves room for one step (see `reorder`).
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self.k: Tensor | None = None  # [B, H, capacity, Dh]
        self.v: Tensor | None = None
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Stores ``k, v [B, H, t, Dh]`` and returns all keys and values so far."""
        t = k.shape[-2]
        if self.k is None:
            shape = (*k.shape[:2], max(self.capacity, t), k.shape[-1])
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        elif self.length + t > self.k.shape[-2]:
            grow = max(self.k.shape[-2], t)
            self.k = torch.cat([self.k, self.k.new_empty(*self.k.shape[:2], grow, k.shape[-1])], 2)
            self.v = torch.cat([self.v, self.v.new_empty(*self.v.shape[:2], grow, v.shape[-1])], 2)
        self.k[:, :, self.length : self.length + t] = k
        self.v[:, :, self.length : self.length + t] = v
        self.length += t
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def reorder(self, index: Tensor) -> None:
        """Keeps batch rows ``index`` (beam reordering, retiring finished sentences).

        Only the filled positions are gathered, into fresh buffers with room for exactly one
        more step: after the next `append` the keys and values are contiguous, which SDPA's
        CPU kernel would otherwise copy them into (beam search on 2 cores: 23% faster than
        keeping the old capacity). Without reordering, `append` doubles the buffer as usual.
        """
        if self.k is None:
            return
        filled = self.length
        for name in ("k", "v"):
            old = getattr(self, name)
            if old.requires_grad and torch.is_grad_enabled():  # out= cannot be differentiated
                setattr(self, name, old.index_select(0, index))
                continue
            _, h, _, dh = old.shape
            new = old.new_empty(index.numel(), h, filled + 1, dh)
            torch.index_select(old[:, :, :filled], 0, index, out=new[:, :, :filled])
            setattr(self, name, new)


class CrossAttentionCache:
    """Keys and values of the context, computed once per source and reused at every step."""

    def __init__(self) -> None:
        self.k: Tensor | None = None  # [B_src, H, S, Dh]
        self.v: Tensor | None = None

    def reorder(self, index: Tensor) -> None:
        """Keeps source rows ``index`` (retiring finished sentences)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class Attention(nn.Module):
    """Multi-head attention: self-attention, or cross-attention when ``context`` is given.

    The q, k and v projections are one fused ``qkv`` linear layer (one matmul for
    self-attention); cross-attention applies its q rows to ``x`` and its k, v rows to the context.

    Args:
        dim: Model width.
        num_heads: Number of heads.
        head_dim: Width of one head; ``dim // num_heads`` by default.
        qkv_bias: Whether the q, k, v projections have a bias.
        proj_bias: Whether the output projection has a bias.
        attn_dropout: Dropout on the attention probabilities (training only).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
            head_dim = dim // num_heads
        self.num_heads, self.head_dim = num_heads, head_dim
        self.inner_dim = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * self.inner_dim, bias=qkv_bias)
        self.proj = nn.Linear(self.inner_dim, dim, bias=proj_bias)
        self.attn_dropout = attn_dropout
        # Opt-in probabilities: when True, forward also stores them in `last_attention`.
        self.keep_attention = False
        self.last_attention: Tensor | None = None

    def _split_heads(self, x: Tensor, n: int) -> Tensor:
        # [B, T, n * H * Dh] -> n tensors [B, H, T, Dh]
        b, t, _ = x.shape
        return x.view(b, t, n, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def project_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values of a context ``[B, S, dim]``, each ``[B, H, S, Dh]``."""
        w, b = self.qkv.weight[self.inner_dim :], None
        if self.qkv.bias is not None:
            b = self.qkv.bias[self.inner_dim :]
        return self._split_heads(F.linear(context, w, b), 2)

    def _qkv(
        self,
        x: Tensor,
        context: Tensor | None,
        cache: SelfAttentionCache | CrossAttentionCache | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        if context is None and not isinstance(cache, CrossAttentionCache):
            q, k, v = self._split_heads(self.qkv(x), 3)
            if cache is not None:
                k, v = cache.append(k, v)
            return q, k, v
        w, b = self.qkv.weight[: self.inner_dim], None
        if self.qkv.bias is not None:
            b = self.qkv.bias[: self.inner_dim]
        (q,) = self._split_heads(F.linear(x, w, b), 1)
        if cache is None:
            k, v = self.project_context(context)
        else:
            if cache.k is None:
                # Contiguous once: as permuted views, every step's matmuls would copy them.
                cache.k, cache.v = (t.contiguous() for t in self.project_context(context))
            k, v = cache.k, cache.v
        return q, k, v

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        cache: SelfAttentionCache | CrossAttentionCache | None = None,
    ) -> Tensor:
        """Attends from ``x [B, T, dim]`` to itself, or to ``context [B_c, S, dim]``.

        Args:
            x: The queries' input.
            context: The keys' and values' input for cross-attention.
            key_padding_mask: ``[B_c, S]``, ``True`` at padded keys.
            causal: Mask future keys (self-attention in a decoder).
            cache: A `SelfAttentionCache` (``x`` holds only the new steps) or a
                `CrossAttentionCache` (the context is projected once, then reused).

        When the keys have fewer batch rows than the queries (``B = B_c * n``, e.g. ``n`` beams
        per source sentence, stored contiguously), each group of ``n`` query rows shares its
        context's keys and values without copying them.

        Returns:
            ``[B, T, dim]``.
        """
        dropout_p = self.attn_dropout if self.training else 0.0
        if context is None and cache is None and not self.keep_attention:
            # Plain self-attention (every ViT and encoder layer): the fewest ops in Python.
            b, t, _ = x.shape
            q, k, v = self._split_heads(self.qkv(x), 3)
            out = scaled_dot_product_attention(q, k, v, key_padding_mask, causal, dropout_p)
            return self.proj(out.transpose(1, 2).reshape(b, t, self.inner_dim))
        q, k, v = self._qkv(x, context, cache)
        b, _, t, _ = q.shape
        groups = b // k.shape[0]
        if groups > 1:
            # Fold the n query rows that share a context into the query length:
            # [B_c * n, H, T, Dh] -> [B_c, H, n * T, Dh]
            q = q.view(k.shape[0], groups, self.num_heads, t, self.head_dim)
            q = q.transpose(1, 2).reshape(k.shape[0], self.num_heads, groups * t, self.head_dim)
        if self.keep_attention:
            out, self.last_attention = attention_reference(q, k, v, key_padding_mask, causal)
        else:
            out = scaled_dot_product_attention(q, k, v, key_padding_mask, causal, dropout_p)
        if groups > 1:
            out = out.view(k.shape[0], self.num_heads, groups, t, self.head_dim).transpose(1, 2)
        out = out.reshape(b, self.num_heads, t, self.head_dim)
        out = out.transpose(1, 2).reshape(b, t, self.inner_dim)  # [B, T, H * Dh]
        return self.proj(out)
