"""Decoding one image file into an RGB uint8 tensor, with a clear error for every bad file.

Every mode PIL opens becomes 3-channel RGB: grayscale and 1-bit are repeated, palettes are
expanded, transparency is composited over white (transparent pixels have arbitrary colours,
often black, which would teach the model a spurious background), CMYK is converted, and 16-bit
or 32-bit samples are rescaled rather than clipped (PIL's own ``convert`` clips ``I;16`` at 255,
which turns most of a 16-bit image white).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from unitransformer.errors import UserError

__all__ = ["MAX_IMAGE_PIXELS", "BadImageError", "decode_image", "fit_square", "to_rgb"]

# Large enough for any photograph (a 100-megapixel camera), far below the 20000 x 20000 of a
# decompression bomb, whose decoded pixels alone would take 1.2 GB.
MAX_IMAGE_PIXELS = 100_000_000


class BadImageError(UserError, ValueError):
    """An image file that cannot be decoded: the message names the file and the reason."""


def _rescale_wide(image: Image.Image) -> Image.Image:
    # 16-bit (I;16*) and 32-bit (I, F) samples -> 8-bit grayscale by their range.
    array = np.asarray(image)
    if image.mode == "F":
        top = 1.0 if float(np.nanmax(array, initial=0.0)) <= 1.0 else 255.0
        array = np.clip(np.nan_to_num(array) / top * 255.0, 0, 255)
    else:
        top = 255.0 if int(array.max(initial=0)) <= 255 else 65535.0
        array = np.clip(array.astype(np.float64) / top * 255.0, 0, 255)
    return Image.fromarray(np.round(array).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts a PIL image of any mode to RGB (see the module docstring for how)."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _rescale_wide(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _open(data: bytes | None, path: str | Path | None) -> Image.Image:
    if data is not None:
        return Image.open(io.BytesIO(data))
    if path is None:
        raise BadImageError("an image entry has neither bytes nor a path")
    return Image.open(path)


def decode_image(
    data: bytes | None = None, path: str | Path | None = None, name: str | None = None
) -> Tensor:
    """Decodes one image, from its bytes or its file, into ``[3, H, W]`` uint8 RGB.

    Args:
        data: The encoded bytes (``None``: read ``path``).
        path: The file (read when ``data`` is ``None``; named in errors either way).
        name: What errors call the image; defaults to ``path``.

    Raises:
        BadImageError: For a missing, empty, truncated, non-image or oversized file, naming it.
    """
    label = str(name or path or "<image bytes>")
    if data is None and path is not None:
        if not Path(path).is_file():
            raise BadImageError(f"{label}: no such image file")
        data = Path(path).read_bytes()
    if data is not None and len(data) == 0:
        raise BadImageError(f"{label}: empty file (0 bytes), expected an image")
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; make it an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(data, path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise BadImageError(
                        f"{label}: {width}x{height} pixels exceeds the limit of "
                        f"{MAX_IMAGE_PIXELS:,} (a decompression bomb?)"
                    )
                image.load()
                image = ImageOps.exif_transpose(image) or image
                rgb = to_rgb(image)
    except UnidentifiedImageError:
        raise BadImageError(f"{label}: not an image file PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImageError(f"{label}: too many pixels (a decompression bomb?): {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, BadImageError):
            raise
        # PIL reports truncated and corrupt data as OSError ("image file is truncated").
        raise BadImageError(f"{label}: truncated or corrupt image ({error})") from None
    array = np.asarray(rgb, dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # [3, H, W]


def fit_square(image: Tensor, size: int) -> Tensor:
    """Resizes ``[3, H, W]`` so that its shorter side is ``size``, then crops the centre square.

    An image already ``size x size`` is returned as is (CIFAR at 32 is never resampled).
    """
    from torchvision.transforms.v2 import functional as TF

    if image.shape[-2:] == (size, size):
        return image
    image = TF.resize(image, [size], antialias=True)  # shorter side -> size
    return TF.center_crop(image, [size, size])
