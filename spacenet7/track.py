"""Track footprints across months: persistent ids, gap filling, false-new suppression.

Footprints of each month are matched to the live tracks by IoU (STRtree candidates, then an
optimal or greedy one-to-one assignment, shared with the SCOT evaluator). Unmatched footprints
start new tracks. Afterwards:

- gap filling: a building seen in months i and k is kept in between, unless the imagery of
  that month clearly shows it absent (valid pixels, low footprint probability) or, as in the
  SN7 labels, hides it under clouds (``absent`` decides; see ``vectorize``);
- false-new suppression: a track must be seen in ``min_persist`` months (or every remaining
  month, near the end of the series) to count, and a track that first appears after the first
  month mostly on top of footprints seen earlier (``max_new_overlap``) is a re-segmentation of
  existing buildings, not construction, and is dropped;
- birth confirmation (``birth_prob``): a track born after the first month starts in the first
  month whose footprint probability reaches ``birth_prob``; weaker leading months (a
  construction pad, a shadow) are dropped, so the building is new when its roof is;
- never-demolished (optional): a building is carried to the last month once seen.

``mode=onset`` (:func:`onset_tracks`, the SN7 winners' way) does not match month to month at all:
the footprints are drawn once, from the mean probability of the last ``reference_months`` months
(every building standing at the end of the series), and each building gets the month it appears:
the single step of its mean footprint probability per month that rises most (by at least
``onset_gain``); without such a step it stood from the first month. Ids never switch and a
flickering month never starts a false "new" building.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

from spacenet7.errors import check, choice

if TYPE_CHECKING:  # imported where used: config.py imports TrackConfig, and the CLI's start stays fast
    import pandas as pd


class TrackMode(StrEnum):
    """How buildings are followed through the months."""

    match = "match"  # footprints of every month matched to the live tracks (month to month)
    onset = "onset"  # one set of footprints (the last months' mean), each with the month it appears


class TrackMethod(StrEnum):
    """Month-to-month matching of the tracker."""

    hungarian = "hungarian"  # optimal
    greedy = "greedy"  # highest IoU first


@dataclass
class TrackConfig:
    """Tracking parameters (``vectorize``'s ``track`` node; see the module docstring)."""

    mode: TrackMode = TrackMode.match
    method: TrackMethod = TrackMethod.hungarian
    min_iou: float = 0.2
    max_gap: int = 6  # months a track may go unseen and still be matched
    fill_gaps: bool = True
    fill_masked: bool = False  # also fill months where the footprint is mostly masked (SN7 labels omit buildings under clouds)
    absent_prob: float = 0.15  # mean footprint probability below which a valid area counts as clearly empty
    min_persist: int = 2  # months a new building must be seen to count
    birth_prob: float = 0.0  # a new track starts in the first month its mean footprint probability reaches this (0 = off)
    max_new_overlap: float = 0.5  # drop a new track whose first footprint lies this much (fraction of its area) on earlier ones
    never_demolished: bool = False
    reference_months: int = 6  # mode=onset: the footprints come from the mean probability of the last this many months
    onset_gain: float = 0.25  # mode=onset: the rise of mean footprint probability that marks a new building

    def __post_init__(self) -> None:
        self.mode = choice(self.mode, TrackMode, "vectorize", "track.mode")
        self.method = choice(self.method, TrackMethod, "vectorize", "track.method")
        check(self.reference_months >= 1, "vectorize", f"track.reference_months={self.reference_months} must be >= 1")
        check(0 < self.onset_gain <= 1, "vectorize", f"track.onset_gain={self.onset_gain} must be within (0, 1]")
        check(0 <= self.min_iou <= 1, "vectorize", f"track.min_iou={self.min_iou} must be within [0, 1]")
        check(self.max_gap >= 0, "vectorize", f"track.max_gap={self.max_gap} must be >= 0")
        check(self.min_persist >= 1, "vectorize", f"track.min_persist={self.min_persist} must be >= 1")


MAX_BUILT_BEFORE = 0.25  # mode=onset: the share of months before a step that may look built (flicker, not construction)
AbsentFn = Callable[[int, object], bool]
ConfidenceFn = Callable[[int, object], float]


def assign_ids(months: list[np.ndarray], cfg: TrackConfig) -> list[np.ndarray]:
    """Persistent ids for every footprint of every month (ids start at 1)."""
    from spacenet7.metrics.matching import match

    last_geom: list[object] = []
    last_t: list[int] = []
    out = []
    for t, geoms in enumerate(months):
        geoms = np.asarray(geoms, dtype=object)
        ids = np.zeros(len(geoms), np.int64)
        live = np.flatnonzero(t - np.asarray(last_t, dtype=np.int64) <= cfg.max_gap) if last_t else np.zeros(0, np.int64)
        if len(live) and len(geoms):
            m = match(np.asarray(last_geom, dtype=object)[live], geoms, cfg.min_iou, inclusive=True, method=cfg.method)
            ids[m.b] = live[m.a] + 1
        for k in np.flatnonzero(ids == 0):
            last_geom.append(geoms[k])
            last_t.append(t)
            ids[k] = len(last_geom)
        for j, tid in enumerate(ids):
            last_geom[tid - 1] = geoms[j]
            last_t[tid - 1] = t
        out.append(ids)
    return out


def track(
    months: list[np.ndarray], cfg: TrackConfig, absent: AbsentFn | None = None, confidence: ConfidenceFn | None = None
) -> pd.DataFrame:
    """Track footprints and post-process the tracks.

    Args:
        months: per month, an array of polygons (any coordinates, the same for every month).
        cfg: tracking options.
        absent: ``absent(t, geom)`` is True when month ``t`` clearly shows no building at
            ``geom``; used by gap filling (``None``: always fill).
        confidence: ``confidence(t, geom)``, the footprint probability of ``geom`` in month
            ``t``; used by birth confirmation (``birth_prob``).

    Returns:
        One row per (building, month): ``t``, ``id``, ``geometry``, ``filled`` (not observed,
        inferred), ``first_seen``, ``last_seen``, ``n_months`` (months as month indices).
    """
    import pandas as pd

    ids = assign_ids(months, cfg)
    n = len(months)
    rows = pd.DataFrame(
        {
            "t": np.concatenate([np.full(len(g), t) for t, g in enumerate(months)]) if n else np.zeros(0, int),
            "id": np.concatenate(ids) if n else np.zeros(0, int),
            "geometry": np.concatenate([np.asarray(g, dtype=object) for g in months]) if n else np.zeros(0, object),
        }
    )
    if cfg.birth_prob > 0 and confidence is not None:
        rows = _confirm_births(rows, cfg.birth_prob, confidence)
    rows["filled"] = False
    rows = rows.sort_values(["id", "t"], kind="stable").reset_index(drop=True)
    ids_, ts, geoms = rows["id"].to_numpy(), rows["t"].to_numpy(), rows["geometry"].to_numpy()
    same = ids_[1:] == ids_[:-1]
    extra = []
    if cfg.fill_gaps:
        for k in np.flatnonzero(same & (ts[1:] - ts[:-1] > 1)):  # only the gaps, not every track
            extra += [
                (t, ids_[k], geoms[k], True) for t in range(ts[k] + 1, ts[k + 1]) if absent is None or not absent(t, geoms[k])
            ]
    if cfg.never_demolished:
        for k in np.flatnonzero(np.append(~same, True)):  # the last row of each track
            extra += [(t, ids_[k], geoms[k], True) for t in range(ts[k] + 1, n)]
    if extra:
        rows = pd.concat([rows, pd.DataFrame(extra, columns=["t", "id", "geometry", "filled"])], ignore_index=True)
    stats = rows.groupby("id")["t"].agg(first_seen="min", last_seen="max", n_months="nunique")
    need = np.minimum(cfg.min_persist, n - stats["first_seen"])
    keep = stats.index[stats["n_months"] >= need]
    if cfg.max_new_overlap < 1.0:
        keep = keep.difference(_resegmentations(rows[rows["id"].isin(keep)], cfg.max_new_overlap))
    rows = rows[rows["id"].isin(keep)].join(stats, on="id")
    return rows.sort_values(["t", "id"]).reset_index(drop=True)


def _resegmentations(rows: pd.DataFrame, max_overlap: float) -> pd.Index:
    """Ids of tracks born after month 0 whose first footprint mostly covers earlier footprints."""
    import pandas as pd
    import shapely

    firsts = rows.sort_values("t").groupby("id", sort=False).head(1)
    born_late = firsts[firsts["t"] > 0]
    if born_late.empty:
        return pd.Index([])
    earlier = rows.drop_duplicates("id")  # one footprint per track is enough: tracks barely move
    geoms = earlier["geometry"].to_numpy()
    first_t = earlier["id"].map(firsts.set_index("id")["t"]).to_numpy()
    tree = shapely.STRtree(geoms)
    cand = born_late["geometry"].to_numpy()
    qi, gi = tree.query(cand, predicate="intersects")
    born_t = born_late["t"].to_numpy()
    ok = first_t[gi] < born_t[qi]
    qi, gi = qi[ok], gi[ok]
    cover = np.zeros(len(cand))
    np.add.at(cover, qi, shapely.area(shapely.intersection(cand[qi], geoms[gi])))
    frac = cover / np.maximum(shapely.area(cand), 1e-9)
    return pd.Index(born_late["id"].to_numpy()[frac > max_overlap])


def _confirm_births(rows: pd.DataFrame, birth_prob: float, confidence: ConfidenceFn) -> pd.DataFrame:
    """Drop the leading months of late-born tracks until their footprint probability reaches ``birth_prob``."""
    rows = rows.sort_values(["id", "t"], kind="stable").reset_index(drop=True)
    first_t = rows.groupby("id")["t"].transform("min").to_numpy()
    drop = np.zeros(len(rows), bool)
    ids_, ts, geoms = rows["id"].to_numpy(), rows["t"].to_numpy(), rows["geometry"].to_numpy()
    k = 0
    while k < len(rows):
        end = k
        while end < len(rows) and ids_[end] == ids_[k]:
            end += 1
        if first_t[k] > 0:
            j = k
            while j < end and confidence(ts[j], geoms[j]) < birth_prob:
                j += 1
            drop[k:j] = True
        k = end
    return rows[~drop].reset_index(drop=True)


def onset_months(evidence: np.ndarray, gain: float) -> np.ndarray:
    """The month each building appears, from its mean footprint probability per month.

    Args:
        evidence: (n_buildings, n_months) mean footprint probability; NaN where a month shows
            nothing of the building (nodata).
        gain: the least rise (mean after the step minus mean before it) that counts as an appearance.

    Returns:
        (n_buildings,) int month indices: the step ``b`` (1 <= b < n_months) maximizing
        mean(evidence[b:]) - mean(evidence[:b]), where that rise reaches ``gain`` and at most
        :data:`MAX_BUILT_BEFORE` of the months before ``b`` come within ``gain`` of the level after
        it (a building that flickers is not new); else 0 (standing from the first month).
    """
    n, months = evidence.shape
    if months < 2 or n == 0:
        return np.zeros(n, np.int64)
    seen = ~np.isnan(evidence)
    val = np.where(seen, evidence, 0.0)
    csum, ccnt = np.cumsum(val, axis=1), np.cumsum(seen, axis=1)
    tot, cnt = csum[:, -1:], ccnt[:, -1:]
    before_sum, before_cnt = csum[:, :-1], ccnt[:, :-1]  # months < b for b = 1..months-1
    after_sum, after_cnt = tot - before_sum, cnt - before_cnt
    with np.errstate(invalid="ignore", divide="ignore"):
        rise = after_sum / after_cnt - before_sum / before_cnt
    rise = np.where((before_cnt > 0) & (after_cnt > 0), rise, -np.inf)
    b = np.argmax(rise, axis=1)
    best = rise[np.arange(n), b]
    out = np.zeros(n, np.int64)
    for i in np.flatnonzero(best >= gain):  # a flicker is no step: few months before it may look built
        step = b[i] + 1
        before = evidence[i, :step][seen[i, :step]]
        level = after_sum[i, b[i]] / after_cnt[i, b[i]] - gain
        if np.mean(before >= level) <= MAX_BUILT_BEFORE:
            out[i] = step
    return out


def onset_tracks(geoms: np.ndarray, evidence: np.ndarray, cfg: TrackConfig, threshold: float) -> pd.DataFrame:
    """Rows of :func:`track`'s table for ``mode=onset``: each building, from the month it appears to the last.

    Args:
        geoms: (n_buildings,) polygons, the same in every month.
        evidence: (n_buildings, n_months) mean footprint probability per month (NaN: nodata).
        cfg: ``onset_gain``.
        threshold: a month whose evidence is below it (or NaN) is marked ``filled`` (inferred, not seen).
    """
    import pandas as pd

    n, months = evidence.shape
    birth = onset_months(evidence, cfg.onset_gain)
    count = months - birth
    bid = np.repeat(np.arange(n), count)
    t = (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + np.repeat(birth, count)).astype(np.int64)
    seen = evidence[bid, t] if len(bid) else np.zeros(0)
    rows = pd.DataFrame(
        {
            "t": t,
            "id": bid + 1,
            "geometry": geoms[bid] if len(bid) else np.zeros(0, object),
            "filled": ~(seen >= threshold),
            "first_seen": np.repeat(birth, count),
            "last_seen": np.full(len(bid), months - 1),
            "n_months": np.repeat(count, count),
        }
    )
    return rows.sort_values(["t", "id"]).reset_index(drop=True)
