"""An exception as one short line, for the model side's log lines and messages: compiler errors run to pages."""

from __future__ import annotations


def one_line(error: BaseException, limit: int = 200) -> str:
    """The error's type and the first non-empty line of its message, cut to `limit` characters."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
