"""Inference with a trained network: checkpoint loading, blended sliding windows, test-time views."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spacenet7.config import OverflowFix
from spacenet7.data.bands import InputSpec
from spacenet7.data.targets import CHANNELS
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.raster import iter_windows
from spacenet7.models.precision import autocast_dtype, cpu_has_fast_bf16, cpu_has_vnni
from spacenet7.models.runtime import Engine, Runtime, TorchRuntime, make_runtime, net_stride, read_meta
from spacenet7.models.task import build_net, read_checkpoint

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A trained network (a checkpoint or an exported model file), with what prediction must reproduce from training.

    ``runtime`` runs a batch of tiles (:mod:`spacenet7.models.runtime`); ``None`` is eager PyTorch
    on ``net``. ``stride``: tile sides are padded to a multiple of it.
    """

    net: torch.nn.Module | None
    upscale: float
    spec: InputSpec  # how the training imagery was read: band order, alpha, scaling
    device: torch.device
    amp_dtype: torch.dtype | None = None
    runtime: Runtime | None = None
    stride: int = 1

    def __post_init__(self) -> None:
        if self.runtime is None:
            if self.net is None:
                raise ValueError("LoadedModel needs a net or a runtime")
            self.runtime = TorchRuntime(self.net, self.device, self.amp_dtype)


def load_model(
    checkpoint: str | Path | None, model_cfg: dict | None = None, device: str = "auto", amp: bool = False
) -> LoadedModel:
    """Rebuild the trained network from a spacenet7 checkpoint or model bundle.

    Args:
        checkpoint: a ``.ckpt`` written by ``spacenet7 train``, a ``.bundle`` written by ``spacenet7 bundle``,
            or ``None``: the shipped real model.
        model_cfg: the architecture you expect; ``None`` uses the one stored in the checkpoint.
        device: ``auto``, ``cpu`` or ``cuda``.
        amp: bf16/fp16 autocast where the hardware runs it natively.

    Raises:
        SN7Error: missing file, not a spacenet7 checkpoint, weights of another architecture, or a device
            this machine does not have.
    """
    dev = resolve_device(device)
    if checkpoint is None:
        from spacenet7.models.bundle import shipped_or_fail

        checkpoint = shipped_or_fail("predict")
    path = Path(checkpoint)
    state, hp = read_checkpoint(path)
    cfg = model_cfg or hp["model"]
    net = build_net(cfg, None if model_cfg else path)  # validated data, never instantiated (a file could name any callable)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:160]
        raise SN7DataError(
            path,
            f"weights do not fit the architecture {cfg.get('arch')}/{cfg.get('encoder_name')} "
            f"(checkpoint was trained as {hp['model'].get('arch')}/{hp['model'].get('encoder_name')}): {first}",
        ) from None
    meta = hp.get("chip_meta") or {}
    net = net.eval().to(dev).to(memory_format=torch.channels_last)
    return LoadedModel(
        net,
        float(meta.get("upscale", 1.0)),
        InputSpec.from_dict(meta.get("input")),
        dev,
        autocast_dtype(dev, amp),
        stride=net_stride(net),
    )


