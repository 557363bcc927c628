"""Shared fixtures: a tiny synthetic SN7 data set (real CRS) built in a temp folder, once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
# Dask's scheduler logs "Close client connection" at INFO from its own thread, sometimes after pytest has
# closed the captured stream its handler writes to: a "--- Logging error ---" traceback in the test log
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

from spacenet7 import synth  # noqa: E402
from spacenet7.config import SynthConfig  # noqa: E402

REAL_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "sn7_real_sample"
REAL_AOI = "L15-1615E-1205N_6460_3370_13"


@pytest.fixture(scope="session")
def synth_cfg(tmp_path_factory) -> SynthConfig:
    """A small synthetic data set: 3 AOIs x 6 months x 256 px (clouds guaranteed)."""
    out = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(out_dir=str(out), n_aois=3, n_months=6, size=256, seed=3, cloud_prob=0.4)
    synth.run(cfg)
    return cfg


@pytest.fixture(scope="session")
def synth_root(synth_cfg) -> Path:
    return Path(synth_cfg.out_dir)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that takes the ``real_sample`` fixture reads ../shared: it is in the ``real_data`` tier."""
    for item in items:
        if "real_sample" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_data)


@pytest.fixture
def real_sample() -> Path:
    if not (REAL_SAMPLE / "train" / REAL_AOI).is_dir():
        pytest.skip(f"real SN7 sample not found at {REAL_SAMPLE} (it lives in ../shared, absent in a user's clone)")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def trained_checkpoint(synth_root, tmp_path_factory) -> Path:
    """The demo network trained briefly (4 epochs of 12 steps, the source grid) on ``synth_root``: its best checkpoint.

    One training for the modules that need a trained model (predict/export, Dask); read it, never
    write beside it. (The runtime tests train their own on the 2x grid with the same helper.)
    """
    from model_fixtures import train_briefly

    return train_briefly(synth_root, tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A whole pipeline run on a tiny synthetic data set: (run_dir, captured stdout)."""
    import contextlib
    import io

    from spacenet7 import pipeline
    from spacenet7.compose import compose

    d = tmp_path_factory.mktemp("tiny_pipeline")
    cfg = compose(
        "pipeline",
        [
            f"run_dir={d / 'run'}",
            f"data_root={d / 'data'}",
            "synth.n_aois=3",
            "synth.n_months=4",
            "synth.size=128",
            "chip.chip_size=128",
            "train.max_epochs=1",
            "train.logger.wandb=false",
            "train.trainer.enable_progress_bar=false",
            "predict.progress=false",
            "predict.tile=128",
            "predict.overlap=32",
            "vectorize.threshold=0.3",
        ],
    )
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        pipeline.run(cfg)
    return d / "run", buf.getvalue()


@pytest.fixture(scope="session")
def served_run(request, tmp_path_factory) -> Path:
    """The tiny pipeline run with oracle predictions (buildings that appear month by month) and its checkpoint."""
    from spacenet7.serve.testing import oracle_run

    return oracle_run(request.getfixturevalue("tiny_run")[0], tmp_path_factory.mktemp("served") / "run")
