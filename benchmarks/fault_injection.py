"""Fault injection: SIGKILL a training run at random moments, resume it each time, compare weights.

    .venv/bin/python benchmarks/fault_injection.py                # 12 kills; rewrites RESULTS.md
    .venv/bin/python benchmarks/fault_injection.py --kills 3 --no-write

The engine's toy task (``tests/engine_toy.py``) trains in a subprocess, on CPU, in deterministic
mode, always in the same run directory. Each round starts it (resuming whatever is there) and
kills it with SIGKILL:

- ``random``: once the child has done a random number of batches (0 to a few), a random fraction
  of a batch later; or, for target 0, at a random moment of its start-up;
- ``mid-write``: while a checkpoint is being written. The child writes each checkpoint file in
  two halves with a pause between them (a hook this script installs in its own child process, so
  the engine is unchanged; ``fault_child.py``), and the kill lands inside that window: a truncated file in the
  checkpoint's temporary directory;
- ``corrupt``: a ``mid-write`` kill, after which the newest complete checkpoint is truncated on
  disk, as a failing disk would; the next start must name it and use the previous one.

Before each start the script works out on its own (SHA-256 of each file against ``meta.json``)
which checkpoint is the last complete one; the child's "resumed from ... (step N)" line must name
it. After the kills a last child trains to the end, and its final weights must equal, bit for
bit, those of an uninterrupted run of the same config.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().with_name("fault_child.py")
# One thread: float sums are bit-identical across processes only if they split work alike.
OVERRIDES = [
    "data.num_examples=32",
    "train.deterministic=true",
    "train.num_threads=1",
    "train.log_every=1",
    "train.checkpoint_every=3",
    "train.keep_last=4",
    "train.tensorboard=false",
    "eval.every=0",
    "schedule.warmup_steps=2",
]
RESUMED = re.compile(r"resumed from (\S+) \(step (\d+)\)")
MODES = ("mid-write", "random", "corrupt", "random")
TIMEOUT_S = 120.0


@dataclass
class Round:
    """One start of the child and what happened to it."""

    mode: str
    phase: str = ""  # Where the kill landed: startup, training, checkpoint-write, or finished.
    batches: int = 0
    expected_resume: int | None = None
    resumed_from: int | None = None
    resume_ok: bool | None = None  # None: killed before it got that far.
    corrupted: str = ""
    corruption_named: bool | None = None


@dataclass
class FaultReport:
    """All rounds, and whether the final weights equal the uninterrupted run's."""

    rounds: list[Round] = field(default_factory=list)
    final_step: int = -1
    weights_equal: bool = False
    mismatched: list[str] = field(default_factory=list)
    leftover_temporaries: int = 0

    @property
    def kills(self) -> list[Round]:
        """The rounds that ended in a SIGKILL."""
        return [r for r in self.rounds if r.phase != "finished"]

    @property
    def failures(self) -> list[str]:
        """Every broken promise, in words; empty when the run survived everything."""
        out = [
            f"round {i}: resumed from {r.resumed_from}, expected {r.expected_resume}"
            for i, r in enumerate(self.rounds)
            if r.resume_ok is False
        ]
        out += [
            f"{r.corrupted}: not named on resume"
            for r in self.rounds
            if r.corruption_named is False
        ]
        if not self.weights_equal:
            out.append(f"final weights differ: {self.mismatched or 'no final checkpoint'}")
        return out

    def counts(self) -> dict[str, int]:
        """The figures RESULTS.md states."""
        kills = self.kills
        return {
            "kills": len(kills),
            "kills_at_startup": sum(r.phase == "startup" for r in kills),
            "kills_in_training": sum(r.phase == "training" for r in kills),
            "kills_in_checkpoint_write": sum(r.phase == "checkpoint-write" for r in kills),
            "checkpoints_corrupted": sum(bool(r.corrupted) for r in self.rounds),
            "corruptions_named_and_skipped": sum(bool(r.corruption_named) for r in self.rounds),
            "resumes_checked": sum(r.resume_ok is not None for r in self.rounds),
            "resumes_correct": sum(bool(r.resume_ok) for r in self.rounds),
            "survived": int(not self.failures),
        }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def complete_checkpoints(run_dir: Path) -> list[int]:
    """Steps whose checkpoint directory holds every file with its recorded SHA-256, oldest first.

    Written here rather than taken from the engine, so that the engine is checked against an
    independent reading of the run directory.
    """
    steps = []
    for directory in sorted((run_dir / "checkpoints").glob("step_*")):
        try:
            files = json.loads((directory / "meta.json").read_text())["files"]
            ok = all(_sha256(directory / n) == digest for n, digest in files.items())
        except (OSError, ValueError, KeyError):
            ok = False
        if ok:
            steps.append(int(directory.name.removeprefix("step_")))
    return steps


