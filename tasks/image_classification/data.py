"""Image datasets: loading every supported source, the held-out split, and in-memory decoding.

Sources are read as *encoded* records (bytes or paths, and integer labels) without decoding a
single image, so splitting 50,000 CIFAR-10 images is instant. `ImageStore` then decodes a split
once into one uint8 tensor ``[N, 3, S, S]`` when it fits in ``data.max_memory_mb`` (decoding
every JPEG again each epoch would waste the CPU on work whose result never changes), and
decodes batch by batch otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tasks.image_classification.config import ImageDataConfig
from tasks.image_classification.images import decode_image, fit_square
from unitransformer.errors import UserError

__all__ = ["ImageRecords", "ImageStore", "holdout_indices", "load_splits"]

_IMAGE_NAMES = ("image", "img", "images", "picture", "pixel_values")
_LABEL_NAMES = ("label", "labels", "fine_label", "class", "target", "y")


@dataclass
class ImageRecords:
    """The images of one split, not yet decoded (or, for built-in arrays, already decoded).

    Attributes:
        labels: ``[N]`` int64 class indices.
        origin: What errors call the split (a file or dataset name).
        encoded: Per image ``(bytes or None, path or None)``, for files and tables.
        decoded: ``[N, 3, H, W]`` uint8, for sources that are arrays already.
    """

    labels: Tensor
    origin: str
    encoded: list[tuple[bytes | None, str | None]] | None = None
    decoded: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Tensor) -> ImageRecords:
        """The records at ``indices`` (a 1-D int64 tensor), in that order."""
        encoded = None if self.encoded is None else [self.encoded[i] for i in indices.tolist()]
        decoded = None if self.decoded is None else self.decoded[indices]
        return ImageRecords(self.labels[indices], self.origin, encoded, decoded)

    def decode(self, i: int, size: int) -> Tensor:
        """Image ``i`` as ``[3, size, size]`` uint8 RGB (see `images.fit_square`)."""
        if self.decoded is not None:
            return fit_square(self.decoded[i], size)
        assert self.encoded is not None
        data, path = self.encoded[i]
        name = f"{self.origin} item {i}" + (f" ({path})" if path else "")
        if data is None and path is not None:
            name = path  # a file on disk: its path is what the user can look at
        return fit_square(decode_image(data, path, name), size)


def holdout_indices(
    n: int, holdout: int, test_holdout: int, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Splits ``range(n)`` into (train, val, test) index tensors by a seeded permutation.

    The same ``(n, holdout, test_holdout, seed)`` always gives the same, disjoint splits; the
    training indices are sorted so that the order of the data file is kept.
    """
    if holdout + test_holdout >= n:
        raise UserError(
            f"data.holdout ({holdout}) + data.test_holdout ({test_holdout}) leaves no training "
            f"images out of {n}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, test = perm[:holdout], perm[holdout : holdout + test_holdout]
    train = perm[holdout + test_holdout :].sort().values
    return train, val, test


def _labels_to_indices(
    labels: Sequence[Any], names: list[str] | None, origin: str, column: str
) -> tuple[Tensor, list[str]]:
    # Integer labels keep their values (names from the ClassLabel feature, else "0".."C-1");
    # string labels are numbered in sorted order unless the names are known already.
    values = list(labels)
    if values and isinstance(values[0], str):
        names = names or sorted(set(values))
        lookup = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(values) - set(lookup))
        if unknown:
            raise UserError(f"{origin}: column {column!r} has labels {unknown[:5]} not in {names}")
        return torch.tensor([lookup[v] for v in values], dtype=torch.long), names
    tensor = torch.tensor(values, dtype=torch.long)
    if len(tensor) and int(tensor.min()) < 0:
        raise UserError(f"{origin}: column {column!r} has negative labels (an unlabelled split?)")
    num_classes = int(tensor.max()) + 1 if len(tensor) else 0
    if names is not None and num_classes > len(names):
        raise UserError(f"{origin}: label {num_classes - 1} but only {len(names)} class names")
    return tensor, names or [str(i) for i in range(num_classes)]


def _pick_column(
    columns: list[str], wanted: str | None, known: tuple[str, ...], key: str, origin: str
) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise UserError(f"{key}: {origin} has no column {wanted!r}; it has {columns}")
        return wanted
    for name in known:
        if name in columns:
            return name
    raise UserError(f"{key}: cannot tell which column of {origin} it is among {columns}; set it")


