"""Stage ``predict``: sliding-window, blended inference over whole mosaics -> probability COGs.

Memory stays bounded on any mosaic size: the output is produced block by block (``block``
source pixels square), each block read with a halo of half a tile so that window blending
crosses block edges without seams. The outputs follow :mod:`spacenet7.io.probability`.

The jobs live in their own modules: a mosaic and an AOI predicted, fused and written in
:mod:`spacenet7.models.mosaic` (the API and the server predict uploads with it too); checkpoint
loading, tiling and test-time views in :mod:`spacenet7.models.inference`; temporal fusion (on by default: each month blended with the
AOI's mean over all valid months, ``p' = (1 - w) p + w mean``) in :mod:`spacenet7.data.fusion`;
the engine that runs the network on a batch of tiles (torch, ONNX Runtime, OpenVINO) in
:mod:`spacenet7.models.runtime`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import rasterio
import torch

from spacenet7.cluster import map_aois, once_per_process
from spacenet7.config import ClusterMode, CompileConfig, Engine, ModelFormat, PredictConfig
from spacenet7.data.bands import InputSpec, check_fits, rgb_fallback
from spacenet7.data.months import is_dated, month_label
from spacenet7.data.sn7 import MonthRecord, records_from_files, scan
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.atomic import clear_partials, ensure_writable_dir
from spacenet7.io.raster import open_raster
from spacenet7.models.bundle import shipped_or_fail
from spacenet7.models.inference import LoadedModel, load_model, load_model_file
from spacenet7.models.mosaic import check_overlap, predict_all, predict_aoi
from spacenet7.stages import run_stage

log = logging.getLogger(__name__)


def _records(cfg: PredictConfig) -> dict[str, list[MonthRecord]]:
    """The months to predict: a data root's SN7 layout, or the GeoTIFFs given as ``images``."""
    if cfg.images:
        return records_from_files(cfg.images, cfg.aoi)
    return scan(cfg.data_root, cfg.split_dir, cfg.aois)


