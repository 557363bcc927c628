"""Bad input and faults, second sweep (issue 32, classes D-H): garbage in, memory, tune and DDP
bookkeeping, serve exposure, and the one line that must not drown or mislead.

Each case runs the real CLI entry point (``cli(capsys, ...)`` of ``tests/test_bad_input.py``) or the
function the CLI calls, and would fail on the code before the fix.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
import test_bad_input as base
from shapely.geometry import box

from spacenet7.data.sn7 import scan
from spacenet7.errors import SN7Error

cli, partials, write_tif = base.cli, base.partials, base.write_tif  # the first sweep's helpers
_log_dir, one_aoi = base._log_dir, base.one_aoi  # and its fixtures: Hydra's logs in tmp (autouse), one AOI's copy

EXE = [sys.executable, "-m", "spacenet7"]
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# H. The one line is drowned or misleading


def test_non_ascii_path_says_to_quote_the_value(tmp_path, capsys):
    out = tmp_path / "données"
    code, err = cli(capsys, "synth", f"out_dir={out}", "n_aois=1", "n_months=1", "size=64")
    assert code == 1 and len(err) == 1, err
    assert "LexerNoViableAltException" not in err[0]
    assert err[0].startswith("spacenet7 synth: error: ") and f"quote it: out_dir='{out}'" in err[0], err[0]
    code, err = cli(capsys, "synth", f"out_dir='{out}'", "n_aois=1", "n_months=1", "size=64")  # and quoted, it works
    assert code == 0 and (out / "train").is_dir(), err


def test_port_in_use_names_the_port(tmp_path, capsys):
    from spacenet7.serve.server import bind

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(SN7Error, match=rf"cannot listen on 127\.0\.0\.1:{port}: Address already in use; .*port=0"):
            bind("127.0.0.1", port)
    finally:
        taken.close()


def test_sigterm_stops_a_stage_at_once_with_one_line(capsys, monkeypatch):
    """Lightning's own SIGTERM handler only sets a flag read at the next batch; the CLI's stops the stage now."""
    from spacenet7 import cli as cli_module

    def busy(stage, cfg):  # a stage deep in C code or a long loop when the signal comes
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    monkeypatch.setattr(cli_module, "run_stage", busy)
    before = signal.getsignal(signal.SIGTERM)
    t0 = time.monotonic()
    code, err = cli(capsys, "synth", "n_aois=1")
    assert time.monotonic() - t0 < 5
    assert code == 143 and err == ["spacenet7 synth: stopped by SIGTERM"], err
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


@pytest.mark.slow
def test_sigterm_stops_training_within_5_s(tmp_path, synth_root):
    """A real training run (Lightning's handler installed) stops within 5 s of a SIGTERM."""
    from spacenet7 import chip
    from spacenet7.config import ChipConfig

    chips = tmp_path / "chips"
    chip.run(ChipConfig(data_root=str(synth_root), out_dir=str(chips), chip_size=128, overlap=0, progress=False))
    env = {**os.environ, "SPACENET7_LOG_DIR": str(tmp_path / "logs")}
    argv = [f"chip_dir={chips}", f"run_dir={tmp_path / 'run'}", "experiment=demo_cpu", "max_epochs=1000", "logger.wandb=false"]
    proc = subprocess.Popen([*EXE, "train", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "run").rglob("metrics.csv")) and time.monotonic() < deadline:  # an epoch has run
        time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 5, err[-2000:]
    assert proc.returncode == 143 and "spacenet7 train: stopped by SIGTERM" in err


def test_not_georeferenced_warnings_are_not_printed(tmp_path, capsys, monkeypatch):
    """A file without georeferencing is an error where a CRS matters, never a warning line beside it."""
    import warnings

    from spacenet7 import cli as cli_module

    def read_plain_file(stage, cfg):
        path = tmp_path / "plain.tif"
        with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as ds:
            ds.write(np.zeros((1, 4, 4), np.uint8))
        with rasterio.open(path):
            pass

    monkeypatch.setattr(cli_module, "run_stage", read_plain_file)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # as outside pytest: only the CLI's own filter may hide it
        code, err = cli(capsys, "synth", "n_aois=1")
    assert code == 0, err
    assert not [w for w in seen if w.category is rasterio.errors.NotGeoreferencedWarning], [str(w.message) for w in seen]


# ---------------------------------------------------------------------------------------------
# F. Tune and DDP bookkeeping


def test_a_stage_sees_a_runnable_argv0_for_lightnings_relaunch(capsys, monkeypatch):
    """Lightning's DDP launcher re-runs ``[python, abspath(sys.argv[0]), *sys.argv[1:]]`` for a console script."""
    from spacenet7 import cli as cli_module

    script = Path(sys.executable).parent / "spacenet7"
    seen: list[list[str]] = []
    monkeypatch.setattr(cli_module, "run_stage", lambda stage, cfg: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", [str(script), "synth", "n_aois=1"])
    code, err = cli(capsys, "synth", "n_aois=1")
    assert code == 0, err
    assert seen[0][0] == str(script) and Path(seen[0][0]).is_file(), seen  # not "spacenet7-synth"
    assert "n_aois=1" in seen[0][1:] and "synth" not in seen[0][1:]  # the stage comes from SPACENET7_STAGE


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_cpu_through_the_console_script(synth_root, tmp_path):
    """The README's command, ``spacenet7 train trainer=ddp_cpu``, as the installed console script runs it."""
    from spacenet7 import chip
    from spacenet7.config import ChipConfig

    script = Path(sys.executable).parent / "spacenet7"
    if not script.is_file():
        pytest.skip(f"no console script at {script} (pip install -e . writes it)")
    chips = tmp_path / "chips"
    aoi = sorted(scan(synth_root))[:1]
    chip.run(
        ChipConfig(
            data_root=str(synth_root),
            out_dir=str(chips),
            aois=aoi,
            chip_size=128,
            overlap=0,
            split="spatial",
            val_frac=0.5,
            progress=False,
        )
    )
    env = {**os.environ, "SPACENET7_LOG_DIR": str(tmp_path / "logs")}
    env.pop("LOCAL_RANK", None)
    argv = [
        "train",
        "experiment=demo_cpu",
        "trainer=ddp_cpu",
        f"chip_dir={chips}",
        f"run_dir={tmp_path / 'run'}",
        "logger.wandb=false",
        "trainer.enable_progress_bar=false",
        "batch_size=2",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "max_epochs=1",
    ]
    r = subprocess.run([str(script), *argv], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "train_ddp_process_1.log").exists(), "the second process did not run"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 1


@pytest.mark.dask
def test_readme_dask_commands_exist():
    """The README's scheduler and worker commands are those the installed distributed has (``dask scheduler``)."""
    text = (REPO / "README.md").read_text()
    assert "dask-scheduler" not in text and "dask-worker" not in text
    dask = Path(sys.executable).parent / "dask"
    for sub in ("scheduler", "worker"):
        assert f"\ndask {sub} " in text
        r = subprocess.run([str(dask), sub, "--help"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-1000:]


def _tune_cfg(run_dir: Path, *extra: str):
    from spacenet7.compose import compose

    run_dir.mkdir(parents=True, exist_ok=True)
    return compose("tune", ["tune=lr", f"run_dir={run_dir}", "train.chip_dir=unused", "startup_trials=10", *extra])


def _first_draw(study) -> float:
    import optuna

    return study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)}).params["lr"]


