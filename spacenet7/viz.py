"""Plotting and loading helpers for exploring a pipeline run (used by the notebook; tested).

Everything reads the files the stages wrote: ``pipeline.json``, ``metrics.json``,
``vectors/<AOI>.parquet``, ``predictions/<AOI>/<stem>.tif`` and the data set itself.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from affine import Affine
from matplotlib.collections import PolyCollection
from matplotlib.colors import Colormap

from spacenet7.data.sn7 import MonthRecord, read_image, read_labels, scan
from spacenet7.errors import SN7Error
from spacenet7.io.artifacts import load_vectors
from spacenet7.io.layout import RunLayout
from spacenet7.io.probability import read_prediction
from spacenet7.metrics.matching import match


@dataclass
class Run:
    """A finished pipeline run, loaded for exploration."""

    run_dir: Path
    data_root: Path
    test_aois: list[str]
    metrics: dict
    records: dict[str, list[MonthRecord]] = field(repr=False)
    vectors: dict[str, gpd.GeoDataFrame] = field(repr=False)

    def month_index(self, aoi: str, which: str | int) -> int:
        """Index in the AOI's month list of ``which``: a month key (``YYYY-MM``) or already an index."""
        if isinstance(which, int):
            return which
        keys = [r.month_key for r in self.records[aoi]]
        return keys.index(which)


def load_run(run_dir: str | Path) -> Run:
    """Load ``pipeline.json``, ``metrics.json`` and the vectors of a run directory."""
    run_dir = Path(run_dir)
    run = RunLayout(run_dir)
    if not run.manifest.exists():
        raise SN7Error(f"{run.manifest}: not a pipeline run (run `spacenet7 pipeline run_dir={run_dir}` first)")
    m = json.loads(run.manifest.read_text())
    metrics = json.loads(run.metrics.read_text())
    aois = m["test_aois"]
    records = scan(m["data_root"], aois=aois)
    vectors = {a: load_vectors(run.vector_file(a))[0] for a in aois}
    return Run(run_dir, Path(m["data_root"]), aois, metrics, records, vectors)


def _outline(ax: plt.Axes, geoms: Any, transform: Affine, **kw: Any) -> None:
    inv = ~transform
    verts = [
        np.asarray([inv * xy for xy in np.asarray(g.exterior.coords)]) - 0.5
        for g in geoms
        if g is not None and not g.is_empty and g.geom_type == "Polygon"
    ]
    ax.add_collection(PolyCollection(verts, **kw))


def month_colors(n: int) -> Colormap:
    """A colormap over the month indices (new buildings coloured by their first month)."""
    return plt.get_cmap("viridis", max(n, 2))


