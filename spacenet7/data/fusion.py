"""Temporal fusion of an AOI's monthly probability rasters, and aligning months onto one grid.

``p' = (1 - w) p + w mean``: each month blended with the mean of every month's valid pixels
(SN7 winners fused each month with the all-month mean). Works block by block on the stored
uint8 rasters (:mod:`spacenet7.io.probability`), so memory stays bounded on any mosaic size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import rasterio

from spacenet7.data.targets import CHANNELS
from spacenet7.io.probability import NODATA, describe, grid_tags, offset_tag
from spacenet7.io.raster import cog_profile, iter_windows, to_cog

log = logging.getLogger(__name__)


def fuse(raw: list[Path], finals: list[Path], weight: float, block: int, scratch: Path) -> None:
    """Temporal fusion: blend each month with the all-month mean of valid pixels, block by block.

    Months on another grid than the first (a pixel smaller, shifted, another CRS) are resampled
    onto the first month's grid (nearest), so that every output of the AOI shares one grid;
    ``weight=0`` only aligns.

    Args:
        raw: the months' probability rasters, in month order.
        finals: where each fused month is written (a COG), in the same order.
        weight: the mean's weight ``w`` in [0, 1].
        block: block side in pixels.
        scratch: a folder for the fused GeoTIFFs before their COG copy.
    """
    srcs = [rasterio.open(p) for p in raw]
    views = _aligned(srcs)
    try:
        ref = srcs[0]
        h, w = ref.height, ref.width
        tmps = []
        for final in finals:
            tmp = scratch / f"{final.stem}.fused.tif"
            tmps.append(rasterio.open(tmp, "w", **cog_profile(ref.profile, predictor=1)))
        for win in iter_windows(h, w, block, block):
            blocks = [src.read(window=win) for src in views]  # read (and warp) each month once per block
            total = np.zeros((len(CHANNELS), int(win.height), int(win.width)), np.float32)
            count = np.zeros((int(win.height), int(win.width)), np.float32)
            for a in blocks:
                ok = a[0] != NODATA
                total += np.where(ok, a, 0)
                count += ok
            mean = total / np.maximum(count, 1)
            for a, dst in zip(blocks, tmps):
                ok = a[0] != NODATA
                fused = np.round((1 - weight) * a + weight * mean)
                dst.write(np.where(ok, fused, NODATA).astype(np.uint8), window=win)
        for dst in tmps:
            describe(dst, *grid_tags(ref), offset=offset_tag(ref))
            dst.close()
        for dst, final in zip(tmps, finals):
            to_cog(dst.name, final)
    finally:
        for s in [*views, *srcs]:
            s.close()


def _grid(ds: rasterio.io.DatasetReader) -> tuple:
    return ds.crs, ds.transform, ds.width, ds.height


def same_grid(paths: list[Path]) -> bool:
    """Whether the rasters share one grid (CRS, transform and size)."""
    grids = set()
    for p in paths:
        with rasterio.open(p) as ds:
            grids.add(_grid(ds))
    return len(grids) <= 1


def _aligned(srcs: list) -> list:
    """Each dataset as seen on the first one's grid: itself, or a nearest-neighbour WarpedVRT."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    ref = srcs[0]
    out = []
    for src in srcs:
        if _grid(src) == _grid(ref):
            out.append(src)
            continue
        log.warning(
            "fusion: %s is %dx%d on another grid than %s (%dx%d); resampled onto the latter",
            Path(src.name).name,
            src.height,
            src.width,
            Path(ref.name).name,
            ref.height,
            ref.width,
        )
        out.append(
            WarpedVRT(
                src,
                crs=ref.crs,
                transform=ref.transform,
                width=ref.width,
                height=ref.height,
                nodata=NODATA,
                resampling=Resampling.nearest,
            )
        )
    return out
