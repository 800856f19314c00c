"""The tasks the command line knows, by the name in a config's ``task:`` key.

Each entry is ``"module:ConfigClass:TaskClass"``, imported only when that task is used, so
that one task's dependencies never slow down or break another's commands.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from unitransformer.errors import UserError

__all__ = ["TASKS", "resolve_task"]

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
