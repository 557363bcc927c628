"""How a mosaic file becomes the network's input: band order, alpha band, scaling to 8 bit.

SpaceNet 7 mosaics are 4-band uint8 RGBA and need nothing. Other Planet products are not: an
analytic scene is 4-band uint16 BGRN, where band 4 is near-infrared, not alpha. An
:class:`InputSpec` states the file's layout; ``chip`` records it in ``chips.json``, ``train``
stores it in the checkpoint, and ``predict`` applies the same spec unless told otherwise. A file
that does not fit its spec is a one-line error, never a silent ``value mod 256``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import List, Optional

import numpy as np
from rasterio.enums import Resampling
from rasterio.io import DatasetReader

from spacenet7.errors import SN7DataError, SN7Error, choice

STATS_SIDE = 512  # percentile scaling: statistics from a decimated read of at most this side


class Scaling(StrEnum):
    """How input values become 0-255 (lower-case names: Hydra matches overrides by name)."""

    none = "none"  # 8-bit input, used as is (anything else is refused)
    fixed = "fixed"  # ``range`` [lo, hi] -> [0, 255], the same for every band and image
    percentile = "percentile"  # per band and image: its ``percentiles`` [lo, hi] of valid pixels -> [0, 255]


class Upsampling(StrEnum):
    """The kernel that resamples RGB onto a finer training grid (``upscale`` > 1)."""

    bilinear = "bilinear"  # the default: 2x2 source pixels
    cubic = "cubic"  # 4x4
    lanczos = "lanczos"  # 6x6 (windowed sinc, sharpest): the real recipe's

    @property
    def halo(self) -> int:
        """Source pixels a window must read beyond its edge to match the whole-mosaic resampling."""
        return {"bilinear": 1, "cubic": 2, "lanczos": 3}[self.value]

    @property
    def rasterio(self) -> Resampling:
        """The rasterio/GDAL resampling of the same name."""
        return Resampling[self.value]


@dataclass
class InputSpec:
    """The layout of the input mosaics (1-based band numbers, as GDAL counts them).

    Attributes:
        count: the band count every file must have (``None``: any count with the bands named here).
        rgb: the bands holding red, green and blue, in that order (``[3, 2, 1]`` for BGRN).
        alpha: the band whose 0 marks unusable pixels (``images_masked`` is read when present),
            or ``None``: every pixel is usable except the file's nodata.
        scaling: how values become 8 bit (:class:`Scaling`).
        range: ``scaling=fixed``: the input values mapped to 0 and 255.
        percentiles: ``scaling=percentile``: the per-band percentiles mapped to 0 and 255.
        resampling: the RGB kernel onto an upscaled grid (:class:`Upsampling`; masks are always nearest).
    """

    count: Optional[int] = 4
    rgb: List[int] = field(default_factory=lambda: [1, 2, 3])
    alpha: Optional[int] = 4
    scaling: Scaling = Scaling.none
    range: List[float] = field(default_factory=lambda: [0.0, 255.0])
    percentiles: List[float] = field(default_factory=lambda: [2.0, 98.0])
    resampling: Upsampling = Upsampling.bilinear

    def __post_init__(self) -> None:
        self.scaling = choice(self.scaling, Scaling, None, "input.scaling")
        self.resampling = choice(self.resampling, Upsampling, None, "input.resampling")
        if len(self.rgb) != 3 or any(int(b) < 1 for b in self.rgb):
            raise SN7Error(f"input.rgb={list(self.rgb)} must be three band numbers >= 1 (red, green, blue)")
        if self.count is not None and self.count < self.bands_needed:
            raise SN7Error(f"input.count={self.count} is fewer than the bands input.rgb/input.alpha name ({self.bands_needed})")
        if self.alpha is not None and self.alpha < 1:
            raise SN7Error(f"input.alpha={self.alpha} must be a band number >= 1, or null")
        if len(self.range) != 2 or not self.range[0] < self.range[1]:
            raise SN7Error(f"input.range={list(self.range)} must be [lo, hi] with lo < hi")
        if len(self.percentiles) != 2 or not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise SN7Error(f"input.percentiles={list(self.percentiles)} must be [lo, hi] with 0 <= lo < hi <= 100")

    @property
    def bands_needed(self) -> int:
        """The smallest band count a file must have."""
        return max([*self.rgb, self.alpha or 0])

    def to_dict(self) -> dict:
        """Plain types, for ``chips.json`` and checkpoints."""
        d = asdict(self)
        return {
            **d,
            "rgb": [int(b) for b in d["rgb"]],
            "scaling": self.scaling.value,
            "resampling": self.resampling.value,
            "range": [float(v) for v in d["range"]],
            "percentiles": [float(v) for v in d["percentiles"]],
        }

    @classmethod
    def from_dict(cls, d: dict | None) -> InputSpec:
        """Inverse of :meth:`to_dict`; ``None`` (chips and checkpoints older than specs) is the SN7 layout."""
        return cls(**d) if d else cls()


def rgb_fallback(spec: InputSpec, count: int) -> InputSpec | None:
    """The spec that reads a 3-band RGB file for a model of RGB + alpha imagery (SN7's 4-band mosaics):
    ``count=3, alpha=None``; ``None`` when ``spec`` already fits ``count`` or is another layout."""
    if count == 3 and spec.count == 4 and spec.alpha == 4 and [int(b) for b in spec.rgb] == [1, 2, 3]:
        return replace(spec, count=3, alpha=None)
    return None


def check_fits(ds: DatasetReader, spec: InputSpec, path: str | Path) -> None:
    """Raise a one-line :class:`SN7DataError` unless the open raster ``ds`` fits ``spec``."""
    if spec.count is not None and ds.count != spec.count:
        raise SN7DataError(
            path,
            f"has {ds.count} band(s) but input.count={spec.count} (for other imagery set input.count, "
            "input.rgb and input.alpha to its layout)",
        )
    if ds.count < spec.bands_needed:
        hint = " (set input.alpha=null for a file without an alpha band)" if spec.alpha and ds.count < spec.alpha else ""
        raise SN7DataError(
            path,
            f"has {ds.count} band(s) but input.rgb={list(spec.rgb)}, input.alpha={spec.alpha} need {spec.bands_needed}{hint}",
        )
    dtype = ds.dtypes[spec.rgb[0] - 1]
    if spec.scaling == Scaling.none and dtype != "uint8":
        raise SN7DataError(
            path,
            f"is {dtype}, but input.scaling=none reads 8-bit imagery only; set "
            "input.scaling=percentile, or input.scaling=fixed with input.range=[lo,hi]",
        )


def band_limits(ds: DatasetReader, spec: InputSpec) -> np.ndarray | None:
    """Per-band ``[lo, hi]`` (3, 2) mapped to 0 and 255, or ``None`` when the values are used as is."""
    if spec.scaling == Scaling.none:
        return None
    if spec.scaling == Scaling.fixed:
        return np.tile(np.asarray(spec.range, np.float64), (3, 1))
    return _percentile_limits(
        str(ds.name), Path(ds.name).stat().st_mtime_ns, tuple(spec.rgb), spec.alpha, tuple(spec.percentiles)
    )


@functools.lru_cache(maxsize=256)
def _percentile_limits(
    path: str, _mtime: int, rgb: tuple[int, ...], alpha: int | None, percentiles: tuple[float, float]
) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        k = max(1, int(np.ceil(max(ds.height, ds.width) / STATS_SIDE)))
        shape = (max(1, ds.height // k), max(1, ds.width // k))
        a = ds.read(list(rgb), out_shape=(3, *shape), resampling=Resampling.nearest).astype(np.float64)
        ok = np.ones(shape, bool)
        if alpha is not None:
            ok &= ds.read(alpha, out_shape=shape, resampling=Resampling.nearest) > 0
        if ds.nodata is not None:
            ok &= ~np.all(a == ds.nodata, axis=0)
        ok &= np.isfinite(a).all(axis=0)  # float imagery: NaN (and inf) pixels are nodata, not a value
    if not ok.any():
        raise SN7DataError(path, "no valid pixel to compute input.percentiles from")
    lo, hi = np.percentile(a[:, ok], percentiles, axis=1)
    return np.stack([lo, np.maximum(hi, lo + 1e-6)], axis=1)


def to_uint8(values: np.ndarray, limits: np.ndarray | None) -> np.ndarray:
    """Scale (3, ...) band values to uint8 with per-band ``limits`` (``None``: already 8 bit)."""
    if limits is None:
        return values.astype(np.uint8, copy=False)
    if values.dtype == np.uint8 and len(values) == len(limits):  # 8-bit imagery (SN7): one 256-entry table per band,
        # the same values ~10x faster (bench/bench_input_scaling.py)
        table = _scaled(np.arange(256, dtype=np.uint8)[None, :].repeat(len(limits), axis=0), limits)
        return np.stack([table[b][values[b]] for b in range(len(limits))])
    return _scaled(values, limits)


def _scaled(values: np.ndarray, limits: np.ndarray) -> np.ndarray:
    shape = (3,) + (1,) * (values.ndim - 1)
    lo, hi = limits[:, 0].reshape(shape), limits[:, 1].reshape(shape)
    scaled = np.round((values.astype(np.float32) - lo) * (255.0 / (hi - lo)))
    return np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).astype(np.uint8)  # NaN pixels: 0 (nodata_mask marks them)


def nodata_mask(ds: DatasetReader, values: np.ndarray) -> np.ndarray:
    """(H, W) True where every RGB band equals the file's nodata, or any band is NaN or infinite (float imagery)."""
    out = np.zeros(values.shape[1:], bool)
    if values.dtype.kind == "f":
        out |= ~np.isfinite(values).all(axis=0)
    if ds.nodata is not None:
        out |= np.all(values == ds.nodata, axis=0)
    return out
