"""Write-to-temp-then-rename, so a failed stage never leaves a partial output file.

Temporary files are named ``.<name>.<random>.partial`` next to their target: no reader's glob
(``*.tif``, ``*.parquet``, ...) can pick one up, and :func:`clear_partials` removes the ones a
killed run left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
PARTIAL_SUFFIX = ".partial"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    On any exception the temporary file (or folder) is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)  # writers (GDAL, pyogrio) want to create the file themselves
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


def clear_partials(folder: str | Path, name: str = "*") -> int:
    """Remove the temporary files that a killed run left under ``folder``; returns how many.

    Args:
        folder: searched recursively.
        name: only the partials of outputs with this name (a glob; every output by default).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.rglob(f".{name}.*{PARTIAL_SUFFIX}"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    if n:
        log.info("removed %d partial file(s) left by an interrupted run under %s", n, folder)
    return n
