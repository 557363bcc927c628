"""Web-map tiles (XYZ, Web Mercator, 256 px PNG) of the mosaics and probability rasters, by rio-tiler.

Tiles outside a raster's extent are not rendered (``None``: the route answers 404), and the parts
of an edge tile beyond the raster are transparent, so the imagery is shown within the AOI only.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from rio_tiler.colormap import cmap
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import Reader

from spacenet7.io.probability import NODATA

STRETCH_PERCENTILES = (2, 98)  # imagery that is not 8 bit: each band's 2-98 % stretched to 0-255


def mosaic_tile(path: Path, z: int, x: int, y: int) -> bytes | None:
    """An RGB tile of a mosaic (bands 1-3; the alpha band, UDM-free, is the tile's mask)."""
    with Reader(str(path)) as src:
        if not src.tile_exists(x, y, z):
            return None
        try:
            img = src.tile(x, y, z, indexes=(1, 2, 3))
        except TileOutsideBounds:
            return None
    if img.data.dtype != np.uint8:
        img.rescale(in_range=_stretch(str(path), path.stat().st_mtime_ns))
    return img.render(img_format="PNG")


@functools.lru_cache(maxsize=256)
def _stretch(path: str, _mtime: int) -> tuple[tuple[float, float], ...]:
    with Reader(path) as src:
        stats = src.statistics(indexes=(1, 2, 3), percentiles=list(STRETCH_PERCENTILES))
    return tuple((float(s.percentile_2), float(max(s.percentile_98, s.percentile_2 + 1))) for s in stats.values())


def _prob_colormap() -> dict[int, tuple[int, int, int, int]]:
    """magma, transparent where the probability is low (the imagery shows through)."""
    base = cmap.get("magma")
    return {v: (*base[v][:3], int(min(255, 60 + 1.5 * v)) if v >= 25 else 0) for v in range(256)}


PROB_COLORMAP = _prob_colormap()


def probability_tile(path: Path, z: int, x: int, y: int) -> bytes | None:
    """A tile of the footprint probability (band 1, ``p * 254``; nodata transparent)."""
    with Reader(str(path)) as src:
        if not src.tile_exists(x, y, z):
            return None
        try:
            img = src.tile(x, y, z, indexes=1, nodata=NODATA)
        except TileOutsideBounds:
            return None
    return img.render(img_format="PNG", colormap=PROB_COLORMAP)
