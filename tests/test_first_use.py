"""First use without friction (issue 33, 5): stage help, one clean log line per record and per epoch,
month labels for undated imagery, and what the map page is given (downloads, labels)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_fixtures import geotiff, random_checkpoint

from spacenet7.models.precision import cpu_has_fast_bf16
from spacenet7.stages import STAGES

EXE = [sys.executable, "-m", "spacenet7"]


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPACENET7_LOG_DIR": str(tmp_path / "logs"), "WANDB_MODE": "offline"}
    env.pop("WANDB_SILENT", None)  # the warning must not appear even when wandb is not silenced
    return subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=600, env=env)


def test_stage_help_lists_settings_with_descriptions(tmp_path):
    r = _run("predict", "--help", tmp_path=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    out = r.stdout
    assert out.startswith(f"spacenet7 predict: {STAGES['predict'].description}")
    lines = out.splitlines()
    tta = next(line for line in lines if line.strip().startswith("tta=true"))
    assert "average the probabilities over test-time views" in tta  # the field's comment, on its line
    assert any(line.strip().startswith("checkpoint=null") and "shipped" in line for line in lines)
    assert any(line.strip().startswith("cluster.workers=2") for line in lines)  # nested settings
    assert "dataset=synthetic   options: real_sample, sn7, synthetic" in out
    assert "== Config ==" not in out and "Powered by Hydra" not in out  # not Hydra's raw dump


def test_train_help_lists_only_its_own_groups(tmp_path):
    out = _run("train", "--help", tmp_path=tmp_path).stdout
    groups = out.split("config groups (group=option):")[1]
    assert "model=unet   options:" in groups and "experiment=null" in groups
    assert "dataset=" not in groups and "recipe" not in groups


def test_every_stage_has_help(tmp_path):
    from spacenet7.stage_help import stage_help

    for stage in STAGES:
        text = stage_help(stage)
        assert text.startswith(f"spacenet7 {stage}: ") and "settings (default):" in text


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> Path:
    from spacenet7 import chip, synth
    from spacenet7.config import ChipConfig, SynthConfig

    d = tmp_path_factory.mktemp("first_use")
    synth.run(SynthConfig(out_dir=str(d / "data"), n_aois=2, n_months=2, size=128, seed=1))
    chip.run(ChipConfig(data_root=str(d / "data"), out_dir=str(d / "chips"), chip_size=128, overlap=0, progress=False))
    return d / "chips"


def test_train_logs_a_line_per_epoch_and_no_doubles_adverts_or_wandb_warning(chips, tmp_path):
    r = _run(
        "train",
        f"chip_dir={chips}",
        f"run_dir={tmp_path / 'train'}",
        "experiment=demo_cpu",
        "max_epochs=2",
        "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
        tmp_path=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout + r.stderr
    epochs = [line for line in text.splitlines() if "train: epoch " in line]
    assert len(epochs) == 2 and "train: epoch 1/2  loss " in epochs[0] and "val IoU " in epochs[0]
    assert re.search(r"\(\d+m\d\ds, ~\d+m\d\ds left\)$", epochs[0].rstrip())  # elapsed, and the estimate of the rest
    assert re.search(r"\(\d+m\d\ds\)$", epochs[1].rstrip())  # the last epoch: elapsed only
    # precision auto on a CPU without native bf16 says why it trains in fp32
    if not cpu_has_fast_bf16() and not torch.cuda.is_available():
        assert "train: precision 32-true (auto: no GPU, and no native bf16 on this CPU" in text
    assert "Seed set to 0" in text and text.count("Seed set to 0") == 1  # Lightning's records once, in Hydra's format
    assert not [line for line in text.splitlines() if line.startswith("INFO: ")]
    assert "litlogger" not in text and "💡" not in text
    assert "anonymous setting" not in text


def test_undated_own_imagery_is_labelled_m01_and_said_so(tmp_path, caplog):
    from spacenet7 import predict
    from spacenet7.config import PredictConfig

    ckpt = random_checkpoint(tmp_path / "m.ckpt")
    files = [str(geotiff(tmp_path / f"shot{i}.tif", seed=i)) for i in range(2)]
    cfg = PredictConfig(checkpoint=str(ckpt), images=files, aoi="mine", out_dir=str(tmp_path / "p"), tta=False, progress=False)
    with caplog.at_level(logging.INFO, logger="spacenet7.predict"):
        predict.run(cfg)
    said = [r.getMessage() for r in caplog.records if "no date in the file names" in r.getMessage()]
    assert said and "labelled m01..m02" in said[0] and "area_YYYY-MM.tif" in said[0]


def test_serve_summary_gives_labels_and_download_links(tmp_path):
    from test_gis_export import _export

    from spacenet7.serve.catalog import Catalog

    run = tmp_path / "run"
    fp = _export(run, ["0001-01", "0001-02", "0001-03"])
    (run / "vectors").symlink_to(run / "vec")  # the run's layout: vectors/ beside footprints/
    (run / "footprints").symlink_to(fp)
    (run / "metrics.json").write_text("{}")
    (a,) = Catalog(run).summary()["aois"]
    assert [m["label"] for m in a["months"]] == ["m01", "m02", "m03"]
    assert all(m["geojson"] and (run / m["geojson"]).is_file() for m in a["months"])
    paths = [d["path"] for d in a["downloads"]]
    assert paths == [f"footprints/{a['aoi']}.gpkg", f"footprints/{a['aoi']}.qml", "metrics.json"]
    (run / "s.csv").rename(run / "submission.csv")
    assert "submission.csv" in [d["path"] for d in Catalog(run).summary()["aois"][0]["downloads"]]


def test_serve_without_a_run_model_uses_the_shipped_bundle(tmp_path, monkeypatch):
    pytest.importorskip("fastapi", reason="spacenet7 serve needs the serve extra")
    from fastapi.testclient import TestClient
    from test_gis_export import _export

    from spacenet7.config import ServeConfig
    from spacenet7.models import bundle
    from spacenet7.serve.app import create_app

    run = tmp_path / "run"
    fp = _export(run, ["2020-01", "2020-02", "2020-03"])
    (run / "vectors").symlink_to(run / "vec")
    (run / "footprints").symlink_to(fp)
    monkeypatch.setattr(bundle, "SHIPPED", tmp_path / "absent.bundle")
    with TestClient(create_app(ServeConfig(run_dir=str(run))), base_url="http://localhost") as client:
        assert client.get("/api/run").json()["inference"] is None  # no model: the API says how in one line (503)
    shipped = bundle.write_bundle(random_checkpoint(tmp_path / "m.ckpt"), tmp_path / "s.bundle", vectorize={"threshold": 0.45})
    monkeypatch.setattr(bundle, "SHIPPED", shipped)
    with TestClient(create_app(ServeConfig(run_dir=str(run))), base_url="http://localhost") as client:
        inference = client.get("/api/run").json()["inference"]
    assert inference["checkpoint"] == "s.bundle" and inference["threshold"] == 0.45  # the bundle's own settings
