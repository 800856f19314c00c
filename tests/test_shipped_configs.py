"""Every shipped config: its header's command runs the config, and every key is commented."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tasks.cli import build_parser
from tasks.registry import resolve_task
from unitransformer.engine import load_config
from unitransformer.engine.loader import read_yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
IDS = [str(p.relative_to(ROOT)) for p in CONFIGS]


def _header(path: Path) -> list[str]:
    """The comment lines before the first key."""
    lines = path.read_text().splitlines()
    return lines[: next(i for i, line in enumerate(lines) if line[:1].isalpha())]


def test_there_are_configs_to_check() -> None:
    assert len(CONFIGS) >= 8, IDS


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_header_command_parses_and_loads_the_config(path: Path, monkeypatch) -> None:
    header = _header(path)
    assert header and all(line.startswith("#") for line in header), header
    text = " ".join(line.lstrip("# ").strip() for line in header)
    assert re.search(r"[Rr]untime|minutes|hours|\d+ s\b", text), "no expected runtime"
    assert "Expected" in text or "expected" in text, "no expected metric"
    commands = [
        line.split("unitransformer ", 1)[1] for line in header if "unitransformer train" in line
    ]
    assert commands, "no `unitransformer train CONFIG` command in the header"
    monkeypatch.chdir(ROOT)
    args = build_parser().parse_args(shlex.split(commands[0].split("#")[0]))
    assert (ROOT / args.config).resolve() == path
    data, _ = read_yaml(args.config)
    config_cls, _ = resolve_task(data.get("task"), where=str(args.config))
    load_config(config_cls, args.config, args.overrides)  # raises on any unknown or bad key


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_every_key_line_is_commented(path: Path) -> None:
    uncommented = [
        f"{path.name}:{number}: {line}"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip()
        and not line.lstrip().startswith("#")
        and "#" not in line
        and not re.fullmatch(r"\w+:\s*", line)  # a section header such as `model:`
    ]
    assert not uncommented, uncommented
