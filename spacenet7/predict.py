"""Stage ``predict``: sliding-window, blended inference over whole mosaics -> probability COGs.

Memory stays bounded on any mosaic size: the output is produced block by block (``block``
source pixels square), each block read with a halo of half a tile so that window blending
crosses block edges without seams. Probabilities are stored as uint8 (p * 254, nodata 255)
with a GDAL scale of 1/254, one band per target channel, as Cloud-Optimized GeoTIFFs.

Temporal fusion (on by default) blends each month with the AOI's mean over all valid months:
``p' = (1 - w) p + w mean``, invalid pixels excluded from the mean.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from tqdm import tqdm

from spacenet7.config import PredictConfig
from spacenet7.data.bands import InputSpec, check_fits
from spacenet7.data.sn7 import MonthRecord, read_image, records_from_files, scan
from spacenet7.data.targets import CHANNELS
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.atomic import clear_partials, ensure_writable_dir
from spacenet7.io.raster import cog_profile, iter_windows, open_raster, to_cog
from spacenet7.models.precision import autocast_dtype
from spacenet7.models.task import build_net, read_checkpoint

log = logging.getLogger(__name__)
SCALE = 254.0
NODATA = 255


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint, with what prediction must reproduce from training."""

    net: torch.nn.Module
    upscale: float
    spec: InputSpec  # how the training imagery was read: band order, alpha, scaling
    device: torch.device
    amp_dtype: torch.dtype | None = None


def load_model(checkpoint: str | Path, model_cfg: dict | None = None, device: str = "auto", amp: bool = False) -> LoadedModel:
    """Rebuild the trained network from a spacenet7 checkpoint.

    Args:
        checkpoint: a ``.ckpt`` written by ``spacenet7 train``.
        model_cfg: the architecture you expect; ``None`` uses the one stored in the checkpoint.
        device: ``auto``, ``cpu`` or ``cuda``.

    Raises:
        SN7Error: missing file, not a spacenet7 checkpoint, or weights of another architecture.
    """
    path = Path(checkpoint)
    state, hp = read_checkpoint(path)
    cfg = model_cfg or hp["model"]
    net = build_net(cfg)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:160]
        raise SN7DataError(path, f"weights do not fit the architecture {cfg.get('arch')}/{cfg.get('encoder_name')} "
                                 f"(checkpoint was trained as {hp['model'].get('arch')}/{hp['model'].get('encoder_name')}): {first}") from None
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    meta = hp.get("chip_meta") or {}
    net = net.eval().to(dev, memory_format=torch.channels_last)
    return LoadedModel(net, float(meta.get("upscale", 1.0)), InputSpec.from_dict(meta.get("input")), dev, autocast_dtype(dev, amp))


def window_weights(tile: int) -> np.ndarray:
    """A smooth 2-D blending window (squared sine), never exactly zero."""
    w = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    return np.maximum(np.outer(w, w), 1e-3).astype(np.float32)


@torch.no_grad()
def sliding_window(model: LoadedModel, rgb: np.ndarray, tile: int, overlap: int, batch_size: int = 8,
                   tta: str | None = None) -> np.ndarray:
    """Blended sliding-window probabilities for a (3, H, W) uint8 image -> (C, H, W) float32.

    ``tta``: a key of ``TTA_VIEWS`` to average over those views, or None for one view.
    """
    _, h, w = rgb.shape
    ph, pw = max(h, tile), max(w, tile)
    img = np.pad(rgb, ((0, 0), (0, ph - h), (0, pw - w)), mode="reflect") if (ph, pw) != (h, w) else rgb
    x = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255.0)
    weights = torch.from_numpy(window_weights(tile))
    acc = torch.zeros((len(CHANNELS), ph, pw))
    norm = torch.zeros((ph, pw))
    wins = list(iter_windows(ph, pw, tile, tile - overlap))
    for i in range(0, len(wins), batch_size):
        chunk = wins[i : i + batch_size]
        batch = torch.stack([x[:, int(wn.row_off) : int(wn.row_off) + tile, int(wn.col_off) : int(wn.col_off) + tile] for wn in chunk])
        prob = _predict_batch(model, batch, tta)
        for wn, p in zip(chunk, prob):
            r, c = int(wn.row_off), int(wn.col_off)
            acc[:, r : r + tile, c : c + tile] += p * weights
            norm[r : r + tile, c : c + tile] += weights
    return (acc / norm)[:, :h, :w].numpy()


