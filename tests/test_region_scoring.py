"""Scoring a pixel region of every month: clipping, building precision/recall and pixel IoU."""

import json

import pandas as pd
import pytest
from shapely.geometry import box

from spacenet7 import evaluate
from spacenet7.config import EvaluateConfig
from spacenet7.errors import SN7Error
from spacenet7.metrics.pixel import clip_to_region, pixel_iou
from spacenet7.metrics.scot import scot
from spacenet7.metrics.table import check_table

AOI = "L15-0001E-0001N_1_1_13"
STEM = f"global_monthly_2020_01_mosaic_{AOI}"


def table(polys):
    return check_table(pd.DataFrame([(STEM, i, g.wkt) for i, g in enumerate(polys)], columns=["filename", "id", "geometry"]))


# truth: one building left of col 50, one right of it, one straddling it
LEFT, RIGHT, EDGE = box(10, 10, 20, 20), box(70, 10, 80, 20), box(45, 30, 55, 40)
REGION = [0, 100, 50, 100]  # rows 0-100, cols 50-100


def test_truth_outside_the_region_is_not_missed():
    truth, prop = table([LEFT, RIGHT, EDGE]), table([RIGHT, EDGE])
    assert scot(truth, prop).recall == pytest.approx(2 / 3)
    clipped = scot(clip_to_region(truth, REGION), clip_to_region(prop, REGION))
    assert (clipped.recall, clipped.precision, clipped.f1) == (1.0, 1.0, 1.0)


def test_proposals_outside_the_region_are_not_false_positives():
    truth, prop = table([RIGHT]), table([LEFT, RIGHT])
    r = scot(clip_to_region(truth, REGION), clip_to_region(prop, REGION))
    assert r.precision == 1.0
    assert scot(truth, prop).precision == 0.5


def test_a_building_cut_by_the_edge_keeps_its_inside_part():
    out = clip_to_region(table([EDGE]), REGION)
    assert out["geometry"].iloc[0].equals(box(50, 30, 55, 40))
    assert clip_to_region(table([LEFT]), REGION)["geometry"].iloc[0].is_empty


def test_pixel_iou_counts_pixels_in_the_region():
    # truth 10x10 px, proposal the same shifted 5 columns: 50 shared, 150 in the union
    truth, prop = table([box(60, 0, 70, 10)]), table([box(65, 0, 75, 10)])
    assert pixel_iou(truth, prop, REGION) == pytest.approx(50 / 150)
    assert pixel_iou(truth, truth, REGION) == 1.0
    assert pixel_iou(truth, table([LEFT]), REGION) == 0.0
    # without a region, the polygons' bounds are the frame: the same counts
    assert pixel_iou(truth, prop) == pytest.approx(50 / 150)


def test_empty_region_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        clip_to_region(table([LEFT]), [10, 10, 0, 5])


def test_evaluate_region_writes_building_scores(tmp_path):
    pd.DataFrame([(STEM, i, g.wkt) for i, g in enumerate([LEFT, RIGHT, EDGE])], columns=["filename", "id", "geometry"]).to_csv(
        tmp_path / "truth.csv", index=False
    )
    pd.DataFrame([(STEM, 0, RIGHT.wkt)], columns=["filename", "id", "geometry"]).to_csv(tmp_path / "prop.csv", index=False)
    cfg = EvaluateConfig(
        truth=str(tmp_path / "truth.csv"),
        proposal=str(tmp_path / "prop.csv"),
        out=str(tmp_path / "m.json"),
        region=[0, 100, 60, 100],
    )
    evaluate.run(cfg)
    m = json.loads((tmp_path / "m.json").read_text())
    assert (m["f1"], m["precision"], m["recall"], m["pixel_iou"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["region"] == [0, 100, 60, 100]
    with pytest.raises(SN7Error, match="row0, row1, col0, col1"):  # checked when the config is made
        EvaluateConfig(truth=cfg.truth, proposal=cfg.proposal, out=cfg.out, region=[0, 100])
