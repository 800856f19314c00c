"""The attention kernel against its plain-math reference, and the `Attention` module."""

import pytest
import torch

from unitransformer import Attention, SelfAttentionCache, attention_reference
from unitransformer.attention import (
    CPU_BMM_LOOP_LIMIT,
    CPU_MATH_FEW_QUERIES_MAX_KEYS,
    CPU_MATH_INFERENCE_MAX_KEYS,
    CPU_MATH_INFERENCE_MAX_SCORES,
    CPU_MATH_MAX_KEYS,
    CPU_MATH_MAX_QUERIES,
    CrossAttentionCache,
    _cpu_math_is_faster,
    scaled_dot_product_attention,
)


def _qkv(b=3, h=2, t=5, s=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g)
    k = torch.randn(b, h, s, d, generator=g)
    v = torch.randn(b, h, s, d, generator=g)
    return q, k, v


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("t,s", [(5, 7), (7, 7), (1, 7)])
def test_kernel_matches_reference(causal, padded, t, s):
    q, k, v = _qkv(t=t, s=s)
    kpm = None
    if padded:
        kpm = torch.zeros(3, s, dtype=torch.bool)
        kpm[1, -2:] = True
        kpm[2, -4:] = True
    out = scaled_dot_product_attention(q, k, v, kpm, causal)
    ref, probs = attention_reference(q, k, v, kpm, causal)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if padded:
        assert probs[1, ..., -2:].abs().max() == 0  # no probability on padded keys
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))


def test_causal_is_bottom_right_aligned():
    # 3 queries after 4 cached steps: query i sees keys 0 .. 4 + i.
    q, k, v = _qkv(t=3, s=7)
    _, probs = attention_reference(q, k, v, causal=True)
    for i in range(3):
        assert probs[..., i, 5 + i :].abs().sum() == 0
        assert (probs[..., i, : 5 + i] > 0).all()
    assert (probs[..., 2, :] > 0).all()  # the last query sees everything


@pytest.mark.parametrize("math_path", [False, True])
def test_fully_masked_row_gives_zeros_not_nan(math_path):
    q, k, v = _qkv()
    if math_path:  # bf16 with a backward to follow: `_attention_math` (it zeroes such rows too)
        q, k, v = (t.bfloat16().requires_grad_() for t in (q, k, v))
        assert _cpu_math_is_faster(q, k.shape[-2], 0.0)
    kpm = torch.zeros(3, 7, dtype=torch.bool)
    kpm[0] = True
    out = scaled_dot_product_attention(q, k, v, kpm)
    ref, _ = attention_reference(q, k, v, kpm)
    assert not out.isnan().any() and not ref.isnan().any()
    assert out[0].abs().max() == 0 and out[1:].abs().max() > 0
    tol = 2e-2 if math_path else 1e-5
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


def test_no_causal_leakage():
    torch.manual_seed(0)
    attn = Attention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    y = attn(x, causal=True)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, 16)  # change the future
    y2 = attn(x2, causal=True)
    torch.testing.assert_close(y[:, :4], y2[:, :4])
    assert (y[:, 4:] - y2[:, 4:]).abs().max() > 1e-3


def test_module_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = Attention(16, 4).eval()
    peer = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        peer.in_proj_weight.copy_(ours.qkv.weight)
        peer.in_proj_bias.copy_(ours.qkv.bias)
        peer.out_proj.weight.copy_(ours.proj.weight)
        peer.out_proj.bias.copy_(ours.proj.bias)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    kpm = torch.zeros(2, 9, dtype=torch.bool)
    kpm[1, 6:] = True
    torch.testing.assert_close(ours(x), peer(x, x, x, need_weights=False)[0], atol=1e-5, rtol=0)
    expected = peer(x, ctx, ctx, key_padding_mask=kpm, need_weights=False)[0]
    torch.testing.assert_close(ours(x, ctx, key_padding_mask=kpm), expected, atol=1e-5, rtol=0)


