"""The inference API's work: a checkpoint loaded once, uploads checked, footprints from the pipeline's own code.

An upload is predicted exactly as ``spacenet7 pipeline`` predicts a month: the run's ``predict``
and ``vectorize`` settings (from its ``pipeline.json``; the stage defaults without one) with the
checkpoint's input spec, tiling, test-time views and temporal fusion
(:func:`spacenet7.models.mosaic.predict_aoi`: the stage's tiling and fusion), then watershed polygons and
tracking (:func:`spacenet7.footprints.vectorize_aoi`), then RFC 7946 GeoJSON as ``export
crs=EPSG:4326`` writes it (:func:`spacenet7.io.vector.write_vector`). Nothing is re-implemented
here: this module only checks uploads and moves files through a temporary folder.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from omegaconf import OmegaConf

from spacenet7.compose import compose_checked, to_overrides
from spacenet7.config import PredictConfig, VectorizeConfig
from spacenet7.data.bands import InputSpec, check_fits, rgb_fallback
from spacenet7.data.sn7 import records_from_files
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.footprints import vectorize_aoi
from spacenet7.io.artifacts import load_vectors
from spacenet7.io.layout import RunLayout
from spacenet7.io.raster import open_raster
from spacenet7.io.vector import area_m2, write_vector
from spacenet7.models.inference import LoadedModel, load_model
from spacenet7.models.mosaic import predict_all

log = logging.getLogger(__name__)
MONTH_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
AOI = "upload"  # the area's name for the pipeline's files inside a request's folder


class UploadError(Exception):
    """A request the API refuses: an HTTP status and one line naming the file and the problem."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class Limits:
    """What one request may send."""

    max_bytes: int
    max_pixels: int  # per image, on the model's grid
    max_files: int


def run_settings(run_dir: Path, overrides: dict[str, Any] | None = None) -> tuple[PredictConfig, VectorizeConfig]:
    """The ``predict`` and ``vectorize`` settings that ``spacenet7 pipeline`` used for this run.

    They are read back from ``pipeline.json`` (its resolved config tree; a manifest of an older
    version holds each stage's command line instead), with ``overrides.predict`` /
    ``overrides.vectorize`` on top; a run without a manifest gets the stage defaults.

    Raises:
        SN7Error: a setting that is not a key of the stage's config, or of the wrong type.
    """
    manifest = RunLayout(run_dir).manifest
    doc = json.loads(manifest.read_text()) if manifest.exists() else {}
    out: list[Any] = []
    for stage, schema in (("predict", PredictConfig), ("vectorize", VectorizeConfig)):
        extra = (overrides or {}).get(stage) or {}
        if "config" not in doc and "stages" in doc:  # written before the pipeline recorded its config tree
            args = shlex.split(doc["stages"].get(stage, ""))[2:]  # "spacenet7 <stage> k=v ..."
            out.append(compose_checked(stage, args + to_overrides(extra)))
            continue
        try:
            node = OmegaConf.merge(OmegaConf.structured(schema), (doc.get("config") or {}).get(stage) or {}, extra)
            out.append(OmegaConf.to_object(node))
        except Exception as exc:  # omegaconf's validation errors: unknown key, wrong type
            raise SN7Error(f"serve: bad {stage} settings for {run_dir} ({str(exc).splitlines()[0]})") from None
    # an upload is predicted whole: a scoring run's band_frac (only its held-out band predicted) is not the model's
    return replace(out[0], band_frac=None), out[1]


def run_checkpoint(run_dir: Path, predict_cfg: PredictConfig) -> Path | None:
    """The checkpoint the run predicted with (``pipeline.json``; looked up in the run's ``train/checkpoints``
    too, for a run moved elsewhere), else the run's best one; ``None`` without either."""
    run = RunLayout(run_dir)
    named = Path(predict_cfg.checkpoint) if predict_cfg.checkpoint else None
    candidates = [named] if named is not None and run.manifest.exists() else []
    if named is not None:
        candidates.append(run.train.checkpoints / named.name)
    candidates.append(run.train.best)
    return next((p for p in candidates if p.is_file() or (p.suffix == ".bundle" and p.is_dir())), None)


