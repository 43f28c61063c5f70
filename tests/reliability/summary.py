"""The one-line verdict of each fault, kept for the end of the run (see
``pytest_terminal_summary`` in this suite's conftest)."""
from __future__ import annotations

LINES: list[str] = []


def record(line: str) -> None:
    LINES.append(line)
