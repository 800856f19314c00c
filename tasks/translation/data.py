"""Parallel data: readers for text, TSV, JSONL and Hugging Face datasets, and the filters.

Input policy, the same for every reader:
- A UTF-8 byte-order mark at the start of a file is dropped; CRLF line ends are read as LF.
- Each line is stripped of surrounding whitespace, so a whitespace-only line is an empty line
  (filtered out of training; `translate` answers it with an empty line).
- Invalid UTF-8 and NUL bytes are errors naming the file and the line: they mean a binary or
  mis-encoded file, and silently mangling it would corrupt the aligned sentence pairs.
- Very long lines are read as they are: training drops pairs longer than ``data.max_len``
  tokens, and translation truncates a source to the model's ``max_len`` tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tasks.translation.config import TranslationDataConfig
from unitransformer.errors import UserError

__all__ = [
    "DataError",
    "FilterReport",
    "Pair",
    "filter_pairs",
    "iter_lines",
    "load_split",
    "read_hf_dataset",
    "read_jsonl",
    "read_lines",
    "read_parallel_text",
    "read_tsv",
]

Pair = tuple[str, str]
_BOM = b"\xef\xbb\xbf"


class DataError(UserError):
    """A data file or dataset that cannot be read as parallel text."""


def iter_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """Yields the lines of a binary stream as stripped text, one at a time (bounded memory).

    Args:
        stream: The open binary file (or ``sys.stdin.buffer``).
        name: The file's name for error messages.

    Raises:
        DataError: On invalid UTF-8 or a NUL byte, naming the file and the 1-based line.
    """
    for number, raw in enumerate(stream, start=1):
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if b"\x00" in raw:
            raise DataError(f"{name}:{number}: contains a NUL byte; expected UTF-8 text")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(
                f"{name}:{number}: invalid UTF-8 at byte {error.start} of the line; "
                "expected UTF-8 text"
            ) from None
        yield text.strip()


def read_lines(path: str | Path) -> list[str]:
    """All lines of a text file (see `iter_lines` for the policy)."""
    try:
        with open(path, "rb") as stream:
            return list(iter_lines(stream, str(path)))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None


def read_parallel_text(source_path: str | Path, target_path: str | Path) -> list[Pair]:
    """Line-aligned source and target files.

    Raises:
        DataError: If the files have different line counts (naming both files and counts).
    """
    source, target = read_lines(source_path), read_lines(target_path)
    if len(source) != len(target):
        raise DataError(
            f"{source_path} has {len(source)} lines but {target_path} has {len(target)}; "
            "parallel files must have one line per sentence pair"
        )
    return list(zip(source, target, strict=True))


def read_tsv(path: str | Path, columns: tuple[int, int] = (0, 1)) -> list[Pair]:
    """Tab-separated pairs: the source in ``columns[0]``, the target in ``columns[1]``.

    Raises:
        DataError: If a non-empty line has too few columns (naming the file and line).
    """
    pairs = []
    needed = max(columns) + 1
    for number, line in enumerate(read_lines(path), start=1):
        if not line:
            pairs.append(("", ""))
            continue
        cells = line.split("\t")
        if len(cells) < needed:
            raise DataError(
                f"{path}:{number}: has {len(cells)} tab-separated columns; expected at least "
                f"{needed} (data.tsv_columns={list(columns)})"
            )
        pairs.append((cells[columns[0]].strip(), cells[columns[1]].strip()))
    return pairs


def _jsonl_pair(record: object, source_lang: str, target_lang: str, where: str) -> Pair:
    # Hugging Face translation datasets nest the pair under "translation"; flat files do not.
    if isinstance(record, dict) and isinstance(record.get("translation"), dict):
        record = record["translation"]
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in (source_lang, target_lang):
        if not isinstance(record.get(key), str):
            raise DataError(
                f"{where}: expected a string under key {key!r} (or under "
                f"'translation'.{key!r}); found keys {sorted(record)}"
            )
    return record[source_lang].strip(), record[target_lang].strip()


def read_jsonl(path: str | Path, source_lang: str, target_lang: str) -> list[Pair]:
    """One JSON object a line: ``{"en": ..., "de": ...}`` or ``{"translation": {...}}``.

    Raises:
        DataError: On invalid JSON or a missing language key (naming the file and line).
    """
    pairs = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line:
            pairs.append(("", ""))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: invalid JSON ({error.msg})") from None
        pairs.append(_jsonl_pair(record, source_lang, target_lang, f"{path}:{number}"))
    return pairs


def read_hf_dataset(
    dataset: str, config_name: str, split: str, source_lang: str, target_lang: str
) -> list[Pair]:
    """A split of a Hugging Face dataset: a local ``save_to_disk`` folder or a hub name.

    Rows are ``{"translation": {src: ..., tgt: ...}}`` (wmt14) or flat ``{src, tgt}`` columns
    (``bentrevett/multi30k``).

    Raises:
        DataError: If the dataset cannot be loaded or lacks the split or languages.
    """
    import datasets

    where = f"data.dataset={dataset!r}"
    try:
        if Path(dataset).is_dir() and (Path(dataset) / "dataset_dict.json").exists():
            rows = datasets.load_from_disk(dataset)[split]
        elif Path(dataset).is_dir() and (Path(dataset) / "dataset_info.json").exists():
            rows = datasets.load_from_disk(dataset)
        else:
            rows = datasets.load_dataset(dataset, config_name or None, split=split)
    except KeyError:
        raise DataError(f"{where}: has no split {split!r}") from None
    except Exception as error:  # any failure to load (offline, bad name) is the user's to fix
        raise DataError(
            f"{where} (config {config_name!r}, split {split!r}) could not be loaded: {error}. "
            "Offline, pass a local dataset path"
        ) from None
    return [
        _jsonl_pair(row, source_lang, target_lang, f"{where} split {split!r} row {i}")
        for i, row in enumerate(rows)
    ]


def load_split(data: TranslationDataConfig, split: str) -> list[Pair]:
    """The pairs of ``split`` as the data config describes them."""
    src, tgt = data.source_lang, data.target_lang
    folder = Path(data.path)
    if data.format == "text":
        return read_parallel_text(folder / f"{split}.{src}", folder / f"{split}.{tgt}")
    if data.format == "tsv":
        return read_tsv(folder / f"{split}.tsv", (data.tsv_columns[0], data.tsv_columns[1]))
    if data.format == "jsonl":
        return read_jsonl(folder / f"{split}.jsonl", src, tgt)
    return read_hf_dataset(data.dataset, data.dataset_config, split, src, tgt)


@dataclass
class FilterReport:
    """How many pairs each filter dropped."""

    total: int = 0
    empty: int = 0
    too_long: int = 0
    bad_ratio: int = 0

    @property
    def kept(self) -> int:
        """Pairs that passed every filter."""
        return self.total - self.empty - self.too_long - self.bad_ratio

    def __str__(self) -> str:
        return (
            f"kept {self.kept} of {self.total} pairs (dropped: {self.empty} empty, "
            f"{self.too_long} too long, {self.bad_ratio} with an extreme length ratio)"
        )


def filter_pairs(
    pairs: Sequence[Pair],
    *,
    max_len: int,
    max_ratio: float,
    lengths: Sequence[tuple[int, int]] | None = None,
) -> tuple[list[int], FilterReport]:
    """Drops empty pairs, pairs longer than ``max_len``, and pairs with a long/short ratio
    above ``max_ratio`` (each pair counted under the first filter it fails).

    Args:
        pairs: Source and target sentences.
        max_len: Most units allowed on either side.
        max_ratio: Largest allowed ratio of the longer side's length to the shorter's.
        lengths: Each pair's (source, target) length in units (the task passes token counts);
            None counts whitespace-separated words.

    Returns:
        The indices of the kept pairs, in order, and the counts.
    """
    report = FilterReport(total=len(pairs))
    kept = []
    for i, (source, target) in enumerate(pairs):
        if not source or not target:
            report.empty += 1
            continue
        source_len, target_len = (
            lengths[i] if lengths is not None else (len(source.split()), len(target.split()))
        )
        if max(source_len, target_len) > max_len:
            report.too_long += 1
        elif max(source_len, target_len) > max_ratio * max(min(source_len, target_len), 1):
            report.bad_ratio += 1
        else:
            kept.append(i)
    return kept, report