def test_self_attention_cache_equals_full_pass():
    torch.manual_seed(0)
    attn = Attention(16, 4).eval()
    x = torch.randn(2, 9, 16)
    full = attn(x, causal=True)
    cache = SelfAttentionCache(capacity=2)  # forces the buffer to grow
    steps = [attn(x[:, i : i + 1], causal=True, cache=cache) for i in range(9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    # Several new steps at once after a prefix: the causal mask is offset correctly.
    cache = SelfAttentionCache()
    a = attn(x[:, :4], causal=True, cache=cache)
    b = attn(x[:, 4:], causal=True, cache=cache)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)


def test_cross_cache_projects_context_once_and_shares_it_across_beams():
    torch.manual_seed(0)
    attn = Attention(16, 4).eval()
    ctx, x = torch.randn(2, 7, 16), torch.randn(6, 1, 16)  # 3 beams per source
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[0, 5:] = True
    expanded = attn(x, ctx.repeat_interleave(3, 0), key_padding_mask=kpm.repeat_interleave(3, 0))
    cache = CrossAttentionCache()
    shared = attn(x, ctx, key_padding_mask=kpm, cache=cache)
    torch.testing.assert_close(shared, expanded, atol=1e-5, rtol=1e-5)
    assert cache.k.shape[0] == 2  # stored once per source, not per beam
    # Stored contiguous: as head-split views of the projection, each step's matmuls copy them.
    assert cache.k.is_contiguous() and cache.v.is_contiguous()
    k_before = cache.k
    again = attn(x, None, key_padding_mask=kpm, cache=cache)  # context no longer needed
    assert cache.k is k_before
    torch.testing.assert_close(again, shared)


def test_keep_attention_is_opt_in_and_exact():
    torch.manual_seed(0)
    attn = Attention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    plain = attn(x, causal=True)
    assert attn.last_attention is None
    attn.keep_attention = True
    recorded = attn(x, causal=True)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)
    probs = attn.last_attention
    assert probs.shape == (2, 4, 5, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 5))
    assert probs.triu(1).abs().max() == 0


def test_head_dim_must_divide():
    with pytest.raises(ValueError, match="not divisible"):
        Attention(10, 3)
    assert Attention(10, 3, head_dim=4).qkv.weight.shape == (36, 10)


def test_bf16_autocast_runs_and_stays_close():
    torch.manual_seed(0)
    attn = Attention(32, 4).eval()
    x = torch.randn(2, 6, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(x, causal=True)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), attn(x, causal=True), atol=5e-2, rtol=5e-2)


def test_cache_reorder_keeps_the_chosen_rows_and_room_to_grow():
    torch.manual_seed(0)
    attn = Attention(16, 4).eval()
    x = torch.randn(3, 6, 16)
    index = torch.tensor([2, 0, 0, 1])  # beams are reordered, duplicated and dropped
    expected = attn(x[index], causal=True)[:, 3:]
    for grad in (False, True):  # decoding (no grad) and a differentiable use of the cache
        cache = SelfAttentionCache(capacity=8)
        with torch.set_grad_enabled(grad):
            for i in range(3):
                attn(x[:, i : i + 1], causal=True, cache=cache)
            cache.reorder(index)
            assert cache.k.shape[:2] == (4, 4) and cache.length == 3
            if not grad:  # room for exactly one step: the next step's keys are contiguous
                assert cache.k.shape[2] == 4
            steps = [attn(x[index, i : i + 1], causal=True, cache=cache) for i in range(3, 6)]
            assert cache.length == 6 and cache.k.shape[2] >= 6  # grew past the room left
        torch.testing.assert_close(torch.cat(steps, 1), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_bf16_cpu_math_path_matches_the_fp32_reference(causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 6, 16, requires_grad=True) for _ in range(3))
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [True] * 6])
    low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    assert _cpu_math_is_faster(low[0], 6, 0.0) and not _cpu_math_is_faster(q, 6, 0.0)
    assert not _cpu_math_is_faster(low[0], CPU_MATH_MAX_KEYS + 1, 0.0)
    # Inference: one query (decoding) or a folded beam of a few against a short memory.
    assert _cpu_math_is_faster(low[0], 6, 0.0, backward=False)
    assert not _cpu_math_is_faster(low[0], CPU_MATH_MAX_KEYS + 1, 0.0, False)
    assert _cpu_math_is_faster(low[0][:, :, :1], CPU_MATH_MAX_KEYS, 0.0, backward=False)
    out = scaled_dot_product_attention(*low, padding, causal)
    expected, _ = attention_reference(q, k, v, padding, causal)
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=0)
    grad = torch.randn_like(expected)
    out.backward(grad.bfloat16())
    expected.backward(grad)
    for ours, ref in zip(low, (q, k, v), strict=True):
        torch.testing.assert_close(ours.grad.float(), ref.grad, atol=6e-2, rtol=0)


