"""SCOT, checked on hand-built cases (numbers worked out by hand), properties and the reference."""

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import box

from spacenet7 import evaluate
from spacenet7.config import EvaluateConfig
from spacenet7.errors import SN7DataError
from spacenet7.metrics.matching import match
from spacenet7.metrics.reference import reference_scot
from spacenet7.metrics.scot import SIZE_EDGES, SizeScores, scot, size_bins
from spacenet7.metrics.table import check_table

AOI = "L15-0001E-0001N_1_1_13"


def table(rows):
    """rows: (month index, id, polygon) -> a checked table for one AOI."""
    return check_table(
        pd.DataFrame(
            [(f"global_monthly_2020_{m + 1:02d}_mosaic_{AOI}", i, g.wkt) for m, i, g in rows],
            columns=["filename", "id", "geometry"],
        )
    )


B1, B2, B3 = box(0, 0, 10, 10), box(20, 0, 30, 10), box(40, 0, 50, 10)


def one(truth, prop):
    return scot(table(truth), table(prop)).per_aoi[0]


def test_perfect_with_renamed_ids_is_one():
    truth = [(0, 1, B1), (1, 1, B1), (1, 2, B2)]
    prop = [(0, 7, B1), (1, 7, B1), (1, 9, B2)]
    a = one(truth, prop)
    assert (a.tp, a.fp, a.fn, a.mismatches, a.change_tp) == (3, 0, 0, 0, 1)
    assert a.scot == 1.0


def test_one_month_id_swap_costs_two_mismatches():
    # the proposal calls B1 "5" in months 0 and 2 but "6" in month 1 (a one-month swap)
    truth = [(m, 1, B1) for m in range(3)] + [(2, 2, B2)]
    prop = [(0, 5, B1), (1, 6, B1), (2, 5, B1), (2, 8, B2)]
    a = one(truth, prop)
    assert a.mismatches == 2
    # tp = 4 matches - 2; fp = fn = 2 -> track = 2 / (2 + 2) = 0.5
    assert (a.tp, a.fp, a.fn) == (2, 2, 2)
    assert a.tracking == pytest.approx(0.5)
    # change: month 1: proposal 6 new, truth 1 old -> FP; month 2: 2/8 new/new -> TP
    assert (a.change_tp, a.change_fp, a.change_fn) == (1, 1, 0)
    assert a.change == pytest.approx(1 / 1.5)
    assert a.scot == pytest.approx(5 * (2 / 3) * 0.5 / (4 * (2 / 3) + 0.5))


def test_permanent_id_change_costs_one_mismatch():
    truth = [(m, 1, B1) for m in range(3)] + [(1, 2, B2)]
    prop = [(0, 5, B1), (1, 6, B1), (2, 6, B1), (1, 3, B2)]
    a = one(truth, prop)
    assert a.mismatches == 1
    assert (a.tp, a.fp, a.fn) == (3, 1, 1)


def test_threshold_is_strict_at_a_quarter():
    quarter = box(0, 0, 10, 2.5)  # IoU with B1 = 25 / 100 exactly
    assert len(match(np.array([B1]), np.array([quarter]), 0.25)) == 0
    assert len(match(np.array([B1]), np.array([box(0, 0, 10, 2.6)]), 0.25)) == 1
    a = one([(0, 1, B1)], [(0, 1, quarter)])
    assert (a.tp, a.fp, a.fn) == (0, 1, 1)


def test_truth_under_4_px_is_dropped():
    tiny = box(60, 0, 61.9, 2)  # 3.8 px^2
    a = one([(0, 1, B1), (0, 2, tiny)], [(0, 1, B1)])
    assert (a.tp, a.fp, a.fn) == (1, 0, 0)
    a = one([(0, 1, B1), (0, 2, box(60, 0, 62, 2))], [(0, 1, B1)])  # exactly 4 px^2 is kept
    assert a.fn == 1


def test_change_tp_fp_fn():
    truth = [(0, 1, B1), (1, 1, B1), (1, 2, B2), (1, 3, B3)]
    # B2: new/new -> TP; B3: truth new, proposal id old (carried from B1's month-0 id? no: id 4 seen in month 0)
    prop = [(0, 1, B1), (0, 4, box(100, 100, 110, 110)), (1, 1, B1), (1, 2, B2), (1, 4, B3), (1, 9, box(200, 0, 210, 10))]
    a = one(truth, prop)
    # month 1 matches: 1-1 (old/old), 2-2 (new/new TP), 3-4 (truth new, proposal old -> FN);
    # unmatched new proposal 9 -> FP
    assert (a.change_tp, a.change_fp, a.change_fn) == (1, 1, 1)
    assert a.n_new_truth == 2


