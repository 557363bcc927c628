"""Truth parity of the inference engines on the real held-out bands, side by side in one run.

    python bench/bench_runtimes.py [--checkpoint spacenet7/models/shipped/spacenet7-real.bundle]
        [--places ../shared/data/sn7_real_sample ../shared/data/sn7_real_timeseries] [--tta none|flips|d4]
        [--engines torch-fp32,torch-bf16,...] [--rounds 3] [--json runs/bench/runtime_parity.json]

(``bench/bench_runtimes.py`` runs this without ``--image``; ``--image`` is its older single-mosaic mode.)

Every engine predicts the same inputs: each place's held-out band (evaluate's ``band_frac``, the
right quarter, all rows; every month) plus a margin, read at the model's upscale as ``predict``
reads it, through the same blended sliding window (the recipe's tile 256, overlap 64, batch 8;
one view by default, ``--tta d4`` for the recipe's 8), temporal fusion, ``vectorize`` with the
bundle's settings (the recipe's: track.mode=onset), ``export`` and evaluate's per-AOI scoring of
the band: building F1 at IoU >= 0.5 and > 0.25, pixel IoU, and SCOT where there are months to
track. The window starts on the full mosaic's tile grid (a multiple of (tile - overlap) / upscale
source pixels) and its margin covers every tile that reaches the band, so each band pixel is
blended from the same tiles as in a whole-mosaic ``predict``.

An engine is at parity when every score on every place is within ``--tolerance`` (0.005) of torch
fp32's (:func:`spacenet7.models.engine_choice.at_parity`). Speed: tiles per second, the best of
``--rounds`` interleaved passes over the first month of every place (one view, ``--threads`` 2),
and its ratio to torch bf16 channels-last (predict's default on a CPU with native bf16). int8 is
calibrated on the training imagery, left of the bands (``spacenet7 compile``'s default:
:func:`spacenet7.compile.training_imagery`), never on the scored data; ``--calibration`` names
other mosaics.

Before and during the timed part it reads ``/proc/stat``: the run is marked idle only when other
processes used under 10% of the CPUs (and the load average was under 0.5 at the start). The JSON
report (``--json``) is what ``spacenet7 compile parity=REPORT`` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
import torch
from rasterio.windows import Window

from spacenet7 import export, vectorize
from spacenet7.compile import calibration_tiles, calibration_tiles_of, resolve_overflow_fix, training_imagery
from spacenet7.compose import compose
from spacenet7.config import Engine, EvaluateConfig, ModelFormat, OverflowFix, PredictConfig
from spacenet7.data.fusion import fuse, same_grid
from spacenet7.data.sn7 import Image, MonthRecord, band_regions, read_image, scan
from spacenet7.data.targets import CHANNELS
from spacenet7.evaluate import building_scores, evaluate_aoi, ground_truth_table
from spacenet7.io import probability
from spacenet7.io.raster import iter_windows, to_cog
from spacenet7.metrics.table import read_table
from spacenet7.models import engine_choice
from spacenet7.models.bundle import SHIPPED, is_bundle, read_card
from spacenet7.models.inference import LoadedModel, load_model, load_model_file, sliding_window
from spacenet7.models.mosaic import band_window
from spacenet7.models.precision import cpu_has_fast_bf16, cpu_has_vnni
from spacenet7.models.runtime import ModelMeta, net_stride, write_model_files
from spacenet7.models.task import read_checkpoint

PLACES = ["../shared/data/sn7_real_sample", "../shared/data/sn7_real_timeseries"]
ENGINE_KEYS = ["torch-fp32", "torch-bf16", "ort-fp32", "ort-int8", "ov-fp32", "ov-bf16", "ov-int8", "ov-int8-bf16"]
OPTIONAL_KEYS = ["ov-int8-7bit", "ov-int8-control"]  # --engines only: NNCF's 7-bit first layer; accuracy control (minutes)
BATCH = 8
BUSY_FRACTION = 0.10  # other processes' share of the CPUs above which the run is marked busy
BUSY_LOAD = 0.5  # 1-minute load average at the start above which it is marked busy


@dataclasses.dataclass
class Place:
    """One AOI's held-out band and the window predicted around it."""

    root: str
    aoi: str
    region: list[float]  # the band, [row0, row1, col0, col1] in source pixels
    window: Window  # what is predicted (band + margin, on the mosaic's tile grid)
    records: list[MonthRecord]
    images: list[Image]  # each month's window, read as predict reads it
    truth: Any  # the AOI's truth table (all months predicted)

    @property
    def months(self) -> int:
        return len(self.records)


