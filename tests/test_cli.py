"""The `unitransformer` command line: train/evaluate/average, resume checks, one-line errors."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tasks import cli, registry

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """\
task: toy
data: {num_examples: 16}
train: {max_steps: 3, checkpoint_every: 1, log_every: 1, tensorboard: false, deterministic: true}
eval: {every: 2, metric: accuracy, average_last: 2}
"""


@pytest.fixture(autouse=True)
def _toy_task(monkeypatch):
    monkeypatch.setitem(registry.TASKS, "toy", "engine_toy:ToyConfig:ToyTask")
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


def _config(tmp_path: Path, text: str = CONFIG) -> str:
    path = tmp_path / "toy.yaml"
    path.write_text(text)
    return str(path)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_train_evaluate_average_and_resume_check(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert cli.main(["train", _config(tmp_path), "optim.lr=0.01", "--run-dir", run]) == 0
    out = capsys.readouterr().out
    assert "optim.lr: 0.001 -> 0.01" in out and "train.max_steps: 1000 -> 3" in out
    assert (Path(run) / "config.yaml").is_file()

    assert cli.main(["evaluate", run, "--checkpoint", "last"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["checkpoint"] == "last" and 0.0 <= metrics["accuracy"] <= 1.0

    assert cli.main(["average-checkpoints", run, "--last", "2"]) == 0
    assert "averaged the last 2" in capsys.readouterr().out

    # Same run directory, different config: refused, naming the differing key...
    assert cli.main(["train", _config(tmp_path), "optim.lr=0.02", "--run-dir", run]) == 2
    line = _error_line(capsys)
    assert "optim.lr: 0.01 (run) vs 0.02 (now)" in line and "--force" in line
    # ...unless forced; a longer budget resumes from step 3 instead of starting over.
    argv = ["train", _config(tmp_path), "optim.lr=0.02", "train.max_steps=4", "--run-dir", run]
    assert cli.main([*argv, "--force"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "step 4/4" in out and "step 1/4" not in out


def test_default_run_dir_is_runs_slash_config_stem(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", _config(tmp_path), "train.max_steps=1"]) == 0
    assert (tmp_path / "runs" / "toy" / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        (CONFIG, ["optim.lrr=1"], "did you mean 'optim.lr'"),
        (CONFIG, ["train.max_steps=-1"], "train.max_steps=-1 is out of range (expected >= 1)"),
        (CONFIG, ["optim.lr=fast"], "optim.lr='fast' has the wrong type (expected a number)"),
        ("train: {max_steps: 3}\n", [], "missing key 'task'"),
        ("task: toyy\n", [], "unknown task 'toyy' (did you mean 'toy'?)"),
    ],
)
def test_config_mistakes_are_one_line(tmp_path, capsys, text, overrides, expected):
    argv = ["train", _config(tmp_path, text), *overrides, "--run-dir", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    assert expected in _error_line(capsys)
    assert not (tmp_path / "r").exists()  # Nothing is written before the config is valid.


def test_run_dir_mistakes_are_one_line(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in _error_line(capsys)
    assert cli.main(["average-checkpoints", str(tmp_path), "--last", "0"]) == 2
    assert "--last 0" in _error_line(capsys)


@pytest.mark.parametrize("command", ["train", "evaluate", "average-checkpoints"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: unitransformer {command}" in capsys.readouterr().out


def test_task_commands_are_optional_but_their_import_errors_surface(tmp_path, monkeypatch):
    (tmp_path / "broken_commands.py").write_text("import a_module_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "TASK_COMMANDS", ("tasks.no_such_task.commands",))
    assert "train" in cli.build_parser().format_help()
    monkeypatch.setattr(cli, "TASK_COMMANDS", ("broken_commands",))
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist"):
        cli.build_parser()


def test_the_console_entry_point_prints_one_line_and_exits_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    missing = str(tmp_path / "missing.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "train", missing],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: {missing}: cannot read the config file (No such file or directory)"
    )


def test_overrides_may_follow_the_options(tmp_path, monkeypatch, capsys):
    from tasks import cli

    seen = {}
    # build_parser looks `_train` up when main() runs, so the stand-in receives the args.
    monkeypatch.setattr(cli, "_train", lambda args: seen.update(vars(args)) or 0)
    argv = ["train", "c.yaml", "optim.lr=0.1", "--run-dir", str(tmp_path), "train.seed=3"]
    assert cli.main(argv) == 0
    assert seen["overrides"] == ["optim.lr=0.1", "train.seed=3"]
    assert seen["run_dir"] == str(tmp_path)
    monkeypatch.setattr(cli, "_evaluate", lambda args: seen.update(vars(args)) or 0)
    assert cli.main(["evaluate", str(tmp_path), "decode.beam=1", "--split", "test"]) == 0
    assert seen["overrides"] == ["decode.beam=1"] and seen["split"] == "test"


def test_evaluate_overrides_need_a_task_that_allows_them(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert cli.main(["train", _config(tmp_path), "train.max_steps=1", "--run-dir", run]) == 0
    assert cli.main(["evaluate", run, "optim.lr=0.5"]) == 2
    assert "'toy' run takes no overrides" in _error_line(capsys)


def test_every_command_keeps_freed_memory_before_it_runs(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("kept"))
    monkeypatch.setattr(cli, "_evaluate", lambda args: calls.append("evaluate") or 0)
    assert cli.main(["evaluate", str(tmp_path)]) == 0
    assert calls == ["kept", "evaluate"]  # the command's tensors reuse pages from the start


def test_a_run_from_before_a_key_existed_resumes_while_that_key_keeps_its_default(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", _config(tmp_path), "--run-dir", str(run)]
    assert cli.main(argv) == 0
    # The run's config as an older version of the library wrote it: no data.sleep yet.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["data"]["sleep"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "resuming" in capsys.readouterr().out
    # The resume wrote the key into the run's config; changing it is a difference as ever.
    assert cli.main([*argv, "data.sleep=0.5"]) == 2
    assert "data.sleep: 0.0 (run) vs 0.5 (now)" in _error_line(capsys)


def test_log_lines_follow_sys_stderr_when_it_is_swapped(monkeypatch):
    # `main` runs many times in one process (tests, notebooks); its handler, made by the first
    # call, must write to the stderr of the moment, not to a stream closed since.
    cli._configure_logging()
    for _ in range(2):
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        logging.getLogger("unitransformer").warning("a note")
        assert stream.getvalue() == "WARNING: a note\n"