def test_a_single_fp32_query_takes_the_math_path_above_the_bmm_loop_limit():
    torch.manual_seed(0)
    q = torch.randn(3, 2, 1, 32)
    keys = CPU_BMM_LOOP_LIMIT // 32 + 1  # 13 keys of 32: MKL's batched matmul, not the loop
    assert _cpu_math_is_faster(q, keys, 0.0)
    assert not _cpu_math_is_faster(q, keys - 1, 0.0)  # ATen's plain loop: SDPA is faster
    assert not _cpu_math_is_faster(torch.randn(3, 2, 2, 32), keys, 0.0)  # training
    assert _cpu_math_is_faster(torch.randn(3, 2, 2, 32), keys, 0.0, backward=False)  # beams
    k, v = torch.randn(3, 2, keys, 32), torch.randn(3, 2, keys, 32)
    padding = torch.zeros(3, keys, dtype=torch.bool)
    padding[1, -3:] = True
    padding[2] = True
    out = scaled_dot_product_attention(q, k, v, padding, causal=True)
    expected, _ = attention_reference(q, k, v, padding, causal=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    beams = torch.randn(3, 2, 5, 32)  # five beams folded into the query axis, no grad
    with torch.no_grad():
        out = scaled_dot_product_attention(beams, k, v, padding)
    expected, _ = attention_reference(beams, k, v, padding)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("amx", [False, True])
def test_cpu_inference_with_many_queries_picks_its_kernel_by_cpu_and_dtype(monkeypatch, amx):
    import unitransformer.attention as attention

    monkeypatch.setattr(attention, "_cpu_has_amx", lambda: amx)
    used = []
    math = attention._attention_math
    monkeypatch.setattr(attention, "_attention_math", lambda *a: used.append(1) or math(*a))
    shape = (2, 2, CPU_MATH_MAX_QUERIES + 1, 16)
    q, k, v = (torch.randn(shape).bfloat16().requires_grad_() for _ in range(3))
    scaled_dot_product_attention(q, k, v, None, False)
    assert len(used) == 1  # training: the math path (flash's bf16 backward is slow)
    with torch.no_grad():
        out = scaled_dot_product_attention(q, k, v, None, False)
    # Inference: flash's bf16 forward with AMX tiles, the math path without them.
    assert len(used) == (1 if amx else 2)
    expected, _ = attention_reference(q.float(), k.float(), v.float(), None, False)
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=0)
    many = q.detach()
    assert not _cpu_math_is_faster(many, CPU_MATH_INFERENCE_MAX_KEYS + 1, 0.0, backward=False)
    assert not _cpu_math_is_faster(many.float(), 6, 0.0, backward=False)  # fp32: flash
    few = many[:, :, :CPU_MATH_MAX_QUERIES]  # a folded beam: math either way up to 96 keys
    assert _cpu_math_is_faster(few, CPU_MATH_FEW_QUERIES_MAX_KEYS, 0.0, backward=False)
    assert _cpu_math_is_faster(few, CPU_MATH_FEW_QUERIES_MAX_KEYS + 1, 0.0, False) == (not amx)
    # Past the score budget, flash, whose memory does not grow with T x S.
    big = torch.empty(CPU_MATH_INFERENCE_MAX_SCORES // (64 * 40) + 1, 1, 64, 1).bfloat16()
    assert not _cpu_math_is_faster(big, 40, 0.0, backward=False)
    assert _cpu_math_is_faster(big[:-2], 40, 0.0, backward=False) == (not amx)


def test_the_flash_path_zeroes_fully_padded_rows():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 20, 16, requires_grad=True) for _ in range(3))
    padding = torch.zeros(3, 20, dtype=torch.bool)
    padding[1, -5:] = True
    padding[2] = True
    assert not _cpu_math_is_faster(q, 20, 0.0)  # float32 training: SDPA's flash kernel
    out = scaled_dot_product_attention(q, k, v, padding)
    expected, _ = attention_reference(q, k, v, padding)
    assert out[2].abs().max() == 0
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad[2].abs().max() == 0
    # No fully padded row: the output is not copied, and still right.
    out = scaled_dot_product_attention(q[:2], k[:2], v[:2], padding[:2])
    torch.testing.assert_close(out, expected[:2], atol=1e-5, rtol=1e-5)