@dataclasses.dataclass
class EngineRun:
    """One engine: how it was made (the report's plan) and the model that runs."""

    key: str
    name: str
    engine: str
    precision: str
    amp: bool
    model: LoadedModel
    format: str | None = None
    int8: bool = False
    int8_overflow_fix: str | None = None
    int8_max_drop: float | None = None
    tiles_per_s: float = 0.0
    predict_s: float = 0.0
    predict_tiles: int = 0
    scores: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


# --- the machine ---


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def own_jiffies() -> float:
    """CPU time of this process and its waited children, in jiffies."""
    t = os.times()
    return (t.user + t.system + t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """Other processes' share of the CPUs between :meth:`start` and :meth:`stop` (this process's own time excluded)."""

    def start(self) -> CpuWatch:
        self.busy0, self.total0 = cpu_jiffies()
        self.own0 = own_jiffies()
        return self

    def stop(self) -> float:
        busy, total = cpu_jiffies()
        others = (busy - self.busy0) - (own_jiffies() - self.own0)
        return max(0.0, others / max(total - self.total0, 1))


def machine_before(seconds: float = 2.0) -> dict[str, Any]:
    """The load average and other processes' CPU share over ``seconds`` before anything runs."""
    load = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    watch = CpuWatch().start()
    time.sleep(seconds)
    return {"loadavg": load, "others_before": watch.stop(), "cpus": os.cpu_count()}


# --- places and predictions ---


def load_place(root: str, model: LoadedModel, band_frac: float, tile: int, overlap: int, months: int | None) -> list[Place]:
    """Each AOI of ``root``: its band, the window predicted (:func:`band_window`: band + one tile of margin, on the
    tile grid), its months."""
    out = []
    for aoi, recs in scan(root).items():
        recs = recs[:months] if months else recs
        region = band_regions(root, [aoi], band_frac)[aoi]
        win = band_window(recs[0], band_frac, model.upscale, tile, overlap)  # as predict band_frac= reads it
        images = [read_image(rec, window=win, upscale=model.upscale, spec=model.spec) for rec in recs]
        truth = ground_truth_table(root, "train", [aoi])
        truth = truth[truth["month"].isin({r.month_key for r in recs})]
        out.append(Place(root, aoi, region, win, recs, images, truth))
    return out


def n_tiles(img: Image, tile: int, overlap: int) -> int:
    """Tiles of one view of a sliding window over ``img``."""
    h, w = img.rgb.shape[1:]
    return len(list(iter_windows(max(h, tile), max(w, tile), tile, tile - overlap)))


def predict_place(run: EngineRun, place: Place, out_dir: Path, pcfg: PredictConfig, tta: str | None) -> tuple[int, float]:
    """The engine's probability rasters of a place's window, fused as ``predict`` fuses them; (tiles, network seconds)."""
    aoi_dir = out_dir / place.aoi
    raw_dir = aoi_dir / ".raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    views = 1 if tta is None else {"d4": 8, "flips": 3}[tta]
    tiles, seconds, raw = 0, 0.0, []
    for rec, img in zip(place.records, place.images):
        t = time.perf_counter()
        prob = sliding_window(run.model, img.rgb, pcfg.tile, pcfg.overlap, BATCH, tta)
        seconds += time.perf_counter() - t
        tiles += n_tiles(img, pcfg.tile, pcfg.overlap) * views
        h, w = img.valid.shape
        path = raw_dir / f"{rec.stem}.tif"
        with rasterio.open(path, "w", **probability.profile(img.crs, img.transform, w, h)) as dst:
            dst.write(probability.encode(prob, img.valid))
            probability.describe(dst, run.model.upscale, "upscaled")
        raw.append(path)
    finals = [aoi_dir / p.name for p in raw]
    if (pcfg.fusion and len(raw) > 1) or not same_grid(raw):
        fuse(raw, finals, pcfg.fusion_weight if pcfg.fusion else 0.0, pcfg.block, raw_dir)
    else:
        for src, dst in zip(raw, finals):
            to_cog(src, dst)
    probability.mark_complete(aoi_dir, finals)
    return tiles, seconds


def score_place(place: Place, pred_dir: Path, work: Path, settings_bundle: str) -> dict[str, float]:
    """Vectorize (the bundle's settings), export and score the band as ``evaluate band_frac=`` scores an AOI."""
    vec, sub = work / "vec", work / "submission.csv"
    vectorize.run(
        compose("vectorize", [f"pred_dir={pred_dir}", f"out_dir={vec}", f"aois=[{place.aoi}]", f"bundle={settings_bundle}"])
    )
    export.run(
        compose("export", [f"vec_dir={vec}", f"out_dir={work / 'fp'}", f"submission={sub}", "geojson=false", "gpkg=false"])
    )
    proposal = read_table(sub)
    c0, r0 = float(place.window.col_off), float(place.window.row_off)  # window pixels -> the mosaic's
    proposal["geometry"] = shapely.transform(proposal["geometry"].to_numpy(), lambda xy: xy + np.array([c0, r0]))
    ecfg = EvaluateConfig()
    score, inter, union = evaluate_aoi(
        place.aoi, place.truth, proposal, place.region, ecfg.iou_threshold, ecfg.beta, ecfg.min_truth_area
    )
    scores = {k: v for k, v in building_scores(score, inter, union).items() if k in engine_choice.PARITY_SCORES}
    if place.months > 1:
        scores["tracking"] = score.tracking
        scores["scot"] = score.scot
        scores.update({k: float(getattr(score, k)) for k in engine_choice.CHANGE_COUNTS})
    return scores


# --- engines ---


def build_engines(
    keys: list[str],
    checkpoint: str,
    tmp: Path,
    calibration: Callable[[], list[np.ndarray]],
    threads: int,
    max_drop: float,
    max_iterations: int | None = None,
) -> list[EngineRun]:
    """The engines asked for, in order; int8 ones calibrated on ``calibration()`` (called once)."""
    base = load_model(checkpoint, device="cpu", amp=False)
    assert base.net is not None
    _, hp = read_checkpoint(checkpoint)
    meta = ModelMeta(base.upscale, base.spec.to_dict(), list(CHANNELS), net_stride(base.net), model=dict(hp["model"]))
    bf16 = cpu_has_fast_bf16()
    fix = resolve_overflow_fix(OverflowFix.auto)  # compile's default
    files: dict[str, Path] = {}
    tiles: list[np.ndarray] = []

    def made(kind: str) -> Path:
        """Export (once) and return the model file of ``kind``."""
        if kind in files:
            return files[kind]
        nonlocal tiles
        fmt = ModelFormat.onnx if kind.startswith("ort") else ModelFormat.openvino
        path = tmp / f"{kind}{'.onnx' if fmt is ModelFormat.onnx else '.xml'}"
        extra: dict[str, Any] = {}
        if "int8" in kind:
            tiles = tiles or calibration()
            extra["int8_tiles"] = tiles
            if fmt is ModelFormat.openvino:
                extra["int8_overflow_fix"] = OverflowFix.first_layer if kind == "ov-int8-7bit" else fix
            if kind == "ov-int8-control":
                from spacenet7.compile import FootprintAgreement

                extra.update(
                    int8_max_drop=max_drop, int8_validate=FootprintAgreement(base.net, tiles), int8_max_iterations=max_iterations
                )
        t = time.perf_counter()
        write_model_files(base.net, meta, fmt, path, **extra)
        print(f"  exported {kind} in {time.perf_counter() - t:.0f} s", flush=True)
        files[kind] = path
        return path

    runs = []
    for key in keys:
        if key in ("torch-bf16", "ov-bf16", "ov-int8-bf16") and not bf16:
            print(f"  {key}: skipped (this CPU has no native bf16)")
            continue
        if key == "torch-fp32":
            runs.append(EngineRun(key, "torch fp32", "torch", "fp32", False, base))
        elif key == "torch-bf16":
            runs.append(
                EngineRun(key, "torch bf16 channels-last", "torch", "bf16", True, load_model(checkpoint, device="cpu", amp=True))
            )
        elif key in ("ort-fp32", "ort-int8"):
            int8 = key == "ort-int8"
            model = load_model_file(made("ort-int8" if int8 else "ort-fp32"), Engine.onnxruntime, threads=threads)
            name = "onnxruntime int8 (QDQ)" if int8 else "onnxruntime fp32"
            runs.append(EngineRun(key, name, "onnxruntime", "int8" if int8 else "fp32", False, model, "onnx", int8))
        else:
            kind = {"ov-fp32": "ov-fp32", "ov-bf16": "ov-fp32", "ov-int8": "ov-int8", "ov-int8-bf16": "ov-int8"}.get(key, key)
            amp = key.endswith("bf16")
            int8 = "int8" in key
            model = load_model_file(made(kind), Engine.openvino, threads=threads, amp=amp)
            precision = ("int8+bf16" if amp else "int8") if int8 else ("bf16" if amp else "fp32")
            this_fix = (OverflowFix.first_layer if key == "ov-int8-7bit" else fix) if int8 else None
            name = "openvino " + precision
            if int8:
                name += {OverflowFix.disable: ", full 8-bit", OverflowFix.first_layer: ", 7-bit first layer"}.get(
                    this_fix, f", {this_fix}"
                )
            if key == "ov-int8-control":
                name += f", max drop {max_drop:g}"
            runs.append(
                EngineRun(
                    key,
                    name,
                    "openvino",
                    precision,
                    amp,
                    model,
                    "openvino",
                    int8,
                    str(this_fix) if this_fix else None,
                    max_drop if key == "ov-int8-control" else None,
                )
            )
    return runs


def throughput(runs: list[EngineRun], places: list[Place], rounds: int, tile: int, overlap: int) -> None:
    """Each engine's tiles/s: the best of ``rounds`` interleaved one-view passes over every place's first month."""
    imgs = [p.images[0] for p in places]
    count = sum(n_tiles(img, tile, overlap) for img in imgs)
    for r in runs:  # warm-up: graph compilation, allocations
        sliding_window(r.model, imgs[0].rgb[:, :tile, :tile], tile, overlap, BATCH)
    best = {r.key: float("inf") for r in runs}
    for _ in range(rounds):
        for r in runs:
            t = time.perf_counter()
            for img in imgs:
                sliding_window(r.model, img.rgb, tile, overlap, BATCH)
            best[r.key] = min(best[r.key], time.perf_counter() - t)
    for r in runs:
        r.tiles_per_s = count / best[r.key]


# --- the run ---


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The truth-parity options (bench/bench_runtimes.py adds them to its own)."""
    ap.add_argument("--places", nargs="+", default=PLACES, help="data roots, each one place (default: both real places)")
    ap.add_argument("--band-frac", type=float, default=0.25, help="the held-out right band of each AOI (evaluate's band_frac)")
    ap.add_argument(
        "--tta", choices=["none", "flips", "d4"], default="none", help="test-time views (the recipe: d4, 8x the time)"
    )
    ap.add_argument("--engines", default=",".join(ENGINE_KEYS), help=f"comma-separated, of {ENGINE_KEYS + OPTIONAL_KEYS}")
    ap.add_argument(
        "--months", type=int, default=None, help="only the first N months of each place (a smoke run; SCOT needs all)"
    )
    ap.add_argument("--tolerance", type=float, default=engine_choice.PARITY_TOLERANCE)
    ap.add_argument("--calibration-tiles", type=int, default=64, help="int8 calibration tiles (compile's calibration_tiles)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="runs/bench/runtime_parity.json", help="the report (compile parity= reads it)")
    ap.add_argument("--keep", default=None, help="keep the predictions and vectors under this folder")


def truth_parity(args: argparse.Namespace) -> dict[str, Any]:
    """Run every engine on the real bands; print the table; write and return the report."""
    keys = [k.strip() for k in args.engines.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(ENGINE_KEYS + OPTIONAL_KEYS))
    if unknown or "torch-fp32" not in keys:
        raise SystemExit(
            f"--engines: unknown {unknown} or without torch-fp32 (the reference); known: {ENGINE_KEYS + OPTIONAL_KEYS}"
        )
    missing = [p for p in args.places if not Path(p).is_dir()]
    if missing:
        raise SystemExit(f"no data at {missing} (the real SN7 data lives in ../shared/data beside the repository)")
    t_start = time.perf_counter()
    before = machine_before()
    print(
        f"machine before the run: load {before['loadavg'][0]:.2f}, other processes {100 * before['others_before']:.0f}% "
        f"of {before['cpus']} CPUs",
        flush=True,
    )
    logging.disable(logging.INFO)  # the stages' per-AOI lines
    torch.set_num_threads(args.threads)
    checkpoint = str(args.checkpoint)
    settings_bundle = checkpoint if is_bundle(checkpoint) else str(SHIPPED)  # the recipe's vectorize settings
    card_predict = read_card(checkpoint).get("predict", {}) if is_bundle(checkpoint) else {}
    pcfg = PredictConfig(**{k: v for k, v in card_predict.items() if k in ("tile", "overlap", "fusion", "fusion_weight")})
    tta = None if args.tta == "none" else args.tta
    base = load_model(checkpoint, device="cpu", amp=False)
    places = [p for root in args.places for p in load_place(root, base, args.band_frac, pcfg.tile, pcfg.overlap, args.months)]
    for p in places:
        w = p.window
        print(
            f"{p.aoi} ({Path(p.root).name}): band rows {p.region[0]:g}-{p.region[1]:g} cols {p.region[2]:g}-{p.region[3]:g}, "
            f"window rows {w.row_off}-{w.row_off + w.height} cols {w.col_off}-{w.col_off + w.width}, {p.months} month(s), "
            f"{n_tiles(p.images[0], pcfg.tile, pcfg.overlap)} tiles a month a view",
            flush=True,
        )

    def calibration() -> list[np.ndarray]:
        side = -(-pcfg.tile // base.stride) * base.stride
        if args.calibration:
            print(f"  int8 calibration: {len(args.calibration)} given mosaics", flush=True)
            return calibration_tiles(args.calibration, base, args.calibration_tiles, side)
        records, band_frac = training_imagery(checkpoint)
        print(
            f"  int8 calibration: the training imagery, {len(records)} mosaics left of the band (band_frac {band_frac})",
            flush=True,
        )
        return calibration_tiles_of(records, base, args.calibration_tiles, side, band_frac)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(args.keep) if args.keep else Path(tmp_name)
        tmp.mkdir(parents=True, exist_ok=True)
        runs = build_engines(keys, checkpoint, tmp / "models", calibration, args.threads, args.max_drop, args.max_iterations)
        watch = CpuWatch().start()
        t_timed = time.perf_counter()
        throughput(runs, places, args.rounds, pcfg.tile, pcfg.overlap)
        for r in runs:
            for p in places:
                tiles, secs = predict_place(r, p, tmp / r.key / "pred", pcfg, tta)
                r.predict_tiles += tiles
                r.predict_s += secs
            for p in places:
                r.scores[p.aoi] = score_place(p, tmp / r.key / "pred", tmp / r.key / p.aoi, settings_bundle)
            print(f"  {r.name}: {r.predict_tiles} tiles in {r.predict_s:.0f} s; {json.dumps(r.scores)}", flush=True)
        others = watch.stop()
        timed_s = time.perf_counter() - t_timed
    idle = before["loadavg"][0] < BUSY_LOAD and before["others_before"] < BUSY_FRACTION and others < BUSY_FRACTION
    doc = report(runs, places, args, before, others, idle, tta, timed_s, time.perf_counter() - t_start, checkpoint)
    print_table(doc)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"report written to {out} (spacenet7 compile checkpoint={checkpoint} parity={out} compiles the fastest at parity)")
    return doc


def report(
    runs: list[EngineRun],
    places: list[Place],
    args: argparse.Namespace,
    before: dict,
    others: float,
    idle: bool,
    tta: str | None,
    timed_s: float,
    total_s: float,
    checkpoint: str,
) -> dict[str, Any]:
    """The JSON report: machine, settings, and per engine speed, scores, deltas and parity."""
    ref = next(r for r in runs if r.key == "torch-fp32").scores
    today = next((r for r in runs if r.key == "torch-bf16"), None)
    entries = []
    for r in runs:
        parity, deltas = engine_choice.at_parity(r.scores, ref, args.tolerance)
        entries.append(
            {
                "name": r.name,
                "key": r.key,
                "engine": r.engine,
                "precision": r.precision,
                "amp": r.amp,
                "format": r.format,
                "int8": r.int8,
                "int8_overflow_fix": r.int8_overflow_fix,
                "int8_max_drop": r.int8_max_drop,
                "tiles_per_s": r.tiles_per_s,
                "speedup": r.tiles_per_s / today.tiles_per_s if today else None,
                "parity": parity,
                "basis": f"bench/bench_runtimes.py truth parity, {len(places)} places, tolerance {args.tolerance:g}",
                "predict_tiles": r.predict_tiles,
                "predict_s": r.predict_s,
                "scores": r.scores,
                "deltas": deltas,
                "max_abs_delta": max((abs(v) for d in deltas.values() for v in d.values()), default=0.0),  # scores only
            }
        )
    at = [e for e in entries if e["parity"]]
    fastest = max(at, key=lambda e: e["tiles_per_s"]) if at else None
    return {
        "format": engine_choice.REPORT_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "checkpoint": checkpoint,
        "machine": {
            "idle": idle,
            "loadavg_before": before["loadavg"],
            "others_before": before["others_before"],
            "others_during": others,
            "cpus": before["cpus"],
            "threads": args.threads,
            "native_bf16": cpu_has_fast_bf16(),
            "vnni": cpu_has_vnni(),
            "processor": platform.processor() or platform.machine(),
        },
        "settings": {"tta": tta or "none", "rounds": args.rounds, "months": args.months, "band_frac": args.band_frac},
        "places": [
            {
                "aoi": p.aoi,
                "root": p.root,
                "band": p.region,
                "months": p.months,
                "window": [
                    p.window.row_off,
                    p.window.row_off + p.window.height,
                    p.window.col_off,
                    p.window.col_off + p.window.width,
                ],
            }
            for p in places
        ],
        "tolerance": args.tolerance,
        "engines": entries,
        "fastest_at_parity": fastest["name"] if fastest else None,
        "target": {
            "speedup_over_torch_bf16": 1.5,
            "fastest_at_parity_speedup": fastest["speedup"] if fastest else None,
            "met": bool(fastest and fastest["speedup"] and fastest["speedup"] >= 1.5),
        },
        "timed_s": timed_s,
        "total_s": total_s,
    }


def print_table(doc: dict[str, Any]) -> None:
    """The report as a Markdown table, with the machine's state."""
    m = doc["machine"]
    state = "IDLE" if m["idle"] else "BUSY: the speeds are not reliable, run it again on an idle machine"
    print(
        f"\nmachine: {state} (load {m['loadavg_before'][0]:.2f} at the start; other processes {100 * m['others_before']:.0f}% "
        f"of the CPUs before, {100 * m['others_during']:.0f}% during the timed part); {m['threads']} threads, "
        f"native bf16 {m['native_bf16']}, VNNI {m['vnni']}; views: {doc['settings']['tta']}"
    )
    places = [p["aoi"] for p in doc["places"]]
    head = "| engine | tiles/s | vs torch bf16 |"
    for p in doc["places"]:
        short = p["aoi"][:9]
        head += f" {short} F1@0.5 | F1@0.25 | pixel IoU |" + (" SCOT |" if p["months"] > 1 else "")
    head += " max abs delta vs torch fp32 | parity |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for e in doc["engines"]:
        ratio = f"{e['speedup']:.2f}x" if e["speedup"] else "-"
        line = f"| {e['name']} | {e['tiles_per_s']:.1f} | {ratio} |"
        for aoi in places:
            s, d = e["scores"][aoi], e["deltas"].get(aoi, {})
            for k in (*engine_choice.PARITY_SCORES, "scot"):
                if k in s:
                    delta = f" ({d[k]:+.3f})" if e["key"] != "torch-fp32" and k in d else ""
                    if k == "scot" and all(c in s for c in engine_choice.CHANGE_COUNTS):  # new: true / false / missed
                        delta += " new " + "/".join(str(int(s[c])) for c in engine_choice.CHANGE_COUNTS)
                    line += f" {s[k]:.4f}{delta} |"
        line += f" {e['max_abs_delta']:.4f} | {'yes' if e['parity'] else 'no'} |"
        print(line)
    t = doc["target"]
    speed = f"{t['fastest_at_parity_speedup']:.2f}x" if t["fastest_at_parity_speedup"] else "-"
    print(
        f"\nfastest at truth parity (within {doc['tolerance']:g} of torch fp32 on every score and place; SCOT also "
        f"when its new-building counts differ by at most {engine_choice.CHANGE_SLACK}): "
        f"{doc['fastest_at_parity']}, {speed} torch bf16 channels-last; target >= 1.5x: {'met' if t['met'] else 'NOT met'}"
    )
    print(f"timed part {doc['timed_s']:.0f} s, whole run {doc['total_s']:.0f} s")
