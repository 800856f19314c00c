"""Translation data: readers, bad input, filters, sentencepiece, token-budget batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks.translation.batching import collate, token_batches
from tasks.translation.data import (
    DataError,
    filter_pairs,
    read_jsonl,
    read_lines,
    read_parallel_text,
    read_tsv,
)
from tasks.translation.tokenizer import SentencePieceTokenizer, SpmSettings
from unitransformer.errors import UserError

MULTI30K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"
WORDS = [
    "a",
    "man",
    "woman",
    "dog",
    "cat",
    "runs",
    "sits",
    "on",
    "the",
    "red",
    "blue",
    "green",
    "big",
    "small",
    "street",
    "park",
    "ball",
]


def synthetic_lines(n: int, seed: int) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (n,), generator=gen).tolist()
    return [
        " ".join(WORDS[i] for i in torch.randint(len(WORDS), (k,), generator=gen).tolist())
        for k in lengths
    ]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- readers and bad input ---------------------------------------------------------------


def test_line_count_mismatch_names_both_files_and_counts(tmp_path: Path) -> None:
    src = write(tmp_path / "train.en", b"one\ntwo\nthree\n")
    tgt = write(tmp_path / "train.de", b"eins\nzwei\n")
    with pytest.raises(DataError) as info:
        read_parallel_text(src, tgt)
    message = str(info.value)
    assert str(src) in message and str(tgt) in message
    assert "3 lines" in message and "has 2" in message


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.en", b"fine\nalso fine\nbad \xff\xfe byte\n")
    with pytest.raises(DataError, match=r"bad\.en:3: invalid UTF-8"):
        read_lines(path)


def test_nul_byte_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "nul.en", b"fine\nnul\x00here\n")
    with pytest.raises(DataError, match=r"nul\.en:2: contains a NUL byte"):
        read_lines(path)


def test_bom_crlf_and_whitespace_policy(tmp_path: Path) -> None:
    path = write(tmp_path / "win.en", b"\xef\xbb\xbfHello\r\n   \t \r\nWorld  \r\n\r\n")
    # BOM dropped, CRLF read as LF, whitespace-only lines become empty, line count kept.
    assert read_lines(path) == ["Hello", "", "World", ""]


def test_very_long_line_is_read_whole(tmp_path: Path) -> None:
    long = "x" * 100_000
    path = write(tmp_path / "long.en", f"short\n{long}\n".encode())
    assert read_lines(path) == ["short", long]


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found"):
        read_lines(tmp_path / "absent.en")


def test_tsv_reader_and_column_error(tmp_path: Path) -> None:
    path = write(tmp_path / "train.tsv", b"id\tHallo\tHello\n\nx\tWelt\tWorld\n")
    assert read_tsv(path, (2, 1)) == [("Hello", "Hallo"), ("", ""), ("World", "Welt")]
    bad = write(tmp_path / "bad.tsv", b"a\tb\nonly-one-column\n")
    with pytest.raises(DataError, match=r"bad\.tsv:2: has 1 tab-separated columns"):
        read_tsv(bad)


def test_jsonl_reader_flat_nested_and_errors(tmp_path: Path) -> None:
    rows = [{"en": "Hello", "de": "Hallo"}, {"translation": {"en": "World", "de": "Welt"}}]
    path = write(tmp_path / "train.jsonl", "\n".join(map(json.dumps, rows)).encode())
    assert read_jsonl(path, "en", "de") == [("Hello", "Hallo"), ("World", "Welt")]
    missing = write(tmp_path / "m.jsonl", b'{"en": "Hi"}\n')
    with pytest.raises(DataError, match=r"m\.jsonl:1: expected a string under key 'de'"):
        read_jsonl(missing, "en", "de")
    broken = write(tmp_path / "b.jsonl", b'{"en": "Hi", "de": "Hallo"}\n{oops\n')
    with pytest.raises(DataError, match=r"b\.jsonl:2: invalid JSON"):
        read_jsonl(broken, "en", "de")


def test_filters_report_counts() -> None:
    pairs = [
        ("a b c", "x y z"),  # kept
        ("", "x"),  # empty source
        ("a", ""),  # empty target
        ("a " * 20, "x " * 20),  # too long
        ("a", "x y z w v"),  # ratio 5 > 3
        ("a b", "x y z"),  # ratio 1.5: kept
    ]
    kept, report = filter_pairs(pairs, max_len=10, max_ratio=3.0)
    assert kept == [0, 5]
    assert (report.total, report.empty, report.too_long, report.bad_ratio) == (6, 2, 1, 1)
    assert report.kept == 2 and "kept 2 of 6" in str(report)
    # Token lengths passed in take precedence over word counts.
    kept, report = filter_pairs(pairs[:1], max_len=10, max_ratio=3.0, lengths=[(11, 3)])
    assert kept == [] and report.too_long == 1


# --- sentencepiece ---------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_trains_and_round_trips(model_type: str) -> None:
    src, tgt = synthetic_lines(300, 0), synthetic_lines(300, 1)
    settings = SpmSettings(model_type=model_type, vocab_size=60)
    tok = SentencePieceTokenizer.train(src, tgt, settings)
    assert tok.joint and tok.src_vocab_size == tok.tgt_vocab_size
    ids = tok.encode_source(src[0])
    assert ids[-1] == tok.eos_id and tok.pad_id not in ids
    for line in tgt[:20]:
        assert tok.decode_target(tok.encode_target(line)) == line
        # Specials in the output (as a decoder produces them) are dropped.
        assert tok.decode_target([tok.bos_id, *tok.encode_target(line), tok.eos_id]) == line


def test_separate_vocabularies_save_load_and_cache(tmp_path: Path) -> None:
    src = synthetic_lines(200, 2)
    tgt = [line.upper() for line in synthetic_lines(200, 3)]
    settings = SpmSettings(vocab_size=50, joint=False)
    tok = SentencePieceTokenizer.train_cached(src, tgt, settings, tmp_path / "cache")
    assert not tok.joint
    # Separate vocabularies: target pieces are upper-case, source pieces are not.
    assert "▁A" not in {tok.source.id_to_piece(i) for i in range(tok.src_vocab_size)}
    tok.save(tmp_path / "run")
    again = SentencePieceTokenizer.load(tmp_path / "run")
    assert again.encode_source(src[0]) == tok.encode_source(src[0])
    assert again.decode_target(again.encode_target(tgt[0])) == tgt[0]
    (entry,) = list((tmp_path / "cache").iterdir())
    # A second call with the same data and settings loads the cached model, not a retrain.
    (entry / "stamp").write_text("cached")
    cached = SentencePieceTokenizer.train_cached(src, tgt, settings, tmp_path / "cache")
    assert cached.encode_source(src[1]) == tok.encode_source(src[1])
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_unreadable_tokenizer_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a readable tokenizer folder"):
        SentencePieceTokenizer.load(tmp_path)


@pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"Multi30k not found at {MULTI30K}")
def test_sentencepiece_on_a_multi30k_slice() -> None:
    pairs = read_parallel_text(MULTI30K / "val.en", MULTI30K / "val.de")
    assert len(pairs) == 1014
    src, tgt = [s for s, _ in pairs[:400]], [t for _, t in pairs[:400]]
    tok = SentencePieceTokenizer.train(src, tgt, SpmSettings(vocab_size=500))
    for line in tgt[:50]:
        assert tok.decode_target(tok.encode_target(line)) == line


# --- batching --------------------------------------------------------------------------


def test_batches_respect_budget_and_cover_every_example_once() -> None:
    sizes = torch.randint(1, 40, (500,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = token_batches(sizes, 120, seed=1, epoch=0)
    for batch in batches:
        assert len(batch) * max(sizes[i] for i in batch) <= 120
    flat = sorted(i for batch in batches for i in batch)
    assert flat == list(range(500))
    # Bucketed by length: a batch spans far less than the whole range of lengths.
    spreads = [max(sizes[i] for i in b) - min(sizes[i] for i in b) for b in batches]
    assert sum(spreads) / len(spreads) < 5


def test_batches_deterministic_per_epoch_and_shuffled_across_epochs() -> None:
    sizes = [5, 7, 3, 9, 5, 5, 2, 8, 6, 4] * 20
    first = token_batches(sizes, 30, seed=3, epoch=0)
    assert token_batches(sizes, 30, seed=3, epoch=0) == first
    assert token_batches(sizes, 30, seed=3, epoch=1) != first
    assert token_batches(sizes, 30, seed=4, epoch=0) != first


@pytest.mark.parametrize("world_size", [2, 3])
def test_batches_disjoint_across_ranks_and_equal_in_number(world_size: int) -> None:
    sizes = torch.randint(1, 30, (301,), generator=torch.Generator().manual_seed(1)).tolist()
    shards = [
        token_batches(sizes, 64, seed=0, epoch=2, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert len({len(shard) for shard in shards}) == 1
    seen = [i for shard in shards for batch in shard for i in batch]
    assert sorted(seen) == list(range(301))  # disjoint, and nothing dropped


def test_sentence_longer_than_budget_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="data.max_tokens=10"):
        token_batches([3, 11], 10)


def test_collate_shapes_bos_eos_and_padding() -> None:
    batch = collate([([5, 6, 3], [7, 8]), ([9, 3], [10])], pad_id=0, bos_id=2, eos_id=3)
    assert batch.src_ids.tolist() == [[5, 6, 3], [9, 3, 0]]
    assert batch.tgt_in.tolist() == [[2, 7, 8], [2, 10, 0]]
    assert batch.tgt_out.tolist() == [[7, 8, 3], [10, 3, 0]]


def test_local_hugging_face_datasets_nested_and_flat(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    from tasks.translation.data import read_hf_dataset

    nested = datasets.Dataset.from_dict(
        {"translation": [{"en": "Hello ", "de": "Hallo"}, {"en": "World", "de": "Welt"}]}
    )
    nested.save_to_disk(str(tmp_path / "nested"))
    pairs = read_hf_dataset(str(tmp_path / "nested"), "", "train", "en", "de")
    assert pairs == [("Hello", "Hallo"), ("World", "Welt")]
    flat = datasets.DatasetDict(
        {"validation": datasets.Dataset.from_dict({"en": ["a"], "de": ["b"]})}
    )
    flat.save_to_disk(str(tmp_path / "flat"))
    assert read_hf_dataset(str(tmp_path / "flat"), "", "validation", "en", "de") == [("a", "b")]
    with pytest.raises(DataError, match="has no split 'test'"):
        read_hf_dataset(str(tmp_path / "flat"), "", "test", "en", "de")
    with pytest.raises(DataError, match="expected a string under key 'fr'"):
        read_hf_dataset(str(tmp_path / "flat"), "", "validation", "en", "fr")
