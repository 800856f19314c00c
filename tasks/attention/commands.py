"""The ``attention`` command: a picture of what a trained model attends to.

unitransformer attention RUN_DIR IMAGE_FILE          # a ViT run: rollout and per-head maps
unitransformer attention RUN_DIR "a sentence"        # a translation run: alignments
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch.nn.functional as F

from tasks.attention.maps import (
    draw_alignment,
    draw_vit_attention,
    translation_alignment,
    vit_attention,
)
from tasks.registry import load_trained
from unitransformer.engine.checkpoint import read_run_config

__all__ = ["add_commands", "attention"]


def _default_output(run_dir: Path, text: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", Path(text).stem if Path(text).suffix else text)[:40]
    return run_dir / "attention" / f"{slug.strip('_') or 'input'}.png"


def _image(args: argparse.Namespace, run_dir: Path) -> Path:
    from tasks.image_classification.images import decode_image, fit_square

    task, model = load_trained(run_dir, args.checkpoint, expect_task="image_classification")
    data = task.config.data
    image = fit_square(decode_image(path=args.input), data.store_size or data.image_size)
    result = vit_attention(model, task.preprocess(image[None])[0])
    shown = F.interpolate(image[None].float(), size=data.image_size, mode="bilinear")[0]
    output = args.output or _default_output(run_dir, args.input)
    return draw_vit_attention(
        result, shown.round().byte(), model.config.patch_size, task.class_names, output
    )


def _sentence(args: argparse.Namespace, run_dir: Path) -> Path:
    task, model = load_trained(run_dir, args.checkpoint, expect_task="translation")
    alignment = translation_alignment(model, task.tokenizer, args.input)
    print(alignment.translation)
    return draw_alignment(alignment, args.output or _default_output(run_dir, args.input))


def attention(args: argparse.Namespace) -> int:
    """Writes the attention PNG of ``args.input`` under the run ``args.run_dir``."""
    run_dir = Path(args.run_dir)
    task = read_run_config(run_dir).get("task")
    path = _image(args, run_dir) if task == "image_classification" else _sentence(args, run_dir)
    print(f"wrote {path}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``attention`` to the command line."""
    parser = subparsers.add_parser(
        "attention",
        help="draw what a trained model attends to",
        description="For a ViT run and an image file: the image, its patch grid, the attention "
        "rollout and the class token's attention per layer and head. For a translation run and "
        "a sentence: cross-attention alignments per layer (heads averaged) and per head.",
    )
    parser.add_argument("run_dir", help="run directory written by train")
    parser.add_argument("input", help="an image file (ViT run) or a sentence (translation run)")
    parser.add_argument(
        "--output", "-o", type=Path, help="PNG to write (default: RUN_DIR/attention/)"
    )
    parser.add_argument("--checkpoint", default="best", choices=["best", "last", "averaged", "ema"])
    parser.set_defaults(func=attention)
