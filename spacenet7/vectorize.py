"""Stage ``vectorize``: probability rasters -> footprints (watershed) -> tracked buildings.

For each AOI it writes ``<out_dir>/<AOI>.parquet`` (GeoParquet in the source CRS; one row per
building and month, with ``id``, ``month``, ``first_seen``, ``last_seen``, ``n_months``,
``filled`` and the source-pixel WKT in ``pix_wkt``) and ``<AOI>.json`` (the month list); the
work per AOI is :func:`spacenet7.footprints.vectorize_aoi`, the files' readers and writers are in
:mod:`spacenet7.io.artifacts`.
"""

from __future__ import annotations

from pathlib import Path

from spacenet7.cluster import map_aois
from spacenet7.config import VectorizeConfig
from spacenet7.errors import SN7DataError
from spacenet7.footprints import vectorize_aoi
from spacenet7.io.atomic import clear_partials, ensure_writable_dir


def run(cfg: VectorizeConfig) -> list[Path]:
    """Vectorize and track every AOI folder under ``pred_dir``; returns the GeoParquet paths."""
    pred_dir = Path(cfg.pred_dir)
    ensure_writable_dir(cfg.out_dir)
    clear_partials(cfg.out_dir)
    aoi_dirs = sorted(p for p in pred_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) if pred_dir.is_dir() else []
    if cfg.aois:
        aoi_dirs = [p for p in aoi_dirs if p.name in cfg.aois]
    if not aoi_dirs:
        raise SN7DataError(pred_dir, "no prediction folders (<AOI>/<stem>.tif) found; run `spacenet7 predict` first")
    return map_aois(
        vectorize_aoi,
        [(d.name, (d, cfg)) for d in aoi_dirs],
        cfg.cluster,
        stage="vectorize",
        cleanup=lambda: clear_partials(cfg.out_dir),  # a killed worker's
    )
