"""Several data roots read as one data set, SN7 truth from ``labels_match`` alone, per-AOI held-out
bands, AOI-balanced training windows, and ``track.mode=onset`` (issue: real generalization and SCOT)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import box

from spacenet7 import evaluate
from spacenet7.config import EvaluateConfig
from spacenet7.data.sn7 import band_regions, read_labels_pix, read_truth_pix, scan
from spacenet7.data.windows import RandomWindows
from spacenet7.errors import SN7DataError
from spacenet7.track import TrackConfig, TrackMode, onset_months, onset_tracks

REAL_TS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sn7_real_timeseries"
TS_AOI = "L15-0331E-1257N_1327_3160_13"


def _copy_aoi(src_root: Path, aoi: str, dst_root: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src_root / "train" / aoi, dst_root / "train" / aoi, ignore=shutil.ignore_patterns(*drop))
    return dst_root


def test_two_roots_are_one_data_set(synth_root, tmp_path):
    aois = sorted(scan(synth_root))
    a = _copy_aoi(synth_root, aois[0], tmp_path / "a")
    b = _copy_aoi(synth_root, aois[1], tmp_path / "b")
    both = scan(f"{a}{os.pathsep}{b}")
    assert sorted(both) == aois[:2]
    assert both[aois[1]][0].aoi_dir == b / "train" / aois[1]
    assert list(scan(f"{a}{os.pathsep}{b}", aois=[aois[1]])) == [aois[1]]
    c = _copy_aoi(synth_root, aois[0], tmp_path / "c")
    with pytest.raises(SN7DataError, match="also lies under another data root"):
        scan(f"{a}{os.pathsep}{c}")
    with pytest.raises(SN7DataError, match="requested AOIs not found: nope"):
        scan(f"{a}{os.pathsep}{b}", aois=["nope"])


def test_truth_from_labels_match_equals_the_pixel_copy(synth_root, tmp_path):
    aoi = sorted(scan(synth_root))[0]
    root = _copy_aoi(synth_root, aoi, tmp_path / "nopix", drop=("labels_match_pix",))
    rec_pix = scan(synth_root, aois=[aoi])[aoi][0]
    rec = scan(root, aois=[aoi])[aoi][0]
    assert rec.labels_match_pix is None
    want, got = read_labels_pix(rec_pix), read_truth_pix(rec)
    assert len(got) == len(want) > 0 and got.crs is None
    assert (got["Id"].to_numpy() == want["Id"].to_numpy()).all()
    iou = shapely.area(shapely.intersection(got.geometry.values, want.geometry.values)) / shapely.area(
        shapely.union(got.geometry.values, want.geometry.values)
    )
    assert iou.min() > 0.99


def test_evaluate_scores_each_aois_own_band(synth_root, tmp_path):
    """Two AOIs of different widths: each is scored on the right quarter of its own mosaic."""
    aois = sorted(scan(synth_root))[:2]
    truth = evaluate.ground_truth_table(synth_root, aois=aois)
    bands = band_regions(synth_root, aois, 0.25)
    assert bands[aois[0]] == [0.0, 256.0, 192.0, 256.0]
    # the proposal: the truth's buildings that reach into the band only, so the band is perfect and the whole is not
    keep = shapely.bounds(truth["geometry"].values)[:, 2] > 192
    prop = truth[keep]
    for df, name in ((truth, "t.csv"), (prop, "p.csv")):
        df.assign(geometry=shapely.to_wkt(df["geometry"].values))[["filename", "id", "geometry"]].to_csv(
            tmp_path / name, index=False
        )
    common = dict(truth=str(tmp_path / "t.csv"), proposal=str(tmp_path / "p.csv"), data_root=str(synth_root), aois=aois)
    evaluate.run(EvaluateConfig(out=str(tmp_path / "band.json"), band_frac=0.25, **common))
    evaluate.run(EvaluateConfig(out=str(tmp_path / "all.json"), **common))
    band, whole = json.loads((tmp_path / "band.json").read_text()), json.loads((tmp_path / "all.json").read_text())
    assert band["regions"] == bands
    assert band["recall"] == 1.0 and band["precision"] == 1.0 and band["pixel_iou"] == 1.0
    assert whole["recall"] < 0.9
    for aoi in aois:  # building scores per place
        assert band["per_aoi"][aoi]["f1"] == 1.0 and whole["per_aoi"][aoi]["recall"] < 0.9


def test_windows_give_every_aoi_the_same_share():
    """26 months of one AOI beside one month of another: each AOI draws half the windows."""
    rows = [dict(aoi="big", split="train", r0=0, r1=64, c0=0, c1=64) for _ in range(25)]
    rows.append(dict(aoi="small", split="train", r0=0, r1=64, c0=0, c1=64))
    index = pd.DataFrame(rows)
    ds = RandomWindows(".", index, 32, per_mosaic=10, max_per_epoch=40)
    rng = np.random.default_rng(0)
    drawn = np.array([index.loc[ds.draw(i, rng)[0], "aoi"] for i in range(4000)])
    assert abs((drawn == "small").mean() - 0.5) < 0.03
    uncapped = RandomWindows(".", index, 32, per_mosaic=2)
    assert len(uncapped) == 52 and not uncapped.capped


def test_onset_months():
    ev = np.array(
        [
            [0.9, 0.8, 0.9, 0.85, 0.9, 0.9],  # standing all along
            [0.1, 0.1, 0.05, 0.9, 0.8, 0.9],  # built in month 3
            [0.9, 0.1, 0.9, 0.2, 0.9, 0.9],  # flickers: no clear step, standing from month 0
            [np.nan, 0.1, np.nan, 0.1, 0.7, 0.8],  # nodata months ignored: built in month 4
            [0.6, 0.6, 0.6, 0.6, 0.6, 0.7],
        ]
    )
    assert onset_months(ev, 0.25).tolist() == [0, 3, 0, 4, 0]
    assert onset_months(ev[:, :1], 0.25).tolist() == [0] * 5


def test_onset_tracks_rows():
    geoms = np.array([box(0, 0, 4, 4), box(10, 10, 14, 14)], dtype=object)
    ev = np.array([[0.9, 0.3, 0.9, 0.9], [0.0, 0.0, 0.9, 0.9]])
    rows = onset_tracks(geoms, ev, TrackConfig(mode=TrackMode.onset), threshold=0.5)
    one, two = rows[rows["id"] == 1], rows[rows["id"] == 2]
    assert one["t"].tolist() == [0, 1, 2, 3] and one["filled"].tolist() == [False, True, False, False]
    assert two["t"].tolist() == [2, 3] and (two["first_seen"] == 2).all() and (rows["last_seen"] == 3).all()
    assert two["n_months"].tolist() == [2, 2] and two["geometry"].iloc[0].equals(geoms[1])


@pytest.mark.real_data
def test_real_timeseries_truth_in_pixels():
    if not (REAL_TS / "train" / TS_AOI).is_dir():
        pytest.skip(f"real SN7 time series not found at {REAL_TS} (it lives in ../shared, absent in a user's clone)")
    recs = scan(REAL_TS, aois=[TS_AOI])[TS_AOI]
    assert len(recs) == 25 and recs[0].labels_match_pix is None
    truth = read_truth_pix(recs[0])
    x0, y0, x1, y1 = shapely.total_bounds(truth.geometry.values)
    assert len(truth) > 1900 and -5 < x0 < 5 and -5 < y0 < 5 and 1019 < x1 < 1029 and 1018 < y1 < 1028
    assert band_regions(REAL_TS, [TS_AOI], 0.25)[TS_AOI] == [0.0, 1023.0, 768.0, 1024.0]


def test_registration_finds_a_known_label_offset(synth_root, tmp_path):
    """Labels moved by a known shift: the estimate moves by that shift, back (synthetic roofs cast a shadow,
    so the unmoved labels' own estimate is a little off zero)."""
    from spacenet7.data.registration import estimate_offset
    from spacenet7.data.sn7 import image_grid, read_labels, shift_labels
    from spacenet7.io.vector import write_vector

    aoi = sorted(scan(synth_root))[0]
    recs = scan(synth_root, aois=[aoi])[aoi]
    base = estimate_offset(recs, max_months=2)
    assert base.months == 2 and abs(base.dx) < 0.25 and abs(base.dy) < 0.25
    root = _copy_aoi(synth_root, aoi, tmp_path / "moved")
    moved = scan(root, aois=[aoi])[aoi]
    for rec in moved:  # labels moved 1/3 px left and 1/2 px up, as SN7's lie off their mosaics
        labels = read_labels(rec)
        write_vector(shift_labels(labels, image_grid(rec)[0], -1 / 3, -0.5), rec.labels_match)
    off = estimate_offset(moved, max_months=2)
    assert off.dx - base.dx == pytest.approx(1 / 3, abs=0.1) and off.dy - base.dy == pytest.approx(0.5, abs=0.1)
    assert off.gain > base.gain
