"""The lecture table: the lecture's systems trained on the same data, scored on held-out data.

    .venv/bin/python benchmarks/lecture_table.py --quick                # digits only, ~5 minutes
    .venv/bin/python benchmarks/lecture_table.py --budget-minutes 30    # + CIFAR-10 and Multi30k

Images: a bag of visual words + SVM (`benchmarks.bovw`), ResNet-18 and the ViT on scikit-learn's
digits (scored on the 360-image test split) and on CIFAR-10 (scored on the 5,000-image
validation holdout; the file has no labelled test split). Words: the GRU attention baseline and
the Transformer on Multi30k English-German (sacreBLEU on test_2016_flickr). The networks are
trained by the project's recipes through the engine (`unitransformer train`), with overrides.

Budgets. The digits systems run their recipes' step counts. A CIFAR-10 or Multi30k network gets
``--budget-minutes`` of optimizer steps: a probe times a few real training steps of the recipe
(same model, batches, precision), and the run's ``train.max_steps`` is the budget divided by the
median step time, with the recipe's warmup and checkpoint spacing shrunk in proportion and only
the final validation pass (``eval.every=0``, so the scored weights are the last ones, not a
checkpoint picked on the scored split). The bag of visual words on CIFAR-10 is fitted on a
random subset of the training images sized the same way (a probe fit on 2,000 images). The
table's training time is the wall clock of the whole fit (data loading, tokenizer, steps, final
validation); the probes are not counted. Results go to the ``lecture`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bovw import BagOfVisualWords, BoVWConfig  # noqa: E402
from benchmarks.harness import machine_description, write_section  # noqa: E402
from tasks.registry import load_trained, resolve_task  # noqa: E402
from unitransformer.engine.checkpoint import CHECKPOINTS  # noqa: E402
from unitransformer.engine.distributed import select_device  # noqa: E402
from unitransformer.engine.loader import load_config, read_yaml  # noqa: E402
from unitransformer.engine.optim import build_optimizer  # noqa: E402
from unitransformer.engine.runtime import (  # noqa: E402
    autocast,
    move_to,
    resolve_precision,
    seed_everything,
)
from unitransformer.errors import UserError  # noqa: E402

__all__ = [
    "Result",
    "System",
    "budget_overrides",
    "format_table",
    "images_of",
    "main",
    "probe_step_seconds",
    "run_bovw",
    "run_engine",
    "systems",
]

CONFIGS = REPO / "configs"
DATA = REPO.parent / "shared" / "data"
IMAGES = CONFIGS / "image_classification"
TRANSLATION = CONFIGS / "translation"
# The digits' BoVW: 4x4 patches at every pixel (25 per 8x8 image), a small codebook.
DIGITS_BOVW = BoVWConfig(patch=4, stride=1, words=64, kernel="rbf", C=10.0)
# CIFAR-10's: 8x8 patches every 2 pixels (169 per image) with their mean colour, 512 words and
# a linear SVM, whose cost grows linearly with the images (an RBF SVM's grows quadratically).
CIFAR_BOVW = BoVWConfig(patch=8, stride=2, words=512, color_weight=0.5, kernel="linear", C=0.1)
BOVW_PROBE_IMAGES = 2000


@dataclass
class System:
    """One row to produce.

    Attributes:
        task: ``image classification`` or ``translation``.
        dataset: What the table calls the data.
        name: What the table calls the system.
        config: The recipe (YAML); for the BoVW, the recipe whose data and splits it uses.
        overrides: Dotted overrides of the recipe.
        split: The scored split (``test`` or ``val``).
        budget_s: Seconds of training for budgeted systems; None: the recipe's steps.
        bovw: The bag-of-visual-words settings; None for a network trained by the engine.
        needs: A data file or folder that must exist (None: built in).
    """

    task: str
    dataset: str
    name: str
    config: Path
    overrides: list[str] = field(default_factory=list)
    split: str = "test"
    budget_s: float | None = None
    bovw: BoVWConfig | None = None
    needs: Path | None = None


@dataclass
class Result:
    """One measured row: parameters, wall-clock training seconds and the metric as text."""

    task: str
    dataset: str
    system: str
    parameters: int | None
    seconds: float | None
    metric: str


def systems(quick: bool, budget_minutes: float, data: Path = DATA) -> list[System]:
    """The table's systems: the digits ones, and unless ``quick`` the budgeted ones."""
    digits = [
        System(
            "image classification",
            "digits",
            "BoVW + SVM",
            IMAGES / "digits_vit.yaml",
            bovw=DIGITS_BOVW,
        ),
        # The recipe's data and schedule with a ResNet-18 for 300 steps (15 epochs), not 3,000:
        # its step took 2.4x the ViT's in the probe on 2 CPU cores, and it converges sooner.
        System(
            "image classification",
            "digits",
            "ResNet-18",
            IMAGES / "digits_vit.yaml",
            ["model.arch=resnet18", "train.max_steps=300"],
        ),
        System("image classification", "digits", "ViT (hybrid)", IMAGES / "digits_vit.yaml"),
    ]
    if quick:
        return digits
    budget = budget_minutes * 60
    cifar, m30k = data / "cifar10" / "train.parquet", data / "multi30k"
    on_cifar = {
        "split": "val",
        "budget_s": budget,
        "needs": cifar,
        "overrides": [f"data.path={cifar}"],
    }
    on_m30k = {"budget_s": budget, "needs": m30k, "overrides": [f"data.path={m30k}"]}
    cls, mt = "image classification", "translation"
    return digits + [
        System(
            cls, "CIFAR-10", "BoVW + SVM", IMAGES / "cifar10_vit.yaml", bovw=CIFAR_BOVW, **on_cifar
        ),
        System(cls, "CIFAR-10", "ResNet-18", IMAGES / "cifar10_resnet18.yaml", **on_cifar),
        System(cls, "CIFAR-10", "ViT-Ti/4", IMAGES / "cifar10_vit.yaml", **on_cifar),
        System(
            mt,
            "Multi30k en-de",
            "GRU + attention",
            TRANSLATION / "multi30k_en_de_rnn.yaml",
            **on_m30k,
        ),
        System(mt, "Multi30k en-de", "Transformer", TRANSLATION / "multi30k_en_de.yaml", **on_m30k),
    ]


