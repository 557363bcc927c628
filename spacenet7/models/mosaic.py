"""Whole mosaics through the network: block by block, tiled, test-time views and scales, fused per AOI.

The work of ``spacenet7 predict`` for one AOI (:func:`predict_aoi`), also run by the inference API
and ``spacenet7.Model`` on uploads. Memory stays bounded on any mosaic size: the output is produced
block by block (``block`` source pixels square), each block read with a halo of half a tile so that
window blending crosses block edges without seams. The outputs follow :mod:`spacenet7.io.probability`;
temporal fusion is :mod:`spacenet7.data.fusion`'s.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from tqdm import tqdm

from spacenet7.config import Grid, PredictConfig, TTAViews
from spacenet7.data.fusion import fuse, same_grid
from spacenet7.data.sn7 import Image, MonthRecord, read_image
from spacenet7.data.splits import band_start
from spacenet7.data.targets import CHANNELS
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io import probability
from spacenet7.io.raster import WRITE_ERRORS, iter_windows, open_raster, to_cog, write_problem
from spacenet7.models.inference import LoadedModel, sliding_window

log = logging.getLogger("spacenet7.predict")  # its lines are predict's


def check_overlap(recs: list[MonthRecord]) -> None:
    """Refuse an AOI whose months do not all overlap its first month (the grid predict aligns them on).

    Raises:
        SN7DataError: naming the month's file that lies elsewhere, and how far away it is.
    """
    from rasterio.warp import transform_bounds

    with open_raster(recs[0].image) as ds:
        crs, (x0, y0, x1, y1) = ds.crs, tuple(ds.bounds)
    for rec in recs[1:]:
        with open_raster(rec.image) as ds:
            a0, b0, a1, b1 = transform_bounds(ds.crs, crs, *ds.bounds) if ds.crs != crs else tuple(ds.bounds)
        if a1 <= x0 or a0 >= x1 or b1 <= y0 or b0 >= y1:
            gap = np.hypot(max(x0 - a1, a0 - x1, 0.0), max(y0 - b1, b0 - y1, 0.0))
            unit = "km" if crs.is_projected else "degrees"
            raise SN7DataError(
                rec.image,
                f"does not overlap {recs[0].image.name}, the first month of {rec.aoi} "
                f"({gap / 1000 if crs.is_projected else gap:.1f} {unit} apart): is it another area? "
                "Predict each area on its own (images=[...] aoi=<name>)",
            )


def predict_all(model: LoadedModel, records: dict[str, list[MonthRecord]], cfg: PredictConfig) -> list[Path]:
    """Predict every AOI of ``records`` in turn (:func:`predict_aoi`); returns the probability rasters."""
    written = []
    for aoi, recs in records.items():
        written += predict_aoi(model, aoi, recs, cfg)
    return written


def predict_aoi(model: LoadedModel, aoi: str, recs: list[MonthRecord], cfg: PredictConfig) -> list[Path]:
    """Predict the months of one AOI, then fuse them; returns the AOI's probability rasters."""
    raw_dir = Path(cfg.out_dir) / aoi / ".raw"  # scratch: per-month predictions before fusion
    probability.unmark_complete(raw_dir.parent)  # vectorize refuses the folder until the record below is written
    try:
        raw, kept = [], []
        for rec in tqdm(recs, desc=f"predict {aoi}", disable=not cfg.progress):
            try:
                raw.append(
                    predict_mosaic(
                        model,
                        rec,
                        raw_dir / f"{rec.stem}.tif",
                        tile=cfg.tile,
                        overlap=cfg.overlap,
                        batch_size=cfg.batch_size,
                        tta=cfg.tta_views if cfg.tta else None,
                        scales=cfg.tta_scales,
                        block=cfg.block,
                        grid=cfg.grid,
                        region=None
                        if cfg.band_frac is None
                        else band_window(rec, cfg.band_frac, model.upscale, cfg.tile, cfg.overlap),
                    )
                )
                kept.append(rec)
            except NoValidPixels as exc:
                log.warning("predict: skipping %s", exc)
        if not raw:
            raise SN7DataError(recs[0].image.parent, f"every month of {aoi} is fully masked; nothing to predict")
        finals = [Path(cfg.out_dir) / aoi / f"{rec.stem}.tif" for rec in kept]
        if (cfg.fusion and len(raw) > 1) or not same_grid(raw):  # months on other grids are aligned
            fuse(raw, finals, cfg.fusion_weight if cfg.fusion else 0.0, cfg.block, raw_dir)
        else:
            for src, dst in zip(raw, finals):
                to_cog(src, dst)
        probability.mark_complete(raw_dir.parent, finals)  # last: every month of this AOI is in place
    except WRITE_ERRORS as exc:  # GDAL's, on a full disk or a vanished folder: one line naming where
        raise SN7DataError(Path(cfg.out_dir) / aoi, write_problem(Path(cfg.out_dir) / aoi, exc)) from None
    finally:
        shutil.rmtree(raw_dir, ignore_errors=True)
    return finals


