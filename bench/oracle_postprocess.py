"""The ceiling of the post-processing: feed the truth's own targets through polygonize + track + SCOT.

    python bench/oracle_postprocess.py [data_root] [AOI]

A perfect model would output exactly these probabilities, so the score is the most vectorize can
give on this AOI; the 1x vs 2x rows show what input upscaling buys (the SN7 winners' key trick).
"""

import sys

import numpy as np
import pandas as pd
import shapely

from spacenet7.config import VectorizeConfig
from spacenet7.data.sn7 import instance_raster, read_image, read_labels, scan
from spacenet7.data.targets import make_targets
from spacenet7.evaluate import ground_truth_table
from spacenet7.footprints import MonthPrediction, track_months
from spacenet7.metrics.scot import scot
from spacenet7.polygonize import instances, polygons


def oracle(root: str, aoi: str, upscale: float, contact_width: int) -> None:
    v = VectorizeConfig()
    months, stems, preds = [], [], []
    for rec in scan(root)[aoi]:
        img = read_image(rec, upscale=upscale)
        inst = instance_raster(read_labels(rec, img.crs), img.shape, img.transform)
        prob = make_targets(inst, 1, contact_width).astype(np.float32)
        lab = instances(prob, img.valid, threshold=v.threshold, seed_threshold=v.seed_threshold, min_seed_px=v.min_seed_px)
        p = polygons(lab)
        if upscale != 1 and len(p):
            p = shapely.transform(p, lambda xy: xy / upscale)
        months.append(p[shapely.area(p) >= v.min_area_px] if len(p) else p)
        stems.append(rec)
        preds.append(MonthPrediction(rec.stem, rec.month_key, prob[0], img.valid, upscale))
    rows = track_months(months, preds, v.track)  # as vectorize does: no filling where clouds hide a building
    sub = pd.DataFrame(
        {
            "filename": [stems[t].stem for t in rows.t],
            "aoi": aoi,
            "month": [stems[t].month_key for t in rows.t],
            "id": rows.id,
            "geometry": rows.geometry,
        }
    )
    r = scot(ground_truth_table(root, aois=[aoi]), sub)
    print(
        f"oracle upscale={upscale:g} contact_width={contact_width}: SCOT {r.scot:.3f}  tracking {r.tracking:.3f}  "
        f"change {r.change:.3f}  F1@0.5 {r.f1:.3f}"
    )


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else "data/synthetic"
    aoi = sys.argv[2] if len(sys.argv) > 2 else sorted(scan(root))[-1]
    for up, cw in ((1, 2), (1, 1), (2, 1)):
        oracle(root, aoi, up, cw)


if __name__ == "__main__":
    main()
