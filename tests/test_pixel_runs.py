"""Pixel IoU without rasters: the scanline counts equal the rasterio rasters' counts, case for case.

``pixel_counts`` burns polygons the way GDAL does in numba (:mod:`spacenet7.metrics.scanline`);
``raster=True`` is the former path, ``rasterio.features.rasterize`` into block masks, kept as the
definition. Every test here compares the two on cases where they could part: pixel centres on
vertices and edges, both ring orientations, holes, multipolygons, overlapping proposals, block
edges (small blocks), regions, and the polygons that ``vectorize`` writes.
"""

import numpy as np
import pandas as pd
import pytest
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box

from spacenet7.metrics import pixel
from spacenet7.metrics.pixel import pixel_counts, pixel_iou
from spacenet7.polygonize import polygons


def table(geoms, month="2020-01", aoi="a"):
    return pd.DataFrame({"aoi": aoi, "month": month, "id": range(len(geoms)), "geometry": np.array(geoms, dtype=object)})


def months(*sets, aoi="a"):
    return pd.concat([table(g, f"2020-{m + 1:02d}", aoi) for m, g in enumerate(sets)], ignore_index=True)


def both_ways(truth, proposal, region=None):
    runs = pixel_counts(truth, proposal, region)
    assert runs == pixel_counts(truth, proposal, region, raster=True)
    return runs


def _vectorized(rng, n, size=96):
    """Footprints as vectorize writes them: pixel-edge polygons (staircases, holes) of a label raster."""
    from rasterio import features

    shapes = []
    for _ in range(n):
        x, y = rng.uniform(0, size - 20, 2)
        g = affinity.rotate(box(x, y, x + rng.uniform(3, 18), y + rng.uniform(3, 14)), rng.uniform(0, 90))
        if rng.random() < 0.3:  # a courtyard
            g = g.difference(g.centroid.buffer(1.6))
        shapes.append(g)
    labels = features.rasterize(((g, i + 1) for i, g in enumerate(shapes)), out_shape=(size, size), dtype="int32")
    return polygons(labels)


@pytest.mark.parametrize("seed", range(4))
def test_vectorized_footprints_count_as_rasters_and_as_exact_areas(seed):
    """On pixel-edge polygons a pixel is burnt iff it lies inside, so both counts are exact areas:
    pixel IoU is the area IoU of the unions (overlapping proposals count once)."""
    rng = np.random.default_rng(seed)
    t_sets = [_vectorized(rng, 25) for _ in range(3)]
    p_sets = [np.concatenate([_vectorized(rng, 25), _vectorized(rng, 5)]) for _ in range(3)]  # overlaps within a set
    assert any(shapely.get_num_interior_rings(g).any() for g in t_sets + p_sets)  # holes are exercised
    inter, union = both_ways(months(*t_sets), months(*p_sets))
    areas = [shapely.union_all(t) for t in t_sets], [shapely.union_all(p) for p in p_sets]
    assert inter == round(sum(shapely.intersection(t, p).area for t, p in zip(*areas)))
    assert union == round(sum(shapely.union(t, p).area for t, p in zip(*areas)))


def _random_polygon(rng):
    x, y = rng.uniform(-6, 60, 2)
    kind = rng.integers(0, 6)
    if kind == 0:  # on the pixel grid, its half or its quarter: vertices and edges on pixel centres
        q = rng.choice([1.0, 0.5, 0.25])
        x, y = np.round(x / q) * q, np.round(y / q) * q
        w, h = np.round(rng.uniform(0.5, 12, 2) / q) * q + q
        g = box(x, y, x + w, y + h)
    elif kind == 1:  # rotated
        g = affinity.rotate(box(x, y, x + rng.uniform(1, 10), y + rng.uniform(1, 10)), rng.uniform(0, 90))
    elif kind == 2:  # a star of 3-8 vertices, half of them on half-pixels
        n = rng.integers(3, 9)
        a, r = np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(1, 8, n)
        pts = np.c_[x + r * np.cos(a), y + r * np.sin(a)]
        g = shapely.make_valid(Polygon(np.round(pts * 2) / 2 if rng.random() < 0.5 else pts))
    elif kind == 3:  # a hole with edges on pixel centres
        q = rng.choice([1.0, 0.5])
        x, y = np.round(x / q) * q, np.round(y / q) * q
        g = box(x, y, x + 10, y + 8).difference(box(x + 2 + q, y + 2, x + 6, y + 5 + q))
    elif kind == 4:
        g = MultiPolygon([box(x, y, x + 3.5, y + 2), box(x + 5, y + 0.5, x + 7, y + 4.5)])
    else:  # jittered, as truth outlines are
        g = box(x, y, x + rng.uniform(2, 9), y + rng.uniform(2, 9))
        g = Polygon(np.asarray(g.exterior.coords) + rng.normal(0, 0.3, (5, 2)) * [1, 1])
        g = shapely.make_valid(Polygon(g.exterior.coords[:-1]))
    if rng.random() < 0.5:  # the other ring orientation
        g = shapely.reverse(g)
    return g


