"""The ``translate`` command: a run directory (or Marian model) translating a file or stdin."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from tasks.translation.data import iter_lines

__all__ = ["add_commands", "translate_command"]

_NBEST_SEPARATOR = "\t"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``translate`` to the ``unitransformer`` command line."""
    parser = subparsers.add_parser(
        "translate",
        help="translate lines of text with a trained run or an opus-mt model",
        description=(
            "Translates stdin (or --input FILE) line by line and writes exactly one output line "
            "per input line, in order, as it goes; an empty line gives an empty line. With "
            "--nbest N, the N best translations of a line are written on its line, tab-separated."
        ),
    )
    parser.add_argument("run_dir", help="run directory of `unitransformer train`, or a Marian dir")
    parser.add_argument("--input", "-i", help="input file (default: stdin)")
    parser.add_argument("--output", "-o", help="output file (default: stdout)")
    parser.add_argument("--beam", type=int, default=None, help="beam size (1: greedy)")
    parser.add_argument("--nbest", type=int, default=1, help="translations per line")
    parser.add_argument("--max-tokens", type=int, default=None, help="source tokens per batch")
    parser.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "last", "averaged", "ema"],
        help="which weights of a run directory",
    )
    parser.add_argument("--device", default="auto", help="torch device (auto: cuda if present)")
    parser.add_argument(
        "--precision",
        default=None,
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast of the decoding (default: the run's train.precision, as evaluate uses)",
    )
    parser.set_defaults(func=translate_command)


def _input_lines(path: str | None) -> Iterator[str]:
    if path is None:
        yield from iter_lines(sys.stdin.buffer, "<stdin>")
        return
    from tasks.translation.data import DataError

    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below, after the generator is drained
    except OSError as error:
        raise DataError(f"{path}: cannot read the input file ({error.strerror})") from None
    with stream:
        yield from iter_lines(stream, path)


def _line(hypotheses: list[str]) -> str:
    # A newline inside a hypothesis would break the one-line-per-input-line promise.
    return _NBEST_SEPARATOR.join(h.replace("\n", " ") for h in hypotheses) + "\n"


class _CtrlC:
    """Ctrl-C that never lands between writing a line and counting it.

    While a line is being written, SIGINT only marks itself pending and is raised once the line
    is on disk and counted; at any other moment (decoding) it interrupts at once, as usual.
    """

    def __init__(self) -> None:
        self.writing = False
        self.pending = False

    def handler(self, signum: int, frame: object) -> None:
        if self.writing:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[_CtrlC]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        previous = signal.signal(signal.SIGINT, self.handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def translate_command(args: argparse.Namespace) -> int:
    """Runs ``unitransformer translate``; Ctrl-C keeps every finished line on disk."""
    from tasks.translation.translator import Translator

    translator = Translator.from_pretrained(
        args.run_dir, device=args.device, checkpoint=args.checkpoint, precision=args.precision
    )
    stream = translator.translate_stream(
        _input_lines(args.input), beam=args.beam, nbest=args.nbest, max_tokens=args.max_tokens
    )
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    written = 0
    try:
        with _CtrlC().installed() as ctrl_c:
            for hypotheses in stream:
                # Flushed line by line: after Ctrl-C every finished line is already written.
                ctrl_c.writing = True
                out.write(_line(hypotheses))
                out.flush()
                written += 1
                ctrl_c.writing = False
                if ctrl_c.pending:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        print(f"interrupted: {written} lines written", file=sys.stderr)
        return 130
    finally:
        out.flush()
        if out is not sys.stdout:
            with contextlib.suppress(OSError):
                os.fsync(out.fileno())
            out.close()
    return 0