def predict_mosaic(
    model: LoadedModel,
    rec: MonthRecord,
    out: Path,
    *,
    tile: int,
    overlap: int,
    batch_size: int = 8,
    tta: TTAViews | None = None,
    scales: Sequence[float] = (1.0,),
    block: int = 1024,
    grid: Grid = Grid.source,
    region: Window | None = None,
) -> Path:
    """Predict one mosaic (or a ``region`` of it) block by block into a tiled uint8 GeoTIFF at ``out``.

    Args:
        model: the loaded network.
        rec: the month to predict.
        out: the probability raster to write.
        tile: network input side (model grid pixels).
        overlap: pixels shared by neighbouring tiles.
        batch_size: tiles per forward pass.
        tta: the test-time views to average, or ``None`` for one view.
        scales: input scales to average, relative to the model's upscale (each read at ``upscale * s``,
            its probabilities resized back to the model's grid).
        block: output block side in source pixels (bounds memory).
        grid: write on the source grid or the model's upscaled grid.
        region: the part of the mosaic to predict, in source pixels (the whole mosaic when ``None``); the
            output covers it alone, its offset in the mosaic recorded (:func:`spacenet7.io.probability.describe`).
            Tiles start on its corner and read nothing outside it (:func:`band_window` places it).

    Raises:
        NoValidPixels: the month has no usable pixel.
    """
    with open_raster(rec.image) as ds:  # read_image checks the file against model.spec
        area = Window(0, 0, ds.width, ds.height)
        if region is not None:
            area = region.intersection(area)
        h, w, transform, crs = int(area.height), int(area.width), ds.window_transform(area), ds.crs
    a_col, a_row = int(area.col_off), int(area.row_off)
    f = model.upscale
    fi = int(round(f))
    if grid is Grid.source and f != fi:
        raise SN7Error(f"predict: grid=source needs an integer upscale (checkpoint has {f})")
    out_f = 1 if grid is Grid.source else fi
    profile = probability.profile(crs, transform * rasterio.Affine.scale(1 / out_f), w * out_f, h * out_f)
    halo = int(np.ceil(tile / (2 * f * min(1.0, *scales))))
    out.parent.mkdir(parents=True, exist_ok=True)
    any_valid = False
    with rasterio.open(out, "w", **profile) as dst:
        for blk in iter_windows(h, w, block, block):
            r0, c0 = max(0, int(blk.row_off) - halo), max(0, int(blk.col_off) - halo)
            r1 = min(h, int(blk.row_off + blk.height) + halo)
            c1 = min(w, int(blk.col_off + blk.width) + halo)
            win = Window(a_col + c0, a_row + r0, c1 - c0, r1 - r0)  # in the mosaic
            img = read_image(rec, window=win, upscale=f, spec=model.spec)
            prob = _multiscale(model, rec, win, img, scales, tile, overlap, batch_size, tta)
            valid: np.ndarray = img.valid
            if out_f != fi:  # back to the source grid: mean of probabilities, all sub-pixels valid
                hh, ww = valid.shape[0] // fi, valid.shape[1] // fi
                prob = prob[:, : hh * fi, : ww * fi].reshape(len(CHANNELS), hh, fi, ww, fi).mean((2, 4))
                valid = np.asarray(valid[: hh * fi, : ww * fi].reshape(hh, fi, ww, fi).all((1, 3)))
            k = out_f
            sl = (
                slice((int(blk.row_off) - r0) * k, (int(blk.row_off) - r0 + int(blk.height)) * k),
                slice((int(blk.col_off) - c0) * k, (int(blk.col_off) - c0 + int(blk.width)) * k),
            )
            enc = probability.encode(prob[(slice(None), *sl)], valid[sl])
            any_valid |= bool(valid[sl].any())
            dst.write(enc, window=Window(int(blk.col_off) * k, int(blk.row_off) * k, int(blk.width) * k, int(blk.height) * k))
        probability.describe(dst, f, grid, offset=(a_col, a_row))
    if not any_valid:
        out.unlink()
        raise NoValidPixels(rec.image, "no valid pixel in this month (alpha 0 / UDM everywhere)")
    return out


def _multiscale(
    model: LoadedModel,
    rec: MonthRecord,
    win: Window,
    img: Image,
    scales: Sequence[float],
    tile: int,
    overlap: int,
    batch_size: int,
    tta: TTAViews | None,
) -> np.ndarray:
    """Sliding-window probabilities of ``img`` (read at the model's upscale), averaged over ``scales``."""
    shape = img.rgb.shape[1:]
    total = np.zeros((len(CHANNELS), *shape), np.float32)
    for s in scales:
        rgb = img.rgb if s == 1 else read_image(rec, window=win, upscale=model.upscale * s, spec=model.spec).rgb
        prob = sliding_window(model, rgb, tile, overlap, batch_size, tta)
        if prob.shape[1:] != shape:  # area-consistent resize back onto the model's grid
            prob = F.interpolate(torch.from_numpy(prob)[None], size=shape, mode="bilinear", align_corners=False)[0].numpy()
        total += prob
    return total / len(scales)


def tile_align(upscale: float, tile: int, overlap: int) -> int:
    """Source pixels between a whole mosaic's tile columns: a region starting on a multiple of it sees the same tiles."""
    step = tile - overlap
    for k in range(1, step + 1):
        if abs(k * upscale - round(k * upscale)) < 1e-9 and round(k * upscale) % step == 0:
            return k
    return 1


def band_window(rec: MonthRecord, frac: float, upscale: float, tile: int, overlap: int) -> Window:
    """The region predicted for a mosaic's held-out right band of width ``frac`` (evaluate's ``band_frac``).

    The band (:func:`spacenet7.data.splits.band_start`, as evaluate cuts it) plus one tile of margin, starting on the
    whole mosaic's tile grid: every tile that reaches the band lies inside, the same tiles as a one-block
    prediction of the whole mosaic, so the band's probabilities are the whole mosaic's.
    """
    with open_raster(rec.image) as ds:
        h, w = ds.height, ds.width
    col0 = band_start(w, frac)
    align = tile_align(upscale, tile, overlap)
    margin = math.ceil(tile / upscale)
    c0 = max(0, math.floor((col0 - margin) / align) * align)
    return Window(c0, 0, w - c0, h)


class NoValidPixels(SN7DataError):
    """A month without a single usable pixel (a fully clouded month): skipped, not fatal."""
