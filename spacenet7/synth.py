"""Stage ``synth``: write synthetic AOIs in the exact SpaceNet 7 layout (the embedded default data).

The scene model lives in :mod:`spacenet7.data.scene`; this module places AOIs on the real
zoom-13 Web Mercator quad grid (L15 names), renders every month and writes images, masked
images, UDMs, the three label flavours and ``sn7_train_ground_truth_pix.csv``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine
from tqdm import tqdm

from spacenet7.config import SynthConfig
from spacenet7.data.scene import STYLES, Scene, make_scene, month_schedule, render_month
from spacenet7.data.sn7 import LABEL_SUFFIX, UDM_SUFFIX, make_stem
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.atomic import atomic_path, ensure_writable_dir
from spacenet7.io.raster import write_raster
from spacenet7.io.vector import pixel_to_map, write_vector
from spacenet7.metrics.table import month_rows

log = logging.getLogger(__name__)

WORLD = 20037508.342789244  # half the EPSG:3857 world width, metres
ZOOM = 13
TILE_M = 2 * WORLD / 2**ZOOM
GSD = TILE_M / 1024  # 4.777 m, the SN7 pixel size
MARKER = ".spacenet7-synth.json"  # marks a folder synth made (and may write into again)
FOLDERS = ("images", "images_masked", "labels", "labels_match", "labels_match_pix", "UDM_masks")
# (lon, lat) of fast-growing places, as in the SN7 AOI list
PLACES = [
    (103.9, 30.4),
    (36.8, -1.3),
    (7.4, 9.1),
    (-99.1, 19.4),
    (77.6, 13.0),
    (31.2, 30.0),
    (-47.9, -15.8),
    (106.8, -6.2),
    (3.4, 6.5),
    (90.4, 23.8),
    (44.4, 33.3),
    (-77.0, -12.0),
    (120.9, 14.6),
    (32.6, 0.3),
]


def quad(lon: float, lat: float) -> tuple[str, int, int]:
    """SN7 AOI name and zoom-13 tile (x, y) for a location: ``L15-XXXXE-YYYYN_x_y_13``."""
    n = 2**ZOOM
    tx = int((lon + 180) / 360 * n)
    ty = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return f"L15-{tx // 4:04d}E-{2 ** (ZOOM - 2) - 1 - ty // 4:04d}N_{tx}_{ty}_{ZOOM}", tx, ty


def _check_own_folder(out: Path) -> None:
    """Synthesize only into an empty folder or one that synth made: never into a user's real data."""
    if not out.exists() or (out / MARKER).exists():
        return
    if not out.is_dir():
        raise SN7DataError(out, "is a file; synth writes a data folder")
    if any(not p.name.startswith(".") for p in out.iterdir()):
        raise SN7DataError(
            out,
            "is not empty and was not made by `spacenet7 synth`; synth writes only into an empty "
            "folder or its own (it would mix synthetic AOIs into your data)",
        )