class Inference:
    """One loaded model serving footprint requests (:meth:`predict`); thread-safe when called by one thread at a time."""

    def __init__(
        self, checkpoint: str | Path, predict_cfg: PredictConfig, vectorize_cfg: VectorizeConfig, limits: Limits
    ) -> None:
        """Load ``checkpoint`` once, as ``spacenet7 predict`` does with ``predict_cfg``.

        Raises:
            SN7Error: the checkpoint is missing, not a spacenet7 checkpoint, or of another architecture.
        """
        import torch

        if predict_cfg.threads:
            torch.set_num_threads(predict_cfg.threads)
        self.checkpoint = Path(checkpoint)
        self.model: LoadedModel = load_model(checkpoint, predict_cfg.model, predict_cfg.device, predict_cfg.amp)
        if predict_cfg.input:
            self.model.spec = InputSpec(**{**self.model.spec.to_dict(), **predict_cfg.input})
        self.predict_cfg = replace(predict_cfg, progress=False)
        self.vectorize_cfg = vectorize_cfg
        self.limits = limits

    def describe(self) -> dict[str, Any]:
        """What the API does with an upload: the checkpoint, input spec, views and thresholds."""
        p, v = self.predict_cfg, self.vectorize_cfg
        return {
            "checkpoint": self.checkpoint.name,  # its name only: no answer shows the server's paths
            "input": self.model.spec.to_dict(),
            "upscale": self.model.upscale,
            "tile": p.tile,
            "overlap": p.overlap,
            "tta": p.tta_views.value if p.tta else None,
            "grid": p.grid.value,
            "fusion": p.fusion_weight if p.fusion else None,
            "threshold": v.threshold,
            "seed_threshold": v.seed_threshold,
            "max_upload_mb": self.limits.max_bytes / 2**20,
            "max_pixels": self.limits.max_pixels,
            "max_files": self.limits.max_files,
        }

    def check(self, path: Path, name: str) -> None:
        """Refuse an upload that the model cannot read, before any work.

        Raises:
            UploadError: empty (400), not a GeoTIFF (415), no CRS (400), a band count or data type
                that the checkpoint's input spec does not read (400), over ``max_pixels`` (413).
        """
        size = path.stat().st_size
        if size == 0:
            raise UploadError(400, f"{name}: empty file")
        if size > self.limits.max_bytes:
            raise UploadError(
                413, f"{name}: {size / 2**20:.1f} MB is over the limit of {self.limits.max_bytes / 2**20:g} MB (max_upload_mb)"
            )
        try:
            with warnings.catch_warnings():  # a raster without georeferencing is reported below, not warned about
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                ds = open_raster(path, require_crs=False)
        except SN7DataError:
            raise UploadError(415, f"{name}: not a GeoTIFF (GDAL cannot read it as a raster)") from None
        with ds:
            if ds.driver != "GTiff":
                raise UploadError(415, f"{name}: not a GeoTIFF (a {ds.driver} raster)")
            if ds.crs is None:
                raise UploadError(400, f"{name}: GeoTIFF has no CRS (expected a georeferenced mosaic)")
            try:
                check_fits(ds, self.spec_for(ds.count), name)
            except SN7DataError as exc:
                raise UploadError(400, str(exc)) from None
            pixels = ds.width * ds.height * self.model.upscale**2
            if pixels > self.limits.max_pixels:
                raise UploadError(
                    413,
                    f"{name}: {ds.width}x{ds.height} px is {pixels:.0f} px on the model's grid "
                    f"(x{self.model.upscale:g}), over the limit of {self.limits.max_pixels} (max_pixels)",
                )

    def spec_for(self, count: int) -> InputSpec:
        """The input spec for a file of ``count`` bands: the model's, or RGB without alpha for a 3-band
        file when the model reads RGB + alpha (:func:`spacenet7.data.bands.rgb_fallback`) and no
        ``input`` override is set."""
        rgb = None if self.predict_cfg.input else rgb_fallback(self.model.spec, count)
        return rgb or self.model.spec

    def predict(self, files: list[tuple[Path, str]], months: list[str] | None, work: Path) -> bytes:
        """Footprints of uploaded GeoTIFFs as an RFC 7946 FeatureCollection (EPSG:4326).

        Args:
            files: (saved path, the client's file name) of each upload, already :meth:`check`-ed.
            months: ``YYYY-MM`` of each file (a time series: tracked footprints), or ``None`` for one image.
            work: an empty folder of this request (the caller removes it).

        Returns:
            One feature per footprint: ``id`` and ``area_m2``; for a time series one per building
            and month, with ``month``, ``first_seen``, ``last_seen``, ``n_months`` and ``filled``.

        Raises:
            UploadError: 422 with the pipeline's one-line reason (a fully masked series, a truncated file).
        """
        names = {str(p): name for p, name in files}
        try:
            records = records_from_files([p for p, _ in files], AOI)
            with rasterio.open(files[0][0]) as ds:
                model = replace(self.model, spec=self.spec_for(ds.count))
            with rasterio.Env(GDAL_CACHEMAX=self.predict_cfg.gdal_cache_mb * 2**20):
                predict_all(model, records, replace(self.predict_cfg, out_dir=str(work / "pred")))
            vec = vectorize_aoi(work / "pred" / AOI, replace(self.vectorize_cfg, out_dir=str(work / "vec")))
            gdf, _ = load_vectors(vec)
        except SN7Error as exc:
            message = str(exc)
            for saved, name in names.items():
                message = message.replace(saved, name)
            raise UploadError(422, message.replace(str(work), "upload")) from None
        gdf["area_m2"] = area_m2(gdf)
        columns = (
            ["id", "area_m2"] if months is None else ["id", "month", "first_seen", "last_seen", "n_months", "filled", "area_m2"]
        )
        out = gpd.GeoDataFrame({c: gdf[c].to_numpy() for c in columns}, geometry=list(gdf.geometry), crs=gdf.crs)
        out["area_m2"] = np.round(out["area_m2"].astype(float), 1)
        path = work / "footprints.geojson"
        write_vector(
            out.to_crs("EPSG:4326") if len(out) else out.set_crs("EPSG:4326", allow_override=True),
            path,
            layer_options={"RFC7946": "YES"},
        )
        return path.read_bytes()


def series_names(months: list[str], n_files: int) -> list[str]:
    """File names carrying each month (``upload_YYYY-MM.tif``: the pipeline reads the month from the name).

    Raises:
        UploadError: (400) a count that differs from the files', a month not ``YYYY-MM``, a month given twice.
    """
    if len(months) != n_files:
        raise UploadError(
            400, f"{n_files} image(s) but {len(months)} month(s): give one months=YYYY-MM field per image, in order"
        )
    for m in months:
        if not MONTH_RE.match(m):
            raise UploadError(400, f"month {m!r} is not YYYY-MM")
    if len(set(months)) != len(months):
        dup = next(m for m in months if months.count(m) > 1)
        raise UploadError(400, f"month {dup} is given twice")
    return [f"{AOI}_{m}.tif" for m in months]
