"""Converted torchvision / timm / Marian models compute what the originals compute."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from unitransformer.adapt import StateDictMismatchError
from unitransformer.errors import UserError
from unitransformer.interop import (
    UnsupportedModelError,
    load_pretrained_marian,
    load_pretrained_vit,
    seq2seq_from_marian,
    vit_from_timm,
    vit_from_torchvision,
)

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TOL = 1e-4


def randomize(model: nn.Module, std: float = 0.2, skip: str = "embed_positions") -> nn.Module:
    """Large random weights everywhere (biases and norms too), so a wrong mapping shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if skip not in name:
                p.normal_(0.0, std)
        for name, b in model.named_buffers():
            if name == "final_logits_bias":
                b.normal_(0.0, 1.0)
    return model.eval()


def small_torchvision(**kw: int) -> nn.Module:
    args = dict(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)
    return randomize(torchvision.models.VisionTransformer(**{**args, **kw}))


def small_timm(name: str = "vit_tiny_patch16_224", **kw: object) -> nn.Module:
    return randomize(timm.create_model(name, pretrained=False, **{"img_size": 32, **kw}))


# --- torchvision ---------------------------------------------------------------------------


@pytest.mark.slow
def test_torchvision_vit_b_16_same_logits() -> None:
    peer = randomize(torchvision.models.vit_b_16(), std=0.02)
    ours = vit_from_torchvision(peer)
    assert ours.config.dim == 768 and ours.config.depth == 12 and ours.config.num_heads == 12
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (ours(images) - peer(images)).abs().max() <= TOL


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(image_size=16, patch_size=4, num_heads=2, hidden_dim=48, mlp_dim=96, num_classes=5),
        dict(num_layers=3, num_heads=8, mlp_dim=256, num_classes=3),
    ],
)
def test_torchvision_sizes_same_logits(kw: dict[str, int]) -> None:
    peer = small_torchvision(**kw)
    ours = vit_from_torchvision(peer)
    assert ours.config.mlp_ratio * ours.config.dim == peer.mlp_dim
    assert ours.config.norm_eps == 1e-6
    images = torch.randn(2, 3, peer.image_size, peer.image_size)
    with torch.no_grad():
        assert (ours(images) - peer(images)).abs().max() <= TOL


def test_torchvision_representation_head_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="single-Linear head"):
        vit_from_torchvision(small_torchvision(representation_size=16))


# --- timm ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("vit_tiny_patch16_224", dict(num_classes=10)),
        ("vit_small_patch16_224", dict(img_size=64)),
        ("vit_small_patch8_224", dict(num_classes=4, qkv_bias=False)),
        ("vit_tiny_patch16_224", dict(no_embed_class=True)),
        ("vit_tiny_patch16_224", dict(class_token=False, global_pool="avg", fc_norm=False)),
        ("vit_tiny_patch16_224", dict(num_classes=0)),
    ],
)
def test_timm_same_logits(name: str, kw: dict[str, object]) -> None:
    peer = small_timm(name, **kw)
    ours = vit_from_timm(peer)
    assert ours.config.dim == peer.embed_dim and ours.config.depth == len(peer.blocks)
    assert ours.config.pool == ("cls" if peer.has_class_token else "mean")
    size = peer.patch_embed.img_size[0]
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert (ours(images) - peer(images)).abs().max() <= TOL


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(reg_tokens=2), "register tokens"),
        (dict(init_values=1e-5), "layer scale"),
        (dict(qk_norm=True), "qk_norm"),
        (dict(pre_norm=True), "pre_norm"),
        (dict(class_token=False, global_pool="avg"), "fc_norm"),
        (dict(global_pool="avg"), "with a class token"),
        (dict(norm_layer="rmsnorm"), "only an affine LayerNorm"),
        (dict(act_layer="gelu_tanh"), "only exact GELU"),
    ],
)
def test_timm_unsupported_features_are_refused(kw: dict[str, object], message: str) -> None:
    peer = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, **kw)
    with pytest.raises(UnsupportedModelError, match=message):
        vit_from_timm(peer)


# --- Marian --------------------------------------------------------------------------------

MARIAN_CASES = {
    "opus-like": dict(activation_function="swish"),
    "gelu-unshared": dict(
        activation_function="gelu", share_encoder_decoder_embeddings=False, decoder_vocab_size=37
    ),
    "relu-untied-noscale": dict(
        activation_function="relu", tie_word_embeddings=False, scale_embedding=False
    ),
    "wide-unshared-untied": dict(
        d_model=48,
        encoder_attention_heads=6,
        decoder_attention_heads=6,
        encoder_ffn_dim=40,
        decoder_ffn_dim=40,
        encoder_layers=1,
        decoder_layers=3,
        share_encoder_decoder_embeddings=False,
        tie_word_embeddings=False,
        decoder_vocab_size=29,
    ),
}


