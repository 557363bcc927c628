"""Probabilities -> instances (watershed) -> polygons on exact pixel edges."""

from __future__ import annotations

import numpy as np
import shapely
from rasterio import features
from scipy import ndimage
from skimage.segmentation import watershed


def instances(prob: np.ndarray, valid: np.ndarray | None = None, *, threshold: float = 0.5,
              seed_threshold: float = 0.5, min_seed_px: int = 2) -> np.ndarray:
    """Split the footprint mask into buildings.

    Seeds are ``footprint - boundary - contact > seed_threshold`` (the building cores); a
    scikit-image watershed on the inverted footprint probability grows them inside the mask
    ``footprint > threshold``. Mask components without a seed become one building each.

    Args:
        prob: (3, H, W) probabilities (footprint, boundary, contact) or (H, W) footprint only.
        valid: pixels to consider (all when ``None``).

    Returns:
        (H, W) int32 labels, 0 = background.
    """
    fp = prob if prob.ndim == 2 else prob[0]
    mask = fp > threshold
    if valid is not None:
        mask &= valid
    if prob.ndim == 3:
        core = (fp - prob[1] - prob[2]) > seed_threshold
    else:
        core = ndimage.binary_erosion(mask)
    markers, n = ndimage.label(core & mask)
    if n and min_seed_px > 1:
        small = np.bincount(markers.ravel(), minlength=n + 1) < min_seed_px
        small[0] = False
        markers[small[markers]] = 0
    labels = watershed(-fp, markers, mask=mask).astype(np.int32) if markers.any() else np.zeros(fp.shape, np.int32)
    rest = mask & (labels == 0)
    if rest.any():
        extra, _ = ndimage.label(rest)
        labels[rest] = extra[rest] + labels.max()
    return labels


def polygons(labels: np.ndarray, *, min_area: float = 0.0, simplify: float = 0.0) -> np.ndarray:
    """Polygons of every instance, in pixel coordinates (x = column, y = row), on pixel edges.

    Uses ``rasterio.features.shapes`` (exact edges). An instance split into several parts keeps
    its largest part. ``simplify`` is a topology-preserving tolerance in pixels; ``min_area``
    drops polygons smaller than that many px^2.

    Returns:
        object array of shapely Polygons ordered by label.
    """
    if not labels.any():
        return np.empty(0, dtype=object)
    geoms, values = [], []
    for geom, value in features.shapes(labels.astype(np.int32), mask=labels > 0, connectivity=4):
        geoms.append(geom)
        values.append(value)
    polys = shapely.from_geojson([_as_geojson(g) for g in geoms]) if len(geoms) > 64 else np.array(
        [shapely.geometry.shape(g) for g in geoms], dtype=object)
    values = np.asarray(values, dtype=np.int64)
    area = shapely.area(polys)
    order = np.lexsort((-area, values))  # by label, largest part first
    first = np.ones(len(order), bool)
    first[1:] = values[order][1:] != values[order][:-1]
    polys, area = polys[order][first], area[order][first]
    if simplify > 0:
        polys = shapely.simplify(polys, simplify, preserve_topology=True)
        area = shapely.area(polys)
    return polys[area >= min_area] if min_area > 0 else polys


def _as_geojson(g: dict) -> str:
    import json

    return json.dumps(g)
