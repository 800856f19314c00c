"""The training engine: schedules, EMA, checkpoints, exact resume after SIGKILL, DDP on gloo."""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from engine_toy import ToyConfig, ToyTask

from unitransformer.engine import (
    CheckpointError,
    ScheduleConfig,
    Trainer,
    TrainingStoppedError,
    load_config,
    load_weights,
    monitor,
)
from unitransformer.engine import trainer as trainer_module
from unitransformer.engine.checkpoint import checkpoint_dirs, load_state, load_tensors, read_best
from unitransformer.engine.monitor import Progress
from unitransformer.engine.optim import EMA, lr_factor
from unitransformer.engine.runtime import resolve_precision
from unitransformer.errors import UserError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# Small and fast: 4 batches of 8 per epoch, so runs cross epoch boundaries.
BASE = [
    "data.num_examples=32",
    "train.deterministic=true",
    "train.precision=fp32",  # exact comparisons below; ``auto`` may pick bf16
    "train.log_every=1",
    "train.checkpoint_every=1",
    "train.keep_last=100",
    "eval.every=0",
    "schedule.warmup_steps=2",
    "train.tensorboard=false",
]


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


def _config(*overrides: str) -> ToyConfig:
    return load_config(ToyConfig, None, [*BASE, *overrides])


def _train(run_dir: Path, *overrides: str) -> dict:
    config = _config(*overrides)
    return Trainer(ToyTask(config), config, run_dir).fit()


def _last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_tensors(checkpoint_dirs(run_dir)[-1])


def _env() -> dict[str, str]:
    # The same thread count as this process: float sums are only bit-identical across the
    # killed subprocess and the in-process runs when both split the work the same way.
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    return env