# Test-time views as (quarter turns, mirror first): "d4" is the full dihedral group of the square,
# the same symmetries the default augmentation trains with; "flips" is identity + the two mirrors.
TTA_VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "d4": tuple((k, mirror) for k in range(4) for mirror in (False, True)),
    "flips": ((0, False), (0, True), (2, True)),
}


def _predict_batch(model: LoadedModel, batch: torch.Tensor, tta: str | None) -> torch.Tensor:
    """Sigmoid probabilities of a (B, 3, h, w) batch, averaged over the ``TTA_VIEWS[tta]`` views (None: one)."""
    views = TTA_VIEWS[tta] if tta else ((0, False),)
    batch = batch.to(model.device)
    out = 0
    for k, mirror in views:
        xb = batch.flip(3) if mirror else batch
        xb = torch.rot90(xb, k, (2, 3)) if k else xb
        with torch.autocast(model.device.type, dtype=model.amp_dtype or torch.float32, enabled=model.amp_dtype is not None):
            p = model.net(xb.contiguous(memory_format=torch.channels_last)).float().sigmoid()
        p = torch.rot90(p, -k, (2, 3)) if k else p
        out = out + (p.flip(3) if mirror else p)
    return (out / len(views)).cpu()


def _records(cfg: PredictConfig) -> dict[str, list[MonthRecord]]:
    """The months to predict: a data root's SN7 layout, or the GeoTIFFs given as ``images``."""
    if cfg.images:
        return records_from_files(cfg.images, cfg.aoi)
    return scan(cfg.data_root, cfg.split_dir, cfg.aois)


