"""How far a data set's labels sit from the buildings in its imagery, without any model.

    python bench/label_offset.py [--data-root ../shared/data/sn7_real_sample] [--aoi AOI] [--cols 0 768]

For every labelled month, the mosaic is read on a 6x grid (Lanczos) and the labels are rasterized
there, shifted by (dx, dy) source pixels over a grid of shifts. For each shift it prints two
registration scores, both highest where the label outlines lie on the buildings of the image:

- ``edge``: the mean image gradient magnitude on the labels' outlines (roof edges are the
  strongest gradients near a building, bright or dark roof alike);
- ``contrast``: the mean brightness inside the labels minus the scene mean.

and the shift that maximizes each (a parabola through the best shift and its neighbours, per axis).
``--cols`` keeps a column range of the source grid, e.g. the training area of the real sample's
held-out band split (0 768), so that the choice never looks at the band. This is how
``chip.label_shift_px`` / ``vectorize.shift_px`` of ``recipe=real_sample`` were chosen: on the
sample's training area the labels sit about a third of a pixel up and left of the imagery.
"""

import argparse

import numpy as np
from affine import Affine
from scipy import ndimage

from spacenet7.data.bands import InputSpec
from spacenet7.data.registration import parabola_peak
from spacenet7.data.sn7 import instance_raster, read_image, read_labels, scan, shift_labels

UP = 6  # analysis grid: a sixth of a source pixel


def _vertex(scores: np.ndarray, shifts: np.ndarray, axis: int) -> float:
    """Sub-step location of the maximum along ``axis`` (the library's parabola, :mod:`spacenet7.data.registration`)."""
    return float(shifts[0]) + parabola_peak(scores.max(axis=1 - axis), float(shifts[1] - shifts[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data/sn7_real_sample")
    ap.add_argument("--aoi", default=None, help="one AOI (the full SN7 set takes ~30 s per month)")
    ap.add_argument("--cols", nargs=2, type=int, default=None, metavar=("COL0", "COL1"), help="source columns to use")
    ap.add_argument("--max-shift", type=float, default=2 / 3, help="source pixels each way")
    args = ap.parse_args()
    shifts = np.round(np.arange(-args.max_shift, args.max_shift + 1e-9, 1 / UP), 4)
    edge = np.zeros((len(shifts), len(shifts)))
    contrast = np.zeros_like(edge)
    n = 0
    for aoi, recs in scan(args.data_root, "train", [args.aoi] if args.aoi else None).items():
        for rec in recs:
            if rec.labels_match is None:  # an unlabelled month: nothing to register
                continue
            labels = read_labels(rec)
            if not len(labels):
                continue
            img = read_image(rec, upscale=UP, spec=InputSpec(resampling="lanczos"))
            gray = img.rgb.astype(np.float64).mean(0)
            grad = np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))
            keep = np.ones(gray.shape, bool)
            if args.cols:
                keep[:, : args.cols[0] * UP] = False
                keep[:, args.cols[1] * UP :] = False
            keep &= img.valid
            src = img.transform * Affine.scale(UP)
            for i, dy in enumerate(shifts):
                for j, dx in enumerate(shifts):
                    inside = instance_raster(shift_labels(labels, src, dx, dy), gray.shape, img.transform) > 0
                    outline = inside ^ ndimage.binary_erosion(inside)
                    edge[i, j] += grad[outline & keep].mean()
                    contrast[i, j] += gray[inside & keep].mean() - gray[keep].mean()
            n += 1
            print(f"{aoi} {rec.month_key}: {len(labels)} labels", flush=True)
    if not n:
        raise SystemExit(f"label_offset: no labelled month under {args.data_root}")
    for name, s in (("edge", edge / n), ("contrast", contrast / n)):
        i, j = np.unravel_index(np.argmax(s), s.shape)
        print(
            f"{name}: best shift dx {shifts[j]:+.3f} dy {shifts[i]:+.3f} source px "
            f"(parabola: dx {_vertex(s, shifts, 1):+.3f} dy {_vertex(s, shifts, 0):+.3f}); "
            f"score {s[i, j]:.2f} there, {s[len(shifts) // 2, len(shifts) // 2]:.2f} unshifted"
        )


if __name__ == "__main__":
    main()
