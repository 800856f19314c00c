"""The tasks the command line knows, by the name in a config's ``task:`` key.

Each entry is ``"module:ConfigClass:TaskClass"``, imported only when that task is used, so
that one task's dependencies never slow down or break another's commands.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from unitransformer.engine.batchnorm import load_for_use
from unitransformer.engine.checkpoint import (
    CONFIG_FILE,
    checkpoint_dirs,
    read_run_config,
)
from unitransformer.engine.loader import apply_overrides, config_from_dict
from unitransformer.errors import UserError

__all__ = ["TASKS", "load_run", "load_trained", "resolve_task"]

TASKS: dict[str, str] = {
    "image_classification": (
        "tasks.image_classification.task:ImageClassificationConfig:ImageClassificationTask"
    ),
    "translation": "tasks.translation.task:TranslationConfig:TranslationTask",
}


def resolve_task(name: Any, where: str = "config") -> tuple[type, type]:
    """The config dataclass and task class registered under ``name``.

    Args:
        name: The value of the config's ``task:`` key.
        where: The file it came from, for messages.

    Raises:
        UserError: No ``task:`` key, an unknown task (with the closest name), or a registered
            task whose module is not installed. Import errors inside the module propagate.
    """
    if name is None:
        raise UserError(
            f"{where}: missing key 'task' (expected one of: {', '.join(sorted(TASKS))})"
        )
    if not isinstance(name, str) or name not in TASKS:
        close = difflib.get_close_matches(str(name), list(TASKS), n=1)
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else f"expected one of: {', '.join(sorted(TASKS))}"
        )
        raise UserError(f"{where}: unknown task {name!r} ({hint})")
    module_name, config_name, task_name = TASKS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Only the task's own module being absent is "not installed"; a missing dependency
        # inside it is a real error that must surface as it is.
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise
        raise UserError(
            f"{where}: task {name!r} is not available (no module {module_name})"
        ) from None
    return getattr(module, config_name), getattr(module, task_name)


def load_run(
    run_dir: str | Path, expect_task: str | None = None, overrides: Sequence[str] = ()
) -> tuple[Any, Any]:
    """The saved config of a run directory and its task object (assets not loaded yet).

    Args:
        run_dir: A directory written by ``unitransformer train``.
        expect_task: The task a command needs (``classify`` needs image_classification);
            a run of another task is refused with a message saying so.
        overrides: Dotted ``key=value`` changes for this use only (the run's ``config.yaml``
            is untouched), limited to the config class's ``EVALUATE_OVERRIDES``.

    Raises:
        UserError: Not a run directory, a run of another task, a config that no longer
            validates, or an override of a key that is not allowed.
    """
    data = read_run_config(run_dir)
    source = str(Path(run_dir) / CONFIG_FILE)
    if expect_task is not None and data.get("task") != expect_task:
        raise UserError(
            f"{source}: this is a {data.get('task')!r} run; the command needs a {expect_task!r} run"
        )
    config_cls, task_cls = resolve_task(data.get("task"), where=source)
    allowed = getattr(config_cls, "EVALUATE_OVERRIDES", ())
    if overrides and not allowed:
        raise UserError(f"{source}: a {data.get('task')!r} run takes no overrides here")
    lines = apply_overrides(config_cls, data, overrides, allowed)
    config = config_from_dict(config_cls, data, source=source, lines=lines)
    return config, task_cls(config)


def load_trained(
    run_dir: str | Path, which: str = "best", expect_task: str | None = None
) -> tuple[Any, nn.Module]:
    """The task (assets loaded) and the trained model, in eval mode, of a run directory.

    Everything comes from the run directory: ``evaluate``, ``translate``, ``classify`` and
    ``attention`` need nothing else.

    Raises:
        UserError: As `load_run`, or when the run has no weights ``which`` yet.
    """
    _, task = load_run(run_dir, expect_task)
    if not checkpoint_dirs(Path(run_dir)):
        # Checked before `prepare`, which would otherwise build the assets of an empty run.
        raise UserError(f"{run_dir}: no checkpoint yet (train it first)")
    task.prepare(Path(run_dir))
    model = task.build_model()
    load_for_use(task, run_dir, model, which)  # Averaged weights get fitting BatchNorm stats.
    return task, model.eval()