def run(cfg: PredictConfig) -> list[Path]:
    """Predict every mosaic; returns the written probability rasters."""
    if cfg.tta_views not in TTA_VIEWS:
        raise SN7Error(f"predict: tta_views={cfg.tta_views!r} must be one of {sorted(TTA_VIEWS)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    records = _records(cfg)
    model = load_model(cfg.checkpoint, cfg.model, cfg.device, cfg.amp)
    if cfg.input:
        model.spec = InputSpec(**{**model.spec.to_dict(), **cfg.input})
    for rec in (r for recs in records.values() for r in recs):  # every header, before any output
        with open_raster(rec.image) as ds:
            check_fits(ds, model.spec, rec.image)
    ensure_writable_dir(cfg.out_dir)
    clear_partials(cfg.out_dir)
    for scratch in Path(cfg.out_dir).glob("*/.raw"):  # left by a killed run
        shutil.rmtree(scratch, ignore_errors=True)
    with rasterio.Env(GDAL_CACHEMAX=cfg.gdal_cache_mb * 2**20):
        written = _predict_all(model, records, cfg)
    log.info("predict: wrote %d probability rasters under %s", len(written), cfg.out_dir)
    return written


def _predict_all(model: LoadedModel, records: dict[str, list[MonthRecord]], cfg: PredictConfig) -> list[Path]:
    written = []
    for aoi, recs in records.items():
        raw_dir = Path(cfg.out_dir) / aoi / ".raw"  # scratch: per-month predictions before fusion
        try:
            raw, kept = [], []
            for rec in tqdm(recs, desc=f"predict {aoi}", disable=not cfg.progress):
                try:
                    raw.append(predict_mosaic(model, rec, raw_dir / f"{rec.stem}.tif", cfg))
                    kept.append(rec)
                except NoValidPixels as exc:
                    log.warning("predict: skipping %s", exc)
            if not raw:
                raise SN7DataError(recs[0].image.parent, f"every month of {aoi} is fully masked; nothing to predict")
            finals = [Path(cfg.out_dir) / aoi / f"{rec.stem}.tif" for rec in kept]
            if (cfg.fusion and len(raw) > 1) or not same_grid(raw):  # months on other grids are aligned
                fuse(raw, finals, cfg.fusion_weight if cfg.fusion else 0.0, cfg.block)
            else:
                for src, dst in zip(raw, finals):
                    to_cog(src, dst)
        finally:
            shutil.rmtree(raw_dir, ignore_errors=True)
        written += finals
    return written


def predict_mosaic(model: LoadedModel, rec: MonthRecord, out: Path, cfg: PredictConfig) -> Path:
    """Predict one mosaic block by block into a tiled uint8 GeoTIFF at ``out``."""
    with open_raster(rec.image) as ds:
        check_fits(ds, model.spec, rec.image)
        h, w, transform, crs = ds.height, ds.width, ds.transform, ds.crs
    f = model.upscale
    fi = int(round(f))
    if cfg.grid == "source" and f != fi:
        raise SN7Error(f"predict: grid=source needs an integer upscale (checkpoint has {f})")
    out_f = 1 if cfg.grid == "source" else fi
    profile = cog_profile({"crs": crs, "transform": transform * rasterio.Affine.scale(1 / out_f), "width": w * out_f,
                           "height": h * out_f, "count": len(CHANNELS), "dtype": "uint8", "nodata": NODATA}, predictor=1)
    halo = int(np.ceil(cfg.tile / (2 * f)))
    out.parent.mkdir(parents=True, exist_ok=True)
    any_valid = False
    with rasterio.open(out, "w", **profile) as dst:
        for blk in iter_windows(h, w, cfg.block, cfg.block):
            r0, c0 = max(0, int(blk.row_off) - halo), max(0, int(blk.col_off) - halo)
            r1 = min(h, int(blk.row_off + blk.height) + halo)
            c1 = min(w, int(blk.col_off + blk.width) + halo)
            img = read_image(rec, window=Window(c0, r0, c1 - c0, r1 - r0), upscale=f, spec=model.spec)
            prob = sliding_window(model, img.rgb, cfg.tile, cfg.overlap, cfg.batch_size, cfg.tta_views if cfg.tta else None)
            valid = img.valid
            if out_f != fi:  # back to the source grid: mean of probabilities, all sub-pixels valid
                hh, ww = valid.shape[0] // fi, valid.shape[1] // fi
                prob = prob[:, : hh * fi, : ww * fi].reshape(len(CHANNELS), hh, fi, ww, fi).mean((2, 4))
                valid = valid[: hh * fi, : ww * fi].reshape(hh, fi, ww, fi).all((1, 3))
            k = out_f
            sl = (slice((int(blk.row_off) - r0) * k, (int(blk.row_off) - r0 + int(blk.height)) * k),
                  slice((int(blk.col_off) - c0) * k, (int(blk.col_off) - c0 + int(blk.width)) * k))
            enc = np.where(valid[sl], np.round(prob[(slice(None), *sl)] * SCALE), NODATA).astype(np.uint8)
            any_valid |= bool(valid[sl].any())
            dst.write(enc, window=Window(int(blk.col_off) * k, int(blk.row_off) * k, int(blk.width) * k, int(blk.height) * k))
        _describe(dst, f, cfg.grid)
    if not any_valid:
        out.unlink()
        raise NoValidPixels(rec.image, "no valid pixel in this month (alpha 0 / UDM everywhere)")
    return out


class NoValidPixels(SN7DataError):
    """A month without a single usable pixel (a fully clouded month): skipped, not fatal."""


def _describe(dst, upscale: float, grid: str) -> None:
    dst.descriptions = CHANNELS
    dst.scales = [1 / SCALE] * len(CHANNELS)
    dst.update_tags(upscale=str(upscale), grid=grid, encoding="uint8 probability * 254, nodata 255")


def fuse(raw: list[Path], finals: list[Path], weight: float, block: int) -> None:
    """Temporal fusion: blend each month with the all-month mean of valid pixels, block by block.

    Months on another grid than the first (a pixel smaller, shifted, another CRS) are resampled
    onto the first month's grid (nearest), so that every output of the AOI shares one grid;
    ``weight=0`` only aligns.
    """
    srcs = [rasterio.open(p) for p in raw]
    views = _aligned(srcs)
    try:
        ref = srcs[0]
        h, w = ref.height, ref.width
        tmps = []
        for final in finals:
            tmp = final.parent / ".raw" / f"{final.stem}.fused.tif"
            tmps.append(rasterio.open(tmp, "w", **cog_profile(ref.profile, predictor=1)))
        for win in iter_windows(h, w, block, block):
            total = np.zeros((len(CHANNELS), int(win.height), int(win.width)), np.float32)
            count = np.zeros((int(win.height), int(win.width)), np.float32)
            for src in views:
                a = src.read(window=win)
                ok = a[0] != NODATA
                total += np.where(ok, a, 0)
                count += ok
            mean = total / np.maximum(count, 1)
            for src, dst in zip(views, tmps):
                a = src.read(window=win)
                ok = a[0] != NODATA
                fused = np.round((1 - weight) * a + weight * mean)
                dst.write(np.where(ok, fused, NODATA).astype(np.uint8), window=win)
        for dst in tmps:
            _describe(dst, float(ref.tags().get("upscale", 1)), ref.tags().get("grid", "source"))
            dst.close()
        for dst, final in zip(tmps, finals):
            to_cog(dst.name, final)
    finally:
        for s in [*views, *srcs]:
            s.close()


def _grid(ds) -> tuple:
    return ds.crs, ds.transform, ds.width, ds.height


def same_grid(paths: list[Path]) -> bool:
    """Whether the rasters share one grid (CRS, transform and size)."""
    grids = set()
    for p in paths:
        with rasterio.open(p) as ds:
            grids.add(_grid(ds))
    return len(grids) <= 1


def _aligned(srcs: list) -> list:
    """Each dataset as seen on the first one's grid: itself, or a nearest-neighbour WarpedVRT."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    ref = srcs[0]
    out = []
    for src in srcs:
        if _grid(src) == _grid(ref):
            out.append(src)
            continue
        log.warning("predict: %s is %dx%d on another grid than %s (%dx%d); resampled onto the latter",
                    Path(src.name).name, src.height, src.width, Path(ref.name).name, ref.height, ref.width)
        out.append(WarpedVRT(src, crs=ref.crs, transform=ref.transform, width=ref.width, height=ref.height,
                             nodata=NODATA, resampling=Resampling.nearest))
    return out


def read_prediction(path: str | Path) -> tuple[np.ndarray, np.ndarray, rasterio.Affine, rasterio.crs.CRS, float]:
    """Read a probability raster: (C, H, W) float probabilities, valid mask, transform, CRS, upscale.

    Raises:
        SN7DataError: no CRS, wrong band count, or every pixel nodata.
    """
    with open_raster(path, bands=len(CHANNELS)) as ds:
        a = ds.read()
        transform, crs = ds.transform, ds.crs
        up = float(ds.tags().get("upscale", 1.0)) if ds.tags().get("grid") == "upscaled" else 1.0
    valid = a[0] != NODATA
    if not valid.any():
        raise SN7DataError(path, "every pixel is nodata (an all-cloud month?); nothing to vectorize")
    return np.where(valid, a, 0).astype(np.float32) / SCALE, valid, transform, crs, up
