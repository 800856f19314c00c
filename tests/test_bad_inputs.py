"""Bad input of issue #7 that no other test file covers, each through the real command line.

Covered elsewhere: parallel files of different lengths, invalid UTF-8, NUL, BOM, CRLF,
whitespace-only and very long lines (test_translation_data.py); every bad image
(test_image_data.py); unknown keys and wrong types (test_config.py, test_cli.py); a run of the
other task (test_run_loading.py); an unwritable run directory (test_engine.py); a corrupted
checkpoint and NaN losses (test_engine.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasks import cli, registry
from unitransformer.engine import checkpoint as ckpt
from unitransformer.engine import load_weights

ROOT = Path(__file__).resolve().parents[1]
TRANSLATION = str(ROOT / "configs" / "demo" / "synthetic_translation.yaml")
IMAGES = str(ROOT / "configs" / "image_classification" / "digits_vit.yaml")
TOY = "task: toy\ndata: {num_examples: 16}\ntrain: {max_steps: 3, checkpoint_every: 1, log_every: 1, tensorboard: false}\neval: {every: 0}\n"


@pytest.fixture(autouse=True)
def _toy_task(monkeypatch):
    monkeypatch.setitem(registry.TASKS, "toy", "engine_toy:ToyConfig:ToyTask")
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


def _toy_config(tmp_path: Path) -> str:
    path = tmp_path / "toy.yaml"
    path.write_text(TOY)
    return str(path)


@pytest.mark.parametrize(
    ("config", "overrides", "named"),
    [
        (TRANSLATION, ["data.path={missing}"], "{missing}/train.en: file not found"),
        (
            IMAGES,
            ["data.source=parquet", "data.path={missing}.parquet"],
            "no such parquet file {missing}.parquet",
        ),
        (IMAGES, ["data.source=imagefolder", "data.path={missing}"], "{missing}"),
    ],
    ids=["translation-text", "images-parquet", "images-folder"],
)
def test_a_missing_data_path_is_one_line_naming_it(tmp_path, capsys, config, overrides, named):
    missing = str(tmp_path / "no-such-data")
    argv = [o.format(missing=missing) for o in overrides]
    run = tmp_path / "run"
    assert cli.main(["train", config, *argv, "--run-dir", str(run)]) == 2
    assert named.format(missing=missing) in _one_error_line(capsys)
    assert not ckpt.checkpoint_dirs(run)


@pytest.mark.parametrize("config", [TRANSLATION, IMAGES], ids=["translation", "images"])
def test_a_negative_learning_rate_is_refused_before_anything_is_written(tmp_path, capsys, config):
    run = tmp_path / "run"
    assert cli.main(["train", config, "optim.lr=-0.001", "--run-dir", str(run)]) == 2
    assert "optim.lr=-0.001 is out of range (expected > 0)" in _one_error_line(capsys)
    assert not run.exists()


@pytest.mark.parametrize("content", [b"", b"  \n\t\n\r\n"], ids=["zero-bytes", "blank-lines"])
def test_parallel_files_without_a_sentence_are_one_clear_error(tmp_path, capsys, content):
    data = tmp_path / "data"
    data.mkdir()
    for lang in ("en", "de"):
        (data / f"train.{lang}").write_bytes(content)
    argv = ["train", TRANSLATION, f"data.path={data}", "--run-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    line = _one_error_line(capsys)
    assert (
        f"{data}: the training split 'train' (en-de) has no pair with both sides non-empty" in line
    )


def _disk_fills_up_after(monkeypatch, good_writes: int) -> None:
    """The checkpoint writer hits ENOSPC (half a file on disk) after ``good_writes`` files."""
    real, calls = ckpt.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) > good_writes:
            Path(filename).write_bytes(b"\0" * 10)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, filename, metadata)

    monkeypatch.setattr(ckpt, "save_file", save_file)


def test_a_disk_filling_up_mid_training_is_one_error_keeping_the_last_checkpoint(
    tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    _disk_fills_up_after(monkeypatch, good_writes=1)  # Step 1 is written, step 2 is not.
    assert cli.main(["train", _toy_config(tmp_path), "--run-dir", str(run)]) == 2
    line = _one_error_line(capsys)
    assert "step_00000002" in line and os.strerror(errno.ENOSPC) in line
    assert [d.name for d in ckpt.checkpoint_dirs(run)] == ["step_00000001"]
    from engine_toy import ToyConfig, ToyTask

    load_weights(run, ToyTask(ToyConfig()).build_model(), "last")
    monkeypatch.undo()  # Space is back: the run resumes from step 1 and finishes.
    monkeypatch.setitem(registry.TASKS, "toy", "engine_toy:ToyConfig:ToyTask")
    assert cli.main(["train", _toy_config(tmp_path), "--run-dir", str(run)]) == 0
    assert ckpt.checkpoint_dirs(run)[-1].name == "step_00000003"


def test_a_full_run_directory_is_reported_before_training_starts(tmp_path):
    # RLIMIT_FSIZE=0 makes every write to a file fail, as a full disk does (EFBIG for ENOSPC).
    script = f"""
import resource, signal, sys
import engine_toy  # Imported first: torch writes caches while it loads.
from tasks import cli, registry
registry.TASKS["toy"] = "engine_toy:ToyConfig:ToyTask"
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
sys.exit(cli.main(["train", {_toy_config(tmp_path)!r}, "--run-dir", {str(tmp_path / "run")!r}]))
"""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {tmp_path / 'run'}: run directory is not writable (File too large)"]
    assert "step " not in result.stdout  # Not one training step was spent.
    assert not ckpt.checkpoint_dirs(tmp_path / "run")


class _CreatesAFile:
    """A pickle payload: unpickling it calls ``open(path, "w")``, creating the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_planted_pickle_in_state_pt_is_refused_and_never_runs(tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "planted-code-ran"
    assert (
        cli.main(["train", _toy_config(tmp_path), "train.max_steps=2", "--run-dir", str(run)]) == 0
    )
    newest = ckpt.checkpoint_dirs(run)[-1]
    torch.save({"loop": _CreatesAFile(marker)}, newest / "state.pt")
    # The attacker rewrites the checksums too, so only the loader itself stands in the way.
    meta = json.loads((newest / "meta.json").read_text())
    meta["files"]["state.pt"] = hashlib.sha256((newest / "state.pt").read_bytes()).hexdigest()
    (newest / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    argv = ["train", _toy_config(tmp_path), "train.max_steps=3", "--run-dir", str(run), "--force"]
    assert cli.main(argv) == 2
    assert str(newest / "state.pt") in _one_error_line(capsys)
    assert not marker.exists()
