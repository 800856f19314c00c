"""The ``classify`` command: the top-k classes of image files under a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.image_classification.task import ImageClassificationTask

__all__ = ["add_commands", "classify"]


def load_run(run_dir: Path, which: str = "best") -> tuple[ImageClassificationTask, object]:
    """The task and the trained model of an image-classification run directory.

    Raises:
        UserError: Not a run directory, a run of another task, or weights that do not fit.
    """
    from tasks.registry import load_trained

    return load_trained(run_dir, which, expect_task="image_classification")


def classify(args: argparse.Namespace) -> int:
    """Prints, for each image, its ``--top-k`` classes with their probabilities."""
    import torch

    task, model = load_run(Path(args.run_dir), args.which)
    if args.device:
        model = model.to(torch.device(args.device))  # type: ignore[attr-defined]
    results = task.classify_files(model, args.images, args.top_k)  # type: ignore[arg-type]
    for path, top in zip(args.images, results, strict=True):
        print(path)
        for name, prob in top:
            print(f"  {prob:7.2%}  {name}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``classify RUN_DIR IMAGE...`` to the command line."""
    parser = subparsers.add_parser(
        "classify",
        help="print the top-k classes of image files under a trained image-classification run",
        description="Scores image files (any mode: grayscale, palette, RGBA, CMYK, 16-bit) with "
        "a trained run's weights and prints the most likely classes with probabilities.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of `train`")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files to classify")
    parser.add_argument("--top-k", type=int, default=5, help="classes to print per image (5)")
    parser.add_argument(
        "--which",
        default="best",
        choices=["best", "last", "averaged", "ema"],
        help="which weights of the run to use (best); BatchNorm statistics of averaged and ema "
        "ones are recomputed on training batches",
    )
    parser.add_argument("--device", default=None, help="torch device, e.g. cuda (default cpu)")
    parser.set_defaults(func=classify)
