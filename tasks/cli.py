"""The ``unitransformer`` command: train, evaluate, average checkpoints, and the tasks' commands.

A user's mistake (a config key, a run directory) is one line ``error: <message>`` and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from tasks.registry import load_run, resolve_task
from unitransformer.engine import (
    Trainer,
    average_checkpoints,
    config_diff,
    config_to_dict,
    defaults_of,
    evaluate_run,
    load_config,
    read_run_config,
)
from unitransformer.engine.checkpoint import checkpoint_dirs
from unitransformer.engine.loader import flatten, read_yaml
from unitransformer.engine.runtime import keep_freed_memory
from unitransformer.errors import UserError

__all__ = ["build_parser", "main"]

# Packages whose `commands.add_commands(subparsers)` adds task commands (translate, classify...).
TASK_COMMANDS = (
    "tasks.image_classification.commands",
    "tasks.translation.commands",
    "tasks.translation.export",
    "tasks.attention.commands",
    "tasks.demo.commands",
)


def _train(args: argparse.Namespace) -> int:
    data, _ = read_yaml(args.config)
    config_cls, task_cls = resolve_task(data.get("task"), where=str(args.config))
    config = load_config(config_cls, args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem
    main_rank = os.environ.get("RANK", "0") == "0"  # Under torchrun, rank 0 speaks.
    if checkpoint_dirs(run_dir):
        _check_resume(run_dir, config_to_dict(config), defaults_of(config_cls), args.force)
        if main_rank:
            print(f"resuming {run_dir}")
    if main_rank:
        diff = config_diff(defaults_of(config_cls), config_to_dict(config))
        print(f"config {args.config} (differences from the defaults):")
        for key, (default, value) in diff.items():
            print(f"  {key}: {default!r} -> {value!r}")
    summary = Trainer(task_cls(config), config, run_dir).fit()
    if main_rank:
        print(f"done: {json.dumps(summary)} in {run_dir}")
    if summary["interrupted"]:  # The shell's code for death by that signal: 130, 143.
        return 128 + signal.Signals.__members__.get(summary["interrupted"], signal.SIGTERM)
    return 0


def _check_resume(
    run_dir: Path, config: dict[str, Any], defaults: dict[str, Any], force: bool
) -> None:
    """Refuses to resume a run under a different config unless ``--force``.

    A key that the run's ``config.yaml`` lacks came into the library after the run started;
    at its default it keeps the behaviour the run was trained with, so it is no difference.
    """
    default = flatten(defaults)
    diff = {
        k: (old, new)
        for k, (old, new) in config_diff(read_run_config(run_dir), config).items()
        if not (old == "<absent>" and k in default and default[k] == new)
    }
    if diff and not force:
        changes = "; ".join(
            f"{k}: {old!r} (run) vs {new!r} (now)" for k, (old, new) in diff.items()
        )
        raise UserError(
            f"{run_dir} was trained with a different config ({changes}); "
            "pass --force to resume with the new one, or --run-dir for a new run"
        )


def _evaluate(args: argparse.Namespace) -> int:
    _, task = load_run(args.run_dir, overrides=args.overrides)
    metrics = evaluate_run(task, args.run_dir, args.checkpoint, args.split)
    print(json.dumps({"split": args.split, "checkpoint": args.checkpoint, **metrics}))
    return 0


def _average(args: argparse.Namespace) -> int:
    if args.last < 1:
        raise UserError(f"--last {args.last}: expected at least 1")
    read_run_config(args.run_dir)  # A clear error if this is not a run directory at all.
    path = average_checkpoints(args.run_dir, args.last)
    print(f"averaged the last {args.last} checkpoints into {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the engine's commands and every available task's commands."""
    parser = argparse.ArgumentParser(
        prog="unitransformer", description="Train and use Transformers for translation and images."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train (or resume) from a YAML config")
    train.add_argument(
        "config", help="YAML config, e.g. configs/image_classification/digits_vit.yaml"
    )
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4")
    train.add_argument("--run-dir", help="run directory (default: runs/<config stem>)")
    train.add_argument("--force", action="store_true", help="resume even if the config differs")
    train.set_defaults(func=_train)
    evaluate = sub.add_parser("evaluate", help="evaluate a trained run")
    evaluate.add_argument("run_dir", help="run directory written by train")
    evaluate.add_argument("--split", default="val", help="data split (default: val)")
    evaluate.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "last", "averaged", "ema"],
        help="which weights (default: best); averaged and ema ones of a model with BatchNorm "
        "get its statistics recomputed on 32 training batches",
    )
    evaluate.add_argument(
        "overrides",
        nargs="*",
        help="dotted changes for this evaluation only, e.g. decode.length_penalty=1.5 "
        "(decoding and runtime keys)",
    )
    evaluate.set_defaults(func=_evaluate)
    average = sub.add_parser("average-checkpoints", help="average the last N checkpoints")
    average.add_argument("run_dir", help="run directory written by train")
    average.add_argument("--last", type=int, default=5, help="how many (default: 5)")
    average.set_defaults(func=_average)
    for module_name in TASK_COMMANDS:
        module = _import_optional(module_name)
        if module is not None:
            module.add_commands(sub)
    return parser


def _import_optional(module_name: str) -> Any:
    """The module, or None if it does not exist; errors inside an existing module propagate."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            return None
        raise


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was at creation.

    ``main`` may run many times in one process (tests, notebooks) while ``sys.stderr`` is
    swapped; a handler bound to the first stream would write to a closed file later.
    """

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # StreamHandler.__init__ assigns the stream; it is always the current sys.stderr.


def _configure_logging() -> None:
    # Only the library's logger: warnings and resume notes as "warning: ..." lines.
    logger = logging.getLogger("unitransformer")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 for a user's mistake)."""
    _configure_logging()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `train CONFIG --run-dir D key=value`: overrides may come after the options too.
    takes_overrides = args.command in ("train", "evaluate")
    if takes_overrides and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    keep_freed_memory()  # Steps reuse freed pages instead of faulting fresh ones (1.4x beam).
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        # One line, even for messages that list several problems.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        print(f"error: {'; '.join(lines)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