def test_aoi_without_new_buildings_scores_zero_and_says_so():
    a = one([(0, 1, B1), (1, 1, B1)], [(0, 1, B1), (1, 1, B1)])
    assert a.tracking == 1.0 and a.change == 0.0 and a.scot == 0.0
    assert a.no_new_buildings


def test_matching_maximises_cardinality_not_greedy_iou():
    # a0 overlaps b0 strongly and b1 weakly; a1 overlaps only b0.
    a = np.array([box(0, 0, 10, 10), box(6, 0, 16, 10)])
    b = np.array([box(1, 0, 11, 10), box(-5, 0, 5, 10)])
    g = match(a, b, 0.25, method="greedy")
    h = match(a, b, 0.25)
    assert len(g) == 1 and len(h) == 2


def _random_aoi(rng, n_months, n):
    rows, ids = [], list(range(1, n + 1))
    xy = rng.uniform(0, 200, (n, 2))
    born = rng.integers(0, n_months, n)
    for m in range(n_months):
        for i in ids:
            if born[i - 1] <= m:
                j = rng.normal(0, 0.8, 2)
                x, y = xy[i - 1] + j
                rows.append((m, i, box(x, y, x + 6, y + 5)))
    return rows


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5), st.integers(1, 25))
def test_perfect_proposal_scores_one_wherever_new_buildings_exist(seed, n_months, n):
    rng = np.random.default_rng(seed)
    truth = _random_aoi(rng, n_months, n)
    rename = {i: 1000 + 7 * i for i in range(1, n + 1)}
    a = one(truth, [(m, rename[i], g) for m, i, g in truth])
    assert a.tracking == 1.0
    assert a.scot == (0.0 if a.no_new_buildings else 1.0)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_fast_scot_equals_the_reference(seed):
    rng = np.random.default_rng(seed)
    truth = _random_aoi(rng, 4, 15)
    prop = []
    for m, i, g in _random_aoi(rng, 4, 15) + truth:
        if rng.random() < 0.5:
            prop.append((m, int(i if rng.random() < 0.8 else rng.integers(1, 40)), g))
    prop = list({(m, i): (m, i, g) for m, i, g in prop}.values())  # ids unique per month
    t, p = table(truth), table(prop) if prop else table([(0, 1, box(500, 500, 501, 501))])
    fast = scot(t, p).per_aoi[0]
    ref = reference_scot(t, p)[AOI]
    assert fast.mismatches == ref["mismatches"]
    assert fast.scot == pytest.approx(ref["scot"]) and fast.tracking == pytest.approx(ref["tracking"])
    assert fast.change == pytest.approx(ref["change"])


def test_scores_by_size_count_each_building_in_its_area_bin():
    small, mid, big = box(0, 0, 2, 3), box(20, 0, 25, 4), box(40, 0, 50, 10)  # 6, 20 and 100 px^2
    truth = [(0, 1, small), (0, 2, mid), (1, 2, mid)]
    # month 0: mid found exactly, small missed, a false big one; month 1: mid found at IoU 0.35 (> 0.25, < 0.5)
    prop = [(0, 5, mid), (0, 6, big), (1, 5, box(20, 0, 22, 3.5))]
    rows = {(r["min_area"], r["max_area"]): r for r in scot(table(truth), table(prop)).to_dict()["by_size"]}
    assert rows[(0.0, 8.0)] == {
        "min_area": 0.0,
        "max_area": 8.0,
        "n_truth": 1,
        "recall": 0.0,
        "recall_iou25": 0.0,
        "n_proposal": 1,  # the 7 px^2 proposal of month 1, matched at IoU 0.35 only
        "precision": 0.0,
        "precision_iou25": 1.0,
    }
    assert (rows[(16.0, 32.0)]["n_truth"], rows[(16.0, 32.0)]["recall"], rows[(16.0, 32.0)]["recall_iou25"]) == (2, 0.5, 1.0)
    assert (rows[(16.0, 32.0)]["n_proposal"], rows[(16.0, 32.0)]["precision"]) == (1, 1.0)
    assert (rows[(64.0, 128.0)]["n_truth"], rows[(64.0, 128.0)]["recall"]) == (0, None)
    assert (rows[(64.0, 128.0)]["n_proposal"], rows[(64.0, 128.0)]["precision"]) == (1, 0.0)
    assert rows[(256.0, None)]["n_truth"] == 0


