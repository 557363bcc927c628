"""Write-to-temp-then-rename, so a failed stage never leaves a partial output file.

Temporary files are named ``.<name>.<random>.partial`` next to their target: no reader's glob
(``*.tif``, ``*.parquet``, ...) can pick one up, and :func:`clear_partials` removes the ones a
killed run left behind, with their side files (SQLite's ``.partial-journal``, ``-wal`` and
``-shm`` while a GeoPackage is written).

Fault injection for tests: with ``SPACENET7_KILL_BEFORE_RENAME=<glob>`` in the environment, the
process SIGKILLs itself after writing a temporary file whose target name matches the glob, just
before the rename: the worst moment for a kill (tests/test_bad_input.py). With
``SPACENET7_KILL_ONCE=<marker file>`` as well, only the first process to create the marker kills
itself, so that the work's next attempt (a Dask worker's retry, tests/test_cluster.py) goes through.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from spacenet7.errors import SN7DataError

log = logging.getLogger(__name__)
PARTIAL_SUFFIX = ".partial"
SIDE_FILES = ("-journal", "-wal", "-shm")  # SQLite's, next to a GeoPackage being written


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
        if (glob := os.environ.get("SPACENET7_KILL_BEFORE_RENAME")) and fnmatch.fnmatch(path.name, glob) and _first_kill():
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()
        for side in SIDE_FILES:
            Path(f"{tmp_path}{side}").unlink(missing_ok=True)


def _first_kill() -> bool:
    """Fault injection: no ``SPACENET7_KILL_ONCE`` marker, or this process created it just now."""
    marker = os.environ.get("SPACENET7_KILL_ONCE")
    if not marker:
        return True
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


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
    for pattern in (f".{name}.*{PARTIAL_SUFFIX}", *(f".{name}.*{PARTIAL_SUFFIX}{side}" for side in SIDE_FILES)):
        for p in folder.rglob(pattern):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            n += 1
    if n:
        log.info("removed %d partial file(s) left by an interrupted run under %s", n, folder)
    return n


def ensure_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove it writable, before any work is done.

    Raises:
        SN7DataError: one line naming the folder and the OS's reason (a path under a regular
            file, no permission, a read-only or full file system).
    """
    folder = Path(folder)
    for parent in (folder, *folder.parents):  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise SN7DataError(folder, f"cannot write output here: {parent} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=PARTIAL_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SN7DataError(folder, f"cannot write output here: {exc.strerror or exc}") from None
    return folder


def check_creatable_dir(folder: str | Path) -> Path:
    """Without creating anything, check that ``folder`` is a writable folder or could be made one
    (for the folders that another library creates before a stage starts: Hydra's run folder).

    Raises:
        SN7DataError: one line naming the folder: a path under a regular file, or a nearest
            existing folder that this user cannot write to.
    """
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise SN7DataError(folder, f"cannot write output here: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise SN7DataError(folder, f"cannot write output here: {parent} is not writable (read-only or no permission)")
            break
    return folder


def ensure_writable_file(path: str | Path) -> Path:
    """:func:`ensure_writable_dir` for the folder of an output file, which must not be a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise SN7DataError(path, "is a folder; expected an output file name")
    ensure_writable_dir(path.parent)
    return path
