"""Score a grid of vectorize settings on one AOI's predictions: how the vectorize defaults were chosen.

    python bench/tune_vectorize.py PRED_DIR AOI [key=v1,v2,...] ... [--data-root data/synthetic]

PRED_DIR is a `spacenet7 predict` output folder holding AOI/. Every combination of the listed
vectorize overrides (any `spacenet7 vectorize` key, e.g. threshold=0.4,0.5 track.min_persist=2,3
shift_px=[0,0],[-0.3333,-0.3333])
runs vectorize + export + SCOT against the AOI's ground truth, one line each. Tune on a validation
AOI only, never on a held-out one. The demo's validation AOI (its chips' `val` split) is
L15-1201E-1203N_4805_3379_13; its held-out AOI is listed in runs/demo/pipeline.json.

    spacenet7 predict checkpoint=runs/demo/train/checkpoints/best.ckpt grid=upscaled \\
        aois=[L15-1201E-1203N_4805_3379_13] out_dir=runs/val_pred
    python bench/tune_vectorize.py runs/val_pred L15-1201E-1203N_4805_3379_13 threshold=0.4,0.5 seed_threshold=0.3,0.55

Each line gives SCOT with its tracking and change terms and counts, and the building F1 /
precision / recall at IoU >= 0.5 and > 0.25. ``--region ROW0 ROW1 COL0 COL1`` scores only that pixel
box, as ``evaluate region=`` does, and adds the pixel IoU: e.g. the real time series' held-out band
(``make real`` first; tune on one place, check on the other, docs/real-data.md):

    python bench/tune_vectorize.py runs/real/predictions L15-0331E-1257N_1327_3160_13 \\
        track.min_persist=2,4 --data-root ../shared/data/sn7_real_timeseries --region 0 1023 768 1024
    python bench/tune_vectorize.py runs/real/predictions L15-1615E-1205N_6460_3370_13 \\
        threshold=0.2,0.25,0.3,0.4 seed_threshold=0.3 --data-root ../shared/data/sn7_real_sample --region 0 512 768 1024
"""

import argparse
import itertools
import logging
import re
import tempfile
from pathlib import Path

from spacenet7 import export, vectorize
from spacenet7.compose import compose
from spacenet7.evaluate import ground_truth_table
from spacenet7.metrics.pixel import clip_to_region, pixel_iou
from spacenet7.metrics.scot import scot
from spacenet7.metrics.table import read_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pred_dir")
    ap.add_argument("aoi")
    ap.add_argument("grid", nargs="*", help="vectorize overrides key=v1,v2,...")
    ap.add_argument("--data-root", default="data/synthetic")
    ap.add_argument("--split-dir", default="train")
    ap.add_argument("--region", nargs=4, type=float, default=None, metavar=("ROW0", "ROW1", "COL0", "COL1"))
    args = ap.parse_args()
    logging.disable(logging.INFO)
    truth = ground_truth_table(args.data_root, args.split_dir, [args.aoi])
    if args.region:
        truth = clip_to_region(truth, args.region)
    keys = [g.split("=", 1)[0] for g in args.grid]
    values = [re.split(r",(?![^\[]*\])", g.split("=", 1)[1]) for g in args.grid]  # commas outside [...]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for combo in itertools.product(*values):
            overrides = [f"{k}={v}" for k, v in zip(keys, combo)]
            vectorize.run(
                compose("vectorize", [f"pred_dir={args.pred_dir}", f"out_dir={out / 'vec'}", f"aois=[{args.aoi}]", *overrides])
            )
            export.run(compose("export", [f"vec_dir={out / 'vec'}", f"out_dir={out / 'fp'}", f"submission={out / 'sub.csv'}"]))
            proposal = read_table(out / "sub.csv")
            if args.region:
                proposal = clip_to_region(proposal, args.region)
            r = scot(truth, proposal)
            a = r.per_aoi[0]
            line = (
                f"{' '.join(overrides) or '(defaults)'}: SCOT {r.scot:.4f} tracking {r.tracking:.4f} "
                f"change {r.change:.4f} | tp {a.tp} fp {a.fp} fn {a.fn} mismatches {a.mismatches} "
                f"| change tp {a.change_tp} fp {a.change_fp} fn {a.change_fn} "
                f"| F1@0.5 {r.f1:.4f} (P {r.precision:.3f} R {r.recall:.3f}) F1@0.25 {r.f1_25:.4f}"
            )
            if args.region:
                line += f" pixel IoU {pixel_iou(truth, proposal, args.region):.4f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
