"""Optimal one-to-one matching of footprints by IoU, sparse and fast.

Candidates come from an STRtree and exact intersection areas from
:mod:`spacenet7.metrics.overlay`; pairs above the threshold form a bipartite graph whose
connected components are solved independently: isolated pairs directly, larger components with
``scipy.optimize.linear_sum_assignment`` on the reference reward ``100 + IoU`` (maximum number
of matches first, then maximum summed IoU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from spacenet7.metrics.overlay import PolygonSet, pair_intersection_area
from spacenet7.metrics.rules import IOU_THRESHOLD

BASE_REWARD = 100.0


@dataclass
class Matches:
    """Matched index pairs into the two input arrays, with their IoU."""

    a: np.ndarray
    b: np.ndarray
    iou: np.ndarray

    def __len__(self) -> int:
        return len(self.a)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every intersecting pair (STRtree candidates): returns (ia, ib, iou)."""
    if len(a) == 0 or len(b) == 0:
        e = np.zeros(0, np.int64)
        return e, e, np.zeros(0)
    ia, ib = shapely.STRtree(b).query(a)  # bounding boxes only: the exact overlay is cheaper than a predicate
    pa, pb = PolygonSet(a), PolygonSet(b)
    inter = pair_intersection_area(pa, pb, ia, ib)
    hit = inter > 0
    ia, ib, inter = ia[hit], ib[hit], inter[hit]
    union = pa.area[ia] + pb.area[ib] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return ia, ib, iou


def match(
    a: np.ndarray, b: np.ndarray, threshold: float = IOU_THRESHOLD, *, inclusive: bool = False, method: str = "hungarian"
) -> Matches:
    """Match polygons ``a`` to ``b`` one-to-one.

    Args:
        a: polygons (e.g. ground truth).
        b: polygons (e.g. proposals).
        threshold: IoU threshold; pairs need ``iou > threshold`` (``>=`` when ``inclusive``).
        inclusive: use ``>=`` (the SpaceNet F1 convention at 0.5).
        method: ``hungarian`` (optimal, as the SCOT reference) or ``greedy`` (highest IoU first).
    """
    a = np.asarray(a, dtype=object)
    b = np.asarray(b, dtype=object)
    return match_above(*pairwise_iou(a, b), len(a), len(b), threshold, inclusive=inclusive, method=method)


def match_above(
    ia: np.ndarray,
    ib: np.ndarray,
    iou: np.ndarray,
    na: int,
    nb: int,
    threshold: float,
    *,
    inclusive: bool = False,
    method: str = "hungarian",
) -> Matches:
    """:func:`match` on precomputed candidate pairs (reuse one :func:`pairwise_iou` for several thresholds)."""
    keep = iou >= threshold if inclusive else iou > threshold
    return match_pairs(ia[keep], ib[keep], iou[keep], na, nb, method)


def match_pairs(ia: np.ndarray, ib: np.ndarray, iou: np.ndarray, na: int, nb: int, method: str = "hungarian") -> Matches:
    """Solve the assignment over candidate pairs (see :func:`match`)."""
    if len(ia) == 0:
        e = np.zeros(0, np.int64)
        return Matches(e, e, np.zeros(0))
    if method == "greedy":
        return _greedy(ia, ib, iou)
    if method != "hungarian":
        raise ValueError(f"unknown matching method {method!r} (hungarian or greedy)")
    deg_a = np.bincount(ia, minlength=na)
    deg_b = np.bincount(ib, minlength=nb)
    simple = (deg_a[ia] == 1) & (deg_b[ib] == 1)
    out_a, out_b, out_iou = [ia[simple]], [ib[simple]], [iou[simple]]
    hard = ~simple
    if hard.any():
        ha, hb, hiou = ia[hard], ib[hard], iou[hard]
        ua, ra = np.unique(ha, return_inverse=True)
        ub, rb = np.unique(hb, return_inverse=True)
        n = len(ua) + len(ub)
        graph = coo_matrix((np.ones(len(ha)), (ra, rb + len(ua))), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        pair_comp = comp[ra]
        order = np.argsort(pair_comp, kind="stable")
        bounds = np.flatnonzero(np.diff(pair_comp[order])) + 1
        for group in np.split(order, bounds):
            rows, r_inv = np.unique(ra[group], return_inverse=True)
            cols, c_inv = np.unique(rb[group], return_inverse=True)
            reward = np.zeros((len(rows), len(cols)))
            reward[r_inv, c_inv] = BASE_REWARD + hiou[group]
            r, c = linear_sum_assignment(reward, maximize=True)
            ok = reward[r, c] > 0
            out_a.append(ua[rows[r[ok]]])
            out_b.append(ub[cols[c[ok]]])
            out_iou.append(reward[r[ok], c[ok]] - BASE_REWARD)
    return Matches(np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_iou))


def _greedy(ia: np.ndarray, ib: np.ndarray, iou: np.ndarray) -> Matches:
    order = np.argsort(-iou, kind="stable")
    used_a: set[int] = set()
    used_b: set[int] = set()
    keep = []
    for k in order:
        x, y = int(ia[k]), int(ib[k])
        if x not in used_a and y not in used_b:
            used_a.add(x)
            used_b.add(y)
            keep.append(k)
    kept = np.asarray(keep, np.int64)
    return Matches(ia[kept], ib[kept], iou[kept])
