"""Stage ``chip``: training data with footprint/boundary/contact targets, in one of two layouts.

- ``layout=rasters`` (windows): one bit-packed target raster per month on the training grid
  (:mod:`spacenet7.data.windows`); the imagery stays in the source mosaics and training draws
  random windows from it. Prepared data is a small fraction of the imagery's size at any
  ``upscale`` (``python bench/bench_windows.py``). The index lists, per month, the region each
  split may use.
- ``layout=chips``: 7-band GeoTIFF chips (R, G, B, footprint, boundary, contact, ignore), each with
  its own transform and CRS, on a fixed grid; simple to inspect, but the upscaled RGB is copied.

With ``upscale > 1`` the image is resampled and the labels are rasterized from the polygons on
the finer grid (never upsampled masks). ``index.parquet`` (or ``.csv``) lists every chip or
region with its source, georeferencing, valid and building fractions, and split. ``chips.json``
records the settings. A file of an earlier run is reused only when it was made with the same
settings from the same sources (each file carries that key in its tags: the settings and the size
and modification time of the month's image, masked image, UDM and labels), and ``chips.json`` is
removed before any file is written, so that a killed run leaves no index that ``train`` trusts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from tqdm import tqdm

from spacenet7.cluster import map_aois
from spacenet7.config import ChipConfig, ClusterMode, Layout, Split
from spacenet7.data.bands import InputSpec
from spacenet7.data.sn7 import (
    Image,
    MonthRecord,
    check_labels_on_image,
    data_roots,
    image_grid,
    instance_raster,
    read_image,
    read_labels,
    scan,
    shift_labels,
)
from spacenet7.data.splits import aoi_split, band_start, spatial_split, split_regions
from spacenet7.data.targets import CHIP_BANDS, make_targets
from spacenet7.errors import SN7Error
from spacenet7.io.artifacts import chip_meta_path, pack_targets, unpack_targets, write_index
from spacenet7.io.atomic import clear_partials
from spacenet7.io.raster import iter_windows, write_raster

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cutting:
    """How one month becomes training data (the chip cutter's parameters, unpacked from the config)."""

    upscale: float  # training grid / source grid
    spec: InputSpec  # the mosaics' band layout and scaling
    boundary_width: int
    contact_width: int
    chip_size: int  # layout=chips
    overlap: int  # layout=chips
    val_frac: float  # split=spatial: the right band's width fraction
    min_valid_frac: float  # chips / regions with fewer valid pixels are skipped
    label_shift: tuple[float, float] = (0.0, 0.0)  # (dx, dy) source pixels added to the labels
    settings_key: str = ""  # a hash of :func:`_settings`: part of every file's source key (:func:`source_key`)


SOURCE_TAG = "SPACENET7_SOURCE"  # the GeoTIFF tag holding a prepared file's source key


def source_key(rec: MonthRecord, cut: Cutting) -> str:
    """What one month's prepared files depend on: the settings, and the size and modification
    time of every file the month is read from (an edited label file changes it)."""
    files = [rec.image, rec.image_masked, rec.udm, rec.labels_match]
    stats = [(str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in files if p is not None]
    return hashlib.sha256(json.dumps([cut.settings_key, stats]).encode()).hexdigest()[:32]


def _settings(cfg: ChipConfig) -> dict:
    """Everything the prepared files depend on: resume only when all of it is the same."""
    keys = (
        "data_root",
        "split_dir",
        "layout",
        "chip_size",
        "overlap",
        "upscale",
        "boundary_width",
        "contact_width",
        "label_shift_px",
        "register_labels",
        "register_months",
    )
    out = {k: getattr(cfg, k) for k in keys}
    out["data_root"] = os.pathsep.join(str(r.resolve()) for r in data_roots(cfg.data_root))
    return {**out, "input": cfg.input.to_dict()}


def run(cfg: ChipConfig) -> dict[str, Path]:
    """Prepare every (AOI, month) of ``cfg.data_root``; returns the index and metadata paths."""
    layout = cfg.layout
    if layout is Layout.rasters and cfg.upscale != int(cfg.upscale):
        raise SN7Error(f"chip: layout=rasters needs an integer upscale (got {cfg.upscale})")
    records = scan(cfg.data_root, cfg.split_dir, cfg.aois)
    out = Path(cfg.out_dir)
    clear_partials(out)
    settings = _settings(cfg)
    chip_meta_path(out).unlink(missing_ok=True)  # invalid from here until every file is in place: written again last
    reuse = True  # file by file, where its source key matches (source_key)
    by_aoi = aoi_split(list(records), cfg.val_frac, cfg.seed) if cfg.split is Split.aoi else {}
    jobs = [r for recs in records.values() for r in recs[:: cfg.month_stride]]
    rows: list[dict] = []
    month_fn = _chip_month if layout is Layout.chips else _target_month
    cut = Cutting(
        cfg.upscale,
        cfg.input,
        cfg.boundary_width,
        cfg.contact_width,
        cfg.chip_size,
        cfg.overlap,
        cfg.val_frac,
        cfg.min_valid_frac,
        (cfg.label_shift_px[0], cfg.label_shift_px[1]),
        hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest(),
    )
    cuts = {aoi: cut for aoi in records}
    shifts: dict[str, list[float]] = {}
    if cfg.register_labels:  # each AOI's labels moved onto its imagery by its own measured offset
        for aoi, recs in records.items():
            shifts[aoi] = _registration(recs, cfg, by_aoi.get(aoi))
            cuts[aoi] = dataclasses.replace(cut, label_shift=(shifts[aoi][0], shifts[aoi][1]))
    if cfg.cluster.mode is ClusterMode.none:  # in process: a progress bar over months
        for rec in tqdm(jobs, desc="chip", disable=not cfg.progress):
            rows += month_fn(rec, cuts[rec.aoi], out, by_aoi.get(rec.aoi), reuse)
    else:  # one Dask task per AOI (its months in order); rows in the same order as in process
        by_name: dict[str, list] = {}
        for rec in jobs:
            by_name.setdefault(rec.aoi, []).append(rec)
        per_aoi = map_aois(
            chip_aoi,
            [(a, (month_fn, recs, cuts[a], out, by_aoi.get(a), reuse)) for a, recs in by_name.items()],
            cfg.cluster,
            stage="chip",
            progress=cfg.progress,
            cleanup=lambda: clear_partials(out),  # a killed worker's
        )
        rows = [row for aoi_rows in per_aoi for row in aoi_rows]
    index = pd.DataFrame(rows)
    if index.empty:
        raise SN7Error(f"chip: no chip passed min_valid_frac={cfg.min_valid_frac} under {cfg.data_root}")
    meta = {
        "layout": layout.value,
        "upscale": cfg.upscale,
        "chip_size": cfg.chip_size,
        "bands": list(CHIP_BANDS),
        "input": cfg.input.to_dict(),
        "split": cfg.split,
        "val_frac": cfg.val_frac,
        "aois": sorted(records),
        "data_root": str(cfg.data_root),
        "settings": settings,
        "label_shifts": shifts or None,  # register_labels: (dx, dy) source pixels added to each AOI's labels
    }
    idx_path, meta_path = write_index(out, index, meta, cfg.index_format)
    counts = index["split"].value_counts().to_dict()
    log.info("chip: %d %s (%s) in %s", len(index), "chips" if layout is Layout.chips else "regions", counts, out)
    return {"index": idx_path, "meta": meta_path}


def _registration(recs: list, cfg: ChipConfig, aoi_side: str | None) -> list[float]:
    """An AOI's measured label offset ``[dx, dy]`` (:func:`spacenet7.data.registration.estimate_offset`),
    from its training area only (never the held-out band); ``label_shift_px`` where nothing can be measured."""
    from spacenet7.data.registration import estimate_offset

    cols = None
    if cfg.split is Split.spatial:
        w = image_grid(recs[0])[2][1]
        cols = (0, band_start(w, cfg.val_frac))
    off = estimate_offset(recs, cols=cols, spec=cfg.input, max_months=cfg.register_months)
    if off.months == 0:
        log.warning("chip: %s: no labelled month to register; label_shift_px=%s kept", recs[0].aoi, cfg.label_shift_px)
        return [float(v) for v in cfg.label_shift_px]
    log.info(
        "chip: %s: labels moved by dx %+.3f dy %+.3f source px (measured on %d months)", recs[0].aoi, off.dx, off.dy, off.months
    )
    return [off.dx, off.dy]


def chip_aoi(
    month_fn: Callable[..., list[dict]], recs: list, cut: Cutting, out: Path, aoi_side: str | None, reuse: bool
) -> list[dict]:
    """The index rows of one AOI's months (``month_fn``: :func:`_chip_month` or :func:`_target_month`)."""
    return [row for rec in recs for row in month_fn(rec, cut, out, aoi_side, reuse)]


def _month_targets(rec: MonthRecord, cut: Cutting) -> tuple[Image, np.ndarray, np.ndarray]:
    """The month's image on the training grid, its targets (3, H, W) and ignore mask (H, W)."""
    img = read_image(rec, upscale=cut.upscale, spec=cut.spec)
    labels = read_labels(rec, img.crs)
    check_labels_on_image(labels, img.transform, img.shape, rec)
    labels = shift_labels(labels, img.transform * Affine.scale(cut.upscale), *cut.label_shift)  # source pixels
    inst = instance_raster(labels, img.shape, img.transform)
    targets = make_targets(inst, cut.boundary_width, cut.contact_width)
    ignore = (~img.valid).astype(np.uint8)
    targets[:, ignore.astype(bool)] = 0
    return img, targets, ignore


def _target_month(rec: MonthRecord, cut: Cutting, out: Path, aoi_side: str | None, reuse: bool) -> list[dict]:
    rel = Path("targets") / rec.aoi / f"{rec.stem}.tif"
    path = out / rel
    key = source_key(rec, cut)
    if reuse and _complete(path, 1, key):
        with rasterio.open(path) as ds:
            packed, transform, crs = ds.read(1), ds.transform, ds.crs
        targets, ignore = unpack_targets(packed)
    else:
        img, targets, ignore = _month_targets(rec, cut)
        packed, transform, crs = pack_targets(targets, ignore), img.transform, img.crs
        profile = dict(
            driver="GTiff",
            width=packed.shape[1],
            height=packed.shape[0],
            count=1,
            dtype="uint8",
            crs=crs,
            transform=transform,
            compress="deflate",
            tiled=True,
            blockxsize=256,
            blockysize=256,
        )
        write_raster(
            path, packed[None], profile, descriptions=("footprint|boundary|contact|ignore bits",), tags={SOURCE_TAG: key}
        )
    h, w = packed.shape
    rows = []
    for side, (r0, r1, c0, c1) in split_regions(h, w, aoi_side, cut.val_frac):
        valid_frac = float(1 - ignore[r0:r1, c0:c1].mean())
        if valid_frac < cut.min_valid_frac:
            continue
        rows.append(
            {
                "target": str(rel),
                "image": str(Path(rec.image).resolve()),
                "aoi": rec.aoi,
                "month": rec.month_key,
                "stem": rec.stem,
                "height": h,
                "width": w,
                "upscale": cut.upscale,
                "r0": r0,
                "r1": r1,
                "c0": c0,
                "c1": c1,
                "crs": crs.to_string(),
                "transform": json.dumps(list(transform)[:6]),
                "valid_frac": valid_frac,
                "building_frac": float(targets[0][r0:r1, c0:c1].mean()),
                "split": side,
            }
        )
    return rows


def _chip_month(rec: MonthRecord, cut: Cutting, out: Path, aoi_side: str | None, reuse: bool) -> list[dict]:
    key = source_key(rec, cut)
    img, targets, ignore = _month_targets(rec, cut)
    stack = np.concatenate([img.rgb, targets, ignore[None]])
    h, w = img.shape
    rows = []
    for win in iter_windows(h, w, cut.chip_size, cut.chip_size - cut.overlap):
        side = aoi_side if aoi_side is not None else spatial_split(win, w, cut.val_frac)
        if side is None:
            continue
        r0, c0 = int(win.row_off), int(win.col_off)
        sl = (slice(r0, r0 + int(win.height)), slice(c0, c0 + int(win.width)))
        valid_frac = float(1 - ignore[sl].mean())
        if valid_frac < cut.min_valid_frac:
            continue
        path = out / "chips" / rec.aoi / f"{rec.stem}_r{r0:05d}_c{c0:05d}.tif"
        transform = rasterio.windows.transform(win, img.transform)
        if not (reuse and _complete(path, len(CHIP_BANDS), key)):
            _write_chip(path, stack[(slice(None), *sl)], transform, img.crs, key)
        rows.append(
            {
                "path": str(path.relative_to(out)),
                "aoi": rec.aoi,
                "month": rec.month_key,
                "stem": rec.stem,
                "row_off": r0,
                "col_off": c0,
                "height": int(win.height),
                "width": int(win.width),
                "upscale": cut.upscale,
                "src_row_off": r0 / cut.upscale,
                "src_col_off": c0 / cut.upscale,
                "src_height": win.height / cut.upscale,
                "src_width": win.width / cut.upscale,
                "crs": img.crs.to_string(),
                "transform": json.dumps(list(transform)[:6]),
                "valid_frac": valid_frac,
                "building_frac": float(targets[0][sl].mean()),
                "split": side,
            }
        )
    return rows


def _complete(path: Path, bands: int, key: str) -> bool:
    """A file can be reused when it exists, opens (files are renamed into place when done) and was
    made from the same settings and sources (its ``SOURCE_TAG`` is ``key``)."""
    if not path.exists():
        return False
    try:
        with rasterio.open(path) as ds:
            return ds.count == bands and ds.tags().get(SOURCE_TAG) == key
    except rasterio.errors.RasterioIOError:
        return False


def _write_chip(path: Path, array: np.ndarray, transform: Affine, crs: Any, key: str) -> None:
    profile = dict(
        driver="GTiff",
        width=array.shape[2],
        height=array.shape[1],
        count=array.shape[0],
        dtype="uint8",
        crs=crs,
        transform=transform,
        compress="deflate",
        interleave="pixel",
    )
    write_raster(path, array, profile, descriptions=CHIP_BANDS, tags={SOURCE_TAG: key})
