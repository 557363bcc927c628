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
from shapely.geometry import box
from test_bad_input import _log_dir, cli, one_aoi, partials, write_tif  # noqa: F401 - fixtures used by name

from spacenet7.data.sn7 import scan
from spacenet7.errors import SN7DataError, SN7Error

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
    from spacenet7.config import compose

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
