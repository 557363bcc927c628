"""Bad input and faults, as a new user meets them on the CLI (issue: nothing silent, nothing lost).

Every case of the table runs the real CLI entry point and asserts three things:

- the exit code (1: the run failed; 2: usage);
- one line on stderr, ``spacenet7 <stage>: error: ...``, naming the file or the config key, and no
  traceback;
- no partial output: no ``*.partial`` temporary file anywhere, and the outputs the case names do
  not exist.

The kill tests are real: a subprocess SIGKILLs itself in the middle of a write (just before the
rename; ``SPACENET7_KILL_BEFORE_RENAME``), then the same stage and the next one run again with no
hand cleanup.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin

from spacenet7.cli import main
from spacenet7.data.sn7 import scan

EXE = [sys.executable, "-m", "spacenet7"]
PROGRESS = re.compile(r"\d+%\|")  # tqdm progress bars share stderr; they are not messages


@pytest.fixture(autouse=True)
def _log_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPACENET7_LOG_DIR", str(tmp_path / "hydra-logs"))


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run ``spacenet7 *argv`` in-process: (exit code, stderr lines)."""
    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err.replace("\r", "\n").splitlines()
    return code, [line for line in err if line.strip() and not PROGRESS.search(line)]


def partials(folder: Path) -> list[Path]:
    """Temporary files, with their side files (a GeoPackage's ``.partial-journal``)."""
    return [p for p in folder.rglob("*.partial*")]


