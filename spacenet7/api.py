"""A Python API for notebooks and scripts: footprints and tracked buildings as GeoDataFrames.

::

    from spacenet7 import Model

    model = Model.load()                      # the shipped real model; or Model.load("my.bundle" / "best.ckpt")
    footprints = model.predict("my.tif")      # one image -> GeoDataFrame of footprints (the image's CRS)
    buildings = model.track(["2019-01.tif", "2019-02.tif", "2019-03.tif"])  # a monthly series, tracked

Each call runs the pipeline's own code, exactly as ``spacenet7 predict`` and ``spacenet7
vectorize`` do (:func:`spacenet7.models.mosaic.predict_aoi`: tiling, test-time views, temporal fusion;
:func:`spacenet7.footprints.vectorize_aoi`: watershed polygons, tracking), in a temporary folder
that is removed afterwards. The vectorize settings are the bundle's (the ones its scores were
measured with), or the stage defaults for a checkpoint; both can be changed per model.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd

from spacenet7.config import PredictConfig, VectorizeConfig
from spacenet7.data.months import month_date, month_label
from spacenet7.errors import SN7Error

__all__ = ["Model"]
_AOI = "series"  # the area's name for the pipeline's files inside the temporary folder


class Model:
    """A trained network (a model bundle or a checkpoint) with its predict and vectorize settings.

    Attributes:
        source: the bundle or checkpoint it was loaded from.
        card: the bundle's card (architecture, input, settings, provenance, scores); ``None`` for a checkpoint.
        predict_cfg: the ``spacenet7 predict`` settings used (tiling, test-time views, fusion, device).
        vectorize_cfg: the ``spacenet7 vectorize`` settings used (thresholds, ``shift_px``, tracking).
    """

    def __init__(self, source: Path, loaded: Any, predict_cfg: PredictConfig, vectorize_cfg: VectorizeConfig) -> None:
        """Use :meth:`load`."""
        self.source = source
        self._loaded = loaded
        self.predict_cfg = predict_cfg
        self.vectorize_cfg = vectorize_cfg
        self.card: dict[str, Any] | None = None
        from spacenet7.models.bundle import is_bundle, read_card

        if is_bundle(source):
            self.card = read_card(source)

    @classmethod
    def load(
        cls,
        bundle_or_checkpoint: str | Path | None = None,
        *,
        device: str = "auto",
        tta: bool = True,
        predict: dict[str, Any] | None = None,
        vectorize: dict[str, Any] | None = None,
    ) -> Model:
        """Load a model: a ``.bundle`` folder, a ``.ckpt`` of ``spacenet7 train``, or ``None`` for the shipped one.

        Args:
            bundle_or_checkpoint: the model; ``None``: the shipped real model (``make model``).
            device: ``auto`` (a CUDA GPU when there is one), ``cpu`` or ``cuda[:N]``.
            tta: average over the test-time views (``False`` for speed: the d4 views cost 8x).
            predict: ``PredictConfig`` settings over the bundle's (the ones its scores were measured with: tiling,
                views, fusion, grid), e.g. ``{"tile": 512, "input": {"count": 3, "alpha": None}}``.
            vectorize: ``VectorizeConfig`` settings over the bundle's, e.g. ``{"threshold": 0.3, "track": {"min_persist": 1}}``.

        Raises:
            SN7Error: no such model, not a spacenet7 bundle or checkpoint, the shipped model not installed,
                or a setting that is not one.
        """
        from spacenet7.models.bundle import is_bundle, read_card, shipped_or_fail
        from spacenet7.models.inference import load_model

        source = Path(bundle_or_checkpoint) if bundle_or_checkpoint is not None else shipped_or_fail("Model.load")
        measured = (read_card(source).get("predict") or {}) if is_bundle(source) else {}  # the settings of its scores
        predict_cfg = _settings(
            PredictConfig,
            {**measured, "checkpoint": str(source), "device": device, "tta": tta, "progress": False, **(predict or {})},
        )
        vec = dict(vectorize or {})
        base = VectorizeConfig(bundle=str(source)) if is_bundle(source) else VectorizeConfig()
        base.bundle = None
        vectorize_cfg = _settings(
            VectorizeConfig, {**_plain(base), **vec, "track": {**_plain(base.track), **vec.get("track", {})}}
        )
        loaded = load_model(source, predict_cfg.model, predict_cfg.device, predict_cfg.amp)
        if predict_cfg.input:
            from spacenet7.data.bands import InputSpec

            loaded.spec = InputSpec(**{**loaded.spec.to_dict(), **predict_cfg.input})
        return cls(source, loaded, predict_cfg, vectorize_cfg)

    def __repr__(self) -> str:
        from spacenet7.models.bundle import card_summary

        return f"Model({card_summary(self.card) if self.card else self.source.name})"

    def predict(self, image: str | Path) -> gpd.GeoDataFrame:
        """Building footprints of one GeoTIFF, in its CRS.

        Args:
            image: a georeferenced GeoTIFF (RGB, or the band layout of the model's input spec).

        Returns:
            One row per footprint: ``id``, ``area_m2`` and the polygon.

        Raises:
            SN7Error: an unreadable file, a band layout the model cannot read, no valid pixels.
        """
        gdf = self._run([image], None, track=False)
        return gdf[["id", "area_m2", "geometry"]].reset_index(drop=True)

    def track(self, images: Sequence[str | Path], months: Sequence[str] | None = None) -> gpd.GeoDataFrame:
        """Tracked buildings of a monthly series of GeoTIFFs of one area (one row per building and month).

        Args:
            images: the months' GeoTIFFs; their months come from ``months``, else the file names
                (``..._2019-03.tif``) or TIFF date tags, else the list order (labelled ``m01``, ``m02``, ...).
            months: ``YYYY-MM`` of each image, in order (optional).

        Returns:
            ``id`` (persistent across months), ``month``, ``first_seen``, ``last_seen`` (``YYYY-MM``, or
            ``mNN`` for undated imagery), ``date`` (the month's first day; ``NaT`` for undated imagery),
            ``new`` (first seen this month, after the first month), ``filled`` (carried over a month
            where it was not observed), ``n_months``, ``area_m2`` and the polygon, in the images' CRS.

        Raises:
            SN7Error: as :meth:`predict`, or months that are not ``YYYY-MM`` or not one per image.
        """
        return self._run(list(images), list(months) if months is not None else None, track=True)

    def _run(self, images: list[str | Path], months: list[str] | None, *, track: bool) -> gpd.GeoDataFrame:
        from spacenet7.data.bands import check_fits, rgb_fallback
        from spacenet7.data.sn7 import records_from_files
        from spacenet7.footprints import vectorize_aoi
        from spacenet7.io.artifacts import load_vectors
        from spacenet7.io.raster import open_raster
        from spacenet7.io.vector import area_m2
        from spacenet7.models.mosaic import check_overlap, predict_all

        if not images:
            raise SN7Error("no images given")
        with tempfile.TemporaryDirectory(prefix="spacenet7-") as tmp:
            work = Path(tmp)
            files = [Path(p).resolve() for p in images]
            if months is not None:
                from spacenet7.serve.api import UploadError, series_names

                try:
                    names = series_names(months, len(files))
                except UploadError as exc:
                    raise SN7Error(exc.message) from None
                (work / "in").mkdir()
                for src, name in zip(files, names):
                    os.symlink(src, work / "in" / name)
                files = [work / "in" / n for n in names]
            records = records_from_files(files, _AOI)
            check_overlap(records[_AOI])
            model = self._loaded
            with open_raster(records[_AOI][0].image) as ds:
                spec = None if self.predict_cfg.input else rgb_fallback(model.spec, ds.count)
                if spec is not None:
                    model = dataclasses.replace(model, spec=spec)
            for rec in records[_AOI]:
                with open_raster(rec.image) as ds:
                    check_fits(ds, model.spec, rec.image)
            predict_all(model, records, dataclasses.replace(self.predict_cfg, out_dir=str(work / "pred")))
            vcfg = self.vectorize_cfg
            if not track:  # one image: every footprint, none dropped for lack of a second month
                vcfg = dataclasses.replace(vcfg, track=dataclasses.replace(vcfg.track, min_persist=1))
            vec = vectorize_aoi(work / "pred" / _AOI, dataclasses.replace(vcfg, out_dir=str(work / "vec")))
            gdf, meta = load_vectors(vec)
        first = meta["months"][0]["month"] if meta["months"] else None
        out = gpd.GeoDataFrame(
            {
                "id": gdf["id"].to_numpy(),
                "month": [month_label(m) for m in gdf["month"]],
                "date": pd.to_datetime([month_date(m) for m in gdf["month"]]),
                "first_seen": [month_label(m) for m in gdf["first_seen"]],
                "last_seen": [month_label(m) for m in gdf["last_seen"]],
                "new": (gdf["first_seen"] == gdf["month"]).to_numpy() & (gdf["month"] != first).to_numpy(),
                "filled": gdf["filled"].to_numpy(bool),
                "n_months": gdf["n_months"].to_numpy(),
            },
            geometry=list(gdf.geometry),
            crs=gdf.crs,
        )
        out["area_m2"] = area_m2(out).round(1)
        return out.sort_values(["month", "id"], kind="stable").reset_index(drop=True)


def _plain(obj: Any) -> dict[str, Any]:
    """A dataclass as a map of its fields (enums as values), one level deep."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _settings(schema: type, values: dict[str, Any]) -> Any:
    """``schema`` built from ``values`` through OmegaConf, so that unknown keys and wrong types are one line."""
    from omegaconf import OmegaConf

    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(_to_plain(values)))
        return OmegaConf.to_object(node)
    except SN7Error:
        raise
    except Exception as exc:  # omegaconf's validation errors
        raise SN7Error(f"bad {schema.__name__} setting: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None


def _to_plain(value: Any) -> Any:
    """Enums as their values, dataclasses as maps, recursively (what OmegaConf takes)."""
    from enum import Enum

    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value
