"""Where a data set's labels sit on its imagery, without a model (label registration).

SN7's labels were drawn on other imagery than the monthly mosaics they come with: on the real
AOIs they sit a fraction of a source pixel off the buildings. The offset is measured model-free:
the labels' outlines are rasterized once on a fine grid (``up`` times the source grid), and for
every shift of that grid within ``max_shift`` source pixels the mean image gradient magnitude
under the shifted outlines is read off (roof edges are the strongest gradients near a building,
bright and dark roofs alike). The shift with the highest mean, refined by a parabola through its
neighbours per axis, is where the labels lie on the buildings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spacenet7.data.bands import InputSpec, Upsampling
from spacenet7.data.sn7 import MonthRecord, instance_raster, read_image, read_labels


@dataclass(frozen=True)
class Offset:
    """A label offset estimate: (dx, dy) in source pixels, to add to the labels to put them on the imagery."""

    dx: float
    dy: float
    months: int  # labelled months it was measured on
    gain: float  # edge score at the best shift over the score unshifted (1 = no evidence of an offset)


def parabola_peak(profile: np.ndarray, step: float) -> float:
    """Sub-step offset (in units of ``step``) of the maximum of a 1-D profile, from a parabola through it."""
    i = int(np.argmax(profile))
    if 0 < i < len(profile) - 1:
        a, b, c = profile[i - 1], profile[i], profile[i + 1]
        den = a - 2 * b + c
        if den < 0:
            return float((i + 0.5 * (a - c) / den) * step)
    return float(i * step)


def edge_scores(
    record: MonthRecord, up: int = 6, max_shift: float = 2 / 3, cols: tuple[int, int] | None = None, spec: InputSpec | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The mean gradient magnitude under one month's label outlines, for every shift of the fine grid.

    Args:
        record: a month with ``labels_match``.
        up: fine grid steps per source pixel.
        max_shift: shifts up to this many source pixels each way.
        cols: use only the source columns ``[col0, col1)`` (e.g. a training area beside a held-out band).
        spec: how the mosaic is read (its band layout and scaling); Lanczos resampling is used.

    Returns:
        ``(scores, shifts)``: scores[i, j] for (dy, dx) = (shifts[i], shifts[j]) source pixels, or
        ``None`` when the month has no labels there.
    """
    if record.labels_match is None:
        return None
    labels = read_labels(record)
    if not len(labels):
        return None
    base = spec or InputSpec()
    img = read_image(record, upscale=up, spec=InputSpec.from_dict({**base.to_dict(), "resampling": Upsampling.lanczos.value}))
    gray = img.rgb.astype(np.float32).mean(0)
    grad = np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))
    inside = instance_raster(labels, gray.shape, img.transform) > 0
    outline = inside ^ ndimage.binary_erosion(inside)
    k = int(round(max_shift * up))
    h, w = gray.shape
    keep = outline & img.valid
    keep[:k], keep[h - k :], keep[:, :k], keep[:, w - k :] = False, False, False, False
    if cols is not None:
        keep[:, : cols[0] * up + k] = False
        keep[:, max(cols[1] * up - k, 0) :] = False
    r, c = np.nonzero(keep)
    if not len(r):
        return None
    steps = np.arange(-k, k + 1)
    # labels moved by (dy, dx) put their outline pixel (r, c) on the image pixel (r + dy, c + dx)
    scores = np.array([[grad[r + dy, c + dx].mean() for dx in steps] for dy in steps], dtype=np.float64)
    return scores, steps / up


def estimate_offset(
    records: list[MonthRecord],
    up: int = 6,
    max_shift: float = 2 / 3,
    cols: tuple[int, int] | None = None,
    spec: InputSpec | None = None,
    max_months: int = 4,
) -> Offset:
    """The label offset of an AOI from up to ``max_months`` of its labelled months (evenly spread).

    Returns (0, 0) with ``months=0`` when no month has labels in ``cols``.
    """
    labelled = [r for r in records if r.labels_match is not None]
    if len(labelled) > max_months:
        labelled = [labelled[i] for i in np.linspace(0, len(labelled) - 1, max_months).round().astype(int)]
    total, shifts, n = None, None, 0
    for rec in labelled:
        got = edge_scores(rec, up, max_shift, cols, spec)
        if got is None:
            continue
        total = got[0] if total is None else total + got[0]
        shifts, n = got[1], n + 1
    if total is None or shifts is None:
        return Offset(0.0, 0.0, 0, 1.0)
    step = float(shifts[1] - shifts[0]) if len(shifts) > 1 else 1.0
    dy = float(shifts[0]) + parabola_peak(total.max(axis=1), step)
    dx = float(shifts[0]) + parabola_peak(total.max(axis=0), step)
    mid = len(shifts) // 2
    return Offset(round(dx, 4), round(dy, 4), n, float(total.max() / total[mid, mid]))
