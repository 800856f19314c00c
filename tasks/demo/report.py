"""The demo's self-contained HTML report: metrics, curves, attention pictures, samples.

Every picture is embedded as a base64 PNG, so the single ``report.html`` can be mailed or
opened anywhere without the files beside it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Section", "write_report"]

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; }
td, th { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } img { max-width: 100%; border: 1px solid #eee; margin: .4em 0; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; }
.ok { color: #1a7f37; } .bad { color: #cf222e; }
"""


@dataclass
class Section:
    """One part of the report.

    Attributes:
        title: The heading.
        text: An introductory paragraph (plain text).
        metrics: Name -> value, shown as a two-column table.
        rows: A table: the first row is the header.
        figures: (PNG path, caption) pairs.
    """

    title: str
    text: str = ""
    metrics: dict[str, str] = field(default_factory=dict)
    rows: list[list[str]] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(rows: list[list[str]]) -> str:
    head, *body = rows
    out = ["<table><tr>", *(f"<th>{html.escape(c)}</th>" for c in head), "</tr>"]
    for row in body:
        out += ["<tr>", *(f"<td>{html.escape(c)}</td>" for c in row), "</tr>"]
    return "".join([*out, "</table>"])


def _section(section: Section) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>"]
    if section.text:
        parts.append(f"<p>{html.escape(section.text)}</p>")
    if section.metrics:
        parts.append(_table([["metric", "value"], *([k, v] for k, v in section.metrics.items())]))
    if section.rows:
        parts.append(_table(section.rows))
    parts += [_image(path, caption) for path, caption in section.figures if path.exists()]
    return "\n".join(parts)


def write_report(path: Path, title: str, intro: str, sections: list[Section]) -> Path:
    """Writes the report and returns its path."""
    body = "\n".join(_section(s) for s in sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(intro)}</p>\n{body}\n</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
