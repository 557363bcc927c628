"""Stage ``compile``: export a trained checkpoint for a fast inference runtime.

``format=onnx`` writes ``<stem>.onnx`` (opset >= 17); ``format=openvino`` converts that graph to
an OpenVINO IR, ``<stem>.xml`` + ``<stem>.bin``. Both take any batch, height and width (multiples
of the encoder's stride; ``predict`` pads to it) and carry the metadata ``predict`` needs:
upscale, input bands and scaling, classes and tile alignment (:mod:`spacenet7.models.runtime`).
Run them with ``spacenet7 predict engine=onnxruntime|openvino model_file=...``.

``int8=true`` quantizes statically on tiles of ``calibration`` mosaics: NNCF for OpenVINO (with
``int8_max_drop``, NNCF's accuracy control on footprint agreement with fp32: :class:`FootprintAgreement`;
full 8-bit weights where this CPU has VNNI: ``int8_overflow_fix``), ONNX Runtime's QDQ quantizer for ONNX.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spacenet7.config import CompileConfig, Engine, ModelFormat, OverflowFix, VectorizeConfig
from spacenet7.data.targets import CHANNELS
from spacenet7.errors import SN7Error
from spacenet7.io.atomic import ensure_writable_dir
from spacenet7.metrics.matching import match
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


def default_out(checkpoint: str | Path, fmt: ModelFormat) -> Path:
    """``<checkpoint folder>/<stem>.onnx`` or ``.xml``."""
    path = Path(checkpoint)
    return path.with_suffix(".onnx" if fmt is ModelFormat.onnx else ".xml")


def run(cfg: CompileConfig) -> dict[str, Path]:
    """Export ``cfg.checkpoint``; returns the written model file(s)."""
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
    out = Path(cfg.out) if cfg.out else default_out(cfg.checkpoint, cfg.format)
    ensure_writable_dir(out.parent)
    side = -(-cfg.tile // meta.stride) * meta.stride  # as export_onnx traces it: a multiple of the stride
    tiles = calibration_tiles(cfg.calibration or [], model, cfg.calibration_tiles, side) if cfg.int8 else None
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
    if cfg.int8 and cfg.format is ModelFormat.openvino:
        n_int8, n_conv = int8_convolutions(out)
        print(
            f"compile: {n_int8} of {n_conv} convolutions run in int8, the rest in float (bf16 where the CPU has it); "
            f"int8_overflow_fix={overflow_fix}"
        )
    print(
        f"compile: wrote {', '.join(map(str, files))} (stride {meta.stride}, upscale {meta.upscale:g}); run it with\n"
        f"  spacenet7 predict engine={'onnxruntime' if cfg.format is ModelFormat.onnx else 'openvino'} model_file={out} ..."
    )
    return {"model_file": out}


def resolve_overflow_fix(fix: OverflowFix) -> OverflowFix:
    """``auto``: full 8-bit weights (``disable``) where this CPU has VNNI or AMX, else NNCF's ``first_layer``."""
    if fix is not OverflowFix.auto:
        return fix
    return OverflowFix.disable if cpu_has_vnni() else OverflowFix.first_layer


def calibration_tiles(images: list[str], model: LoadedModel, n: int, tile: int) -> list[np.ndarray]:
    """Up to ``n`` (1, 3, tile, tile) float tiles in [0, 1] with valid pixels, spread over ``images`` (read as predict reads them)."""
    from spacenet7.data.sn7 import read_image, records_from_files
    from spacenet7.io.raster import iter_windows

    found: list[np.ndarray] = []
    per_image = max(1, -(-n // max(len(images), 1)))
    for recs in records_from_files(list(images), "calibration").values():
        for rec in recs:
            img = read_image(rec, upscale=model.upscale, spec=model.spec)
            h, w = img.rgb.shape[1:]
            wins = [wn for wn in iter_windows(h, w, tile, tile) if wn.height == tile and wn.width == tile]
            step = max(1, len(wins) // per_image)
            for wn in wins[::step][:per_image]:
                r, c = int(wn.row_off), int(wn.col_off)
                if img.valid[r : r + tile, c : c + tile].mean() > 0.5:
                    found.append((img.rgb[None, :, r : r + tile, c : c + tile] / np.float32(255)).astype(np.float32))
    if not found:
        raise SN7Error(f"compile: no calibration tile of {tile}^2 with valid pixels in {images}")
    if len(found) < n:
        log.warning(
            "compile: %d calibration tiles of %d^2 with valid pixels in %s, fewer than the %d asked", len(found), tile, images, n
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
