"""Row 4: beam search, ours against Hugging Face ``generate`` and CTranslate2 (float32, int8).

    .venv/bin/python benchmarks/run.py --rows decoding   # the rows (part of the whole suite)
    .venv/bin/python benchmarks/decoding.py              # where our beam search spends its time

One model, the same weights everywhere: row 3's translation model (d=256, 3+3 post-LN layers,
8 heads, FFN 1024, vocabulary 8,000) is built as a Hugging Face ``MarianMTModel``, converted to
ours with `seq2seq_from_marian`, and ours exported with `export_ctranslate2`. 100 source
sentences of 12 to 28 random tokens, beam 5, one batch. Every engine runs the same number of
decoder steps: eos is forbidden until the last step (our ``min_len`` with ``max_len_a=0``,
Hugging Face's ``min_new_tokens = max_new_tokens``, CTranslate2's ``min_decoding_length =
max_decoding_length``), so a faster engine cannot win by stopping earlier.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import rows as R  # noqa: E402
from benchmarks.harness import Row, time_pair, time_pair_alone  # noqa: E402
from benchmarks.shapes import DECODING  # noqa: E402
from tasks.translation.export import export_ctranslate2  # noqa: E402
from unitransformer.decoding import beam_search  # noqa: E402
from unitransformer.engine.runtime import keep_freed_memory  # noqa: E402
from unitransformer.interop import seq2seq_from_marian  # noqa: E402

SOURCE_LENGTHS = (12, 28)
SPECIALS = {0: "<pad>", 1: "<s>", 2: "</s>", 3: "<unk>"}  # row 3's Marian ids: pad, start, eos


def vocabulary(size: int) -> list[str]:
    """Token strings for CTranslate2: the specials at row 3's ids, then ``w4``, ``w5``..."""
    return [SPECIALS.get(i, f"w{i}") for i in range(size)]


def sources(count: int, seed: int = 0) -> list[list[int]]:
    """Random source sentences, each ending with eos (id 2), as our tokenizers write them."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(SOURCE_LENGTHS[0], SOURCE_LENGTHS[1] + 1, (count,), generator=g)
    vocab = R.SEQ2SEQ["vocab"]
    return [[*torch.randint(4, vocab, (int(n),), generator=g).tolist(), 2] for n in lengths]


def padded(batch: list[list[int]], pad: int = 0) -> torch.Tensor:
    """``[B, S]`` right-padded ids."""
    rows = [torch.tensor(s) for s in batch]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad)


def ours_decoder(model: torch.nn.Module, src: torch.Tensor, bf16: bool = False) -> Callable:
    """Our `beam_search`: ``output_tokens`` tokens, then the eos that the limit forces."""
    beam, n = DECODING["beam"], DECODING["output_tokens"]

    def run() -> list[list[int]]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            found = beam_search(
                model, src, beam, length_penalty=1.0, min_len=n, max_len_a=0, max_len_b=n,
            )  # fmt: skip
        return [hyps[0].tokens for hyps in found]

    return run


def hf_decoder(marian: torch.nn.Module, src: torch.Tensor) -> Callable:
    """Hugging Face ``generate``: ``output_tokens + 1`` tokens, eos never allowed."""
    beam, n = DECODING["beam"], DECODING["output_tokens"]
    mask = src.ne(0).long()

    def run() -> list[list[int]]:
        with torch.inference_mode():
            out = marian.generate(
                input_ids=src, attention_mask=mask, num_beams=beam, do_sample=False,
                max_new_tokens=n + 1, min_new_tokens=n + 1,
                length_penalty=1.0, suppress_tokens=[0, 1],
            )  # fmt: skip
        return [row[1 : n + 1] for row in out.tolist()]  # drop the start token

    return run


def ct2_decoder(translator: Any, batch: list[list[int]], vocab: list[str]) -> Callable:
    """CTranslate2's ``translate_batch``: ``output_tokens + 1`` decoder steps, eos never allowed."""
    beam, n = DECODING["beam"], DECODING["output_tokens"]
    tokens = [[vocab[i] for i in s[:-1]] for s in batch]  # it appends eos itself
    index = {token: i for i, token in enumerate(vocab)}

    def run() -> list[list[int]]:
        results = translator.translate_batch(
            tokens, beam_size=beam, length_penalty=1.0, max_batch_size=0,
            max_decoding_length=n + 1, min_decoding_length=n + 1,
        )  # fmt: skip
        return [[index[t] for t in r.hypotheses[0][:n]] for r in results]

    return run


