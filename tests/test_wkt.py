"""The fast WKT reader gives GEOS's geometries, byte for byte, and the validity it skips is GEOS's too."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import shapely
from shapely import affinity
from shapely.geometry import Polygon, box

from spacenet7.metrics.wkt import polygons_from_wkt, read_polygons


def geos(rows):
    with np.errstate(all="ignore"):
        return shapely.from_wkt(np.asarray(rows, dtype=object), on_invalid="ignore")


def assert_same(ours, theirs):
    """The same geometry (type, coordinates, rings, parts: equal WKB) or the same None, row by row."""
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert (a is None) == (b is None), i
        if a is not None:
            assert shapely.to_wkb(a) == shapely.to_wkb(b), i


HOSTILE = [
    "POLYGON EMPTY",
    "POLYGON  EMPTY ",
    "POLYGONEMPTY",
    "MULTIPOLYGON EMPTY",
    " POLYGON ((0 0, 1 0, 1 1, 0 0))",
    "POLYGON((0 0,1 0,1 1,0 0))",
    "POLYGON ( ( 0 0 , 1 0 , 1 1 , 0 0 ) )",
    "POLYGON ((0 0, 1 0, 1 1, 0 0)) x",
    "POLYGON ((0 0, 1 0, 1 1, 0 0)),",
    "POLYGON ((0 0, 1 0, 1 1, 0 1))",  # open ring
    "POLYGON ((0 0, 1 0, 0 0))",  # three points
    "POLYGON ((0 0 0, 1 0 0, 1 1 0, 0 0 0))",
    "POLYGON Z ((0 0 0, 1 0 0, 1 1 0, 0 0 0))",
    "polygon ((0 0, 1 0, 1 1, 0 0))",
    "POLYGON ((+1 0, 1 0, 1 1, +1 0))",
    "POLYGON ((1. 0, 2 0, 1 1, 1. 0))",
    "POLYGON ((.5 0, 2 0, 1 1, .5 0))",
    "POLYGON ((1e5 0, 2e5 0, 1 1, 1e5 0))",
    "POLYGON ((1E-05 -0, 2e+5 0, 1 1, 0.00001 0))",
    "POLYGON ((-0 -0, 1 0, 1 1, 0 0))",
    "POLYGON ((0x10 0, 1 0, 1 1, 0x10 0))",
    "POLYGON ((nan 0, 1 0, 1 1, nan 0))",
    "POLYGON ((inf 0, 1 0, 1 1, inf 0))",
    "POLYGON ((1e999 0, 1 0, 1 1, 1e999 0))",
    "POLYGON ((1e-400 0, 1 0, 1 1, 1e-400 0))",
    "POLYGON ((4.9406564584124654e-324 0, 1 0, 1 1, 4.9406564584124654e-324 0))",
    "POLYGON ((0\t0, 1 0, 1 1, 0 0))",
    "POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0), (2 2, 3 2, 3 3, 2 2))",
    "MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)), ((5 5, 6 5, 6 6, 5 5), (5.1 5.1, 5.2 5.1, 5.2 5.2, 5.1 5.1)))",
    "MULTIPOLYGON(((0 0,1 0,1 1,0 0)))",
    "MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)),)",
    "MULTIPOLYGON (((0 0, 1 0, 1 1, 0 0)), ((5 5, 6 5, 6 6, 5 6)))",  # one open ring: the whole row to GEOS
    "POINT (1 2)",
    "LINESTRING (0 0, 1 1)",
    "",
    "garbage",
    "POLYGON ((0 0, 1 0, 1 1, 0 0)",
    "POLYGON ((0.30000000000000004 0.1, 12345.678901234567 0, 1 1, 0.30000000000000004 0.1))",
    "POLYGON ((00012 0, 1 0, 1 1, 00012 0))",
    "POLYGON ((1 2,3 4 ,5 6,1 2))",
    "POLYGON ((1 2, 3 4, 5 6, 1 2), EMPTY)",
]


@pytest.mark.parametrize("as_type", ["str", "object", "arrow"])
def test_hostile_rows_read_as_geos_reads_them(as_type):
    rows = HOSTILE * 2
    col = pa.array(rows) if as_type == "arrow" else pd.Series(rows, dtype=as_type)
    assert_same(polygons_from_wkt(col), geos(rows))
    assert_same(polygons_from_wkt(pd.Series(rows, dtype="str").iloc[3:]), geos(rows[3:]))  # an offset into the buffer


def _number(rng):
    v = rng.normal(0, 10 ** rng.uniform(-3, 6))
    return [repr(float(v)), f"{v:.17g}", f"{v:.3e}", str(int(v)), f"{v:.20f}", f"{v:.25g}", f"{v:.0f}"][rng.integers(0, 7)]


def test_random_numbers_parse_to_the_same_doubles():
    """Shortest reprs, 17 and 25 significant digits, exponents, integers: Arrow's parse is GEOS's."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(5000):
        pts = [(_number(rng), _number(rng)) for _ in range(rng.integers(3, 7))]
        rows.append("POLYGON ((" + ", ".join(f"{x} {y}" for x, y in [*pts, pts[0]]) + "))")
    assert_same(polygons_from_wkt(rows), geos(rows))


