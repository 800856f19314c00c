"""Progressive resizing: the first ``data.low_res_epochs`` train on downscaled images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_image_task import digits_task  # the small digits task of the image tests

from tasks.image_classification.config import ImageClassificationConfig, ImageDataConfig
from unitransformer.engine.loader import load_config
from unitransformer.errors import UserError


def test_low_res_epochs_downscale_the_same_augmented_views(tmp_path: Path) -> None:
    full = digits_task(tmp_path / "full", crop="pad", padding=1, hflip=True)
    low = digits_task(
        tmp_path / "low", crop="pad", padding=1, hflip=True, low_res_size=4, low_res_epochs=2
    )
    for epoch in (0, 1):
        seen, plain = (
            next(iter(low.train_batches(epoch, 0, 1))),
            next(iter(full.train_batches(epoch, 0, 1))),
        )
        assert seen["images"].shape == (32, 3, 4, 4)
        # The same crops and flips as the full-size epoch, only downscaled (antialiased).
        expected = F.interpolate(plain["images"], size=(4, 4), mode="bilinear", antialias=True)
        torch.testing.assert_close(seen["images"], expected)
        assert torch.equal(seen["labels"], plain["labels"])
    after = next(iter(low.train_batches(2, 0, 1)))
    assert after["images"].shape == (32, 3, 8, 8)  # back to data.image_size from epoch 2
    model = low.build_model().train()  # the ViT takes either size (position embeddings resampled)
    for batch in (next(iter(low.train_batches(0, 0, 1))), after):
        assert torch.isfinite(low.loss(model, batch).loss)


def test_evaluation_sees_full_size_images_during_low_res_epochs(tmp_path: Path) -> None:
    task = digits_task(tmp_path, low_res_size=4, low_res_epochs=100)
    metrics = task.evaluate(task.build_model().eval(), "val")
    assert 0.0 <= metrics["accuracy"] <= 1.0
    images, _ = task.images("val", [0, 1])
    assert task.preprocess(images).shape[-2:] == (8, 8)


@pytest.mark.parametrize("size", [0, 8, 12])
def test_low_res_size_must_be_below_image_size(size: int) -> None:
    data = ImageDataConfig(image_size=8, low_res_size=size, low_res_epochs=3)
    with pytest.raises(
        UserError, match=rf"data.low_res_size: expected a side in 1..7 .*got {size}"
    ):
        data.validate()
    ImageDataConfig(image_size=8, low_res_size=size, low_res_epochs=0).validate()  # off: ignored


def test_stages_of_growing_sides_follow_each_other(tmp_path: Path) -> None:
    task = digits_task(tmp_path, low_res_size=(4, 6), low_res_epochs=(1, 2))
    sides = [next(iter(task.train_batches(e, 0, 1)))["images"].shape[-1] for e in range(5)]
    assert sides == [4, 6, 6, 8, 8]  # 1 epoch at 4, 2 at 6, then data.image_size
    assert task.config.data.low_res_stages() == [(4, 1), (6, 2)]


def test_stages_load_from_yaml_lists_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "task: image_classification\ndata:\n  image_size: 8\n"
        "  low_res_size: [4, 6]\n  low_res_epochs: [1, 2]\n"
    )
    config = load_config(ImageClassificationConfig, path)
    assert (config.data.low_res_size, config.data.low_res_epochs) == ((4, 6), (1, 2))
    config = load_config(
        ImageClassificationConfig, path, ["data.low_res_size=5", "data.low_res_epochs=3"]
    )
    assert config.data.train_side(2) == 5 and config.data.train_side(3) == 8


@pytest.mark.parametrize(
    ("sides", "epochs", "message"),
    [
        ((4, 6), (1,), r"data.low_res_size: expected one side per entry .*\(1\), got \(4, 6\)"),
        ((4, 9), (1, 1), r"data.low_res_size: expected a side in 1..7 .*got \(4, 9\)"),
        ((4, 6), (1, -1), r"data.low_res_epochs: expected >= 0, got \(1, -1\)"),
    ],
)
def test_bad_stages_name_the_key(
    sides: tuple[int, ...], epochs: tuple[int, ...], message: str
) -> None:
    data = ImageDataConfig(image_size=8, low_res_size=sides, low_res_epochs=epochs)
    with pytest.raises(UserError, match=message):
        data.validate()
