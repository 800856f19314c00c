"""The refusal of foreign features our models cannot represent exactly."""

from __future__ import annotations

from unitransformer.errors import UserError

__all__ = ["UnsupportedModelError", "require"]


class UnsupportedModelError(UserError, ValueError):
    """A foreign model (or checkpoint) uses a feature our models cannot represent exactly."""


def require(condition: bool, model: str, problem: str) -> None:
    """Raises `UnsupportedModelError` saying what of ``model`` we cannot represent."""
    if not condition:
        raise UnsupportedModelError(f"cannot convert {model}: {problem}")