def _toy_process(run_dir: Path, overrides: list[str], **env: str) -> subprocess.Popen:
    command = [sys.executable, str(TESTS / "engine_toy.py"), str(run_dir), *BASE, *overrides]
    return subprocess.Popen(
        command, env={**_env(), **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def test_schedules_warm_up_then_follow_their_shape():
    cosine = ScheduleConfig("cosine", warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_factor(s, cosine, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(20, cosine, 20) == pytest.approx(0.1)
    assert lr_factor(12, cosine, 20) == pytest.approx(0.55)  # Halfway through the decay.
    inverse = ScheduleConfig("inverse_sqrt", warmup_steps=4)
    assert lr_factor(15, inverse, 100) == pytest.approx(0.5)  # sqrt(4 / 16)
    constant = ScheduleConfig("constant", warmup_steps=2)
    assert [lr_factor(s, constant, 10) for s in (0, 1, 9)] == [0.5, 1.0, 1.0]


def test_a_time_budget_moves_the_cosine_when_it_runs_ahead_of_the_steps():
    cosine = ScheduleConfig("cosine", warmup_steps=4, min_lr_ratio=0.1)
    # Step 6 of 104 is 2% into the decay; half the time budget spent puts it halfway.
    assert lr_factor(6, cosine, 104, time_fraction=0.5) == pytest.approx(0.55)
    assert lr_factor(54, cosine, 104, time_fraction=0.1) == pytest.approx(0.55)  # steps lead
    assert lr_factor(6, cosine, 104, time_fraction=3.0) == pytest.approx(0.1)  # past the end
    assert lr_factor(1, cosine, 104, time_fraction=0.9) == 0.5  # warmup counts steps only


def test_a_time_budget_stops_training_decays_the_lr_and_sums_over_resumes(
    tmp_path, capsys, monkeypatch
):
    # A clock that moves 10 ms each time the trainer reads it: a loaded machine cannot blur it.
    ticks = itertools.count()
    fake = SimpleNamespace(perf_counter=lambda: next(ticks) * 0.01)
    monkeypatch.setattr(trainer_module, "time", fake)
    steps = ["train.max_steps=1000", "optim.lr=0.01"]
    first = _train(tmp_path, *steps, "train.max_seconds=1")
    assert 5 <= first["step"] < 1000 and "time budget reached" in first["stopped"]
    assert first["train_seconds"] >= 1
    assert checkpoint_dirs(tmp_path)[-1].name == f"step_{first['step']:08d}"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["split"] == "train"]
    # Step-wise, 1000 steps would keep the lr near its peak; the clock has nearly ended it.
    assert lr_factor(first["step"] - 1, _config(*steps).schedule, 1000) > 0.99
    assert lrs[-1] < 0.1 * 0.01 and lrs[2:] == sorted(lrs[2:], reverse=True)
    capsys.readouterr()
    again = _train(tmp_path, *steps, "train.max_seconds=1")
    assert again["step"] == first["step"] and "already trained" in capsys.readouterr().out
    more = _train(tmp_path, *steps, "train.max_seconds=2")  # a larger budget resumes
    assert more["step"] > first["step"] and more["train_seconds"] >= 2


def test_ema_moves_towards_the_weights_by_one_minus_decay():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.75)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
    ema.update(model)
    assert torch.allclose(ema.state_dict()["weight"], start + 1.0)


def test_training_writes_a_complete_run_directory(tmp_path):
    summary = _train(
        tmp_path,
        "train.max_steps=6",
        "eval.every=3",
        "train.ema_decay=0.5",
        "eval.average_last=2",
        "train.keep_last=2",
        "train.tensorboard=true",
    )
    assert summary["step"] == 6 and summary["best"] is not None
    for name in ("config.yaml", "labels.txt", "metrics.jsonl", "metrics.csv", "curves.png"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "val"}
    assert {"loss", "lr", "items_per_s"} <= set(rows[0])
    best_step = read_best(tmp_path)["step"]
    kept = {int(d.name[5:]) for d in checkpoint_dirs(tmp_path)}
    assert kept == {5, 6} | {best_step}  # The last two, and the best.
    model = ToyTask(_config()).build_model()
    for which in ("best", "last", "averaged", "ema"):
        load_weights(tmp_path, model, which)
    last = _last_weights(tmp_path)
    averaged = load_tensors(tmp_path / "checkpoints" / "averaged")
    previous = load_tensors(checkpoint_dirs(tmp_path)[-2])
    key = "head.weight"
    assert torch.allclose(averaged[key], (last[key] + previous[key]) / 2)


def test_gradient_accumulation_equals_the_whole_batch(tmp_path):
    # eps=1 makes Adam's step proportional to the gradient, so a mis-scaled sum would show.
    steps = ["train.max_steps=3", "model.dropout=0.0", "optim.eps=1.0", "optim.lr=0.1"]
    _train(tmp_path / "whole", *steps)
    _train(
        tmp_path / "accum",
        *steps,
        "data.batch_size=4",
        "train.grad_accum=2",
    )
    whole, accum = _last_weights(tmp_path / "whole"), _last_weights(tmp_path / "accum")
    for key in whole:
        torch.testing.assert_close(accum[key], whole[key], rtol=1e-5, atol=1e-6)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, caplog):
    steps = ["train.max_steps=10"]  # Dropout stays on: the RNG state must resume too.
    _train(tmp_path / "straight", *steps)
    killed = tmp_path / "killed"
    process = _toy_process(killed, [*steps, "data.sleep=0.2"])
    deadline = time.monotonic() + 90
    while len(checkpoint_dirs(killed)) < 4 and process.poll() is None:
        assert time.monotonic() < deadline, "the training process made no progress"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stdout.read().decode()
    stopped_at = load_state(checkpoint_dirs(killed)[-1])["loop"]["step"]
    assert 4 <= stopped_at < 10
    with caplog.at_level(logging.INFO, logger="unitransformer"):
        summary = _train(killed, *steps)
    assert f"(step {stopped_at})" in caplog.text
    assert summary["step"] == 10
    straight, resumed = _last_weights(tmp_path / "straight"), _last_weights(killed)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_training_time_is_saved_and_summed_over_resumes(tmp_path):
    slow = "data.sleep=0.05"  # each batch takes at least 50 ms
    first = _train(tmp_path, "train.max_steps=3", slow)
    saved = load_state(checkpoint_dirs(tmp_path)[-1])["loop"]["train_seconds"]
    assert 3 * 0.05 <= saved <= first["train_seconds"]
    second = _train(tmp_path, "train.max_steps=6", slow)  # resumes at step 3
    assert second["train_seconds"] >= saved + 3 * 0.05
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    times = [r["train_seconds"] for r in rows if r["split"] == "train"]
    assert len(times) == 6 and times == sorted(times) and times[3] > saved


def test_a_corrupted_checkpoint_is_named_and_the_previous_one_used(tmp_path, caplog):
    _train(tmp_path, "train.max_steps=3")  # The final evaluation makes step 3 the best.
    step2, step3 = checkpoint_dirs(tmp_path)[-2:]
    newest = step3 / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # Truncated, as by a full disk.
    model = ToyTask(_config()).build_model()
    with pytest.raises(CheckpointError, match="checksum mismatch") as info:
        load_weights(tmp_path, model, "best")
    assert str(newest) in str(info.value)
    with caplog.at_level(logging.INFO, logger="unitransformer"):
        load_weights(tmp_path, model, "last")
        assert str(newest) in caplog.text and "checksum mismatch" in caplog.text
        for key, value in load_tensors(step2).items():
            assert torch.equal(model.state_dict()[key], value)
        summary = _train(tmp_path, "train.max_steps=4")
    assert "(step 2)" in caplog.text  # Resumed from the previous good checkpoint.
    assert summary["step"] == 4
    load_weights(tmp_path, model, "best")  # Step 3 was trained and written again.


def test_nonfinite_losses_skip_steps_then_stop_keeping_the_last_checkpoint(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="unitransformer"):
        summary = _train(tmp_path / "skip", "train.max_steps=4", "data.nan_batches=[1]")
    assert summary["step"] == 4  # One batch skipped, four good steps still taken.
    assert "non-finite loss" in caplog.text
    assert all(torch.isfinite(v).all() for v in _last_weights(tmp_path / "skip").values())
    stop = tmp_path / "stop"
    with pytest.raises(TrainingStoppedError, match="2 non-finite losses in a row") as info:
        _train(stop, "train.max_steps=8", "data.nan_batches=[2,3]", "train.max_nonfinite=2")
    assert "step_00000002" in str(info.value)
    assert [d.name for d in checkpoint_dirs(stop)] == ["step_00000001", "step_00000002"]


def test_early_stopping_keeps_the_best_checkpoint(tmp_path):
    # The loss falls, so with mode=max every evaluation after the first is "no better".
    summary = _train(
        tmp_path,
        "train.max_steps=10",
        "eval.every=1",
        "eval.metric=loss",
        "eval.mode=max",
        "eval.early_stopping=2",
        "train.keep_last=1",
        "optim.lr=0.01",
    )
    assert summary["step"] == 3 and "early stopping" in summary["stopped"]
    assert summary["best"]["step"] == 1 and read_best(tmp_path)["step"] == 1
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step_00000001", "step_00000003"]


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_cuda(tmp_path):
    summary = _train(tmp_path / "bf16", "train.max_steps=2", "train.precision=bf16")
    assert summary["step"] == 2
    weights = _last_weights(tmp_path / "bf16")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="fp16.*needs CUDA"):
            _train(tmp_path / "fp16", "train.max_steps=2", "train.precision=fp16")


