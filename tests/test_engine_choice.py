"""Truth parity and predict engine=auto: the choice as data (model file metadata, bundle card), its selection."""

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import random_checkpoint

from spacenet7 import compile as compile_stage
from spacenet7 import predict
from spacenet7.compose import compose
from spacenet7.config import Engine, PredictConfig
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.models import engine_choice
from spacenet7.models.bundle import read_card, record_runtime, write_bundle
from spacenet7.models.engine_choice import at_parity, check_candidate, check_runtime, pick, report_entries
from spacenet7.models.runtime import ModelMeta, read_meta


def cand(engine="openvino", precision="int8", rate=None, parity=True, file="m.xml", amp=False, **kw):
    return {
        "engine": engine,
        "precision": precision,
        "amp": amp,
        "file": None if engine == "torch" else file,
        "sha256": None,
        "tiles_per_s": rate,
        "speedup": None,
        "parity": parity,
        "basis": "test",
        **kw,
    }


def model_file(folder: Path, name: str) -> Path:
    (folder / name).write_text("x")
    if name.endswith(".xml"):
        (folder / name).with_suffix(".bin").write_text("w")
    return folder / name


# --- selection (pure) ---


def test_pick_takes_the_fastest_at_parity_that_can_run(tmp_path):
    for name in ("int8.xml", "fp32.xml", "m.onnx"):
        model_file(tmp_path, name)
    cands = [
        (cand("openvino", "int8", 190.0, parity=False, file="int8.xml"), tmp_path),
        (cand("openvino", "bf16", 130.0, file="fp32.xml", amp=True), tmp_path),
        (cand("onnxruntime", "fp32", 70.0, file="m.onnx"), tmp_path),
        (cand("torch", "bf16", 100.0, amp=True), tmp_path),
    ]
    (chosen, folder), reasons = pick(cands, is_installed=lambda e: True)
    assert (chosen["engine"], chosen["precision"], chosen["amp"], folder) == ("openvino", "bf16", True, tmp_path)
    assert reasons == ["openvino int8: not at truth parity"]
    # openvino not installed: the next fastest at parity is torch bf16, then onnxruntime
    (chosen, _), reasons = pick(cands, is_installed=lambda e: e != "openvino")
    assert (chosen["engine"], chosen["precision"]) == ("torch", "bf16")
    assert "openvino bf16: the openvino package is not installed" in reasons
    # nothing at parity and runnable: None (torch then runs), each reason said
    none, reasons = pick([cands[0], (cand("openvino", "fp32", 50.0, parity=None, file="fp32.xml"), tmp_path)])
    assert none is None and reasons == ["openvino int8: not at truth parity", "openvino fp32: not measured against the truth"]


def test_pick_skips_a_missing_or_changed_file(tmp_path):
    f = model_file(tmp_path, "m.xml")
    good = cand("openvino", "fp32", 80.0, file="m.xml", sha256=engine_choice.sha256(f))
    assert pick([(good, tmp_path)], lambda e: True)[0] is not None
    f.write_text("changed")
    none, reasons = pick([(good, tmp_path)], lambda e: True)
    assert none is None and "differs from the SHA-256" in reasons[0]
    # the weights (.bin) count too: a changed .bin beside an unchanged .xml is a changed model
    f = model_file(tmp_path, "w.xml")
    good = cand("openvino", "fp32", 80.0, file="w.xml", sha256=engine_choice.sha256(f))
    assert pick([(good, tmp_path)], lambda e: True)[0] is not None
    f.with_suffix(".bin").write_bytes(b"other weights")
    assert "differs from the SHA-256" in pick([(good, tmp_path)], lambda e: True)[1][0]
    f.with_suffix(".bin").unlink()
    assert ".bin is missing" in pick([(good, tmp_path)], lambda e: True)[1][0]
    assert "is missing" in pick([(cand(file="absent.xml"), tmp_path)], lambda e: True)[1][0]


