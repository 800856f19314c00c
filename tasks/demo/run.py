"""``unitransformer demo``: both tasks, end to end, in about three minutes on 2 CPU cores.

It trains a ViT on scikit-learn's 8x8 digits and a small Transformer translator on the built-in
synthetic task, evaluates both on held-out test data, draws what they attend to, and writes one
self-contained HTML report. No network, no data beside the repository. ``--full`` runs the real
recipes instead (CIFAR-10 and Multi30k, hours on a CPU).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from tasks.attention.figures import tokens_figure
from tasks.attention.maps import (
    draw_alignment,
    draw_vit_attention,
    translation_alignment,
    vit_attention,
)
from tasks.demo.report import Section, write_report
from tasks.demo.synthetic import write_synthetic_corpus
from tasks.registry import load_trained
from unitransformer.errors import UserError

__all__ = ["run_demo"]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
QUICK = {
    "vision": (CONFIGS / "image_classification" / "digits_vit.yaml", []),
    "translation": (CONFIGS / "demo" / "synthetic_translation.yaml", []),
}
FULL = {
    "vision": (CONFIGS / "image_classification" / "cifar10_vit.yaml", []),
    "translation": (CONFIGS / "translation" / "multi30k_en_de.yaml", []),
}
MARKER = "report.html"


def _fresh(out: Path) -> None:
    """Empties a previous demo folder; refuses to touch a folder that is not one."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists() and not (out / "vision").exists():
            raise UserError(f"{out} exists and is not a demo folder; pass another --output")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _train(
    config: Path, run_dir: Path, overrides: list[str]
) -> tuple[object, torch.nn.Module, float]:
    from tasks.cli import main

    start = time.perf_counter()
    status = main(["train", str(config), "--run-dir", str(run_dir), *overrides])
    if status:
        raise UserError(f"training {config} failed (exit {status}); see the messages above")
    task, model = load_trained(run_dir)
    return task, model, time.perf_counter() - start


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def vision_section(out: Path, config: Path, overrides: list[str]) -> tuple[Section, object, object]:
    """Trains and evaluates the ViT, and draws its attention on a few test images."""
    run_dir = out / "vision"
    task, model, seconds = _train(config, run_dir, overrides)
    metrics = task.evaluate(model, "test")
    images, labels = task.images("test", range(4))
    names = task.class_names
    section = Section(
        "Images: a Vision Transformer",
        f"{config.name}: an image cut into patches becomes a sequence of tokens for the Encoder. "
        f"Trained in {seconds:.0f} s, scored on held-out test images it never saw.",
        metrics={
            "test top-1 accuracy": _pct(metrics["accuracy"]),
            "test top-5 accuracy": _pct(metrics["top5"]),
            "training time": f"{seconds:.0f} s",
            "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        },
        rows=[["image", "true class", "predicted"]],
        figures=[
            (run_dir / "curves.png", "training curves: loss, learning rate, validation accuracy")
        ],
    )
    x = task.preprocess(images)
    for i in range(len(labels)):
        attention = vit_attention(model, x[i])
        predicted = names[int(attention.logits.argmax())]
        section.rows.append([f"test image {i}", names[int(labels[i])], predicted])
        png = draw_vit_attention(
            attention, images[i], model.config.patch_size, names, out / f"vit_attention_{i}.png"
        )
        section.figures.append(
            (
                png,
                f"test image {i}: patches, attention rollout, class-token attention per layer and head",
            )
        )
    section.figures.append((run_dir / "confusion_test.png", "confusion matrix on the test images"))
    return section, task, model


def translation_section(
    out: Path, config: Path, overrides: list[str]
) -> tuple[Section, object, object]:
    """Trains and evaluates the translator, and draws the alignments of a few test sentences."""
    run_dir = out / "translation"
    task, model, seconds = _train(config, run_dir, overrides)
    metrics = task.evaluate(model, "test")
    pairs = task.pairs("test")[:4]
    hypotheses = task.translate_pairs(model, pairs)
    section = Section(
        "Words: a Transformer translator",
        f"{config.name}: trained in {seconds:.0f} s from raw parallel text (sentencepiece "
        "tokenizer trained on the fly), decoded with beam search, scored with sacreBLEU.",
        metrics={
            "test BLEU (cased)": f"{metrics['bleu']:.1f}",
            "test BLEU (lowercased)": f"{metrics['bleu_lc']:.1f}",
            "test chrF": f"{metrics['chrf']:.1f}",
            "training time": f"{seconds:.0f} s",
        },
        rows=[["source", "reference", "translation"]]
        + [[s, t, h] for (s, t), h in zip(pairs, hypotheses, strict=True)],
        figures=[(run_dir / "curves.png", "training curves: loss, learning rate, validation BLEU")],
    )
    for i, (source, _) in enumerate(pairs[:2]):
        alignment = translation_alignment(model, task.tokenizer, source)
        png = draw_alignment(alignment, out / f"alignment_{i}.png")
        section.figures.append((png, f"cross-attention alignments of: {source}"))
    return section, task, model


def tokens_section(
    out: Path, vision: tuple[object, object], text: tuple[object, object]
) -> Section:
    """The figure of words and patches becoming rows of the same token matrix."""
    (image_task, vit), (text_task, translator) = vision, text
    sentence = text_task.pairs("test")[0][0]
    ids = text_task.tokenizer.encode_source(sentence)
    pieces = [text_task.tokenizer.source.id_to_piece(i) for i in ids]
    images, _ = image_task.images("test", [0])
    with torch.no_grad():
        word_rows = translator.src_embed(torch.tensor([ids]))[0].numpy()
        patch_rows = vit.patch_embed(image_task.preprocess(images))[0].numpy()
    pixels = images[0].permute(1, 2, 0).float().numpy() / 255
    png = tokens_figure(
        pieces, word_rows, pixels, vit.config.patch_size, patch_rows, out / "tokens.png"
    )
    return Section(
        "From words to patches",
        "A sentence is cut into subword tokens, an image into patches; each becomes one row of a "
        "token matrix, and the same Encoder class reads both.",
        figures=[(png, "subword tokens and image patches as rows of token matrices")],
    )


def run_demo(out: Path, full: bool = False, overrides: dict[str, list[str]] | None = None) -> Path:
    """Runs the demo into ``out`` and returns the report's path.

    Args:
        out: The demo folder (a previous demo there is replaced).
        full: Run the CIFAR-10 and Multi30k recipes instead of the quick ones.
        overrides: Extra dotted overrides for ``vision`` and ``translation`` (tests shrink
            the step budgets with them).
    """
    start = time.perf_counter()
    _fresh(out)
    recipes = FULL if full else QUICK
    overrides = overrides or {}
    vision_config, vision_overrides = recipes["vision"]
    translation_config, translation_overrides = recipes["translation"]
    if not full:
        write_synthetic_corpus(out / "corpus")
        translation_overrides = [f"data.path={out / 'corpus'}"]
    vision_overrides = [*vision_overrides, *overrides.get("vision", [])]
    translation_overrides = [*translation_overrides, *overrides.get("translation", [])]
    vision, image_task, vit = vision_section(out, vision_config, vision_overrides)
    text, text_task, translator = translation_section(
        out, translation_config, translation_overrides
    )
    tokens = tokens_section(out, (image_task, vit), (text_task, translator))
    seconds = time.perf_counter() - start
    intro = (
        f"unitransformer demo: one attention core, two tasks. Everything here was trained and "
        f"measured on this machine in {seconds:.0f} s ({torch.get_num_threads()} CPU threads)."
    )
    return write_report(out / MARKER, "unitransformer demo", intro, [tokens, vision, text])
