"""Month keys as people and GIS tools read them.

The pipeline keys every month ``YYYY-MM``. Imagery without a date (no SN7 name, no date in the
file name, no TIFF date tag) is ordered by the list it was given in and keyed from year ``0001``
(:func:`spacenet7.data.sn7.records_from_files`); those keys are shown as ``m01``, ``m02``, ...
(the position in the series) and carry no date.
"""

from __future__ import annotations

import datetime as dt

UNDATED_BEFORE = 1000
"""Month keys of a year before this are list positions of undated imagery, not dates."""


def is_dated(key: str) -> bool:
    """Whether a ``YYYY-MM`` key is a calendar month (not a list position of undated imagery)."""
    return int(str(key)[:4]) >= UNDATED_BEFORE


def month_label(key: str) -> str:
    """``2019-03`` -> ``2019-03``; an undated series' ``0001-03`` -> ``m03`` (``0002-01`` -> ``m13``)."""
    key = str(key)
    if is_dated(key):
        return key
    year, month = int(key[:4]), int(key[5:7])
    return f"m{(year - 1) * 12 + month:02d}"


def month_date(key: str) -> dt.date | None:
    """The first day of a ``YYYY-MM`` month; ``None`` for an undated series' keys."""
    key = str(key)
    return dt.date(int(key[:4]), int(key[5:7]), 1) if is_dated(key) else None
