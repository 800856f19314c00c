"""The exception a user can fix: the command line prints its message as one line, no traceback."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake in the user's input (a config key, a data file, a run directory).

    The message must name the file, line or key and say what was expected.
    """
