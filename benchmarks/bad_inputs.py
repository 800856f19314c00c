"""Every bad input of issue #7 through the real command line, counted as handled or not.

    .venv/bin/python benchmarks/bad_inputs.py             # prints the table, rewrites RESULTS.md
    .venv/bin/python benchmarks/bad_inputs.py --no-write

Each case runs ``unitransformer train|translate|classify|evaluate`` in a fresh subprocess. A case
is handled when the command exits 2 with exactly one ``error:`` line, no traceback, naming the
file, line or key it should; or, for inputs with a documented policy (BOM, CRLF, whitespace-only
lines, a very long line, every image mode), when it exits 0 with the documented result.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TRANSLATION = str(ROOT / "configs" / "demo" / "synthetic_translation.yaml")
DIGITS = str(ROOT / "configs" / "image_classification" / "digits_vit.yaml")
WORDS = ["a", "man", "woman", "dog", "cat", "runs", "sits", "on", "the", "red", "big", "park"]
# Optionally caps file sizes (a full disk) before running the command line.
CHILD = """
import os, resource, signal, sys
from tasks.cli import main
if os.environ.get("BAD_INPUT_FSIZE"):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Case:
    """One bad input: the command, and what handling it looks like.

    Attributes:
        group: text, image, config or run directory.
        name: What is wrong with the input.
        argv: The ``unitransformer`` arguments.
        names: Text the one error line must contain (the file, line or key); None when the
            documented policy is to succeed.
        check: For a success, a test of the outcome (e.g. one output line per input line).
        env: Extra environment of the child.
    """

    group: str
    name: str
    argv: list[str]
    names: str | None = None
    check: Callable[[str], bool] | None = None
    env: dict[str, str] | None = None


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _image(mode: str) -> bytes:
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).astype(np.uint8)
    image = {
        "grayscale": Image.fromarray(gray),
        "palette": Image.fromarray(gray).convert("P"),
        "RGBA": Image.fromarray(np.stack([gray] * 4, -1)),
        "CMYK": Image.fromarray(np.stack([gray] * 3, -1)).convert("CMYK"),
        "16-bit": Image.fromarray(gray.astype(np.uint16) * 257),
    }[mode]
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
    return buffer.getvalue()