def _image_entry(value: Any) -> tuple[bytes | None, str | None]:
    if isinstance(value, dict):
        return value.get("bytes"), value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value), None
    if isinstance(value, str):
        return None, value
    raise UserError(f"unsupported image value of type {type(value).__name__}")


def _from_hf_dataset(
    dataset: Any, cfg: ImageDataConfig, origin: str, names: list[str] | None
) -> tuple[ImageRecords, list[str]]:
    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    features = dataset.features
    columns = list(features)
    image_col = cfg.image_column or next(
        (c for c in columns if isinstance(features[c], ImageFeature)), None
    )
    image_col = _pick_column(columns, image_col, _IMAGE_NAMES, "data.image_column", origin)
    label_col = cfg.label_column or next(
        (c for c in columns if isinstance(features[c], ClassLabel)), None
    )
    label_col = _pick_column(columns, label_col, _LABEL_NAMES, "data.label_column", origin)
    if isinstance(features[image_col], ImageFeature):
        # Undecoded: we decode ourselves, once, with errors that name the file.
        dataset = dataset.cast_column(image_col, ImageFeature(decode=False))
    if isinstance(features[label_col], ClassLabel):
        names = names or list(features[label_col].names)
    labels, names = _labels_to_indices(dataset[label_col], names, origin, label_col)
    encoded = [_image_entry(v) for v in dataset[image_col]]
    return ImageRecords(labels, origin, encoded=encoded), names