def write_tif(path: Path, array: np.ndarray, crs: str | None = "EPSG:3857", **kw) -> Path:
    """A small GeoTIFF (EPSG:3857, 4.78 m pixels unless told otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="GTiff",
        width=array.shape[2],
        height=array.shape[1],
        count=array.shape[0],
        dtype=array.dtype.name,
        transform=from_origin(1e6, 2e6, 4.78, 4.78),
        **kw,
    )
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(array)
    return path


@pytest.fixture
def one_aoi(synth_root, tmp_path) -> tuple[Path, str]:
    """A copy of one synthetic AOI (6 months) under ``tmp/data/train``: (data root, AOI)."""
    aoi = sorted(scan(synth_root))[0]
    shutil.copytree(synth_root / "train" / aoi, tmp_path / "data" / "train" / aoi)
    return tmp_path / "data", aoi


@pytest.fixture(scope="module")
def trained(tiny_run) -> Path:
    return tiny_run[0] / "train" / "checkpoints" / "best.ckpt"


def _image(root: Path, aoi: str, k: int = 0) -> Path:
    return scan(root)[aoi][k].image


# ---------------------------------------------------------------------------------------------
# The table: (id, build(tmp, ctx) -> (argv, outputs that must not exist), expected text in the line,
# what the line must name)


@dataclass
class Case:
    id: str
    build: Callable[[Path, dict], tuple[list[str], list[Path]]]
    expect: str
    names: Callable[[Path, dict], str] = field(default=lambda t, c: "")
    code: int = 1


def _uint16(t, c):
    root, aoi = c["data"]
    img = _image(root, aoi)
    with rasterio.open(img) as ds:
        a, prof = ds.read().astype(np.uint16) * 40, ds.profile
    img.unlink()
    with rasterio.open(img, "w", **{**prof, "dtype": "uint16"}) as ds:
        ds.write(a)
    c["file"] = img
    return ["chip", f"data_root={root}", f"out_dir={t / 'chips'}"], [t / "chips" / "chips.json"]


def _three_band(t, c):
    root, aoi = c["data"]
    img = _image(root, aoi)
    with rasterio.open(img) as ds:
        a = ds.read()
    img.unlink()
    c["file"] = write_tif(img, a[:3])
    return ["chip", f"data_root={root}", f"out_dir={t / 'chips'}"], [t / "chips" / "chips.json"]


def _no_crs(t, c):
    root, aoi = c["data"]
    img = _image(root, aoi, 1)
    with rasterio.open(img) as ds:
        a = ds.read()
    img.unlink()
    c["file"] = write_tif(img, a, crs=None)
    return ["chip", f"data_root={root}", f"out_dir={t / 'chips'}"], [t / "chips" / "chips.json"]


def _truncated_tif(t, c):
    root, aoi = c["data"]
    img = _image(root, aoi, 2)
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 3])
    c["file"] = img
    return ["chip", f"data_root={root}", f"out_dir={t / 'chips'}"], [t / "chips" / "chips.json"]


def _misnamed(t, c):
    root, aoi = c["data"]
    c["file"] = shutil.copy(_image(root, aoi), root / "train" / aoi / "images" / "mosaic_march.tif")
    return ["chip", f"data_root={root}", f"out_dir={t / 'chips'}"], [t / "chips" / "chips.json"]


def _duplicate_month(t, c):
    root, aoi = c["data"]
    img = _image(root, aoi)
    c["file"] = shutil.copy(img, img.with_suffix(".TIF"))
    return ["chip", f"data_root={root}", f"out_dir={t / 'chips'}"], [t / "chips" / "chips.json"]


def _too_deep(t, c):
    root, _ = c["data"]
    c["file"] = root / "train"
    return ["chip", f"data_root={root / 'train'}", f"out_dir={t / 'chips'}"], [t / "chips" / "chips.json"]


def _pipeline_too_deep(t, c):
    root, aoi = c["data"]
    c["file"] = root / "train"
    return (["pipeline", f"data_root={root / 'train'}", f"run_dir={t / 'run'}"], [root / "train" / "train", t / "run" / "chips"])


def _synth_into_data(t, c):
    root, _ = c["data"]
    c["file"] = root
    return ["synth", f"out_dir={root}", "n_aois=1", "n_months=1", "size=64"], [root / ".spacenet7-synth.json"]


def _chips_no_meta(t, c):
    d = t / "chips"
    d.mkdir()
    pd.DataFrame({"path": ["a.tif"], "split": ["val"]}).to_parquet(d / "index.parquet")
    c["file"] = d / "chips.json"
    return ["train", f"chip_dir={d}", f"run_dir={t / 'train'}", "logger.wandb=false"], [t / "train" / "checkpoints"]


def _chips_truncated_index(t, c):
    d = t / "chips"
    shutil.copytree(c["chips"], d)
    data = (d / "index.parquet").read_bytes()
    (d / "index.parquet").write_bytes(data[: len(data) // 2])
    c["file"] = d / "index.parquet"
    return ["train", f"chip_dir={d}", f"run_dir={t / 'train'}", "logger.wandb=false"], [t / "train" / "checkpoints"]


def _chip_file_missing(t, c):
    d = t / "chips"
    shutil.copytree(c["chips"], d)
    first = sorted((d / "chips").rglob("*.tif"))[0]
    first.unlink()
    c["file"] = first
    return ["train", f"chip_dir={d}", f"run_dir={t / 'train'}", "logger.wandb=false"], [t / "train" / "checkpoints"]


def _vectors_truncated(t, c):
    d = t / "vec"
    shutil.copytree(c["vectors"], d)
    p = sorted(d.glob("*.parquet"))[0]
    p.write_bytes(p.read_bytes()[:100])
    c["file"] = p
    return ["export", f"vec_dir={d}", f"out_dir={t / 'fp'}", f"submission={t / 'sub.csv'}"], [t / "sub.csv"]


def _vectors_no_json(t, c):
    d = t / "vec"
    shutil.copytree(c["vectors"], d)
    p = sorted(d.glob("*.json"))[0]
    p.unlink()
    c["file"] = p
    return ["export", f"vec_dir={d}", f"out_dir={t / 'fp'}", f"submission={t / 'sub.csv'}"], [t / "sub.csv"]


def _submission(t, c, filename: str, ident: str) -> tuple[list[str], list[Path]]:
    p = t / "proposal.csv"
    p.write_text(f'filename,id,geometry\n{filename},{ident},"POLYGON ((0 0, 4 0, 4 4, 0 4, 0 0))"\n')
    c["file"] = p
    return ["evaluate", f"truth={c['truth']}", f"proposal={p}", f"out={t / 'm.json'}"], [t / "m.json"]


def _month_13(t, c):
    return _submission(t, c, "global_monthly_2018_13_mosaic_L15-0001E-0001N_1_1_13", "1")


def _float_id(t, c):
    return _submission(t, c, "global_monthly_2018_01_mosaic_L15-0001E-0001N_1_1_13", "1.7")


def _out_under_file(t, c):
    (t / "afile").write_text("x")
    c["file"] = t / "afile" / "m.json"
    args, _ = _submission(t, c, "global_monthly_2018_01_mosaic_L15-0001E-0001N_1_1_13", "1")
    return [*args[:-1], f"out={t / 'afile' / 'm.json'}"], []


def _predict_out_under_file(t, c):
    root, _ = c["data"]
    (t / "afile").write_text("x")
    c["file"] = t / "afile" / "pred"
    return ["predict", f"checkpoint={c['ckpt']}", f"data_root={root}", f"out_dir={t / 'afile' / 'pred'}"], []


def _predict_no_checkpoint(t, c):
    root, _ = c["data"]
    c["file"] = t / "nope.ckpt"
    return ["predict", f"checkpoint={t / 'nope.ckpt'}", f"data_root={root}", f"out_dir={t / 'pred'}"], [t / "pred"]


def _own_file_without_aoi(t, c):
    root, aoi = c["data"]
    c["file"] = shutil.copy(_image(root, aoi), t / "my_area.tif")
    return ["predict", f"checkpoint={c['ckpt']}", f"images=[{c['file']}]", f"out_dir={t / 'pred'}"], [t / "pred"]


def _own_files_partly_dated(t, c):
    root, aoi = c["data"]
    a = shutil.copy(_image(root, aoi, 0), t / "area_2019-03.tif")
    b = shutil.copy(_image(root, aoi, 1), t / "area_latest.tif")
    c["file"] = Path(b)
    return ["predict", f"checkpoint={c['ckpt']}", f"images=[{a},{b}]", "aoi=area", f"out_dir={t / 'pred'}"], [t / "pred"]


def _predict_uint16(t, c):
    root, aoi = c["data"]
    c["file"] = write_tif(t / "area_2019-03.tif", np.full((4, 64, 64), 1000, np.uint16))
    return ["predict", f"checkpoint={c['ckpt']}", f"images=[{c['file']}]", "aoi=area", f"out_dir={t / 'pred'}"], [t / "pred"]


# checkpoints forged by hand: nothing in one may run (issue 32 A) or reach prediction unchecked (B)
SMP_MODEL = {
    "_target_": "segmentation_models_pytorch.create_model",
    "arch": "Unet",
    "encoder_name": "resnet18",
    "encoder_weights": None,
    "in_channels": 3,
    "classes": 3,
}


class _Exec:
    """Unpickling it runs code: what a hostile file smuggles in (here: it writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _torch_load_payload(marker: Path) -> dict:
    """A model node that Hydra would instantiate as torch.load(BytesIO(<pickle>), weights_only=False)."""
    return {
        "_target_": "torch.load",
        "f": {"_target_": "io.BytesIO", "_args_": [pickle.dumps(_Exec(marker))]},
        "weights_only": False,
    }


def _write_text_payload(marker: Path) -> dict:
    """A model node that Hydra would instantiate as pathlib.Path(marker).write_text("ran")."""
    return {"_target_": "pathlib.Path.write_text", "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "ran"]}


def _forged_ckpt(path: Path, model, chip_meta=None) -> Path:
    import torch

    meta = {"upscale": 1.0} if chip_meta is None else chip_meta
    torch.save({"state_dict": {}, "hyper_parameters": {"model": model, "chip_meta": meta}}, path)
    return path


def _hostile(entry: str, payload: Callable[[Path], dict]) -> Callable:
    """``entry`` (predict, compile or serve from a run folder's own checkpoint) on a checkpoint whose
    model node names a callable: the marker file it would write must not appear."""

    def build(t, c):
        marker = t / "pwned"
        if entry == "serve":  # a run folder whose own best.ckpt is hostile: loaded at start-up
            run = t / "run"
            shutil.copytree(c["vectors"], run / "vectors")
            (run / "train" / "checkpoints").mkdir(parents=True)
            c["file"] = _forged_ckpt(run / "train" / "checkpoints" / "best.ckpt", payload(marker))
            return ["serve", f"run_dir={run}", "port=0"], [marker]
        c["file"] = _forged_ckpt(t / "hostile.ckpt", payload(marker))
        if entry == "compile":
            return ["compile", f"checkpoint={c['file']}", f"out={t / 'm.onnx'}"], [marker, t / "m.onnx"]
        root, _ = c["data"]
        return ["predict", f"checkpoint={c['file']}", f"data_root={root}", f"out_dir={t / 'pred'}"], [marker, t / "pred"]

    return build


def _bad_meta(model=SMP_MODEL, chip_meta=None) -> Callable:
    def build(t, c):
        root, _ = c["data"]
        c["file"] = _forged_ckpt(t / "forged.ckpt", model, chip_meta)
        return ["predict", f"checkpoint={c['file']}", f"data_root={root}", f"out_dir={t / 'pred'}"], [t / "pred"]

    return build


def _run_dir_under_file(t, c):
    (t / "afile").write_text("x")
    c["file"] = t / "afile"
    return ["train", f"run_dir={t / 'afile' / 'run'}", f"chip_dir={t / 'chips'}"], [t / "afile" / "run"]


def _run_dir_read_only(t, c):
    ro = t / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # permissions do not stop root: what a user without root meets, as os.access reports it
        real = os.access
        c["monkeypatch"].setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw))
    c["file"] = ro
    return ["train", f"run_dir={ro / 'run'}", f"chip_dir={t / 'chips'}"], [ro / "run"]