def test_at_parity_within_the_tolerance_on_every_place_and_score():
    ref = {
        "a": {"f1": 0.65, "f1_iou25": 0.80, "pixel_iou": 0.58},
        "b": {"f1": 0.43, "f1_iou25": 0.59, "pixel_iou": 0.38, "scot": 0.30},
    }
    same = {p: {k: v + 0.004 for k, v in s.items()} for p, s in ref.items()}
    ok, deltas = at_parity(same, ref)
    assert ok and deltas["b"]["scot"] == pytest.approx(0.004)
    worse = json.loads(json.dumps(same))
    worse["b"]["scot"] = 0.29
    assert not at_parity(worse, ref)[0]
    better = json.loads(json.dumps(same))
    better["a"]["f1"] = 0.70  # a different model, even if better
    assert not at_parity(better, ref)[0]
    assert not at_parity({"a": same["a"]}, ref)[0]  # a place missing


@pytest.mark.parametrize(
    "edit,problem",
    [
        ({"engine": "os.system"}, "engine="),
        ({"file": "../../etc/x.xml"}, "must be the name of an .onnx or .xml file"),
        ({"file": "m.so"}, "must be the name of an .onnx or .xml file"),
        ({"file": None}, "needs its model file"),
        ({"precision": "int4"}, "precision="),
        ({"amp": "yes"}, "amp="),
        ({"tiles_per_s": float("inf")}, "tiles_per_s="),
        ({"tiles_per_s": True}, "tiles_per_s="),
        ({"_target_": "os.system"}, "unknown key"),
    ],
)
def test_a_hostile_candidate_is_refused_as_data(edit, problem):
    with pytest.raises(ValueError, match=problem):
        check_candidate({**cand(), **edit})


def test_runtime_map_is_checked():
    check_runtime({"chosen": cand(), "candidates": [cand(), cand("torch", "bf16")], "tolerance": 0.005, "report": None})
    with pytest.raises(ValueError, match="twice"):
        check_runtime({"candidates": [cand(), cand()]})
    with pytest.raises(ValueError, match="unknown key"):
        check_runtime({"candidates": [], "code": "import os"})


# --- the choice as data: model file metadata and bundle card ---


def test_model_meta_carries_the_choice_and_refuses_a_bad_one():
    meta = ModelMeta(3.0, {"count": 4, "rgb": [1, 2, 3], "alpha": 4}, ["footprint", "boundary", "contact"], 16)
    meta.runtime = cand("openvino", "int8+bf16", 190.5, amp=True)
    back = ModelMeta.from_json(meta.to_json(), Path("m.xml"))
    assert back.runtime == meta.runtime
    old = json.loads(meta.to_json())
    del old["runtime"]  # a file of an older version: no choice
    assert ModelMeta.from_json(json.dumps(old), Path("m.xml")).runtime == {}
    bad = json.loads(meta.to_json())
    bad["runtime"]["file"] = "../x.xml"
    with pytest.raises(SN7DataError, match="bad spacenet7 metadata"):
        ModelMeta.from_json(json.dumps(bad), Path("m.xml"))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("engine")
    return write_bundle(random_checkpoint(d / "last.ckpt"), d / "m.bundle")


