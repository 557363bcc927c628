"""Model bundles (issue 33, 1): written from a checkpoint, read by every stage that takes one, never executed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_fixtures import geotiff, random_checkpoint

from spacenet7 import bundle as bundle_stage
from spacenet7.compose import compose
from spacenet7.config import PredictConfig, VectorizeConfig
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.models import bundle
from spacenet7.models.inference import load_model

EXE = [sys.executable, "-m", "spacenet7"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A checkpoint inside a run folder with a pipeline.json and metrics.json (what `make real` leaves)."""
    run = tmp_path_factory.mktemp("bundle") / "run"
    (run / "train" / "checkpoints").mkdir(parents=True)
    vec = {"threshold": 0.25, "seed_threshold": 0.3, "shift_px": [-0.3333, -0.3333], "track": {"min_persist": 3}}
    (run / "pipeline.json").write_text(
        json.dumps(
            {
                "config": {
                    "vectorize": {**vec, "out_dir": "x"},
                    "predict": {"grid": "upscaled", "tta_views": "flips", "out_dir": "y", "threads": 2, "engine": "openvino"},
                    "train": {"seed": 7},
                    "holdout": "band",
                    "band_frac": 0.25,
                }
            }
        )
    )
    (run / "metrics.json").write_text(json.dumps({"scot": 0.41, "f1": 0.58, "pixel_iou": 0.52}))
    return random_checkpoint(run / "train" / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def made(ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "real.bundle"
    return bundle_stage.run(compose("bundle", [f"checkpoint={ckpt}", f"out={out}", "recipe_name=real"]))


def test_bundle_card_describes_the_model(made):
    assert sorted(p.name for p in made.iterdir()) == ["card.json", "weights.safetensors"]
    card = json.loads((made / "card.json").read_text())
    assert card["format"] == "spacenet7-bundle" and card["format_version"] == 1
    assert card["architecture"]["encoder_name"] == "timm-regnetx_004" and "_target_" not in card["architecture"]
    assert card["input"]["upscale"] == 2.0 and card["input"]["input"]["scaling"] == "percentile"
    assert card["input"]["input"]["resampling"] == "bilinear"  # the full spec, not only what chips.json set
    assert card["vectorize"]["shift_px"] == [-0.3333, -0.3333] and card["vectorize"]["threshold"] == 0.25
    assert card["vectorize"]["track"] == {"min_persist": 3} and "out_dir" not in card["vectorize"]
    assert card["predict"] == {"grid": "upscaled", "tta_views": "flips"}  # what its scores were measured with
    assert card["provenance"]["recipe"] == "real" and card["provenance"]["seed"] == 7
    assert card["provenance"]["scores_engine"] == "openvino"  # the engine the scores were predicted with
    assert card["provenance"]["checkpoint"] == "last.ckpt" and card["provenance"]["git_commit"]
    assert card["scores"] == {"scot": 0.41, "f1": 0.58, "pixel_iou": 0.52}


def test_bundle_predicts_what_its_checkpoint_predicts(ckpt, made):
    a, b = load_model(ckpt, device="cpu"), load_model(made, device="cpu")
    assert (a.upscale, a.spec) == (b.upscale, b.spec)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a.net(x), b.net(x))


def test_vectorize_takes_its_settings_from_a_bundle(made):
    cfg = VectorizeConfig(bundle=str(made), threshold=0.9, min_area_px=9.0)
    assert cfg.threshold == 0.25 and cfg.shift_px == [-0.3333, -0.3333] and cfg.track.min_persist == 3
    assert cfg.min_area_px == 9.0  # a key the card lacks stays
    assert compose("vectorize", [f"bundle={made}"]).seed_threshold == 0.3


def test_predict_compile_accept_a_bundle(made, tmp_path):
    from spacenet7 import compile as compile_stage
    from spacenet7 import predict

    img = geotiff(tmp_path / "area_2020-01.tif")
    out = predict.run(
        PredictConfig(checkpoint=str(made), images=[str(img)], aoi="area", out_dir=str(tmp_path / "p"), tta=False, progress=False)
    )
    assert [p.name for p in out] == ["global_monthly_2020_01_mosaic_area.tif"]
    compile_stage.run(compose("compile", [f"checkpoint={made}", f"out={tmp_path / 'm.onnx'}", "verify=false"]))
    assert (tmp_path / "m.onnx").stat().st_size > 100_000


def test_predict_without_checkpoint_uses_the_shipped_bundle(made, tmp_path, monkeypatch):
    from spacenet7 import predict

    img = geotiff(tmp_path / "mine.tif", bands=3)  # 3-band RGB: read without an alpha band
    cfg = PredictConfig(images=[str(img)], aoi="mine", out_dir=str(tmp_path / "p"), tta=False, progress=False)
    monkeypatch.setattr(bundle, "SHIPPED", tmp_path / "absent.bundle")
    with pytest.raises(SN7Error, match="no checkpoint given and the shipped model is not installed .*make model"):
        predict.run(cfg)
    monkeypatch.setattr(bundle, "SHIPPED", made)
    assert [p.name for p in predict.run(cfg)] == ["global_monthly_0001_01_mosaic_mine.tif"]


def _card(made: Path, tmp_path: Path, edit) -> Path:
    out = tmp_path / "hostile.bundle"
    out.mkdir()
    (out / "weights.safetensors").write_bytes((made / "weights.safetensors").read_bytes())
    card = json.loads((made / "card.json").read_text())
    edit(card, tmp_path / "pwned")
    (out / "card.json").write_text(json.dumps(card))
    return out


HOSTILE = {
    "top-level _target_": lambda c, m: c.update(_target_="pathlib.Path.touch", _args_=[str(m)]),
    "architecture _target_": lambda c, m: c["architecture"].update(_target_="os.system"),
    "nested _target_": lambda c, m: c["architecture"].update(aux_params={"_target_": "pathlib.Path.touch", "self": str(m)}),
    "nested _target_ in vectorize": lambda c, m: c["vectorize"].update(track={"_target_": "os.system"}),
    "wrong type: format_version": lambda c, m: c.update(format_version="1"),
    "wrong type: architecture": lambda c, m: c.update(architecture=["Unet"]),
    "wrong type: upscale": lambda c, m: c["input"].update(upscale="3"),
    "wrong type: threshold": lambda c, m: c["vectorize"].update(threshold="high"),
    "bad value: threshold": lambda c, m: c["vectorize"].update(threshold=1.5),
    "unknown key": lambda c, m: c.update(run="rm -rf /"),
    "unknown vectorize key": lambda c, m: c["vectorize"].update(out_dir="/etc"),
    "unknown predict key": lambda c, m: c["predict"].update(checkpoint="/tmp/evil.ckpt"),
    "wrong type: predict grid": lambda c, m: c["predict"].update(grid=["upscaled"]),
    "unknown input key": lambda c, m: c["input"]["input"].update(command="x"),
    "weights outside": lambda c, m: c["weights"].update(file="../../etc/passwd.safetensors"),
    "changed weights": lambda c, m: c["weights"].update(sha256="0" * 64),
    "other format": lambda c, m: c.update(format="pickle"),
    "newer version": lambda c, m: c.update(format_version=99),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_card_is_refused_as_data(case, made, tmp_path):
    path = _card(made, tmp_path, HOSTILE[case])
    with pytest.raises(SN7DataError, match=r"not a spacenet7 bundle \(") as exc:
        load_model(path, device="cpu")
    assert exc.value.path.parent == path and "\n" not in str(exc.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("stage", ["predict", "vectorize", "compile"])
def test_hostile_card_on_the_cli_is_one_line_exit_1(stage, made, tmp_path):
    path = _card(made, tmp_path, HOSTILE["nested _target_"])
    img = geotiff(tmp_path / "area_2020-01.tif")
    args = {
        "predict": [f"checkpoint={path}", f"images=[{img}]", "aoi=area", f"out_dir={tmp_path / 'p'}"],
        "vectorize": [f"bundle={path}"],
        "compile": [f"checkpoint={path}", f"out={tmp_path / 'p' / 'm.onnx'}"],
    }[stage]
    r = subprocess.run([*EXE, stage, *args], capture_output=True, text=True, timeout=300, env={**_env(tmp_path)})
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [f"spacenet7 {stage}: error: {path / 'card.json'}: not a spacenet7 bundle ({lines[0].split('(', 1)[1]}"]
    assert "_target_" in lines[0] and not (tmp_path / "pwned").exists() and not (tmp_path / "p").exists()


def _env(tmp_path: Path) -> dict[str, str]:
    import os

    return {**os.environ, "SPACENET7_LOG_DIR": str(tmp_path / "logs")}


def test_bundle_out_must_end_in_bundle(ckpt, tmp_path):
    with pytest.raises(SN7Error, match=r"out=.* must be a folder name ending in \.bundle"):
        compose("bundle", [f"checkpoint={ckpt}", f"out={tmp_path / 'x'}"])


def test_rebundling_keeps_the_card(made, tmp_path):
    again = bundle.write_bundle(made, tmp_path / "again.bundle", vectorize={"threshold": 0.35})
    card = bundle.read_card(again)
    assert card["vectorize"]["threshold"] == 0.35 and card["vectorize"]["shift_px"] == [-0.3333, -0.3333]
    assert card["scores"]["scot"] == 0.41


def test_train_init_from_a_bundle(made):
    from model_fixtures import ARCH

    from spacenet7.models.task import build_net
    from spacenet7.train import init_weights

    net = build_net(ARCH)
    init_weights(net, made)
    state, _ = bundle.read_bundle(made)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
