"""The lecture's pre-deep-learning baseline: a bag of visual words and a support vector machine.

Each image becomes a set of SIFT-like local descriptors on a dense grid of patches (gradient
orientation histograms over a 2x2 grid of cells, normalized and clipped as in Lowe's SIFT,
optionally with the patch's mean colour). A k-means codebook (scikit-learn's
``MiniBatchKMeans``) turns each descriptor into its nearest visual word; an image is the
histogram of its words over a spatial pyramid (the whole image, then a 2x2 grid: Lazebnik et al.
2006), square-rooted (the Hellinger map, so that a linear or RBF SVM compares distributions
sensibly), and an SVM classifies the histograms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from unitransformer.errors import UserError

__all__ = ["BoVWConfig", "BagOfVisualWords", "dense_descriptors"]


@dataclass
class BoVWConfig:
    """How descriptors, codebook, histograms and SVM are made.

    Attributes:
        patch: Side of the square patch a descriptor describes, in pixels.
        stride: Step of the dense patch grid.
        cells: Cells per side inside a patch; each holds one orientation histogram.
        bins: Orientation bins per cell (over 0..360 degrees).
        color_weight: Weight of the patch's mean RGB appended to the descriptor (0: grey only).
        words: Codebook size (k of k-means).
        kmeans_sample: Descriptors drawn at random to fit the codebook.
        pyramid: Grid sides of the spatial pyramid, e.g. ``(1, 2)``: whole image and quadrants.
        kernel: ``rbf`` or ``linear`` SVM.
        C: The SVM's inverse regularization strength.
        seed: Seed of the k-means sample and initialization.
    """

    patch: int = 8
    stride: int = 4
    cells: int = 2
    bins: int = 8
    color_weight: float = 0.0
    words: int = 256
    kmeans_sample: int = 100_000
    pyramid: tuple[int, ...] = field(default=(1, 2))
    kernel: str = "rbf"
    C: float = 10.0
    seed: int = 0

    def validate(self, image_size: int) -> None:
        """Raises `UserError` naming the setting that cannot work on ``image_size`` images."""
        if self.patch > image_size or self.patch < self.cells or self.patch % self.cells:
            raise UserError(
                f"bovw.patch={self.patch}: needs cells ({self.cells}) dividing it and at most "
                f"the image side {image_size}"
            )
        if self.stride < 1 or self.bins < 1 or self.words < 2:
            raise UserError("bovw: stride and bins must be >= 1 and words >= 2")
        if self.kernel not in ("rbf", "linear"):
            raise UserError(f"bovw.kernel={self.kernel!r}: expected 'rbf' or 'linear'")


def _orientation_maps(gray: Tensor, bins: int) -> Tensor:
    """``[N, bins, H, W]``: each pixel's gradient magnitude split between its two nearest
    orientation bins (linear interpolation, so that a small rotation moves mass smoothly).
    """
    padded = F.pad(gray.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    gx = (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]) / 2
    gy = (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]) / 2
    magnitude = torch.sqrt(gx**2 + gy**2)
    position = (torch.atan2(gy, gx) % (2 * math.pi)) / (2 * math.pi) * bins  # in [0, bins)
    low = position.floor().long() % bins
    frac = position - position.floor()
    maps = torch.zeros(gray.shape[0], bins, *gray.shape[1:])
    maps.scatter_add_(1, low.unsqueeze(1), (magnitude * (1 - frac)).unsqueeze(1))
    maps.scatter_add_(1, ((low + 1) % bins).unsqueeze(1), (magnitude * frac).unsqueeze(1))
    return maps


def dense_descriptors(images: Tensor, config: BoVWConfig) -> Tensor:
    """SIFT-like descriptors of every patch of a dense grid.

    Args:
        images: ``[N, 3, H, W]`` uint8 RGB.
        config: Patch, stride, cells, bins and colour weight.

    Returns:
        ``[N, P, D]`` float32, P patches per image in row-major grid order, D =
        ``cells**2 * bins`` (+3 with colour).
    """
    x = images.float() / 255.0
    maps = _orientation_maps(x.mean(1), config.bins)  # [N, B, H, W]
    n, p, c = images.shape[0], config.patch, config.cells
    # Each cell's histogram is the sum over its pixels; cells tile each patch.
    cell = F.avg_pool2d(maps, p // c, stride=1) * (p // c) ** 2  # [N, B, H', W'] all offsets
    cols = [
        cell[:, :, i * (p // c) :: config.stride, j * (p // c) :: config.stride]
        for i in range(c)
        for j in range(c)
    ]
    grid = (images.shape[-1] - p) // config.stride + 1
    parts = [col[:, :, :grid, :grid].flatten(2) for col in cols]  # each [N, B, P]
    desc = torch.cat(parts, 1).transpose(1, 2)  # [N, P, c*c*B]
    # SIFT's normalization: unit length, clip large components (strong edges), unit length.
    desc = F.normalize(desc, dim=-1, eps=1e-6).clamp(max=0.2)
    desc = F.normalize(desc, dim=-1, eps=1e-6)
    if config.color_weight > 0:
        color = F.avg_pool2d(x, p, stride=config.stride).flatten(2).transpose(1, 2)  # [N, P, 3]
        desc = torch.cat([desc, config.color_weight * (color - 0.5)], -1)
    return desc.reshape(n, grid * grid, -1).contiguous()


class BagOfVisualWords:
    """Codebook, pyramid histograms and SVM, fitted on training images and used on any others.

    Args:
        config: The settings (see `BoVWConfig`).
    """

    def __init__(self, config: BoVWConfig) -> None:
        self.config = config
        self.codebook: Tensor | None = None
        self.svm = None

    def fit(self, images: Tensor, labels: Tensor) -> BagOfVisualWords:
        """Fits the codebook on a sample of the descriptors of ``images``, then the SVM.

        Args:
            images: ``[N, 3, H, W]`` uint8 training images.
            labels: ``[N]`` int64 classes.
        """
        from sklearn.cluster import MiniBatchKMeans
        from sklearn.svm import SVC, LinearSVC

        cfg = self.config
        cfg.validate(images.shape[-1])
        desc = dense_descriptors(images, cfg)
        flat = desc.flatten(0, 1)
        generator = torch.Generator().manual_seed(cfg.seed)
        sample = flat[torch.randperm(len(flat), generator=generator)[: cfg.kmeans_sample]]
        kmeans = MiniBatchKMeans(cfg.words, random_state=cfg.seed, batch_size=4096, n_init=3)
        kmeans.fit(sample.numpy())
        self.codebook = torch.from_numpy(kmeans.cluster_centers_).float()
        features = self._histograms(desc)
        if cfg.kernel == "rbf":
            self.svm = SVC(C=cfg.C, kernel="rbf", gamma="scale")
        else:
            self.svm = LinearSVC(C=cfg.C, dual="auto", max_iter=5000)
        self.svm.fit(features, labels.numpy())
        return self

    def _histograms(self, desc: Tensor) -> np.ndarray:
        """``[N, words * sum(L*L)]`` Hellinger-mapped pyramid histograms of descriptors."""
        assert self.codebook is not None
        n, count, _ = desc.shape
        words = _nearest(desc.flatten(0, 1), self.codebook).view(n, count)
        side = math.isqrt(count)
        rows = torch.arange(count) // side
        cols = torch.arange(count) % side
        k, levels = self.codebook.shape[0], []
        for level in self.config.pyramid:
            region = (rows * level // side) * level + cols * level // side  # [P]
            index = region.unsqueeze(0) * k + words  # [N, P]
            hist = torch.zeros(n, level * level * k)
            hist.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float32))
            levels.append(hist / count)  # each level sums to 1 over the image
        features = torch.cat(levels, 1) / len(self.config.pyramid)
        return features.sqrt().numpy()

    def predict(self, images: Tensor) -> Tensor:
        """``[N]`` predicted classes of ``[N, 3, H, W]`` uint8 images."""
        if self.svm is None:
            raise RuntimeError("fit the bag of visual words before predicting")
        features = self._histograms(dense_descriptors(images, self.config))
        return torch.from_numpy(self.svm.predict(features)).long()

    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        """Top-1 accuracy (a fraction in 0..1) on ``images``."""
        return float((self.predict(images) == labels).float().mean())

    def num_parameters(self) -> int:
        """Learned numbers: the codebook plus the SVM (weights, or support vectors and their
        dual coefficients) and intercepts.
        """
        if self.svm is None or self.codebook is None:
            raise RuntimeError("fit the bag of visual words first")
        svm = self.svm
        if hasattr(svm, "support_vectors_"):
            svm_size = svm.support_vectors_.size + svm.dual_coef_.size + svm.intercept_.size
        else:
            svm_size = svm.coef_.size + svm.intercept_.size
        return int(self.codebook.numel() + svm_size)


def _nearest(x: Tensor, centers: Tensor, chunk: int = 65536) -> Tensor:
    """Index of the nearest center (Euclidean) of each row of ``x``, in chunks to bound memory."""
    center_sq = (centers**2).sum(1)
    out = []
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change the argmin.
        out.append((center_sq - 2 * part @ centers.T).argmin(1))
    return torch.cat(out)
