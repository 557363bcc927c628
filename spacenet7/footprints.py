"""One AOI's probability rasters -> tracked building footprints: the work of ``vectorize`` per AOI.

Each month is split into buildings (watershed, :mod:`spacenet7.polygonize`), the months are tracked
(:mod:`spacenet7.track`; ``track.mode=onset``: footprints from the last months, each building's month
of appearance from its evidence in every month), and the result is written as the vectorize output
(:func:`spacenet7.io.artifacts.write_vectors`). ``spacenet7 vectorize`` runs :func:`vectorize_aoi` per
AOI; the inference API and ``spacenet7.Model`` run it on uploads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine
from rasterio import features

from spacenet7.config import VectorizeConfig
from spacenet7.data.sn7 import parse_stem
from spacenet7.errors import SN7DataError
from spacenet7.io.artifacts import write_vectors
from spacenet7.io.probability import completed_rasters, read_prediction, source_offset
from spacenet7.io.raster import open_raster
from spacenet7.io.vector import pixel_to_map
from spacenet7.polygonize import instances, polygons
from spacenet7.track import TrackConfig, TrackMode, onset_tracks, track

log = logging.getLogger(__name__)


@dataclass
class MonthPrediction:
    """What tracking needs from one month's probability raster."""

    stem: str
    month_key: str  # YYYY-MM
    footprint: np.ndarray  # probability on the prediction grid
    valid: np.ndarray
    upscale: float  # prediction grid pixels per source pixel


# vectorize holds whole months: bytes per pixel while one month is read and watershedded (uint8 and float32
# probabilities, masks, labels), and what tracking keeps of every month (footprint probability and mask)
WORK_BYTES_PER_PIXEL = 48
KEPT_BYTES_PER_PIXEL = 13


def available_memory() -> int:
    """Bytes of memory this process can still get (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(files: list[Path]) -> None:
    """Refuse, in one line and before any allocation, an AOI whose months do not fit in memory.

    Raises:
        SN7DataError: naming the first month's raster, its size and the memory it would need.
    """
    with open_raster(files[0]) as ds:
        h, w = ds.height, ds.width
    need = h * w * (WORK_BYTES_PER_PIXEL + KEPT_BYTES_PER_PIXEL * len(files))
    free = available_memory()
    if need > free:
        raise SN7DataError(
            files[0],
            f"{w}x{h} px: vectorizing its {len(files)} month(s) needs about {need / 2**30:.1f} GiB, more than the "
            f"{free / 2**30:.1f} GiB of memory available (vectorize holds whole months); predict smaller areas "
            "(crop the mosaics into tiles) or use a machine with more memory",
        )


def vectorize_aoi(aoi_dir: Path, cfg: VectorizeConfig) -> Path:
    """Polygonize and track one AOI."""
    # the months of predict's finished run only: not a killed run's partial set, nor months it left stale
    files = sorted(completed_rasters(aoi_dir), key=lambda p: parse_stem(p.name).month_key)
    check_memory(files)
    months, preds = [], []
    crs: Any = None
    src_transform: Any = None
    shape: Any = None
    onset = cfg.track.mode is TrackMode.onset
    ref: np.ndarray | None = None  # mode=onset: the summed probabilities of the last reference_months months
    ref_valid: np.ndarray | None = None
    first_ref = len(files) - min(cfg.track.reference_months, len(files))
    for k, f in enumerate(files):
        prob, valid, transform, crs_f, up = read_prediction(f)
        if crs is not None and (crs_f != crs or transform * Affine.scale(up) != src_transform or valid.shape != shape):
            raise SN7DataError(
                f,
                f"grid ({crs_f}, {valid.shape[0]}x{valid.shape[1]}) differs from the AOI's first month "
                f"({crs}, {shape[0]}x{shape[1]}); `spacenet7 predict` aligns the months of an AOI",
            )
        crs, shape = crs_f, valid.shape
        src_transform = transform * Affine.scale(up)
        info = parse_stem(f.name)
        if onset:  # footprints come later, from the reference; keep what the onsets need
            if k >= first_ref:
                ref = prob * valid if ref is None else ref + prob * valid
                ref_valid = valid.astype(np.float32) if ref_valid is None else ref_valid + valid
            preds.append(MonthPrediction(f.stem, info.month_key, prob[0].astype(np.float16), valid, up))
            continue
        labels = instances(prob, valid, threshold=cfg.threshold, seed_threshold=cfg.seed_threshold, min_seed_px=cfg.min_seed_px)
        months.append(_month_polygons(labels, up, cfg)[0])
        preds.append(MonthPrediction(f.stem, info.month_key, prob[0], valid, up))
    if onset:
        assert ref is not None and ref_valid is not None
        rows = _onset_rows(ref / np.maximum(ref_valid, 1), ref_valid > 0, preds, cfg)
    else:
        rows = track_months(months, preds, cfg.track)
    # onto the labels' registration (VectorizeConfig.shift_px), and from a raster of part of a mosaic (predict
    # band_frac=) into the mosaic's pixels, where the map transform starts
    col0, row0 = source_offset(files[0])
    src_transform = src_transform * Affine.translation(-col0, -row0)
    move = np.asarray(cfg.shift_px, np.float64) + [col0, row0]
    if move.any() and len(rows):
        rows["geometry"] = shapely.transform(rows["geometry"].to_numpy(), lambda xy: xy + move)
    stems = [p.stem for p in preds]
    keys = [p.month_key for p in preds]
    gdf = gpd.GeoDataFrame(
        {
            "id": rows["id"].to_numpy(np.int64),
            "stem": [stems[t] for t in rows["t"]],
            "month": [keys[t] for t in rows["t"]],
            "first_seen": [keys[t] for t in rows["first_seen"]],
            "last_seen": [keys[t] for t in rows["last_seen"]],
            "n_months": rows["n_months"].to_numpy(np.int64),
            "filled": rows["filled"].to_numpy(bool),
            "pix_wkt": shapely.to_wkt(rows["geometry"].to_numpy(), rounding_precision=3) if len(rows) else [],
        },
        geometry=list(pixel_to_map(rows["geometry"].to_numpy(), src_transform)) if len(rows) else [],
        crs=crs,
    )
    meta = {
        "aoi": aoi_dir.name,
        "crs": crs.to_string(),
        "transform": list(src_transform)[:6],
        "months": [{"stem": s, "month": k} for s, k in zip(stems, keys)],
    }
    out = write_vectors(Path(cfg.out_dir) / f"{aoi_dir.name}.parquet", gdf, meta)
    log.info("vectorize: %s: %d buildings over %d months", aoi_dir.name, gdf["id"].nunique(), len(files))
    return out


def _month_polygons(labels: np.ndarray, up: float, cfg: VectorizeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Polygons of an instance raster in source pixels, and their instance labels; small ones dropped."""
    pix = polygons(labels, simplify=cfg.simplify_px * up)
    ids = np.unique(labels[labels > 0]) if len(pix) else np.zeros(0, np.int64)
    if up != 1 and len(pix):
        pix = shapely.transform(pix, lambda xy: xy / up)
    if cfg.min_area_px > 0 and len(pix):
        keep = shapely.area(pix) >= cfg.min_area_px
        pix, ids = pix[keep], ids[keep]
    return pix, ids