def small_marian(**kw: object) -> nn.Module:
    args = dict(
        vocab_size=53,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=3,
        decoder_start_token_id=3,
        eos_token_id=0,
        scale_embedding=True,
    )
    config = transformers.MarianConfig(**{**args, **kw})
    return randomize(transformers.MarianMTModel(config))


@pytest.mark.parametrize("case", sorted(MARIAN_CASES))
def test_marian_same_logits_on_padded_batches(case: str) -> None:
    peer = small_marian(**MARIAN_CASES[case])
    ours = seq2seq_from_marian(peer)
    c, pad = peer.config, peer.config.pad_token_id
    assert (ours.config.pad_id, ours.config.bos_id, ours.config.eos_id) == (pad, pad, 0)
    assert ours.config.scale_embedding == c.scale_embedding
    tgt_vocab = ours.config.tgt_vocab_size
    torch.manual_seed(1)
    src = torch.randint(4, 29, (3, 9))
    src[1, 6:] = pad  # padded source rows: Marian sees them through attention_mask
    src[2, 3:] = pad
    tgt = torch.randint(4, min(tgt_vocab, 29), (3, 7))
    tgt[:, 0] = pad  # Marian's decoder starts from the pad token
    tgt[2, 5:] = pad
    with torch.no_grad():
        expected = peer(
            input_ids=src, attention_mask=src.ne(pad).long(), decoder_input_ids=tgt
        ).logits
        logits = ours(src, tgt)
    keep = tgt.ne(pad)
    keep[:, 0] = True
    assert logits.shape == expected.shape
    assert (logits[keep] - expected[keep]).abs().max() <= TOL


def test_marian_cached_greedy_steps_match_teacher_forcing() -> None:
    # Step-by-step decoding (positions from the cache's offset) sees Marian's logits too.
    peer = small_marian(activation_function="swish")
    ours = seq2seq_from_marian(peer)
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 3, 3]])
    tgt = torch.tensor([[3, 11, 12, 13, 14], [3, 15, 16, 17, 18]])
    with torch.no_grad():
        expected = peer(input_ids=src, attention_mask=src.ne(3).long(), decoder_input_ids=tgt)
        memory, padding_mask = ours.encode(src)
        cache = ours.new_cache()
        steps = [ours.decode(tgt[:, i : i + 1], memory, padding_mask, cache) for i in range(5)]
    assert (torch.cat(steps, dim=1) - expected.logits).abs().max() <= TOL


def test_marian_tying_is_preserved() -> None:
    shared = seq2seq_from_marian(small_marian())
    assert shared.config.tie_embeddings == "all"
    assert shared.output.weight is shared.src_embed.weight
    separate = seq2seq_from_marian(small_marian(**MARIAN_CASES["gelu-unshared"]))
    assert separate.config.tie_embeddings == "output"
    assert separate.config.src_vocab_size == 53 and separate.config.tgt_vocab_size == 37


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(normalize_before=True), "normalize_before"),
        (dict(activation_function="tanh"), "activation_function"),
        (dict(decoder_ffn_dim=32), "ffn_dim"),
    ],
)
def test_marian_unrepresentable_configs_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=message):
        seq2seq_from_marian(small_marian(**kw))


def test_load_pretrained_marian_from_local_directory(tmp_path) -> None:
    peer = small_marian(activation_function="swish")
    peer.save_pretrained(tmp_path / "opus")
    ours = load_pretrained_marian(str(tmp_path / "opus"))
    src = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 3]])
    tgt = torch.tensor([[3, 10, 11], [3, 12, 13]])
    with torch.no_grad():
        expected = peer(input_ids=src, attention_mask=src.ne(3).long(), decoder_input_ids=tgt)
        assert (ours(src, tgt) - expected.logits).abs().max() <= TOL
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match=r"config\.json: model_type is 'bert'"):
        load_pretrained_marian(str(tmp_path / "other"))


