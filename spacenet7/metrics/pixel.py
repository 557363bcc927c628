"""Pixel-level scores of polygon tables, and clipping tables to a pixel region."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import shapely
from affine import Affine

from spacenet7.data.sn7 import rasterize_footprints


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


def pixel_iou(truth: pd.DataFrame, proposal: pd.DataFrame, region: Sequence[float] | None = None) -> float:
    """Building-pixel IoU pooled over every (AOI, month) of the truth: sum |T & P| / sum |T | P|.

    Footprints are rasterized on the source pixel grid (a pixel counts when its centre is inside).
    Each month covers ``region`` (row0, row1, col0, col1) or else the bounds of its polygons.
    Returns 0 when neither table has a building pixel.
    """
    inter, union = pixel_counts(truth, proposal, region)
    return inter / union if union else 0.0


def pixel_counts(truth: pd.DataFrame, proposal: pd.DataFrame, region: Sequence[float] | None = None) -> tuple[int, int]:
    """The sums of :func:`pixel_iou`: building pixels in both tables, and in either (integers, so they add up
    over AOIs exactly)."""
    inter = union = 0
    p_groups = {k: g for k, g in proposal.groupby(["aoi", "month"])}
    for key, t in truth.groupby(["aoi", "month"]):
        tg = t["geometry"].values
        p = p_groups.get(key)
        pg = p["geometry"].values if p is not None else np.array([], dtype=object)
        if region is not None:
            r0, r1, c0, c1 = (
                int(np.floor(region[0])),
                int(np.ceil(region[1])),
                int(np.floor(region[2])),
                int(np.ceil(region[3])),
            )
        else:
            both = np.concatenate([tg, pg])
            both = both[~shapely.is_empty(both)] if len(both) else both
            if not len(both):
                continue
            c0, r0, c1, r1 = shapely.total_bounds(both)
            r0, r1, c0, c1 = int(np.floor(r0)), int(np.ceil(r1)), int(np.floor(c0)), int(np.ceil(c1))
        shape = (max(1, r1 - r0), max(1, c1 - c0))
        tm, pm = _mask(tg, shape, r0, c0), _mask(pg, shape, r0, c0)
        inter += int((tm & pm).sum())
        union += int((tm | pm).sum())
    return inter, union
