"""The Python API (issue 33, 3) and the inference API's 3-band uploads (issue 33, 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import rasterio
from model_fixtures import geotiff, random_checkpoint

from spacenet7.errors import SN7Error
from spacenet7.models import bundle


@pytest.fixture(scope="module")
def model_bundle(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("api")
    ckpt = random_checkpoint(d / "m.ckpt")
    out = bundle.write_bundle(ckpt, d / "m.bundle", vectorize={"threshold": 0.45, "track": {"min_persist": 1}})
    card = json.loads((out / "card.json").read_text())
    card["predict"] = {"grid": "upscaled", "tile": 128, "overlap": 32}  # as `spacenet7 bundle` takes it from a run
    (out / "card.json").write_text(json.dumps(card))
    return out


@pytest.fixture(scope="module")
def model(model_bundle):
    from spacenet7 import Model

    return Model.load(model_bundle, device="cpu", tta=False)


def test_model_takes_the_bundles_settings(model, model_bundle):
    assert model.vectorize_cfg.threshold == 0.45 and model.vectorize_cfg.track.min_persist == 1
    assert (model.predict_cfg.grid, model.predict_cfg.tile, model.predict_cfg.tta) == ("upscaled", 128, False)
    assert model.card["name"] == "m" and "Unet/timm-regnetx_004" in repr(model)
    from spacenet7 import Model

    other = Model.load(model_bundle, device="cpu", tta=False, vectorize={"threshold": 0.6, "track": {"max_gap": 2}})
    assert other.vectorize_cfg.threshold == 0.6 and other.vectorize_cfg.track.min_persist == 1
    assert other.vectorize_cfg.track.max_gap == 2
    with pytest.raises(SN7Error, match="bad VectorizeConfig setting: .*treshold"):
        Model.load(model_bundle, vectorize={"treshold": 0.6})


def test_predict_one_image_is_footprints_in_its_crs(model, tmp_path):
    tif = geotiff(tmp_path / "mine.tif")
    gdf = model.predict(tif)
    with rasterio.open(tif) as ds:
        assert gdf.crs == ds.crs
    assert list(gdf.columns) == ["id", "area_m2", "geometry"] and len(gdf) > 0
    assert gdf.geometry.is_valid.all() and (gdf["area_m2"] > 0).all()


def test_track_undated_series_labels_months_m01(model, tmp_path):
    files = [geotiff(tmp_path / f"shot{i}.tif", bands=3, seed=i) for i in range(3)]  # 3-band RGB, no dates
    gdf = model.track(files)
    assert {"id", "month", "date", "first_seen", "last_seen", "new", "filled", "n_months", "area_m2", "geometry"} <= set(gdf)
    assert sorted(gdf["month"].unique()) == ["m01", "m02", "m03"] and gdf["date"].isna().all()
    assert not gdf.loc[gdf["month"] == "m01", "new"].any()  # the first month has nothing to be new against
    assert (gdf["new"] == ((gdf["first_seen"] == gdf["month"]) & (gdf["month"] != "m01"))).all()
    assert gdf["filled"].dtype == bool and gdf["id"].nunique() <= len(gdf)


def test_track_with_months_gives_dates(model, tmp_path):
    files = [geotiff(tmp_path / f"shot{i}.tif", seed=i) for i in range(2)]
    gdf = model.track(files, months=["2020-01", "2020-02"])
    assert sorted(gdf["month"].unique()) == ["2020-01", "2020-02"]
    assert set(gdf["date"]) == {pd.Timestamp("2020-01-01"), pd.Timestamp("2020-02-01")}
    with pytest.raises(SN7Error, match="2 image\\(s\\) but 1 month"):
        model.track(files, months=["2020-01"])


def test_load_without_a_model_says_make_model(tmp_path, monkeypatch):
    from spacenet7 import Model

    monkeypatch.setattr(bundle, "SHIPPED", tmp_path / "absent.bundle")
    with pytest.raises(SN7Error, match="shipped model is not installed .*make model"):
        Model.load()


def test_cli_start_does_not_import_the_api():
    code = "import sys, spacenet7, spacenet7.cli; assert 'spacenet7.api' not in sys.modules and 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_inference_api_accepts_3_band_rgb(model_bundle, tmp_path):
    from spacenet7.config import PredictConfig, VectorizeConfig
    from spacenet7.serve.api import Inference, Limits

    inf = Inference(
        model_bundle, PredictConfig(tta=False, device="cpu"), VectorizeConfig(bundle=str(model_bundle)), Limits(2**26, 2**24, 4)
    )
    rgb = geotiff(tmp_path / "rgb.tif", bands=3)
    inf.check(rgb, "rgb.tif")  # a 4-band RGB + alpha model reads RGB without an alpha band
    (tmp_path / "work").mkdir()
    doc = json.loads(inf.predict([(rgb, "rgb.tif")], None, tmp_path / "work"))
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) > 0
    assert inf.describe()["checkpoint"] == "m.bundle" and inf.describe()["threshold"] == 0.45