def _parquet_split(
    path: Path, cfg: ImageDataConfig, names: list[str] | None
) -> tuple[ImageRecords, list[str]]:
    import json

    import pyarrow.parquet as pq

    if not path.is_file():
        raise UserError(f"data.path: no such parquet file {path}")
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: not a readable parquet file ({error})") from None
    columns = table.column_names
    metadata = (table.schema.metadata or {}).get(b"huggingface")
    features = json.loads(metadata).get("info", {}).get("features", {}) if metadata else {}
    image_col = cfg.image_column or next(
        (c for c, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"), None
    )
    image_col = _pick_column(columns, image_col, _IMAGE_NAMES, "data.image_column", str(path))
    label_col = cfg.label_column or next(
        (c for c, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"),
        None,
    )
    label_col = _pick_column(columns, label_col, _LABEL_NAMES, "data.label_column", str(path))
    feature = features.get(label_col, {})
    if isinstance(feature, dict) and feature.get("names"):
        names = names or list(feature["names"])
    labels, names = _labels_to_indices(
        table.column(label_col).to_pylist(), names, str(path), label_col
    )
    encoded = [_image_entry(v) for v in table.column(image_col).to_pylist()]
    return ImageRecords(labels, str(path), encoded=encoded), names


def _digits() -> tuple[ImageRecords, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = torch.from_numpy(digits.images).float() * (255.0 / 16.0)  # [N, 8, 8], values 0..16
    images = gray.round().to(torch.uint8).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    names = [str(n) for n in digits.target_names]
    return ImageRecords(labels, "scikit-learn digits", decoded=images), names


def _folder_split(root: Path, names: list[str] | None) -> tuple[ImageRecords, list[str]]:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise UserError(f"data.path: no such directory {root}")
    try:
        folder = ImageFolder(str(root), loader=lambda p: p)
    except (FileNotFoundError, RuntimeError) as error:
        raise UserError(
            f"data.path: {root} is not an ImageFolder (root/<class>/<image>): {error}"
        ) from None
    if names is not None and folder.classes != names:
        raise UserError(
            f"{root}: classes {folder.classes} differ from the training split's {names}"
        )
    labels = torch.tensor([label for _, label in folder.samples], dtype=torch.long)
    encoded: list[tuple[bytes | None, str | None]] = [(None, p) for p, _ in folder.samples]
    return ImageRecords(labels, str(root), encoded=encoded), list(folder.classes)


def _split_path(cfg: ImageDataConfig, split: str) -> Path:
    assert cfg.path is not None
    if "{split}" in cfg.path:
        return Path(cfg.path.format(split=split))
    if cfg.source == "torchvision_folder" and (Path(cfg.path) / split).is_dir():
        return Path(cfg.path) / split
    if split != cfg.train_split:
        raise UserError(
            f"data.path: {cfg.path} holds one split; write {{split}} in it to read split {split!r}"
        )
    return Path(cfg.path)


def _load_split(
    cfg: ImageDataConfig, split: str, names: list[str] | None
) -> tuple[ImageRecords, list[str]]:
    if cfg.source == "digits":
        if split != "train":
            raise UserError(f"data: the digits source has only a 'train' split, not {split!r}")
        return _digits()
    if cfg.source == "parquet":
        return _parquet_split(_split_path(cfg, split), cfg, names)
    if cfg.source == "torchvision_folder":
        return _folder_split(_split_path(cfg, split), names)
    import datasets

    try:
        if cfg.source == "hub":
            dataset = datasets.load_dataset(cfg.name, split=split)
        elif cfg.source == "imagefolder":
            dataset = datasets.load_dataset("imagefolder", data_dir=cfg.path, split=split)
        else:  # arrow: a save_to_disk directory, or one .arrow file
            path = _split_path(cfg, split) if "{split}" in str(cfg.path) else Path(str(cfg.path))
            if path.is_dir():
                dataset = datasets.load_from_disk(str(path))
                if isinstance(dataset, datasets.DatasetDict):
                    dataset = dataset[split]
            else:
                dataset = datasets.Dataset.from_file(str(path))
    except (FileNotFoundError, ValueError, KeyError, ConnectionError, OSError) as error:
        where = cfg.name if cfg.source == "hub" else cfg.path
        raise UserError(
            f"data: cannot load split {split!r} of {where} ({cfg.source}): {error}"
        ) from None
    origin = f"{cfg.name or cfg.path} [{split}]"
    return _from_hf_dataset(dataset, cfg, origin, names)


def load_splits(cfg: ImageDataConfig) -> tuple[dict[str, ImageRecords], list[str]]:
    """Loads the training split and makes the ``val`` and ``test`` splits, still encoded.

    A configured ``val_split`` / ``test_split`` is read from the source; otherwise ``holdout``
    / ``test_holdout`` images are drawn out of the training split with ``holdout_seed``. A
    split that is neither is absent from the result.

    Returns:
        ``({"train": ..., "val": ..., "test": ...}, class_names)``.
    """
    train, names = _load_split(cfg, cfg.train_split, None)
    train_idx, val_idx, test_idx = holdout_indices(
        len(train), cfg.holdout, cfg.test_holdout, cfg.holdout_seed
    )
    splits = {"train": train.subset(train_idx)}
    for key, split, held in (("val", cfg.val_split, val_idx), ("test", cfg.test_split, test_idx)):
        if split is not None:
            splits[key] = _load_split(cfg, split, names)[0]
        elif len(held):
            splits[key] = train.subset(held)
    if len(names) < 2:
        raise UserError(f"data: {train.origin} has {len(names)} class(es); expected at least 2")
    return splits, names


class ImageStore:
    """The images of one split as uint8 ``[3, S, S]``, decoded once when they fit in memory.

    Args:
        records: The split.
        size: The side ``S`` at which images are kept.
        max_memory_mb: Decode everything up front when ``N * 3 * S * S`` bytes fit in this.
        num_workers: Decoding threads (0: one per CPU core); PIL releases the GIL while decoding.
    """

    def __init__(
        self, records: ImageRecords, size: int, max_memory_mb: int, num_workers: int = 0
    ) -> None:
        self.records = records
        self.size = size
        self.labels = records.labels
        self.num_workers = num_workers or os.cpu_count() or 1
        self.in_memory = len(records) * 3 * size * size <= max_memory_mb * 2**20
        self.images: Tensor | None = None
        if self.in_memory:
            self.images = self._decode(range(len(records)))

    def __len__(self) -> int:
        return len(self.records)

    def _decode(self, indices: Sequence[int]) -> Tensor:
        out = torch.empty(len(indices), 3, self.size, self.size, dtype=torch.uint8)
        if not len(indices):
            return out

        def work(pair: tuple[int, int]) -> None:
            out[pair[0]] = self.records.decode(pair[1], self.size)

        if self.num_workers == 1 or len(indices) < 64:
            for pair in enumerate(indices):
                work(pair)
        else:
            with ThreadPoolExecutor(self.num_workers) as pool:
                list(pool.map(work, enumerate(indices)))  # list() re-raises a worker's error
        return out

    def get(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """``(images [B, 3, S, S] uint8, labels [B] int64)`` of ``indices``."""
        if self.images is not None:
            return self.images[indices], self.labels[indices]
        return self._decode(indices.tolist()), self.labels[indices]
