"""Deterministic train/val splits that never leak an AOI (or an area) across the split."""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window


def aoi_split(aois: list[str], val_frac: float, seed: int) -> dict[str, str]:
    """Assign whole AOIs to ``train`` or ``val``: months of one AOI never straddle the split.

    With a single AOI everything is ``train`` (use the spatial split instead).
    """
    aois = sorted(aois)
    if len(aois) < 2:
        return {a: "train" for a in aois}
    n_val = min(len(aois) - 1, max(1, int(round(len(aois) * val_frac))))
    order = np.random.default_rng(seed).permutation(len(aois))
    val = {aois[i] for i in order[:n_val]}
    return {a: ("val" if a in val else "train") for a in aois}


def band_start(width: int, frac: float) -> int:
    """The first column of a grid's right band of width fraction ``frac``: the spatial split's validation band,
    the held-out band that ``evaluate band_frac=`` scores and ``predict band_frac=`` predicts."""
    return int(round(width * (1 - frac)))


def spatial_split(window: Window, width: int, val_frac: float) -> str | None:
    """Split inside one AOI by columns: the right ``val_frac`` of the grid is validation.

    A chip crossing the boundary belongs to neither side (``None``), so no pixel leaks.
    """
    edge = band_start(width, val_frac)
    if window.col_off >= edge:
        return "val"
    if window.col_off + window.width <= edge:
        return "train"
    return None


def split_regions(h: int, w: int, aoi_side: str | None, val_frac: float) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(split, (r0, r1, c0, c1)) regions of an (h, w) grid: the whole AOI, or the spatial split's two bands.

    The spatial split puts the right ``val_frac`` of the columns in validation, the rest in training.
    """
    if aoi_side is not None:
        return [(aoi_side, (0, h, 0, w))]
    edge = band_start(w, val_frac)
    return [(side, reg) for side, reg in (("train", (0, h, 0, edge)), ("val", (0, h, edge, w))) if reg[3] > reg[2]]
