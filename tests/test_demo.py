"""The demo end to end on tiny step budgets, and the attention command on its two runs."""

import base64
import re

import pytest
from PIL import Image

from tasks.cli import main
from tasks.demo.run import run_demo
from unitransformer.errors import UserError

SHORT = {
    "vision": ["train.max_steps=20", "eval.every=0", "train.log_every=10"],
    "translation": [
        "train.max_steps=20",
        "eval.every=0",
        "train.log_every=10",
        "train.checkpoint_every=20",
    ],
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, overrides=SHORT)


def test_the_report_is_self_contained_with_every_section(demo):
    page = demo.read_text()
    for title in (
        "From words to patches",
        "Images: a Vision Transformer",
        "Words: a Transformer translator",
    ):
        assert f"<h2>{title}</h2>" in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # tokens, curves, 4 attention maps, confusion matrix, curves, 2 alignments
    assert len(images) == 10
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert "test top-1 accuracy" in page and "test BLEU (lowercased)" in page
    assert '<img src="file:' not in page and "http" not in page.split("<body>")[1]


def test_a_second_demo_replaces_the_first_but_never_a_foreign_folder(tmp_path, demo):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not a demo folder"):
        run_demo(foreign, overrides=SHORT)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_the_attention_command_draws_both_tasks(demo, tmp_path, capsys):
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8), 128).save(image)
    vit_png, mt_png = tmp_path / "vit.png", tmp_path / "mt.png"
    assert main(["attention", str(demo.parent / "vision"), str(image), "-o", str(vit_png)]) == 0
    assert (
        main(
            [
                "attention",
                str(demo.parent / "translation"),
                "the dog sees the cat",
                "-o",
                str(mt_png),
            ]
        )
        == 0
    )
    for png in (vit_png, mt_png):
        with Image.open(png) as picture:
            assert picture.format == "PNG" and picture.size[0] > 200
    assert f"wrote {mt_png}" in capsys.readouterr().out
