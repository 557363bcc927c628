"""Pixel-level scores of polygon tables, and clipping tables to a pixel region."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import shapely
from affine import Affine

from spacenet7.data.sn7 import rasterize_footprints
from spacenet7.metrics.scanline import RingSet, group_counts

BLOCK = 1024  # pixel IoU rasterizes squares of this side, only where polygons are


def clip_to_region(table: pd.DataFrame, region: Sequence[float]) -> pd.DataFrame:
    """Clip every geometry of a ``read_table`` frame to a pixel box ``(row0, row1, col0, col1)``.

    Polygons outside the box become empty: they stay as rows (so their month still counts) but
    are neither truth nor proposal. A building cut by the box edge keeps its part inside.
    """
    r0, r1, c0, c1 = (float(v) for v in region)
    if not (r1 > r0 and c1 > c0):
        raise ValueError(f"region {list(region)} is empty (expected [row0, row1, col0, col1] with row1 > row0, col1 > col0)")
    out = table.copy()
    geoms = shapely.clip_by_rect(out["geometry"].values, c0, r0, c1, r1)
    # clipping can leave lines or points on the box edge: those are not footprints
    polygonal = np.isin(shapely.get_type_id(geoms), [3, 6])
    geoms[~polygonal] = shapely.Polygon()
    out["geometry"] = geoms
    return out


def _mask(geoms: np.ndarray, shape: tuple[int, int], r0: int, c0: int) -> np.ndarray:
    return rasterize_footprints(geoms, shape, Affine.translation(c0, r0)).astype(bool)


def pixel_iou(
    truth: pd.DataFrame, proposal: pd.DataFrame, region: Sequence[float] | None = None, *, raster: bool = False
) -> float:
    """Building-pixel IoU pooled over every (AOI, month) of the truth: sum |T & P| / sum |T | P|.

    Footprints are rasterized on the source pixel grid (a pixel counts when its centre is inside, as
    GDAL burns polygons). Each month covers ``region`` (row0, row1, col0, col1) or else the bounds of
    its polygons. Returns 0 when neither table has a building pixel. ``raster``: count on rasters
    burnt by ``rasterio.features.rasterize`` (the definition; slow) instead of the same pixels'
    runs (:mod:`spacenet7.metrics.scanline`, the default: identical counts).
    """
    inter, union = pixel_counts(truth, proposal, region, raster=raster)
    return inter / union if union else 0.0


def pixel_counts(
    truth: pd.DataFrame, proposal: pd.DataFrame, region: Sequence[float] | None = None, *, raster: bool = False
) -> tuple[int, int]:
    """The sums of :func:`pixel_iou`: building pixels in both tables, and in either (integers, so they add up
    over AOIs exactly).

    All months at once: both tables' polygons as flat arrays (:class:`~spacenet7.metrics.scanline.RingSet`),
    burnt month by month into block masks by GDAL's own scanline rule in numba. A month that holds a
    geometry other than a (multi)polygon, and every month with ``raster``, is burnt by rasterio instead.
    """
    if raster:
        both = either = 0
        p_groups = {k: g["geometry"].values for k, g in proposal.groupby(["aoi", "month"])}
        for key, t in truth.groupby(["aoi", "month"]):
            i, u = _month_counts(t["geometry"].values, p_groups.get(key, np.empty(0, dtype=object)), region)
            both += i
            either += u
        return both, either
    keys = pd.MultiIndex.from_arrays([truth["aoi"], truth["month"]])
    months = keys.unique()
    t_code = months.get_indexer(keys)
    p_code = months.get_indexer(pd.MultiIndex.from_arrays([proposal["aoi"], proposal["month"]]))
    t_rows = np.argsort(t_code, kind="stable")
    p_rows = np.flatnonzero(p_code >= 0)  # proposal months that the truth lacks are not scored
    p_rows = p_rows[np.argsort(p_code[p_rows], kind="stable")]
    tg, pg = truth["geometry"].to_numpy()[t_rows], proposal["geometry"].to_numpy()[p_rows]
    t_start = np.searchsorted(t_code[t_rows], np.arange(len(months) + 1))
    p_start = np.searchsorted(p_code[p_rows], np.arange(len(months) + 1))
    t, p = RingSet(tg), RingSet(pg)
    inter, union = group_counts(t, t_start, p, p_start, _pixel_box(region) if region is not None else None, BLOCK)
    other = np.zeros(len(months), bool)
    other[t_code[t_rows][t.other]] = True
    other[p_code[p_rows][p.other]] = True
    for k in np.flatnonzero(other):
        inter[k], union[k] = _month_counts(tg[t_start[k] : t_start[k + 1]], pg[p_start[k] : p_start[k + 1]], region)
    return int(inter.sum()), int(union.sum())


def _pixel_box(region: Sequence[float]) -> tuple[int, int, int, int]:
    return int(np.floor(region[0])), int(np.ceil(region[1])), int(np.floor(region[2])), int(np.ceil(region[3]))


def _month_counts(tg: np.ndarray, pg: np.ndarray, region: Sequence[float] | None) -> tuple[int, int]:
    """One month's counts on rasters: the frame is ``region`` or else the pixel bounds of its polygons."""
    if region is not None:
        r0, r1, c0, c1 = _pixel_box(region)
    else:
        both = np.concatenate([tg, pg])
        both = both[~shapely.is_empty(both)] if len(both) else both
        if not len(both):
            return 0, 0
        c0, r0, c1, r1 = shapely.total_bounds(both)
        r0, r1, c0, c1 = int(np.floor(r0)), int(np.ceil(r1)), int(np.floor(c0)), int(np.ceil(c1))
    return _box_counts(tg, pg, r0, r1, c0, c1)