def _onset_rows(ref: np.ndarray, ref_valid: np.ndarray, preds: list[MonthPrediction], cfg: VectorizeConfig) -> pd.DataFrame:
    """``track.mode=onset``: footprints from the reference probabilities, each building's month of appearance
    from its mean footprint probability in every month (:func:`spacenet7.track.onset_tracks`)."""
    labels = instances(ref, ref_valid, threshold=cfg.threshold, seed_threshold=cfg.seed_threshold, min_seed_px=cfg.min_seed_px)
    geoms, ids = _month_polygons(labels, preds[0].upscale if preds else 1.0, cfg)
    n = int(labels.max()) + 1
    flat = labels.ravel()
    evidence = np.full((len(ids), len(preds)), np.nan)
    for t, p in enumerate(preds):
        ok = p.valid.ravel()
        cnt = np.bincount(flat[ok], minlength=n)
        tot = np.bincount(flat[ok], weights=p.footprint.ravel()[ok].astype(np.float64), minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            evidence[:, t] = np.where(cnt[ids] > 0, tot[ids] / cnt[ids], np.nan)
    return onset_tracks(geoms, evidence, cfg.track, cfg.threshold)


def track_months(months: list[np.ndarray], preds: list[MonthPrediction], cfg: TrackConfig) -> pd.DataFrame:
    """:func:`spacenet7.track.track` with the imagery's evidence: a gap is not filled in a month
    that clearly shows no building, nor (unless ``fill_masked``) where the mask hides it."""
    evidence = _evidence_fn(preds)

    def absent(t: int, geom: shapely.Geometry) -> bool:
        valid_frac, prob = evidence(t, geom)
        return not cfg.fill_masked if valid_frac < 0.5 else prob < cfg.absent_prob

    return track(months, cfg, absent=absent, confidence=lambda t, g: evidence(t, g)[1])


def _evidence_fn(preds: list[MonthPrediction]) -> Callable[[int, shapely.Geometry], tuple[float, float]]:
    """``evidence(t, geom)`` -> (fraction of valid pixels, mean footprint probability over them) in month ``t``."""

    def evidence(t: int, geom: shapely.Geometry) -> tuple[float, float]:
        p = preds[t]
        g = shapely.affinity.scale(geom, p.upscale, p.upscale, origin=(0, 0)) if p.upscale != 1 else geom
        x0, y0, x1, y1 = (int(np.floor(v)) for v in g.bounds)
        h, w = p.valid.shape
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1 + 1, w), min(y1 + 1, h)
        if x1 <= x0 or y1 <= y0:
            return 0.0, 0.0
        inside = features.rasterize([g], out_shape=(y1 - y0, x1 - x0), transform=Affine.translation(x0, y0)) > 0
        ok = inside & p.valid[y0:y1, x0:x1]
        if not ok.any():
            return 0.0, 0.0
        return float(ok.sum() / max(inside.sum(), 1)), float(p.footprint[y0:y1, x0:x1][ok].mean())

    return evidence
