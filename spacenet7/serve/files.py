"""Serving files from the folders the server was given, and nothing else.

A request path is refused (``None``, which the routes answer with 404) when it is absolute, has a
``..`` or an empty component, a backslash or a NUL, or resolves (following symlinks) outside its
root. Starlette has already percent-decoded the path, so ``%2e%2e`` and ``%2f`` arrive here as
``..`` and ``/``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


def safe_path(root: Path, relative: str) -> Path | None:
    """The existing regular file ``root/relative``, or ``None`` when the request reaches outside ``root``.

    Args:
        root: the served folder.
        relative: the request's path below the route, percent-decoded.
    """
    if not relative or "\\" in relative or "\x00" in relative:
        return None
    pure = PurePosixPath(relative)
    if pure.is_absolute() or any(part in ("", ".", "..") for part in relative.split("/")):
        return None
    base = root.resolve()
    try:
        target = (base / pure).resolve(strict=True)  # follows symlinks: a link out of root lands outside base
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target
