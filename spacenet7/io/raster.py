"""Raster helpers: checked opening, Cloud-Optimized GeoTIFF writing, grids and windows."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from spacenet7.errors import SN7DataError
from spacenet7.io.atomic import atomic_path

# what GDAL raises for a failed write: rasterio's own errors, or a CPLE_* one (CPLE_FileIOError on a full disk)
WRITE_ERRORS: tuple[type[Exception], ...] = (rasterio.errors.RasterioError, CPLE_BaseError)


def open_raster(path: str | Path, *, require_crs: bool = True, bands: int | None = None) -> rasterio.io.DatasetReader:
    """Open a raster for reading, turning every failure into one clear :class:`SN7DataError`.

    Args:
        path: GeoTIFF path.
        require_crs: raise if the file has no CRS.
        bands: if given, the exact band count the file must have.

    Returns:
        An open ``rasterio`` dataset (use it as a context manager).
    """
    path = Path(path)
    if not path.exists():
        raise SN7DataError(path, "file not found")
    try:
        ds = rasterio.open(path)
    except RasterioIOError as exc:
        raise SN7DataError(path, f"not a readable raster ({_short(exc)})") from None
    if require_crs and ds.crs is None:
        ds.close()
        raise SN7DataError(path, "raster has no CRS (expected a georeferenced GeoTIFF)")
    if bands is not None and ds.count != bands:
        count = ds.count
        ds.close()
        raise SN7DataError(path, f"expected {bands} bands, found {count}")
    return ds


def read_checked(ds: rasterio.io.DatasetReader, *args: Any, **kwargs: Any) -> np.ndarray:
    """``ds.read`` that reports truncated or corrupt files as :class:`SN7DataError`."""
    try:
        return ds.read(*args, **kwargs)
    except (RasterioIOError, rasterio.errors.RasterioError) as exc:
        raise SN7DataError(ds.name, f"truncated or corrupt raster ({_short(exc)})") from None


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]


def cog_profile(profile: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A GTiff profile for tiled, compressed writing (later copied to a COG)."""
    out = {
        "driver": "GTiff",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
    }
    for key in ("crs", "transform", "width", "height", "count", "dtype", "nodata"):
        if key in profile:
            out[key] = profile[key]
    out.update(overrides)
    return out


def write_raster(
    path: str | Path,
    array: np.ndarray,
    profile: dict[str, Any],
    descriptions: tuple[str, ...] | None = None,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write a (bands, H, W) array with ``profile`` (and dataset ``tags``) to a temporary file, then rename it into place."""
    try:
        with c_stderr_kept_on_success(), atomic_path(path) as tmp:
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(array)
                if descriptions:
                    dst.descriptions = descriptions
                if tags:
                    dst.update_tags(**tags)
    except WRITE_ERRORS as exc:
        raise SN7DataError(path, write_problem(path, exc)) from None
    return Path(path)


def write_problem(path: str | Path, exc: Exception) -> str:
    """Why GDAL could not write ``path``, in words: its messages ("TIFFWriteDirectory...") rarely say."""
    import shutil

    try:
        if shutil.disk_usage(Path(path).parent).free < 16 * 2**20:
            return "could not be written: No space left on device"
    except OSError:
        pass
    return f"could not be written ({_short(exc)})"


@contextlib.contextmanager
def c_stderr_kept_on_success() -> Iterator[None]:
    """Hold what C code writes to file descriptor 2 while the block runs; write it out when the block succeeds.

    libtiff prints its own lines for a failed write ("_tiffWriteProc: No space left on device.", once per
    strip) straight to the descriptor, past GDAL's and rasterio's error handlers; the failure itself becomes
    one :class:`SN7DataError` line, so on failure they are dropped. Python's own ``sys.stderr`` (progress
    bars, log lines) is flushed first and is not held otherwise: it writes to the same descriptor.
    """
    import os
    import sys
    import tempfile

    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a daemon): nothing to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok and held.tell():
                held.seek(0)
                os.write(2, held.read())


def to_cog(src: str | Path, dst: str | Path) -> None:
    """Copy a tiled GeoTIFF to a COG (streams; memory stays bounded), atomically."""
    from rasterio.shutil import copy as rio_copy

    try:
        with c_stderr_kept_on_success(), atomic_path(dst) as tmp:
            rio_copy(str(src), str(tmp), driver="COG", compress="DEFLATE", predictor="2", blocksize=256)
    except WRITE_ERRORS as exc:
        raise SN7DataError(dst, write_problem(dst, exc)) from None


def read_resampled(
    ds: rasterio.io.DatasetReader,
    indexes: list[int] | int,
    window: Window,
    factor: float,
    resampling: Resampling = Resampling.bilinear,
) -> np.ndarray:
    """Read ``window`` resampled ``factor`` times finer (factor 1 reads it as is)."""
    if factor == 1:
        return read_checked(ds, indexes, window=window, boundless=False)
    hw = (int(round(window.height * factor)), int(round(window.width * factor)))
    shape: tuple[int, ...] = (len(indexes), *hw) if isinstance(indexes, list) else hw
    return read_checked(ds, indexes, window=window, out_shape=shape, resampling=resampling)


def iter_windows(height: int, width: int, size: int, stride: int) -> Iterator[Window]:
    """Windows of ``size`` every ``stride`` pixels covering the whole grid (last one flush to the edge)."""
    rows = _starts(height, size, stride)
    cols = _starts(width, size, stride)
    for r in rows:
        for c in cols:
            yield Window(c, r, min(size, width - c), min(size, height - r))


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts
