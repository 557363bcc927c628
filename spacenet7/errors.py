"""Errors that the CLI reports as one clear line (no traceback)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any


class SN7Error(Exception):
    """A user-facing error: bad input, bad config, or a failed precondition."""


class SN7DataError(SN7Error):
    """A data file is missing, misnamed, malformed or inconsistent."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def check(ok: bool, stage: str, message: str) -> None:
    """Knob validation at compose time: raise one line naming the stage and the key."""
    if not ok:
        raise SN7Error(f"{stage}: {message}")


def choice(value: Any, enum: type[StrEnum], stage: str | None, key: str) -> Any:
    """``value`` as a member of ``enum`` (dataclasses built directly from Python get strings); the error
    names ``stage`` first unless it is ``None`` (settings shared by several stages, such as ``input``)."""
    try:
        return enum(value)
    except ValueError:
        prefix = "" if stage is None else f"{stage}: "
        raise SN7Error(f"{prefix}{key}={value!r} must be one of {[m.value for m in enum]}") from None


def os_error_line(exc: OSError) -> str:
    """``<path>: <reason>`` for an OSError (GDAL's first message line when the OS gave none)."""
    reason = exc.strerror or str(exc).splitlines()[0][:200] or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason
