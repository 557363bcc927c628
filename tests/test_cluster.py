"""Per-AOI stages on Dask (spacenet7.cluster): the same answers as in process, faults named by AOI.

A 2-worker ``LocalCluster`` (processes, one thread each) runs predict, vectorize, export, evaluate
and chip on the tiny synthetic tree of conftest.py (3 AOIs x 6 months); every output is compared
with the in-process run's. A worker SIGKILLs itself before renaming its first probability raster
(``SPACENET7_KILL_BEFORE_RENAME`` + ``SPACENET7_KILL_ONCE``), and a corrupt AOI fails alone.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio

from spacenet7 import chip, evaluate, export, predict, vectorize
from spacenet7.cli import main
from spacenet7.cluster import load_counts
from spacenet7.compose import compose
from spacenet7.config import ChipConfig, ClusterConfig, ClusterMode, EvaluateConfig, ExportConfig, PredictConfig, VectorizeConfig
from spacenet7.errors import SN7Error

PROGRESS = re.compile(r"\d+%\|")
pytestmark = pytest.mark.dask


@pytest.fixture(scope="module")
def ckpt(trained_checkpoint) -> Path:
    """A briefly trained network (conftest's, shared with the other modules that need one)."""
    return trained_checkpoint


@pytest.fixture(scope="module")
def dask_address():
    """A 2-worker LocalCluster for the module; stages join it with cluster.mode=address."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc:
        yield lc.scheduler_address


def _stages(ckpt: Path, root: Path, out: Path, cluster: ClusterConfig) -> None:
    """predict -> vectorize -> export -> evaluate of every AOI into ``out``."""
    predict.run(
        PredictConfig(
            checkpoint=str(ckpt),
            data_root=str(root),
            out_dir=str(out / "pred"),
            tile=128,
            overlap=32,
            tta=False,
            progress=False,
            cluster=cluster,
        )
    )
    vectorize.run(VectorizeConfig(pred_dir=str(out / "pred"), out_dir=str(out / "vec"), threshold=0.3, cluster=cluster))
    export.run(ExportConfig(vec_dir=str(out / "vec"), out_dir=str(out / "fp"), submission=str(out / "sub.csv"), cluster=cluster))
    evaluate.run(
        EvaluateConfig(data_root=str(root), submission=str(out / "sub.csv"), out=str(out / "metrics.json"), cluster=cluster)
    )


@pytest.fixture(scope="module")
def clean(ckpt, synth_root, tmp_path_factory) -> Path:
    """The in-process run (cluster.mode=none, the default)."""
    out = tmp_path_factory.mktemp("in_process")
    _stages(ckpt, synth_root, out, ClusterConfig())
    return out


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob(pattern))


def assert_same_predictions(a: Path, b: Path) -> None:
    names = _files(a, "*.tif")
    assert names and names == _files(b, "*.tif")
    for name in names:
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            assert x.profile == y.profile and x.tags() == y.tags(), name
            np.testing.assert_array_equal(x.read(), y.read(), err_msg=str(name))


def assert_no_leftovers(folder: Path) -> None:
    assert not list(folder.rglob("*.partial")), list(folder.rglob("*.partial"))
    assert not list(folder.rglob(".raw")), list(folder.rglob(".raw"))


def test_two_workers_give_the_same_outputs_as_in_process(clean, ckpt, synth_root, dask_address, tmp_path):
    from distributed import Client

    _stages(ckpt, synth_root, tmp_path, ClusterConfig(mode=ClusterMode.address, address=dask_address))
    assert_same_predictions(clean / "pred", tmp_path / "pred")
    vecs = _files(clean / "vec", "*.parquet")
    assert len(vecs) == 3
    n_buildings = 0
    for name in vecs:
        a, b = gpd.read_parquet(clean / "vec" / name), gpd.read_parquet(tmp_path / "vec" / name)
        pd.testing.assert_frame_equal(a, b)
        n_buildings += a["id"].nunique()
        assert (clean / "vec" / name).with_suffix(".json").read_text() == (tmp_path / "vec" / name).with_suffix(
            ".json"
        ).read_text()
    assert n_buildings > 0, "the comparison needs buildings"
    geojson = _files(clean / "fp", "*.geojson")
    assert len(geojson) == 18 and geojson == _files(tmp_path / "fp", "*.geojson")
    for name in geojson:
        assert (clean / "fp" / name).read_bytes() == (tmp_path / "fp" / name).read_bytes(), name
    for name in _files(clean / "fp", "*.gpkg"):
        layers = [layer for layer, _ in pyogrio.list_layers(clean / "fp" / name)]
        assert layers == [layer for layer, _ in pyogrio.list_layers(tmp_path / "fp" / name)]
        for layer in layers:
            pd.testing.assert_frame_equal(
                gpd.read_file(clean / "fp" / name, layer=layer), gpd.read_file(tmp_path / "fp" / name, layer=layer)
            )
    assert (clean / "sub.csv").read_text() == (tmp_path / "sub.csv").read_text()
    assert json.loads((clean / "metrics.json").read_text()) == json.loads((tmp_path / "metrics.json").read_text())
    assert_no_leftovers(tmp_path)
    with Client(dask_address) as client:  # the network was loaded at most once per worker, for 3 AOIs
        loads = [c.get("predict-model", 0) for c in client.run(load_counts).values()]
    assert len(loads) == 2 and max(loads) == 1 and sum(loads) <= 2


def test_chip_on_two_workers_writes_the_same_index_and_files(synth_root, dask_address, tmp_path):
    kw = dict(data_root=str(synth_root), chip_size=128, overlap=0, progress=False, layout="rasters")
    chip.run(ChipConfig(out_dir=str(tmp_path / "a"), **kw))
    chip.run(ChipConfig(out_dir=str(tmp_path / "b"), cluster=ClusterConfig(mode=ClusterMode.address, address=dask_address), **kw))
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "a" / "index.parquet"), pd.read_parquet(tmp_path / "b" / "index.parquet")
    )
    targets = _files(tmp_path / "a", "*.tif")
    assert len(targets) == 18 and targets == _files(tmp_path / "b", "*.tif")
    for name in targets:
        with rasterio.open(tmp_path / "a" / name) as x, rasterio.open(tmp_path / "b" / name) as y:
            np.testing.assert_array_equal(x.read(), y.read())


def test_a_worker_killed_mid_aoi_is_replaced_and_the_outputs_are_a_clean_runs(clean, ckpt, synth_root, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv("SPACENET7_KILL_BEFORE_RENAME", "global_monthly_*.tif")  # a worker dies before its first rename,
    monkeypatch.setenv("SPACENET7_KILL_ONCE", str(marker))  # once: the AOI's next attempt goes through
    out = tmp_path / "run"
    predict.run(
        PredictConfig(
            checkpoint=str(ckpt),
            data_root=str(synth_root),
            out_dir=str(out / "pred"),
            tile=128,
            overlap=32,
            tta=False,
            progress=False,
            cluster=ClusterConfig(mode=ClusterMode.local, workers=2),
        )
    )
    assert marker.exists(), "no worker was killed"
    assert_same_predictions(clean / "pred", out / "pred")
    assert_no_leftovers(out)


def test_an_aoi_with_bad_data_is_named_the_others_finish_and_the_stage_fails(clean, dask_address, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPACENET7_LOG_DIR", str(tmp_path / "logs"))
    shutil.copytree(clean / "pred", tmp_path / "pred")
    aois = sorted(p.name for p in (tmp_path / "pred").iterdir())
    bad = aois[1]
    sorted((tmp_path / "pred" / bad).glob("*.tif"))[2].write_bytes(b"not a GeoTIFF")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "vectorize",
                f"pred_dir={tmp_path / 'pred'}",
                f"out_dir={tmp_path / 'vec'}",
                "threshold=0.3",
                "cluster.mode=address",
                f"cluster.address={dask_address}",
            ]
        )
    assert exc.value.code == 1
    err = [
        line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip() and not PROGRESS.search(line)
    ]
    assert len(err) == 1, err
    assert err[0].startswith("spacenet7 vectorize: error: 1 of 3 AOIs failed (2 finished): ")
    assert f"{bad}: " in err[0] and "not a readable raster" in err[0]
    assert sorted(p.stem for p in (tmp_path / "vec").glob("*.parquet")) == [a for a in aois if a != bad]
    for a in aois:
        if a != bad:
            pd.testing.assert_frame_equal(
                gpd.read_parquet(tmp_path / "vec" / f"{a}.parquet"), gpd.read_parquet(clean / "vec" / f"{a}.parquet")
            )
    assert_no_leftovers(tmp_path)


def test_cluster_settings_are_checked_when_composed():
    assert compose("predict").cluster.mode is ClusterMode.none  # the default: in process
    cfg = compose("vectorize", ["cluster.mode=local", "cluster.workers=4"])
    assert cfg.cluster.mode is ClusterMode.local and cfg.cluster.workers == 4
    with pytest.raises(SN7Error, match="cluster.mode=address needs cluster.address"):
        compose("export", ["cluster.mode=address"])
    with pytest.raises(SN7Error, match="cluster.workers=0 must be >= 1"):
        compose("chip", ["cluster.mode=local", "cluster.workers=0"])
