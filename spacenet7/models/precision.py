"""Choosing numeric precision: bf16 where the hardware runs it natively, fp32 otherwise."""

from __future__ import annotations

from pathlib import Path

import torch

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # /proc/cpuinfo names of int8 dot products in int32


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 (AVX512-BF16 or AMX); autocast is then ~3x faster than fp32."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except RuntimeError:
                pass
    return False


def cpu_has_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU has VNNI or AMX int8 (``VNNI_FLAGS``); False where it cannot be told (no ``cpuinfo``)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return not VNNI_FLAGS.isdisjoint(value.split())
    return False


def resolve_precision(precision: str, accelerator: str) -> str:
    """Resolve Lightning's ``precision``; ``auto`` = bf16-mixed on GPUs and bf16-capable CPUs, else 32-true."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32-true"


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype for inference on ``device`` (``None``: run in fp32)."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None