def test_tune_runs_with_consecutive_seeds_draw_different_parameters(tmp_path):
    """A resumed study (seed 0, one trial done) and a fresh one (seed 1) used to share the sampler seed 1."""
    from spacenet7 import tune

    a = tune.load_study(_tune_cfg(tmp_path / "a", "seed=0"))
    _first_draw(a)  # one trial in study a
    resumed = tune.load_study(_tune_cfg(tmp_path / "a", "seed=0"))
    fresh = tune.load_study(_tune_cfg(tmp_path / "b", "seed=1"))
    assert _first_draw(resumed) != _first_draw(fresh)
    again = tune.load_study(_tune_cfg(tmp_path / "c", "seed=1"))
    assert _first_draw(again) == _first_draw(tune.load_study(_tune_cfg(tmp_path / "d", "seed=1")))  # still reproducible


def test_a_killed_trial_does_not_stay_running(tmp_path, monkeypatch, caplog):
    """A trial whose process died (no heartbeat for the grace period) is marked failed when the study is opened."""
    from spacenet7 import tune

    monkeypatch.setattr(tune, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tune, "GRACE_S", 1)
    study = tune.load_study(_tune_cfg(tmp_path / "t"))
    trial = study.ask()
    study._storage.record_heartbeat(trial._trial_id)  # as optimize() does while the trial runs; then kill -9
    time.sleep(2.2)
    with caplog.at_level("WARNING"):
        study = tune.load_study(_tune_cfg(tmp_path / "t"))
    assert [t.state.name for t in study.trials] == ["FAIL"]
    assert any("1 trial(s) of a stopped process marked failed" in r.getMessage() for r in caplog.records)


