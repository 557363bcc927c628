"""GIS outputs that GIS tools use without expressions (issue 33, 4): dates, RFC 7946 GeoJSON, a long-format
layer for QGIS's Temporal Controller, layer names, the QGIS style, and optional outline regularization."""

from __future__ import annotations

import json
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
import pytest
import shapely
from shapely.geometry import Polygon

from spacenet7 import export
from spacenet7.compose import compose, compose_checked
from spacenet7.config import ExportConfig
from spacenet7.errors import SN7Error

AOI = "L15-0001E-0001N_1_1_13"
L_SHAPE = Polygon([(0, 0), (40, 0), (40, 10), (10, 10), (10, 40), (0, 40)])  # fills 0.44 of its rectangle
ROUGH = Polygon([(0, 0), (20, 1), (21, 20), (1, 19), (0.5, 10)])  # a roof with a ragged outline


def _vectors(tmp_path: Path, months: list[str]) -> Path:
    """A hand-made vectorize output: building 1 in every month (filled in the second), 2 from the second month."""
    stems = [f"global_monthly_{m.replace('-', '_')}_mosaic_{AOI}" for m in months]
    rows = [(1, 0, False), (1, 1, True), (2, 1, False), (1, 2, False), (2, 2, False)]
    first = {1: months[0], 2: months[1]}
    g = gpd.GeoDataFrame(
        {
            "id": [i for i, _, _ in rows],
            "stem": [stems[t] for _, t, _ in rows],
            "month": [months[t] for _, t, _ in rows],
            "first_seen": [first[i] for i, _, _ in rows],
            "last_seen": [months[2]] * len(rows),
            "n_months": [3 if i == 1 else 2 for i, _, _ in rows],
            "filled": [f for _, _, f in rows],
            "pix_wkt": [shapely.to_wkt(ROUGH if i == 1 else L_SHAPE) for i, _, _ in rows],
        },
        geometry=[shapely.affinity.translate(ROUGH if i == 1 else L_SHAPE, 500_000, 4_000_000) for i, _, _ in rows],
        crs="EPSG:32618",
    )
    vec = tmp_path / "vec"
    vec.mkdir(parents=True)
    g.to_parquet(vec / f"{AOI}.parquet")
    (vec / f"{AOI}.json").write_text(json.dumps({"aoi": AOI, "months": [{"stem": s, "month": m} for s, m in zip(stems, months)]}))
    return vec


def _export(tmp_path: Path, months: list[str], **kw) -> Path:
    fp = tmp_path / "fp"
    cfg = ExportConfig(vec_dir=str(_vectors(tmp_path, months)), out_dir=str(fp), submission=str(tmp_path / "s.csv"), **kw)
    export.run(cfg)
    return fp


def test_month_layers_carry_dates_new_and_filled(tmp_path):
    fp = _export(tmp_path, ["2020-01", "2020-02", "2020-03"])
    gpkg = fp / f"{AOI}.gpkg"
    layers = [name for name, _ in pyogrio.list_layers(gpkg)]
    assert layers == ["m2020_01", "m2020_02", "m2020_03", "buildings", "buildings_by_month", "layer_styles"]
    assert all(name[0].isalpha() for name in layers)
    feb = gpd.read_file(gpkg, layer="m2020_02")
    assert feb.crs.to_epsg() == 32618  # the GPKG keeps the source CRS
    assert pyogrio.read_info(gpkg, layer="m2020_02")["dtypes"][1:4].tolist() == ["datetime64[ms]"] * 3
    assert list(feb["month"]) == [pd.Timestamp("2020-02-01")] * 2
    assert dict(zip(feb["id"], feb["first_seen"])) == {1: pd.Timestamp("2020-01-01"), 2: pd.Timestamp("2020-02-01")}
    assert dict(zip(feb["id"], feb["new"])) == {1: False, 2: True} and dict(zip(feb["id"], feb["filled"])) == {1: True, 2: False}
    assert not gpd.read_file(gpkg, layer="m2020_01")["new"].any()  # the first month has nothing to be new against


def test_long_layer_plays_in_the_temporal_controller(tmp_path):
    gpkg = _export(tmp_path, ["2020-01", "2020-02", "2020-03"]) / f"{AOI}.gpkg"
    long = gpd.read_file(gpkg, layer="buildings_by_month")
    assert len(long) == 5 and list(long["month"]) == sorted(long["month"])  # one row per building and month
    assert pyogrio.read_info(gpkg, layer="buildings_by_month")["fields"][1] == "month"
    assert set(long["month"]) == {pd.Timestamp(f"2020-0{m}-01") for m in (1, 2, 3)}
    buildings = gpd.read_file(gpkg, layer="buildings")
    assert list(buildings["id"]) == [1, 2] and list(buildings["last_seen"]) == [pd.Timestamp("2020-03-01")] * 2


