"""Image decoding (every mode, every bad file), sources, the held-out split, augmentation."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tasks.image_classification.augment import (
    TrainAugment,
    mix_batch,
    pad_crop,
    random_erase,
    soft_cross_entropy,
)
from tasks.image_classification.config import ImageDataConfig
from tasks.image_classification.data import ImageStore, holdout_indices, load_splits
from tasks.image_classification.images import BadImageError, decode_image
from unitransformer.errors import UserError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if image.mode in ("CMYK", "I") else "PNG")
    return buffer.getvalue()


def mode_images() -> dict[str, Image.Image]:
    """One small image of every mode a user may hand us."""
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    palette = Image.fromarray(gray).convert("P")
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :4, 3] = 255  # left half opaque red, right half fully transparent
    return {
        "L": Image.fromarray(gray),
        "1": Image.fromarray(gray > 100).convert("1"),
        "P": palette,
        "P+transparency": transparent,
        "RGBA": Image.fromarray(rgba),
        "LA": Image.fromarray(gray).convert("LA"),
        "CMYK": Image.fromarray(np.stack([gray] * 3, -1)).convert("CMYK"),
        "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
        "I": Image.fromarray(gray.astype(np.int32) * 257),
        "RGB": Image.fromarray(np.stack([gray] * 3, -1)),
    }


@pytest.mark.parametrize("mode", list(mode_images()))
def test_every_mode_becomes_rgb_uint8(mode: str) -> None:
    image = decode_image(_png(mode_images()[mode]), name=f"{mode}.png")
    assert image.dtype == torch.uint8
    assert image.shape == (3, 6, 8)


def test_sixteen_bit_is_rescaled_not_clipped() -> None:
    # 257 * v in 16 bits is v in 8 bits; PIL's own convert would clip every value above 255.
    gray = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 5) * 257
    image = decode_image(_png(Image.fromarray(gray)))
    assert torch.equal(image[0], torch.from_numpy((gray // 257).astype(np.uint8)))
    assert torch.equal(image[0], image[2])


def test_transparency_is_composited_over_white() -> None:
    image = decode_image(_png(mode_images()["RGBA"]))
    assert (
        image[:, :, :4].tolist() == torch.tensor([200, 0, 0]).view(3, 1, 1).expand(3, 6, 4).tolist()
    )
    assert bool((image[:, :, 4:] == 255).all())


def _bomb_png(side: int) -> bytes:
    # Only the header of a side x side grayscale PNG: PIL reads the size before any pixel.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, format="JPEG"
    )
    return buffer.getvalue()[:400]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (_truncated_jpeg(), "truncated or corrupt"),
        (b"this is not an image, just text\n", "not an image"),
        (_bomb_png(20000), "decompression bomb"),
    ],
    ids=["zero-bytes", "truncated-jpeg", "text-named-jpg", "bomb-20000x20000"],
)
def test_bad_image_file_gives_one_user_error_naming_it(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        decode_image(path=path)
    assert isinstance(info.value, BadImageError)
    assert str(path) in str(info.value) and reason in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="nope.png: no such image file"):
        decode_image(path=tmp_path / "nope.png")


def test_holdout_is_deterministic_and_disjoint() -> None:
    a = holdout_indices(100, 10, 5, seed=3)
    b = holdout_indices(100, 10, 5, seed=3)
    c = holdout_indices(100, 10, 5, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])
    train, val, test = (set(x.tolist()) for x in a)
    assert (len(train), len(val), len(test)) == (85, 10, 5)
    assert train | val | test == set(range(100)) and not (train & val or train & test or val & test)
    with pytest.raises(UserError, match="data.holdout"):
        holdout_indices(10, 8, 2, seed=0)


def test_digits_loads_with_ten_class_names() -> None:
    splits, names = load_splits(ImageDataConfig(source="digits", holdout=100, test_holdout=200))
    assert names == [str(i) for i in range(10)]
    assert {k: len(v) for k, v in splits.items()} == {"train": 1497, "val": 100, "test": 200}
    store = ImageStore(splits["train"], 8, max_memory_mb=64)
    assert store.in_memory and store.images is not None and store.images.shape == (1497, 3, 8, 8)
    assert int(store.images.max()) == 255 and store.labels.unique().tolist() == list(range(10))


def _write_parquet(
    path: Path, images: list[Image.Image], labels: list, names: list[str] | None
) -> None:
    column = [{"bytes": _png(im), "path": f"img{i}.png"} for i, im in enumerate(images)]
    table = pa.table({"img": column, "label": labels})
    if names is not None:  # what `datasets` writes: the features, with the class names
        features = {"img": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
        meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        table = table.replace_schema_metadata(meta)
    pq.write_table(table, path)


def test_parquet_with_class_names_in_memory_and_lazy_agree(tmp_path: Path) -> None:
    modes = list(mode_images().values())
    images = [im.resize((12, 10)) if im.mode not in ("I;16", "I") else im for im in modes] * 2
    _write_parquet(
        tmp_path / "train.parquet", images, [i % 3 for i in range(len(images))], ["a", "b", "c"]
    )
    cfg = ImageDataConfig(source="parquet", path=str(tmp_path / "train.parquet"), holdout=4)
    splits, names = load_splits(cfg)
    assert names == ["a", "b", "c"] and len(splits["train"]) == len(images) - 4
    eager = ImageStore(splits["train"], 8, max_memory_mb=1)
    lazy = ImageStore(splits["train"], 8, max_memory_mb=1)
    lazy.in_memory, lazy.images = False, None  # as if it did not fit: decode per batch
    index = torch.tensor([0, 3, 5])
    assert eager.in_memory and torch.equal(eager.get(index)[0], lazy.get(index)[0])
    assert eager.get(index)[0].shape == (3, 3, 8, 8)


def test_parquet_string_labels_and_a_bad_image_named(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    good = _png(mode_images()["L"])
    table = pa.table({"picture": [good, good, b"garbage"], "y": ["cat", "ant", "cat"]})
    pq.write_table(table, path)
    splits, names = load_splits(ImageDataConfig(source="parquet", path=str(path)))
    assert names == ["ant", "cat"] and splits["train"].labels.tolist() == [1, 0, 1]
    with pytest.raises(BadImageError, match=r"train\.parquet item 2"):
        ImageStore(splits["train"], 8, max_memory_mb=1)
    with pytest.raises(UserError, match="data.label_column: .* has no column 'nope'"):
        load_splits(ImageDataConfig(source="parquet", path=str(path), label_column="nope"))


def test_torchvision_folder_source(tmp_path: Path) -> None:
    for name, mode in (("cat", "CMYK"), ("dog", "P"), ("eel", "I;16")):
        (tmp_path / name).mkdir()
        for i in range(2):
            mode_images()[mode].save(tmp_path / name / f"{i}.{'tif' if mode == 'CMYK' else 'png'}")
    splits, names = load_splits(ImageDataConfig(source="torchvision_folder", path=str(tmp_path)))
    assert names == ["cat", "dog", "eel"] and splits["train"].labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ImageStore(splits["train"], 8, 1).images.shape == (6, 3, 8, 8)


@pytest.mark.skipif(
    not (DATA / "cifar10" / "train.parquet").is_file(),
    reason="no ../shared/data/cifar10/train.parquet",
)
def test_real_cifar10_holdout_without_decoding_everything() -> None:
    cfg = ImageDataConfig(
        source="parquet", path=str(DATA / "cifar10" / "train.parquet"), holdout=5000
    )
    splits, names = load_splits(cfg)
    assert len(names) == 10 and names[0] == "airplane"
    assert (len(splits["train"]), len(splits["val"])) == (45000, 5000)
    few = splits["val"].subset(torch.arange(3))  # decode 3 images, not 50,000
    assert ImageStore(few, 32, 1).images.shape == (3, 3, 32, 32)


def test_pad_crop_moves_each_image_differently() -> None:
    torch.manual_seed(0)
    images = torch.arange(16 * 8 * 8, dtype=torch.float32).view(16, 1, 8, 8).expand(-1, 3, -1, -1)
    out = pad_crop(images.contiguous(), 2)
    assert out.shape == images.shape
    shifts = {tuple((out[i, 0] - images[i, 0]).flatten()[27:29].tolist()) for i in range(16)}
    assert len(shifts) > 1  # not one crop for the whole batch


def test_random_erase_zeroes_a_rectangle_only_where_applied() -> None:
    x = torch.ones(4, 3, 16, 16)
    assert torch.equal(random_erase(x, p=0.0), x)
    erased = random_erase(x, p=1.0)
    zeros = (erased[:, 0] == 0).sum(dim=(1, 2))
    assert bool((zeros > 0).all()) and bool((zeros < 16 * 16).all())
    assert torch.equal(erased[:, 0] == 0, erased[:, 2] == 0)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mix_batch_targets_are_mixtures_of_the_pair(kind: str) -> None:
    torch.manual_seed(1)
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    alphas = {"mixup_alpha": 1.0} if kind == "mixup" else {"cutmix_alpha": 1.0}
    mixed, targets = mix_batch(images, labels, 5, **alphas)
    assert targets.shape == (4, 5) and torch.allclose(targets.sum(-1), torch.ones(4))
    lam = float(targets[0, 0])
    assert torch.allclose(targets[0, 3], torch.tensor(1 - lam))  # paired with the mirrored image
    if kind == "mixup":
        assert torch.allclose(mixed, images * lam + images.flip(0) * (1 - lam))
    else:
        from_partner = (mixed == images.flip(0)).all(dim=1).float().mean(dim=(1, 2))
        assert torch.allclose(from_partner[0], torch.tensor(1 - lam), atol=1e-6)


def test_soft_cross_entropy_matches_hard_labels_and_smoothing() -> None:
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    one_hot = F.one_hot(labels, 4).float()
    for eps in (0.0, 0.1):
        expected = F.cross_entropy(logits, labels, label_smoothing=eps)
        assert torch.allclose(soft_cross_entropy(logits, one_hot, eps), expected, atol=1e-6)
        assert torch.allclose(soft_cross_entropy(logits, labels, eps), expected, atol=1e-6)


def test_train_augment_shapes_and_per_image_randaugment() -> None:
    cfg = ImageDataConfig(
        image_size=16,
        crop="resized",
        hflip=True,
        auto_augment="randaugment",
        random_erasing=0.5,
        cutmix_alpha=1.0,
    )
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8)
    x, targets = TrainAugment(cfg, num_classes=3)(images, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and targets.shape == (8, 3)