def test_an_unwritable_run_directory_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="not writable"):
        _train(blocker / "run", "train.max_steps=2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path, fsdp):
    # eps=1: Adam's step follows the gradient (the key bias's gradient is only rounding noise).
    steps = ["train.max_steps=3", "model.dropout=0.0", "optim.eps=1.0", "optim.lr=0.1"]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    ranks = [
        _toy_process(
            tmp_path / "ddp", [*steps, f"train.fsdp={fsdp}"], RANK=str(r), LOCAL_RANK=str(r), **env
        )
        for r in range(2)
    ]
    _train(tmp_path / "single", *steps)
    for process in ranks:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output.decode()
    single, ddp = _last_weights(tmp_path / "single"), _last_weights(tmp_path / "ddp")
    assert single.keys() == ddp.keys()
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-6)
    # The optimizer state was gathered whole, so a resume could continue from it.
    moments = load_state(checkpoint_dirs(tmp_path / "ddp")[-1])["optimizer"]["state"]
    assert len(moments) == len(single)


@pytest.mark.slow
def test_ranks_with_different_clocks_stop_at_the_same_step_of_a_time_budget(tmp_path):
    # Rank 1's fake clock runs twice as fast as rank 0's. Were each rank to stop on its own
    # clock, rank 0 would wait forever in the next step's all-reduce for rank 1.
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    steps = ["train.max_steps=1000", "train.max_seconds=1"]
    ranks = [
        _toy_process(tmp_path, steps, RANK=str(r), LOCAL_RANK=str(r), TOY_CLOCK_TICK="0.01", **env)
        for r in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=120)[0].decode() for p in ranks]
    finally:
        for process in ranks:
            process.kill()
    for process, output in zip(ranks, outputs, strict=True):
        assert process.returncode == 0, output
    stop = int(outputs[0].split("time budget reached at step ")[1].split(":")[0])
    assert 2 <= stop < 1000 and checkpoint_dirs(tmp_path)[-1].name == f"step_{stop:08d}"


