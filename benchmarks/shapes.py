"""The suite's shapes in one place, and ``--set GROUP.KEY=VALUE`` to run it on one's own.

    .venv/bin/python benchmarks/run.py --rows vit --set vit.dim=384 vit.num_heads=6 vit.batch=64
    .venv/bin/python benchmarks/run.py --rows attention --set attention.length=256

The dictionaries below are the shapes the issue fixes (rows 1-5); `benchmarks.rows` and
`benchmarks.decoding` read them when a row is built, so an override applied in a group's process
(`apply`) changes ours and the peer alike. ``attention`` holds two shapes; any ``attention.*``
override replaces them with one: the first, with the given keys changed.
"""

from __future__ import annotations

import copy

# Row 1: (d, heads, batch, tokens) of each attention layer timed.
ATTENTION = [
    dict(dim=192, heads=3, batch=128, length=65),  # the ViT of row 2: 64 patches + class token
    dict(dim=512, heads=8, batch=16, length=512),  # a long sequence at the base model's width
]
# Rows 2, 5, 6, 7: 32x32 images, patch 4 (64 patches + class token), d=192, depth 6, 3 heads,
# MLP 768; batch 128 for the training step, 256 for inference.
VIT = dict(
    image_size=32, patch_size=4, dim=192, depth=6, num_heads=3, mlp_ratio=4.0, classes=10,
    batch=128, inference_batch=256,
)  # fmt: skip
# Rows 3, 4, 7: d=256, 3+3 layers, 8 heads, FFN 1024, vocab 8,000; 64 sentences of 20 tokens.
SEQ2SEQ = dict(dim=256, layers=3, heads=8, ffn=1024, vocab=8000, batch=64, length=20)
# Row 4: beam width, source sentences, and the tokens every engine is forced to write.
DECODING = dict(beam=5, sentences=100, output_tokens=24)
GROUPS: dict[str, dict] = {
    "attention": ATTENTION[0], "vit": VIT, "seq2seq": SEQ2SEQ, "decoding": DECODING,
}  # fmt: skip
# What ``--quick`` sets before the user's overrides: a smoke run of seconds.
QUICK = [
    "attention.dim=64", "attention.heads=2", "attention.batch=8", "attention.length=17",
    "vit.batch=8", "vit.inference_batch=16", "decoding.sentences=10",
]  # fmt: skip
# The overrides applied in this process, for the processes it starts (the memory rows).
ACTIVE: list[str] = []
# (group, numerator key, denominator key) that must divide: heads split the width evenly,
# patches tile the image.
DIVIDES = [
    ("attention", "dim", "heads"), ("vit", "dim", "num_heads"),
    ("vit", "image_size", "patch_size"), ("seq2seq", "dim", "heads"),
]  # fmt: skip


def parse(item: str) -> tuple[str, str, int | float]:
    """``"vit.dim=384"`` -> ``("vit", "dim", 384)``, typed as the default value is.

    Raises:
        ValueError: naming the item and what was expected (group, key, a positive number).
    """
    name, sep, text = item.partition("=")
    group, dot, key = name.partition(".")
    if not sep or not dot:
        raise ValueError(f"--set {item!r}: expected GROUP.KEY=VALUE, e.g. vit.dim=384")
    if group not in GROUPS:
        raise ValueError(f"--set {item!r}: unknown group {group!r}; allowed: {', '.join(GROUPS)}")
    defaults = GROUPS[group]
    if key not in defaults:
        allowed = ", ".join(f"{group}.{k}" for k in defaults)
        raise ValueError(f"--set {item!r}: unknown key {key!r}; allowed: {allowed}")
    kind = type(defaults[key])
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"--set {item!r}: {key} must be {kind.__name__}, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"--set {item!r}: {key} must be positive, got {text!r}")
    return group, key, value


def resolved(overrides: list[str]) -> dict[str, dict]:
    """The shapes with ``overrides`` applied, on copies; every group's final values.

    Raises:
        ValueError: for a malformed override, or shapes that cannot be built (a width that the
            heads do not divide, an image that the patches do not tile).
    """
    groups = copy.deepcopy(GROUPS)
    for group, key, value in map(parse, overrides):
        groups[group][key] = value
    for group, top, bottom in DIVIDES:
        g = groups[group]
        if g[top] % g[bottom]:
            raise ValueError(
                f"--set: {group}.{top}={g[top]} must be a multiple of {group}.{bottom}={g[bottom]}"
            )
    return groups


def apply(overrides: list[str]) -> None:
    """Sets ``overrides`` in the shape dictionaries of this process (validated first)."""
    groups = resolved(overrides)
    if any(item.startswith("attention.") for item in overrides):
        del ATTENTION[1:]  # one attention shape: the first, changed
    for name, values in groups.items():
        GROUPS[name].update(values)
    ACTIVE.extend(overrides)


def describe(overrides: list[str]) -> str:
    """One line naming the values that differ from the suite's shapes, for the printed table."""
    groups = resolved(overrides)
    changed = [
        f"{name}.{key}={value:g}"
        for name, values in groups.items()
        for key, value in values.items()
        if value != GROUPS[name][key]
    ]
    return "Shapes changed: " + (", ".join(changed) if changed else "none")
