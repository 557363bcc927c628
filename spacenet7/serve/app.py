"""The web application: the map page, its data and tiles, file downloads, and the inference API.

Routes (OpenAPI docs at ``/docs``):

- ``/``: the map page (``static/``; Leaflet from the npm-installed ``node_modules``, no CDN);
- ``/api/run``: the run's AOIs, months, scores and what the inference API does;
- ``/api/aois/{aoi}/{month}/footprints.geojson``, ``.../truth.geojson``: the month's layers;
- ``/tiles/{mosaic|probability}/{aoi}/{month}/{z}/{x}/{y}.png``: imagery tiles;
- ``/files/run/{path}``, ``/files/data/{path}``: files of the run directory and the data root, only;
- ``POST /api/predict`` (one GeoTIFF) and ``POST /api/track`` (a time series with its months).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from spacenet7 import __version__
from spacenet7.config import ServeConfig
from spacenet7.errors import SN7Error
from spacenet7.models import bundle as model_bundle
from spacenet7.serve import tiles
from spacenet7.serve.api import Inference, Limits, UploadError, run_checkpoint, run_settings, series_names
from spacenet7.serve.catalog import Catalog, Month
from spacenet7.serve.files import safe_path

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
REPO = Path(__file__).resolve().parents[2]
COPY_CHUNK = 1 << 20
GEOJSON = "application/geo+json"
PNG_HEADERS = {"Cache-Control": "max-age=3600"}
MAX_ZOOM = 30  # web-map zoom levels served (z 30: ~0.15 mm pixels); beyond, a tile is a 400


class Problem(BaseModel):
    """The body of every 4xx/5xx answer: one line naming the file, setting or value at fault."""

    detail: str


def _errors(**codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error codes a route answers (each with a :class:`Problem` body)."""
    return {int(code.lstrip("_")): {"model": Problem, "description": text} for code, text in codes.items()}


NOT_FOUND = _errors(_404="no such AOI, month, tile or file in this run")
UPLOAD_ERRORS = _errors(
    _400="a bad request: a file without a CRS or of another band layout, months that do not match the files",
    _411="no Content-Length header (chunked uploads are refused)",
    _413="over max_upload_mb, max_pixels or max_files",
    _415="not a GeoTIFF",
    _422="the pipeline refused the data (a fully masked series, a truncated file)",
    _503="no model loaded, or every worker and queue place taken (Retry-After)",
)


def host_name(header: str) -> str:
    """The host of a ``Host`` header, lower-case, without its port (``[::1]:8000`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether ``host`` (from :func:`host_name`) matches ``allowed``: a name, ``*``, or ``*.domain``."""
    for pattern in (a.strip().lower().strip("[]") for a in allowed):
        if pattern == "*" or pattern == host or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def allowed_hosts(cfg: ServeConfig) -> list[str]:
    """``cfg.allowed_hosts``, with the address the server binds to when it names one (not 0.0.0.0 or ::)."""
    bound = cfg.host.strip("[]").lower()
    extra = [bound] if bound and bound not in ("0.0.0.0", "::") else []
    return [*cfg.allowed_hosts, *extra]


def npm_package(name: str, probe: str) -> Path:
    """The folder of an npm package that ``make install`` installed (``npm ci``) into the repository's ``node_modules``.

    ``$SPACENET7_NODE_MODULES`` names another ``node_modules`` folder.

    Args:
        name: the package's folder below ``node_modules`` (``leaflet/dist``).
        probe: a file that must be there.

    Raises:
        SN7Error: the package is not installed.
    """
    folder = Path(os.environ.get("SPACENET7_NODE_MODULES", REPO / "node_modules")) / name
    if not (folder / probe).is_file():
        raise SN7Error(
            f"serve: {folder / probe} not found: run `make install` (it runs `npm ci` for the page's JavaScript), "
            "or set SPACENET7_NODE_MODULES to a node_modules folder with leaflet and swagger-ui-dist"
        )
    return folder


