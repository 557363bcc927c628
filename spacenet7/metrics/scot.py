"""SCOT: the SpaceNet Change and Object Tracking metric, exactly as the SN7 reference defines it.

Per AOI and month, ground truth (polygons >= 4 px^2) and proposals are matched one-to-one with
IoU > 0.25 (maximum matches, then maximum summed IoU). The tracking term counts a match as a
mismatch when either id's most recent earlier partner differs; the change term scores only ids
that are new (never seen in an earlier month of the same table), skipping the first month.
SCOT = (1 + b^2) c t / (b^2 c + t), b = 2; the data set score is the mean over AOIs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numba
import numpy as np
import pandas as pd
import shapely

from spacenet7.metrics.matching import match_above, pairwise_iou
from spacenet7.metrics.rules import BETA, IOU_THRESHOLD, MIN_TRUTH_AREA


def f_score(tp: float, fp: float, fn: float) -> float:
    """Tp / (tp + (fp + fn) / 2), 0 when there is nothing at all."""
    d = tp + (fp + fn) / 2
    return float(tp / d) if d > 0 else 0.0


def combine(change: float, tracking: float, beta: float = BETA) -> float:
    """SCOT's weighted harmonic mean of the change and tracking terms."""
    d = beta**2 * change + tracking
    return float((1 + beta**2) * change * tracking / d) if d > 0 else 0.0


@dataclass
class MonthScore:
    """One month of one AOI: matches at both IoU thresholds and the tracking/change counts."""

    aoi: str
    month_key: str  # YYYY-MM (written as ``month`` in metrics.json, as in the tables)
    n_truth: int
    n_proposal: int
    tp: int  # at IoU > 0.25 (the SCOT match)
    precision: float
    recall: float
    f1: float
    tp50: int  # at IoU >= 0.5 (the SpaceNet building F1)
    precision50: float
    recall50: float
    f1_50: float


# the lower edges of the building-size bins of the scores by size (px^2, source pixels; [lo, hi), the last open):
# each doubles the area. The first holds truth of 4-8 px^2 (smaller truth is dropped) and proposals of 0-8 px^2
SIZE_EDGES = (0.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)


@dataclass
class SizeScores:
    """Matches by building area (:data:`SIZE_EDGES`): truth per bin with its matches (recall), proposals per bin
    with theirs (precision), at IoU >= 0.5 and > 0.25, summed over months."""

    n_truth: np.ndarray = field(default_factory=lambda: np.zeros(len(SIZE_EDGES), np.int64))
    truth_tp50: np.ndarray = field(default_factory=lambda: np.zeros(len(SIZE_EDGES), np.int64))
    truth_tp25: np.ndarray = field(default_factory=lambda: np.zeros(len(SIZE_EDGES), np.int64))
    n_proposal: np.ndarray = field(default_factory=lambda: np.zeros(len(SIZE_EDGES), np.int64))
    proposal_tp50: np.ndarray = field(default_factory=lambda: np.zeros(len(SIZE_EDGES), np.int64))
    proposal_tp25: np.ndarray = field(default_factory=lambda: np.zeros(len(SIZE_EDGES), np.int64))

    def __add__(self, other: SizeScores) -> SizeScores:
        return SizeScores(*(getattr(self, k) + getattr(other, k) for k in SizeScores.__dataclass_fields__))

    def to_list(self) -> list[dict]:
        """The scores as JSON-ready rows.

        Returns:
            One dict per bin: ``min_area``, ``max_area`` (None for the last), ``n_truth``, ``recall``,
            ``recall_iou25``, ``n_proposal``, ``precision``, ``precision_iou25`` (None where a bin is empty).
        """
        rows = []
        for i, lo in enumerate(SIZE_EDGES):
            nt, npr = int(self.n_truth[i]), int(self.n_proposal[i])
            rows.append(
                {
                    "min_area": lo,
                    "max_area": SIZE_EDGES[i + 1] if i + 1 < len(SIZE_EDGES) else None,
                    "n_truth": nt,
                    "recall": float(self.truth_tp50[i] / nt) if nt else None,
                    "recall_iou25": float(self.truth_tp25[i] / nt) if nt else None,
                    "n_proposal": npr,
                    "precision": float(self.proposal_tp50[i] / npr) if npr else None,
                    "precision_iou25": float(self.proposal_tp25[i] / npr) if npr else None,
                }
            )
        return rows


