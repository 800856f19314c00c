"""The drawing functions write real PNGs of the expected layout."""

import numpy as np
from PIL import Image

from tasks.attention.figures import alignment_figure, tokens_figure, vit_attention_figure


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_vit_attention_figure_grows_with_layers(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 3))
    small = vit_attention_figure(
        image, 4, rng.random((8, 8)), rng.random((1, 3, 8, 8)), tmp_path / "a.png"
    )
    big = vit_attention_figure(
        image, 4, rng.random((8, 8)), rng.random((4, 3, 8, 8)), tmp_path / "b.png"
    )
    assert _png_size(big)[1] > _png_size(small)[1]  # one row per layer


def test_alignment_figure_has_layer_and_head_panels(tmp_path):
    rng = np.random.default_rng(0)
    attn = rng.random((2, 4, 5, 6))
    path = alignment_figure(list("abcdef"), list("vwxyz"), attn, tmp_path / "align" / "x.png")
    width, height = _png_size(path)
    one_layer = alignment_figure(list("abcdef"), list("vwxyz"), attn[:1, :1], tmp_path / "y.png")
    assert _png_size(one_layer)[0] < width and height > 0


def test_tokens_figure(tmp_path):
    rng = np.random.default_rng(0)
    path = tokens_figure(["▁the", "▁cat"], rng.random((2, 16)), rng.random((32, 32, 3)), 8,
                         rng.random((16, 16)), tmp_path / "t.png")  # fmt: skip
    assert _png_size(path)[0] > 100
