"""The hand-written backward of the label-smoothed cross-entropy equals autograd's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unitransformer.losses import label_smoothed_cross_entropy


@pytest.mark.parametrize("ignore_index", [0, -100])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gradients_equal_torch_cross_entropy(smoothing, ignore_index):
    torch.manual_seed(0)
    logits = torch.randn(40, 13, requires_grad=True)
    target = torch.randint(1, 13, (40,))
    target[::5] = ignore_index
    weights = torch.tensor([0.7, 0.3])  # both outputs differentiated, with different weights
    loss, nll, count = label_smoothed_cross_entropy(logits, target, smoothing, ignore_index)
    (grad,) = torch.autograd.grad(weights[0] * loss + weights[1] * nll, logits)
    kw = dict(ignore_index=ignore_index, reduction="sum")
    ref_loss = F.cross_entropy(logits, target, label_smoothing=smoothing, **kw)
    ref_nll = F.cross_entropy(logits, target, **kw)
    (ref,) = torch.autograd.grad(weights[0] * ref_loss + weights[1] * ref_nll, logits)
    assert count == 32
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(nll, ref_nll)
    torch.testing.assert_close(grad, ref)
    assert torch.all(grad[::5] == 0)  # ignored rows get nothing


def test_bf16_logits_get_a_bf16_gradient_close_to_float32():
    torch.manual_seed(1)
    logits = torch.randn(64, 50)
    target = torch.randint(0, 50, (64,))
    low = logits.bfloat16().requires_grad_()
    label_smoothed_cross_entropy(low, target, 0.1, -100)[0].backward()
    high = low.detach().float().requires_grad_()
    F.cross_entropy(high, target, label_smoothing=0.1, reduction="sum").backward()
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low.grad.float(), high.grad, atol=1e-2, rtol=0)