def test_shapely_written_tables_read_back_identically():
    rng = np.random.default_rng(1)
    geoms = [affinity.rotate(box(*rng.uniform(0, 500, 2), *rng.uniform(500, 900, 2)), rng.uniform(0, 90)) for _ in range(200)]
    geoms += [box(0, 0, 10, 10).difference(box(2, 2, 5, 5)), shapely.MultiPolygon([box(0, 0, 1, 1), box(3, 3, 4, 4)])]
    geoms += [Polygon()]
    rows = [g.wkt for g in geoms] + list(shapely.to_wkt(np.array(geoms, dtype=object), rounding_precision=3))
    ours = polygons_from_wkt(rows)
    assert_same(ours, geos(rows))
    assert all(shapely.get_type_id(ours[: len(geoms)]) == shapely.get_type_id(np.array(geoms, dtype=object)))
    _, _, reach = read_polygons(rows)  # the largest |coordinate| of each row read here (check_table's bound check)
    fast = ~np.isnan(reach)
    assert fast.sum() == len(rows) and np.array_equal(reach, [np.abs(shapely.get_coordinates(g)).max(initial=0.0) for g in ours])
    assert np.isnan(
        read_polygons(HOSTILE)[2][[HOSTILE.index("POINT (1 2)"), HOSTILE.index("POLYGON ((nan 0, 1 0, 1 1, nan 0))")]]
    ).all()


def test_rows_called_valid_are_valid_and_convex_boxes_are_called_valid():
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(3000):
        n = rng.integers(3, 9)
        pts = rng.uniform(0, 10, (n, 2))
        if rng.random() < 0.3:  # nearly collinear and repeated vertices
            pts[1] = pts[0] + (pts[2] - pts[0]) * rng.choice([0.5, 1e-12, 0.0, 1.0, 2.0])
        rows.append(Polygon(np.r_[pts, pts[:1]]).wkt)
    rows += [box(*rng.uniform(0, 100, 2), *rng.uniform(100, 200, 2)).wkt for _ in range(100)]
    rows += [shapely.reverse(box(0, 0, 3, 2)).wkt, "POLYGON ((0 0, 1 0, 1 0, 1 1, 0 0))", "POLYGON ((0 0, 2 0, 1 0, 1 1, 0 0))"]
    geoms, known, _ = read_polygons(rows)
    assert known[-103:-1].all()  # boxes (either orientation, a repeated point): no GEOS call needed
    assert not known[-1]  # a spike back along an edge
    assert shapely.is_valid(geoms[known]).all()
    assert (~known).any() and not shapely.is_valid(geoms[~known]).all()