def test_a_resumed_study_says_it_adds_trials(tmp_path, capsys):
    from spacenet7 import tune

    study = tune.load_study(_tune_cfg(tmp_path / "t"))
    trial = study.ask()
    trial.set_user_attr("overrides", [])
    study.tell(trial, 0.5)
    capsys.readouterr()
    tune.run(_tune_cfg(tmp_path / "t", "n_trials=0", "plots=false"))
    out = capsys.readouterr().out
    assert "resuming study 'spacenet7' with 1 trial(s) (1 complete); adding n_trials=0 more" in out, out


# ---------------------------------------------------------------------------------------------
# G. Serve exposure and robustness


@pytest.fixture
def mini_run(synth_root, tmp_path) -> Path:
    """A run folder with one AOI's vectors (a building per month) over the synthetic data, no checkpoint."""
    aoi = sorted(scan(synth_root))[0]
    recs = scan(synth_root)[aoi][:2]
    run = tmp_path / "run"
    (run / "vectors").mkdir(parents=True)
    with rasterio.open(recs[0].image) as ds:
        crs, (x0, y0) = ds.crs, ds.transform * (10, 10)
    foot = box(x0, y0 - 20, x0 + 20, y0)
    months = [r.month_key for r in recs]
    gpd.GeoDataFrame(
        {
            "id": [1, 1],
            "stem": [r.stem for r in recs],
            "month": months,
            "first_seen": [months[0]] * 2,
            "last_seen": [months[-1]] * 2,
            "n_months": [2, 2],
            "filled": [False, False],
            "pix_wkt": ["POLYGON ((10 10, 14 10, 14 14, 10 14, 10 10))"] * 2,
        },
        geometry=[foot, foot],
        crs=crs,
    ).to_parquet(run / "vectors" / f"{aoi}.parquet")
    meta = {
        "aoi": aoi,
        "crs": str(crs),
        "transform": [1, 0, 0, 0, -1, 0],
        "months": [{"stem": r.stem, "month": r.month_key} for r in recs],
    }
    (run / "vectors" / f"{aoi}.json").write_text(json.dumps(meta))
    (run / "pipeline.json").write_text(json.dumps({"data_root": str(synth_root)}))
    return run


def _client(run: Path, header: str = "localhost", **cfg):
    from fastapi.testclient import TestClient

    from spacenet7.config import ServeConfig
    from spacenet7.serve.app import create_app

    return TestClient(create_app(ServeConfig(run_dir=str(run), **cfg)), base_url=f"http://{header}")


def test_tiles_at_an_invalid_zoom_are_4xx_not_500(mini_run):
    pytest.importorskip("fastapi")
    client = _client(mini_run)
    aoi = next(iter(client.app.state.catalog.aois))
    month = client.app.state.catalog.aois[aoi].months[0].month
    for z, x, y, code in [(-3, 0, 0, 400), (10**30, 0, 0, 400), (99, 0, 0, 400), (2, 4, 0, 404), (2, 0, -1, 400), (0, 0, 0, 200)]:
        r = client.get(f"/tiles/mosaic/{aoi}/{month}/{z}/{x}/{y}.png")
        assert r.status_code == code, (z, x, y, r.status_code, r.text)
        assert code == 200 or r.json()["detail"]