def test_marian_download_failure_says_pass_a_local_path(monkeypatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'\nto load the files")

    monkeypatch.setattr(transformers.MarianMTModel, "from_pretrained", offline)
    with pytest.raises(UserError, match="downloading it failed.*pass a local path") as info:
        load_pretrained_marian("Helsinki-NLP/opus-mt-en-de")
    assert "\n" not in str(info.value)


# --- pretrained ViT files ------------------------------------------------------------------


def test_torchvision_file_adapted_to_new_classes_and_size(tmp_path) -> None:
    peer = small_torchvision(num_heads=4)
    path = tmp_path / "vit.pth"
    torch.save(peer.state_dict(), path)
    # A state dict does not record the head count; 64 is no standard width, so say it.
    ours = load_pretrained_vit(str(path), num_classes=3, image_size=48, num_heads=4)
    assert ours.config.num_classes == 3 and ours.config.image_size == 48
    assert ours.head.weight.shape == (3, 64) and not ours.head.weight.any()
    assert ours.pos_embed.shape == (1, 1 + 6 * 6, 64)
    assert ours(torch.randn(2, 3, 48, 48)).shape == (2, 3)
    # The class token's position is kept, and the encoder is the peer's.
    assert torch.equal(ours.pos_embed[:, 0], peer.encoder.pos_embedding[:, 0])
    # With only a new head, the features at the original size are the peer's.
    same = load_pretrained_vit(str(path), num_classes=3, num_heads=4)
    assert same.config.image_size == 32
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = peer._process_input(images)  # [B, N, dim]
        tokens = torch.cat([peer.class_token.expand(2, -1, -1), tokens], dim=1)
        expected = peer.encoder(tokens)[:, 0]
        features = same.forward_head(same.forward_features(images), pre_logits=True)
    assert (features - expected).abs().max() <= TOL


def test_timm_safetensors_file_same_logits(tmp_path) -> None:
    from safetensors.torch import save_file

    peer = small_timm("vit_small_patch16_224", num_classes=7)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in peer.state_dict().items()}, str(path))
    ours = load_pretrained_vit(str(path))
    assert (ours.config.dim, ours.config.num_heads, ours.config.num_classes) == (384, 6, 7)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(images) - peer(images)).abs().max() <= TOL
    wider = load_pretrained_vit(str(path), num_classes=2, image_size=64)
    assert wider.pos_embed.shape == (1, 1 + 16, 384) and wider.grid == (4, 4)
    assert wider(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_training_checkpoint_wrapper_and_mean_pool_file(tmp_path) -> None:
    peer = small_timm(class_token=False, global_pool="avg", fc_norm=False, num_classes=5)
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": peer.state_dict()}, path)
    ours = load_pretrained_vit(str(path))
    assert ours.config.pool == "mean"
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(images) - peer(images)).abs().max() <= TOL


def test_mismatching_file_lists_the_differences(tmp_path) -> None:
    state = small_timm().state_dict()
    del state["blocks.0.mlp.fc2.bias"]
    state["blocks.1.norm1.weight"] = torch.zeros(5)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(StateDictMismatchError) as info:
        load_pretrained_vit(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "missing: encoder.blocks.0.mlp.fc2.bias" in message
    assert "encoder.blocks.1.norm1.weight: (5,)" in message


def test_bad_files_name_the_file(tmp_path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="garbage.pth: cannot read it as a state dict"):
        load_pretrained_vit(str(garbage))
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(UserError, match="other.pth: not a torchvision, timm or unitransformer ViT"):
        load_pretrained_vit(str(other))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="bad.safetensors: cannot read it as a state dict"):
        load_pretrained_vit(str(bad))
    with pytest.raises(UserError, match="missing.safetensors: no such file"):
        load_pretrained_vit(str(tmp_path / "missing.safetensors"))
    with pytest.raises(UserError, match="patch size 8"):
        load_pretrained_vit(str(_saved_torchvision(tmp_path)), image_size=36)


def _saved_torchvision(tmp_path: Path) -> Path:
    path = tmp_path / "tv.pth"
    torch.save(small_torchvision().state_dict(), path)
    return path


def test_code_in_pickles_is_not_executed(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "hook": print}, path)  # a callable needs full unpickling
    with pytest.raises(UserError, match="evil.pth: cannot read it"):
        load_pretrained_vit(str(path))


def test_timm_directory_and_hub_failure(tmp_path, monkeypatch) -> None:
    from timm.models._hub import save_for_hf

    peer = small_timm(num_classes=6)
    save_for_hf(peer, tmp_path)  # the layout of a timm hub repository
    ours = load_pretrained_vit(str(tmp_path))
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (ours(images) - peer(images)).abs().max() <= TOL

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError, match="downloading it failed.*pass a local path"):
        load_pretrained_vit("timm/vit_tiny_patch16_224.augreg_in21k")
    with pytest.raises(UserError, match="neither a local file or directory nor"):
        load_pretrained_vit("no_such_model")