def resolve_device(device: str) -> torch.device:
    """The torch device of a ``device`` setting: ``auto`` (a CUDA GPU if torch sees one, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``.

    Raises:
        SN7Error: not a device name, or a CUDA device that torch does not see on this machine.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SN7Error(f"device={device!r} is not a torch device (auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SN7Error(f"device={device}: torch sees no CUDA GPU on this machine; use device=auto or device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SN7Error(f"device={device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def load_model_file(
    model_file: str | Path, engine: Engine, *, amp: bool = False, threads: int = 0, device: str = "auto"
) -> LoadedModel:
    """An exported model file (``spacenet7 compile``) in ONNX Runtime or OpenVINO.

    Args:
        model_file: an ``.onnx`` file, or an OpenVINO ``.xml`` (engine=openvino).
        engine: ``onnxruntime`` or ``openvino``.
        amp: OpenVINO: bf16 where the CPU runs it natively (as torch's autocast); ONNX Runtime: fp32 always.
        threads: intra-op threads (0: the runtime's default).
        device: ``auto``/``cpu``; ``cuda`` selects ONNX Runtime's CUDA provider when installed (untested).

    Raises:
        SN7Error: missing file or metadata, or a runtime package that is not installed.
    """
    meta = read_meta(model_file)
    if meta.int8_overflow_fix == OverflowFix.disable and not cpu_has_vnni():
        log.warning(
            "%s: quantized with full 8-bit weights for CPUs with VNNI; this CPU has none, so its int8 sums can "
            "saturate: re-export with `spacenet7 compile ... int8_overflow_fix=first_layer` if footprints degrade",
            model_file,
        )
    dev = "cpu" if device == "auto" else device
    runtime = make_runtime(engine, model_file, threads=threads, bf16=amp and cpu_has_fast_bf16(), device=dev)
    return LoadedModel(
        None,
        float(meta.upscale),
        InputSpec.from_dict(meta.input),
        torch.device("cpu"),
        None,
        runtime=runtime,
        stride=int(meta.stride),
    )


def window_weights(tile: int) -> np.ndarray:
    """A smooth 2-D blending window (squared sine), never exactly zero."""
    w = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    return np.maximum(np.outer(w, w), 1e-3).astype(np.float32)


@torch.no_grad()
def sliding_window(
    model: LoadedModel, rgb: np.ndarray, tile: int, overlap: int, batch_size: int = 8, tta: str | None = None
) -> np.ndarray:
    """Blended sliding-window probabilities for a (3, H, W) uint8 image -> (C, H, W) float32.

    ``tta``: a key of ``TTA_VIEWS`` to average over those views, or None for one view.
    """
    _, h, w = rgb.shape
    ph, pw = max(h, tile), max(w, tile)
    img = np.pad(rgb, ((0, 0), (0, ph - h), (0, pw - w)), mode="reflect") if (ph, pw) != (h, w) else rgb
    x = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255.0)
    weights = torch.from_numpy(window_weights(tile))
    acc = torch.zeros((len(CHANNELS), ph, pw))
    norm = torch.zeros((ph, pw))
    wins = list(iter_windows(ph, pw, tile, tile - overlap))
    for i in range(0, len(wins), batch_size):
        chunk = wins[i : i + batch_size]
        batch = torch.stack(
            [x[:, int(wn.row_off) : int(wn.row_off) + tile, int(wn.col_off) : int(wn.col_off) + tile] for wn in chunk]
        )
        prob = predict_batch(model, batch, tta)
        for wn, p in zip(chunk, prob):
            r, c = int(wn.row_off), int(wn.col_off)
            acc[:, r : r + tile, c : c + tile] += p * weights
            norm[r : r + tile, c : c + tile] += weights
    return (acc / norm)[:, :h, :w].numpy()


# Test-time views as (quarter turns, mirror first): "d4" is the full dihedral group of the square,
# the same symmetries the default augmentation trains with; "flips" is identity + the two mirrors.
TTA_VIEWS: dict[str, tuple[tuple[int, bool], ...]] = {
    "d4": tuple((k, mirror) for k in range(4) for mirror in (False, True)),
    "flips": ((0, False), (0, True), (2, True)),
}


def predict_batch(model: LoadedModel, batch: torch.Tensor, tta: str | None) -> torch.Tensor:
    """Sigmoid probabilities of a (B, 3, h, w) batch, averaged over the ``TTA_VIEWS[tta]`` views (None: one)."""
    views = TTA_VIEWS[tta] if tta else ((0, False),)
    batch = batch.to(model.device)
    h, w = batch.shape[-2:]
    pad_h, pad_w = -h % model.stride, -w % model.stride  # the network's alignment (exported graphs need it)
    if pad_h or pad_w:
        batch = F.pad(batch, (0, pad_w, 0, pad_h), mode="reflect")
    run = model.runtime
    assert run is not None  # set in LoadedModel.__post_init__
    out = torch.zeros(())
    for k, mirror in views:
        xb = batch.flip(3) if mirror else batch
        xb = torch.rot90(xb, k, (2, 3)) if k else xb
        p = run(xb).to(batch.device)
        if p.ndim != 4 or p.shape[1] != len(CHANNELS) or p.shape[-2:] != xb.shape[-2:]:  # never copied into the wrong bands
            raise SN7Error(
                f"predict: the model answered a batch of shape {tuple(xb.shape)} with {tuple(p.shape)}, "
                f"not ({len(xb)}, {len(CHANNELS)}, {xb.shape[-2]}, {xb.shape[-1]}): one channel per class {list(CHANNELS)}"
            )
        p = torch.rot90(p, -k, (2, 3)) if k else p
        out = out + (p.flip(3) if mirror else p)
    out = out[..., :h, :w] if pad_h or pad_w else out
    return (out / len(views)).cpu()