def _cuda_without_gpu(t, c):
    import torch

    c["monkeypatch"].setattr(torch.cuda, "is_available", lambda: False)
    root, _ = c["data"]
    c["file"] = ""
    return ["predict", f"checkpoint={c['ckpt']}", f"data_root={root}", f"out_dir={t / 'pred'}", "device=cuda"], [t / "pred"]


def _cluster_not_an_address(t, c):
    root, _ = c["data"]
    c["file"] = ""
    return (
        ["chip", f"data_root={root}", f"out_dir={t / 'chips'}", "cluster.mode=address", "cluster.address=notanaddress"],
        [t / "chips" / "chips.json"],
    )


def _proposal(geometry: str, ident: str = "1") -> Callable:
    def build(t, c):
        p = t / "proposal.csv"
        p.write_text(f'filename,id,geometry\nglobal_monthly_2018_01_mosaic_L15-0001E-0001N_1_1_13,{ident},"{geometry}"\n')
        c["file"] = p
        return ["evaluate", f"truth={c['truth']}", f"proposal={p}", f"out={t / 'm.json'}"], [t / "m.json"]

    return build


def _resume_from(kind: str) -> Callable:
    def build(t, c):
        last = t / "train" / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True)
        if kind == "truncated":
            data = (Path(c["ckpt"]).parent / "last.ckpt").read_bytes()
            last.write_bytes(data[: len(data) // 2])
        else:  # a pickle that runs code when Lightning (weights_only=False) would load it
            with last.open("wb") as f:
                pickle.dump({"state_dict": {}, "payload": _Exec(t / "pwned")}, f)
        c["file"] = last
        argv = ["train", f"chip_dir={c['chips']}", f"run_dir={t / 'train'}", "resume=true", "logger.wandb=false"]
        return argv, [t / "pwned", t / "train" / "metrics.json"]

    return build


def _onnx_input_misnamed(t, c):
    import onnx
    from onnx import TensorProto, helper

    from spacenet7.data.bands import InputSpec
    from spacenet7.models.runtime import META_KEY, ModelMeta

    dims = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["prob"])],
        "misnamed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = ModelMeta(upscale=1.0, input=InputSpec().to_dict(), classes=["footprint", "boundary", "contact"], stride=1)
    helper.set_model_props(model, {META_KEY: meta.to_json()})
    onnx.save(model, str(t / "misnamed.onnx"))
    root, _ = c["data"]
    c["file"] = t / "misnamed.onnx"
    argv = ["predict", "engine=onnxruntime", f"model_file={c['file']}", f"data_root={root}", f"out_dir={t / 'pred'}"]
    return argv, [t / "pred"]


def _disk_full(stage: str) -> Callable:
    """GDAL's CPLE_FileIOError (predict) or pyogrio's FeatureError (export) from a write on a full disk."""

    def build(t, c):
        import shutil as sh
        from collections import namedtuple

        import pyogrio
        import rasterio.shutil
        from rasterio._err import CPLE_FileIOError

        mp = c["monkeypatch"]
        mp.setattr(sh, "disk_usage", lambda p: namedtuple("U", "total used free")(100, 100, 0))
        if stage == "predict":

            def full(*a, **k):
                raise CPLE_FileIOError(3, 1, "Free disk space available is 0 bytes, whereas 65536 are at least necessary.")

            mp.setattr(rasterio.shutil, "copy", full)
            root, aoi = c["data"]
            c["file"] = t / "pred" / aoi
            return ["predict", f"checkpoint={c['ckpt']}", f"data_root={root}", f"out_dir={t / 'pred'}", "tta=false"], [
                t / "pred" / aoi / probability_record()
            ]

        def full_vec(*a, **k):
            raise pyogrio.errors.FeatureError("failed to write feature 3 to .x.gpkg.partial")

        mp.setattr(pyogrio, "write_dataframe", full_vec)
        c["file"] = t / "fp"
        return ["export", f"vec_dir={c['vectors']}", f"out_dir={t / 'fp'}", f"submission={t / 'sub.csv'}"], [t / "sub.csv"]

    return build


def probability_record() -> str:
    from spacenet7.io.probability import COMPLETE

    return COMPLETE


def _serve_months_missing(t, c):
    run = t / "run"
    shutil.copytree(c["vectors"], run / "vectors")
    month_list = sorted((run / "vectors").glob("*.json"))[0]
    doc = json.loads(month_list.read_text())
    del doc["months"]
    month_list.write_text(json.dumps(doc))
    c["file"] = month_list
    return ["serve", f"run_dir={run}", "port=0"], []


def _knob(stage: str, *args: str) -> Callable:
    def build(t, c):
        extra = {
            "train": [f"run_dir={t / 'train'}"],
            "predict": [f"out_dir={t / 'pred'}"],
            "chip": [f"out_dir={t / 'chips'}"],
            "pipeline": [f"run_dir={t / 'run'}", f"data_root={t / 'data2'}"],
        }.get(stage, [])
        return [stage, *args, *extra], [t / "train", t / "pred", t / "chips", t / "run", t / "data2"]

    return build


