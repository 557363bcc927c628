"""Inference runtimes side by side: truth parity on the real held-out bands, or one mosaic's footprint agreement.

Truth parity (the default; issue 35): every engine predicts the real places' held-out bands (both
data roots in ../shared/data) on the same inputs, and is scored against their labels (F1@0.5,
F1@0.25, pixel IoU per place, SCOT on the time series) beside its tiles/s; the machine's idleness
is measured and said; the JSON report feeds ``spacenet7 compile parity=REPORT``
(``bench/runtime_parity.py`` has the details)::

    python bench/bench_runtimes.py [--checkpoint spacenet7/models/shipped/spacenet7-real.bundle] [--tta d4]
        [--engines torch-fp32,torch-bf16,ort-fp32,ort-int8,ov-fp32,ov-bf16,ov-int8,ov-int8-bf16] [--rounds 3]
        [--json runs/bench/runtime_parity.json]

One mosaic (``--image``; the earlier measurements below were made with it):

    python bench/bench_runtimes.py --image MOSAIC.tif [--checkpoint CKPT]
        [--calibration MOSAIC...] [--region ROW0 ROW1 COL0 COL1] [--no-control]

Every engine runs the same blended sliding window (``spacenet7.models.inference.sliding_window``,
tile 256, overlap 64, batch 8, one view) over the same mosaic, read at the checkpoint's upscale,
with 2 threads: torch eager fp32; torch bf16 autocast + channels-last (predict's default where the
CPU runs bf16 natively); ONNX Runtime (fp32); OpenVINO fp32 and, where the CPU has native bf16,
OpenVINO bf16 (its streams, and for comparison one latency-compiled request); OpenVINO int8
(``compile int8=true``: NNCF's static quantization calibrated on up to 64 tiles of ``--calibration``,
default the benchmarked mosaic itself) with every layer int8 (full 8-bit weights where the CPU has VNNI,
compile's ``int8_overflow_fix=auto``, and NNCF's default 7-bit first layer beside it), and with accuracy control
(``int8_max_drop``: layers return to float until the footprints on the calibration tiles agree with
fp32's within ``--max-drop`` F1), each alone and with bf16 for the float layers. Rounds are
interleaved and the best of them is kept. Footprints: watershed instances at the vectorize defaults
(0.4 / 0.55) matched to torch fp32's at IoU >= 0.5 (F1). Where the mosaic has SN7 labels
(``labels_match_pix``), each engine's footprints are also scored against the truth (building F1 at
IoU >= 0.5, pixel IoU on the source grid; ``--region``: in a held-out box only), which tells whether
a runtime that moves footprints makes them worse. ``--no-control`` skips accuracy control, which
ranks layers for minutes.

Use ``--calibration`` with another AOI than ``--image``: the bench then measures what a user gets on
imagery the quantizer has not seen.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
import torch

from spacenet7.compile import FootprintAgreement, calibration_tiles, footprint_f1, footprints, resolve_overflow_fix
from spacenet7.config import CompileConfig, Engine, ModelFormat, OverflowFix
from spacenet7.data.sn7 import read_image, read_labels_pix, records_from_files
from spacenet7.errors import SN7Error
from spacenet7.io.raster import iter_windows
from spacenet7.metrics.pixel import clip_to_region, pixel_iou
from spacenet7.models.inference import LoadedModel, load_model, load_model_file, sliding_window
from spacenet7.models.precision import cpu_has_fast_bf16
from spacenet7.models.runtime import ModelMeta, OpenVinoRuntime, net_stride, write_model_files

try:  # run as a script (python bench/bench_runtimes.py) or imported as bench.bench_runtimes
    import runtime_parity
except ImportError:  # pragma: no cover
    from bench import runtime_parity

TILE, OVERLAP, BATCH, THREADS = 256, 64, 8, 2


def truth_scores(truth: np.ndarray, found: np.ndarray, upscale: float, region: list[int] | None) -> tuple[float, float]:
    """Building F1 at IoU >= 0.5 and pixel IoU of model-grid footprints ``found`` against source-pixel
    ``truth``, both clipped to ``region`` (row0, row1, col0, col1; None: the whole mosaic) as evaluate clips them."""
    tables = [
        pd.DataFrame({"aoi": "a", "month": "m", "geometry": g})
        for g in (truth, shapely.transform(found, lambda xy: xy / upscale))
    ]
    if region is not None:
        tables = [clip_to_region(t, region) for t in tables]
    kept = [t["geometry"].values[~shapely.is_empty(t["geometry"].values)] for t in tables]
    return footprint_f1(*kept), pixel_iou(*tables, region)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(runtime_parity.SHIPPED), help="a .ckpt or .bundle (default: the shipped model)")
    ap.add_argument(
        "--image", default=None, help="one mosaic: footprint agreement on it instead of truth parity on the real bands"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--calibration",
        nargs="*",
        default=None,
        help="mosaics for int8 calibration (default: truth parity, the checkpoint's training imagery left of the bands; --image, the mosaic)",
    )
    ap.add_argument("--max-drop", type=float, default=0.01, help="int8 accuracy control: footprint F1 drop allowed")
    ap.add_argument(
        "--max-iterations",
        type=int,
        default=CompileConfig.int8_max_iterations,
        help="int8 accuracy control: layer groups put back at most (compile's int8_max_iterations)",
    )
    ap.add_argument(
        "--region",
        type=int,
        nargs=4,
        default=None,
        metavar=("ROW0", "ROW1", "COL0", "COL1"),
        help="score footprints against the truth in this source-pixel box only (a held-out band)",
    )
    ap.add_argument("--no-control", action="store_true", help="skip the accuracy-controlled int8 (NNCF ranks layers for minutes)")
    runtime_parity.add_arguments(ap)
    args = ap.parse_args()
    if not 0 <= args.max_drop < 1:
        ap.error(f"--max-drop {args.max_drop} must be within [0, 1)")
    if args.image is None:
        runtime_parity.truth_parity(args)
    else:
        single_mosaic(args)


def single_mosaic(args: argparse.Namespace) -> None:
    """Every engine on one mosaic: tiles/s and footprint agreement with torch fp32 (and truth scores where labelled)."""
    torch.set_num_threads(THREADS)
    image = Path(args.image)
    try:  # an SN7 mosaic keeps its AOI name, so that its labels are found
        rec = next(iter(records_from_files([str(image)]).values()))[0]
    except SN7Error:
        rec = next(iter(records_from_files([str(image)], "bench").values()))[0]
    base = load_model(args.checkpoint, device="cpu", amp=False)
    img = read_image(rec, upscale=base.upscale, spec=base.spec)
    h, w = img.rgb.shape[1:]
    n_tiles = len(list(iter_windows(max(h, TILE), max(w, TILE), TILE, TILE - OVERLAP)))
    with tempfile.TemporaryDirectory() as tmp:
        assert base.net is not None
        meta = ModelMeta(base.upscale, base.spec.to_dict(), ["footprint", "boundary", "contact"], net_stride(base.net))
        onnx_path, xml = Path(tmp) / "m.onnx", Path(tmp) / "m.xml"
        write_model_files(base.net, meta, ModelFormat.onnx, onnx_path)
        write_model_files(base.net, meta, ModelFormat.openvino, xml)
        tiles = calibration_tiles(args.calibration or [str(image)], base, 64, TILE)
        int8_xml, controlled_xml = Path(tmp) / "int8.xml", Path(tmp) / "int8_controlled.xml"
        overflow_fix = resolve_overflow_fix(OverflowFix.auto)  # compile's default
        write_model_files(base.net, meta, ModelFormat.openvino, int8_xml, int8_tiles=tiles, int8_overflow_fix=overflow_fix)
        half_xml = Path(tmp) / "int8_first_layer.xml"  # NNCF's default: 7-bit weights in the first convolution
        if overflow_fix is not OverflowFix.first_layer:
            write_model_files(
                base.net, meta, ModelFormat.openvino, half_xml, int8_tiles=tiles, int8_overflow_fix=OverflowFix.first_layer
            )
        if not args.no_control:
            t = time.perf_counter()
            write_model_files(
                base.net,
                meta,
                ModelFormat.openvino,
                controlled_xml,
                int8_tiles=tiles,
                int8_max_drop=args.max_drop,
                int8_validate=FootprintAgreement(base.net, tiles),
                int8_overflow_fix=overflow_fix,
                int8_max_iterations=args.max_iterations,
            )
            print(f"int8 with accuracy control (max drop {args.max_drop}) quantized in {time.perf_counter() - t:.0f} s")
        bf16 = cpu_has_fast_bf16()
        engines: dict[str, LoadedModel] = {
            "torch eager fp32": base,
            "torch bf16 channels-last": load_model(args.checkpoint, device="cpu", amp=True),
            "onnxruntime fp32": load_model_file(onnx_path, Engine.onnxruntime, threads=THREADS),
            "openvino fp32": load_model_file(xml, Engine.openvino, threads=THREADS, amp=False),
        }
        if bf16:
            engines["openvino bf16"] = load_model_file(xml, Engine.openvino, threads=THREADS, amp=True)
            # the same, as one latency-compiled request instead of one per stream (what the streams add)
            latency = load_model_file(xml, Engine.openvino, threads=THREADS, amp=True)
            latency.runtime = OpenVinoRuntime(xml, THREADS, bf16=True, throughput=False)
            engines["openvino bf16, one latency request"] = latency
        if half_xml.exists():
            engines["openvino int8, 7-bit first layer"] = load_model_file(half_xml, Engine.openvino, threads=THREADS, amp=False)
        int8_name = "openvino int8" + (
            ", full 8-bit weights" if overflow_fix is OverflowFix.disable else f", overflow fix {overflow_fix}"
        )
        engines[int8_name] = load_model_file(int8_xml, Engine.openvino, threads=THREADS, amp=False)
        if not args.no_control:
            engines[f"openvino int8, max drop {args.max_drop:g}"] = load_model_file(
                controlled_xml, Engine.openvino, threads=THREADS, amp=False
            )
        if bf16:  # the layers left in float run in bf16
            engines[f"{int8_name} + bf16"] = load_model_file(int8_xml, Engine.openvino, threads=THREADS, amp=True)
            if not args.no_control:
                engines[f"openvino int8, max drop {args.max_drop:g} + bf16"] = load_model_file(
                    controlled_xml, Engine.openvino, threads=THREADS, amp=True
                )
        best = {k: float("inf") for k in engines}
        probs: dict[str, np.ndarray] = {}
        for m in engines.values():  # warm-up (graph compilation, allocations) on one tile
            sliding_window(m, img.rgb[:, :TILE, :TILE], TILE, OVERLAP, BATCH)
        for _ in range(args.rounds):
            for k, m in engines.items():
                t = time.perf_counter()
                probs[k] = sliding_window(m, img.rgb, TILE, OVERLAP, BATCH)
                best[k] = min(best[k], time.perf_counter() - t)
    truth = None
    if rec.labels_match_pix is not None:
        gdf = read_labels_pix(rec)
        truth = gdf.geometry.values[gdf.geometry.area >= 4]  # SCOT's rule: truth under 4 px^2 is dropped
    ref_key = "torch eager fp32"
    ref_fp = footprints(probs[ref_key])
    today = "torch bf16 channels-last" if bf16 else ref_key
    print(
        f"{image.name}: {h}x{w} on the model grid (upscale {base.upscale:g}), {n_tiles} tiles of {TILE}^2, batch {BATCH}, "
        f"{THREADS} threads; native bf16: {bf16}; {len(ref_fp)} footprints (torch fp32)"
    )
    head = f"| engine | tiles/s | vs torch fp32 | vs {today} | max abs diff vs fp32 | footprint F1 vs fp32 |"
    if truth is not None:
        where = "" if args.region is None else ", rows {}-{}, cols {}-{}".format(*args.region)
        head += f" F1@0.5 vs truth{where} | pixel IoU vs truth |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for k in engines:
        fp = footprints(probs[k])
        rate = n_tiles / best[k]
        diff = float(np.abs(probs[k] - probs[ref_key]).max())
        print(
            f"| {k} | {rate:.2f} | {best[ref_key] / best[k]:.2f}x | {best[today] / best[k]:.2f}x | {diff:.1e} | "
            f"{footprint_f1(ref_fp, fp):.4f} |"
            + ("" if truth is None else " {:.4f} | {:.4f} |".format(*truth_scores(truth, fp, base.upscale, args.region)))
        )


if __name__ == "__main__":
    main()