def test_a_foreign_host_header_is_refused(mini_run):
    """DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1 must not read the run."""
    pytest.importorskip("fastapi")
    assert _client(mini_run, "evil.example").get("/api/run").status_code == 400
    assert "not one of allowed_hosts" in _client(mini_run, "evil.example:8000").get("/files/run/pipeline.json").json()["detail"]
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
        assert _client(mini_run, host).get("/api/run").status_code == 200, host
    assert _client(mini_run, "maps.example.org", allowed_hosts=["*.example.org"]).get("/api/run").status_code == 200
    assert _client(mini_run, "10.1.2.3:8000", host="10.1.2.3").get("/api/run").status_code == 200  # the bound address


def test_no_answer_shows_server_paths_and_4xx_codes_are_documented(mini_run):
    pytest.importorskip("fastapi")
    client = _client(mini_run)
    spec = client.get("/openapi.json")
    run = client.get("/api/run")
    assert spec.status_code == 200 and run.status_code == 200
    for body in (spec.text, run.text):
        assert str(mini_run.parent) not in body and "/tmp" not in body, body[:500]
    assert run.json()["run_dir"] == "run"
    paths = spec.json()["paths"]
    assert {"400", "413", "415", "422", "503"} <= set(paths["/api/predict"]["post"]["responses"])
    assert {"400", "404"} <= set(paths["/tiles/{layer}/{aoi}/{month}/{z}/{x}/{y}.png"]["get"]["responses"])
    assert "404" in paths["/files/run/{path}"]["get"]["responses"]


def test_a_truncated_vectors_file_stops_serve_at_start_up(mini_run, capsys):
    pytest.importorskip("fastapi")
    p = next((mini_run / "vectors").glob("*.parquet"))
    p.write_bytes(p.read_bytes()[:200])
    code, err = cli(capsys, "serve", f"run_dir={mini_run}", "port=0")
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"spacenet7 serve: error: {p}: unreadable GeoParquet"), err[0]


def test_serve_on_a_taken_port_is_one_line_naming_it(mini_run, capsys):
    pytest.importorskip("fastapi")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        code, err = cli(capsys, "serve", f"run_dir={mini_run}", f"port={port}")
    finally:
        taken.close()
    assert code == 1 and err[-1] == (
        f"spacenet7 serve: error: cannot listen on 127.0.0.1:{port}: Address already in use; "
        "another server uses it: choose another with port=N (port=0: any free port)"
    ), err


# ---------------------------------------------------------------------------------------------
# D. Bad data turned into garbage with exit 0


def test_nan_pixels_are_nodata_under_percentile_scaling(tmp_path):
    """A few NaN pixels in float imagery used to make the percentiles NaN, and the whole image black."""
    from spacenet7.data.bands import InputSpec
    from spacenet7.data.sn7 import read_image, records_from_files

    a = np.broadcast_to(np.linspace(100, 1100, 64, dtype=np.float32), (4, 64, 64)).copy()
    a[:, 5, 7] = np.nan
    a[0, 40, 40] = np.nan  # one band only
    path = write_tif(tmp_path / "area_2019-03.tif", a)
    rec = records_from_files([path], "area")["area"][0]
    img = read_image(rec, spec=InputSpec(count=4, rgb=[1, 2, 3], alpha=None, scaling="percentile"))
    assert 100 < img.rgb.mean() < 155  # a 2-98 % stretch of a ramp, not black
    assert not img.valid[5, 7] and not img.valid[40, 40] and img.valid.sum() == 64 * 64 - 2


