"""Stage ``compile``: export a trained checkpoint for a fast inference runtime.

``format=onnx`` writes ``<stem>.onnx`` (opset >= 17); ``format=openvino`` converts that graph to
an OpenVINO IR, ``<stem>.xml`` + ``<stem>.bin``. Both take any batch, height and width (multiples
of the encoder's stride; ``predict`` pads to it) and carry the metadata ``predict`` needs:
upscale, input bands and scaling, classes and tile alignment (:mod:`spacenet7.models.runtime`).
Run them with ``spacenet7 predict engine=onnxruntime|openvino model_file=...``.

``int8=true`` quantizes statically on tiles of ``calibration`` mosaics: NNCF for OpenVINO (with
``int8_max_drop``, NNCF's accuracy control on footprint agreement with fp32: :class:`FootprintAgreement`;
full 8-bit weights where this CPU has VNNI: ``int8_overflow_fix``), ONNX Runtime's QDQ quantizer for ONNX.
Without ``calibration`` the tiles come from the checkpoint's training imagery (a bundle card's
``provenance`` or a run's ``chips.json``: its data and AOIs, left of the held-out band), never from
the scored data.

``parity=REPORT`` (``bench/bench_runtimes.py``'s JSON) compiles the fastest engine at truth parity
in it instead of ``format``/``int8``. What was compiled is recorded as data
(:mod:`spacenet7.models.engine_choice`): in the model file's metadata, and, for a bundle compiled
into its own folder (the default ``out`` of a bundle), in its card's ``runtime``, which
``predict engine=auto`` reads.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spacenet7.config import CompileConfig, Engine, ModelFormat, OverflowFix, VectorizeConfig
from spacenet7.data.splits import band_start
from spacenet7.data.targets import CHANNELS
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.atomic import ensure_writable_dir
from spacenet7.io.layout import RunLayout
from spacenet7.metrics.matching import match
from spacenet7.models import engine_choice
from spacenet7.models.bundle import bundle_dir, is_bundle, read_card, record_runtime
from spacenet7.models.inference import LoadedModel, load_model
from spacenet7.models.precision import cpu_has_vnni
from spacenet7.models.runtime import (
    ModelMeta,
    int8_convolutions,
    make_runtime,
    net_stride,
    read_meta,
    require,
    write_model_files,
)
from spacenet7.polygonize import instances, polygons

log = logging.getLogger(__name__)
VERIFY_TOLERANCE = 1e-3  # fp32 export vs torch fp32, max absolute probability difference on a random tile


def default_out(checkpoint: str | Path, fmt: ModelFormat, int8: bool = False) -> Path:
    """``<checkpoint folder>/<stem>.onnx`` or ``.xml``; for a bundle, ``<bundle>/model[-int8].onnx|xml`` inside it."""
    path = Path(checkpoint)
    suffix = ".onnx" if fmt is ModelFormat.onnx else ".xml"
    if is_bundle(path) and bundle_dir(path).is_dir():
        return bundle_dir(path) / f"model{'-int8' if int8 else ''}{suffix}"
    return path.with_suffix(suffix)


def run(cfg: CompileConfig, quiet: bool = False) -> dict[str, Path]:
    """Export ``cfg.checkpoint``; returns the written model file(s) (none when ``parity`` chooses torch).

    Args:
        cfg: what to export, and where.
        quiet: only export and verify: print nothing and record nothing in a bundle (``predict``'s export of
            a checkpoint on the fly, into a folder it deletes afterwards).
    """
    plan = None
    if cfg.parity:
        plan = parity_plan(cfg.parity)
        if plan["engine"] == "torch":
            return _record_torch(cfg, plan)
        cfg = dataclasses.replace(
            cfg,
            format=ModelFormat(plan["format"]),
            int8=plan["int8"],
            int8_overflow_fix=OverflowFix(plan["int8_overflow_fix"] or cfg.int8_overflow_fix),
            int8_max_drop=plan["int8_max_drop"],
        )
    out, files, meta = _export(cfg, plan)
    if quiet:
        return {"model_file": out}
    if cfg.int8 and cfg.format is ModelFormat.openvino:
        n_int8, n_conv = int8_convolutions(out)
        print(
            f"compile: {n_int8} of {n_conv} convolutions run in int8, the rest in float (bf16 where the CPU has it); "
            f"int8_overflow_fix={meta.int8_overflow_fix}"
        )
    print(
        f"compile: wrote {', '.join(map(str, files))} (stride {meta.stride}, upscale {meta.upscale:g}); run it with\n"
        f"  spacenet7 predict engine={'onnxruntime' if cfg.format is ModelFormat.onnx else 'openvino'} model_file={out} ..."
        + (f" (amp={str(meta.runtime['amp']).lower()})" if cfg.format is ModelFormat.openvino else "")
    )
    print(f"compile: recorded in {out.name}: {engine_choice.describe(meta.runtime)}")
    card = _record_in_bundle(cfg, out, meta.runtime, plan)
    if card is not None:
        print(f"compile: recorded in {card}; `spacenet7 predict engine=auto checkpoint={bundle_dir(cfg.checkpoint)}` picks it")
    return {"model_file": out}


def _export(cfg: CompileConfig, plan: dict | None = None) -> tuple[Path, list[Path], ModelMeta]:
    """Write ``cfg.checkpoint``'s network as ``cfg.format`` (int8 as ``cfg`` asks) with its metadata, and
    check an fp32 export against torch (``cfg.verify``); nothing is printed or recorded in a bundle.

    Args:
        cfg: what to export, and where (``out``; None: :func:`default_out`).
        plan: the parity report's choice (:func:`parity_plan`), recorded in the metadata; None: not measured.

    Returns:
        The model file (``.onnx`` or ``.xml``), every file written, and the metadata written into it.

    Raises:
        SN7Error: a network predict cannot feed, or an fp32 export that differs from torch (then nothing
            is left written).
    """
    require("onnx", "onnx")
    if cfg.format is ModelFormat.openvino:
        require("openvino", "openvino")
        if cfg.int8:
            require("nncf", "nncf")
    model = load_model(cfg.checkpoint, device="cpu", amp=False)
    net = model.net
    assert net is not None
    from spacenet7.models.task import read_checkpoint

    _, hp = read_checkpoint(cfg.checkpoint)
    model_cfg = dict(hp["model"])
    in_channels = int(model_cfg.get("in_channels", 3))
    if in_channels != 3 or int(model_cfg.get("classes", len(CHANNELS))) != len(CHANNELS):
        raise SN7Error(
            f"compile: {cfg.checkpoint}: the network takes {in_channels} channels and predicts "
            f"{model_cfg.get('classes')}; predict feeds 3 (RGB) and reads {len(CHANNELS)}"
        )
    meta = ModelMeta(
        upscale=model.upscale,
        input=model.spec.to_dict(),
        classes=list(CHANNELS),
        stride=net_stride(net),
        in_channels=in_channels,
        model=model_cfg,
        source=str(Path(cfg.checkpoint).resolve()),
    )
    overflow_fix = resolve_overflow_fix(cfg.int8_overflow_fix)
    if cfg.int8 and cfg.format is ModelFormat.openvino:
        meta.int8_overflow_fix = str(overflow_fix)
    out = Path(cfg.out) if cfg.out else default_out(cfg.checkpoint, cfg.format, cfg.int8)
    ensure_writable_dir(out.parent)
    side = -(-cfg.tile // meta.stride) * meta.stride  # as export_onnx traces it: a multiple of the stride
    tiles = None
    if cfg.int8 and cfg.calibration:
        tiles = calibration_tiles(cfg.calibration, model, cfg.calibration_tiles, side)
    elif cfg.int8:
        records, band_frac = training_imagery(cfg.checkpoint)
        log.info("compile: int8 calibration on the training imagery: %d mosaics, left of the held-out band", len(records))
        tiles = calibration_tiles_of(records, model, cfg.calibration_tiles, side, band_frac)
    meta.runtime = compiled_candidate(cfg, out, plan)
    validate = FootprintAgreement(net, tiles) if tiles and cfg.int8_max_drop is not None else None
    files = write_model_files(
        net,
        meta,
        cfg.format,
        out,
        cfg.tile,
        cfg.opset,
        tiles,
        int8_max_drop=cfg.int8_max_drop,
        int8_validate=validate,
        int8_overflow_fix=overflow_fix,
        int8_max_iterations=cfg.int8_max_iterations,
    )
    read_meta(out)  # the metadata reads back
    if cfg.verify:
        diff = verify(net, out, cfg.format, meta.stride)
        log.info("compile: max |p - p_torch| on a random tile: %.2e", diff)
        if diff > VERIFY_TOLERANCE and not cfg.int8:  # int8 differs by design; bench/bench_runtimes.py scores its footprints
            for f in files:
                f.unlink(missing_ok=True)
            raise SN7Error(
                f"compile: the exported model differs from the checkpoint by {diff:.3g} (> {VERIFY_TOLERANCE}) "
                "on a random tile; nothing written"
            )
    return out, files, meta


def parity_plan(report: str | Path) -> dict:
    """The fastest engine at truth parity of a ``bench/bench_runtimes.py`` report, and how to compile it.

    Raises:
        SN7DataError: an unreadable or malformed report, or one without an engine at parity.
    """
    path = Path(report)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = engine_choice.report_entries(doc)
    except OSError as exc:
        raise SN7DataError(path, f"parity report not readable ({exc.strerror})") from None
    except (ValueError, RecursionError) as exc:
        raise SN7DataError(path, f"not a bench/bench_runtimes.py parity report ({str(exc).splitlines()[0][:200]})") from None
    at_parity = [e for e in entries if e["candidate"]["parity"] is True]
    if not at_parity:
        raise SN7DataError(path, "no engine of the report is at truth parity with torch fp32 (torch fp32 itself counts)")
    best = max(at_parity, key=lambda e: engine_choice.speed(e["candidate"]))
    if not doc.get("machine", {}).get("idle", False):
        log.warning("compile: %s was measured on a busy machine: its speeds are not reliable", path)
    plan = {**best["plan"], **{k: best["candidate"][k] for k in ("engine", "precision", "amp")}}
    plan["candidate"], plan["report"], plan["entries"] = best["candidate"], str(path), entries
    print(f"compile: the fastest engine at truth parity in {path.name}: {engine_choice.describe(best['candidate'])}")
    return plan


def compiled_candidate(cfg: CompileConfig, out: Path, plan: dict | None) -> dict:
    """The engine candidate of what ``cfg`` compiles to ``out`` (ModelMeta's ``runtime``): as the parity report
    measured it, or, without one, an fp32 export at parity by ``verify`` and an int8 one not measured."""
    engine = "onnxruntime" if cfg.format is ModelFormat.onnx else "openvino"
    if plan is not None:
        return {
            **plan["candidate"],
            "file": out.name,
            "sha256": None,
            "basis": f"truth parity report {Path(plan['report']).name}",
        }
    return {
        "engine": engine,
        "precision": "int8" if cfg.int8 else "fp32",
        "amp": False,
        "file": out.name,
        "sha256": None,
        "tiles_per_s": None,
        "speedup": None,
        "parity": None if cfg.int8 or not cfg.verify else True,
        "basis": "not measured against the truth: bench/bench_runtimes.py, then compile parity=REPORT"
        if cfg.int8 or not cfg.verify
        else f"compile verify: fp32 within {VERIFY_TOLERANCE:g} of torch fp32 (fp32 exports reproduce its footprints)",
        "name": f"{engine} {'int8' if cfg.int8 else 'fp32'}",
    }


def _record_in_bundle(cfg: CompileConfig, out: Path, candidate: dict, plan: dict | None) -> Path | None:
    """Add the compiled file to the bundle's card ``runtime`` when ``out`` lies in the bundle's folder."""
    if not is_bundle(cfg.checkpoint) or out.resolve().parent != bundle_dir(cfg.checkpoint).resolve():
        return None
    entry = {**candidate, "sha256": engine_choice.sha256(out)}
    return _update_runtime(cfg.checkpoint, [entry] + (_torch_entries(plan) if plan else []), entry, plan)


def _torch_entries(plan: dict) -> list[dict]:
    """The report's torch candidates (they need no file), so that auto can compare with them."""
    return [dict(e["candidate"]) for e in plan["entries"] if e["candidate"]["engine"] == "torch"]


def _update_runtime(bundle: str | Path, entries: list[dict], chosen: dict, plan: dict | None) -> Path:
    """Merge ``entries`` into the card's candidates (replacing those of the same engine, precision and file)."""
    old = read_card(bundle).get("runtime") or {}
    key = lambda c: (c["engine"], c["precision"], c.get("file"))  # noqa: E731
    new_keys = {key(e) for e in entries}
    candidates = [c for c in old.get("candidates", []) if key(c) not in new_keys] + entries
    runtime = {
        "chosen": chosen,
        "candidates": candidates,
        "tolerance": engine_choice.PARITY_TOLERANCE,
        "report": Path(plan["report"]).name if plan else old.get("report"),
    }
    return record_runtime(bundle, runtime)


def _record_torch(cfg: CompileConfig, plan: dict) -> dict[str, Path]:
    """``parity=`` chose torch: nothing to compile; a bundle records the choice."""
    print(
        f"compile: torch is the fastest engine at truth parity ({engine_choice.describe(plan['candidate'])}): nothing to export"
    )
    if is_bundle(cfg.checkpoint):
        card = _update_runtime(cfg.checkpoint, _torch_entries(plan), dict(plan["candidate"]), plan)
        print(f"compile: recorded in {card}")
        return {"card": card}
    return {}


def training_imagery(checkpoint: str | Path) -> tuple[list, float | None]:
    """The training mosaics of a checkpoint (month records) and the held-out band's width (``None``: no band).

    A bundle's card names them (``provenance``: data, aois, holdout, band_frac); a checkpoint its
    ``chip_meta`` (data_root, aois) and its run's ``pipeline.json`` (holdout, band_frac).

    Raises:
        SN7Error: the checkpoint does not name its training data, or the data is not here.
    """
    from spacenet7.data.sn7 import scan
    from spacenet7.models.bundle import run_folder
    from spacenet7.models.task import read_checkpoint

    _, hp = read_checkpoint(checkpoint)
    if "card" in hp:
        prov = hp["card"].get("provenance") or {}
        roots, aois = prov.get("data"), prov.get("aois")
        band_frac = prov.get("band_frac") if prov.get("holdout") == "band" else None
    else:
        meta = hp.get("chip_meta") or {}
        roots = (meta.get("settings") or {}).get("data_root") or meta.get("data_root")
        aois, band_frac = meta.get("aois"), None
        run = run_folder(Path(checkpoint))
        if run is not None:
            config = (json.loads(RunLayout(run).manifest.read_text()).get("config")) or {}
            band_frac = config.get("band_frac") if config.get("holdout") == "band" else None
    if not isinstance(roots, str) or not roots:
        raise SN7Error(
            f"compile: {checkpoint} does not name its training imagery; int8=true needs calibration=[mosaic.tif,...] "
            "(mosaics of the training area, not the scored data)"
        )
    try:
        records = [r for recs in scan(_existing_roots(roots), "train", aois or None).values() for r in recs]
    except SN7Error as exc:
        raise SN7Error(
            f"compile: the training imagery of {checkpoint} ({roots}) is not readable here ({str(exc)[:160]}); "
            "give calibration=[mosaic.tif,...] (mosaics of the training area, not the scored data)"
        ) from None
    if not records:
        raise SN7Error(f"compile: no training mosaic of {checkpoint} under {roots}; give calibration=[mosaic.tif,...]")
    return records, (float(band_frac) if band_frac else None)


def _existing_roots(roots: str) -> str:
    """``roots`` (joined by ``os.pathsep``) with relative ones found from here or from the repository root."""
    import os

    repo = Path(__file__).resolve().parent.parent
    out = []
    for root in roots.split(os.pathsep):
        p = Path(root)
        out.append(str(p if p.is_absolute() or p.exists() or not (repo / p).exists() else repo / p))
    return os.pathsep.join(out)


def resolve_overflow_fix(fix: OverflowFix) -> OverflowFix:
    """``auto``: full 8-bit weights (``disable``) where this CPU has VNNI or AMX, else NNCF's ``first_layer``."""
    if fix is not OverflowFix.auto:
        return fix
    return OverflowFix.disable if cpu_has_vnni() else OverflowFix.first_layer


def calibration_tiles(images: list[str], model: LoadedModel, n: int, tile: int) -> list[np.ndarray]:
    """Up to ``n`` (1, 3, tile, tile) float tiles in [0, 1] with valid pixels, spread over ``images`` (read as predict reads them)."""
    from spacenet7.data.sn7 import records_from_files

    records = [r for recs in records_from_files(list(images), "calibration").values() for r in recs]
    return calibration_tiles_of(records, model, n, tile, None, what=str(images))


def calibration_tiles_of(
    records: list, model: LoadedModel, n: int, tile: int, band_frac: float | None = None, what: str = ""
) -> list[np.ndarray]:
    """:func:`calibration_tiles` of month records; ``band_frac``: only tiles left of each mosaic's held-out
    right band of that width (the band is scored: never calibrate on it)."""
    from rasterio.windows import Window

    from spacenet7.data.sn7 import image_grid, read_image
    from spacenet7.io.raster import iter_windows

    found: list[np.ndarray] = []
    per_image = max(1, -(-n // max(len(records), 1)))
    what = what or f"{len(records)} training mosaics"
    for rec in records:
        src_h, src_w = image_grid(rec)[2]
        keep_w = src_w if not band_frac else band_start(src_w, band_frac)
        if keep_w <= 0:
            continue
        img = read_image(rec, window=Window(0, 0, keep_w, src_h), upscale=model.upscale, spec=model.spec)
        h, w = img.rgb.shape[1:]
        wins = [wn for wn in iter_windows(h, w, tile, tile) if wn.height == tile and wn.width == tile]
        step = max(1, len(wins) // per_image)
        for wn in wins[::step][:per_image]:
            r, c = int(wn.row_off), int(wn.col_off)
            if img.valid[r : r + tile, c : c + tile].mean() > 0.5:
                found.append((img.rgb[None, :, r : r + tile, c : c + tile] / np.float32(255)).astype(np.float32))
    if not found:
        raise SN7Error(f"compile: no calibration tile of {tile}^2 with valid pixels in {what}")
    if len(found) < n:
        log.warning(
            "compile: %d calibration tiles of %d^2 with valid pixels in %s, fewer than the %d asked", len(found), tile, what, n
        )
    return found[:n]


def footprints(prob: np.ndarray) -> np.ndarray:
    """Building polygons of a (3, H, W) probability array at the vectorize defaults (watershed, no tracking)."""
    v = VectorizeConfig()
    labels = instances(prob, threshold=v.threshold, seed_threshold=v.seed_threshold, min_seed_px=v.min_seed_px)
    return polygons(labels, min_area=v.min_area_px)


def footprint_f1(reference: np.ndarray, other: np.ndarray) -> float:
    """Building F1 of the polygons ``other`` against ``reference`` at IoU >= 0.5 (1 when both are empty)."""
    if len(reference) == 0 and len(other) == 0:
        return 1.0
    return 2 * len(match(reference, other, 0.5, inclusive=True)) / (len(reference) + len(other))


class FootprintAgreement:
    """int8 accuracy control's score (NNCF's ``validation_fn``): ``(compiled model, some of tiles) -> F1``.

    Building F1 at IoU >= 0.5, pooled over the given tiles, of the compiled model's footprints against
    ``net``'s (fp32, a copy) on the same tiles. NNCF calls it on subsets too (first on one tile), so
    references are looked up by each tile's content. It returns one number, so NNCF ranks the layers
    by how much each changes the output (NMSE, fast) and uses this score to decide when to stop;
    per-tile scores would make it rank by footprints, over 10x slower (minutes per network). It
    holds only the reference footprints, so that it pickles to the quantizing process.
    """

    @torch.no_grad()
    def __init__(self, net: torch.nn.Module, tiles: list[np.ndarray]) -> None:
        ref_net = copy.deepcopy(net).float().eval()
        self.reference = {t.tobytes(): footprints(ref_net(torch.from_numpy(t)).sigmoid()[0].numpy()) for t in tiles}

    def __call__(self, compiled: Any, data: Iterable[np.ndarray]) -> float:
        """Pooled F1 of ``compiled`` (an OpenVINO compiled model) on ``data``."""
        matched = total = 0
        for tile in data:
            ref, other = self.reference[np.asarray(tile).tobytes()], footprints(np.asarray(compiled(tile)[0])[0])
            matched += len(match(ref, other, 0.5, inclusive=True))
            total += len(ref) + len(other)
        return 2 * matched / total if total else 1.0


@torch.no_grad()
def verify(net: torch.nn.Module, path: Path, fmt: ModelFormat, stride: int) -> float:
    """Max absolute difference between the exported file (fp32) and torch fp32 on two random tiles of an odd size."""
    side = 3 * stride + stride * (64 // stride or 1)  # not the traced size: the axes must be dynamic
    x = torch.rand(2, 3, side, side + stride, generator=torch.Generator().manual_seed(0))
    ref = net.float().eval()(x.contiguous(memory_format=torch.channels_last)).sigmoid()
    runtime = make_runtime(Engine.onnxruntime if fmt is ModelFormat.onnx else Engine.openvino, path)
    return float(np.abs(runtime(x).numpy() - ref.numpy()).max())