def size_bins(geoms: np.ndarray) -> np.ndarray:
    """The area bins of polygons.

    Args:
        geoms: shapely polygons (pixel coordinates).

    Returns:
        (n,) int index into :data:`SIZE_EDGES`: the bin ``[lo, hi)`` holding each polygon's area.
    """
    return np.clip(np.searchsorted(SIZE_EDGES, shapely.area(geoms), side="right") - 1, 0, len(SIZE_EDGES) - 1)


def _size_scores(
    t_bin: np.ndarray, p_bin: np.ndarray, t50: np.ndarray, p50: np.ndarray, t25: np.ndarray, p25: np.ndarray
) -> SizeScores:
    n = len(SIZE_EDGES)

    def count(bins: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(bins if rows is None else bins[rows], minlength=n).astype(np.int64)

    return SizeScores(count(t_bin), count(t_bin, t50), count(t_bin, t25), count(p_bin), count(p_bin, p50), count(p_bin, p25))


@dataclass
class AOIScore:
    """One AOI's SCOT with its tracking and change terms and their counts."""

    aoi: str
    scot: float
    tracking: float
    change: float
    tp: int
    fp: int
    fn: int
    mismatches: int
    change_tp: int
    change_fp: int
    change_fn: int
    n_new_truth: int
    months: list[MonthScore] = field(default_factory=list)
    sizes: SizeScores = field(default_factory=SizeScores)  # recall and precision by building area

    @property
    def no_new_buildings(self) -> bool:
        """No new ground-truth building after the first month: change = 0, so SCOT = 0."""
        return self.n_new_truth == 0


def _prf(tp: int, n_truth: int, n_prop: int) -> tuple[float, float, float]:
    p = tp / n_prop if n_prop else 0.0
    r = tp / n_truth if n_truth else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def score_aoi(
    truth: pd.DataFrame, proposal: pd.DataFrame, aoi: str, *, threshold: float = IOU_THRESHOLD, beta: float = BETA
) -> AOIScore:
    """Score one AOI. Both frames have ``month``, ``id``, ``geometry`` (pixel coordinates).

    Each month's polygons are matched in turn (at ``threshold`` and at 0.5); the tracking and change
    bookkeeping over the months' matches, which follows every id from month to month, then runs
    once in numba (:func:`_track`) on ids numbered per table.
    """
    month_keys = sorted(set(truth["month"].unique()) | set(proposal["month"].unique()))
    months = pd.Index(month_keys)
    t_rows, t_start = _by_month(_codes(truth["month"], months), len(months))
    p_rows, p_start = _by_month(_codes(proposal["month"], months), len(months))
    t_geoms, p_geoms = truth["geometry"].to_numpy()[t_rows], proposal["geometry"].to_numpy()[p_rows]
    t_ids = pd.factorize(truth["id"].to_numpy()[t_rows])[0].astype(np.int64)
    p_ids = pd.factorize(proposal["id"].to_numpy()[p_rows])[0].astype(np.int64)
    matched_t, matched_p, matched50_t, matched50_p, month_scores = [], [], [], [], []
    for i, month_key in enumerate(month_keys):
        tg, pg = t_geoms[t_start[i] : t_start[i + 1]], p_geoms[p_start[i] : p_start[i + 1]]
        pairs = pairwise_iou(tg, pg)
        m = match_above(*pairs, len(tg), len(pg), threshold)
        matched_t.append(t_start[i] + m.a)
        matched_p.append(p_start[i] + m.b)
        m50 = match_above(*pairs, len(tg), len(pg), 0.5, inclusive=True)
        matched50_t.append(t_start[i] + m50.a)
        matched50_p.append(p_start[i] + m50.b)
        nt, npr, n = len(tg), len(pg), len(m)
        month_scores.append(MonthScore(aoi, month_key, nt, npr, n, *_prf(n, nt, npr), len(m50), *_prf(len(m50), nt, npr)))
    m_start = np.zeros(len(month_keys) + 1, np.int64)
    np.cumsum([len(a) for a in matched_t], out=m_start[1:])
    both = np.zeros(0, np.int64)
    t25, p25, t50, p50 = (np.concatenate([both, *m]).astype(np.int64) for m in (matched_t, matched_p, matched50_t, matched50_p))
    tp, fp, fn, mism, ctp, cfp, cfn, n_new = (int(v) for v in _track(t_ids, t_start, p_ids, p_start, t25, p25, m_start))
    tracking = f_score(tp, fp, fn)
    change = f_score(ctp, cfp, cfn)
    sizes = _size_scores(size_bins(t_geoms), size_bins(p_geoms), t50, p50, t25, p25)
    return AOIScore(
        aoi, combine(change, tracking, beta), tracking, change, tp, fp, fn, mism, ctp, cfp, cfn, n_new, month_scores, sizes
    )


def _codes(values: pd.Series, keys: pd.Index) -> np.ndarray:
    """Each value's position in ``keys`` (the distinct values looked up once, not every row)."""
    codes, distinct = pd.factorize(values)
    return keys.get_indexer(distinct)[codes]


def _by_month(month: np.ndarray, n_months: int) -> tuple[np.ndarray, np.ndarray]:
    """Row order by month (stable: a month keeps its rows' order), and each month's start in it."""
    rows = np.argsort(month, kind="stable")
    return rows, np.searchsorted(month[rows], np.arange(n_months + 1)).astype(np.int64)


@numba.njit(cache=True)
def _track(
    t_ids: np.ndarray,
    t_start: np.ndarray,
    p_ids: np.ndarray,
    p_start: np.ndarray,
    match_t: np.ndarray,
    match_p: np.ndarray,
    m_start: np.ndarray,
) -> tuple[int, int, int, int, int, int, int, int]:
    """Tracking and change counts of one AOI over its months, in order: (tp, fp, fn, mismatches,
    change tp, fp, fn, new truth ids). ``t_ids`` / ``p_ids``: each row's id as a number 0..n-1, rows
    by month (``t_start``); ``match_t`` / ``match_p``: matched rows, month by month (``m_start``).

    A match is a mismatch when either id's most recent partner (in any earlier match) differs. From
    the second month on, an id is new when no earlier month of its table had it: a match of a new
    truth id with a new proposal id is a change TP, with an old one a change FN (and an old truth id
    with a new proposal id a change FP); unmatched new ids are change FNs (truth) and FPs (proposal).
    """
    nt = (t_ids.max() + 1) if len(t_ids) else 0
    npr = (p_ids.max() + 1) if len(p_ids) else 0
    t_last = np.full(nt, -1, np.int64)
    p_last = np.full(npr, -1, np.int64)
    t_seen = np.zeros(nt, np.bool_)
    p_seen = np.zeros(npr, np.bool_)
    t_new = np.zeros(nt, np.bool_)
    p_new = np.zeros(npr, np.bool_)
    t_hit = np.zeros(nt, np.bool_)
    p_hit = np.zeros(npr, np.bool_)
    tp = fp = fn = mism = ctp = cfp = cfn = n_new = 0
    for i in range(len(m_start) - 1):
        t0, t1, p0, p1 = t_start[i], t_start[i + 1], p_start[i], p_start[i + 1]
        if i > 0:
            for r in range(t0, t1):
                t_new[t_ids[r]] = not t_seen[t_ids[r]]
            for r in range(p0, p1):
                p_new[p_ids[r]] = not p_seen[p_ids[r]]
        bad = 0
        for k in range(m_start[i], m_start[i + 1]):
            g, q = t_ids[match_t[k]], p_ids[match_p[k]]
            if (t_last[g] >= 0 and t_last[g] != q) or (p_last[q] >= 0 and p_last[q] != g):
                bad += 1
            t_last[g] = q
            p_last[q] = g
            if t_new[g]:
                if p_new[q]:
                    ctp += 1
                else:
                    cfn += 1
            elif p_new[q]:
                cfp += 1
            t_hit[g] = True
            p_hit[q] = True
        n = m_start[i + 1] - m_start[i]
        tp += n - bad
        fp += p1 - p0 - n + bad
        fn += t1 - t0 - n + bad
        mism += bad
        for r in range(t0, t1):  # each new id once (an id may repeat within a month), then reset
            g = t_ids[r]
            if t_new[g]:
                n_new += 1
                cfn += not t_hit[g]
                t_new[g] = False
            t_seen[g] = True
        for r in range(p0, p1):
            q = p_ids[r]
            if p_new[q]:
                cfp += not p_hit[q]
                p_new[q] = False
            p_seen[q] = True
        for k in range(m_start[i], m_start[i + 1]):
            t_hit[t_ids[match_t[k]]] = False
            p_hit[p_ids[match_p[k]]] = False
    return tp, fp, fn, mism, ctp, cfp, cfn, n_new


@dataclass
class ScotResult:
    """Scores of a whole submission: SCOT (mean over AOIs), pooled building F1, per AOI and month."""

    scot: float
    tracking: float
    change: float
    f1: float  # SpaceNet building F1 at IoU >= 0.5, pooled over all AOI-months
    f1_25: float  # the same at IoU > 0.25
    per_aoi: list[AOIScore]
    precision: float = 0.0  # at IoU >= 0.5, pooled
    recall: float = 0.0
    precision_25: float = 0.0  # at IoU > 0.25, pooled
    recall_25: float = 0.0

    def to_dict(self) -> dict:
        """The JSON written by ``spacenet7 evaluate``."""
        per_aoi = {}
        for a in self.per_aoi:
            d = {k: v for k, v in asdict(a).items() if k not in ("aoi", "months", "sizes")}
            d["no_new_buildings"] = a.no_new_buildings
            d["by_size"] = a.sizes.to_list()
            per_aoi[a.aoi] = d
        per_month = [
            {("month" if k == "month_key" else k): v for k, v in asdict(m).items()} for a in self.per_aoi for m in a.months
        ]
        return {
            "scot": self.scot,
            "tracking": self.tracking,
            "change": self.change,
            "f1": self.f1,
            "precision": self.precision,
            "recall": self.recall,
            "f1_iou25": self.f1_25,
            "precision_iou25": self.precision_25,
            "recall_iou25": self.recall_25,
            "n_aois": len(self.per_aoi),
            "by_size": sum((a.sizes for a in self.per_aoi), SizeScores()).to_list(),
            "per_aoi": per_aoi,
            "per_month": per_month,
        }


def drop_small(truth: pd.DataFrame, min_area: float = MIN_TRUTH_AREA) -> pd.DataFrame:
    """Drop empty geometries and ground-truth polygons with area < ``min_area`` px^2."""
    area = shapely.area(truth["geometry"].values)
    return truth[(area >= min_area) & ~shapely.is_empty(truth["geometry"].values)]


def scot(
    truth: pd.DataFrame,
    proposal: pd.DataFrame,
    *,
    threshold: float = IOU_THRESHOLD,
    beta: float = BETA,
    min_truth_area: float = MIN_TRUTH_AREA,
) -> ScotResult:
    """Score proposals against truth over every AOI of the truth table (mean over AOIs).

    Both frames come from :func:`spacenet7.metrics.table.read_table`. Months without any
    polygon (rows with an empty geometry) still count as months.
    """
    months_t, truth, proposal = prepare(truth, proposal, min_truth_area)
    per_aoi = []
    for aoi in sorted(months_t["aoi"].unique()):
        t = truth[truth["aoi"] == aoi]
        p = proposal[proposal["aoi"] == aoi]
        per_aoi.append(
            score_aoi_months(t, p, aoi, set(months_t.loc[months_t["aoi"] == aoi, "month"]), threshold=threshold, beta=beta)
        )
    return summarize(per_aoi)


def prepare(
    truth: pd.DataFrame, proposal: pd.DataFrame, min_truth_area: float = MIN_TRUTH_AREA
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The (aoi, month) pairs of the truth, the truth without small polygons, the proposal without empty ones."""
    months_t = truth[["aoi", "month"]].drop_duplicates()
    return months_t, drop_small(truth, min_truth_area), proposal[~shapely.is_empty(proposal["geometry"].values)]


def score_aoi_months(
    truth: pd.DataFrame,
    proposal: pd.DataFrame,
    aoi: str,
    months: set[str],
    *,
    threshold: float = IOU_THRESHOLD,
    beta: float = BETA,
) -> AOIScore:
    """:func:`score_aoi`, with an empty score for each of the truth's ``months`` that has no polygon."""
    score = score_aoi(truth, proposal, aoi, threshold=threshold, beta=beta)
    have = {m.month_key for m in score.months}
    for month_key in sorted(months - have):
        score.months.append(MonthScore(aoi, month_key, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    score.months.sort(key=lambda m: m.month_key)
    return score


def summarize(per_aoi: list[AOIScore]) -> ScotResult:
    """The submission's scores from its AOIs' (sorted by AOI): means over AOIs, building F1 pooled over months."""
    tp50 = sum(m.tp50 for a in per_aoi for m in a.months)
    tp25 = sum(m.tp for a in per_aoi for m in a.months)
    nt = sum(m.n_truth for a in per_aoi for m in a.months)
    npr = sum(m.n_proposal for a in per_aoi for m in a.months)

    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else 0.0

    p50, r50, f50 = _prf(tp50, nt, npr)
    p25, r25, f25 = _prf(tp25, nt, npr)
    return ScotResult(
        mean([a.scot for a in per_aoi]),
        mean([a.tracking for a in per_aoi]),
        mean([a.change for a in per_aoi]),
        f50,
        f25,
        per_aoi,
        p50,
        r50,
        p25,
        r25,
    )