def _start(run_dir: Path, overrides: list[str], log: Path, **env: str) -> subprocess.Popen:
    environ = dict(os.environ, OMP_NUM_THREADS="1", **env)
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
    command = [sys.executable, str(CHILD), str(run_dir), *overrides]
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=environ, stdout=out, stderr=subprocess.STDOUT)


def _wait_until(process: subprocess.Popen, ready: object, log: Path) -> bool:
    """Polls ``ready()`` until true (True) or the child exits (False)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():  # type: ignore[operator]
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the child made no progress in {TIMEOUT_S} s; see {log}")
        time.sleep(0.002)
    return True


def _batches(progress: Path) -> int:
    try:
        return progress.stat().st_size
    except FileNotFoundError:
        return 0


def _kill_at_a_random_moment(
    process: subprocess.Popen,
    mode: str,
    paths: tuple[Path, Path, Path],
    rng: random.Random,
    settings: dict[str, float],
) -> bool:
    """Waits for this round's moment and sends SIGKILL; False if the child finished first."""
    progress, run_dir, log = paths
    if mode == "random":
        target = rng.randint(0, int(settings["batches_per_round"]))
        if target == 0:
            time.sleep(rng.uniform(0.0, settings["startup_s"]))
        elif not _wait_until(process, lambda: _batches(progress) >= target, log):
            return False
        else:
            time.sleep(rng.uniform(0.0, settings["batch_s"]))
    else:
        folder, pattern = run_dir / "checkpoints", f".step_*.tmp-{process.pid}"
        before = {d.name for d in folder.glob("step_*")}
        # One checkpoint of this round completes first, so that the run moves on; a corruption
        # also needs an older complete checkpoint to fall back to.
        needed = 2 if mode == "corrupt" and not complete_checkpoints(run_dir) else 1

        def writing() -> bool:
            new = {d.name for d in folder.glob("step_*")} - before
            return len(new) >= needed and any(folder.glob(pattern))

        if not _wait_until(process, writing, log):
            return False
        time.sleep(rng.uniform(0.0, 2 * settings["write_pause_s"]))
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    return process.wait() == -signal.SIGKILL  # It may have exited on its own just before.


def _phase(process: subprocess.Popen, progress: Path, run_dir: Path) -> str:
    if list((run_dir / "checkpoints").glob(f".step_*.tmp-{process.pid}")):
        return "checkpoint-write"
    return "training" if _batches(progress) else "startup"


def _corrupt_newest(run_dir: Path) -> str:
    """Truncates the newest complete checkpoint's weights if an older one exists; its path."""
    steps = complete_checkpoints(run_dir)
    if len(steps) < 2:
        return ""
    victim = run_dir / "checkpoints" / f"step_{steps[-1]:08d}" / "model.safetensors"
    victim.write_bytes(victim.read_bytes()[:100])
    return str(victim)


def _check_resume(record: Round, log_text: str, pending: Round | None) -> Round | None:
    """Fills in how the child resumed; returns the corruption round still waiting to be named."""
    match = RESUMED.search(log_text)
    record.resumed_from = int(match.group(2)) if match else None
    if match or record.batches > 0:  # It got past loading the checkpoint.
        record.resume_ok = record.resumed_from == record.expected_resume
    if pending is None:
        return None
    if f"{pending.corrupted}: checksum mismatch" in log_text:
        pending.corruption_named = True
        return None
    if record.resume_ok is not None:  # It loaded a checkpoint without a word about the bad one.
        pending.corruption_named = False
        return None
    return pending


def _one_round(
    index: int,
    paths: tuple[Path, Path],
    overrides: list[str],
    rng: random.Random,
    settings: dict[str, float],
    pending: Round | None,
    kill: bool,
) -> tuple[Round, Round | None]:
    """Starts the child once, kills it (unless ``kill`` is False) and checks its resume."""
    work, run_dir = paths
    mode = MODES[index % len(MODES)] if kill else "final"
    progress, log = work / f"progress-{index}", work / f"round-{index}.log"
    complete = complete_checkpoints(run_dir)
    record = Round(mode, expected_resume=complete[-1] if complete else None)
    pause = str(settings["write_pause_s"]) if mode in ("mid-write", "corrupt") else "0"
    process = _start(run_dir, overrides, log, FAULT_PROGRESS=str(progress), FAULT_WRITE_PAUSE=pause)
    if kill and _kill_at_a_random_moment(process, mode, (progress, run_dir, log), rng, settings):
        record.phase = _phase(process, progress, run_dir)
    else:
        process.wait(timeout=TIMEOUT_S)
        record.phase = "finished"
        if process.returncode != 0:
            raise RuntimeError(f"the child failed ({process.returncode}); see {log}")
    record.batches = _batches(progress)
    pending = _check_resume(record, log.read_text(errors="replace"), pending)
    if mode == "corrupt" and record.phase != "finished":
        record.corrupted = _corrupt_newest(run_dir)
        pending = record if record.corrupted else pending
    return record, pending


