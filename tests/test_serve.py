"""``spacenet7 serve``: the map page's data and tiles, the inference API, bad requests, path traversal, a load burst."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio

fastapi = pytest.importorskip("fastapi", reason="spacenet7 serve needs the serve extra: pip install '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from spacenet7 import predict, vectorize  # noqa: E402
from spacenet7.compose import compose, compose_checked  # noqa: E402
from spacenet7.config import ServeConfig  # noqa: E402
from spacenet7.data.sn7 import scan  # noqa: E402
from spacenet7.io.artifacts import load_vectors  # noqa: E402
from spacenet7.io.vector import area_m2  # noqa: E402
from spacenet7.serve.api import run_settings  # noqa: E402
from spacenet7.serve.app import create_app  # noqa: E402
from spacenet7.serve.server import serve_in_thread  # noqa: E402

OVERRIDES = {"predict": {"tta": False}}  # one view: the tests' predictions take ~1 s instead of ~8
LIMITS = {"max_upload_mb": 0.5, "max_pixels": 128 * 128 * 4, "max_files": 5, "workers": 1, "queue": 1}


@pytest.fixture(scope="module")
def run(served_run) -> Path:
    return served_run


@pytest.fixture(scope="module")
def manifest(run) -> dict:
    return json.loads((run / "pipeline.json").read_text())


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def app(run, uploads):
    return create_app(ServeConfig(run_dir=str(run), tmp_dir=str(uploads), overrides=OVERRIDES, **LIMITS))


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app, base_url="http://localhost")  # a Host of allowed_hosts (TestClient says "testserver")


@pytest.fixture(scope="module")
def months(run, manifest):
    """The held-out AOI's month records (its mosaics are what a user would upload)."""
    aoi = manifest["test_aois"][0]
    return aoi, scan(manifest["data_root"], aois=[aoi])[aoi]


def _export(run: Path, aoi: str, stem: str) -> gpd.GeoDataFrame:
    return gpd.read_file(run / "footprints" / aoi / f"{stem}.geojson")


# -- the map page's data ---------------------------------------------------------------------------------


def test_page_loads_leaflet_from_this_server_only(client):
    html = client.get("/").text
    assert '<script src="/vendor/leaflet/leaflet.js">' in html and "/vendor/leaflet/leaflet.css" in html
    assert "http://" not in html and "https://" not in html  # no CDN
    js = client.get("/vendor/leaflet/leaflet.js")
    assert js.status_code == 200 and b"Leaflet 1.9.4" in js.content[:300]
    docs = client.get("/docs").text
    assert "/vendor/swagger/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/vendor/swagger/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/track", "/api/run"} <= set(spec["paths"])


def test_month_layers_are_the_exports_features(client, run, months):
    aoi, recs = months
    summary = client.get("/api/run").json()
    (a,) = summary["aois"]
    assert a["aoi"] == aoi and [m["month"] for m in a["months"]] == [r.month_key for r in recs]
    (s, w), (n, e) = a["bounds"]
    for k, m in enumerate(a["months"]):
        fc = client.get(f"/api/aois/{aoi}/{m['month']}/footprints.geojson")
        assert fc.headers["content-type"] == "application/geo+json"
        feats = fc.json()["features"]
        exp = _export(run, aoi, m["stem"])
        assert len(feats) == len(exp) == m["n_buildings"]
        assert sorted(f["properties"]["id"] for f in feats) == sorted(exp["id"])
        by_id = dict(zip(exp["id"], exp["area_m2"]))
        assert all(abs(f["properties"]["area_m2"] - by_id[f["properties"]["id"]]) <= 0.05 for f in feats)
        new = {f["properties"]["id"] for f in feats if f["properties"]["new"]}
        first_seen = pd.to_datetime(exp["first_seen"]).dt.strftime("%Y-%m")  # export writes dates
        assert new == (set(exp.loc[first_seen == m["month"], "id"]) if k else set()) and len(new) == m["n_new"]
        xy = np.array([c for f in feats for c in f["geometry"]["coordinates"][0]])
        assert (
            (xy[:, 0] >= w - 1e-6).all()
            and (xy[:, 0] <= e + 1e-6).all()
            and (xy[:, 1] >= s - 1e-6).all()
            and (xy[:, 1] <= n + 1e-6).all()
        )
    assert any(m["n_new"] for m in a["months"]) and len({m["n_buildings"] for m in a["months"]}) > 1


