"""Errors every layer may raise or report, and how an exception is shown in one line."""

from __future__ import annotations

__all__ = ["NonFiniteError", "one_line"]


class NonFiniteError(FloatingPointError):
    """A training metric became NaN or infinite; the run should stop without saving."""


def one_line(e: BaseException) -> str:
    """An exception as one line for a user-facing message: its type and first line of text."""
    return f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
