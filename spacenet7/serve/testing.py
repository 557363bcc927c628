"""Runs and loads for testing and benchmarking ``spacenet7 serve`` (tests/ and bench/bench_serve.py use them).

- :func:`oracle_run`: a copy of a pipeline run whose held-out predictions are the truth's (buildings that
  appear month by month, whatever the run's model learned), vectorized, exported and scored;
- :func:`large_month_run`: a run of one AOI whose second month holds N footprints (the map's stress case);
- :func:`load_burst`: a bounded burst of tile and prediction requests against a server on this machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely

from spacenet7.config import EvaluateConfig, ExportConfig, VectorizeConfig
from spacenet7.data.sn7 import instance_raster, read_image, read_labels, scan
from spacenet7.data.targets import make_targets
from spacenet7.io import probability
from spacenet7.io.artifacts import write_vectors
from spacenet7.io.layout import RunLayout
from spacenet7.stages import run_stage


def oracle_predictions(root: Path, aoi: str, out: Path) -> None:
    """Probability rasters made from the truth: what a perfect model would predict."""
    for rec in scan(root)[aoi]:
        img = read_image(rec)
        inst = instance_raster(read_labels(rec, img.crs), img.shape, img.transform)
        stored = probability.encode(make_targets(inst).astype(np.float32), img.valid)
        prof = probability.profile(img.crs, img.transform, img.shape[1], img.shape[0])
        (out / aoi).mkdir(parents=True, exist_ok=True)
        with rasterio.open(out / aoi / f"{rec.stem}.tif", "w", **prof) as ds:
            ds.write(stored)
    probability.mark_complete(out / aoi, sorted((out / aoi).glob("*.tif")))  # as predict does: vectorize requires it


def oracle_run(src: Path, dst: Path) -> Path:
    """A copy of the pipeline run ``src`` (manifest, checkpoints) whose held-out predictions are the oracle's,
    vectorized, exported and scored by the pipeline's own stages: a run with buildings that appear month by month
    (a 1-epoch model predicts next to none), and the real checkpoint for the inference API."""
    old, new = RunLayout(src), RunLayout(dst)
    manifest = json.loads(old.manifest.read_text())
    root = Path(manifest["data_root"])
    dst.mkdir(parents=True)
    shutil.copy(old.manifest, new.manifest)
    shutil.copytree(old.train.checkpoints, new.train.checkpoints)
    for aoi in manifest["test_aois"]:
        oracle_predictions(root, aoi, new.predictions)
    run_stage("vectorize", VectorizeConfig(pred_dir=str(new.predictions), out_dir=str(new.vectors)))
    run_stage("export", ExportConfig(vec_dir=str(new.vectors), out_dir=str(new.footprints), submission=str(new.submission)))
    run_stage(
        "evaluate",
        EvaluateConfig(data_root=str(root), aois=manifest["test_aois"], submission=str(new.submission), out=str(new.metrics)),
    )
    return dst


def large_month_run(dst: Path, n_buildings: int, size: int = 2048, aoi: str = "L15-0000E-0000N_0000_0000_13") -> Path:
    """A run of one AOI (``size`` px, 4.78 m pixels, two months) whose second month holds ``n_buildings``
    footprints (the first half of them), and probability rasters over its extent: the map's stress case."""
    from spacenet7.data.sn7 import make_stem

    side = int(np.ceil(np.sqrt(n_buildings)))
    cell = size / side
    k = np.arange(n_buildings)
    r, c = (k // side) * cell, (k % side) * cell
    pix = shapely.box(c + 1, r + 1, c + cell * 0.7, r + cell * 0.7)
    res = 4.777314267823516
    transform = rasterio.Affine(res, 0, 1e6, 0, -res, 2e6)
    geoms = shapely.transform(pix, lambda xy: xy @ np.array([[res, 0], [0, -res]]) + [1e6, 2e6])
    stems = [make_stem(aoi, 2020, m) for m in (1, 2)]
    half = n_buildings // 2
    rows = {"id": np.r_[k[:half], k] + 1, "t": np.r_[np.zeros(half, int), np.ones(n_buildings, int)]}
    months = ["2020-01", "2020-02"]
    first = np.where(k < half, 0, 1)
    gdf = gpd.GeoDataFrame(
        {
            "id": rows["id"],
            "stem": [stems[t] for t in rows["t"]],
            "month": [months[t] for t in rows["t"]],
            "first_seen": [months[f] for f in np.r_[first[:half], first]],
            "last_seen": "2020-02",
            "n_months": np.r_[np.full(half, 2), np.where(k < half, 2, 1)],
            "filled": False,
            "pix_wkt": shapely.to_wkt(np.r_[pix[:half], pix], rounding_precision=3),
        },
        geometry=np.r_[geoms[:half], geoms],
        crs="EPSG:3857",
    )
    run = RunLayout(dst)
    run.vectors.mkdir(parents=True)
    meta = {
        "aoi": aoi,
        "crs": "EPSG:3857",
        "transform": list(transform)[:6],
        "months": [{"stem": s, "month": m} for s, m in zip(stems, months)],
    }
    write_vectors(run.vector_file(aoi), gdf, meta)
    coarse = 256  # the probability rasters only place the AOI on the map: a coarse grid over the same extent
    for stem in stems:
        run.prediction(aoi, stem).parent.mkdir(parents=True, exist_ok=True)
        prof = probability.profile("EPSG:3857", transform * rasterio.Affine.scale(size / coarse), coarse, coarse)
        with rasterio.open(run.prediction(aoi, stem), "w", **prof) as ds:
            ds.write(np.full((3, coarse, coarse), 127, np.uint8))
    return dst


def tile_list(bounds: list[list[float]], zooms: range) -> list:
    """The web-map tiles (z, x, y) that cover ``bounds`` ``[[south, west], [north, east]]`` at each zoom."""
    import morecantile

    (s, w), (n, e) = bounds
    tms = morecantile.tms.get("WebMercatorQuad")
    return [t for z in zooms for t in tms.tiles(w, s, e, n, [z])]


def load_burst(
    base: str, aoi: str, months: list[str], image: bytes, n_tiles: int = 200, n_predictions: int = 10, concurrency: int = 16
) -> dict[str, list[tuple[int, float]]]:
    """A bounded burst against a server on this machine: ``n_tiles`` mosaic tiles, ``concurrency`` at a time, then
    ``n_predictions`` simultaneous ``POST /api/predict`` of ``image``. Returns (status, seconds) per request, by kind."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    host = httpx.URL(base).host
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"load bursts go to this machine only, not {host}")
    summary = httpx.get(base + "api/run", timeout=60).json()
    (a,) = [x for x in summary["aois"] if x["aoi"] == aoi]
    tiles = tile_list(a["bounds"], range(a["maxzoom"] - 1, a["maxzoom"] + 3))
    out: dict[str, list[tuple[int, float]]] = {}
    with httpx.Client(base_url=base, timeout=300, limits=httpx.Limits(max_connections=64)) as http:

        def tile(k: int) -> tuple[int, float]:
            t = tiles[k % len(tiles)]
            t0 = time.perf_counter()
            r = http.get(f"/tiles/mosaic/{aoi}/{months[k % len(months)]}/{t.z}/{t.x}/{t.y}.png")
            ok = r.status_code != 200 or (r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG")
            return (r.status_code if ok else -1), time.perf_counter() - t0

        with ThreadPoolExecutor(concurrency) as pool:
            out["tiles"] = list(pool.map(tile, range(n_tiles)))
        barrier = threading.Barrier(n_predictions)

        def post(_: int) -> tuple[int, float]:
            barrier.wait()
            t0 = time.perf_counter()
            r = http.post("/api/predict", files={"image": ("month.tif", image, "image/tiff")})
            return r.status_code, time.perf_counter() - t0

        with ThreadPoolExecutor(n_predictions) as pool:
            out["predictions"] = list(pool.map(post, range(n_predictions)))
    return out


def percentiles(answers: list[tuple[int, float]]) -> str:
    """``p50 / p90 / p99`` in ms of the answers, and their status codes."""
    lat = np.array([t for _, t in answers]) * 1000
    codes = {c: sum(1 for x, _ in answers if x == c) for c in sorted({c for c, _ in answers})}
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return f"p50 {p50:.0f} ms, p90 {p90:.0f} ms, p99 {p99:.0f} ms, max {lat.max():.0f} ms; answers {codes}"
