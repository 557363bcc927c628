"""The shipped real model (issue 33, 2): it loads and predicts, and re-scores to its card.

Both skip, saying why, until ``make model`` has written ``spacenet7/models/shipped/spacenet7-real.bundle``;
the re-scoring also needs the real data beside the repository (``../shared``) and is ``slow``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_fixtures import geotiff

from spacenet7.models import bundle

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def shipped() -> Path:
    if not (bundle.SHIPPED / bundle.CARD).is_file():
        pytest.skip(f"the shipped model is not installed ({bundle.SHIPPED}): `make model` builds it")
    return bundle.SHIPPED


def test_shipped_model_is_a_small_valid_bundle_that_predicts(shipped, tmp_path):
    from spacenet7 import Model

    card = bundle.read_card(shipped)
    assert card["name"] == "spacenet7-real" and card["provenance"]["recipe"] == "real"
    assert {"f1", "pixel_iou"} <= set(card["scores"]) and card["vectorize"]["shift_px"]
    assert (shipped / bundle.WEIGHTS).stat().st_size < 20 * 2**20  # committed to git: the ~1 M-parameter network
    model = Model.load(device="cpu", tta=False)
    for bands in (4, 3):  # SN7's RGBA mosaics, and plain RGB
        gdf = model.predict(geotiff(tmp_path / f"tiny{bands}.tif", bands=bands, size=128))
        assert list(gdf.columns) == ["id", "area_m2", "geometry"] and gdf.crs.to_epsg() == 32618
        assert gdf.geometry.is_valid.all()


@pytest.mark.slow
@pytest.mark.real_data
def test_shipped_model_rescores_to_its_card(shipped, tmp_path):
    from spacenet7 import evaluate, export, predict, vectorize
    from spacenet7.config import EvaluateConfig, ExportConfig, PredictConfig, VectorizeConfig

    card = bundle.read_card(shipped)
    prov = card["provenance"]
    roots = [ROOT / p if not Path(p).is_absolute() else Path(p) for p in str(prov["data"]).split(":")]
    if not all(r.is_dir() for r in roots):
        pytest.skip(f"the real data {prov['data']} is not beside the repository (../shared)")
    data = ":".join(str(r) for r in roots)
    predict.run(
        PredictConfig(
            checkpoint=str(shipped),
            data_root=data,
            aois=prov["aois"],
            out_dir=str(tmp_path / "pred"),
            progress=False,
            band_frac=prov.get("band_frac"),  # only the scored bands, as make real predicts them
            **card.get("predict", {}),
        )
    )
    vectorize.run(VectorizeConfig(bundle=str(shipped), pred_dir=str(tmp_path / "pred"), out_dir=str(tmp_path / "vec")))
    export.run(ExportConfig(vec_dir=str(tmp_path / "vec"), out_dir=str(tmp_path / "fp"), submission=str(tmp_path / "s.csv")))
    evaluate.run(
        EvaluateConfig(
            data_root=data,
            aois=prov["aois"],
            submission=str(tmp_path / "s.csv"),
            out=str(tmp_path / "metrics.json"),
            band_frac=prov.get("band_frac"),
        )
    )
    scores = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("f1", "pixel_iou", "scot"):
        if key in card["scores"]:
            assert scores[key] == pytest.approx(card["scores"][key], abs=0.01), key