def _area_bin(area: float) -> int:
    """The size bin by a plain scan of the edges (independent of :func:`size_bins`)."""
    return max(i for i, lo in enumerate(SIZE_EDGES) if area >= lo)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_scores_by_size_equal_a_month_by_month_count(seed):
    rng = np.random.default_rng(seed)
    truth, prop = [], []
    for m in range(3):
        for i in range(1, 15):
            x, y, w, h = *rng.uniform(0, 150, 2), *rng.uniform(1.5, 20, 2)  # 2-400 px^2: every bin, some truth dropped
            truth.append((m, i, box(x, y, x + w, y + h)))
            if rng.random() < 0.7:  # a proposal near it, of a size near its own
                dx, dy, sw, sh = *rng.normal(0, 1.0, 2), *rng.uniform(0.7, 1.4, 2)
                prop.append((m, 100 + i, box(x + dx, y + dy, x + dx + w * sw, y + dy + h * sh)))
    got = scot(table(truth), table(prop)).per_aoi[0].sizes
    want = {k: np.zeros(len(SIZE_EDGES), np.int64) for k in ("nt", "t50", "t25", "np", "p50", "p25")}
    for m in range(3):
        tg = np.array([g for mm, _, g in truth if mm == m and g.area >= 4], dtype=object)  # SCOT drops truth < 4 px^2
        pg = np.array([g for mm, _, g in prop if mm == m], dtype=object)
        for g in tg:
            want["nt"][_area_bin(g.area)] += 1
        for g in pg:
            want["np"][_area_bin(g.area)] += 1
        for key, mt in (("50", match(tg, pg, 0.5, inclusive=True)), ("25", match(tg, pg))):
            for a, b in zip(mt.a, mt.b):
                want["t" + key][_area_bin(tg[a].area)] += 1
                want["p" + key][_area_bin(pg[b].area)] += 1
    np.testing.assert_array_equal(got.n_truth, want["nt"])
    np.testing.assert_array_equal(got.n_proposal, want["np"])
    np.testing.assert_array_equal(got.truth_tp50, want["t50"])
    np.testing.assert_array_equal(got.truth_tp25, want["t25"])
    np.testing.assert_array_equal(got.proposal_tp50, want["p50"])
    np.testing.assert_array_equal(got.proposal_tp25, want["p25"])


def test_size_bins_are_closed_below_and_the_last_is_open():
    sq = [box(0, 0, 1, a) for a in (0.5, 7.999, 8.0, 255.9, 256.0, 5000.0)]
    np.testing.assert_array_equal(size_bins(np.array(sq, dtype=object)), [0, 0, 1, 5, 6, 6])
    assert evaluate.format_sizes(SizeScores().to_list()).endswith("no truth")


def _csv(path, rows):
    pd.DataFrame(rows, columns=["filename", "id", "geometry"]).to_csv(path, index=False)
    return str(path)


GOOD = [
    (f"global_monthly_2020_01_mosaic_{AOI}", 1, B1.wkt),
    (f"global_monthly_2020_02_mosaic_{AOI}", 1, B1.wkt),
    (f"global_monthly_2020_02_mosaic_{AOI}", 2, B2.wkt),
]


def test_evaluate_stage_writes_json_and_table(tmp_path, capsys):
    t = _csv(tmp_path / "t.csv", GOOD)
    out = tmp_path / "m.json"
    evaluate.run(EvaluateConfig(truth=t, proposal=t, out=str(out)))
    d = json.loads(out.read_text())
    assert d["scot"] == 1.0 and d["f1"] == 1.0
    assert set(d["per_aoi"][AOI]) >= {"scot", "tracking", "change", "tp", "fp", "fn", "mismatches", "by_size"}
    assert d["by_size"] == d["per_aoi"][AOI]["by_size"] and sum(b["n_truth"] for b in d["by_size"]) == 3
    out = capsys.readouterr().out
    assert AOI in out and "recall@0.5 by truth area (px^2, count): 64-128 1.00 (3)" in out


@pytest.mark.parametrize(
    "rows,match_",
    [
        ([(GOOD[0][0], 1, "POLYGON ((0 0, 1 0")], "row 2: malformed WKT"),
        ([("mosaic_2020_01", 1, B1.wkt)], "row 2: unparseable filename"),
        ([(GOOD[0][0], "x", B1.wkt)], "row 2: id 'x' is not an integer"),
        ([(GOOD[0][0], 1, B1.wkt), (GOOD[0][0], 1, B2.wkt)], "id 1 appears more than once"),
    ],
)
def test_bad_proposal_rows_name_file_and_row(tmp_path, rows, match_):
    t = _csv(tmp_path / "t.csv", GOOD)
    p = _csv(tmp_path / "p.csv", rows)
    with pytest.raises(SN7DataError, match=match_) as e:
        evaluate.run(EvaluateConfig(truth=t, proposal=p, out=str(tmp_path / "m.json")))
    assert "p.csv" in str(e.value)
    assert not (tmp_path / "m.json").exists()


