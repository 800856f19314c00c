"""The CPU dropout: right drop rate in every lane, unbiased, reproducible, and used by attention."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from unitransformer.attention import attention_reference, scaled_dot_product_attention
from unitransformer.dropout import Dropout, PatchDropout, dropout, keep_mask, patch_dropout
from unitransformer.models import VisionTransformer, ViTConfig


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_each_of_the_four_int16_lanes_drops_with_probability_p(p):
    torch.manual_seed(0)
    n = 1 << 20
    dropped = (~keep_mask((n,), p, torch.device("cpu"))).view(-1, 4).float().mean(0)
    # Five binomial standard deviations of one lane's mean; a lane with a constant sign bit
    # (int64.random_() never sets it) would be off by about half.
    tolerance = 5 * math.sqrt(p * (1 - p) / (n / 4))
    assert torch.all((dropped - p).abs() < tolerance), dropped


def test_dropout_is_unbiased_and_scales_by_the_rounded_probability():
    torch.manual_seed(1)
    p = 0.3
    y = dropout(torch.ones(1 << 20), p)
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 65536 / (65536 - round(p * 65536))))
    assert abs(y.mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / y.numel())


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.25)
    grad = torch.randn_like(y)
    y.backward(grad)
    ratio = torch.where(y != 0, y / x, torch.zeros_like(y)).detach()  # mask * scale
    torch.testing.assert_close(x.grad, grad * ratio)


def test_seeded_masks_repeat_and_eval_mode_is_identity():
    x = torch.randn(8, 100)
    torch.manual_seed(3)
    a = dropout(x, 0.5)
    torch.manual_seed(3)
    b = dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, dropout(x, 0.5))
    module = Dropout(0.5).eval()
    assert module(x) is x and dropout(x, 0.5, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"in \[0, 1\], got 1.5"):
        Dropout(1.5)


def test_attention_dropout_on_cpu_is_unbiased_and_safe_on_fully_padded_rows():
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    padding = torch.tensor([[False, False, True, True, True], [True] * 5])
    expected, _ = attention_reference(q, k, v, padding)
    draws = torch.stack(
        [scaled_dot_product_attention(q, k, v, padding, dropout_p=0.2) for _ in range(4000)]
    )
    assert torch.equal(draws[:, 1], torch.zeros_like(draws[:, 1]))  # the fully padded sentence
    torch.testing.assert_close(draws.mean(0), expected, atol=0.05, rtol=0)
    v.requires_grad_(True)
    scaled_dot_product_attention(q, k, v, padding, causal=True, dropout_p=0.2).sum().backward()
    assert torch.isfinite(v.grad).all()


def test_patch_dropout_keeps_the_prefix_and_an_ordered_subset_of_each_row():
    torch.manual_seed(0)
    b, n, dim = 8, 64, 4
    x = torch.randn(b, 1 + n, dim)
    y = patch_dropout(x, 0.5, num_prefix_tokens=1)
    assert y.shape == (b, 1 + 32, dim)
    assert torch.equal(y[:, 0], x[:, 0])  # the class token always stays
    subsets = set()
    for row in range(b):
        # Each kept token is one of the row's own patch tokens, in grid order.
        match = (y[row, 1:, None] == x[row, None, 1:]).all(-1)  # [kept, n]
        assert match.sum(1).eq(1).all()
        index = match.float().argmax(1)
        assert torch.all(index[1:] > index[:-1])
        subsets.add(tuple(index.tolist()))
    assert len(subsets) == b  # each image draws its own subset


def test_patch_dropout_is_the_identity_in_eval_and_at_zero_and_rejects_bad_rates():
    x = torch.randn(2, 10, 3)
    module = PatchDropout(0.7).eval()
    assert module(x) is x and patch_dropout(x, 0.0) is x
    assert module.train()(x).shape == (2, 3, 3)
    assert patch_dropout(x, 0.99).shape == (2, 1, 3)  # at least one token stays
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="patch dropout rate"):
            PatchDropout(bad)


def test_a_vit_with_patch_dropout_trains_on_fewer_tokens_and_evaluates_on_all():
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16, patch_size=4, num_classes=5, dim=32, depth=2, num_heads=2, pool="mean"
    )
    plain = VisionTransformer(config)
    dropped = VisionTransformer(replace(config, patch_drop=0.75))
    dropped.load_state_dict(plain.state_dict())  # no new parameters: the same checkpoint format
    images = torch.randn(3, 3, 16, 16)
    assert dropped.train().forward_features(images).shape == (3, 4, 32)  # 16 tokens, 4 kept
    dropped(images).sum().backward()
    assert dropped.pos_embed.grad is not None
    plain.eval()
    dropped.eval()
    assert torch.equal(dropped(images), plain(images))
