"""Batched TrivialAugment / RandAugment: each operation equals torchvision's, draws are fair."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from tasks.image_classification import autoaugment
from tasks.image_classification.autoaugment import (
    OPS,
    apply_ops,
    magnitudes,
    rand_augment,
    trivial_augment,
)
from tasks.image_classification.config import ImageDataConfig
from unitransformer.errors import UserError

UNSIGNED = {"Identity", "Posterize", "Solarize", "AutoContrast", "Equalize"}


def _reference(image: Tensor, name: str, m: float) -> Tensor:
    """One image through torchvision's public functional API, as its auto-augment calls it."""
    if name == "ShearX":
        shear = [math.degrees(math.atan(m)), 0.0]
        return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, center=[0, 0])
    if name == "ShearY":
        shear = [0.0, math.degrees(math.atan(m))]
        return TF.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, center=[0, 0])
    if name in ("TranslateX", "TranslateY"):
        shift = [int(m), 0] if name == "TranslateX" else [0, int(m)]
        return TF.affine(image, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0])
    calls = {
        "Identity": lambda: image,
        "Rotate": lambda: TF.rotate(image, angle=m),
        "Brightness": lambda: TF.adjust_brightness(image, 1.0 + m),
        "Color": lambda: TF.adjust_saturation(image, 1.0 + m),
        "Contrast": lambda: TF.adjust_contrast(image, 1.0 + m),
        "Sharpness": lambda: TF.adjust_sharpness(image, 1.0 + m),
        "Posterize": lambda: TF.posterize(image, bits=int(m)),
        "Solarize": lambda: TF.solarize(image, threshold=255.0 * m),
        "AutoContrast": lambda: TF.autocontrast(image),
        "Equalize": lambda: TF.equalize(image),
    }
    return calls[name]()


def _images() -> Tensor:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 12, 10), dtype=torch.uint8)  # not square: x vs y
    images[0] = 7  # a flat image: autocontrast's and equalize's degenerate case
    images[1, :, :, :5] = 250  # bright half: solarize and the blends' clamp
    return images


@pytest.mark.parametrize("wide", [True, False], ids=["trivialaugment", "randaugment"])
@pytest.mark.parametrize("name", OPS)
def test_every_operation_and_magnitude_is_bit_identical_to_torchvision(
    name: str, wide: bool
) -> None:
    images = _images()
    k = OPS.index(name)
    table = magnitudes(wide, 31, images.shape[-2], images.shape[-1])
    signs = (1.0,) if name in UNSIGNED else (1.0, -1.0)
    # All bins and signs at once: one image per (bin, sign), each with its own magnitude.
    mags = torch.cat([table[k] * s for s in signs])
    batch = images[torch.arange(len(mags)) % len(images)]
    ours = apply_ops(batch, torch.full((len(mags),), k), mags)
    for i, m in enumerate(mags.tolist()):
        expected = _reference(batch[i], name, m)
        assert torch.equal(ours[i], expected), f"{name} at magnitude {m}"


def test_magnitude_tables_follow_torchvision_ranges() -> None:
    wide, rand = magnitudes(True, 31, 32, 32), magnitudes(False, 31, 32, 32)
    top = {name: (float(wide[i, -1]), float(rand[i, -1])) for i, name in enumerate(OPS)}
    assert top["ShearX"] == pytest.approx((0.99, 0.3))
    assert top["TranslateX"] == pytest.approx((32.0, 150.0 / 331.0 * 32))
    assert top["Rotate"] == pytest.approx((135.0, 30.0))
    assert top["Posterize"] == (2.0, 4.0)
    assert float(wide[OPS.index("Solarize"), 0]) == 1.0 and top["Solarize"] == (0.0, 0.0)
    assert top["Equalize"] == (0.0, 0.0)


def _captured_draws(monkeypatch: pytest.MonkeyPatch, run) -> list[tuple[Tensor, Tensor]]:
    calls: list[tuple[Tensor, Tensor]] = []

    def capture(images: Tensor, ops: Tensor, mags: Tensor) -> Tensor:
        calls.append((ops, mags))
        return images

    monkeypatch.setattr(autoaugment, "apply_ops", capture)
    run()
    return calls


def test_trivial_augment_draws_uniform_operations_bins_and_signs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = 28_000
    images = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    torch.manual_seed(0)
    [(ops, mags)] = _captured_draws(monkeypatch, lambda: trivial_augment(images))
    counts = torch.bincount(ops, minlength=len(OPS)).double()
    p = 1 / len(OPS)
    assert (counts - n * p).abs().max() < 5 * math.sqrt(n * p * (1 - p))  # 5 sigma
    table = magnitudes(True, 31, 4, 4)
    rotate = ops == OPS.index("Rotate")
    assert set(mags[rotate].abs().unique().tolist()) == set(table[OPS.index("Rotate")].tolist())
    negative = (mags[rotate] < 0).double().mean()
    assert abs(negative - 0.5 * 30 / 31) < 0.05  # half of the non-zero magnitudes
    assert (mags[ops == OPS.index("Posterize")] > 0).all()  # unsigned: never negated


def test_rand_augment_applies_num_ops_at_the_fixed_bin(monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.zeros(500, 3, 8, 8, dtype=torch.uint8)
    calls = _captured_draws(monkeypatch, lambda: rand_augment(images, num_ops=3, magnitude=30))
    assert len(calls) == 3
    table = magnitudes(False, 31, 8, 8)
    for ops, mags in calls:
        assert torch.equal(mags.abs(), table[ops, 30].abs())
    with pytest.raises(ValueError, match="magnitude must be in 0..30"):
        rand_augment(images, magnitude=31)


def test_each_image_gets_its_own_operation_and_a_seed_replays_it() -> None:
    torch.manual_seed(1)
    image = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    batch = image.expand(64, -1, -1, -1).contiguous()
    torch.manual_seed(5)
    first = trivial_augment(batch)
    torch.manual_seed(5)
    again = trivial_augment(batch)
    assert torch.equal(first, again)
    distinct = {tuple(x.flatten().tolist()) for x in first}
    assert len(distinct) > 10  # one op for the whole batch would give 1
    assert first.dtype == torch.uint8 and first.shape == batch.shape


def test_tiny_images_pass_every_operation_like_torchvision() -> None:
    images = torch.randint(0, 256, (len(OPS), 3, 2, 2), dtype=torch.uint8)
    table = magnitudes(True, 31, 2, 2)
    ops = torch.arange(len(OPS))
    ours = apply_ops(images, ops, table[:, 30])
    for k, name in enumerate(OPS):
        assert torch.equal(ours[k], _reference(images[k], name, float(table[k, 30]))), name


def test_apply_ops_rejects_float_images() -> None:
    with pytest.raises(ValueError, match="expected uint8"):
        apply_ops(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros(2))


def test_randaugment_magnitude_out_of_range_is_a_config_error() -> None:
    with pytest.raises(UserError, match="data.randaugment_magnitude: expected a bin in 0..30"):
        ImageDataConfig(auto_augment="randaugment", randaugment_magnitude=31).validate()
    with pytest.raises(UserError, match="data.randaugment_num_ops"):
        ImageDataConfig(randaugment_num_ops=-1).validate()
