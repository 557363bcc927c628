"""Shared synthetic inputs for the benches: an AOI of n months x k jittered, growing buildings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely
from shapely.geometry import box

AOI = "L15-0001E-0001N_1_1_13"


def months_of_buildings(n_months: int = 24, n: int = 5000, seed: int = 0, jitter_seed: int | None = None) -> list[np.ndarray]:
    """Buildings on a grid, 30% born after the first month, each month jittered by ~0.5 px."""
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(n)) + 1
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n] * 14.0
    wh = rng.uniform(4, 10, (n, 2))
    born = np.where(rng.random(n) < 0.7, 0, rng.integers(1, n_months, n))
    out = []
    if jitter_seed is not None:
        rng = np.random.default_rng(jitter_seed)
    for t in range(n_months):
        j = rng.normal(0, 0.5, (n, 2))
        live = born <= t
        p = xy[live] + j[live]
        out.append(shapely.box(p[:, 0], p[:, 1], p[:, 0] + wh[live, 0], p[:, 1] + wh[live, 1]))
    return out


def months_of_pixel_footprints(n_months: int = 24, n: int = 5000, seed: int = 0) -> list[np.ndarray]:
    """The same buildings rotated, then rasterized and polygonized as ``vectorize`` emits them:
    pixel-edge staircases (non-convex), re-drawn every month from the jittered outline."""
    from rasterio import features

    from spacenet7.polygonize import polygons

    rng = np.random.default_rng(seed + 1)
    angle = rng.uniform(0, 90, n)
    out = []
    for geoms in months_of_buildings(n_months, n, seed):
        k = len(geoms)
        rot = [shapely.affinity.rotate(g, a) for g, a in zip(geoms, angle[:k])]
        size = int(np.ceil(shapely.total_bounds(np.asarray(rot, dtype=object))[2:].max())) + 4
        labels = features.rasterize(((g, i + 1) for i, g in enumerate(rot)), out_shape=(size, size), dtype="int32")
        out.append(polygons(labels))
    return out


def table(months: list[np.ndarray], ids: list[np.ndarray] | None = None) -> pd.DataFrame:
    rows = []
    for t, g in enumerate(months):
        i = ids[t] if ids is not None else np.arange(len(g))
        name = f"global_monthly_{2018 + t // 12}_{t % 12 + 1:02d}_mosaic_{AOI}"
        rows.append(
            pd.DataFrame({"filename": name, "aoi": AOI, "month": f"{2018 + t // 12}-{t % 12 + 1:02d}", "id": i, "geometry": g})
        )
    return pd.concat(rows, ignore_index=True)


__all__ = ["box", "months_of_buildings", "months_of_pixel_footprints", "table"]