def test_an_onnx_model_with_one_output_channel_is_refused(one_aoi, tmp_path, capsys):
    """Its one channel used to be broadcast into footprint, boundary and contact."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import torch

    from spacenet7.data.bands import InputSpec
    from spacenet7.data.targets import CHANNELS
    from spacenet7.models.runtime import ModelMeta, export_onnx

    meta = ModelMeta(upscale=1.0, input=InputSpec().to_dict(), classes=list(CHANNELS), stride=1)
    model = export_onnx(torch.nn.Conv2d(3, 1, 1), meta, tmp_path / "one.onnx", tile=32)
    root, aoi = one_aoi
    argv = ["predict", "engine=onnxruntime", f"model_file={model}", f"data_root={root}", f"out_dir={tmp_path / 'p'}"]
    code, err = cli(capsys, *argv, "tta=false", "progress=false")
    assert code == 1 and len(err) == 1, err
    assert err[0] == (
        f"spacenet7 predict: error: {model}: the model outputs 1 channel(s) but its metadata lists 3 classes "
        f"{list(CHANNELS)}; export it with `spacenet7 compile checkpoint=...`"
    )
    assert not (tmp_path / "p").exists()


def test_predict_batch_refuses_an_output_of_another_shape():
    """The same check for any runtime, on the first batch (a model file that declares no channel count)."""
    import torch

    from spacenet7.data.bands import InputSpec
    from spacenet7.models.inference import LoadedModel, predict_batch

    model = LoadedModel(None, 1.0, InputSpec(), torch.device("cpu"), runtime=lambda b: b[:, :1].expand(-1, 3, -1, -1)[:, :2])
    with pytest.raises(SN7Error, match=r"with \(2, 2, 8, 8\), not \(2, 3, 8, 8\)"):
        predict_batch(model, torch.zeros(2, 3, 8, 8), None)


def test_a_month_of_another_place_is_named_by_predict(one_aoi, tmp_path, capsys):
    """A month 50 km away used to be predicted as all nodata, and vectorize blamed "an all-cloud month?"."""
    root, aoi = one_aoi
    recs = scan(root)[aoi][:3]
    files = [Path(shutil_copy(r.image, tmp_path / f"area_2019-0{k + 1}.tif")) for k, r in enumerate(recs)]
    with rasterio.open(files[2], "r+") as ds:
        t = ds.transform
        ds.transform = rasterio.Affine(t.a, t.b, t.c + 50_000, t.d, t.e, t.f)
    argv = ["predict", f"checkpoint={tmp_path / 'any.ckpt'}", f"images=[{','.join(map(str, files))}]", "aoi=area"]
    code, err = cli(capsys, *argv, f"out_dir={tmp_path / 'p'}")
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"spacenet7 predict: error: {files[2]}: does not overlap area_2019-01.tif"), err[0]
    assert "km apart" in err[0] and not (tmp_path / "p").exists()


def shutil_copy(src: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copy(src, dst))


def test_non_polygon_labels_are_dropped_and_counted(one_aoi, caplog):
    """Points and lines used to be burned into the footprint targets as pixels and strokes."""
    from shapely.geometry import GeometryCollection, LineString, Point

    from spacenet7.data.sn7 import read_labels

    root, aoi = one_aoi
    rec = scan(root)[aoi][0]
    gdf = gpd.read_file(rec.labels_match)
    n = len(gdf)
    x0, y0 = gdf.geometry.iloc[0].bounds[:2]
    extra = [
        Point(x0, y0),
        LineString([(x0, y0), (x0 + 30, y0)]),
        GeometryCollection([box(x0, y0, x0 + 9, y0 + 9), Point(x0, y0)]),
    ]
    more = gpd.GeoDataFrame({"Id": [9001, 9002, 9003]}, geometry=extra, crs=gdf.crs)
    pd.concat([gdf, more], ignore_index=True).to_file(rec.labels_match, driver="GeoJSON")
    with caplog.at_level("WARNING"):
        out = read_labels(rec)
    assert len(out) == n + 1 and set(shapely.get_type_id(out.geometry.values)) <= {3, 6}
    assert 9003 in set(out["Id"]) and not {9001, 9002} & set(out["Id"])  # the collection keeps its polygon
    lines = [r.getMessage() for r in caplog.records if "not polygons" in r.getMessage()]
    assert lines == [
        f"{rec.labels_match}: ignored 2 of {n + 3} label(s) that are not polygons (1 Point, 1 LineString): footprints are areas"
    ]


def test_labels_all_outside_their_image_stop_chip(one_aoi, tmp_path, capsys):
    root, aoi = one_aoi
    rec = scan(root)[aoi][1]
    gdf = gpd.read_file(rec.labels_match)
    assert len(gdf)
    gdf.set_geometry(gdf.geometry.translate(1e6, 0)).to_file(rec.labels_match, driver="GeoJSON")
    code, err = cli(capsys, "chip", f"data_root={root}", f"out_dir={tmp_path / 'chips'}", "progress=false")
    assert code == 1 and len(err) == 1, err
    assert err[0] == (
        f"spacenet7 chip: error: {rec.labels_match}: all {len(gdf)} footprint(s) lie outside the image {rec.image.name} "
        "(labels of another area, or coordinates in another CRS than the file declares?)"
    )
    assert not (tmp_path / "chips" / "chips.json").exists() and not partials(tmp_path)


# ---------------------------------------------------------------------------------------------
# E. Memory bounded by input coordinates; H. regions and ids that mislead


def _truth_csv(root: Path, path: Path) -> Path:
    """The data set's own truth as a submission (every building found)."""
    from spacenet7.evaluate import ground_truth_table

    t = ground_truth_table(root)
    pd.DataFrame({"filename": t["filename"], "id": t["id"], "geometry": shapely.to_wkt(t["geometry"].to_numpy())}).to_csv(
        path, index=False
    )
    return path


