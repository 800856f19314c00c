"""The image-classification task: metrics, parameter groups, batches, loss, evaluation,
fine-tuning from a foreign ViT file, a few training steps through the engine, and classify.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from tasks.image_classification.augment import shift
from tasks.image_classification.commands import add_commands
from tasks.image_classification.config import (
    ImageClassificationConfig,
    ImageDataConfig,
    ImageModelConfig,
)
from tasks.image_classification.metrics import confusion_matrix, per_class_accuracy, topk_correct
from tasks.image_classification.task import ImageClassificationTask
from unitransformer.embeddings import ConvStem, ResidualConvBlock
from unitransformer.engine.config import TrainConfig
from unitransformer.errors import UserError


def digits_task(tmp_path: Path, **data: object) -> ImageClassificationTask:
    cfg = ImageClassificationConfig(
        model=ImageModelConfig(size="digits", depth=1, dim=32, num_heads=2),
        data=ImageDataConfig(holdout=100, test_holdout=100, batch_size=32, **data),
    )
    task = ImageClassificationTask(cfg)
    task.prepare(tmp_path)
    return task


def test_topk_per_class_and_confusion_by_hand() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([0, 2, 1, 2])
    assert topk_correct(logits, labels, 1).tolist() == [True, False, False, False]
    assert topk_correct(logits, labels, 2).tolist() == [True, True, True, True]
    assert topk_correct(logits, labels, 10).all()  # k above the class count: all correct
    confusion = confusion_matrix(logits.argmax(-1), labels, 3)
    assert confusion.tolist() == [[1, 0, 0], [0, 0, 1], [1, 1, 0]]
    acc = per_class_accuracy(torch.tensor([[2, 0, 0], [1, 1, 0], [0, 0, 0]]))
    assert acc[:2].tolist() == [1.0, 0.5] and torch.isnan(acc[2])


def test_param_groups_no_decay_on_norms_biases_pos_embed_cls_token(tmp_path: Path) -> None:
    task = digits_task(tmp_path)
    model = task.build_model()
    decay, no_decay = task.param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"pos_embed", "cls_token", "encoder.norm.weight", "head.bias"} <= skipped
    assert "patch_embed.proj.weight" in decayed and "head.weight" in decayed
    assert not any("norm" in n or n.endswith("bias") for n in decayed)
    assert len(decayed) + len(skipped) == len(list(model.parameters()))


def test_train_batches_deterministic_per_epoch_and_sharded(tmp_path: Path) -> None:
    # TrivialAugment too: its per-image draws must replay with the batch's seed (a resume).
    task = digits_task(tmp_path, crop="pad", padding=1, auto_augment="trivialaugment")
    first = list(task.train_batches(0, 0, 1))
    again = list(task.train_batches(0, 0, 1))
    other = next(iter(task.train_batches(1, 0, 1)))
    assert len(first) == 1597 // 32
    assert torch.equal(first[3]["images"], again[3]["images"])
    assert not torch.equal(first[0]["labels"], other["labels"])
    rank0 = next(iter(task.train_batches(2, 0, 2)))["labels"]
    rank1 = next(iter(task.train_batches(2, 1, 2)))["labels"]
    whole = next(iter(task.train_batches(2, 0, 1)))["labels"]
    assert len(rank0) == len(rank1) == 16
    assert sorted(torch.cat([rank0, rank1]).tolist()) == sorted(whole.tolist())
    with pytest.raises(UserError, match="data.batch_size"):
        task.train_batches(0, 0, 3)


def test_loss_with_mixup_and_cutmix_targets(tmp_path: Path) -> None:
    task = digits_task(tmp_path, mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1)
    model = task.build_model()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a zero head would give a constant loss
    batch = next(iter(task.train_batches(0, 0, 1)))
    targets = batch["targets"]
    assert targets.shape == (32, 10) and torch.allclose(targets.sum(-1), torch.ones(32))
    assert bool((targets.max(-1).values < 1).any())  # some mass moved to the partner image
    out = task.loss(model, batch)
    logits = model(batch["images"])
    smoothed = targets * 0.9 + 0.01
    expected = -(smoothed * F.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(out.loss, expected, atol=1e-5)
    hard = F.cross_entropy(logits, batch["labels"], label_smoothing=0.1)
    assert not torch.allclose(out.loss, hard)
    assert out.num_items == 32 and 0.0 <= float(out.logs["accuracy"]) <= 1.0
    out.loss.backward()
    assert model.patch_embed.proj.weight.grad is not None


def test_evaluate_metrics_and_confusion_png(tmp_path: Path) -> None:
    task = digits_task(tmp_path)
    model = task.build_model()
    model.train()
    metrics = task.evaluate(model, "test")
    assert model.training  # the mode is restored
    assert 0.0 <= metrics["accuracy"] <= metrics["top5"] <= 1.0
    assert {f"accuracy/{d}" for d in "0123456789"} <= set(metrics)
    png = tmp_path / "confusion_test.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "per_class_test.json").read_text())
    assert sum(map(sum, report["confusion"])) == 100
    assert json.loads((tmp_path / "classes.json").read_text()) == [str(d) for d in range(10)]


def test_eval_hflip_averages_the_logits_of_each_image_and_its_mirror(tmp_path: Path) -> None:
    plain = digits_task(tmp_path / "plain")
    flipped = digits_task(tmp_path / "flip", eval_hflip=True)
    model = plain.build_model().eval()
    nn.init.normal_(model.head.weight)  # the head starts at zero: every logit would be 0
    logits, labels = plain.predict_logits(model, "test")
    with_flip, same_labels = flipped.predict_logits(model, "test")
    assert torch.equal(labels, same_labels)
    images, _ = plain.images("test", range(len(labels)))
    with torch.no_grad():
        mirrored = model(plain.preprocess(images).flip(-1)).float()
    assert not torch.allclose(logits, mirrored, atol=1e-4)  # the model is not mirror-symmetric
    torch.testing.assert_close(with_flip, (logits + mirrored) / 2)


def test_shift_moves_the_image_and_reflects_into_the_uncovered_border() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    down_right, up_left = shift(x, 2), shift(x, -2)
    assert down_right.shape == up_left.shape == x.shape
    assert torch.equal(down_right[..., 2:, 2:], x[..., :-2, :-2])
    assert torch.equal(up_left[..., :-2, :-2], x[..., 2:, 2:])
    assert torch.equal(down_right[..., 0, 2:], x[..., 2, :-2])  # row -2 mirrors row 2
    assert torch.equal(shift(x, 0), x)


def test_eval_shift_averages_the_logits_of_six_views(tmp_path: Path) -> None:
    plain = digits_task(tmp_path / "plain")
    six = digits_task(tmp_path / "six", eval_hflip=True, eval_shift=1)
    model = plain.build_model().eval()
    nn.init.normal_(model.head.weight)
    logits, labels = six.predict_logits(model, "test")
    images, _ = plain.images("test", range(len(labels)))
    x = plain.preprocess(images)
    with torch.no_grad():
        views = [model(v).float() for v in (x, shift(x, 1), shift(x, -1))]
        views += [model(v.flip(-1)).float() for v in (x, shift(x, 1), shift(x, -1))]
    assert not torch.allclose(views[0], views[1], atol=1e-4)  # a shift changes the logits
    torch.testing.assert_close(logits, torch.stack(views).mean(dim=0))
    with pytest.raises(UserError, match=r"data.eval_shift: expected fewer pixels than data.im"):
        ImageDataConfig(eval_shift=8).validate()  # digits are 8x8
    with pytest.raises(UserError, match=r"data.eval_shift: expected >= 0, got -1"):
        ImageDataConfig(eval_shift=-1).validate()


def test_resnet18_baseline_keeps_small_images_large(tmp_path: Path) -> None:
    task = digits_task(tmp_path)
    task.config.model.arch = "resnet18"
    model = task.build_model()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_conv_stem_width_reaches_the_model_and_is_refused_with_pretrained(tmp_path: Path) -> None:
    task = digits_task(tmp_path)
    task.config.model.stem, task.config.model.stem_width = "conv", 48
    model = task.build_model()
    assert model.patch_embed.convs[0].out_channels == 48
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    with pytest.raises(UserError, match="model.stem_width: the pretrained checkpoint sets"):
        ImageModelConfig(pretrained="vit.pth", stem_width=48).validate()


def test_conv_stem_blocks_make_a_residual_stem_that_starts_as_the_plain_one(tmp_path: Path) -> None:
    task = digits_task(tmp_path)
    model_config = task.config.model
    model_config.stem, model_config.stem_blocks, model_config.patch_size = "conv", 2, 4
    model = task.build_model()
    blocks = [m for m in model.patch_embed.convs if isinstance(m, ResidualConvBlock)]
    assert len(blocks) == 2 * 2  # patch 4: two strided convolutions, two blocks after each
    # Zero-initialized last BatchNorm: with the blocks skipped, the tokens are the same.
    model.eval()
    images = torch.randn(2, 3, 8, 8)
    plain = nn.Sequential(*[m for m in model.patch_embed.convs if m not in blocks])
    expected = model.patch_embed.proj(plain(images)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.patch_embed(images), expected)
    with pytest.raises(UserError, match="model.stem_blocks: expected >= 0 blocks, got -1"):
        ImageModelConfig(stem_blocks=-1).validate()
    with pytest.raises(UserError, match="model.stem_blocks: the pretrained checkpoint sets"):
        ImageModelConfig(pretrained="vit.pth", stem_blocks=1).validate()


def test_conv_stem_input_blocks_work_at_the_input_resolution(tmp_path: Path) -> None:
    task = digits_task(tmp_path)
    model_config = task.config.model
    model_config.stem, model_config.stem_blocks, model_config.patch_size = "conv", 1, 4
    plain_keys = set(task.build_model().state_dict())
    model_config.stem_input_blocks, model_config.stem_width = 2, 24
    model = task.build_model()
    first = model.patch_embed.convs[0]
    assert first.stride == (1, 1) and first.out_channels == model_config.stem_width
    # Two blocks see the 8x8 input before the first strided convolution halves it.
    sizes: list[int] = []
    for module in model.patch_embed.convs:
        if isinstance(module, ResidualConvBlock):
            module.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert sizes == [8, 8, 4, 2]
    # Without input blocks the stem keeps its parameter names (a checkpoint format).
    model_config.stem_input_blocks, model_config.stem_width = 0, None
    assert set(task.build_model().state_dict()) == plain_keys
    assert "patch_embed.convs.0.weight" in plain_keys
    assert task.build_model().patch_embed.convs[0].stride == (2, 2)
    with pytest.raises(UserError, match="model.stem_input_blocks: expected >= 0 blocks, got -1"):
        ImageModelConfig(stem_input_blocks=-1).validate()


def test_patch_drop_reaches_the_model_and_a_bad_rate_names_its_key(tmp_path: Path) -> None:
    task = digits_task(tmp_path)
    task.config.model.patch_drop = 0.5
    model = task.build_model()
    assert model.config.patch_drop == 0.5
    out = task.loss(model.train(), next(iter(task.train_batches(0, 0, 1))))
    assert torch.isfinite(out.loss)
    with pytest.raises(UserError, match=r"model.patch_drop: expected a rate in \[0, 1\), got 1.0"):
        ImageModelConfig(patch_drop=1.0).validate()


def test_resnet18_runs_channels_last_with_plain_weights_and_outputs() -> None:
    from tasks.image_classification.resnet import small_resnet18

    torch.manual_seed(0)
    model = small_resnet18(10).eval()
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    plain._forward_pre_hooks.clear()  # the same weights, run NCHW
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=1e-5, rtol=1e-4)
    state = model.state_dict()
    fresh = small_resnet18(10)
    fresh.load_state_dict(state)  # the checkpoint format is the plain state dict
    assert fresh.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_finetune_from_random_torchvision_vit_file(tmp_path: Path) -> None:
    pytest.importorskip("unitransformer.interop", reason="interop (load_pretrained_vit) missing")
    from torchvision.models import VisionTransformer as TorchvisionViT

    torch.manual_seed(0)
    foreign = TorchvisionViT(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=3,
        hidden_dim=192,
        mlp_dim=384,
        num_classes=7,
    )
    file = tmp_path / "tv_vit.pth"
    torch.save(foreign.state_dict(), file)
    run = tmp_path / "run"
    cfg = ImageClassificationConfig(
        model=ImageModelConfig(size=None, pretrained=str(file), drop_path=0.1, patch_drop=0.25),
        data=ImageDataConfig(holdout=100, image_size=16, batch_size=16),
    )
    task = ImageClassificationTask(cfg)
    task.prepare(run)
    model = task.build_model()
    assert torch.equal(model.patch_embed.proj.weight, foreign.conv_proj.weight)
    assert model.pos_embed.shape == (1, 1 + 2 * 2, 192)  # 4x4 patch grid resampled to 2x2
    assert model.head.out_features == 10 and model.config.drop_path == 0.1
    assert model.config.patch_drop == 0.25  # the run's regularization over the checkpoint's
    out = task.loss(model, next(iter(task.train_batches(0, 0, 1))))
    assert torch.isfinite(out.loss)
    file.unlink()  # evaluate / classify later rebuild the shape from the run directory alone
    again = ImageClassificationTask(cfg)
    again.prepare(run)
    assert again.build_model().pos_embed.shape == model.pos_embed.shape


def _image_bytes(mode: str) -> tuple[bytes, str]:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    image = {
        "L": Image.fromarray(gray),
        "P": Image.fromarray(gray).convert("P"),
        "RGBA": Image.fromarray(gray).convert("RGBA"),
        "CMYK": Image.fromarray(gray).convert("CMYK"),
        "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
        "1": Image.fromarray(gray).convert("1"),
    }[mode]
    buffer = io.BytesIO()
    suffix = "tif" if mode == "CMYK" else "png"
    image.save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
    return buffer.getvalue(), suffix


def test_train_a_few_steps_then_classify_every_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    trainer = pytest.importorskip("unitransformer.engine.trainer", reason="engine trainer missing")
    run = tmp_path / "run"
    cfg = ImageClassificationConfig(
        model=ImageModelConfig(size="digits", depth=1, dim=32, num_heads=2),
        data=ImageDataConfig(holdout=100, batch_size=32),
        train=TrainConfig(max_steps=4, device="cpu", log_every=2, checkpoint_every=4),
    )
    cfg.eval.every = 4
    trainer.Trainer(ImageClassificationTask(cfg), cfg, run).fit()
    assert (run / "confusion_val.png").is_file()
    capsys.readouterr()  # drop the trainer's progress lines
    paths = []
    for mode in ("L", "P", "RGBA", "CMYK", "I;16", "1"):
        data, suffix = _image_bytes(mode)
        paths.append(tmp_path / f"{mode.replace(';', '')}.{suffix}")
        paths[-1].write_bytes(data)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["classify", str(run), *map(str, paths), "--top-k", "3"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 * 4 and lines[0] == str(paths[0])
    assert all(line.strip().endswith(tuple("0123456789")) and "%" in line for line in lines[1:4])
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    args = parser.parse_args(["classify", str(run), str(bad)])
    with pytest.raises(UserError, match="notes.jpg"):
        args.func(args)


def test_evaluate_overrides_change_how_images_are_scored_only(tmp_path: Path) -> None:
    import yaml

    from tasks.registry import load_run
    from unitransformer.engine.loader import config_to_dict

    saved = config_to_dict(ImageClassificationConfig(data=ImageDataConfig(eval_batch_size=64)))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    overrides = ["data.eval_batch_size=7", "data.eval_hflip=true", "train.precision=fp32"]
    config, _ = load_run(tmp_path, overrides=[*overrides, "data.eval_shift=1"])
    assert config.data.eval_batch_size == 7 and config.train.precision == "fp32"
    assert config.data.eval_hflip is True and config.data.eval_shift == 1
    assert "eval_batch_size: 64" in (tmp_path / "config.yaml").read_text()  # the run is untouched
    with pytest.raises(UserError, match="only these keys can be overridden here: data.eval_batch"):
        load_run(tmp_path, overrides=["data.image_size=64"])  # how inputs are prepared: refused


def test_conv_stem_widths_set_each_stage(tmp_path: Path) -> None:
    task = digits_task(tmp_path)
    model_config = task.config.model
    model_config.stem, model_config.patch_size = "conv", 4
    model_config.stem_blocks, model_config.stem_input_blocks = 1, 1
    doubled = task.build_model()
    convs = [m for m in doubled.patch_embed.convs if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64]  # stem_width, then doubled per stride
    # A ResNet's stages 1-3 for small images: the width doubles at each stride.
    model_config.stem_widths = (8, 16, 24)
    model = task.build_model()
    channels = [
        m.conv1.out_channels for m in model.patch_embed.convs if isinstance(m, ResidualConvBlock)
    ]
    assert channels == [8, 16, 24]
    assert model.patch_embed.proj.in_channels == 24
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    model_config.stem_widths = (8, 16)
    with pytest.raises(UserError, match=r"model.stem_widths: expected 3 channel counts.*\[8, 16\]"):
        task.build_model()
    with pytest.raises(UserError, match=r"model.stem_widths: expected channel counts >= 1"):
        ImageModelConfig(stem_widths=(8, 0)).validate()
    # The library's own check, for models built without the task's config.
    with pytest.raises(ValueError, match=r"widths needs 3 channel counts >= 1, got \(8, 16\)"):
        ConvStem(16, patch_size=4, input_blocks=1, widths=(8, 16))