def _box_counts(tg: np.ndarray, pg: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> tuple[int, int]:
    """Building pixels of the box ``[r0, r1) x [c0, c1)`` in both sets of polygons and in either, rasterized
    in :data:`BLOCK` squares, only those some polygon reaches: memory follows the polygons, not the box
    (a region of 99999^2 pixels, or one proposal far from the rest, no longer asks for gigabytes)."""
    both = np.concatenate([tg, pg]) if len(tg) + len(pg) else np.empty(0, dtype=object)
    live = ~shapely.is_empty(both) if len(both) else np.zeros(0, bool)
    if not live.any():
        return 0, 0
    bounds = shapely.bounds(both[live])  # minx (col), miny (row), maxx, maxy
    blocks: set[tuple[int, int]] = set()
    for x0, y0, x1, y1 in bounds:
        ra, rb = max(r0, int(np.floor(y0))), min(r1, int(np.ceil(y1)))
        ca, cb = max(c0, int(np.floor(x0))), min(c1, int(np.ceil(x1)))
        if ra < rb and ca < cb:
            blocks.update(
                (bi, bj)
                for bi in range((ra - r0) // BLOCK, (rb - 1 - r0) // BLOCK + 1)
                for bj in range((ca - c0) // BLOCK, (cb - 1 - c0) // BLOCK + 1)
            )
    t_tree, p_tree = shapely.STRtree(tg), shapely.STRtree(pg)
    inter = union = 0
    for bi, bj in sorted(blocks):
        br0, bc0 = r0 + bi * BLOCK, c0 + bj * BLOCK
        shape = (min(BLOCK, r1 - br0), min(BLOCK, c1 - bc0))
        frame = shapely.box(bc0, br0, bc0 + shape[1], br0 + shape[0])
        tm = _mask(tg[t_tree.query(frame)], shape, br0, bc0)
        pm = _mask(pg[p_tree.query(frame)], shape, br0, bc0)
        inter += int((tm & pm).sum())
        union += int((tm | pm).sum())
    return inter, union
