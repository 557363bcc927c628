"""Stage ``serve``: a local web application over a run directory (``spacenet7 serve run_dir=runs/demo``).

- a map page: each AOI's monthly mosaic as tiles (rio-tiler), the probability raster as an optional
  layer, the month's tracked footprints coloured by first month (new ones highlighted), a month
  slider, building details on click, and the ground truth with the month's F1 and the AOI's SCOT
  terms; offline (Leaflet from the npm registry, installed by ``make install``);
- an inference API on the same server (OpenAPI docs at ``/docs``): one GeoTIFF -> footprints, a time
  series -> tracked footprints, with the run's own preprocessing, test-time views and thresholds.

It binds to 127.0.0.1 unless ``host=`` says otherwise and serves files only from the run directory
and its data root. The pieces: :mod:`.catalog` (what the run holds), :mod:`.tiles`, :mod:`.api`
(uploads and inference), :mod:`.files` (safe paths), :mod:`.app` (routes), :mod:`.server` (uvicorn).
"""

from __future__ import annotations

import importlib.util

from spacenet7.config import ServeConfig
from spacenet7.errors import SN7Error

NEEDS = ("fastapi", "uvicorn", "rio_tiler", "multipart")  # the serve extra: pip install 'spacenet7[serve]'


def run(cfg: ServeConfig) -> None:
    """Build the application and serve it until interrupted.

    Raises:
        SN7Error: the serve extra is not installed, the run folder is not a run, or the port is taken.
    """
    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise SN7Error(f"serve: {', '.join(missing)} not installed: pip install 'spacenet7[serve]' (make install does)")
    from spacenet7.serve.app import create_app
    from spacenet7.serve.server import serve_forever

    serve_forever(create_app(cfg), cfg.host, cfg.port)