CASES = [
    # knobs validated when the config is composed, before any work
    Case("predict-tile-negative", _knob("predict", "tile=-5"), "tile=-5 must be > 0", lambda t, c: "tile"),
    Case(
        "predict-overlap-ge-tile",
        _knob("predict", "overlap=300"),
        "overlap=300 must be >= 0 and smaller than tile=256",
        lambda t, c: "overlap",
    ),
    Case(
        "predict-fusion-weight",
        _knob("predict", "fusion_weight=5"),
        "fusion_weight=5.0 must be within [0, 1]",
        lambda t, c: "fusion_weight",
    ),
    Case("predict-batch-zero", _knob("predict", "batch_size=0"), "batch_size=0 must be > 0", lambda t, c: "batch_size"),
    Case("predict-block-zero", _knob("predict", "block=0"), "block=0 must be > 0", lambda t, c: "block"),
    Case("predict-typo", _knob("predict", "tiel=512"), "Key 'tiel' not in 'PredictConfig'", lambda t, c: "tiel"),
    Case("predict-bad-type", _knob("predict", "tile=abc"), "could not be converted to Integer", lambda t, c: "tile=abc"),
    Case(
        "predict-input-key", _knob("predict", "+input={rgbb:[1,2,3]}"), "input has unknown key(s) ['rgbb']", lambda t, c: "rgbb"
    ),
    Case(
        "chip-input-scaling",
        _knob("chip", "input.scaling=stretch"),
        "expected one of [none, fixed, percentile]",
        lambda t, c: "input.scaling",
    ),
    Case(
        "chip-overlap",
        _knob("chip", "chip_size=128", "overlap=128"),
        "overlap=128 must be >= 0 and smaller than chip_size=128",
        lambda t, c: "overlap",
    ),
    Case("train-epochs-zero", _knob("train", "max_epochs=0"), "max_epochs=0 must be > 0", lambda t, c: "max_epochs"),
    Case(
        "train-on-buildings-above-one",
        _knob("train", "windows.on_buildings=1.5"),
        "windows.on_buildings=1.5 must be within [0, 1]",
        lambda t, c: "on_buildings",
    ),
    Case(
        "vectorize-track-method",
        _knob("vectorize", "track.method=nearest"),
        "Invalid value 'nearest', expected one of [hungarian, greedy]",
        lambda t, c: "track.method",
    ),
    Case(
        "evaluate-iou-threshold",
        _knob("evaluate", "iou_threshold=1.5"),
        "iou_threshold=1.5 must be between 0 and 1",
        lambda t, c: "iou_threshold",
    ),
    Case(
        "pipeline-typo-before-any-work",
        _knob("pipeline", "predict.tiel=512"),
        "Key 'tiel' not in 'PredictConfig'",
        lambda t, c: "tiel",
    ),
    Case(
        "predict-tta-views",
        _knob("predict", "tta_views=d8"),
        "Invalid value 'd8', expected one of [d4, flips]",
        lambda t, c: "tta_views",
    ),
    Case(
        "chip-layout",
        _knob("chip", "layout=tiles"),
        "Invalid value 'tiles', expected one of [chips, rasters]",
        lambda t, c: "layout",
    ),
    Case(
        "pipeline-holdout",
        _knob("pipeline", "holdout=month"),
        "Invalid value 'month', expected one of [aoi, band]",
        lambda t, c: "holdout",
    ),
    Case(
        "pipeline-stage-check",
        _knob("pipeline", "predict.overlap=300"),
        "overlap=300 must be >= 0 and smaller than tile=256",
        lambda t, c: "overlap",
    ),
    Case(
        "pipeline-handoff-by-hand",
        _knob("pipeline", "predict.out_dir=/elsewhere"),
        "predict.out_dir is wired by the pipeline",
        lambda t, c: "run_dir",
    ),
    Case(
        "pipeline-group-option",
        _knob("pipeline", "train/model=unett"),
        "Could not find 'train/model/unett'",
        lambda t, c: "train/model",
    ),
    # imagery
    Case(
        "uint16-without-scaling",
        _uint16,
        "is uint16, but input.scaling=none reads 8-bit imagery only",
        lambda t, c: str(c["file"]),
    ),
    Case("three-bands", _three_band, "has 3 band(s) but input.count=4", lambda t, c: str(c["file"])),
    Case("no-crs", _no_crs, "raster has no CRS", lambda t, c: str(c["file"])),
    Case("truncated-mosaic", _truncated_tif, "", lambda t, c: str(c["file"])),
    Case("misnamed-mosaic", _misnamed, "misnamed image", lambda t, c: str(c["file"])),
    Case("two-files-one-month", _duplicate_month, "a second image for", lambda t, c: str(c["file"].parent)),
    Case("data-root-one-level-too-deep", _too_deep, "one level too deep", lambda t, c: str(c["file"])),
    Case("pipeline-real-root-too-deep", _pipeline_too_deep, "one level too deep", lambda t, c: str(c["file"])),
    Case(
        "synth-into-real-data",
        _synth_into_data,
        "is not empty and was not made by `spacenet7 synth`",
        lambda t, c: str(c["file"]),
    ),
    # stage hand-offs
    Case("chips-json-missing", _chips_no_meta, "chip metadata not found", lambda t, c: str(c["file"])),
    Case("chip-index-truncated", _chips_truncated_index, "unreadable chip index", lambda t, c: str(c["file"])),
    Case("chip-file-missing", _chip_file_missing, "listed in the chip index but not found", lambda t, c: str(c["file"])),
    Case("vectors-truncated", _vectors_truncated, "unreadable GeoParquet", lambda t, c: str(c["file"])),
    Case(
        "vectors-month-list-missing",
        _vectors_no_json,
        "month list of the vectorize output not found",
        lambda t, c: str(c["file"]),
    ),
    Case("evaluate-month-13", _month_13, "month 13", lambda t, c: str(c["file"])),
    Case("evaluate-float-id", _float_id, "id '1.7' is not an integer", lambda t, c: str(c["file"])),
    Case("evaluate-out-under-a-file", _out_under_file, "is a file, not a folder", lambda t, c: str(c["file"].parent)),
    Case("predict-out-under-a-file", _predict_out_under_file, "is a file, not a folder", lambda t, c: str(c["file"])),
    Case("predict-checkpoint-missing", _predict_no_checkpoint, "not found", lambda t, c: str(c["file"])),
    Case("own-file-without-aoi-name", _own_file_without_aoi, "give the area a name: aoi=<name>", lambda t, c: str(c["file"])),
    Case("own-files-partly-dated", _own_files_partly_dated, "no date in its name or TIFF tags", lambda t, c: str(c["file"])),
    Case("own-uint16-file", _predict_uint16, "is uint16, but input.scaling=none", lambda t, c: str(c["file"])),
    # issue 32 A: a checkpoint is data; nothing in it is instantiated, in any entry point
    *(
        Case(
            f"checkpoint-runs-{name}-in-{entry}",
            _hostile(entry, payload),
            f"not a spacenet7 checkpoint (model._target_={target!r}; only segmentation_models_pytorch.create_model",
            lambda t, c: str(c["file"]),
        )
        for entry in ("predict", "compile", "serve")
        for name, payload, target in (
            ("torch-load", _torch_load_payload, "torch.load"),
            ("write-text", _write_text_payload, "pathlib.Path.write_text"),
        )
    ),
    Case(
        "checkpoint-nested-target",
        _bad_meta(model={**SMP_MODEL, "aux_params": {"_target_": "os.system", "_args_": ["true"]}}),
        "not a spacenet7 checkpoint (model.aux_params._target_ is not allowed",
        lambda t, c: str(c["file"]),
    ),
    # issue 32 B: one line, no traceback
    Case("checkpoint-upscale-zero", _bad_meta(chip_meta={"upscale": 0}), "chip_meta.upscale=0 must be a positive number"),
    Case("checkpoint-upscale-negative", _bad_meta(chip_meta={"upscale": -2}), "chip_meta.upscale=-2 must be a positive"),
    Case("checkpoint-upscale-text", _bad_meta(chip_meta={"upscale": "abc"}), "chip_meta.upscale='abc' must be a positive"),
    Case(
        "checkpoint-input-unknown-key",
        _bad_meta(chip_meta={"upscale": 1.0, "input": {"rgbb": [1, 2, 3]}}),
        "not a spacenet7 checkpoint (chip_meta.input: ",
        lambda t, c: "rgbb",
    ),
    Case(
        "checkpoint-model-none",
        _bad_meta(model=None),
        "not a spacenet7 checkpoint (model is NoneType",
        lambda t, c: str(c["file"]),
    ),
    Case("train-run-dir-under-a-file", _run_dir_under_file, "is a file, not a folder", lambda t, c: str(c["file"])),
    Case("train-run-dir-read-only", _run_dir_read_only, "is not writable", lambda t, c: str(c["file"])),
    Case(
        "predict-cuda-without-gpu",
        _cuda_without_gpu,
        "device=cuda: torch sees no CUDA GPU",
        lambda t, c: "device=auto or device=cpu",
    ),
    Case("cluster-not-an-address", _cluster_not_an_address, "cannot reach the Dask scheduler", lambda t, c: "notanaddress"),
    Case("evaluate-id-inf", _proposal("POLYGON ((0 0, 4 0, 4 4, 0 4, 0 0))", "inf"), "id 'inf' is not an integer"),
    Case("evaluate-nan-coordinate", _proposal("POLYGON ((0 0, 4 0, 4 NaN, 0 4, 0 0))"), "row 2: coordinate [4.0, nan]"),
    Case("evaluate-huge-coordinate", _proposal("POLYGON ((0 0, 1e300 0, 4 4, 0 4, 0 0))"), "is not a finite pixel coordinate"),
    Case("resume-truncated-last-ckpt", _resume_from("truncated"), "not a loadable checkpoint", lambda t, c: str(c["file"])),
    Case("resume-pickled-last-ckpt", _resume_from("pickled"), "not a loadable checkpoint", lambda t, c: str(c["file"])),
    Case("onnx-input-misnamed", _onnx_input_misnamed, "input(s) ['x'] and output(s) ['prob']", lambda t, c: str(c["file"])),
    Case(
        "predict-disk-full", _disk_full("predict"), "could not be written: No space left on device", lambda t, c: str(c["file"])
    ),
    Case("export-disk-full", _disk_full("export"), "could not be written: No space left on device", lambda t, c: str(c["file"])),
    Case("serve-month-list-without-months", _serve_months_missing, "not a vectorize month list", lambda t, c: str(c["file"])),
]


