"""Stage ``export``: GIS files and the SN7 submission from the tracked buildings.

GIS tools read these without expressions:

- ``footprints/<AOI>/<stem>.geojson``: one file per month, RFC 7946 (EPSG:4326, 7 decimals), whatever ``crs`` is;
- ``footprints/<AOI>.gpkg`` (the source CRS, or ``crs``): one layer per month (``m2019_03``; ``m01`` ... for
  imagery without dates) plus ``buildings`` (one row per building: its latest geometry) and
  ``buildings_by_month`` (one row per building and month, the long format that QGIS's Temporal
  Controller plays directly: layer properties > Temporal > "Single field with date/time" = ``month``);
  the style of :func:`qgis_style` is stored in the GeoPackage as every layer's default (QGIS's
  ``layer_styles`` table) and written beside it as ``<AOI>.qml``;
- every layer's fields: ``id``, ``month`` (the month's first day), ``first_seen`` / ``last_seen``
  (dates), ``n_months``, ``new`` (first seen this month, after the series' first), ``filled``
  (carried over a month where it was not observed), ``area_m2`` (true ground area); for imagery
  without dates the three month fields hold the labels ``m01``, ``m02``, ... instead;
- ``submission.csv``: ``filename,id,geometry`` with pixel WKT, scorable by ``spacenet7 evaluate``.

``regularize=rectangle`` replaces each outline that fills at least ``regularize_min_fill`` of its
minimum rotated rectangle by that rectangle (in every output, the submission included). Empty
months write valid empty layers (solaris #286).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from spacenet7.cluster import map_aois
from spacenet7.config import ExportConfig, Regularize
from spacenet7.data.months import is_dated, month_date, month_label
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.artifacts import load_vectors
from spacenet7.io.atomic import atomic_path, clear_partials, ensure_writable_dir, ensure_writable_file
from spacenet7.io.raster import write_problem
from spacenet7.io.vector import WRITE_ERRORS, area_m2, write_vector
from spacenet7.metrics.table import month_rows

log = logging.getLogger(__name__)


def run(cfg: ExportConfig) -> dict[str, list[Path]]:
    """Export every ``<AOI>.parquet`` of ``vec_dir``; returns the written paths by kind."""
    check_export_crs(cfg.crs)
    ensure_writable_dir(cfg.out_dir)
    ensure_writable_file(cfg.submission)
    clear_partials(cfg.out_dir)
    clear_partials(Path(cfg.submission).parent, Path(cfg.submission).name)
    vec = sorted(p for p in Path(cfg.vec_dir).glob("*.parquet") if not p.name.startswith("."))
    if not vec:
        raise SN7DataError(Path(cfg.vec_dir), "no vectorize outputs (<AOI>.parquet); run `spacenet7 vectorize` first")
    out: dict[str, list[Path]] = {"geojson": [], "gpkg": [], "qml": [], "submission": []}
    rows = []
    per_aoi = map_aois(  # on a cluster one task per AOI; the submission is written here, in AOI order
        export_aoi,
        [(path.stem, (path, cfg)) for path in vec],
        cfg.cluster,
        stage="export",
        cleanup=lambda: clear_partials(cfg.out_dir),  # a killed worker's
    )
    for paths, aoi_rows in per_aoi:
        out["geojson"] += paths["geojson"]
        out["gpkg"] += paths["gpkg"]
        out["qml"] += paths["qml"]
        rows += aoi_rows
    sub = Path(cfg.submission)
    with atomic_path(sub) as tmp:
        pd.DataFrame(rows, columns=["filename", "id", "geometry"]).to_csv(tmp, index=False)
    out["submission"].append(sub)
    log.info("export: %d GeoJSON, %d GPKG, submission %s", len(out["geojson"]), len(out["gpkg"]), sub)
    return out


def export_aoi(path: Path, cfg: ExportConfig) -> tuple[dict[str, list[Path]], list[dict]]:
    """Write one AOI's GeoJSON, GPKG and QGIS style files; returns their paths and the AOI's submission rows."""
    gdf, meta = load_vectors(path)
    aoi = meta["aoi"]
    if cfg.regularize is Regularize.rectangle and len(gdf):
        gdf = regularized(gdf, cfg.regularize_min_fill)
    gdf["area_m2"] = area_m2(gdf)
    keys = [m["month"] for m in meta["months"]]
    table = gis_table(gdf, keys)
    target = table.to_crs(cfg.crs) if cfg.crs else table
    per_month = [(m["stem"], m["month"], gdf["stem"].to_numpy() == m["stem"]) for m in meta["months"]]
    out: dict[str, list[Path]] = {"geojson": [], "gpkg": [], "qml": []}
    if cfg.geojson:
        wgs84 = table.to_crs("EPSG:4326") if len(table) else table.set_crs("EPSG:4326", allow_override=True)
        for stem, _, rows in per_month:
            p = Path(cfg.out_dir) / aoi / f"{stem}.geojson"
            layer = _geojson_dates(wgs84[rows])
            write_vector(layer, p, layer_options={"RFC7946": "YES", "COORDINATE_PRECISION": "7"})
            out["geojson"].append(p)
    if cfg.gpkg:
        style = qgis_style(keys[0] if keys else None)
        out["gpkg"].append(
            _write_gpkg(Path(cfg.out_dir) / f"{aoi}.gpkg", [(k, target[r]) for _, k, r in per_month], target, style)
        )
        qml = Path(cfg.out_dir) / f"{aoi}.qml"
        with atomic_path(qml) as tmp:
            tmp.write_text(style, encoding="utf-8")
        out["qml"].append(qml)
    rows = []
    for stem, _, sel in per_month:
        g = gdf[sel]
        rows += month_rows(stem, g["id"], g["pix_wkt"])
    return out, rows


def regularized(gdf: gpd.GeoDataFrame, min_fill: float) -> gpd.GeoDataFrame:
    """``gdf`` with each building-like outline (filling at least ``min_fill`` of its minimum rotated
    rectangle) replaced by that rectangle, in map coordinates and in ``pix_wkt`` alike."""
    import shapely

    def rect(geoms: np.ndarray) -> np.ndarray:
        box = shapely.minimum_rotated_rectangle(geoms)
        area = shapely.area(box)
        fill = np.divide(shapely.area(geoms), area, out=np.zeros(len(geoms)), where=area > 0)
        return np.where(fill >= min_fill, box, geoms)

    out = gdf.copy()
    out["pix_wkt"] = shapely.to_wkt(rect(shapely.from_wkt(gdf["pix_wkt"].to_numpy())), rounding_precision=3)
    out = out.set_geometry(list(rect(gdf.geometry.to_numpy())), crs=gdf.crs)
    return out


def gis_table(gdf: gpd.GeoDataFrame, months: list[str]) -> gpd.GeoDataFrame:
    """One row per building and month with the fields GIS tools use as they are (the module docstring):
    ``month`` / ``first_seen`` / ``last_seen`` as dates (labels ``m01``... without dates), ``new``, ``filled``."""
    dated = all(is_dated(m) for m in months)

    def when(keys: pd.Series) -> Any:
        return pd.to_datetime([month_date(k) for k in keys]) if dated else [month_label(k) for k in keys]

    first = months[0] if months else None
    return gpd.GeoDataFrame(
        {
            "id": gdf["id"].to_numpy(np.int64),
            "month": when(gdf["month"]),
            "first_seen": when(gdf["first_seen"]),
            "last_seen": when(gdf["last_seen"]),
            "n_months": gdf["n_months"].to_numpy(np.int64),
            "new": ((gdf["first_seen"] == gdf["month"]) & (gdf["month"] != first)).to_numpy(bool),
            "filled": gdf["filled"].to_numpy(bool),
            "area_m2": np.round(gdf["area_m2"].to_numpy(float), 1),  # as serve and the API give it
        },
        geometry=list(gdf.geometry),
        crs=gdf.crs,
    )


def _geojson_dates(g: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Dates as ``YYYY-MM-DD`` text, which GDAL and QGIS read back as Date fields (RFC 7946 has no date type)."""
    g = g.copy()
    for col in ("month", "first_seen", "last_seen"):
        if pd.api.types.is_datetime64_any_dtype(g[col]):
            g[col] = g[col].dt.strftime("%Y-%m-%d")
    return g