def fresh_bundle(bundle_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "b.bundle"
    out.mkdir(parents=True)
    for f in bundle_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


def test_compile_into_a_bundle_records_the_choice_and_auto_runs_it(bundle_dir, tmp_path, monkeypatch, caplog):
    b = fresh_bundle(bundle_dir, tmp_path)
    out = compile_stage.run(compose("compile", [f"checkpoint={b}", "format=onnx"]))["model_file"]
    assert out == b / "model.onnx"
    meta = read_meta(out)
    assert (meta.runtime["engine"], meta.runtime["precision"], meta.runtime["parity"]) == ("onnxruntime", "fp32", True)
    runtime = read_card(b)["runtime"]
    assert runtime["chosen"]["file"] == "model.onnx" and runtime["candidates"][0]["sha256"] == engine_choice.sha256(out)
    caplog.set_level(logging.INFO, logger="spacenet7.predict")
    cfg = predict.resolve_auto(PredictConfig(checkpoint=str(b), engine=Engine.auto))
    assert (cfg.engine, Path(cfg.model_file), cfg.amp) == (Engine.onnxruntime, out, False)
    assert "engine=auto: onnxruntime fp32" in caplog.text
    # not installed: torch, with the reason in one line
    monkeypatch.setattr(engine_choice, "installed", lambda e: e == "torch")
    caplog.clear()
    cfg = predict.resolve_auto(PredictConfig(checkpoint=str(b), engine=Engine.auto, amp=True))
    assert (cfg.engine, cfg.checkpoint, cfg.model_file, cfg.amp) == (Engine.torch, str(b), None, True)
    assert "engine=auto: torch (amp=true; onnxruntime fp32: the onnxruntime package is not installed)" in caplog.text
    monkeypatch.undo()
    out.write_bytes(out.read_bytes() + b"\0")  # changed after compile: refused
    assert predict.resolve_auto(PredictConfig(checkpoint=str(b), engine=Engine.auto)).engine is Engine.torch
    # a bundle without a runtime: torch, saying how to record one
    caplog.clear()
    assert predict.resolve_auto(PredictConfig(checkpoint=str(bundle_dir), engine=Engine.auto)).engine is Engine.torch
    assert "compile parity=REPORT" in caplog.text


def test_on_the_fly_is_read_from_the_engine_once_auto_is_settled(bundle_dir, tmp_path):
    """predict exports the checkpoint itself only for an exported-model engine without model_file; engine=auto
    decides after the config is built, so the answer follows the resolved config."""
    ckpt = str(bundle_dir)
    assert PredictConfig(checkpoint=ckpt, engine=Engine.onnxruntime).on_the_fly
    assert not PredictConfig(checkpoint=ckpt, engine=Engine.torch).on_the_fly
    auto = PredictConfig(checkpoint=ckpt, engine=Engine.auto)
    assert not auto.on_the_fly  # not settled yet
    assert not predict.resolve_auto(auto).on_the_fly  # no runtime recorded: torch
    b = fresh_bundle(bundle_dir, tmp_path)
    compile_stage.run(compose("compile", [f"checkpoint={b}", "format=onnx"]))
    settled = predict.resolve_auto(PredictConfig(checkpoint=str(b), engine=Engine.auto))
    assert settled.engine is Engine.onnxruntime and not settled.on_the_fly  # the compiled model file runs
    assert dataclasses.replace(settled, model_file=None).on_the_fly


def test_auto_with_a_model_file_only(bundle_dir, tmp_path):
    f = compile_stage.run(compose("compile", [f"checkpoint={bundle_dir}", f"out={tmp_path / 'x.onnx'}"]))["model_file"]
    cfg = predict.resolve_auto(PredictConfig(model_file=str(f), engine=Engine.auto))
    assert (cfg.engine, cfg.model_file) == (Engine.onnxruntime, str(f))
    assert "runtime" not in read_card(bundle_dir)  # out= outside the bundle: only the file records it
    meta = json.loads(read_meta(f).to_json())
    meta["runtime"] = {}
    import onnx

    m = onnx.load(str(f))
    onnx.helper.set_model_props(m, {"spacenet7": json.dumps(meta)})
    onnx.save(m, str(tmp_path / "old.onnx"))
    with pytest.raises(SN7Error, match="engine=auto: .*old.onnx cannot run here .*no engine choice recorded.*no checkpoint="):
        predict.resolve_auto(PredictConfig(model_file=str(tmp_path / "old.onnx"), engine=Engine.auto))
    ok = predict.resolve_auto(
        PredictConfig(model_file=str(tmp_path / "old.onnx"), checkpoint=str(bundle_dir), engine=Engine.auto)
    )
    assert ok.engine is Engine.torch
    with pytest.raises(SN7Error, match="model_file= needs engine=onnxruntime or engine=openvino"):
        PredictConfig(model_file=str(f), engine=Engine.torch)


def report(engines: list[dict], idle: bool = True) -> dict:
    return {"format": engine_choice.REPORT_FORMAT, "machine": {"idle": idle}, "tolerance": 0.005, "engines": engines}


def entry(name, engine, precision, rate, parity, amp=False, fmt=None, int8=False, fix=None):
    return {
        "name": name,
        "engine": engine,
        "precision": precision,
        "amp": amp,
        "tiles_per_s": rate,
        "speedup": rate / 100.0,
        "parity": parity,
        "basis": "test",
        "format": fmt,
        "int8": int8,
        "int8_overflow_fix": fix,
        "int8_max_drop": None,
        "scores": {"a": {"f1": 0.6}},
    }


REPORT = [
    entry("torch fp32", "torch", "fp32", 45.0, True),
    entry("torch bf16 channels-last", "torch", "bf16", 100.0, True, amp=True),
    entry("onnxruntime fp32", "onnxruntime", "fp32", 70.0, True, fmt="onnx"),
    entry("openvino bf16", "openvino", "bf16", 130.0, True, amp=True, fmt="openvino"),
    entry("openvino int8", "openvino", "int8", 190.0, False, fmt="openvino", int8=True, fix="disable"),
]


def test_compile_parity_compiles_the_fastest_at_parity(bundle_dir, tmp_path):
    b = fresh_bundle(bundle_dir, tmp_path)
    path = tmp_path / "parity.json"
    path.write_text(json.dumps(report(REPORT)))
    out = compile_stage.run(compose("compile", [f"checkpoint={b}", f"parity={path}", "format=onnx"]))["model_file"]
    assert out == b / "model.xml" and out.with_suffix(".bin").is_file()  # the report's choice, not format=onnx
    assert read_meta(out).runtime["precision"] == "bf16" and read_meta(out).runtime["amp"] is True
    runtime = read_card(b)["runtime"]
    assert runtime["chosen"]["name"] == "openvino bf16" and runtime["report"] == "parity.json"
    assert sorted(c["name"] for c in runtime["candidates"]) == ["openvino bf16", "torch bf16 channels-last", "torch fp32"]
    cfg = predict.resolve_auto(PredictConfig(checkpoint=str(b), engine=Engine.auto, amp=False))
    if engine_choice.installed("openvino"):
        assert (cfg.engine, Path(cfg.model_file), cfg.amp) == (Engine.openvino, out, True)
    # torch the fastest at parity: nothing exported, the card says so, auto runs torch bf16
    path.write_text(json.dumps(report(REPORT[:3])))
    b2 = fresh_bundle(bundle_dir, tmp_path / "t")
    assert compile_stage.run(compose("compile", [f"checkpoint={b2}", f"parity={path}"])) == {"card": b2 / "card.json"}
    assert read_card(b2)["runtime"]["chosen"]["name"] == "torch bf16 channels-last"
    assert sorted(p.name for p in b2.iterdir()) == ["card.json", "weights.safetensors"]
    cfg = predict.resolve_auto(PredictConfig(checkpoint=str(b2), engine=Engine.auto, amp=False))
    assert (cfg.engine, cfg.amp) == (Engine.torch, True)


@pytest.mark.parametrize(
    "doc,problem",
    [
        ({"format": "other"}, "not a bench/bench_runtimes.py parity report"),
        (report([{**REPORT[2], "format": "openvino"}]), "engine onnxruntime with format 'openvino'"),
        (report([{**REPORT[2], "engine": "__import__('os')"}]), "engine="),
        (report([REPORT[4]]), "no engine of the report is at truth parity"),
    ],
)
def test_a_bad_parity_report_is_one_line(doc, problem, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SN7DataError, match=problem):
        compile_stage.parity_plan(path)
    assert len(report_entries(report(REPORT))) == 5


def test_record_runtime_validates(bundle_dir, tmp_path):
    b = fresh_bundle(bundle_dir, tmp_path)
    with pytest.raises(SN7Error, match="would not validate"):
        record_runtime(b, {"candidates": [{"engine": "openvino", "precision": "int8", "file": "/etc/passwd.xml"}]})
    assert "runtime" not in read_card(b)
    card = json.loads((b / "card.json").read_text())
    card["runtime"] = {"candidates": [cand(file="../w.xml")]}
    (b / "card.json").write_text(json.dumps(card))
    with pytest.raises(SN7DataError, match="not a spacenet7 bundle .*must be the name of an .onnx or .xml file"):
        read_card(b)


# --- int8 calibration: the training imagery, never the held-out band ---


def test_int8_calibration_defaults_to_the_training_area(synth_root, tmp_path):
    from spacenet7.data.sn7 import scan
    from spacenet7.models.inference import load_model

    aoi = sorted(scan(synth_root))[0]
    b = write_bundle(
        random_checkpoint(tmp_path / "c.ckpt"),
        tmp_path / "c.bundle",
        provenance={"data": str(synth_root), "aois": [aoi], "holdout": "band", "band_frac": 0.25},
    )
    records, band_frac = compile_stage.training_imagery(b)
    assert band_frac == 0.25 and {r.aoi for r in records} == {aoi} and len(records) > 1
    model = load_model(b, device="cpu")
    tiles = compile_stage.calibration_tiles_of(records, model, 8, 64, band_frac)
    assert tiles and all(t.shape == (1, 3, 64, 64) and t.dtype == np.float32 for t in tiles)
    # only the training area: a band of 0.9 leaves too little width for a tile of the model grid
    with pytest.raises(SN7Error, match="no calibration tile"):
        compile_stage.calibration_tiles_of(records[:1], model, 8, 512, 0.9)
    nameless = write_bundle(random_checkpoint(tmp_path / "d.ckpt"), tmp_path / "d.bundle")
    with pytest.raises(SN7Error, match="does not name its training imagery; int8=true needs calibration="):
        compile_stage.training_imagery(nameless)


# --- the bench's report is what compile reads ---


def test_the_bench_report_feeds_compile(synth_root, tmp_path):
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import runtime_parity as rp

    from spacenet7.models.inference import load_model
    from spacenet7.models.mosaic import tile_align

    assert tile_align(3.0, 256, 64) == 64 and tile_align(2.0, 256, 64) == 96
    model = load_model(random_checkpoint(tmp_path / "m.ckpt"), device="cpu")
    places = rp.load_place(str(synth_root), model, 0.25, 256, 64, 2)
    for p in places:  # the window starts on the mosaic's tile grid, a tile's reach left of the band
        assert p.window.col_off % 96 == 0 and p.window.col_off <= p.region[2] - 256 / 2.0 and p.months == 2
        assert set(p.truth["month"]) <= {r.month_key for r in p.records}
    a = places[0].aoi
    ref = {a: {"f1": 0.6, "f1_iou25": 0.8, "pixel_iou": 0.5, "scot": 0.3}}
    runs = [
        rp.EngineRun("torch-fp32", "torch fp32", "torch", "fp32", False, model, tiles_per_s=40.0, scores=ref),
        rp.EngineRun("torch-bf16", "torch bf16 channels-last", "torch", "bf16", True, model, tiles_per_s=100.0, scores=ref),
        rp.EngineRun(
            "ov-int8",
            "openvino int8",
            "openvino",
            "int8",
            False,
            model,
            "openvino",
            True,
            "disable",
            None,
            190.0,
            scores={a: {**ref[a], "scot": 0.31}},
        ),
        rp.EngineRun(
            "ov-bf16",
            "openvino bf16",
            "openvino",
            "bf16",
            True,
            model,
            "openvino",
            False,
            None,
            None,
            160.0,
            scores={a: {**ref[a], "f1": 0.604}},
        ),
    ]
    args = argparse.Namespace(tolerance=0.005, threads=2, rounds=3, months=None, band_frac=0.25)
    before = {"loadavg": [0.1, 0.1, 0.1], "others_before": 0.01, "cpus": 2}
    doc = rp.report(runs, places[:1], args, before, 0.02, True, None, 10.0, 20.0, "m.ckpt")
    assert [e["parity"] for e in doc["engines"]] == [True, True, False, True]
    assert doc["fastest_at_parity"] == "openvino bf16" and doc["target"] == {
        "speedup_over_torch_bf16": 1.5,
        "fastest_at_parity_speedup": 1.6,
        "met": True,
    }
    rp.print_table(json.loads(json.dumps(doc)))  # as written and read back
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    plan = compile_stage.parity_plan(path)
    assert (plan["engine"], plan["format"], plan["amp"], plan["int8"]) == ("openvino", "openvino", True, False)


def test_scot_off_by_one_new_building_is_at_parity_and_by_two_is_not():
    # one more true "new" building moves SCOT ~0.07 on the real band: below what its change term resolves
    ref = {"b": {"f1": 0.43, "f1_iou25": 0.59, "pixel_iou": 0.38, "tracking": 0.59, "scot": 0.32,
                 "change_tp": 2.0, "change_fp": 13.0, "change_fn": 22.0}}  # fmt: skip
    one = json.loads(json.dumps(ref))
    one["b"].update(scot=0.39, change_tp=3.0, change_fn=21.0)
    assert at_parity(one, ref)[0]
    two = json.loads(json.dumps(one))
    two["b"].update(change_tp=4.0, change_fn=20.0)
    assert not at_parity(two, ref)[0]
    no_counts = {"b": {k: v for k, v in one["b"].items() if not k.startswith("change_")}}
    assert not at_parity(no_counts, ref)[0]  # without the counts, SCOT is held to the tolerance
    drift = json.loads(json.dumps(one))
    drift["b"]["tracking"] = 0.58  # the tracking term is always held to the tolerance
    assert not at_parity(drift, ref)[0]