def test_a_huge_region_is_cut_to_the_image_not_allocated(one_aoi, tmp_path, capsys):
    """``region=[0,99999,0,99999]`` grew to 20 GB; it is scored on the AOI's image."""
    import tracemalloc

    root, _ = one_aoi
    sub = _truth_csv(root, tmp_path / "sub.csv")
    tracemalloc.start()
    try:
        code, err = cli(
            capsys, "evaluate", f"data_root={root}", f"proposal={sub}", "region=[0,99999,0,99999]", f"out={tmp_path / 'm.json'}"
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0, err
    assert peak < 300 * 2**20, f"{peak / 2**20:.0f} MB"
    assert json.loads((tmp_path / "m.json").read_text())["f1"] == 1.0


def test_a_far_away_proposal_does_not_raise_memory():
    """One 4x4 proposal far from the rest made pixel IoU rasterize the whole span between them."""
    import tracemalloc

    from spacenet7.metrics.pixel import pixel_counts

    def table(geoms):
        return pd.DataFrame({"aoi": "a", "month": "2020-01", "id": range(len(geoms)), "geometry": np.array(geoms, dtype=object)})

    truth = table([box(10, 10, 20, 20), box(40, 40, 50, 52)])
    far = table([box(10, 10, 20, 20), box(1e8, 1e8, 1e8 + 4, 1e8 + 4)])
    tracemalloc.start()
    try:
        inter, union = pixel_counts(truth, far)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (inter, union) == (100, 100 + 120 + 16)
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MB"


def test_a_region_outside_the_image_is_one_line(one_aoi, tmp_path, capsys):
    root, aoi = one_aoi
    sub = _truth_csv(root, tmp_path / "sub.csv")
    out = f"out={tmp_path / 'm.json'}"
    code, err = cli(capsys, "evaluate", f"data_root={root}", f"proposal={sub}", "region=[5000,6000,0,100]", out)
    assert code == 1 and err == [
        f"spacenet7 evaluate: error: region=[5000.0, 6000.0, 0.0, 100.0] lies outside the 256x256 image of {aoi} "
        "(rows 0-256, cols 0-256)"
    ], err
    code, err = cli(capsys, "evaluate", f"truth={sub}", f"proposal={sub}", "region=[5000,6000,0,100]", out)  # no image at hand
    assert code == 1 and len(err) == 1 and f"{sub}: region=[5000.0, 6000.0, 0.0, 100.0] holds none of the truth's" in err[0], err
    assert not (tmp_path / "m.json").exists()


def test_a_bad_label_id_names_the_label_file_and_a_huge_id_is_not_wrapped(one_aoi, tmp_path, capsys):
    """The truth's problems used to read "<data_root>: row 34: ..."; 1e30 became -9223372036854775808."""
    root, _ = one_aoi
    sub = _truth_csv(root, tmp_path / "sub.csv")
    aoi = sorted(scan(root))[0]
    rec = scan(root)[aoi][2]
    label = rec.labels_match_pix or rec.labels_match
    doc = json.loads(label.read_text())
    doc["features"][3]["properties"]["Id"] = 1e30
    label.write_text(json.dumps(doc))
    code, err = cli(capsys, "evaluate", f"data_root={root}", f"proposal={sub}", f"out={tmp_path / 'm.json'}")
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"spacenet7 evaluate: error: {label}: features[3]: id "), err[0]
    assert err[0].endswith("is outside the 64-bit integer range"), err[0]
    csv = tmp_path / "p.csv"
    csv.write_text(
        'filename,id,geometry\nglobal_monthly_2018_01_mosaic_L15-0001E-0001N_1_1_13,1e30,"POLYGON ((0 0, 4 0, 4 4, 0 4, 0 0))"\n'
    )
    code, err = cli(capsys, "evaluate", f"truth={csv}", f"proposal={csv}", f"out={tmp_path / 'm.json'}")
    assert code == 1 and err == [f"spacenet7 evaluate: error: {csv}: row 2: id '1e+30' is outside the 64-bit integer range"], err