def run(cfg: PredictConfig) -> list[Path]:
    """Predict every mosaic; returns the written probability rasters.

    Without ``checkpoint`` (and ``engine=torch``) the shipped real model predicts
    (:data:`spacenet7.models.bundle.SHIPPED`). A 3-band file read by a model of RGB + alpha
    imagery is read as RGB without an alpha band, unless ``input`` is given.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.engine is Engine.auto:
        cfg = resolve_auto(cfg)
    if cfg.on_the_fly:  # the checkpoint, exported for the engine on the fly
        with tempfile.TemporaryDirectory(prefix="spacenet7-export-") as folder:
            return _predict(exported(cfg, Path(folder)), on_the_fly=True)
    return _predict(cfg)


def exported(cfg: PredictConfig, folder: Path) -> PredictConfig:
    """``cfg`` with ``model_file``: its checkpoint exported for its engine (ONNX or OpenVINO IR) into ``folder``,
    the fp32 export checked against torch on a random tile as ``spacenet7 compile`` checks it.

    Raises:
        SN7Error: the engine's package is not installed, or the export differs from torch.
    """
    fmt = ModelFormat.onnx if cfg.engine is Engine.onnxruntime else ModelFormat.openvino
    out = folder / ("model.onnx" if fmt is ModelFormat.onnx else "model.xml")
    start = time.perf_counter()
    run_stage("compile", CompileConfig(checkpoint=str(cfg.checkpoint), format=fmt, out=str(out)), quiet=True)
    log.info(
        "predict: %s exported for %s in %.1f s (kept only while predict runs)",
        cfg.checkpoint,
        cfg.engine,
        time.perf_counter() - start,
    )
    return dataclasses.replace(cfg, model_file=str(out))


def _predict(cfg: PredictConfig, on_the_fly: bool = False) -> list[Path]:
    """:func:`run` once the engine and its model file are settled (``on_the_fly``: the model file is the checkpoint,
    exported on the fly)."""
    if cfg.engine is Engine.torch and cfg.checkpoint is None:
        cfg = dataclasses.replace(cfg, checkpoint=str(shipped_or_fail("predict")))
        log.info("predict: the shipped model %s", cfg.checkpoint)
    records = _records(cfg)
    for aoi, recs in records.items():
        if recs and not is_dated(recs[0].month_key):
            log.info(
                "predict: %s: no date in the file names or TIFF tags: the months are the list order, labelled m01..%s "
                "in the outputs (name the files area_YYYY-MM.tif to date them)",
                aoi,
                month_label(recs[-1].month_key),
            )
    for recs in records.values():  # a month of another place would be predicted as all nodata on the AOI's grid
        check_overlap(recs)
    on_cluster = cfg.cluster.mode is not ClusterMode.none  # then only the input spec is used here: workers load their own
    model = _load(dataclasses.replace(cfg, device="cpu") if on_cluster else cfg)
    if not cfg.input and (rgb := rgb_fallback(model.spec, _first_count(records))) is not None:
        cfg = dataclasses.replace(cfg, input={"count": 3, "alpha": None})
        model.spec = rgb
        log.info("predict: 3-band imagery, read as RGB without an alpha band (input.count=3, input.alpha=null)")
    for rec in (r for recs in records.values() for r in recs):  # every header, before any output
        with open_raster(rec.image) as ds:
            try:
                check_fits(ds, model.spec, rec.image)
            except SN7DataError as exc:
                if cfg.engine is Engine.torch or cfg.input:
                    raise
                source = f"the model file {cfg.model_file} was exported" if not on_the_fly else f"{cfg.checkpoint} was trained"
                raise SN7DataError(exc.path, f"{exc.problem}; {source} for input {model.spec.to_dict()}") from None
    ensure_writable_dir(cfg.out_dir)
    clear_partials(cfg.out_dir)
    for scratch in Path(cfg.out_dir).glob("*/.raw"):  # left by a killed run
        shutil.rmtree(scratch, ignore_errors=True)
    if on_cluster:
        written = _predict_distributed(records, cfg)
    else:
        with rasterio.Env(GDAL_CACHEMAX=cfg.gdal_cache_mb * 2**20):
            written = predict_all(model, records, cfg)
    log.info("predict: wrote %d probability rasters under %s", len(written), cfg.out_dir)
    return written


def resolve_auto(cfg: PredictConfig) -> PredictConfig:
    """``engine=auto``: the fastest engine at truth parity recorded by ``spacenet7 compile`` (in ``model_file``'s
    metadata and the bundle's card; the shipped bundle without either) whose package is installed and whose
    file is present and unchanged (:func:`spacenet7.models.engine_choice.pick`); else torch, said in one line.
    On a CUDA device torch runs (the recorded speeds are the CPU's).

    Raises:
        SN7Error: only ``model_file`` is given and it cannot run here (no checkpoint to fall back on).
    """
    from spacenet7.models import engine_choice
    from spacenet7.models.bundle import bundle_dir, is_bundle, read_card
    from spacenet7.models.inference import resolve_device
    from spacenet7.models.runtime import read_meta

    checkpoint = cfg.checkpoint
    if checkpoint is None and not cfg.model_file:
        checkpoint = str(shipped_or_fail("predict"))
    candidates: list[tuple[dict, Path]] = []
    reasons: list[str] = []
    if cfg.model_file:
        path = Path(cfg.model_file)
        meta = read_meta(path)
        if meta.runtime:
            candidates.append(({**meta.runtime, "file": path.name, "sha256": None}, path.parent))
        else:
            reasons.append(f"{path.name}: no engine choice recorded (compiled by an older version: re-run spacenet7 compile)")
    if checkpoint is not None and is_bundle(checkpoint):
        runtime = read_card(checkpoint).get("runtime") or {}
        candidates += [(c, bundle_dir(checkpoint)) for c in runtime.get("candidates", [])]
    if resolve_device(cfg.device).type == "cuda":
        chosen, reasons = None, ["a CUDA device: the recorded speeds are the CPU's"]
    else:
        chosen, passed = engine_choice.pick(candidates)
        reasons += passed
    why = "; ".join(reasons) or "no compiled engine recorded: `spacenet7 compile parity=REPORT` records one"
    if chosen is not None and chosen[0]["engine"] != "torch":
        cand, folder = chosen
        log.info(
            "predict: engine=auto: %s, %s%s",
            engine_choice.describe(cand),
            folder / cand["file"],
            f" (passed over: {why})" if reasons else "",
        )
        return dataclasses.replace(cfg, engine=Engine(cand["engine"]), model_file=str(folder / cand["file"]), amp=cand["amp"])
    if checkpoint is None:
        raise SN7Error(f"predict: engine=auto: {cfg.model_file} cannot run here ({why}) and no checkpoint= to fall back on")
    amp = chosen[0]["amp"] if chosen is not None else cfg.amp
    log.info(
        "predict: engine=auto: torch (%s)",
        engine_choice.describe(chosen[0]) if chosen is not None else f"amp={str(amp).lower()}; {why}",
    )
    return dataclasses.replace(cfg, engine=Engine.torch, checkpoint=checkpoint, model_file=None, amp=amp)


def _first_count(records: dict[str, list[MonthRecord]]) -> int:
    """The band count of the first image (``0`` without one)."""
    first = next((r for recs in records.values() for r in recs), None)
    if first is None:
        return 0
    with open_raster(first.image) as ds:
        return int(ds.count)


def _load(cfg: PredictConfig) -> LoadedModel:
    """The checkpoint's network (or, ``engine=onnxruntime|openvino``, the exported model file), with
    ``cfg.input`` over its input spec."""
    if cfg.engine is Engine.torch:
        model = load_model(cfg.checkpoint, cfg.model, cfg.device, cfg.amp)
    else:  # an exported model file: same tiling, views, fusion and outputs (models/runtime.py)
        model = load_model_file(str(cfg.model_file), cfg.engine, amp=cfg.amp, threads=cfg.threads, device=cfg.device)
    if cfg.input:
        model.spec = InputSpec(**{**model.spec.to_dict(), **cfg.input})
    return model


def predict_aoi_task(aoi: str, recs: list[MonthRecord], cfg: PredictConfig) -> list[Path]:
    """:func:`predict_aoi` as a Dask task: the network is loaded once per worker process."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = Path(str(cfg.checkpoint) if cfg.engine is Engine.torch else str(cfg.model_file)).resolve()
    st = ckpt.stat()
    key = (
        str(ckpt),
        st.st_size,
        st.st_mtime_ns,
        cfg.engine.value,
        cfg.device,
        cfg.amp,
        repr(cfg.model),
        repr(sorted(cfg.input.items())),
    )
    model = once_per_process("predict-model", key, lambda: _load(cfg))
    with rasterio.Env(GDAL_CACHEMAX=cfg.gdal_cache_mb * 2**20):
        return predict_aoi(model, aoi, recs, cfg)


def _predict_distributed(records: dict[str, list[MonthRecord]], cfg: PredictConfig) -> list[Path]:
    """One Dask task per AOI (``cfg.cluster``); then no scratch or partial file of a killed worker stays."""
    quiet = dataclasses.replace(cfg, progress=False)  # one bar over AOIs here, none per month on the workers

    def cleanup() -> None:
        clear_partials(cfg.out_dir)
        for scratch in Path(cfg.out_dir).glob("*/.raw"):
            shutil.rmtree(scratch, ignore_errors=True)

    per_aoi = map_aois(
        predict_aoi_task,
        [(aoi, (aoi, recs, quiet)) for aoi, recs in records.items()],
        cfg.cluster,
        stage="predict",
        progress=cfg.progress,
        cleanup=cleanup,
    )
    return [p for paths in per_aoi for p in paths]
