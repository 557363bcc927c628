"""spacenet7 compile and predict engine=onnxruntime|openvino: parity with torch fp32, metadata, errors."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from spacenet7 import compile as compile_stage
from spacenet7 import predict, vectorize
from spacenet7.compose import compose
from spacenet7.config import Engine
from spacenet7.data.sn7 import read_image, scan
from spacenet7.errors import SN7Error
from spacenet7.io.artifacts import load_vectors
from spacenet7.io.probability import read_prediction
from spacenet7.models.inference import load_model, load_model_file, predict_batch, sliding_window
from spacenet7.models.runtime import META_KEY, read_meta

ENGINES = [(Engine.onnxruntime, "onnx", ".onnx"), (Engine.openvino, "openvino", ".xml")]


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory) -> Path:
    """A demo network trained briefly on the tiny data set, on the 2x grid: its best checkpoint."""
    from model_fixtures import train_briefly

    return train_briefly(synth_root, tmp_path_factory.mktemp("runtime"), upscale=2.0)


@pytest.fixture(scope="module")
def compiled(trained) -> dict[str, Path]:
    out = {}
    for _, fmt, suffix in ENGINES:
        out[fmt] = compile_stage.run(
            compose("compile", [f"checkpoint={trained}", f"format={fmt}", f"out={trained.parent / ('model' + suffix)}"])
        )["model_file"]
    return out


def test_export_has_dynamic_axes_opset_and_metadata(trained, compiled):
    m = onnx.load(str(compiled["onnx"]))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    ckpt = load_model(trained)
    for fmt in ("onnx", "openvino"):
        meta = read_meta(compiled[fmt])
        assert meta.upscale == ckpt.upscale == 2.0 and meta.stride == 8
        assert meta.input == ckpt.spec.to_dict() and meta.classes == ["footprint", "boundary", "contact"]
    assert compiled["openvino"].with_suffix(".bin").stat().st_size > 100_000


@pytest.mark.parametrize("engine,fmt,_", ENGINES)
def test_engine_matches_torch_fp32_on_the_same_tiles(trained, compiled, synth_root, engine, fmt, _):
    torch.manual_seed(0)
    ref = load_model(trained, device="cpu", amp=False)
    fast = load_model_file(compiled[fmt], engine, amp=False)
    assert fast.stride == ref.stride == 8
    tiles = torch.rand(3, 3, 96, 96)
    for tta in (None, "d4"):
        diff = (predict_batch(fast, tiles, tta) - predict_batch(ref, tiles, tta)).abs().max().item()
        assert diff < 1e-4, (tta, diff)
    # a tile side that is not a multiple of the stride is padded the same way for both
    odd = torch.rand(2, 3, 100, 100)
    p_ref, p_fast = predict_batch(ref, odd, None), predict_batch(fast, odd, None)
    assert p_fast.shape == (2, 3, 100, 100) and (p_fast - p_ref).abs().max().item() < 1e-4
    rec = next(iter(scan(synth_root).values()))[0]
    rgb = read_image(rec, upscale=2.0, spec=ref.spec).rgb[:, :300, :300]
    a, b = sliding_window(ref, rgb, 128, 32, 4, "flips"), sliding_window(fast, rgb, 128, 32, 4, "flips")
    assert np.abs(a - b).max() < 1e-2


def test_predict_engines_give_the_same_rasters_and_footprints(trained, compiled, synth_root, tmp_path, monkeypatch):
    aoi = sorted(scan(synth_root))[-1]
    common = [
        f"data_root={synth_root}",
        f"aois=[{aoi}]",
        "progress=false",
        "tta_views=flips",
        "amp=false",
        "tile=128",
        "overlap=32",
    ]
    runs = {
        "torch": [f"checkpoint={trained}"],
        "onnxruntime": [f"model_file={compiled['onnx']}"],
        "openvino": [f"model_file={compiled['openvino']}"],
        "openvino_exported": [f"checkpoint={trained}"],  # no model_file: the checkpoint exported on the fly
        "onnxruntime_exported": [f"checkpoint={trained}"],
    }
    scratch = tmp_path / "system-temp"  # where the on-the-fly exports go: nothing of them may be left there
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    beside = sorted(Path(trained).parent.iterdir())
    vectors = {}
    for name, args in runs.items():
        engine = name.removesuffix("_exported")
        predict.run(compose("predict", [*common, *args, f"engine={engine}", f"out_dir={tmp_path / name / 'pred'}"]))
        vectorize.run(compose("vectorize", [f"pred_dir={tmp_path / name / 'pred'}", f"out_dir={tmp_path / name / 'vec'}"]))
        vectors[name] = load_vectors(tmp_path / name / "vec" / f"{aoi}.parquet")[0]
    stems = sorted(p.name for p in (tmp_path / "torch" / "pred" / aoi).glob("*.tif"))
    assert stems
    ref = vectors["torch"]
    assert len(ref) > 20  # a trained model: real footprints to compare
    for name in ("onnxruntime", "openvino"):
        for stem in stems:
            a = read_prediction(tmp_path / "torch" / "pred" / aoi / stem)[0]
            b = read_prediction(tmp_path / name / "pred" / aoi / stem)[0]
            assert np.abs(a - b).max() <= 1.5 / 254  # the uint8 encoding's rounding, at most one level apart
        got = vectors[name]
        same = sorted(g.wkb for g in ref.geometry) == sorted(g.wkb for g in got.geometry)
        if not same:  # a pixel flipped at the threshold: footprints must still agree at F1 >= 0.99
            from spacenet7.metrics.matching import match

            tp = len(match(np.asarray(ref.geometry), np.asarray(got.geometry), 0.5, inclusive=True))
            assert 2 * tp / (len(ref) + len(got)) >= 0.99
    # the checkpoint exported on the fly is the compiled model file: the same rasters, and nothing of it is left
    # in the outputs, in the temporary folder or beside the checkpoint
    for engine in ("openvino", "onnxruntime"):
        for stem in stems:
            a = read_prediction(tmp_path / engine / "pred" / aoi / stem)[0]
            np.testing.assert_array_equal(read_prediction(tmp_path / f"{engine}_exported" / "pred" / aoi / stem)[0], a)

        def listing(name: str) -> list[str]:
            return sorted(p.relative_to(tmp_path / name).as_posix() for p in (tmp_path / name).rglob("*"))

        assert listing(f"{engine}_exported") == listing(engine)
    assert not list(scratch.iterdir())
    assert sorted(Path(trained).parent.iterdir()) == beside


def test_openvino_int8_is_quantized_and_accuracy_control_keeps_fp32_footprints(trained, synth_root, tmp_path):
    """compile int8=true (NNCF) quantizes the convolutions; int8_max_drop=0 puts layers back in float until the
    footprints on the calibration tiles agree with the torch fp32 network's as well as the float export's do
    (both run in fp32, as NNCF's accuracy control runs them)."""
    from spacenet7.compile import FootprintAgreement, calibration_tiles
    from spacenet7.models.runtime import int8_convolutions

    mosaics = sorted(str(p) for p in synth_root.glob("train/*/images/*.tif"))[:3]
    common = [f"checkpoint={trained}", "format=openvino", "int8=true", f"calibration=[{','.join(mosaics)}]"]
    common += ["calibration_tiles=6", "tile=128"]
    plain = compile_stage.run(compose("compile", [*common, "int8_overflow_fix=disable", f"out={tmp_path / 'int8.xml'}"]))[
        "model_file"
    ]
    half = compile_stage.run(compose("compile", [*common, "int8_overflow_fix=first_layer", f"out={tmp_path / 'half.xml'}"]))[
        "model_file"
    ]
    controlled = compile_stage.run(compose("compile", [*common, "int8_max_drop=0", f"out={tmp_path / 'ctl.xml'}"]))["model_file"]
    n_plain, n_conv = int8_convolutions(plain)
    n_controlled, _ = int8_convolutions(controlled)
    assert n_conv > 8 and n_plain >= n_conv - 2  # all but at most the first and last layers' inputs
    assert n_controlled <= n_plain
    ref = load_model(trained, device="cpu", amp=False)
    tiles = calibration_tiles(mosaics, ref, 6, 128)
    import openvino as ov

    fp = compile_stage.run(compose("compile", [f"checkpoint={trained}", "format=openvino", f"out={tmp_path / 'fp.xml'}"]))
    score, core = FootprintAgreement(ref.net, tiles), ov.Core()
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    float_score = score(core.compile_model(str(fp["model_file"]), "CPU", f32), tiles)
    compiled_ctl = core.compile_model(str(controlled), "CPU", f32)
    assert score(compiled_ctl, tiles) >= float_score > 0.9
    # NNCF also scores subsets and other orders (first a single tile): each tile meets its own reference
    assert score(compiled_ctl, tiles[::-1]) == score(compiled_ctl, tiles) and 0 <= score(compiled_ctl, tiles[2:3]) <= 1
    x = torch.from_numpy(np.concatenate(tiles))
    p_ref = predict_batch(ref, x, None)
    p_int8 = predict_batch(load_model_file(plain, Engine.openvino, amp=False), x, None)
    assert 0 < (p_int8 - p_ref).abs().mean().item() < 0.05  # int8 differs, but little on average
    assert read_meta(plain).upscale == read_meta(controlled).upscale == 2.0
    # the overflow fix reaches NNCF: the first convolution's int8 weights use 7 bits with first_layer, all 8 without
    assert first_conv_weight_range(half) <= 64 < first_conv_weight_range(plain)
    assert (read_meta(plain).int8_overflow_fix, read_meta(half).int8_overflow_fix) == ("disable", "first_layer")
    assert read_meta(fp["model_file"]).int8_overflow_fix == ""


def first_conv_weight_range(xml: Path) -> int:
    """max |w| of the int8 weight constant of an OpenVINO IR's first convolution."""
    import openvino as ov

    conv = next(op for op in ov.Core().read_model(str(xml)).get_ordered_ops() if op.get_type_name() == "Convolution")
    src = conv.input_value(1).get_node()
    while src.get_type_name() != "Constant":  # Multiply (scale) <- Convert <- the int8 constant
        src = src.input_value(0).get_node()
    data = src.get_data()
    assert data.dtype == np.int8
    return int(np.abs(data.astype(np.int32)).max())


def test_overflow_fix_auto_follows_the_cpu(tmp_path, monkeypatch):
    """auto: full 8-bit weights on CPUs with VNNI or AMX, NNCF's 7-bit first layer otherwise; read from cpuinfo."""
    from spacenet7 import compile as compile_module
    from spacenet7.config import OverflowFix
    from spacenet7.models.precision import cpu_has_vnni

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu avx512_vnni\n")
    assert not cpu_has_vnni(info)  # the first processor's flags
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx_vnni\n")
    assert cpu_has_vnni(info) and not cpu_has_vnni(tmp_path / "missing")
    for has, want in ((True, OverflowFix.disable), (False, OverflowFix.first_layer)):
        monkeypatch.setattr(compile_module, "cpu_has_vnni", lambda has=has: has)
        assert compile_module.resolve_overflow_fix(OverflowFix.auto) is want
        assert compile_module.resolve_overflow_fix(OverflowFix.enable) is OverflowFix.enable
    with pytest.raises(SN7Error, match="int8_overflow_fix"):
        compose("compile", ["format=onnx", "int8=true", "calibration=[a.tif]", "int8_overflow_fix=disable"])


def test_full_range_int8_warns_on_a_cpu_without_vnni(compiled, tmp_path, monkeypatch, caplog):
    """A model file quantized with full 8-bit weights, loaded where the CPU has no VNNI: one warning naming it."""
    import openvino as ov

    from spacenet7.models import inference

    model = ov.Core().read_model(str(compiled["openvino"]))
    meta = read_meta(compiled["openvino"])
    meta.int8_overflow_fix = "disable"
    model.set_rt_info(meta.to_json(), [META_KEY])
    xml = tmp_path / "full.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    for has in (True, False):
        monkeypatch.setattr(inference, "cpu_has_vnni", lambda has=has: has)
        caplog.clear()
        load_model_file(xml, Engine.openvino)
        warned = [r for r in caplog.records if "VNNI" in r.getMessage()]
        assert len(warned) == (0 if has else 1) and (has or str(xml) in warned[0].getMessage())


def test_int8_max_drop_needs_openvino_int8():
    with pytest.raises(SN7Error, match="int8_max_drop"):
        compose("compile", ["format=onnx", "int8=true", "calibration=[a.tif]", "int8_max_drop=0.01"])
    with pytest.raises(SN7Error, match="int8_max_iterations=-1 must be >= 0"):
        compose("compile", ["int8_max_iterations=-1"])
    assert compose("compile", ["int8_max_iterations=null"]).int8_max_iterations is None


def test_model_file_errors_are_one_line(trained, compiled, synth_root, tmp_path):
    bare = tmp_path / "bare.onnx"
    m = onnx.load(str(compiled["onnx"]))
    del m.metadata_props[:]
    onnx.save(m, str(bare))
    with pytest.raises(SN7Error, match="no spacenet7 metadata"):
        predict.run(
            compose(
                "predict", [f"data_root={synth_root}", "engine=onnxruntime", f"model_file={bare}", f"out_dir={tmp_path / 'p'}"]
            )
        )
    assert not (tmp_path / "p").exists()
    # metadata that disagrees with the data: a model exported for 5-band imagery
    wrong = tmp_path / "wrong.onnx"
    m = onnx.load(str(compiled["onnx"]))
    doc = json.loads(next(p.value for p in m.metadata_props if p.key == META_KEY))
    doc["input"]["count"] = 5
    onnx.helper.set_model_props(m, {META_KEY: json.dumps(doc)})
    onnx.save(m, str(wrong))
    with pytest.raises(SN7Error, match=r"has 4 band\(s\) but input.count=5.*wrong.onnx was exported for"):
        predict.run(
            compose(
                "predict", [f"data_root={synth_root}", "engine=onnxruntime", f"model_file={wrong}", f"out_dir={tmp_path / 'p'}"]
            )
        )
    doc["upscale"] = 0
    onnx.helper.set_model_props(m, {META_KEY: json.dumps(doc)})
    onnx.save(m, str(wrong))
    with pytest.raises(SN7Error, match="bad spacenet7 metadata.*upscale 0"):
        read_meta(wrong)
    with pytest.raises(SN7Error, match="runs .onnx files"):
        load_model_file(compiled["openvino"], Engine.onnxruntime)
    with pytest.raises(SN7Error, match="set model_file="):
        compose("predict", ["engine=openvino"])
    with pytest.raises(SN7Error, match="model= .* is checked by engine=torch only"):
        compose("predict", ["engine=openvino", f"checkpoint={trained}", "model={encoder_depth:3}"])
    with pytest.raises(SN7Error, match="exports the checkpoint on this machine.*export it first"):
        compose("predict", ["engine=openvino", f"checkpoint={trained}", "cluster.mode=address", "cluster.address=tcp://h:8786"])
    with pytest.raises(SN7Error, match="model file not found"):
        read_meta(tmp_path / "missing.xml")


def test_missing_runtime_package_names_the_extra(compiled, tmp_path):
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from spacenet7.config import Engine\nfrom spacenet7.models.inference import load_model_file\n"
        f"load_model_file({str(compiled['onnx'])!r}, Engine.onnxruntime)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode != 0 and "onnxruntime package is not installed: pip install 'spacenet7[fast]'" in r.stderr


def test_an_on_the_fly_export_without_its_package_is_refused_when_composed(trained, monkeypatch):
    """recipe=real predicts with OpenVINO: without the package the pipeline must stop before training, not at predict."""
    import spacenet7.config as config

    real = config.find_spec
    monkeypatch.setattr(config, "find_spec", lambda name: None if name == "openvino" else real(name))
    with pytest.raises(SN7Error, match=r"engine=openvino exports the checkpoint with openvino, not installed: pip install"):
        compose("predict", ["engine=openvino", f"checkpoint={trained}"])
    with pytest.raises(SN7Error, match=r"engine=openvino exports the checkpoint with openvino, not installed"):
        compose("pipeline", ["recipe=real", "run_dir=unused"])
    compose("predict", ["engine=onnxruntime", f"checkpoint={trained}"])  # onnx and onnxruntime are there


def test_compile_cli_refuses_a_bad_checkpoint_in_one_line(tmp_path):
    env_py = [sys.executable, "-m", "spacenet7", "compile"]
    root = str(Path(__file__).resolve().parents[1])
    r = subprocess.run([*env_py, f"checkpoint={tmp_path / 'nope.ckpt'}"], capture_output=True, text=True, cwd=root)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("spacenet7 compile: error:")
    assert "checkpoint not found" in r.stderr and not list(tmp_path.iterdir())


PARENT = """
import concurrent.futures, multiprocessing, os, sys, time
from spacenet7.models.runtime import die_with_parent

if __name__ == "__main__":
    guard = sys.argv[1] == "guarded"
    kw = {"initializer": die_with_parent, "initargs": (os.getpid(),)} if guard else {}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx, **kw) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 120).result()
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has ended (in a container nobody may reap it)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("mode", ["guarded", "plain"])
def test_quantizer_process_dies_with_a_killed_parent(tmp_path, mode):
    """The spawned quantizer's initializer (die_with_parent) ends it when compile is killed, even by SIGKILL;
    a plain spawned worker (the control) outlives its parent."""
    import signal
    import time

    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline and mode == "guarded":
            time.sleep(0.1)
        if mode == "plain":
            time.sleep(1.0)
        assert _alive(child) == (mode == "plain")
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
