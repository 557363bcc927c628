"""The fast exact overlay (numba convex clipping + GEOS fallback) against GEOS itself."""

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon, box

from spacenet7.metrics.overlay import PolygonSet, pair_intersection_area


def _areas(a, b):
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    ia, ib = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
    ia, ib = ia.ravel(), ib.ravel()
    return pair_intersection_area(PolygonSet(a), PolygonSet(b), ia, ib), shapely.area(shapely.intersection(a[ia], b[ib]))


def test_convexity_classification():
    square = box(0, 0, 2, 2)
    ell = Polygon([(0, 0), (3, 0), (3, 1), (1, 1), (1, 3), (0, 3)])
    star = Polygon([(0, 0), (2, 6), (4, 0), (-1, 4), (5, 4)])  # self-intersecting pentagram: turns all one way
    repeated = Polygon([(0, 0), (2, 0), (2, 0), (2, 2), (1, 2), (0, 2)])  # a repeated and a collinear vertex
    s = PolygonSet(
        np.array(
            [
                square,
                square.reverse(),
                ell,
                star,
                repeated,
                MultiPolygon([square]),
                box(-1, -1, 4, 4).difference(box(1, 1, 2, 2)),
            ],
            dtype=object,
        )
    )
    conv = {int(g): int(s.convex[r]) for g, r in enumerate(s.ring_of) if r >= 0}
    assert abs(conv[0]) == 1 and conv[1] == -conv[0]
    assert conv[2] == 0 and conv[3] == 0
    assert abs(conv[4]) == 1
    assert s.ring_of[5] == -1 and s.ring_of[6] == -1  # multipart and holed: always GEOS


def test_pixel_aligned_shared_edges_are_exact():
    rng = np.random.default_rng(0)
    xy = rng.integers(0, 12, (300, 2)).astype(float)
    wh = rng.integers(1, 6, (300, 2))
    boxes = shapely.box(xy[:, 0], xy[:, 1], xy[:, 0] + wh[:, 0], xy[:, 1] + wh[:, 1])
    got, want = _areas(boxes[:150], boxes[150:])
    assert np.array_equal(got, want)


def test_nonconvex_holes_and_identical_pairs_match_geos():
    ell = Polygon([(0, 0), (3, 0), (3, 1), (1, 1), (1, 3), (0, 3)])
    stair = Polygon([(0, 0), (2, 0), (2, 1), (3, 1), (3, 3), (0, 3)])
    holed = box(-1, -1, 4, 4).difference(box(1, 1, 2, 2))
    tri = Polygon([(0, 0), (4, 0), (0, 4)])
    geoms = [ell, stair, holed, tri, ell.reverse(), shapely.affinity.translate(stair, 0.5, 0.25)]
    got, want = _areas(geoms, geoms)
    assert np.allclose(got, want, rtol=0, atol=1e-9)


coord = st.floats(-20, 20, allow_nan=False, width=32)


@st.composite
def polygons(draw):
    kind = draw(st.sampled_from(["hull", "rect", "ell"]))
    if kind == "hull":
        pts = draw(st.lists(st.tuples(coord, coord), min_size=3, max_size=9))
        g = shapely.MultiPoint(pts).convex_hull
    elif kind == "rect":
        x, y = draw(coord), draw(coord)
        w, h = draw(st.floats(0.5, 10)), draw(st.floats(0.5, 10))
        g = shapely.affinity.rotate(box(x, y, x + w, y + h), draw(st.floats(0, 180)))
    else:
        x, y = draw(coord), draw(coord)
        g = Polygon([(x, y), (x + 4, y), (x + 4, y + 1), (x + 1, y + 1), (x + 1, y + 4), (x, y + 4)])
    if draw(st.booleans()):
        g = g.reverse()
    return g if g.geom_type == "Polygon" and g.area > 0 else box(0, 0, 1, 1)


@settings(max_examples=150, deadline=None)
@given(st.lists(polygons(), min_size=1, max_size=6), st.lists(polygons(), min_size=1, max_size=6))
def test_random_pairs_match_geos(a, b):
    got, want = _areas(a, b)
    assert np.allclose(got, want, rtol=1e-9, atol=1e-7)


def test_pixel_staircases_use_the_rectilinear_kernel_and_match_geos():
    from rasterio import features

    from spacenet7.polygonize import polygons

    rng = np.random.default_rng(1)
    rot = [
        shapely.affinity.rotate(box(x, y, x + w, y + h), a)
        for x, y, w, h, a in zip(*rng.uniform([2, 2, 2, 2, 0], [40, 40, 9, 9, 90], (80, 5)).T)
    ]
    labels = [features.rasterize(((g, i + 1),), out_shape=(56, 56), dtype="int32") for i, g in enumerate(rot)]
    stairs = np.array([polygons(lab)[0] for lab in labels], dtype=object)
    s = PolygonSet(stairs)
    assert s.rectilinear.all() and (s.convex == 0).sum() > 40  # staircases: rectilinear, mostly not convex
    got, want = _areas(stairs[:40], stairs[40:])
    assert np.allclose(got, want, rtol=0, atol=1e-9) and (want > 0).sum() > 20
    half = shapely.transform(stairs, lambda xy: xy / 2)  # an upscaled grid mapped back: half-pixel steps
    got, want = _areas(half[:40], stairs[40:])
    assert np.allclose(got, want, rtol=0, atol=1e-9)