@pytest.mark.parametrize("seed", range(3))
def test_random_polygons_on_and_off_pixel_centres(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        sets = []
        for _ in range(2):
            geoms = [_random_polygon(rng) for _ in range(rng.integers(0, 12))]
            sets.append([g for g in geoms if shapely.get_type_id(g) in (3, 6)] or [Polygon()])
        region = None if rng.random() < 0.6 else [*np.sort(rng.uniform(-3, 70, 2)), *np.sort(rng.uniform(-3, 70, 2))]
        monkeypatch.setattr(pixel, "BLOCK", int(rng.choice([1024, 16, 7])))  # polygons across block edges
        both_ways(table(sets[0]), table(sets[1]), region)


def test_horizontal_edges_on_pixel_centres_in_both_orientations():
    # edges on the centre lines y = 2.5 and 6.5 and vertical edges on x = 1.5, 7.5: GDAL burns the
    # bottom (larger y) horizontal edge and not the top one, whichever way the ring runs
    g = box(1.5, 2.5, 7.5, 6.5)
    for ring in (g, shapely.reverse(g)):
        assert both_ways(table([ring]), table([Polygon()])) == (0, 24)


def test_overlapping_proposals_and_holes_count_each_pixel_once():
    donut = box(0, 0, 10, 10).difference(box(3, 3, 7, 7))  # 84 px
    proposal = [box(0, 0, 6, 10), box(4, 0, 10, 10)]  # overlap 2 x 10: the union is the 100 px square
    assert both_ways(table([donut]), table(proposal)) == (84, 100)
    assert pixel_iou(table([donut]), table(proposal)) == pytest.approx(0.84)


def test_far_apart_polygons_and_several_blocks(monkeypatch):
    monkeypatch.setattr(pixel, "BLOCK", 32)
    truth = [box(3.2, 4.7, 40.1, 9.9), box(1000.5, 2000.5, 1010.5, 2031.5)]
    proposal = [box(30, 0, 70, 70), box(1005, 2010, 1100, 2100), box(-50.3, -20.7, -40, -3)]
    both_ways(table(truth), table(proposal))
    both_ways(table(truth), table(proposal), [0, 2050, 0, 1050])


def test_a_collection_month_is_rasterized_and_other_months_are_not():
    collection = shapely.GeometryCollection([box(0, 0, 4, 4), shapely.LineString([(5, 5), (9, 9)])])
    truth = months([box(0, 0, 4, 4)], [box(0, 0, 4, 4)])
    proposal = months([collection], [box(2, 0, 6, 4)])
    assert both_ways(truth, proposal) == (16 + 8, 16 + 4 + 24)  # GDAL also burns the line's 4 pixels


def test_months_and_aois_pool_and_proposal_months_without_truth_are_ignored():
    truth = pd.concat([months([box(0, 0, 4, 4)], [Polygon()]), months([box(0, 0, 2, 2)], aoi="b")], ignore_index=True)
    proposal = pd.concat(
        [months([box(0, 0, 4, 2)], [box(0, 0, 3, 3)], [box(0, 0, 9, 9)]), months([box(0, 0, 2, 2)], aoi="b")],
        ignore_index=True,
    )
    # a/2020-01: 8 of 16; a/2020-02: no truth, 9 proposal px; a/2020-03: not in the truth; b: 4 of 4
    assert both_ways(truth, proposal) == (8 + 4, 16 + 9 + 4)
    assert both_ways(truth.iloc[:0], proposal) == (0, 0)
