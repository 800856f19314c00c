"""The ``demo`` command: the README's main command."""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.demo.run import run_demo

__all__ = ["add_commands", "demo"]


def demo(args: argparse.Namespace) -> int:
    """Runs the demo and prints where its report is."""
    report = run_demo(args.output, full=args.full)
    print(f"\nreport: {report.resolve()}\nfolder: {report.parent.resolve()}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``demo`` to the command line."""
    parser = subparsers.add_parser(
        "demo",
        help="train and evaluate both tasks, write an HTML report (about 3 minutes, offline)",
        description="Trains a ViT on scikit-learn's digits and a small translator on a built-in "
        "synthetic task, evaluates both, draws their attention, and writes a self-contained HTML "
        "report. No network needed. --full runs the CIFAR-10 and Multi30k recipes instead.",
    )
    parser.add_argument(
        "--output", "-o", type=Path, default=Path("runs/demo"), help="folder (default: runs/demo)"
    )
    parser.add_argument("--full", action="store_true", help="the real recipes (hours on a CPU)")
    parser.set_defaults(func=demo)