@pytest.fixture(scope="module")
def hand_offs(tiny_run):
    run = tiny_run[0]
    return {
        "chips": run / "chips",
        "vectors": run / "vectors",
        "truth": None,
        "ckpt": run / "train" / "checkpoints" / "best.ckpt",
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_nonzero_and_leaves_nothing(case, one_aoi, hand_offs, monkeypatch, tmp_path, capsys):
    ctx = {**hand_offs, "data": one_aoi, "monkeypatch": monkeypatch}
    truth = tmp_path / "truth.csv"
    truth.write_text(
        'filename,id,geometry\nglobal_monthly_2018_01_mosaic_L15-0001E-0001N_1_1_13,1,"POLYGON ((0 0, 4 0, 4 4, 0 4, 0 0))"\n'
    )
    ctx["truth"] = truth
    argv, outputs = case.build(tmp_path, ctx)
    code, err = cli(capsys, *argv)
    assert code == case.code, err
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith(f"spacenet7 {argv[0]}: error: "), line
    assert case.expect in line, line
    assert case.names(tmp_path, ctx) in line, line
    assert not partials(tmp_path), partials(tmp_path)
    for p in outputs:
        assert not p.exists(), p


# ---------------------------------------------------------------------------------------------
# Inputs that used to fail and must now work


def test_uint16_bgrn_with_an_input_spec_is_read_as_the_8_bit_rgba(one_aoi, tmp_path):
    """The same scene as 4-band uint16 BGRN (band 4 NIR, no alpha) reads back as the 8-bit RGB."""
    from spacenet7.data.bands import InputSpec
    from spacenet7.data.sn7 import read_image, records_from_files

    root, aoi = one_aoi
    rec = scan(root)[aoi][0]
    with rasterio.open(rec.image) as ds:
        rgba = ds.read()
    bgrn = np.stack([rgba[2], rgba[1], rgba[0], rgba[1]]).astype(np.uint16) * 10 + 500  # DN = 10 * value + 500
    path = write_tif(tmp_path / "scene_2019-05.tif", bgrn)
    spec = InputSpec(count=4, rgb=[3, 2, 1], alpha=None, scaling="fixed", range=[500, 500 + 2550])
    got = read_image(records_from_files([path], "scene")["scene"][0], spec=spec)
    assert np.abs(got.rgb.astype(int) - rgba[:3]).max() <= 1
    assert got.valid.all()
    pct = read_image(
        records_from_files([path], "scene")["scene"][0], spec=InputSpec(count=4, rgb=[3, 2, 1], alpha=None, scaling="percentile")
    )
    assert pct.rgb.dtype == np.uint8 and 0.01 < (pct.rgb == 255).mean() < 0.1  # 2-98 % stretch: a few % saturate


def test_chip_records_the_input_spec_and_predict_applies_it(trained, one_aoi, tmp_path):
    """chip -> checkpoint -> predict: the spec travels; a uint16 series predicts like its 8-bit original."""
    import torch

    from spacenet7 import predict
    from spacenet7.compose import compose
    from spacenet7.models.task import read_checkpoint

    root, aoi = one_aoi
    recs = scan(root)[aoi][:2]
    files = []
    for k, rec in enumerate(recs):
        with rasterio.open(rec.image) as ds:
            a = ds.read().astype(np.uint16)
        a[:3] = a[:3] * 10 + 500
        files.append(write_tif(tmp_path / "series" / f"scene_2020-0{k + 1}.tif", a))
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["chip_meta"]["input"] = {
        "count": 4,
        "rgb": [1, 2, 3],
        "alpha": 4,
        "scaling": "fixed",
        "range": [500.0, 3050.0],
        "percentiles": [2.0, 98.0],
    }
    torch.save(ckpt, tmp_path / "u16.ckpt")
    assert read_checkpoint(tmp_path / "u16.ckpt")[1]["chip_meta"]["input"]["scaling"] == "fixed"
    common = ["tta=false", "progress=false", "fusion=false", "tile=128", "overlap=32"]
    predict.run(
        compose(
            "predict",
            [
                f"checkpoint={tmp_path / 'u16.ckpt'}",
                f"images=[{','.join(map(str, files))}]",
                "aoi=scene",
                f"out_dir={tmp_path / 'p16'}",
                *common,
            ],
        )
    )
    predict.run(
        compose(
            "predict",
            [f"checkpoint={trained}", f"images=[{','.join(str(r.image) for r in recs)}]", f"out_dir={tmp_path / 'p8'}", *common],
        )
    )
    a = sorted((tmp_path / "p16" / "scene").glob("*.tif"))
    b = sorted((tmp_path / "p8" / aoi).glob("*.tif"))
    assert [p.name[:22] for p in a] == ["global_monthly_2020_01", "global_monthly_2020_02"]
    for x, y in zip(a, b):
        with rasterio.open(x) as dx, rasterio.open(y) as dy:
            assert np.abs(dx.read().astype(int) - dy.read().astype(int)).max() <= 3


def test_own_time_series_goes_through_predict_vectorize_export(trained, one_aoi, tmp_path, capsys):
    """Any GeoTIFFs with a date in the name, an AOI name given: predict, vectorize and export run."""
    root, aoi = one_aoi
    names = ["kigali_2019-03.tif", "kigali_2019-01.tif", "kigali_2019-02.tif"]
    files = [shutil.copy(r.image, tmp_path / n) for r, n in zip(scan(root)[aoi][:3], names)]
    for argv in (
        [
            "predict",
            f"checkpoint={trained}",
            f"images=[{','.join(map(str, files))}]",
            "aoi=kigali",
            f"out_dir={tmp_path / 'p'}",
            "tta=false",
            "progress=false",
        ],
        ["vectorize", f"pred_dir={tmp_path / 'p'}", f"out_dir={tmp_path / 'v'}"],
        ["export", f"vec_dir={tmp_path / 'v'}", f"out_dir={tmp_path / 'f'}", f"submission={tmp_path / 's.csv'}"],
    ):
        code, err = cli(capsys, *argv)
        assert code == 0, err
    months = json.loads((tmp_path / "v" / "kigali.json").read_text())["months"]
    assert [m["month"] for m in months] == ["2019-01", "2019-02", "2019-03"]
    assert (tmp_path / "f" / "kigali.gpkg").exists()


def test_undated_files_take_the_list_order_and_the_tiff_date_tag_counts(tmp_path):
    from spacenet7.data.sn7 import records_from_files

    a = write_tif(tmp_path / "first.tif", np.zeros((4, 8, 8), np.uint8))
    b = write_tif(tmp_path / "second.tif", np.zeros((4, 8, 8), np.uint8))
    recs = records_from_files([b, a], "x")["x"]
    assert [(r.image.name, r.month_key) for r in recs] == [("second.tif", "0001-01"), ("first.tif", "0001-02")]
    c = write_tif(tmp_path / "tagged.tif", np.zeros((4, 8, 8), np.uint8))
    with rasterio.open(c, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2021:07:14 10:00:00")
    assert records_from_files([c], "x")["x"][0].month_key == "2021-07"


def test_months_on_different_grids_are_aligned_by_predict(trained, one_aoi, tmp_path):
    """A month one pixel smaller than the others: predict puts every month on the first one's grid."""
    from spacenet7 import predict, vectorize
    from spacenet7.compose import compose

    root, aoi = one_aoi
    img = _image(root, aoi, 2)
    with rasterio.open(img) as ds:
        a, prof = ds.read(), ds.profile
    for sub in ("images", "images_masked"):
        p = root / "train" / aoi / sub / img.name
        if p.exists():
            p.unlink()
            with rasterio.open(p, "w", **{**prof, "width": prof["width"] - 1, "height": prof["height"] - 1}) as ds:
                ds.write(a[:, :-1, :-1])
    udm = scan(root)[aoi][2].udm
    if udm is not None:
        udm.unlink()
    predict.run(
        compose(
            "predict",
            [
                f"checkpoint={trained}",
                f"data_root={root}",
                f"out_dir={tmp_path / 'p'}",
                "tta=false",
                "progress=false",
                "tile=128",
                "overlap=32",
            ],
        )
    )
    grids = set()
    for p in sorted((tmp_path / "p" / aoi).glob("*.tif")):
        with rasterio.open(p) as ds:
            grids.add((ds.transform, ds.width, ds.height))
    assert len(grids) == 1 and len(list((tmp_path / "p" / aoi).glob("*.tif"))) == 6
    vectorize.run(compose("vectorize", [f"pred_dir={tmp_path / 'p'}", f"out_dir={tmp_path / 'v'}"]))


def test_a_fully_masked_month_is_skipped_with_a_warning(trained, one_aoi, tmp_path, caplog):
    from spacenet7 import predict
    from spacenet7.compose import compose

    root, aoi = one_aoi
    rec = scan(root)[aoi][1]
    masked = rec.image_masked or rec.image
    with rasterio.open(masked, "r+") as ds:
        ds.write(np.zeros((ds.height, ds.width), np.uint8), 4)
    with caplog.at_level("WARNING"):
        written = predict.run(
            compose(
                "predict",
                [
                    f"checkpoint={trained}",
                    f"data_root={root}",
                    f"out_dir={tmp_path / 'p'}",
                    "tta=false",
                    "progress=false",
                    "tile=128",
                    "overlap=32",
                ],
            )
        )
    assert len(written) == 5 and rec.stem not in {p.stem for p in written}
    assert any("no valid pixel" in r.getMessage() and rec.image.name in r.getMessage() for r in caplog.records)


def test_tif_in_capitals_is_read_and_macos_resource_forks_are_ignored(one_aoi, tmp_path):
    root, aoi = one_aoi
    img = _image(root, aoi, 0)
    img.rename(img.with_suffix(".TIF"))
    (img.parent / f"._{img.name}").write_bytes(b"\x00\x05\x16\x07 not a tiff")
    recs = scan(root)[aoi]
    assert len(recs) == 6 and recs[0].image.suffix == ".TIF"
    from spacenet7.data.sn7 import read_image

    assert read_image(recs[0]).rgb.shape[0] == 3


def test_repaired_label_polygons_are_counted_in_the_log(one_aoi, caplog):
    import geopandas as gpd
    from shapely.geometry import Polygon

    from spacenet7.data.sn7 import read_labels

    root, aoi = one_aoi
    rec = scan(root)[aoi][0]
    gdf = gpd.read_file(rec.labels_match)
    x0, y0 = gdf.geometry.iloc[0].bounds[:2]
    bowtie = Polygon([(x0, y0), (x0 + 20, y0 + 20), (x0 + 20, y0), (x0, y0 + 20)])  # self-intersecting
    gdf.loc[0, "geometry"] = bowtie
    gdf.to_file(rec.labels_match, driver="GeoJSON")
    with caplog.at_level("INFO"):
        out = read_labels(rec)
    assert out.geometry.is_valid.all()
    assert any(f"repaired 1 invalid polygon(s) of {len(gdf)}" in r.getMessage() for r in caplog.records)


def test_hydra_leaves_no_outputs_folder_where_it_runs_and_names_the_stage(synth_root, tmp_path):
    env = {**os.environ, "SPACENET7_LOG_DIR": str(tmp_path / "logs")}
    work = tmp_path / "cwd"
    work.mkdir()
    r = subprocess.run(
        [*EXE, "synth", f"out_dir={tmp_path / 's'}", "n_aois=1", "n_months=1", "size=64"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert list(work.iterdir()) == []
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["synth"]
    assert list((tmp_path / "logs" / "synth").glob("*/.hydra/config.yaml"))


# ---------------------------------------------------------------------------------------------
# kill -9 in the middle of a write, then the same stage and the next one again


def _sub(argv: list[str], kill: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPACENET7_LOG_DIR": str(Path(cwd or ".") / "logs")}
    env.pop("SPACENET7_KILL_BEFORE_RENAME", None)
    if kill:
        env["SPACENET7_KILL_BEFORE_RENAME"] = kill
    return subprocess.run([*EXE, *argv], capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


KILLS = {
    # stage killed while writing <glob>: its argv, then the next stage's argv (both re-run)
    "predict": (
        "global_monthly_*.tif",
        lambda t, c: [
            "predict",
            f"checkpoint={c['ckpt']}",
            f"data_root={c['root']}",
            f"out_dir={t / 'pred'}",
            "tta=false",
            "progress=false",
            "tile=128",
            "overlap=32",
        ],
        lambda t, c: ["vectorize", f"pred_dir={t / 'pred'}", f"out_dir={t / 'vec'}"],
    ),
    "vectorize": (
        "*.parquet",
        lambda t, c: ["vectorize", f"pred_dir={c['pred']}", f"out_dir={t / 'vec'}"],
        lambda t, c: ["export", f"vec_dir={t / 'vec'}", f"out_dir={t / 'fp'}", f"submission={t / 'sub.csv'}"],
    ),
    "export": (
        "sub.csv",
        lambda t, c: ["export", f"vec_dir={c['vec']}", f"out_dir={t / 'fp'}", f"submission={t / 'sub.csv'}"],
        lambda t, c: [
            "evaluate",
            f"data_root={c['root']}",
            f"submission={t / 'sub.csv'}",
            f"out={t / 'm.json'}",
            f"aois=[{c['aoi']}]",
        ],
    ),
    "chip": (
        "*_r00000_c00128.tif",
        lambda t, c: [
            "chip",
            f"data_root={c['root']}",
            f"out_dir={t / 'chips'}",
            "chip_size=128",
            "overlap=0",
            "split=spatial",
            "val_frac=0.5",
            "progress=false",
        ],
        lambda t, c: [
            "train",
            f"chip_dir={t / 'chips'}",
            f"run_dir={t / 'train'}",
            "experiment=demo_cpu",
            "max_epochs=1",
            "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1",
            "logger.wandb=false",
            "trainer.enable_progress_bar=false",
        ],
    ),
}


@pytest.mark.parametrize("stage", list(KILLS))
def test_sigkill_during_a_write_then_rerun_this_stage_and_the_next(stage, tiny_run, one_aoi, tmp_path):
    run = tiny_run[0]
    root, aoi = one_aoi
    manifest = json.loads((run / "pipeline.json").read_text())
    held = manifest["test_aois"][0]
    ctx = {
        "ckpt": run / "train" / "checkpoints" / "best.ckpt",
        "root": root,
        "aoi": aoi,
        "pred": run / "predictions",
        "vec": run / "vectors",
    }
    if stage in ("vectorize", "export"):  # the tiny run's own hand-offs, scored against its own data
        ctx["root"], ctx["aoi"] = Path(manifest["data_root"]), held
    glob, first, second = KILLS[stage]
    killed = _sub(first(tmp_path, ctx), kill=glob, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert partials(tmp_path), "the kill should have left a temporary file behind"
    for argv in (first(tmp_path, ctx), second(tmp_path, ctx)):
        r = _sub(argv, cwd=tmp_path)
        assert r.returncode == 0, f"{argv[0]} after a killed {stage}: {r.stderr[-3000:]}"
    assert not partials(tmp_path), partials(tmp_path)


def test_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    """GDAL reports a full disk as "TIFFWriteDirectory..."; the user reads "No space left on device"."""
    import errno
    import shutil as sh
    from collections import namedtuple

    from spacenet7.errors import SN7DataError, os_error_line
    from spacenet7.io import raster

    def failing_open(*a, **k):
        raise rasterio.errors.RasterioIOError("TIFFWriteDirectory: Error writing directory")

    monkeypatch.setattr(raster.rasterio, "open", failing_open)
    monkeypatch.setattr(sh, "disk_usage", lambda p: namedtuple("U", "total used free")(100, 100, 0))
    with pytest.raises(SN7DataError, match="could not be written: No space left on device") as e:
        raster.write_raster(tmp_path / "x.tif", np.zeros((1, 4, 4), np.uint8), {"driver": "GTiff"})
    assert str(tmp_path / "x.tif") in str(e.value) and not partials(tmp_path)
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "m.json"))
    assert os_error_line(err) == f"{tmp_path / 'm.json'}: No space left on device"


# ---------------------------------------------------------------------------------------------
# Killed or stale files are never used (issue 32 C)


def test_vectorize_refuses_an_aoi_whose_predict_was_killed_until_predict_finishes(trained, one_aoi, tmp_path, capsys):
    """predict killed before its last month's rename: a finished run's record no longer vouches for the folder."""
    root, aoi = one_aoi
    pred, vec = tmp_path / "pred", tmp_path / "vec"
    argv = ["predict", f"checkpoint={trained}", f"data_root={root}", f"out_dir={pred}", "tta=false", "progress=false"]
    assert cli(capsys, *argv)[0] == 0  # a finished run first: every month there, from that run
    last = scan(root)[aoi][-1].stem
    killed = _sub([*argv, "fusion_weight=0.5"], kill=f"{last}.tif", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    code, err = cli(capsys, "vectorize", f"pred_dir={pred}", f"out_dir={vec}")
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"spacenet7 vectorize: error: {pred / aoi}: no completion record") and "re-run it" in err[0]
    assert not (vec / f"{aoi}.parquet").exists()
    assert cli(capsys, *argv)[0] == 0
    assert cli(capsys, "vectorize", f"pred_dir={pred}", f"out_dir={vec}")[0] == 0
    assert len(json.loads((vec / f"{aoi}.json").read_text())["months"]) == len(scan(root)[aoi])


def _chip_argv(root: Path, out: Path, layout: str, *extra: str) -> list[str]:
    size = ["chip_size=128", "overlap=0"] if layout == "chips" else []
    return ["chip", f"data_root={root}", f"out_dir={out}", f"layout={layout}", *size, "split=spatial", "progress=false", *extra]


def _prepared(out: Path) -> dict[str, np.ndarray]:
    """Every prepared raster of a chip folder (chips or targets) by its relative path."""
    arrays = {}
    for p in sorted(out.rglob("*.tif")):
        with rasterio.open(p) as ds:
            arrays[str(p.relative_to(out))] = ds.read()
    return arrays


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    """The files of ``b`` that ``a`` lacks or holds with other contents."""
    return [k for k in b if k not in a or not np.array_equal(a[k], b[k])]


@pytest.mark.parametrize("layout", ["chips", "rasters"])
def test_chip_rebuilds_the_months_whose_labels_were_edited(layout, one_aoi, tmp_path, capsys):
    import geopandas as gpd

    root, aoi = one_aoi
    assert cli(capsys, *_chip_argv(root, tmp_path / "chips", layout))[0] == 0
    rec = scan(root)[aoi][2]
    gdf = gpd.read_file(rec.labels_match)
    gdf.iloc[: len(gdf) // 2].to_file(rec.labels_match, driver="GeoJSON")  # half the month's buildings removed
    assert cli(capsys, *_chip_argv(root, tmp_path / "chips", layout))[0] == 0
    assert cli(capsys, *_chip_argv(root, tmp_path / "fresh", layout))[0] == 0
    stale = _same(_prepared(tmp_path / "chips"), _prepared(tmp_path / "fresh"))
    assert not stale, f"{len(stale)} stale file(s), e.g. {stale[:3]}"
    assert pd.read_parquet(tmp_path / "chips" / "index.parquet").equals(pd.read_parquet(tmp_path / "fresh" / "index.parquet"))


def test_chip_killed_with_other_settings_then_rerun_rebuilds_what_that_run_wrote(one_aoi, tmp_path, capsys, monkeypatch):
    from spacenet7 import chip
    from spacenet7.compose import compose

    root, aoi = one_aoi
    out = tmp_path / "chips"
    assert cli(capsys, *_chip_argv(root, out, "chips"))[0] == 0
    written = []
    real = chip._write_chip

    def killed_after_some(*args, **kwargs):
        if len(written) == 6:
            raise RuntimeError("killed")
        written.append(args[0])
        real(*args, **kwargs)

    monkeypatch.setattr(chip, "_write_chip", killed_after_some)
    with pytest.raises(RuntimeError, match="killed"):
        chip.run(compose("chip", [*_chip_argv(root, out, "chips", "boundary_width=3")[1:]]))
    assert len(written) == 6
    assert not (out / "chips.json").exists()  # train refuses the folder until a run finishes
    monkeypatch.setattr(chip, "_write_chip", real)
    assert cli(capsys, *_chip_argv(root, out, "chips"))[0] == 0
    assert cli(capsys, *_chip_argv(root, tmp_path / "fresh", "chips"))[0] == 0
    stale = _same(_prepared(out), _prepared(tmp_path / "fresh"))
    assert not stale, f"{len(stale)} stale file(s), e.g. {stale[:3]}"


def test_export_removes_the_journal_that_a_killed_gpkg_write_left(hand_offs, tmp_path, capsys):
    """SQLite writes ``<temporary>.partial-journal`` beside a GeoPackage being written; a kill leaves it."""
    fp = tmp_path / "fp"
    fp.mkdir()
    aoi = sorted(Path(hand_offs["vectors"]).glob("*.parquet"))[0].stem
    (fp / f".{aoi}.gpkg.k2j4h1x0.partial").write_bytes(b"SQLite format 3\x00")
    (fp / f".{aoi}.gpkg.k2j4h1x0.partial-journal").write_bytes(b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7" + bytes(504))
    code, err = cli(capsys, "export", f"vec_dir={hand_offs['vectors']}", f"out_dir={fp}", f"submission={tmp_path / 'sub.csv'}")
    assert code == 0, err
    assert not partials(tmp_path), partials(tmp_path)
    assert (fp / f"{aoi}.gpkg").exists()