# ----- the bag of visual words ------------------------------------------------------------


def images_of(config: Path, overrides: list[str], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 [N, 3, S, S], labels [N])`` of ``split``, exactly as the recipe splits its data."""
    from tasks.image_classification.data import ImageStore, load_splits
    from tasks.image_classification.task import ImageClassificationConfig

    cfg = load_config(ImageClassificationConfig, config, overrides).data
    records, _ = load_splits(cfg)
    if split not in records:
        raise UserError(f"{config}: the recipe has no {split!r} split")
    store = ImageStore(records[split], cfg.image_size, cfg.max_memory_mb, cfg.num_workers)
    if store.images is None:
        raise UserError(f"{config}: split {split!r} does not fit in data.max_memory_mb")
    return store.images, store.labels


def _bovw_subset(
    images: torch.Tensor, labels: torch.Tensor, budget_s: float | None, config: BoVWConfig
) -> int:
    """How many training images a fit in ``budget_s`` takes (all without a budget), from the
    measured time of a fit on `BOVW_PROBE_IMAGES` images (the cost is about linear in them).
    """
    n = len(images)
    if budget_s is None or n <= BOVW_PROBE_IMAGES:
        return n
    probe = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:BOVW_PROBE_IMAGES]
    start = time.perf_counter()
    BagOfVisualWords(config).fit(images[probe], labels[probe])
    seconds = time.perf_counter() - start
    return max(BOVW_PROBE_IMAGES, min(n, int(BOVW_PROBE_IMAGES * budget_s / seconds)))


def run_bovw(system: System) -> Result:
    """Fits the bag of visual words on the recipe's training images (a random subset under a
    budget: CIFAR-10's file is sorted by class) and scores it on ``system.split``.
    """
    assert system.bovw is not None
    images, labels = images_of(system.config, system.overrides, "train")
    count = _bovw_subset(images, labels, system.budget_s, system.bovw)
    # A seeded random draw (the same every run), never the file's first images: CIFAR-10's
    # file is sorted by class.
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count]
    start = time.perf_counter()
    model = BagOfVisualWords(system.bovw).fit(images[chosen], labels[chosen])
    seconds = time.perf_counter() - start
    test_images, test_labels = images_of(system.config, system.overrides, system.split)
    accuracy = model.accuracy(test_images, test_labels)
    name = system.name if count == len(images) else f"{system.name} ({count:,} images)"
    metric = f"{100 * accuracy:.1f}% {system.split} top-1 ({len(test_labels):,} images)"
    return Result(system.task, system.dataset, name, model.num_parameters(), seconds, metric)


# ----- the networks, through the engine ---------------------------------------------------


def _load(config: Path, overrides: list[str]) -> object:
    data, _ = read_yaml(config)
    config_cls, _ = resolve_task(data.get("task"), where=str(config))
    return load_config(config_cls, config, overrides)


def probe_step_seconds(
    config: Path, overrides: list[str], probe_dir: Path, steps: int = 4
) -> float:
    """Median seconds of one optimizer step of the recipe, after one warm-up step.

    The same model, parameter groups, optimizer, batches, precision and gradient accumulation
    as the engine's step, on the recipe's device; nothing is saved but the task's assets.
    """
    cfg = _load(config, overrides)
    _, task_cls = resolve_task(cfg.task)
    seed_everything(cfg.train.seed, False, cfg.train.num_threads)
    task = task_cls(cfg)
    task.prepare(probe_dir)
    device = select_device(cfg.train.device)
    model = task.build_model().to(device).train()
    precision = resolve_precision(cfg.train.precision, device)
    groups = task.param_groups(model, cfg.optim.weight_decay)
    optimizer = build_optimizer(groups, cfg.optim, model, precision)
    batches = task.train_batches(0, 0, 1)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        for _ in range(cfg.train.grad_accum):
            with autocast(device, precision):
                loss = task.loss(model, move_to(next(batches), device)).loss
            (loss.float() / cfg.train.grad_accum).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def budget_overrides(config: Path, overrides: list[str], steps: int) -> list[str]:
    """Overrides that train the recipe for ``steps`` steps, its schedule shrunk to fit.

    Warmup (and, for checkpoint averaging, the checkpoint spacing) keep their fraction of the
    recipe's steps; periodic validation is off (the engine still validates at the end).
    """
    cfg = _load(config, overrides)
    scale = steps / cfg.train.max_steps
    spacing = steps
    if cfg.eval.average_last:  # averaging needs checkpoints over the last part of training
        spacing = max(1, round(cfg.train.checkpoint_every * scale))
    return [
        f"train.max_steps={steps}",
        f"schedule.warmup_steps={max(1, round(cfg.schedule.warmup_steps * scale))}",
        f"train.checkpoint_every={spacing}",
        f"train.log_every={max(1, steps // 10)}",
        "eval.every=0",
    ]


def run_engine(system: System, out: Path) -> Result:
    """Trains ``system`` with ``unitransformer train`` (budgeted when asked) and scores it."""
    from tasks.cli import main as cli

    overrides = list(system.overrides)
    slug = "-".join(f"{system.dataset} {system.name}".lower().replace("/", "").split())
    if system.budget_s is not None:
        step_s = probe_step_seconds(system.config, overrides, out / f"probe-{slug}")
        steps = max(1, int(system.budget_s / step_s))
        overrides += budget_overrides(system.config, overrides, steps)
    run_dir = out / slug
    start = time.perf_counter()
    status = cli(["train", str(system.config), "--run-dir", str(run_dir), *overrides])
    seconds = time.perf_counter() - start
    if status:
        raise UserError(f"training {system.config} failed (exit {status}); see the messages above")
    averaged = (run_dir / CHECKPOINTS / "averaged").is_dir()
    task, model = load_trained(run_dir, "averaged" if averaged else "best")
    metrics = task.evaluate(model, system.split)
    parameters = sum(p.numel() for p in model.parameters())
    steps = _load(system.config, overrides).train.max_steps
    name = f"{system.name}, {steps:,} step{'s' if steps > 1 else ''}"
    name += ", averaged" if averaged else ""
    if "bleu" in metrics:
        count = len(task.pairs(system.split))
        metric = (
            f"BLEU {metrics['bleu_lc']:.1f} lowercased, {metrics['bleu']:.1f} cased "
            f"({count:,} test sentences)"
        )
    else:
        # The per-class report `evaluate` just wrote counts the scored images.
        report = json.loads((run_dir / f"per_class_{system.split}.json").read_text())
        count = sum(map(sum, report["confusion"]))
        metric = f"{100 * metrics['accuracy']:.1f}% {system.split} top-1 ({count:,} images)"
    return Result(system.task, system.dataset, name, parameters, seconds, metric)


# ----- the table --------------------------------------------------------------------------


def format_table(results: list[Result], command: str, date: str, machine: str) -> str:
    """The Markdown section: command, date, machine, and one row per result."""
    lines = [
        "## The lecture table",
        "",
        f"Command: `{command}`  ",
        f"Date: {date}  ",
        f"Machine: {machine}  ",
        "Training time: wall clock of `unitransformer train` for the networks (data, tokenizer, "
        "steps, final validation), of descriptors, codebook and SVM for the BoVW. "
        "Digits: test split (360 images); CIFAR-10: validation holdout (5,000 images); "
        "Multi30k: sacreBLEU on test_2016_flickr.",
        "",
        "| task | dataset | system | parameters | training time | metric |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        params = f"{r.parameters:,}" if r.parameters is not None else "-"
        seconds = f"{r.seconds:.0f} s" if r.seconds is not None else "-"
        lines.append(f"| {r.task} | {r.dataset} | {r.system} | {params} | {seconds} | {r.metric} |")
    return "\n".join(lines)


def run_system(system: System, out: Path) -> Result:
    """The system's measured row, or a row saying why it was not run (its data is absent)."""
    if system.needs is not None and not system.needs.exists():
        return Result(
            system.task,
            system.dataset,
            system.name,
            None,
            None,
            f"not run: no data at {system.needs}",
        )
    return run_bovw(system) if system.bovw is not None else run_engine(system, out)


def main(argv: list[str] | None = None) -> int:
    """Runs the table's systems, prints the table and writes it to RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only (about 5 minutes)")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=30.0,
        help="training minutes per CIFAR-10 / Multi30k system (default 30)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "runs" / "lecture",
        help="where the runs go (a new timestamped folder inside)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; keep RESULTS.md")
    args = parser.parse_args(argv)
    if args.budget_minutes <= 0:
        parser.error(f"--budget-minutes {args.budget_minutes}: expected a positive number")
    now = datetime.datetime.now()
    out = args.out / now.strftime("%Y%m%d-%H%M%S")
    results = []
    try:
        for system in systems(args.quick, args.budget_minutes):
            print(f"== {system.dataset}: {system.name}", flush=True)
            results.append(run_system(system, out))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    given = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/lecture_table.py " + " ".join(given)
    text = format_table(results, command.strip(), now.date().isoformat(), machine_description())
    print(text)
    if not args.no_write:
        write_section("lecture", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