def _final_weights(run_dir: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def run_faults(
    work: Path, kills: int = 12, seed: int = 0, max_steps: int = 90, write_pause_s: float = 0.25
) -> FaultReport:
    """Runs the whole experiment in ``work`` and returns what happened.

    Args:
        work: An empty scratch directory (run directories and child logs go there).
        kills: SIGKILLs to inject before the last, uninterrupted resume.
        seed: Seed of the kill moments (the training seed is fixed).
        max_steps: Optimizer steps of the training run.
        write_pause_s: Pause in the middle of each checkpoint file in the mid-write rounds.
    """
    rng = random.Random(seed)
    overrides = [*OVERRIDES, f"train.max_steps={max_steps}", "data.sleep=0.02"]
    settings = {
        "batches_per_round": 7,  # Up to two checkpoints (every 3 steps) per round.
        "batch_s": 0.03,
        "startup_s": 2.0,
        "write_pause_s": write_pause_s,
    }
    reference, killed = work / "uninterrupted", work / "killed"
    process = _start(reference, overrides, work / "uninterrupted.log")
    if process.wait(timeout=TIMEOUT_S * 3) != 0:
        raise RuntimeError(f"the uninterrupted run failed; see {work / 'uninterrupted.log'}")
    report, pending = FaultReport(), None
    while len(report.kills) < kills:
        index = len(report.rounds)
        record, pending = _one_round(
            index, (work, killed), overrides, rng, settings, pending, kill=True
        )
        report.rounds.append(record)
        if record.phase == "finished":
            raise RuntimeError("the run finished before every kill was injected; raise max_steps")
    index = len(report.rounds)
    record, pending = _one_round(index, (work, killed), overrides, rng, settings, pending, False)
    report.rounds.append(record)
    report.final_step = max(complete_checkpoints(killed), default=-1)
    if report.final_step == max_steps:
        ours, theirs = _final_weights(killed, max_steps), _final_weights(reference, max_steps)
        report.mismatched = sorted(
            k for k in theirs if k not in ours or not ours[k].equal(theirs[k])
        )
        report.weights_equal = ours.keys() == theirs.keys() and not report.mismatched
    report.leftover_temporaries = len(list((killed / "checkpoints").glob(".step_*.tmp-*")))
    return report


def _table(report: FaultReport) -> str:
    lines = ["| round | mode | kill landed in | batches | expected resume | resumed from | ok |"]
    lines.append("|---|---|---|---|---|---|---|")
    for i, r in enumerate(report.rounds):
        ok = {None: "not reached", True: "yes", False: "NO"}[r.resume_ok]
        note = f" (then truncated {Path(r.corrupted).parent.name})" if r.corrupted else ""
        lines.append(
            f"| {i} | {r.mode} | {r.phase}{note} | {r.batches} | {r.expected_resume} "
            f"| {r.resumed_from} | {ok} |"
        )
    return "\n".join(lines)


def _section(report: FaultReport, command: str, seconds: float) -> str:
    from benchmarks.harness import machine_description

    c = report.counts()
    return f"""## Fault injection (issue #7)

Command: `{command}`
Date: {datetime.date.today().isoformat()}
Machine: {machine_description()}
Wall time: {seconds:.0f} s

**{c["kills"]} SIGKILLs injected, {c["kills"] if c["survived"] else 0} survived**: {c["kills_at_startup"]} during start-up,
{c["kills_in_training"]} during training steps, {c["kills_in_checkpoint_write"]} while a checkpoint was being written.
{c["checkpoints_corrupted"]} complete checkpoints truncated on disk afterwards, {c["corruptions_named_and_skipped"]} named
in a warning and skipped for the previous one. {c["resumes_correct"]} of {c["resumes_checked"]} resumes started from the
last complete checkpoint (rounds killed before loading one are "not reached"). Final weights after
all resumes equal the uninterrupted run's bit for bit: **{"yes" if report.weights_equal else "NO"}**
(step {report.final_step}). Temporary checkpoint directories left behind by killed writers:
{report.leftover_temporaries} (ignored by the loader).

{_table(report)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=12, help="SIGKILLs to inject (12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (0)")
    parser.add_argument("--max-steps", type=int, default=90, help="training steps (90)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--no-write", action="store_true", help="do not rewrite RESULTS.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fault-injection-"))
    start = time.perf_counter()
    try:
        report = run_faults(work, args.kills, args.seed, args.max_steps)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    print(_table(report))
    print(json.dumps(report.counts()))
    for failure in report.failures:
        print(f"FAILED: {failure}")
    if not args.no_write:
        sys.path.insert(0, str(ROOT))
        from benchmarks.harness import write_section

        command = "python benchmarks/fault_injection.py " + " ".join(argv or sys.argv[1:])
        write_section("faults", _section(report, command.strip(), seconds))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