def layer_name(month: str) -> str:
    """A month's GPKG layer: ``2019-03`` -> ``m2019_03``; an undated series' ``0001-03`` -> ``m03`` (a letter first)."""
    return month_label(month) if not is_dated(month) else "m" + month.replace("-", "_")


def buildings_layer(table: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """One row per tracked building: latest geometry, first/last month, months present."""
    cols = ["id", "first_seen", "last_seen", "n_months", "area_m2"]
    if len(table) == 0:
        return table[cols + ["geometry"]].iloc[:0]
    latest = table.sort_values("month", kind="stable").groupby("id", sort=True).tail(1).sort_values("id")
    return latest[cols + ["geometry"]].reset_index(drop=True)


def _write_gpkg(path: Path, per_month: list[tuple[str, gpd.GeoDataFrame]], table: gpd.GeoDataFrame, style: str) -> Path:
    try:
        with atomic_path(path) as tmp:
            names = []
            for month_key, g in per_month:
                names.append(layer_name(month_key))
                write_vector(g, tmp, layer=names[-1], driver="GPKG", append_layer=True)
            write_vector(buildings_layer(table), tmp, layer="buildings", driver="GPKG", append_layer=True)
            by_month = table.sort_values(["month", "id"], kind="stable").reset_index(drop=True)
            write_vector(by_month, tmp, layer="buildings_by_month", driver="GPKG", append_layer=True)
            _store_styles(tmp, [*names, "buildings", "buildings_by_month"], style)
    except SN7DataError as exc:  # named after the temporary file: name the output
        raise SN7DataError(path, exc.problem) from None
    return path


def _store_styles(gpkg: Path, layers: list[str], style: str) -> None:
    """Store ``style`` as the default QGIS style of every layer (the ``layer_styles`` table QGIS reads on opening)."""
    import pyogrio

    # a fixed time (SOURCE_DATE_EPOCH when set): the same vectors give the same GeoPackage, byte for byte,
    # in process or on any Dask worker
    stamp = pd.Timestamp(int(os.environ.get("SOURCE_DATE_EPOCH", "0")), unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S")
    rows = pd.DataFrame(
        {
            "f_table_catalog": "",
            "f_table_schema": "",
            "f_table_name": layers,
            "f_geometry_column": "geom",
            "styleName": [f"spacenet7 {name}" for name in layers],
            "styleQML": style,
            "styleSLD": "",
            "useAsDefault": True,
            "description": "spacenet7: new (red), filled (dashed), first month (blue), later (orange)",
            "owner": "",
            "ui": "",
            "update_time": stamp,
        }
    )
    try:
        with warnings.catch_warnings():  # the caller's temporary file ends in .partial, not .gpkg
            warnings.simplefilter("ignore", RuntimeWarning)
            pyogrio.write_dataframe(rows, gpkg, layer="layer_styles", driver="GPKG", append=True)
    except WRITE_ERRORS as exc:
        raise SN7DataError(gpkg, write_problem(gpkg, exc)) from None


_RULE = """      <rule key="{key}" symbol="{n}" label="{label}" filter="{filter}"/>"""
_SYMBOL = """      <symbol type="fill" name="{n}" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <Option type="Map">
            <Option name="color" type="QString" value="{fill}"/>
            <Option name="outline_color" type="QString" value="{line}"/>
            <Option name="outline_style" type="QString" value="{style}"/>
            <Option name="outline_width" type="QString" value="{width}"/>
            <Option name="outline_width_unit" type="QString" value="MM"/>
            <Option name="style" type="QString" value="solid"/>
          </Option>
        </layer>
      </symbol>"""


def qgis_style(first_month: str | None) -> str:
    """A QGIS layer style (``.qml``): new buildings red, filled (not observed that month) dashed grey,
    buildings there from the first month blue, later ones orange; the ``id`` as the map tip."""
    first = (
        f"&quot;first_seen&quot; = to_date('{month_date(first_month)}')"
        if first_month and is_dated(first_month)
        else f"&quot;first_seen&quot; = '{month_label(first_month)}'"
        if first_month
        else "FALSE"
    )
    rules = [
        ("new", "new this month", "&quot;new&quot;", "255,40,40,200", "140,0,0,255", "solid", "0.5"),
        ("filled", "filled (not observed this month)", "&quot;filled&quot;", "160,160,160,90", "90,90,90,255", "dash", "0.4"),
        ("first", "there from the first month", first, "60,120,220,150", "20,60,140,255", "solid", "0.3"),
        ("later", "built during the series", "ELSE", "250,160,40,170", "160,90,0,255", "solid", "0.3"),
    ]
    rule_xml = "\n".join(_RULE.format(key=k, n=i, label=lab, filter=f) for i, (k, lab, f, *_) in enumerate(rules))
    symbols = "\n".join(
        _SYMBOL.format(n=i, fill=fill, line=line, style=st, width=w) for i, (_, _, _, fill, line, st, w) in enumerate(rules)
    )
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28.0" styleCategories="Symbology|MapTips">
  <renderer-v2 type="RuleRenderer" symbollevels="0" enableorderby="0" forceraster="0">
    <rules key="root">
{rule_xml}
    </rules>
    <symbols>
{symbols}
    </symbols>
  </renderer-v2>
  <mapTip>building [% "id" %], first seen [% "first_seen" %]</mapTip>
</qgis>
"""


def check_export_crs(crs: str | None) -> None:
    """Validate ``crs`` early (a typo should not fail after minutes of work)."""
    if crs is None:
        return
    from pyproj import CRS

    try:
        CRS.from_user_input(crs)
    except Exception:
        raise SN7Error(f"export: crs={crs!r} is not a CRS pyproj understands") from None
