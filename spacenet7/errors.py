"""Errors that the CLI reports as one clear line (no traceback)."""

from __future__ import annotations

from pathlib import Path


class SN7Error(Exception):
    """A user-facing error: bad input, bad config, or a failed precondition."""


class SN7DataError(SN7Error):
    """A data file is missing, misnamed, malformed or inconsistent."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
