"""Stage ``export``: GIS files and the SN7 submission from the tracked buildings.

- ``footprints/<AOI>/<stem>.geojson``: one file per month (``id``, ``first_seen``, ``area_m2``),
  in the source CRS (declared) or ``crs=EPSG:4326`` as RFC 7946;
- ``footprints/<AOI>.gpkg``: one layer per month plus ``buildings`` (one row per building:
  its latest geometry, ``first_seen``, ``last_seen``, ``n_months``);
- ``submission.csv``: ``filename,id,geometry`` with pixel WKT, scorable by ``spacenet7 evaluate``.

Empty months write valid empty layers (solaris #286).
"""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from spacenet7.cluster import map_aois
from spacenet7.config import ClusterMode, ExportConfig
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.atomic import atomic_path, clear_partials, ensure_writable_dir, ensure_writable_file
from spacenet7.io.vector import write_vector
from spacenet7.metrics.table import month_rows
from spacenet7.vectorize import load_vectors

log = logging.getLogger(__name__)


def area_m2(gdf: gpd.GeoDataFrame) -> np.ndarray:
    """True ground area in m^2 (a local UTM zone), not Web Mercator's inflated area."""
    if len(gdf) == 0:
        return np.zeros(0)
    return gdf.to_crs(gdf.estimate_utm_crs()).area.to_numpy()


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
    out: dict[str, list[Path]] = {"geojson": [], "gpkg": [], "submission": []}
    rows = []
    if cfg.cluster.mode is ClusterMode.none:
        per_aoi = [export_aoi(path, cfg) for path in vec]
    else:
        try:  # one Dask task per AOI; the submission is written here, in AOI order
            per_aoi = map_aois(export_aoi, [(path.stem, (path, cfg)) for path in vec], cfg.cluster, stage="export")
        finally:
            clear_partials(cfg.out_dir)  # a killed worker's
    for paths, aoi_rows in per_aoi:
        out["geojson"] += paths["geojson"]
        out["gpkg"] += paths["gpkg"]
        rows += aoi_rows
    sub = Path(cfg.submission)
    with atomic_path(sub) as tmp:
        pd.DataFrame(rows, columns=["filename", "id", "geometry"]).to_csv(tmp, index=False)
    out["submission"].append(sub)
    log.info("export: %d GeoJSON, %d GPKG, submission %s", len(out["geojson"]), len(out["gpkg"]), sub)
    return out


def export_aoi(path: Path, cfg: ExportConfig) -> tuple[dict[str, list[Path]], list[dict]]:
    """Write one AOI's GeoJSON and GPKG files; returns their paths and the AOI's submission rows."""
    gdf, meta = load_vectors(path)
    aoi = meta["aoi"]
    gdf["area_m2"] = area_m2(gdf)
    target = gdf.to_crs(cfg.crs) if cfg.crs else gdf
    rfc = cfg.crs is not None and target.crs.to_epsg() == 4326
    per_month = [(m["stem"], m["month"], target[target["stem"] == m["stem"]]) for m in meta["months"]]
    out: dict[str, list[Path]] = {"geojson": [], "gpkg": []}
    if cfg.geojson:
        for stem, _, g in per_month:
            p = Path(cfg.out_dir) / aoi / f"{stem}.geojson"
            write_vector(_month_layer(g, target.crs), p, layer_options={"RFC7946": "YES"} if rfc else None)
            out["geojson"].append(p)
    if cfg.gpkg:
        out["gpkg"].append(_write_gpkg(Path(cfg.out_dir) / f"{aoi}.gpkg", per_month, target))
    rows = []
    for stem, _, g in per_month:
        rows += month_rows(stem, g["id"], g["pix_wkt"])
    return out, rows


def _month_layer(g: gpd.GeoDataFrame, crs) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "id": g["id"].to_numpy(np.int64),
            "first_seen": g["first_seen"].astype(str).to_numpy(),
            "area_m2": g["area_m2"].to_numpy(float),
        },
        geometry=list(g.geometry),
        crs=crs,
    )


def buildings_layer(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """One row per tracked building: latest geometry, first/last month, months present."""
    if len(gdf) == 0:
        return gpd.GeoDataFrame({"id": [], "first_seen": [], "last_seen": [], "n_months": []}, geometry=[], crs=gdf.crs)
    latest = gdf.sort_values("month").groupby("id", sort=True).tail(1).sort_values("id")
    return gpd.GeoDataFrame(
        {
            "id": latest["id"].to_numpy(np.int64),
            "first_seen": latest["first_seen"].to_numpy(),
            "last_seen": latest["last_seen"].to_numpy(),
            "n_months": latest["n_months"].to_numpy(np.int64),
        },
        geometry=list(latest.geometry),
        crs=gdf.crs,
    )


def _write_gpkg(path: Path, per_month, gdf: gpd.GeoDataFrame) -> Path:
    try:
        with atomic_path(path) as tmp:
            for _, month_key, g in per_month:
                write_vector(_month_layer(g, gdf.crs), tmp, layer=month_key.replace("-", "_"), driver="GPKG", append_layer=True)
            write_vector(buildings_layer(gdf), tmp, layer="buildings", driver="GPKG", append_layer=True)
    except SN7DataError as exc:  # named after the temporary file: name the output
        raise SN7DataError(path, exc.problem) from None
    return path


def check_export_crs(crs: str | None) -> None:
    """Validate ``crs`` early (a typo should not fail after minutes of work)."""
    if crs is None:
        return
    from pyproj import CRS

    try:
        CRS.from_user_input(crs)
    except Exception:
        raise SN7Error(f"export: crs={crs!r} is not a CRS pyproj understands") from None