def build(folder: Path) -> dict[str, Any]:
    """The engines' inputs over one set of weights: Marian, ours, and our model exported to
    CTranslate2 in float32 and int8 (folders; `ct2_translator` loads one)."""
    torch.manual_seed(0)
    marian = R.marian_seq2seq().eval()
    # Decoding settings come from the call alone: no forced final token, nothing banned.
    marian.generation_config.forced_eos_token_id = None
    marian.generation_config.bad_words_ids = None
    ours = seq2seq_from_marian(marian)
    vocab = vocabulary(R.SEQ2SEQ["vocab"])
    engines: dict[str, Any] = {"marian": marian, "ours": ours, "vocab": vocab}
    for quantization in ("float32", "int8"):
        engines[quantization] = export_ctranslate2(
            ours, folder / quantization, vocab, vocab, quantization=quantization
        )
    return engines


def ct2_translator(path: Path, quantization: str) -> Any:
    """A CTranslate2 translator on the CPU with as many threads as torch uses."""
    import ctranslate2

    return ctranslate2.Translator(
        str(path), device="cpu", compute_type=quantization, intra_threads=torch.get_num_threads()
    )


@contextlib.contextmanager
def ct2_session(
    path: Path, quantization: str, batch: list[list[int]], vocab: list[str]
) -> Iterator[Callable[[], list[list[int]]]]:
    """A CTranslate2 translator's `ct2_decoder`, alive (with its thread pool) only inside.

    What it yields holds the translator through a box that closing empties, so that the
    translator and its threads are gone on exit even while the caller keeps the callable.
    """
    box = {"run": ct2_decoder(ct2_translator(path, quantization), batch, vocab)}
    try:
        yield lambda: box["run"]()
    finally:
        box.clear()
        gc.collect()


def lengths(outputs: list[list[int]]) -> str:
    """The shortest and longest output: proof that no engine stopped early."""
    sizes = [len(tokens) for tokens in outputs]
    return f"{min(sizes)}-{max(sizes)} tokens"


def measure(engines: dict[str, Any], count: int, repeats: int) -> list[Row]:
    """The rows: ours (float32, and each library's default path) against each peer.

    A CTranslate2 translator exists only for its own timed run, and our OpenMP pool is ended
    before it (`time_pair_alone`): two live pools on two cores make libgomp put both sides'
    workers to sleep between parallel regions (RESULTS.md, row 4's notes).
    """
    batch = sources(count)
    src = padded(batch)
    # `translate` decodes with the run's train.precision, "auto" unless set (bf16 autocast on
    # AVX-512 BF16 / AMX CPUs); generate and CTranslate2 run what they are given.
    ours = {
        "fp32": ours_decoder(engines["ours"], src),
        "ours default path": ours_decoder(engines["ours"], src, bf16=R.default_bf16()),
    }
    rows: dict[tuple[str, str], Row] = {}
    hf = hf_decoder(engines["marian"], src)
    # How each peer is opened for a run; generate shares torch's pool: nothing to keep apart.
    peers: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
        "HF generate fp32": lambda: contextlib.nullcontext(hf),
        **{
            f"CTranslate2 {q}": functools.partial(
                ct2_session, engines[q], q, batch, engines["vocab"]
            )
            for q in ("float32", "int8")
        },
    }
    for peer_name, open_peer in peers.items():
        for path, run in ours.items():
            if peer_name.startswith("HF"):
                ours_s, peer_s = time_pair(run, hf, repeats)
            else:
                ours_s, peer_s = time_pair_alone(run, open_peer, repeats)
            name = f"beam search, beam {DECODING['beam']}, {count} sentences, {path}"
            row = Row(name, peer_name, ours_s, peer_s, count, "sentences")
            if path == "fp32":
                # Best hypotheses are not compared: at the forced end ours ranks with the eos
                # log-prob, the peers with that of a last regular token (tests/test_export.py
                # compares searches).
                with open_peer() as peer:
                    row.notes["output length"] = f"ours {lengths(run())}, peer {lengths(peer())}"
            else:
                row.notes["ours"] = "bf16 autocast" if R.default_bf16() else "fp32"
            rows[path, peer_name] = row
    return [rows[key] for key in sorted(rows, key=lambda key: list(ours).index(key[0]))]


def decoding_rows(repeats: int, quick: bool) -> list[Row]:
    """The suite's row 4 (`benchmarks/run.py`): ``DECODING["sentences"]`` (10 with ``--quick``)."""
    with tempfile.TemporaryDirectory() as folder:
        engines = build(Path(folder))
        return measure(engines, DECODING["sentences"], repeats)


def profile(engines: dict[str, Any], count: int) -> str:
    """torch.profiler's table of one of our beam searches, by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run = ours_decoder(engines["ours"], padded(sources(count)))
    run()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def main(argv: list[str] | None = None) -> int:
    """Prints where one of our beam searches spends its time (the rows are `decoding_rows`)."""
    parser = argparse.ArgumentParser(description="Profile of our beam search (row 4's model).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sentences", type=int, default=DECODING["sentences"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the command line does
    with tempfile.TemporaryDirectory() as folder:
        print(profile(build(Path(folder)), args.sentences))
    return 0


if __name__ == "__main__":
    sys.exit(main())
