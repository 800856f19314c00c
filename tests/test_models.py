"""Blocks, stacks and the two models: caches, padding, tying, sizes, position resampling."""

import pytest
import torch

from unitransformer import (
    DecoderBlock,
    EncoderBlock,
    Seq2SeqConfig,
    Seq2SeqTransformer,
    VisionTransformer,
    ViTConfig,
)
from unitransformer.adapt import resample_pos_embed
from unitransformer.embeddings import ConvStem
from unitransformer.layers import DropPath


def _seq2seq(**overrides):
    torch.manual_seed(0)
    config = Seq2SeqConfig.named("tiny", src_vocab_size=50, tgt_vocab_size=50, dropout=0.0)
    for key, value in overrides.items():
        setattr(config, key, value)
    return Seq2SeqTransformer(config).eval()


def _batch(lengths, vocab=50, pad=0):
    g = torch.Generator().manual_seed(1)
    ids = torch.full((len(lengths), max(lengths)), pad)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
    return ids


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_incremental_cache_equals_full_forward(norm_first, positions):
    model = _seq2seq(norm_first=norm_first, positions=positions)
    src, tgt = _batch([7, 4, 6]), _batch([9, 9, 9])
    full = model(src, tgt)
    memory, mask = model.encode(src)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, i : i + 1], memory, mask, cache) for i in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.offset == tgt.shape[1]


def test_padded_batch_equals_each_sentence_alone():
    model = _seq2seq()
    lengths, tgt_lengths = [7, 3, 5], [4, 6, 2]
    src, tgt = _batch(lengths), _batch(tgt_lengths)
    batched = model(src, tgt)
    for i, (n, m) in enumerate(zip(lengths, tgt_lengths, strict=True)):
        alone = model(src[i : i + 1, :n], tgt[i : i + 1, :m])
        torch.testing.assert_close(batched[i : i + 1, :m], alone, atol=1e-5, rtol=1e-5)


def test_encoder_padding_does_not_leak():
    model = _seq2seq()
    src = _batch([5, 5])
    src[1, 3:] = 0
    memory, mask = model.encode(src)
    memory2, _ = model.encode(src[1:, :3])
    torch.testing.assert_close(memory[1, :3], memory2[0], atol=1e-5, rtol=1e-5)
    assert mask[1, 3:].all() and not mask[1, :3].any()


def test_embedding_tying():
    tied = _seq2seq(tie_embeddings="all")
    assert tied.src_embed.weight is tied.tgt_embed.weight is tied.output.weight
    out_only = Seq2SeqTransformer(Seq2SeqConfig.named("tiny", tie_embeddings="output"))
    assert out_only.output.weight is out_only.tgt_embed.weight
    assert out_only.src_embed.weight is not out_only.tgt_embed.weight
    untied = Seq2SeqTransformer(Seq2SeqConfig.named("tiny", tie_embeddings="none"))
    assert untied.output.weight is not untied.tgt_embed.weight
    with pytest.raises(ValueError, match="joint vocabulary"):
        Seq2SeqTransformer(Seq2SeqConfig(src_vocab_size=10, tgt_vocab_size=11))


def test_named_sizes_match_the_papers():
    base = Seq2SeqTransformer(
        Seq2SeqConfig.named("base", src_vocab_size=37000, tgt_vocab_size=37000)
    )
    # Vaswani et al. table 3 reports 65M parameters for the base model with a shared vocabulary.
    n = sum(p.numel() for p in base.parameters())
    assert 60e6 < n < 66e6
    vit_b = VisionTransformer(ViTConfig.named("b16"))
    # Dosovitskiy et al. table 1: ViT-Base has 86M parameters.
    assert 85e6 < sum(p.numel() for p in vit_b.parameters()) < 88e6
    with pytest.raises(ValueError, match="unknown size"):
        ViTConfig.named("b17")


def test_post_ln_and_pre_ln_differ_where_they_should():
    torch.manual_seed(0)
    pre = EncoderBlock(16, 4, norm_first=True).eval()
    post = EncoderBlock(16, 4, norm_first=False).eval()
    post.load_state_dict(pre.state_dict())
    x = torch.randn(2, 5, 16) * 3 + 1
    y = post(x)
    # Post-LN ends on a LayerNorm: each token is normalized. Pre-LN keeps the residual stream.
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    assert pre(x).mean(-1).abs().max() > 0.1


def test_stochastic_depth_only_in_training():
    torch.manual_seed(0)
    block = EncoderBlock(16, 4, drop_path=0.5)
    x = torch.randn(64, 3, 16)
    block.eval()
    torch.testing.assert_close(block(x), block(x))
    block.train()
    drop = DropPath(0.5).train()
    ones = drop(torch.ones(1000, 1, 1))
    dropped = (ones == 0).float().mean().item()
    assert 0.4 < dropped < 0.6 and set(ones.unique().tolist()) <= {0.0, 2.0}


def test_decoder_block_attends_to_memory():
    torch.manual_seed(0)
    block = DecoderBlock(16, 4).eval()
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    assert (block(x, memory) - block(x, memory + 1)).abs().max() > 1e-3


def test_vit_shapes_pooling_and_resampled_positions():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig.named("digits", num_classes=7)).eval()
    images = torch.randn(2, 3, 8, 8)
    assert model(images).shape == (2, 7)
    assert model.forward_features(images).shape == (2, 1 + 16, 64)
    assert model.forward_head(model.forward_features(images), pre_logits=True).shape == (2, 64)
    # Another image size: positions are interpolated on the fly, the parameter is unchanged.
    assert model(torch.randn(2, 3, 12, 12)).shape == (2, 7)
    assert model.pos_embed.shape == (1, 17, 64)
    mean = VisionTransformer(ViTConfig.named("digits", pool="mean"))
    assert mean.cls_token is None and mean.pos_embed.shape == (1, 16, 64)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 9, 9))


def test_resample_pos_embed_keeps_prefix_and_is_identity_at_same_size():
    pos = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pos, (4, 4)) is pos
    bigger = resample_pos_embed(pos, (8, 8))
    assert bigger.shape == (1, 65, 8)
    torch.testing.assert_close(bigger[:, :1], pos[:, :1])
    # Constant embeddings stay constant under interpolation.
    const = torch.ones(1, 17, 8)
    torch.testing.assert_close(resample_pos_embed(const, (6, 6)), torch.ones(1, 37, 8))


def test_hybrid_conv_stem_makes_the_same_tokens_grid():
    torch.manual_seed(0)
    config = ViTConfig.named("ti4_32", depth=2, stem="conv")
    model = VisionTransformer(config).eval()
    assert isinstance(model.patch_embed, ConvStem)
    images = torch.randn(2, 3, 32, 32)
    assert model.forward_features(images).shape == (2, 1 + 64, 192)
    assert model(images).shape == (2, 10)
    with pytest.raises(ValueError, match="power-of-two"):
        VisionTransformer(ViTConfig.named("ti16", depth=1, patch_size=14, stem="conv"))


def test_conv_stem_gradients_keep_the_weights_layout():
    # DDP builds its gradient buckets with each parameter's strides; a conv weight whose
    # gradient comes out in another layout makes it warn and copy at every step.
    torch.manual_seed(0)
    stem = ConvStem(dim=16, patch_size=4, width=8, blocks=1, input_blocks=1)
    stem(torch.randn(2, 3, 16, 16)).sum().backward()
    convs = [p for p in stem.parameters() if p.dim() == 4]
    assert convs and all(p.grad.stride() == p.stride() for p in convs)