def test_geojson_is_rfc7946_with_7_decimals_whatever_the_gpkg_crs(tmp_path):
    fp = _export(tmp_path, ["2020-01", "2020-02", "2020-03"], crs="EPSG:3857")
    gj = sorted((fp / AOI).glob("*.geojson"))[1]
    doc = json.loads(gj.read_text())
    assert "crs" not in doc
    coords = [c for f in doc["features"] for c in f["geometry"]["coordinates"][0]]
    assert all(-180 <= x <= 180 and -90 <= y <= 90 for x, y in coords)
    assert max(len(repr(v).split(".")[-1]) for c in coords for v in c) == 7
    assert doc["features"][0]["properties"]["month"] == "2020-02-01"
    back = gpd.read_file(gj)
    assert back.crs.to_epsg() == 4326 and str(back["first_seen"].dtype).startswith("datetime64")
    assert gpd.read_file(fp / f"{AOI}.gpkg", layer="m2020_02").crs.to_epsg() == 3857  # crs= is the GPKG's


def test_qgis_style_is_stored_and_written_beside(tmp_path):
    fp = _export(tmp_path, ["2020-01", "2020-02", "2020-03"])
    qml = (fp / f"{AOI}.qml").read_text()
    root = ET.fromstring(qml.split("\n", 1)[1])  # after the DOCTYPE line
    rules = root.findall("./renderer-v2/rules/rule")
    assert [r.get("key") for r in rules] == ["new", "filled", "first", "later"]
    assert rules[2].get("filter") == "\"first_seen\" = to_date('2020-01-01')" and rules[3].get("filter") == "ELSE"
    assert len(root.findall("./renderer-v2/symbols/symbol")) == 4
    with sqlite3.connect(fp / f"{AOI}.gpkg") as db:
        styles = db.execute("SELECT f_table_name, f_geometry_column, useAsDefault, styleQML FROM layer_styles").fetchall()
    assert [s[0] for s in styles] == ["m2020_01", "m2020_02", "m2020_03", "buildings", "buildings_by_month"]
    assert all(s[1] == "geom" and s[2] == 1 and s[3] == qml for s in styles)


def test_undated_series_are_labelled_m01(tmp_path):
    fp = _export(tmp_path, ["0001-01", "0001-02", "0001-03"])
    gpkg = fp / f"{AOI}.gpkg"
    assert [n for n, _ in pyogrio.list_layers(gpkg)][:3] == ["m01", "m02", "m03"]
    long = gpd.read_file(gpkg, layer="buildings_by_month")
    assert set(long["month"]) == {"m01", "m02", "m03"} and set(long["first_seen"]) == {"m01", "m02"}
    assert "&quot;first_seen&quot; = 'm01'" in (fp / f"{AOI}.qml").read_text()


def test_regularize_rectangle_squares_building_like_outlines_only(tmp_path):
    plain = _export(tmp_path / "a", ["2020-01", "2020-02", "2020-03"])
    square = _export(tmp_path / "b", ["2020-01", "2020-02", "2020-03"], regularize="rectangle")
    a = gpd.read_file(plain / f"{AOI}.gpkg", layer="buildings").set_index("id").geometry
    b = gpd.read_file(square / f"{AOI}.gpkg", layer="buildings").set_index("id").geometry
    assert len(shapely.get_coordinates(b[1])) == 5 and b[1].equals(shapely.minimum_rotated_rectangle(a[1]))
    assert b[2].equals(a[2])  # an L-shape is not rectangle-like: kept
    sub = pd.read_csv(tmp_path / "b" / "s.csv")
    assert shapely.from_wkt(sub["geometry"].iloc[0]).equals_exact(shapely.minimum_rotated_rectangle(ROUGH), tolerance=1e-3)
    assert pd.read_csv(tmp_path / "a" / "s.csv")["geometry"].iloc[0] != sub["geometry"].iloc[0]


def test_regularize_is_checked():
    assert compose("export", []).regularize == "none"
    with pytest.raises(SN7Error, match="regularize"):
        compose_checked("export", ["regularize=circle"])
    with pytest.raises(SN7Error, match="regularize_min_fill=0.0 must be within"):
        ExportConfig(regularize="rectangle", regularize_min_fill=0.0)