def test_missing_columns_and_empty_truth(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"filename": [GOOD[0][0]], "geometry": [B1.wkt]}).to_csv(bad, index=False)
    with pytest.raises(SN7DataError, match="missing column"):
        evaluate.run(EvaluateConfig(truth=str(bad), proposal=str(bad), out=str(tmp_path / "m.json")))
    empty = _csv(tmp_path / "e.csv", [])
    with pytest.raises(SN7DataError, match="truth table is empty"):
        evaluate.run(EvaluateConfig(truth=empty, proposal=_csv(tmp_path / "p.csv", GOOD), out=str(tmp_path / "m.json")))


def test_evaluate_defaults_to_dataset_ground_truth(synth_root, tmp_path):
    out = tmp_path / "m.json"
    evaluate.run(
        EvaluateConfig(data_root=str(synth_root), submission=str(synth_root / "sn7_train_ground_truth_pix.csv"), out=str(out))
    )
    d = json.loads(out.read_text())
    assert d["n_aois"] == 3 and d["tracking"] == 1.0


def _python_track(months):
    """The former per-match Python bookkeeping of ``score_aoi`` (sets and dicts), as the oracle for ``_track``.
    ``months``: (truth ids, proposal ids, matched truth rows, matched proposal rows) per month."""
    tp = fp = fn = mism = ctp = cfp = cfn = n_new = 0
    t_last, p_last, t_seen, p_seen = {}, {}, set(), set()
    for i, (tid, pid, ma, mb) in enumerate(months):
        mt, mp = [tid[k] for k in ma], [pid[k] for k in mb]
        t_new = set(tid) - t_seen if i > 0 else set()
        p_new = set(pid) - p_seen if i > 0 else set()
        bad = 0
        for g, q in zip(mt, mp):
            if t_last.get(g, q) != q or p_last.get(q, g) != g:
                bad += 1
            t_last[g], p_last[q] = q, g
            if g in t_new:
                ctp, cfn = (ctp + 1, cfn) if q in p_new else (ctp, cfn + 1)
            elif q in p_new:
                cfp += 1
        n = len(mt)
        tp, fp, fn, mism = tp + n - bad, fp + len(pid) - n + bad, fn + len(tid) - n + bad, mism + bad
        if i > 0:
            n_new, cfp, cfn = n_new + len(t_new), cfp + len(p_new.difference(mp)), cfn + len(t_new.difference(mt))
        t_seen.update(tid)
        p_seen.update(pid)
    return tp, fp, fn, mism, ctp, cfp, cfn, n_new


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_numba_bookkeeping_equals_the_python_one_even_with_repeated_ids(seed):
    import pandas as pd

    from spacenet7.metrics.scot import _track

    rng = np.random.default_rng(seed)
    months = []
    for _ in range(rng.integers(1, 6)):
        tid = rng.integers(0, 8, rng.integers(0, 9)).tolist()  # ids repeat within a month: sets and arrays could part
        pid = rng.integers(100, 108, rng.integers(0, 9)).tolist()
        k = int(rng.integers(0, min(len(tid), len(pid)) + 1))
        months.append((tid, pid, rng.permutation(len(tid))[:k], rng.permutation(len(pid))[:k]))
    t_all = [i for tid, _, _, _ in months for i in tid]
    p_all = [i for _, pid, _, _ in months for i in pid]
    t_start = np.cumsum([0] + [len(m[0]) for m in months])
    p_start = np.cumsum([0] + [len(m[1]) for m in months])
    m_start = np.cumsum([0] + [len(m[2]) for m in months])
    ma = np.concatenate([[0]] + [t_start[i] + m[2] for i, m in enumerate(months)])[1:].astype(np.int64)
    mb = np.concatenate([[0]] + [p_start[i] + m[3] for i, m in enumerate(months)])[1:].astype(np.int64)
    got = _track(
        pd.factorize(np.array(t_all, np.int64))[0].astype(np.int64),
        t_start.astype(np.int64),
        pd.factorize(np.array(p_all, np.int64))[0].astype(np.int64),
        p_start.astype(np.int64),
        ma,
        mb,
        m_start.astype(np.int64),
    )
    assert tuple(int(v) for v in got) == _python_track(months)