def test_the_engine_imports_nothing_from_tasks():
    code = (
        "import sys, unitransformer.engine\n"
        "bad = [m for m in sys.modules if m == 'tasks' or m.startswith('tasks.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], env=_env(), check=True, cwd=ROOT)


def test_compiled_training_matches_eager_and_saves_plain_names(tmp_path):
    # No dropout: inductor draws its own random numbers, so only a dropout-free run can match.
    steps = ["train.max_steps=3", "model.dropout=0.0"]
    eager = _train(tmp_path / "eager", *steps)
    compiled = _train(tmp_path / "compiled", *steps, "train.compile=true")
    assert eager["step"] == compiled["step"] == 3
    plain, fused = _last_weights(tmp_path / "eager"), _last_weights(tmp_path / "compiled")
    # torch.compile's wrapper must not leak into the checkpoint format ("_orig_mod." keys).
    assert plain.keys() == fused.keys()
    for key in plain:
        torch.testing.assert_close(plain[key], fused[key], atol=1e-4, rtol=1e-4)


def test_auto_precision_picks_bf16_only_on_native_bf16_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"  # an explicit choice is kept
    assert resolve_precision("auto", torch.device("meta")) == "fp32"


def test_the_log_names_the_precision_and_why_auto_fell_back_to_fp32(tmp_path, monkeypatch, caplog):
    # A CPU without native bf16 runs several times slower; the run's log must say why.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with caplog.at_level(logging.INFO, logger="unitransformer"):
        _train(tmp_path / "auto", "train.max_steps=1", "train.precision=auto")
    assert "device cpu, precision fp32" in caplog.text
    assert "no AVX-512 BF16 or AMX" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unitransformer"):
        _train(tmp_path / "bf16", "train.max_steps=1", "train.precision=bf16")
    assert "device cpu, precision bf16" in caplog.text
    assert "no AVX-512 BF16" not in caplog.text  # an explicit choice needs no excuse


def test_progress_eta_counts_from_the_first_line_not_from_start_up(monkeypatch, capsys):
    clock = iter([0.0, 100.0, 110.0])  # construction; step 100 after 90 s of start-up; step 200
    monkeypatch.setattr(monitor.time, "perf_counter", lambda: next(clock))
    progress = Progress(start=0, total=1000, enabled=True)
    progress.update(100, 1.0, 1e-3, 50.0, print_line=True)
    progress.update(200, 1.0, 1e-3, 50.0, print_line=True)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    # 100 steps in the last 10 s: 800 steps to go take 80 s (from the start: 440 s).
    assert last.endswith("eta 0:01:20"), last
    progress.time_left = lambda: 30.0  # a time budget that ends before the steps do
    clock = iter([120.0])
    progress.update(300, 1.0, 1e-3, 50.0, print_line=True)
    assert capsys.readouterr().out.strip().endswith("eta 0:00:30")


def test_keep_freed_memory_reuses_freed_pages_instead_of_faulting_new_ones():
    # In a fresh process: the setting is process-wide. 48 MiB is above glibc's largest dynamic
    # mmap threshold (32 MiB), so by default every such tensor is a fresh mapping that faults
    # in all of its 12,288 pages; once freed memory is kept, the same pages are reused.
    script = """
import resource, torch
from unitransformer.engine.runtime import keep_freed_memory
def faults():
    torch.empty(12 * 2**20).fill_(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.empty(12 * 2**20).fill_(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults(), keep_freed_memory(), faults())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    default, took, kept = int(out[0]), out[1], int(out[2])
    assert took == "True"
    # Default: each of the 10 faults in its 12,288 pages; kept: at most the heap's first growth.
    assert default >= 10 * 12_288 and kept <= 2 * 12_288
    # A user's own malloc tuning in the environment wins.
    env["MALLOC_ARENA_MAX"] = "2"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out[1] == "False"
