"""Recorded attention equals the plain-math reference; rollout rows are distributions."""

import pytest
import torch

from unitransformer import Seq2SeqConfig, Seq2SeqTransformer, VisionTransformer, ViTConfig
from unitransformer.attention import attention_reference
from unitransformer.attention_maps import attention_rollout, record_attention


def test_recorded_probabilities_equal_the_reference_and_leave_outputs_unchanged():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig.named("digits")).eval()
    images = torch.randn(2, 3, 8, 8)
    plain = model(images)
    block = model.encoder.blocks[1]
    captured = {}
    block.norm1.register_forward_hook(lambda m, i, o: captured.update(x=o))
    with record_attention(model, ["encoder.blocks.1.attn"]) as maps:
        recorded = model(images)
    torch.testing.assert_close(recorded, plain, atol=1e-5, rtol=1e-5)
    attn = block.attn
    q, k, v = attn._split_heads(attn.qkv(captured["x"]), 3)
    _, expected = attention_reference(q, k, v)
    torch.testing.assert_close(maps["encoder.blocks.1.attn"], expected)
    # Outside the block nothing is recorded any more.
    assert not attn.keep_attention and attn.last_attention is None


def test_cross_attention_of_a_translation_model_is_recorded_with_padding():
    torch.manual_seed(0)
    model = Seq2SeqTransformer(Seq2SeqConfig.named("tiny", src_vocab_size=30, tgt_vocab_size=30))
    model.eval()
    src = torch.tensor([[5, 6, 7, 0]])
    with record_attention(model, ["decoder.blocks.0.cross_attn"]) as maps:
        model(src, torch.tensor([[1, 8, 9]]))
    probs = maps["decoder.blocks.0.cross_attn"]
    assert probs.shape == (1, 4, 3, 4)
    assert probs[..., 3].abs().max() == 0  # the padded source token gets nothing


def test_unknown_module_name_is_refused():
    model = VisionTransformer(ViTConfig.named("digits"))
    with pytest.raises(KeyError, match="encoder.blocks.0.attn"), record_attention(model, ["nope"]):
        pass


def test_rollout_rows_sum_to_one_and_identity_attention_is_a_fixed_point():
    torch.manual_seed(0)
    attns = [torch.rand(2, 3, 5, 5).softmax(-1) for _ in range(4)]
    rollout = attention_rollout(attns)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 5))
    eye = torch.eye(5).expand(1, 2, 5, 5)
    torch.testing.assert_close(attention_rollout([eye, eye]), torch.eye(5).expand(1, 5, 5))
    # The residual identity is included: one uniform layer gives 0.5 * I + 0.5 * uniform.
    uniform = torch.full((1, 1, 4, 4), 0.25)
    torch.testing.assert_close(attention_rollout([uniform])[0], 0.5 * torch.eye(4) + 0.125)
