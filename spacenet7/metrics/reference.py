"""A literal, quadratic port of the SN7 reference SCOT (solaris ``eval/scot.py``).

Dense IoU matrices over every truth x proposal pair and one ``linear_sum_assignment`` per month.
It is slow on purpose: tests cross-check :mod:`spacenet7.metrics.scot` against it and
``bench/bench_scot.py`` measures the speed-up.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from spacenet7.metrics.rules import IOU_THRESHOLD, MIN_TRUTH_AREA
from spacenet7.metrics.scot import combine, drop_small, f_score


def _match(tg: list, pg: list, threshold: float = IOU_THRESHOLD, base_reward: float = 100.0) -> list[tuple[int, int]]:
    iou = np.zeros((len(tg), len(pg)))
    for i, g in enumerate(tg):
        for j, p in enumerate(pg):
            if g.intersects(p):
                inter = g.intersection(p).area
                iou[i, j] = inter / (g.area + p.area - inter)
    reward = np.where(iou > threshold, base_reward + iou, 0.0)
    r, c = linear_sum_assignment(reward, maximize=True) if reward.size else ([], [])
    return [(i, j) for i, j in zip(r, c) if iou[i, j] > threshold]


def reference_scot(truth: pd.DataFrame, proposal: pd.DataFrame, min_truth_area: float = MIN_TRUTH_AREA) -> dict[str, dict]:
    """Per-AOI ``{"scot", "tracking", "change", "mismatches"}`` computed the reference way."""
    months_all = truth[["aoi", "month"]].drop_duplicates()
    truth = drop_small(truth, min_truth_area)
    out = {}
    for aoi in sorted(months_all["aoi"].unique()):
        t_aoi = truth[truth.aoi == aoi]
        p_aoi = proposal[(proposal.aoi == aoi) & ~proposal.geometry.apply(lambda g: g.is_empty)]
        month_keys = sorted(set(t_aoi.month) | set(p_aoi.month))
        tp = fp = fn = mism = ctp = cfp = cfn = 0
        g_past: dict[int, int] = {}
        p_past: dict[int, int] = {}
        g_seen: set[int] = set()
        p_seen: set[int] = set()
        for i, month_key in enumerate(month_keys):
            t = t_aoi[t_aoi.month == month_key]
            p = p_aoi[p_aoi.month == month_key]
            pairs = _match(list(t.geometry), list(p.geometry))
            gids, pids = list(t.id), list(p.id)
            matched = [(gids[a], pids[b]) for a, b in pairs]
            bad = sum(1 for g, q in matched if bool(g in g_past and g_past[g] != q) or (q in p_past and p_past[q] != g))
            for g, q in matched:
                g_past[g], p_past[q] = q, g
            tp += len(matched) - bad
            fp += len(pids) - len(matched) + bad
            fn += len(gids) - len(matched) + bad
            mism += bad
            if i > 0:
                g_new = [g for g in gids if g not in g_seen]
                p_new = [q for q in pids if q not in p_seen]
                for g, q in matched:
                    if g in g_new and q in p_new:
                        ctp += 1
                    elif q in p_new:
                        cfp += 1
                    elif g in g_new:
                        cfn += 1
                cfp += len([q for q in p_new if q not in [m[1] for m in matched]])
                cfn += len([g for g in g_new if g not in [m[0] for m in matched]])
            g_seen.update(gids)
            p_seen.update(pids)
        tr, ch = f_score(tp, fp, fn), f_score(ctp, cfp, cfn)
        out[aoi] = {"scot": combine(ch, tr), "tracking": tr, "change": ch, "mismatches": mism}
    return out
