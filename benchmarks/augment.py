"""Batched TrivialAugment / RandAugment against torchvision's per-image transforms.

    .venv/bin/python benchmarks/augment.py            # measures, rewrites its RESULTS.md section
    .venv/bin/python benchmarks/augment.py --quick     # small batches, 1 repeat; prints only

The same uint8 batch goes through ours (`tasks.image_classification.autoaugment`, one call per
operation for all the images that drew it) and through torchvision.transforms.v2's
``TrivialAugmentWide`` / ``RandAugment`` applied image by image, as a training loop over a
decoded batch must (a batch tensor given to torchvision gets one operation for every image).
Both draw from torch's global generator; the operations are bit-identical
(``tests/test_autoaugment.py``). Ratio = torchvision's time / ours.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (  # noqa: E402
    Row,
    format_table,
    machine_description,
    time_pair,
    write_section,
)
from tasks.image_classification.autoaugment import rand_augment, trivial_augment  # noqa: E402
from unitransformer.engine.runtime import keep_freed_memory  # noqa: E402

# (side, batch): CIFAR's 32x32 at the configs' batch 256; ImageNet's 224x224 at batch 64.
SHAPES = [(32, 256), (224, 64)]
QUICK_SHAPES = [(32, 16), (64, 4)]


def per_image(transform: v2.Transform, images: torch.Tensor) -> Callable[[], torch.Tensor]:
    """torchvision's transform over the batch, one image at a time."""
    return lambda: torch.stack([transform(image) for image in images])


def rows(shapes: list[tuple[int, int]], repeats: int) -> list[Row]:
    """One row per (policy, shape): ours and torchvision on the same batch, alternating."""
    out = []
    for side, batch in shapes:
        torch.manual_seed(0)
        images = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
        cases = {
            "TrivialAugment Wide": (trivial_augment, v2.TrivialAugmentWide()),
            "RandAugment (2 ops, magnitude 9)": (rand_augment, v2.RandAugment()),
        }
        for policy, (ours, peer) in cases.items():
            ours_s, peer_s = time_pair(partial(ours, images), per_image(peer, images), repeats)
            name = f"{policy}, batch {batch} of {side}x{side} uint8"
            out.append(
                Row(name, "torchvision.transforms.v2, per image", ours_s, peer_s, batch, "images")
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="small batches, 1 repeat; no RESULTS.md"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # As `unitransformer train` does; process-wide, so torchvision gets the same malloc.
    keep_freed_memory()
    repeats = 1 if args.quick else args.repeats
    table = format_table(rows(QUICK_SHAPES if args.quick else SHAPES, repeats))
    print(table)
    if not args.quick:
        command = "python benchmarks/augment.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        write_section(
            "augment",
            f"## Batched auto-augmentation (issue #4)\n\nCommand: `{command.strip()}`  \n"
            f"Date: {datetime.date.today().isoformat()}  \n"
            f"Machine: {machine_description(args.threads)}  \n"
            f"Median of {repeats} alternating runs after 2 warm-up runs each; random uint8 "
            f"images, the operations of both sides bit-identical.\n\n{table}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