class Gate:
    """Admission for predictions: ``workers`` run at once, ``queue`` more wait, the rest get 503 at once."""

    def __init__(self, workers: int, queue: int) -> None:
        self.limit = workers + queue
        self.active = 0  # admitted requests, running or waiting (changed on the event loop only)
        self.running = threading.BoundedSemaphore(workers)  # held in the worker thread around the model

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a place, or raise a 503 when every place is taken."""
        if self.active >= self.limit:
            raise HTTPException(
                503,
                f"busy: {self.active} prediction(s) running or queued (workers + queue = {self.limit}); retry later",
                headers={"Retry-After": "5"},
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


def create_app(cfg: ServeConfig) -> FastAPI:
    """Build the application over ``cfg.run_dir`` (the model, if any, is loaded here, once).

    Raises:
        SN7Error: not a run folder, Leaflet missing, or a checkpoint that cannot be loaded.
    """
    catalog = Catalog(cfg.run_dir, cfg.data_root)
    leaflet, swagger = npm_package("leaflet/dist", "leaflet.js"), npm_package("swagger-ui-dist", "swagger-ui-bundle.js")
    predict_cfg, vectorize_cfg = run_settings(catalog.run_dir, cfg.overrides)
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else run_checkpoint(catalog.run_dir, predict_cfg)
    shipped = model_bundle.SHIPPED
    if checkpoint is None and (shipped / model_bundle.CARD).is_file():  # a run without a model of its own: the shipped one
        checkpoint = shipped
        log.info("serve: the inference API uses the shipped model %s", shipped)
    if checkpoint is not None and model_bundle.is_bundle(checkpoint):  # the settings the model was measured with
        if not cfg.overrides.get("vectorize"):
            vectorize_cfg = replace(vectorize_cfg, bundle=str(checkpoint))
        if not cfg.overrides.get("predict"):
            predict_cfg = replace(predict_cfg, **(model_bundle.read_card(checkpoint).get("predict") or {}))
    limits = Limits(int(cfg.max_upload_mb * 2**20), cfg.max_pixels, cfg.max_files)
    inference = Inference(checkpoint, predict_cfg, vectorize_cfg, limits) if checkpoint is not None else None
    if inference is None:
        log.warning(
            "serve: no checkpoint in %s and no shipped model (%s): the inference API answers 503 "
            "(start with checkpoint=PATH, or `make model`)",
            catalog.run_dir,
            shipped,
        )
    gate = Gate(cfg.workers, cfg.queue)
    tmp_root = Path(cfg.tmp_dir) if cfg.tmp_dir else None
    if tmp_root is not None:
        tmp_root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, list[float]] = {"predict": [], "track": []}

    hosts = allowed_hosts(cfg)
    app = FastAPI(
        title="spacenet7 serve",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        # the run's folder name only: no answer tells a client where the server keeps its files
        description=f"Tracked building footprints of run `{catalog.run_dir.name}` month by month, and footprints of new imagery.",
        responses=_errors(_400="a Host header that is not one of the server's allowed_hosts, or a bad parameter"),
    )
    app.state.catalog, app.state.inference, app.state.gate, app.state.timings = catalog, inference, gate, timings

    @app.exception_handler(UploadError)
    async def _upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', 'invalid')}" for e in exc.errors()
        ]
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=400)

    @app.middleware("http")
    async def _body_limit(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "a Content-Length header is required (no chunked uploads)"}, status_code=411)
            if not length.isdigit() or int(length) > limits.max_bytes:
                return JSONResponse(
                    {"detail": f"request body of {length} bytes is over the limit of {cfg.max_upload_mb:g} MB (max_upload_mb)"},
                    status_code=413,
                )
        return await call_next(request)

    @app.middleware("http")  # added last, so it runs first
    async def _trusted_host(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        host = host_name(request.headers.get("host", ""))
        if not host_allowed(host, hosts):
            return JSONResponse(
                {"detail": f"Host {host!r} is not one of allowed_hosts {hosts} (spacenet7 serve allowed_hosts=[...])"},
                status_code=400,
            )
        return await call_next(request)

    # -- the map page and its data ------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/vendor/leaflet", StaticFiles(directory=leaflet), name="leaflet")
    app.mount("/vendor/swagger", StaticFiles(directory=swagger), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:  # FastAPI's Swagger UI, its JavaScript from node_modules instead of a CDN
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url="/vendor/swagger/swagger-ui-bundle.js",
            swagger_css_url="/vendor/swagger/swagger-ui.css",
            swagger_favicon_url="/vendor/swagger/favicon-32x32.png",
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(swagger / "favicon-32x32.png")

    @app.get("/api/run", summary="The run: AOIs, months, counts, scores; the inference settings")
    def run_summary() -> dict[str, Any]:
        return {**catalog.summary(), "inference": inference.describe() if inference else None}

    def _month(aoi: str, month: str) -> Month:
        a = catalog.aois.get(aoi)
        m = a.month(month) if a is not None else None
        if m is None:
            raise HTTPException(404, f"no month {month!r} of AOI {aoi!r} in this run")
        return m

    @app.get(
        "/api/aois/{aoi}/{month}/footprints.geojson", summary="The month's tracked footprints (RFC 7946)", responses=NOT_FOUND
    )
    def footprints(aoi: str, month: str) -> Response:
        m = _month(aoi, month)
        return Response(catalog.footprints_geojson(aoi, m.month), media_type=GEOJSON)

    @app.get(
        "/api/aois/{aoi}/{month}/truth.geojson",
        summary="The month's ground truth (labels_match), where the data has it",
        responses=NOT_FOUND,
    )
    def truth(aoi: str, month: str) -> Response:
        m = _month(aoi, month)
        body = catalog.truth_geojson(aoi, m.month)
        if body is None:
            raise HTTPException(404, f"no ground truth for {aoi} {m.month}")
        return Response(body, media_type=GEOJSON)

    @app.get(
        "/tiles/{layer}/{aoi}/{month}/{z}/{x}/{y}.png",
        summary="A 256 px web-map tile of the mosaic or the probability",
        responses={**NOT_FOUND, 200: {"content": {"image/png": {}}}},
    )
    def tile(
        layer: str,
        aoi: str,
        month: str,
        z: Annotated[int, PathParam(ge=0, le=MAX_ZOOM)],
        x: Annotated[int, PathParam(ge=0)],
        y: Annotated[int, PathParam(ge=0)],
    ) -> Response:
        m = _month(aoi, month)
        if x >= 2**z or y >= 2**z:
            raise HTTPException(404, f"no tile {z}/{x}/{y}: x and y are below {2**z} at zoom {z}")
        source = {"mosaic": m.image, "probability": m.prediction}.get(layer)
        render = tiles.mosaic_tile if layer == "mosaic" else tiles.probability_tile
        png = render(source, z, x, y) if source is not None else None
        if png is None:
            raise HTTPException(404, f"no {layer} tile {z}/{x}/{y} for {aoi} {m.month}")
        return Response(png, media_type="image/png", headers=PNG_HEADERS)

    @app.get("/files/run/{path:path}", summary="A file of the run directory (exports, metrics)", responses=NOT_FOUND)
    def run_file(path: str) -> FileResponse:
        return _serve_file(catalog.run_dir, path)

    @app.get("/files/data/{path:path}", summary="A file of the data root (mosaics, labels)", responses=NOT_FOUND)
    def data_file(path: str) -> FileResponse:
        if not catalog.data_roots:
            raise HTTPException(404, "this run has no data root")
        for root in catalog.data_roots[:-1]:  # several roots: the first that holds the file
            if safe_path(root, path) is not None:
                return _serve_file(root, path)
        return _serve_file(catalog.data_roots[-1], path)

    # -- the inference API ------------------------------------------------------------------------
    @app.post(
        "/api/predict",
        summary="Footprints of one GeoTIFF (RFC 7946 GeoJSON, EPSG:4326)",
        response_class=Response,
        responses={**UPLOAD_ERRORS, 200: {"content": {GEOJSON: {}}}},
    )
    async def predict(image: Annotated[UploadFile, File(description="a GeoTIFF mosaic with a CRS")]) -> Response:
        return await _footprints("predict", [image], None)

    @app.post(
        "/api/track",
        summary="Tracked footprints of a time series: ids, first and last month",
        response_class=Response,
        responses={**UPLOAD_ERRORS, 200: {"content": {GEOJSON: {}}}},
    )
    async def track(
        images: Annotated[list[UploadFile], File(description="GeoTIFFs of one area")],
        months: Annotated[list[str], Form(description="YYYY-MM of each image, in the same order")],
    ) -> Response:
        return await _footprints("track", images, months)

    async def _footprints(kind: str, uploads: list[UploadFile], months: list[str] | None) -> Response:
        if inference is None:
            raise HTTPException(503, "no model loaded: start `spacenet7 serve` with checkpoint=PATH")
        if len(uploads) > limits.max_files:
            raise UploadError(413, f"{len(uploads)} images is over the limit of {limits.max_files} (max_files)")
        async with gate.admit():
            t0 = time.perf_counter()
            body = await run_in_threadpool(_work, inference, uploads, months)
            timings[kind].append(time.perf_counter() - t0)
        return Response(body, media_type=GEOJSON)

    def _work(inference: Inference, uploads: list[UploadFile], months: list[str] | None) -> bytes:
        names = series_names(months, len(uploads)) if months is not None else ["upload.tif"]
        with tempfile.TemporaryDirectory(prefix="spacenet7-serve-", dir=tmp_root) as tmp:
            work = Path(tmp)
            (work / "in").mkdir()
            files = []
            for up, name in zip(uploads, names):
                client = _client_name(up.filename, name)
                saved = work / "in" / name
                _save(up, saved, limits.max_bytes, client)
                inference.check(saved, client)
                files.append((saved, client))
            with gate.running:
                return inference.predict(files, months, work)

    @app.get("/api/health", summary="Liveness, and how many predictions are running or queued")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "predictions_admitted": gate.active, "model": inference is not None}

    return app


def _serve_file(root: Path, path: str) -> FileResponse:
    target = safe_path(root, path)
    if target is None:
        raise HTTPException(404, "not found")
    return FileResponse(target)


def _client_name(filename: str | None, fallback: str) -> str:
    """The client's file name for messages only (never a path here): its last part, printable, short."""
    name = Path(filename or fallback).name
    return "".join(ch for ch in name if ch.isprintable())[:120] or fallback


def _save(upload: UploadFile, dst: Path, max_bytes: int, name: str) -> None:
    """Copy an upload into the request's folder, refusing it (413) once it passes ``max_bytes``."""
    n = 0
    upload.file.seek(0)
    with open(dst, "wb") as out:
        while chunk := upload.file.read(COPY_CHUNK):
            n += len(chunk)
            if n > max_bytes:
                raise UploadError(413, f"{name}: over the limit of {max_bytes / 2**20:g} MB (max_upload_mb)")
            out.write(chunk)