def run(cfg: SynthConfig) -> list[Path]:
    """Generate ``cfg.n_aois`` AOIs under ``<out_dir>/train``; returns the AOI folders."""
    if cfg.style not in STYLES:
        raise SN7Error(f"synth: style={cfg.style!r} must be one of {sorted(STYLES)}")
    year0, month0 = (int(x) for x in cfg.start.split("-"))
    out = Path(cfg.out_dir)
    _check_own_folder(out)
    ensure_writable_dir(out)
    with atomic_path(out / MARKER) as tmp:  # first: a killed synth leaves a folder it may overwrite
        settings = {k: v for k, v in asdict(cfg).items() if k != "out_dir"}  # same seed, same bytes anywhere
        tmp.write_text(json.dumps({"made_by": "spacenet7 synth", **settings}, indent=2))
    rng = np.random.default_rng(cfg.seed)
    places = rng.permutation(len(PLACES))
    csv_rows: list[dict] = []
    aoi_dirs = []
    for k in tqdm(range(cfg.n_aois), desc="synth AOIs", disable=cfg.n_aois < 2):
        lon, lat = PLACES[places[k % len(PLACES)]]
        name, tx, ty = quad(lon + 0.05 * (k // len(PLACES)), lat)
        transform = Affine(GSD, 0, -WORLD + tx * TILE_M, 0, -GSD, WORLD - ty * TILE_M)
        aoi_rng = np.random.default_rng([cfg.seed, k])
        aoi_dirs.append(_write_aoi(out / "train" / name, name, transform, cfg, aoi_rng, year0, month0, csv_rows))
    table = pd.DataFrame(csv_rows, columns=["filename", "id", "geometry"])
    with atomic_path(out / "sn7_train_ground_truth_pix.csv") as tmp:
        table.to_csv(tmp, index=False)
    log.info("synth: wrote %d AOIs under %s", len(aoi_dirs), out)
    return aoi_dirs


def _write_aoi(
    aoi_dir: Path,
    name: str,
    transform: Affine,
    cfg: SynthConfig,
    rng: np.random.Generator,
    year0: int,
    month0: int,
    csv_rows: list[dict],
) -> Path:
    if aoi_dir.exists():
        shutil.rmtree(aoi_dir)
    for f in FOLDERS:
        (aoi_dir / f).mkdir(parents=True)
    style = STYLES[cfg.style]
    scene = make_scene(rng, cfg.size, cfg.n_months, style)
    cloudy = month_schedule(rng, cfg.n_months, cfg.cloud_prob)
    prev_ids: set[int] = set()
    frames = []
    for t in range(cfg.n_months):
        y, m = divmod(month0 - 1 + t, 12)
        stem = make_stem(name, year0 + y, m + 1)
        month = render_month(scene, t, rng, cloudy[t], style)
        _write_images(aoi_dir, stem, month.rgb, month.cloud, transform)
        ids = [b.id for b in month.visible]
        pix = gpd.GeoDataFrame({"Id": ids}, geometry=[b.poly for b in month.visible], crs=None)
        _write_labels(aoi_dir, stem, pix, transform, prev_ids)
        prev_ids |= set(ids)
        csv_rows += month_rows(stem, ids, [g.wkt for g in pix.geometry])
        if cfg.preview and t in (0, cfg.n_months - 1):
            frames.append((stem, month.rgb, pix))
    if cfg.preview:
        _preview(aoi_dir / f"{name}_preview.png", frames)
    return aoi_dir


def _write_images(aoi_dir: Path, stem: str, rgb: np.ndarray, cloud: np.ndarray, transform: Affine) -> None:
    h, w = cloud.shape
    profile = dict(
        driver="GTiff",
        width=w,
        height=h,
        count=4,
        dtype="uint8",
        crs="EPSG:3857",
        transform=transform,
        compress="deflate",
        tiled=True,
        blockxsize=256,
        blockysize=256,
        photometric="RGB",
        alpha="YES",
    )
    alpha = np.full((1, h, w), 255, np.uint8)
    write_raster(aoi_dir / "images" / f"{stem}.tif", np.concatenate([rgb, alpha]), profile)
    masked = np.where(cloud, 0, rgb).astype(np.uint8)
    write_raster(aoi_dir / "images_masked" / f"{stem}.tif", np.concatenate([masked, np.where(cloud, 0, alpha)]), profile)
    if cloud.any():
        udm_profile = {**profile, "count": 1, "photometric": "MINISBLACK", "alpha": "NO"}
        write_raster(aoi_dir / "UDM_masks" / f"{stem}{UDM_SUFFIX}", (cloud * 255).astype(np.uint8)[None], udm_profile)


def _write_labels(aoi_dir: Path, stem: str, pix: gpd.GeoDataFrame, transform: Affine, prev_ids: set[int]) -> None:
    geoms_map = pixel_to_map(pix.geometry.values, transform)
    area = shapely.area(geoms_map) if len(pix) else np.zeros(0)
    iou = np.array([1.0 if i in prev_ids else 0.0 for i in pix["Id"]])
    match = gpd.GeoDataFrame({"Id": pix["Id"].values, "area": area, "iou_score": iou}, geometry=list(geoms_map), crs="EPSG:3857")
    fname = f"{stem}{LABEL_SUFFIX}"
    write_vector(match, aoi_dir / "labels_match" / fname)
    raw = gpd.GeoDataFrame({"Id": np.zeros(len(pix), int)}, geometry=list(geoms_map), crs="EPSG:3857").to_crs("EPSG:4326")
    write_vector(raw, aoi_dir / "labels" / fname)
    pixel = gpd.GeoDataFrame({"Id": pix["Id"].values, "area": area, "image_fname": f"{stem}.tif"}, geometry=list(pix.geometry))
    write_vector(pixel, aoi_dir / "labels_match_pix" / fname)


def _preview(path: Path, frames: list[tuple[str, np.ndarray, gpd.GeoDataFrame]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    fig, axes = plt.subplots(1, len(frames), figsize=(6 * len(frames), 6), squeeze=False)
    for ax, (stem, rgb, pix) in zip(axes[0], frames):
        ax.imshow(np.moveaxis(rgb, 0, -1), interpolation="nearest")
        verts = [np.asarray(g.exterior.coords) - 0.5 for g in pix.geometry]  # pixel edges -> imshow centres
        ax.add_collection(PolyCollection(verts, facecolors="none", edgecolors="yellow", linewidths=0.6))
        ax.set_title(f"{stem.split('_mosaic_')[0][-7:].replace('_', '-')}: {len(pix)} buildings")
        ax.set_axis_off()
    fig.suptitle(path.stem.replace("_preview", ""))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, metadata={"Software": None}, format="png")
    plt.close(fig)


def scene_for(cfg: SynthConfig, k: int = 0) -> Scene:
    """The scene model of AOI ``k`` (for tests and exploration)."""
    return make_scene(np.random.default_rng([cfg.seed, k]), cfg.size, cfg.n_months, STYLES[cfg.style])
