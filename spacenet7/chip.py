"""Stage ``chip``: georeferenced training chips with footprint/boundary/contact targets.

Each chip is a 7-band GeoTIFF (R, G, B, footprint, boundary, contact, ignore) carrying its own
transform and CRS. With ``upscale > 1`` the image is resampled and the labels are rasterized from
the polygons on the finer grid (never upsampled masks). ``index.parquet`` (or ``.csv``) lists
every chip with its source, window, georeferencing, valid and building fractions, and split.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from tqdm import tqdm

from spacenet7.config import ChipConfig
from spacenet7.data.sn7 import instance_raster, read_image, read_labels, scan
from spacenet7.data.splits import aoi_split, spatial_split
from spacenet7.data.targets import CHANNELS, make_targets
from spacenet7.errors import SN7Error
from spacenet7.io.atomic import atomic_path
from spacenet7.io.raster import iter_windows, write_raster

log = logging.getLogger(__name__)
BANDS = ("red", "green", "blue", *CHANNELS, "ignore")


def index_path(chip_dir: str | Path) -> Path:
    """The chip index of a chip folder (parquet preferred, csv accepted)."""
    chip_dir = Path(chip_dir)
    for name in ("index.parquet", "index.csv"):
        if (chip_dir / name).exists():
            return chip_dir / name
    return chip_dir / "index.parquet"


def load_index(chip_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read the chip index and the chip metadata (``chips.json``), with clear errors."""
    path = index_path(chip_dir)
    if not path.exists():
        raise SN7Error(f"{path}: chip index not found (run `spacenet7 chip` first, or fix chip_dir=)")
    index = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    meta = json.loads((Path(chip_dir) / "chips.json").read_text())
    return index, meta


def run(cfg: ChipConfig) -> dict[str, Path]:
    """Cut chips for every (AOI, month) of ``cfg.data_root``; returns the index and metadata paths."""
    if cfg.split not in ("aoi", "spatial"):
        raise SN7Error(f"chip: split={cfg.split!r} must be 'aoi' or 'spatial'")
    if cfg.overlap >= cfg.chip_size:
        raise SN7Error(f"chip: overlap {cfg.overlap} must be smaller than chip_size {cfg.chip_size}")
    records = scan(cfg.data_root, cfg.split_dir, cfg.aois)
    out = Path(cfg.out_dir)
    by_aoi = aoi_split(list(records), cfg.val_frac, cfg.seed) if cfg.split == "aoi" else {}
    jobs = [r for recs in records.values() for r in recs[:: cfg.month_stride]]
    rows: list[dict] = []
    for rec in tqdm(jobs, desc="chip", disable=not cfg.progress):
        rows += _chip_month(rec, cfg, out, by_aoi.get(rec.aoi))
    index = pd.DataFrame(rows)
    if index.empty:
        raise SN7Error(f"chip: no chip passed min_valid_frac={cfg.min_valid_frac} under {cfg.data_root}")
    meta = {"upscale": cfg.upscale, "chip_size": cfg.chip_size, "bands": list(BANDS), "source_bands": 4,
            "split": cfg.split, "aois": sorted(records), "data_root": str(cfg.data_root)}
    idx_path = out / f"index.{cfg.index_format}"
    with atomic_path(idx_path) as tmp:
        index.to_parquet(tmp, index=False) if cfg.index_format == "parquet" else index.to_csv(tmp, index=False)
    with atomic_path(out / "chips.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    counts = index["split"].value_counts().to_dict()
    log.info("chip: %d chips (%s) in %s", len(index), counts, out)
    return {"index": idx_path, "meta": out / "chips.json"}


def _chip_month(rec, cfg: ChipConfig, out: Path, aoi_side: str | None) -> list[dict]:
    img = read_image(rec, upscale=cfg.upscale)
    labels = read_labels(rec, img.crs)
    inst = instance_raster(labels, img.shape, img.transform)
    targets = make_targets(inst, cfg.boundary_width, cfg.contact_width)
    ignore = (~img.valid).astype(np.uint8)
    targets[:, ignore.astype(bool)] = 0
    stack = np.concatenate([img.rgb, targets, ignore[None]])
    h, w = img.shape
    rows = []
    for win in iter_windows(h, w, cfg.chip_size, cfg.chip_size - cfg.overlap):
        side = aoi_side if aoi_side is not None else spatial_split(win, w, cfg.val_frac)
        if side is None:
            continue
        r0, c0 = int(win.row_off), int(win.col_off)
        sl = (slice(r0, r0 + int(win.height)), slice(c0, c0 + int(win.width)))
        valid_frac = float(1 - ignore[sl].mean())
        if valid_frac < cfg.min_valid_frac:
            continue
        path = out / "chips" / rec.aoi / f"{rec.stem}_r{r0:05d}_c{c0:05d}.tif"
        transform = rasterio.windows.transform(win, img.transform)
        if not _complete(path):
            _write_chip(path, stack[(slice(None), *sl)], transform, img.crs)
        rows.append({
            "path": str(path.relative_to(out)), "aoi": rec.aoi, "month": rec.month_key, "stem": rec.stem,
            "row_off": r0, "col_off": c0, "height": int(win.height), "width": int(win.width), "upscale": cfg.upscale,
            "src_row_off": r0 / cfg.upscale, "src_col_off": c0 / cfg.upscale,
            "src_height": win.height / cfg.upscale, "src_width": win.width / cfg.upscale,
            "crs": img.crs.to_string(), "transform": json.dumps(list(transform)[:6]),
            "valid_frac": valid_frac, "building_frac": float(targets[0][sl].mean()), "split": side,
        })
    return rows


def _complete(path: Path) -> bool:
    """A chip is complete when it exists and opens (chips are renamed into place when done)."""
    if not path.exists():
        return False
    try:
        with rasterio.open(path) as ds:
            return ds.count == len(BANDS)
    except rasterio.errors.RasterioIOError:
        return False


def _write_chip(path: Path, array: np.ndarray, transform, crs) -> None:
    profile = dict(driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0], dtype="uint8",
                   crs=crs, transform=transform, compress="deflate", interleave="pixel")
    write_raster(path, array, profile, descriptions=BANDS)
