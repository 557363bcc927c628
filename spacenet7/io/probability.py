"""The probability-raster format that ``predict`` writes and ``vectorize`` reads (no torch here).

One band per target channel (:data:`spacenet7.data.targets.CHANNELS`), uint8 ``round(p * 254)``
with nodata 255 (masked pixels) and a GDAL scale of 1/254, so GIS tools show probabilities.
Tags record the grid: ``grid=source`` (the mosaic's) or ``grid=upscaled`` with ``upscale=<f>``, and,
for a raster of part of a mosaic (``predict band_frac=``), ``source_offset=<col> <row>``: where its first
pixel lies in the mosaic's source pixels (vectorize writes pixel coordinates in the mosaic's).

Each AOI folder also holds a completion record, :data:`COMPLETE`, listing the months of the last
prediction: ``predict`` removes it before it writes anything for the AOI and writes it last,
so ``vectorize`` never reads a killed run's partial set of months (or months a run left stale).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from spacenet7.data.targets import CHANNELS
from spacenet7.errors import SN7DataError
from spacenet7.io.atomic import atomic_path
from spacenet7.io.raster import open_raster

SCALE = 254.0
NODATA = 255
ENCODING = "uint8 probability * 254, nodata 255"
COMPLETE = ".predict-complete.json"  # per AOI folder: the months of a finished prediction (written last)
COMPLETE_FORMAT = "spacenet7-predictions/1"


def encode(prob: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(C, H, W) probabilities in [0, 1] and an (H, W) valid mask -> the stored uint8."""
    return np.where(valid, np.round(prob * SCALE), NODATA).astype(np.uint8)


def decode(stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode`: ((C, H, W) float32 probabilities, 0 where masked; (H, W) valid mask)."""
    valid = stored[0] != NODATA
    return np.where(valid, stored, 0).astype(np.float32) / SCALE, valid


def profile(crs: Any, transform: Affine, width: int, height: int) -> dict:
    """The GeoTIFF profile of a probability raster (tiled, deflate; copied to a COG when complete)."""
    from spacenet7.io.raster import cog_profile

    return cog_profile(
        {
            "crs": crs,
            "transform": transform,
            "width": width,
            "height": height,
            "count": len(CHANNELS),
            "dtype": "uint8",
            "nodata": NODATA,
        },
        predictor=1,
    )


def describe(dst: rasterio.io.DatasetWriter, upscale: float, grid: str, offset: tuple[int, int] = (0, 0)) -> None:
    """Band names, scales and grid tags of an open probability raster being written; ``offset``: its first
    pixel's (column, row) in the predicted mosaic's source pixels, for a raster of part of one."""
    dst.descriptions = CHANNELS
    dst.scales = [1 / SCALE] * len(CHANNELS)
    dst.update_tags(upscale=str(upscale), grid=grid, encoding=ENCODING)
    if any(offset):
        dst.update_tags(source_offset=f"{int(offset[0])} {int(offset[1])}")


def offset_tag(ds: rasterio.io.DatasetReader) -> tuple[int, int]:
    """(column, row) of an open probability raster's first pixel in its mosaic's source pixels (``(0, 0)``: the
    whole mosaic).

    Raises:
        SN7DataError: a ``source_offset`` tag that is not two non-negative integers.
    """
    tag = ds.tags().get("source_offset")
    if tag is None:
        return 0, 0
    try:
        col, row = (int(v) for v in tag.split())
        if col < 0 or row < 0:
            raise ValueError
    except ValueError:
        raise SN7DataError(ds.name, f"source_offset tag {tag!r} is not two non-negative integers (column row)") from None
    return col, row


def source_offset(path: str | Path) -> tuple[int, int]:
    """:func:`offset_tag` of the probability raster at ``path``."""
    with open_raster(path, bands=len(CHANNELS)) as ds:
        return offset_tag(ds)


def grid_tags(ds: rasterio.io.DatasetReader) -> tuple[float, str]:
    """(upscale, grid) of an open probability raster."""
    tags = ds.tags()
    return float(tags.get("upscale", 1.0)), tags.get("grid", "source")


def read_prediction(path: str | Path) -> tuple[np.ndarray, np.ndarray, rasterio.Affine, rasterio.crs.CRS, float]:
    """Read a probability raster: (C, H, W) float probabilities, valid mask, transform, CRS, upscale.

    The upscale is the raster's pixels per source pixel (1 for ``grid=source``).

    Raises:
        SN7DataError: no CRS, wrong band count, or every pixel nodata.
    """
    with open_raster(path, bands=len(CHANNELS)) as ds:
        stored = ds.read()
        transform, crs = ds.transform, ds.crs
        upscale, grid = grid_tags(ds)
    prob, valid = decode(stored)
    if not valid.any():
        raise SN7DataError(path, "every pixel is nodata (an all-cloud month?); nothing to vectorize")
    return prob, valid, transform, crs, upscale if grid == "upscaled" else 1.0


def unmark_complete(aoi_dir: str | Path) -> None:
    """Remove an AOI folder's completion record: done before any of its rasters is (re)written."""
    (Path(aoi_dir) / COMPLETE).unlink(missing_ok=True)


def mark_complete(aoi_dir: str | Path, rasters: list[Path]) -> Path:
    """Record (atomically) that ``rasters``, the AOI folder's months, are a finished prediction."""
    path = Path(aoi_dir) / COMPLETE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"format": COMPLETE_FORMAT, "rasters": [Path(p).name for p in rasters]}, indent=1))
    return path


def completed_rasters(aoi_dir: str | Path) -> list[Path]:
    """The probability rasters of an AOI folder's finished prediction (see :func:`mark_complete`).

    Raises:
        SN7DataError: no completion record (``predict`` did not finish this AOI), an unreadable one,
            or a listed raster that is missing.
    """
    aoi_dir = Path(aoi_dir)
    path = aoi_dir / COMPLETE
    if not path.is_file():
        raise SN7DataError(aoi_dir, f"no completion record {COMPLETE}: `spacenet7 predict` did not finish this AOI; re-run it")
    try:
        doc = json.loads(path.read_text())
        names = doc["rasters"] if doc.get("format") == COMPLETE_FORMAT else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and "/" not in n for n in names):
            raise ValueError("no list of rasters")
    except (ValueError, KeyError, AttributeError) as exc:
        raise SN7DataError(path, f"not a completion record ({exc}); re-run `spacenet7 predict`") from None
    files = [aoi_dir / n for n in names]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise SN7DataError(missing[0], f"listed in {COMPLETE} but not found; re-run `spacenet7 predict`")
    return files