def _bomb(side: int) -> bytes:
    # The header of a side x side PNG: the size is known before any pixel is decoded.
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _jpeg(truncate: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()[:truncate]


def _cli(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", CHILD, *argv], env=environ, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def build_runs(work: Path) -> tuple[Path, Path]:
    """A tiny trained translation run and a tiny trained digits run (a few steps each)."""
    rng = np.random.default_rng(0)
    corpus = work / "corpus"
    for split, n in (("train", 300), ("val", 8), ("test", 8)):
        src = [" ".join(rng.choice(WORDS, size=rng.integers(2, 8))) for _ in range(n)]
        _write(corpus / f"{split}.en", ("\n".join(src) + "\n").encode())
        _write(corpus / f"{split}.de", ("\n".join(s.upper() for s in src) + "\n").encode())
    text_run, image_run = work / "text-run", work / "image-run"
    for argv in (
        [TRANSLATION, f"data.path={corpus}", "data.vocab_size=60", "model.dim=32",
         "model.mlp_dim=64", "train.max_steps=3", "eval.every=0", "decode.beam=1",
         "--run-dir", str(text_run)],
        [DIGITS, "model.depth=1", "train.max_steps=3", "eval.every=0", "--run-dir", str(image_run)],
    ):  # fmt: skip
        result = _cli(["train", *argv])
        if result.returncode != 0:
            raise RuntimeError(f"could not train a fixture run: {result.stderr[-2000:]}")
    return text_run, image_run


def _lines_out(expected: int) -> Callable[[str], bool]:
    return lambda out: len(out.split("\n")) - 1 == expected


def text_cases(work: Path, text_run: Path) -> list[Case]:
    """Parallel text for ``train`` and input files for ``translate``."""
    d = work / "text"
    uneven, empty = d / "uneven", d / "empty"
    _write(uneven / "train.en", b"one\ntwo\nthree\n")
    _write(uneven / "train.de", b"eins\nzwei\n")
    _write(empty / "train.en", b"")
    _write(empty / "train.de", b"")
    run = ["translate", str(text_run), "--input"]
    train = ["train", TRANSLATION, "--run-dir"]
    return [
        Case("text", "parallel files of different line counts",
             [*train, str(d / "r1"), f"data.path={uneven}"], f"{uneven}/train.en has 3 lines"),
        Case("text", "empty parallel files", [*train, str(d / "r2"), f"data.path={empty}"],
             "no non-empty lines"),
        Case("text", "invalid UTF-8", [*run, _write(d / "utf8.en", b"ok\nbad \xff\n")],
             f"{d / 'utf8.en'}:2: invalid UTF-8"),
        Case("text", "NUL byte", [*run, _write(d / "nul.en", b"ok\nn\x00ul\n")],
             f"{d / 'nul.en'}:2: contains a NUL byte"),
        Case("text", "byte-order mark (dropped)",
             [*run, _write(d / "bom.en", b"\xef\xbb\xbfa man runs\nthe dog\n")], None, _lines_out(2)),
        Case("text", "CRLF line ends (read as LF)",
             [*run, _write(d / "crlf.en", b"a man runs\r\nthe dog\r\n")], None, _lines_out(2)),
        Case("text", "whitespace-only lines (empty output lines)",
             [*run, _write(d / "blank.en", b"a dog\n  \t \n\n")], None,
             lambda out: out.split("\n")[1:3] == ["", ""] and _lines_out(3)(out)),
        Case("text", "a 100,000-character line (truncated to max_len tokens)",
             [*run, _write(d / "long.en", ("dog " * 25_000).encode() + b"\na cat\n")], None,
             _lines_out(2)),
    ]  # fmt: skip


def image_cases(work: Path, image_run: Path) -> list[Case]:
    """Image files for ``classify``."""
    d = work / "images"
    bad = {
        "zero bytes": ("zero.jpg", b"", "empty file"),
        "truncated JPEG": ("cut.jpg", _jpeg(400), "truncated or corrupt"),
        "text file named .jpg": ("notes.jpg", b"just some text\n", "not an image"),
        "20000x20000 decompression bomb": ("bomb.png", _bomb(20000), "too many pixels"),
    }
    cases = [
        Case("image", name, ["classify", str(image_run), path := _write(d / file, data)],
             f"{path}: {reason}")
        for name, (file, data, reason) in bad.items()
    ]  # fmt: skip
    for mode in ("grayscale", "palette", "RGBA", "CMYK", "16-bit"):
        path = _write(d / f"{mode}.{'tif' if mode == 'CMYK' else 'png'}", _image(mode))
        cases.append(
            Case("image", f"{mode} (converted to RGB)", ["classify", str(image_run), path],
                 None, lambda out, p=path: out.startswith(p) and "%" in out)
        )  # fmt: skip
    return cases


def config_cases(work: Path, text_run: Path, image_run: Path) -> list[Case]:
    """Configs, run directories of the other task, unwritable and full run directories."""
    d = work / "config"
    unknown = _write(d / "unknown.yaml", b"task: translation\noptim:\n  lrr: 0.1\n")
    wrong = _write(d / "wrong.yaml", b"task: translation\ntrain:\n  max_steps: lots\n")
    blocker = _write(d / "a-file", b"not a directory")
    r = str(d / "run")
    return [
        Case("config", "unknown key", ["train", unknown, "--run-dir", r],
             f"{unknown} line 3: unknown key 'optim.lrr'"),
        Case("config", "wrong type", ["train", wrong, "--run-dir", r], "train.max_steps='lots'"),
        Case("config", "negative learning rate", ["train", DIGITS, "optim.lr=-0.1", "--run-dir", r],
             "optim.lr=-0.1 is out of range"),
        Case("config", "missing data path (translation)",
             ["train", TRANSLATION, f"data.path={d}/absent", "--run-dir", r], f"{d}/absent/train.en"),
        Case("config", "missing data path (images)",
             ["train", DIGITS, "data.source=parquet", f"data.path={d}/absent.parquet", "--run-dir", r],
             f"{d}/absent.parquet"),
        Case("run dir", "image run handed to translate", ["translate", str(image_run)],
             f"{image_run}: neither a translation run directory"),
        Case("run dir", "translation run handed to classify",
             ["classify", str(text_run), "x.png"], "'translation' run; the command needs a"),
        Case("run dir", "not a run directory", ["evaluate", str(d)], f"{d}: not a run directory"),
        Case("run dir", "unwritable run directory",
             ["train", DIGITS, "--run-dir", f"{blocker}/run"], "run directory is not writable"),
        Case("run dir", "full run directory (file size limit 0)",
             ["train", DIGITS, "--run-dir", str(d / "full")], "run directory is not writable",
             env={"BAD_INPUT_FSIZE": "1"}),
    ]  # fmt: skip


def judge(case: Case, result: subprocess.CompletedProcess) -> tuple[bool, str]:
    """Whether ``case`` was handled, and what the command said."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    said = errors[0] if errors else result.stderr.strip().splitlines()[-1:] or [""]
    said = said if isinstance(said, str) else said[0]
    if "Traceback" in result.stderr:
        return False, said
    if case.names is None:
        ok = result.returncode == 0 and case.check is not None and case.check(result.stdout)
        return ok, f"exit 0, {len(result.stdout.splitlines())} output lines"
    return result.returncode == 2 and len(errors) == 1 and case.names in errors[0], said


def _section(rows: list[tuple[Case, bool, str]], command: str, seconds: float) -> str:
    from benchmarks.harness import machine_description

    handled = sum(ok for _, ok, _ in rows)
    table = ["| group | bad input | command | handled | what it said |", "|---|---|---|---|---|"]
    for case, ok, said in rows:
        said = said.replace("|", "\\|").replace(str(ROOT), ".")
        if len(said) > 160:
            said = said[:157] + "..."
        table.append(
            f"| {case.group} | {case.name} | `{case.argv[0]}` | {'yes' if ok else 'NO'} | {said} |"
        )
    return f"""## Bad inputs (issue #7)

Command: `{command}`
Date: {datetime.date.today().isoformat()}
Machine: {machine_description()}
Wall time: {seconds:.0f} s

**{len(rows)} bad inputs tried, {handled} handled**: exit 2 with exactly one `error:` line naming
the file, line or key, or exit 0 under the documented policy (BOM dropped, CRLF read as LF,
whitespace-only lines answered with empty lines, long lines truncated, every image mode
converted to RGB). Temporary paths are shown as they were.

{chr(10).join(table)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="do not rewrite RESULTS.md")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    try:
        text_run, image_run = build_runs(work)
        cases = [
            *text_cases(work, text_run),
            *image_cases(work, image_run),
            *config_cases(work, text_run, image_run),
        ]
        rows = []
        for case in cases:
            ok, said = judge(case, _cli(case.argv, case.env))
            rows.append((case, ok, said))
            print(f"{'handled' if ok else 'NOT HANDLED':12} {case.group:8} {case.name}: {said}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    handled = sum(ok for _, ok, _ in rows)
    print(f"{len(rows)} bad inputs tried, {handled} handled")
    if not args.no_write:
        from benchmarks.harness import write_section

        command = "python benchmarks/bad_inputs.py " + " ".join(argv or sys.argv[1:])
        write_section("bad_inputs", _section(rows, command.strip(), time.perf_counter() - start))
    return 0 if handled == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