def test_truth_layer_and_scores(client, months, run):
    aoi, recs = months
    summary = client.get("/api/run").json()
    m0 = summary["aois"][0]["months"][0]
    assert m0["truth"] and m0["scores"]["f1_50"] == json.loads((run / "metrics.json").read_text())["per_month"][0]["f1_50"]
    assert summary["aois"][0]["scot"]["scot"] == pytest.approx(json.loads((run / "metrics.json").read_text())["scot"])
    truth = client.get(f"/api/aois/{aoi}/{recs[0].month_key}/truth.geojson").json()["features"]
    assert len(truth) == len(gpd.read_file(recs[0].labels_match))
    assert client.get(f"/api/aois/{aoi}/1999-01/truth.geojson").status_code == 404


def test_tiles_are_pngs_within_the_aoi_only(client, months):
    import morecantile

    aoi, recs = months
    a = client.get("/api/run").json()["aois"][0]
    (s, w), (n, e) = a["bounds"]
    tile = morecantile.tms.get("WebMercatorQuad").tile((w + e) / 2, (s + n) / 2, a["maxzoom"])
    for layer in ("mosaic", "probability"):
        r = client.get(f"/tiles/{layer}/{aoi}/{recs[1].month_key}/{tile.z}/{tile.x}/{tile.y}.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    with rasterio.MemoryFile(r.content) as mem, pytest.warns(rasterio.errors.NotGeoreferencedWarning), mem.open() as png:
        assert png.read(png.count).any()  # not a blank tile
    assert client.get(f"/tiles/mosaic/{aoi}/{recs[1].month_key}/{tile.z}/{tile.x + 5}/{tile.y}.png").status_code == 404
    assert client.get(f"/tiles/other/{aoi}/{recs[1].month_key}/{tile.z}/{tile.x}/{tile.y}.png").status_code == 404


# -- security: files only from the run and its data root ---------------------------------------------------


def _raw_get(base: str, path: str) -> int:
    """GET ``path`` exactly as written (no client-side normalization of ``..`` or ``%2e``)."""
    host, port = base.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def test_path_traversal_is_404(run, manifest, months, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    served = tmp_path / "run"
    shutil.copytree(run, served, symlinks=True)
    (served / "link_out.txt").symlink_to(secret)
    (served / "dir_out").symlink_to(tmp_path)
    aoi, recs = months
    label = recs[0].labels_match.relative_to(manifest["data_root"])
    app = create_app(ServeConfig(run_dir=str(served), overrides=OVERRIDES))
    with serve_in_thread(app) as base:
        assert _raw_get(base, "/files/run/metrics.json") == 200
        assert _raw_get(base, f"/files/data/{label}") == 200
        attempts = [
            "/files/run/../secret.txt",
            "/files/run/../../etc/passwd",
            "/files/run/%2e%2e/secret.txt",
            "/files/run/%2e%2e%2fsecret.txt",
            "/files/run/..%2f..%2fetc%2fpasswd",
            "/files/run/%2E%2E/%2E%2E/etc/passwd",
            "/files/run//etc/passwd",
            "/files/run/%2fetc%2fpasswd",
            f"/files/run/{secret}",
            "/files/run/link_out.txt",
            "/files/run/dir_out/secret.txt",
            "/files/run/vectors/../../secret.txt",
            "/files/run/..\\secret.txt",
            "/files/run/%00",
            "/files/data/../../../etc/passwd",
            "/files/data/%2e%2e/%2e%2e/etc/passwd",
            "/files/data//etc/passwd",
            "/static/../app.py",
            "/static/%2e%2e/app.py",
            "/static/%2e%2e%2fapp.py",
            "/vendor/leaflet/%2e%2e/%2e%2e/%2e%2e/package.json",
            "/vendor/leaflet/../../package.json",
            f"/api/aois/%2e%2e/{recs[0].month_key}/footprints.geojson",
            f"/api/aois/{aoi}/%2e%2e%2f%2e%2e/footprints.geojson",
            f"/tiles/mosaic/%2e%2e/{recs[0].month_key}/1/0/0.png",
            "/files/run/train",
            "/files/run/",
        ]
        answers = {p: _raw_get(base, p) for p in attempts}
        assert all(code == 404 for code in answers.values()), answers
        assert _raw_get(base, "/api/health") == 200


# -- the inference API -------------------------------------------------------------------------------------


def _post(client, route: str, files: list[tuple[str, bytes]], months: list[str] | None = None):
    field = "image" if route == "/api/predict" else "images"
    return client.post(
        route,
        files=[(field, (name, data, "image/tiff")) for name, data in files],
        data={"months": months} if months is not None else None,
    )


def _reference(run: Path, files: list[Path], tmp: Path) -> gpd.GeoDataFrame:
    """The same files through ``spacenet7 predict images=...`` and ``vectorize`` with the run's settings."""
    flat = tmp / "flat"
    flat.mkdir(parents=True)
    paths = [shutil.copy(f, flat / f"ref_{month}.tif") for f, month in files]  # no images_masked/UDM beside them
    pcfg, vcfg = run_settings(run, OVERRIDES)
    predict.run(replace(pcfg, images=[str(p) for p in paths], aoi="ref", out_dir=str(tmp / "pred"), progress=False))
    vectorize.run(replace(vcfg, pred_dir=str(tmp / "pred"), out_dir=str(tmp / "vec"), aois=None))
    gdf, _ = load_vectors(tmp / "vec" / "ref.parquet")
    return gdf.to_crs("EPSG:4326")


def test_settings_are_the_pipelines(app, manifest):
    d = app.state.inference.describe()
    tree = manifest["config"]  # the pipeline's resolved config
    assert tree["predict"]["grid"] == "upscaled" and d["grid"] == "upscaled"
    assert tree["vectorize"]["threshold"] == 0.3 and d["threshold"] == 0.3
    assert d["tta"] is None  # OVERRIDES on top of the run's tta=true
    assert Path(d["checkpoint"]).name == "best.ckpt" and d["upscale"] == 2.0


def test_uploads_are_predicted_whole_even_for_a_band_scoring_run(tmp_path):
    """A run that predicted only its held-out band (recipe=real: predict.band_frac) serves uploads whole."""
    (tmp_path / "pipeline.json").write_text(json.dumps({"config": {"predict": {"band_frac": 0.25, "tile": 128}}}))
    pcfg, _ = run_settings(tmp_path)
    assert pcfg.band_frac is None and pcfg.tile == 128


def test_predict_and_track_match_the_pipeline(client, run, months, uploads, tmp_path):
    _, recs = months
    r = _post(client, "/api/predict", [("month.tif", recs[1].image.read_bytes())])
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    one = gpd.read_file(r.content)
    ref = _reference(run, [(recs[1].image, "2018-01")], tmp_path / "one")
    assert one.crs.to_epsg() == 4326 and len(one) == len(ref) > 0
    assert np.allclose(sorted(one["area_m2"]), sorted(np.round(area_m2(ref.to_crs("EPSG:3857")), 1)), atol=0.1)
    rgb = _post(client, "/api/predict", [("rgb.tif", _geotiff(tmp_path / "rgb.tif", 3))])  # 3-band RGB, no alpha band
    assert rgb.status_code == 200 and gpd.read_file(rgb.content).crs.to_epsg() == 4326, rgb.text

    keys = [rec.month_key for rec in recs]
    r = _post(client, "/api/track", [(f"m{i}.tif", rec.image.read_bytes()) for i, rec in enumerate(recs)], keys)
    assert r.status_code == 200, r.text
    doc = json.loads(r.content)
    assert doc["type"] == "FeatureCollection"
    series = gpd.read_file(r.content)
    ref = _reference(run, [(rec.image, k) for rec, k in zip(recs, keys)], tmp_path / "series")
    assert len(series) == len(ref) and set(series["month"]) <= set(keys)
    assert sorted(zip(series["id"], series["month"], series["first_seen"], series["last_seen"])) == sorted(
        zip(ref["id"], ref["month"], ref["first_seen"], ref["last_seen"])
    )
    assert not list(uploads.iterdir()), "a request left files behind"


def _geotiff(
    path: Path,
    count: int = 4,
    dtype: str = "uint8",
    crs: str | None = "EPSG:3857",
    size: int = 64,
    compress: str | None = "deflate",
    driver: str = "GTiff",
) -> bytes:
    import warnings

    arr = np.random.default_rng(0).integers(1, 250, (count, size, size)).astype(dtype)
    prof = {
        "driver": driver,
        "width": size,
        "height": size,
        "count": count,
        "dtype": dtype,
        "transform": rasterio.Affine(4.78, 0, 1e6, 0, -4.78, 2e6),
    }
    if crs:
        prof["crs"] = crs
    if compress:
        prof["compress"] = compress
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path, "w", **prof) as ds:
            ds.write(arr)
    return path.read_bytes()


def test_bad_requests_are_4xx_with_one_message_and_leave_nothing(client, months, uploads, tmp_path):
    _, recs = months
    good = recs[0].image.read_bytes()
    cases = [  # (route, files, months, status, words in the message)
        ("/api/predict", [("empty.tif", b"")], None, 400, "empty.tif: empty file"),
        ("/api/predict", [("notes.txt", b"hello, not a raster")], None, 415, "notes.txt: not a GeoTIFF"),
        (
            "/api/predict",
            [("tile.png", _geotiff(tmp_path / "a.png", 3, driver="PNG", crs=None, compress=None))],
            None,
            415,
            "tile.png: not a GeoTIFF (a PNG raster)",
        ),
        ("/api/predict", [("nocrs.tif", _geotiff(tmp_path / "b.tif", crs=None))], None, 400, "nocrs.tif: GeoTIFF has no CRS"),
        ("/api/predict", [("two.tif", _geotiff(tmp_path / "c.tif", 2))], None, 400, "two.tif: has 2 band(s) but input.count=4"),
        ("/api/predict", [("u16.tif", _geotiff(tmp_path / "d.tif", dtype="uint16"))], None, 400, "u16.tif: is uint16"),
        (
            "/api/predict",
            [("big.tif", _geotiff(tmp_path / "e.tif", size=400, compress=None))],
            None,
            413,
            "over the limit of 0.5 MB",
        ),
        (
            "/api/predict",
            [("wide.tif", _geotiff(tmp_path / "f.tif", size=256, compress="deflate"))],
            None,
            413,
            "wide.tif: 256x256 px is 262144 px on the model's grid",
        ),
        ("/api/predict", [("cut.tif", good[: len(good) // 2])], None, 422, "cut.tif: truncated or corrupt raster"),
        ("/api/predict", [], None, 400, "image: Field required"),
        ("/api/track", [("a.tif", good), ("b.tif", good)], ["2018-01"], 400, "2 image(s) but 1 month(s)"),
        ("/api/track", [("a.tif", good)], ["2018-13"], 400, "month '2018-13' is not YYYY-MM"),
        ("/api/track", [("a.tif", good), ("b.tif", good)], ["2018-01", "2018-01"], 400, "month 2018-01 is given twice"),
        ("/api/track", [(f"{i}.tif", good) for i in range(6)], [f"2018-0{i + 1}" for i in range(6)], 413, "over the limit of 5"),
        ("/api/track", [("a.tif", good), ("notes.txt", b"x")], ["2018-01", "2018-02"], 415, "notes.txt: not a GeoTIFF"),
    ]
    answers = []
    for route, files, mon, status, words in cases:
        r = _post(client, route, files, mon)
        detail = r.json()["detail"]
        answers.append((route, [f for f, _ in files], r.status_code, detail))
        assert r.status_code == status and isinstance(detail, str) and words in detail and "\n" not in detail, (
            words,
            r.status_code,
            detail,
        )
        assert "/tmp" not in detail and "spacenet7-serve" not in detail  # the client's names, never the server's paths
        assert not list(uploads.iterdir()), f"{words}: a request left files behind"
    print("\n".join(f"{route} {names}: {code} {detail}" for route, names, code, detail in answers))
    assert client.get("/api/health").json()["status"] == "ok"


def test_chunked_upload_without_length_is_refused(app, months):
    _, recs = months
    with serve_in_thread(app) as base:
        host, port = base.split("//")[1].rstrip("/").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request(
            "POST",
            "/api/predict",
            body=iter([recs[0].image.read_bytes()]),
            headers={"Content-Type": "multipart/form-data; boundary=x", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        r = conn.getresponse()
        assert r.status == 411 and "Content-Length" in json.loads(r.read())["detail"]


def test_load_burst_answers_200_or_503_and_the_server_survives(app, months):
    """200 tile requests (16 at a time) and 10 simultaneous predictions, to 127.0.0.1 only."""
    import httpx

    from spacenet7.serve.testing import load_burst, percentiles

    aoi, recs = months
    data = recs[0].image.read_bytes()
    with serve_in_thread(app) as base:
        assert base.startswith("http://127.0.0.1:")
        burst = load_burst(base, aoi, [r.month_key for r in recs], data)
        tiles, preds = burst["tiles"], burst["predictions"]
        assert len(tiles) == 200 and {c for c, _ in tiles} <= {200, 503} and sum(c == 200 for c, _ in tiles) >= 100
        # workers=1, queue=1: of 10 simultaneous predictions at least one runs and the rest may be refused
        assert len(preds) == 10 and {c for c, _ in preds} <= {200, 503}
        assert 1 <= sum(c == 200 for c, _ in preds) and any(c == 503 for c, _ in preds)
        assert httpx.get(base + "api/health", timeout=10).json()["status"] == "ok"
        r = httpx.post(base + "api/predict", files={"image": ("m.tif", data, "image/tiff")}, timeout=120)
        assert r.status_code == 200 and r.json()["type"] == "FeatureCollection"
    print(f"\ntiles: {percentiles(tiles)}\npredictions: {percentiles(preds)}")


# -- the command ------------------------------------------------------------------------------------------


def test_cli_serves_on_127_0_0_1_and_prints_the_url(run, tmp_path):
    env = {**os.environ, "SPACENET7_LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spacenet7", "serve", f"run_dir={run}", "port=0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "spacenet7 serve: http" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "spacenet7 serve: http://127.0.0.1:" in line, line
        url = line.split()[2]
        import httpx

        assert httpx.get(url + "api/health", timeout=10).json() == {"status": "ok", "predictions_admitted": 0, "model": True}
    finally:
        proc.terminate()
        proc.wait(30)


def test_cli_bad_run_dir_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "spacenet7", "serve", f"run_dir={tmp_path / 'nope'}"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 1
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert err == [
        f"spacenet7 serve: error: {tmp_path / 'nope'}: run folder not found (run `spacenet7 pipeline run_dir=...` first)"
    ]


def test_serve_config_is_checked_when_composed():
    from spacenet7.errors import SN7Error

    assert compose("serve", []).host == "127.0.0.1"
    with pytest.raises(SN7Error, match="overrides has unknown stage"):
        compose_checked("serve", ["+overrides.train.max_epochs=1"])
    with pytest.raises(SN7Error, match="port=70000"):
        compose_checked("serve", ["port=70000"])