def test_vectorize_refuses_a_raster_too_big_for_memory_before_reading_it(tmp_path, capsys):
    """A 120000^2 probability raster asked for 40 GiB; now it is one line before any allocation."""
    from spacenet7.io import probability

    aoi_dir = tmp_path / "pred" / "L15-0001E-0001N_1_1_13"
    aoi_dir.mkdir(parents=True)
    path = aoi_dir / "global_monthly_2018_01_mosaic_L15-0001E-0001N_1_1_13.tif"
    prof = probability.profile("EPSG:3857", rasterio.Affine(4.78, 0, 0, 0, -4.78, 0), 120_000, 120_000)
    with rasterio.open(path, "w", **prof, SPARSE_OK=True):  # nothing written: a small sparse file
        pass
    probability.mark_complete(aoi_dir, [path])
    assert path.stat().st_size < 8 * 2**20  # its tile index only
    code, err = cli(capsys, "vectorize", f"pred_dir={tmp_path / 'pred'}", f"out_dir={tmp_path / 'vec'}")
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"spacenet7 vectorize: error: {path}: 120000x120000 px: vectorizing its 1 month(s) needs about "), (
        err[0]
    )
    assert "GiB of memory available" in err[0] and not list((tmp_path / "vec").glob("*.parquet"))


def test_libtiff_lines_of_a_failed_write_do_not_drown_the_one_line(tmp_path, monkeypatch, capfd):
    """On a full disk libtiff printed "_tiffWriteProc: No space left on device." per strip, past every handler."""
    import shutil
    from collections import namedtuple

    import rasterio.shutil

    from spacenet7.errors import SN7DataError
    from spacenet7.io.raster import to_cog

    def full_disk_copy(src, dst, **kw):
        os.write(2, b"_tiffWriteProc: No space left on device.\n" * 3)  # as libtiff does, to the descriptor
        raise rasterio.errors.RasterioIOError("TIFFWriteDirectory: Error writing directory")

    src = write_tif(tmp_path / "src.tif", np.zeros((1, 8, 8), np.uint8), tiled=False)
    monkeypatch.setattr(rasterio.shutil, "copy", full_disk_copy)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: namedtuple("U", "total used free")(100, 100, 0))
    with pytest.raises(SN7DataError, match="could not be written: No space left on device"):
        to_cog(src, tmp_path / "out.tif")
    assert "_tiffWriteProc" not in capfd.readouterr().err

    def noisy_copy(src, dst, **kw):  # a write that succeeds keeps what it printed
        os.write(2, b"a GDAL note\n")
        Path(dst).write_bytes(Path(src).read_bytes())

    monkeypatch.setattr(rasterio.shutil, "copy", noisy_copy)
    to_cog(src, tmp_path / "out.tif")
    assert "a GDAL note" in capfd.readouterr().err and (tmp_path / "out.tif").exists()
