"""The side-by-side benchmark suite: prints a table and rewrites benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/run.py                 # all rows, then RESULTS.md
    .venv/bin/python benchmarks/run.py --rows vit      # some rows, printed only
    .venv/bin/python benchmarks/run.py --quick         # 1 repeat, small shapes: a smoke run
    .venv/bin/python benchmarks/run.py --rows vit --set vit.dim=384 vit.num_heads=6  # own shapes

Every row runs ours and the peer in one process, same shapes, dtype and threads, alternating,
median of the repeats after warm-up. Ratio = peer time / our time (above 1: we are faster).
Each group of rows gets a fresh process, so that no row inherits another's allocations,
thread pools or kernel caches (row 4's peers bring their own OpenMP runtime, for one).
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import rows as R  # noqa: E402
from benchmarks import shapes  # noqa: E402
from benchmarks.decoding import decoding_rows  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    Row,
    format_table,
    machine_description,
    matmul_peak_flops,
    peak_rss_mib,
    time_pair,
    write_section,
)
from unitransformer.engine.runtime import keep_freed_memory  # noqa: E402


def attention_rows(repeats: int, quick: bool) -> list[Row]:
    out = []
    for shape in shapes.ATTENTION:
        dim, heads, batch, length = (shape[k] for k in ("dim", "heads", "batch", "length"))
        steps = R.attention_step(dim, heads, batch, length)
        for peer in ("torch.nn.MultiheadAttention", "timm Attention"):
            ours_s, peer_s = time_pair(steps["ours"], steps[peer], repeats)
            name = f"attention fwd+bwd B={batch} T={length} d={dim} h={heads}"
            out.append(Row(name, peer, ours_s, peer_s, batch * length, "tokens"))
    return out


def vit_train_variants(quick: bool) -> list[tuple[str, dict, dict]]:
    """(name, our step's options, timm's step's options) of the ViT training rows."""
    variants = [
        ("fp32, eager", {"bf16": False}, {"bf16": False}),
        ("bf16 autocast, eager", {"bf16": True}, {"bf16": True}),
    ]
    if not quick:  # Compiling takes a minute or two per model on 2 cores.
        variants += [
            ("fp32, compiled", {"bf16": False, "compile": True}, {"bf16": False, "compile": True}),
            ("bf16 autocast, compiled", {"bf16": True, "compile": True}, {"bf16": True, "compile": True}),
        ]  # fmt: skip
    # What each library does when asked for nothing: `unitransformer train` resolves
    # precision "auto" (bf16 on AVX-512 BF16 / AMX CPUs) and builds the engine's fused AdamW;
    # timm's train.py runs float32 (AMP is opt-in) with torch's AdamW.
    ours_default = {"bf16": R.default_bf16(), "make_optimizer": R.engine_adamw}
    variants.append(("default path", ours_default, {"bf16": False}))
    return variants


def side_by_side(
    name: str, peer: str, steps: tuple[Callable, Callable], repeats: int, items: int, unit: str
) -> Row:
    """Times ``steps`` (ours, the peer's) alternating, as one `Row`."""
    ours_s, peer_s = time_pair(*steps, repeats)
    return Row(name, peer, ours_s, peer_s, items, unit)


def vit_train_rows(repeats: int, quick: bool) -> list[Row]:
    batch = R.VIT["batch"]
    sizes = (512,) if quick else (2048, 4096)
    # The fp32 peak is measured before the group and after each row; every row is scored
    # against the best of them, so that a slow moment of the VM at one measurement does not
    # lower the denominator (and lift MFU) for the whole group.
    peak = matmul_peak_flops(torch.float32, sizes)
    out = []
    for variant, ours_kw, peer_kw in vit_train_variants(quick):
        ours, peer = R.ours_vit(), R.timm_vit()
        steps = (R.vit_train_step(ours, batch, **ours_kw), R.vit_train_step(peer, batch, **peer_kw))
        name = f"ViT training step, {variant}"
        row = side_by_side(name, "timm VisionTransformer", steps, repeats, batch, "images")
        peak = max(peak, matmul_peak_flops(torch.float32, sizes))
        if variant == "default path":
            row.notes["ours"] = f"{'bf16' if ours_kw['bf16'] else 'fp32'}, engine AdamW"
            row.notes["timm"] = "fp32, torch AdamW"
        out.append(row)
    flops = R.vit_step_flops(R.ours_vit(), batch)
    for row in out:
        mfu = f"ours {flops / row.ours_s / peak:.0%}, timm {flops / row.peer_s / peak:.0%}"
        # MFU first, as before: the notes read "MFU ...; fp32 matmul peak ...; ours ...".
        row.notes = {
            "MFU (fp32 matmul peak)": mfu,
            "fp32 matmul peak": f"{peak / 1e9:.0f} GFLOP/s",
        } | row.notes
    return out


def seq2seq_rows(repeats: int, quick: bool) -> list[Row]:
    out = []
    tokens = R.SEQ2SEQ["batch"] * R.SEQ2SEQ["length"]
    # Like for like in fp32 and bf16; then each library's default path: ours resolves
    # precision "auto" and uses the engine's fused AdamW and the task's loss with its own
    # backward; Hugging Face's Trainer runs float32 unless told otherwise.
    ours_default = {
        "bf16": R.default_bf16(),
        "make_optimizer": R.engine_adamw,
        "loss_fn": R.engine_smoothed_loss,
    }
    variants = [
        ("fp32", {"bf16": False}, {"bf16": False}),
        ("bf16 autocast", {"bf16": True}, {"bf16": True}),
        ("default path", ours_default, {"bf16": False}),
    ]
    for variant, ours_kw, peer_kw in variants:
        torch.manual_seed(0)
        ours, peer = R.ours_seq2seq(), R.marian_seq2seq()
        steps = (
            R.seq2seq_train_step(ours, False, **ours_kw),
            R.seq2seq_train_step(peer, True, **peer_kw),
        )
        name = f"seq2seq training step, {variant}"
        row = side_by_side(name, "HF MarianMTModel", steps, repeats, tokens, "target tokens")
        if variant == "default path":
            row.notes["ours"] = f"{'bf16' if ours_kw['bf16'] else 'fp32'}, engine AdamW, own loss"
            row.notes["Marian"] = "fp32, torch AdamW, F.cross_entropy"
        out.append(row)
    return out


def vit_inference_rows(repeats: int, quick: bool) -> list[Row]:
    batch = R.VIT["inference_batch"]
    out = []
    for bf16 in (False, True):
        ours, peer = R.ours_vit(), R.timm_vit()
        ours_s, peer_s = time_pair(
            R.vit_inference(ours, batch, bf16), R.vit_inference(peer, batch, bf16), repeats
        )
        dtype = "bf16 autocast" if bf16 else "fp32"
        out.append(
            Row(
                f"ViT inference, batch {batch}, {dtype}",
                "timm VisionTransformer",
                ours_s,
                peer_s,
                batch,
                "images",
            )
        )
    return out


def memory_rows(quick: bool) -> list[Row]:
    """Peak RSS of a few training steps, each in a fresh process (rows 2 and 3)."""
    steps = 2
    batch = R.VIT["batch"]
    setups = {
        "ViT training step fp32": (
            f"R.vit_train_step(R.ours_vit(), {batch}, False)",
            f"R.vit_train_step(R.timm_vit(), {batch}, False)",
            "timm VisionTransformer",
        ),
        "seq2seq training step fp32": (
            "R.seq2seq_train_step(R.ours_seq2seq(), False, False)",
            "R.seq2seq_train_step(R.marian_seq2seq(), True, False)",
            "HF MarianMTModel",
        ),
    }
    out = []
    # Both peers' libraries are imported in every process, so the baseline is the same.
    prelude = (
        "import torch, timm, transformers; torch.set_num_threads(1)\n"
        f"from benchmarks import rows as R, shapes; shapes.apply({shapes.ACTIVE!r})"
    )
    for name, (ours, peer, peer_name) in setups.items():
        ours_mib = peak_rss_mib(prelude, f"s = {ours}\nfor _ in range({steps}): s()")
        peer_mib = peak_rss_mib(prelude, f"s = {peer}\nfor _ in range({steps}): s()")
        row = Row(f"peak memory, {name}", peer_name, ours_mib, peer_mib, 1, "MiB")
        row.notes["peak RSS"] = f"ours {ours_mib:.0f} MiB, peer {peer_mib:.0f} MiB"
        out.append(row)
    return out


SUITES: dict[str, Callable[[int, bool], list[Row]]] = {
    "attention": attention_rows,
    "vit": vit_train_rows,
    "seq2seq": seq2seq_rows,
    "inference": vit_inference_rows,
    "decoding": decoding_rows,
    "memory": lambda repeats, quick: memory_rows(quick),
}


def _suite_rows(
    name: str, repeats: int, quick: bool, threads: int, overrides: list[str]
) -> list[Row]:
    """One group of rows, run in the fresh process that `run_suite` starts."""
    shapes.apply((shapes.QUICK if quick else []) + overrides)
    torch.set_num_threads(threads)
    # As `unitransformer` commands do; process-wide, so the peers get the same malloc.
    keep_freed_memory()
    return SUITES[name](repeats, quick)


def run_suite(
    name: str, repeats: int, quick: bool, threads: int, overrides: list[str] | None = None
) -> list[Row]:
    """The rows of group ``name``, measured in a fresh (spawned) Python process, on the
    suite's shapes with ``overrides`` (`benchmarks.shapes`) applied."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_suite_rows, (name, repeats, quick, threads, overrides or []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", choices=list(SUITES), default=list(SUITES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 1 repeat; no RESULTS.md")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="GROUP.KEY=VALUE", dest="overrides",
        help="shapes of one's own, e.g. vit.dim=384 (benchmarks/shapes.py); no RESULTS.md",
    )  # fmt: skip
    args = parser.parse_args(argv)
    quick = shapes.QUICK if args.quick else []
    try:
        changed = shapes.describe(quick + args.overrides)
    except ValueError as error:
        parser.error(str(error))
    repeats = 1 if args.quick else args.repeats
    rows: list[Row] = []
    for name in args.rows:
        group = run_suite(name, repeats, args.quick, args.threads, args.overrides)
        print("\n".join(format_table(group).splitlines()[2:]), flush=True)
        rows += group
    table = format_table(rows)
    print(f"{changed}\n{table}")
    # Only a full run on the suite's shapes rewrites RESULTS.md: one table, one date, every
    # row measured together.
    if not args.quick and not args.overrides and set(args.rows) == set(SUITES):
        command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_results(table, command.strip(), repeats, args.threads)
    return 0


def write_results(table: str, command: str, repeats: int, threads: int) -> None:
    """Replaces the suite's section of RESULTS.md, keeping the other sections."""
    write_section(
        "suite",
        f"## Side-by-side suite\n\nCommand: `{command}`  \n"
        f"Date: {datetime.date.today().isoformat()}  \n"
        f"Machine: {machine_description(threads, children=True)}  \n"
        f"Median of {repeats} alternating runs after 2 warm-up runs each; each group of rows in "
        f"a fresh process. Row 4 (beam search, beam 5): row 3's model (d=256, 3+3 layers, "
        f"vocabulary 8,000), one set of weights, 100 random sources of 12-28 tokens, every "
        f"engine forced to 25 decoder steps.\n\n{table}",
    )


if __name__ == "__main__":
    sys.exit(main())