def plot_month(run: Run, aoi: str, which: str | int) -> plt.Figure:
    """RGB mosaic, ground truth, predicted footprint probability, and predicted footprints coloured by first month."""
    t = run.month_index(aoi, which)
    rec = run.records[aoi][t]
    img = read_image(rec)
    rgb = np.moveaxis(img.rgb, 0, -1)
    truth = read_labels(rec, img.crs)
    prob, valid, _, _, _ = read_prediction(RunLayout(run.run_dir).prediction(aoi, rec.stem))
    pred = run.vectors[aoi]
    pred = pred[pred["stem"] == rec.stem]
    month_keys = [r.month_key for r in run.records[aoi]]
    cmap = month_colors(len(month_keys))
    fig, ax = plt.subplots(1, 4, figsize=(20, 5.4))
    ax[0].imshow(rgb)
    ax[0].set_title(f"{rec.month_key} mosaic")
    ax[1].imshow(rgb)
    _outline(ax[1], truth.geometry, img.transform, facecolors="none", edgecolors="yellow", linewidths=0.7)
    ax[1].set_title(f"ground truth ({len(truth)})")
    shown = np.where(valid, prob[0], np.nan)
    im = ax[2].imshow(shown, vmin=0, vmax=1, cmap="magma")
    fig.colorbar(im, ax=ax[2], fraction=0.046)
    ax[2].set_title("footprint probability (nodata blank)")
    ax[3].imshow(rgb)
    first = pred["first_seen"].map({k: i for i, k in enumerate(month_keys)}).to_numpy()
    _outline(
        ax[3], pred.geometry, img.transform, facecolors=[cmap(i) for i in first], edgecolors="white", linewidths=0.3, alpha=0.75
    )
    ax[3].set_title(f"predicted ({len(pred)}), colour = first month")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(month_keys) - 1))
    cb = fig.colorbar(sm, ax=ax[3], fraction=0.046, ticks=range(0, len(month_keys), max(1, len(month_keys) // 6)))
    cb.ax.set_yticklabels(month_keys[:: max(1, len(month_keys) // 6)])
    for a in ax:
        a.set_axis_off()
    fig.suptitle(aoi)
    fig.tight_layout()
    return fig


def timeline(run: Run, aoi: str) -> pd.DataFrame:
    """Buildings and new buildings per month, truth against prediction."""
    rows: list[dict] = []
    seen_t: set[int] = set()
    seen_p: set[int] = set()
    pred = run.vectors[aoi]
    for rec in run.records[aoi]:
        t_ids = set(read_labels(rec)["Id"])
        p_ids = set(pred.loc[pred["stem"] == rec.stem, "id"])
        rows.append(
            {
                "month": rec.month_key,
                "truth": len(t_ids),
                "predicted": len(p_ids),
                "truth_new": len(t_ids - seen_t) if seen_t else 0,
                "predicted_new": len(p_ids - seen_p) if seen_p else 0,
            }
        )
        seen_t |= t_ids
        seen_p |= p_ids
    return pd.DataFrame(rows)


def plot_timeline(df: pd.DataFrame) -> plt.Figure:
    """Buildings and new buildings per month, truth against prediction (from :func:`timeline`)."""
    fig, ax = plt.subplots(1, 2, figsize=(13, 3.8))
    df.plot(x="month", y=["truth", "predicted"], ax=ax[0], marker="o", title="buildings per month")
    df.plot(x="month", y=["truth_new", "predicted_new"], ax=ax[1], kind="bar", title="new buildings per month")
    fig.tight_layout()
    return fig


def month_scores(run: Run) -> pd.DataFrame:
    """Per-month precision/recall/F1 (IoU >= 0.5 and > 0.25) from ``metrics.json``."""
    return pd.DataFrame(run.metrics["per_month"])


def scot_breakdown(run: Run) -> pd.DataFrame:
    """Per-AOI SCOT, tracking, change, mismatches and change TP/FP/FN."""
    return pd.DataFrame(run.metrics["per_aoi"]).T


def plot_scores(run: Run) -> plt.Figure:
    """Per-month F1 at both IoU thresholds, and precision against recall."""
    df = month_scores(run)
    fig, ax = plt.subplots(1, 2, figsize=(13, 3.8))
    for aoi, g in df.groupby("aoi"):
        ax[0].plot(g["month"], g["f1_50"], marker="o", label=f"{aoi} F1@0.5")
        ax[0].plot(g["month"], g["f1"], ls="--", label=f"{aoi} F1@0.25")
    ax[0].set_ylim(0, 1)
    ax[0].set_title("per-month F1")
    ax[0].tick_params(axis="x", rotation=60)
    ax[0].legend(fontsize=7)
    b = scot_breakdown(run)[["scot", "tracking", "change"]].astype(float)
    b.plot(kind="bar", ax=ax[1], ylim=(0, 1), title="SCOT breakdown per AOI", rot=0)
    fig.tight_layout()
    return fig


def worst_month(run: Run) -> tuple[str, str]:
    """The (AOI, month key) with the lowest F1 at IoU >= 0.5 among months with buildings."""
    df = month_scores(run)
    df = df[df["n_truth"] + df["n_proposal"] > 0]
    row = df.sort_values("f1_50").iloc[0]
    return row["aoi"], row["month"]


def errors(run: Run, aoi: str, which: str | int, iou: float = 0.5) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """True positives, false positives and false negatives of a month (map coordinates)."""
    rec = run.records[aoi][run.month_index(aoi, which)]
    truth = read_labels(rec)
    pred = run.vectors[aoi]
    pred = pred[pred["stem"] == rec.stem].reset_index(drop=True)
    m = match(truth.geometry.values, pred.geometry.values, iou, inclusive=True)
    fp = pred.drop(index=m.b)
    fn = truth.drop(index=m.a)
    return pred.loc[m.b], fp, fn


def plot_errors(run: Run, aoi: str, which: str | int) -> plt.Figure:
    """The month's image with matches (green), false positives (red) and false negatives (orange)."""
    rec = run.records[aoi][run.month_index(aoi, which)]
    img = read_image(rec)
    tp, fp, fn = errors(run, aoi, which)
    fig, ax = plt.subplots(figsize=(8, 8))
    ax.imshow(np.moveaxis(img.rgb, 0, -1))
    _outline(ax, tp.geometry, img.transform, facecolors="none", edgecolors="lime", linewidths=0.6)
    _outline(ax, fp.geometry, img.transform, facecolors=(1, 0, 0, 0.35), edgecolors="red", linewidths=0.8)
    _outline(ax, fn.geometry, img.transform, facecolors=(1, 0.6, 0, 0.35), edgecolors="orange", linewidths=0.8)
    ax.set_title(f"{aoi} {rec.month_key}: {len(tp)} TP (green), {len(fp)} FP (red), {len(fn)} FN (orange)")
    ax.set_axis_off()
    return fig


def tiles_reachable(host: str = "tile.openstreetmap.org", timeout: float = 1.0) -> bool:
    """Whether a web basemap can be fetched (False offline, or with SPACENET7_OFFLINE=1)."""
    if os.environ.get("SPACENET7_OFFLINE"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def web_map(gdf: gpd.GeoDataFrame, column: str = "first_seen", tiles: bool | None = None) -> tuple[Any, plt.Figure | None]:
    """An interactive folium map of footprints coloured by ``column``.

    Without reachable tiles (offline) the map has no basemap but still shows the footprints, and a
    static matplotlib plot is returned alongside so that something always renders.

    Returns:
        ``(folium.Map, matplotlib Figure or None)``.
    """
    import folium

    tiles = tiles_reachable() if tiles is None else tiles
    g = gdf.to_crs("EPSG:4326")
    m = g.explore(
        column=column,
        cmap="viridis",
        tiles="OpenStreetMap" if tiles else None,
        style_kwds={"weight": 0.5, "fillOpacity": 0.7},
        legend=True,
    )
    static = None
    if not tiles:
        static, ax = plt.subplots(figsize=(7, 7))
        g.plot(column=column, cmap="viridis", legend=True, ax=ax, legend_kwds={"fontsize": 7})
        ax.set_title(f"footprints by {column} (offline: no basemap)")
        ax.set_axis_off()
    assert isinstance(m, folium.Map)
    return m, static
