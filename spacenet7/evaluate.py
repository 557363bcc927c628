"""Stage ``evaluate``: SCOT (tracking + change) and per-month building F1 of a submission."""

from __future__ import annotations

import gc
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import shapely

from spacenet7.cluster import map_aois
from spacenet7.config import EvaluateConfig
from spacenet7.data.sn7 import band_regions, image_grid, read_truth_pix, scan
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.atomic import atomic_path, ensure_writable_file
from spacenet7.metrics.pixel import clip_to_region, pixel_counts
from spacenet7.metrics.scot import AOIScore, ScotResult, prepare, score_aoi_months, summarize
from spacenet7.metrics.table import check_table, check_unique_ids, month_rows, read_table

log = logging.getLogger(__name__)


def ground_truth_table(data_root: str | Path, split_dir: str = "train", aois: list[str] | None = None) -> pd.DataFrame:
    """The SN7 ground truth of a data set as a checked table, in pixel coordinates.

    ``labels_match_pix``, or ``labels_match`` put onto each image's pixel grid where a data set
    has no pixel copy (:func:`~spacenet7.data.sn7.read_truth_pix`). ``data_root`` may name several
    roots (``os.pathsep``). Months without buildings get one empty row, so they still count as months.
    """
    months = []
    for records in scan(data_root, split_dir, aois).values():
        for rec in records:
            gdf = read_truth_pix(rec)
            rows = month_rows(rec.stem, gdf["Id"], [g.wkt for g in gdf.geometry])
            months.append(_checked_month(rows, rec.labels_match_pix or rec.labels_match or rec.aoi_dir))
    return pd.concat(months, ignore_index=True)


def _checked_month(rows: list[dict], label_file: Path) -> pd.DataFrame:
    """One month's truth rows checked as a table; a problem names the label file and its feature (``features[i]``,
    counted among the month's polygons), not a row of a table that does not exist."""
    try:
        return check_table(pd.DataFrame(rows, columns=["filename", "id", "geometry"]), label_file)
    except SN7DataError as exc:
        m = re.match(r"row (\d+): (.*)", exc.problem)
        raise SN7DataError(label_file, f"features[{int(m.group(1)) - 2}]: {m.group(2)}" if m else exc.problem) from None


def regions_on_images(regions: dict[str, list[float]], data_root: str | Path, split_dir: str) -> dict[str, list[float]]:
    """Each AOI's ``[row0, row1, col0, col1]`` cut to its image (memory follows the image, not the numbers given).

    Raises:
        SN7Error: a region that lies wholly outside an AOI's image (it would score zeros).
    """
    out = {}
    for aoi, recs in scan(data_root, split_dir, sorted(regions)).items():
        h, w = image_grid(recs[0])[2]
        r0, r1, c0, c1 = regions[aoi]
        if r0 >= h or c0 >= w or r1 <= 0 or c1 <= 0:
            raise SN7Error(
                f"evaluate: region={[float(v) for v in regions[aoi]]} lies outside the {h}x{w} image of {aoi} "
                f"(rows 0-{h}, cols 0-{w})"
            )
        out[aoi] = [max(r0, 0.0), min(r1, float(h)), max(c0, 0.0), min(c1, float(w))]
    return out


def check_region_holds_truth(truth: pd.DataFrame, regions: dict[str, list[float]], source: Path) -> None:
    """Refuse regions that hold none of the truth's buildings (outside the image: every score would be 0)."""
    inside = total = 0
    for aoi, (r0, r1, c0, c1) in regions.items():
        geoms = truth.loc[truth["aoi"] == aoi, "geometry"].to_numpy()
        geoms = geoms[~shapely.is_empty(geoms)] if len(geoms) else geoms
        total += len(geoms)
        inside += int(shapely.intersects(geoms, shapely.box(c0, r0, c1, r1)).sum()) if len(geoms) else 0
    if total and not inside:
        some = next(iter(regions.values()))
        raise SN7DataError(
            source,
            f"region={some} holds none of the truth's {total} buildings: outside the images? "
            "(region=[row0, row1, col0, col1] in source pixels)",
        )


def building_scores(score: AOIScore, inter: int, union: int) -> dict[str, float]:
    """One AOI's building F1, precision and recall at IoU >= 0.5 and > 0.25 pooled over its months (as
    :func:`~spacenet7.metrics.scot.summarize` pools a submission's), and the pixel IoU of ``inter`` / ``union``."""
    r = summarize([score])
    return {
        "f1": r.f1,
        "precision": r.precision,
        "recall": r.recall,
        "f1_iou25": r.f1_25,
        "precision_iou25": r.precision_25,
        "recall_iou25": r.recall_25,
        "pixel_iou": inter / union if union else 0.0,
    }


def format_buildings(metrics: dict) -> str:
    """One line of building scores: F1, precision and recall at both IoU thresholds, and pixel IoU."""
    return (
        f"buildings  F1@0.5 {metrics['f1']:.4f} (P {metrics['precision']:.4f} R {metrics['recall']:.4f})   "
        f"F1@0.25 {metrics['f1_iou25']:.4f} (P {metrics['precision_iou25']:.4f} R {metrics['recall_iou25']:.4f})   "
        f"pixel IoU {metrics['pixel_iou']:.4f}"
    )


def format_sizes(by_size: list[dict]) -> str:
    """One line of recall at IoU >= 0.5 by truth area (``metrics.json``'s ``by_size``), with each bin's truth count."""
    cells = []
    for b in by_size:
        if not b["n_truth"]:
            continue
        lo, hi = b["min_area"], b["max_area"]
        name = f"<{hi:g}" if lo == 0 else (f">={lo:g}" if hi is None else f"{lo:g}-{hi:g}")
        cells.append(f"{name} {b['recall']:.2f} ({b['n_truth']})")
    return "recall@0.5 by truth area (px^2, count): " + (" | ".join(cells) or "no truth")


def format_table(result: ScotResult) -> str:
    """A plain-text per-AOI table followed by the overall scores."""
    head = f"{'AOI':<34} {'SCOT':>6} {'track':>6} {'change':>6} {'tp':>6} {'fp':>6} {'fn':>6} {'mism':>5} {'cTP':>5} {'cFP':>5} {'cFN':>5}"
    lines = [head, "-" * len(head)]
    for a in result.per_aoi:
        note = "  (no new buildings: change = 0)" if a.no_new_buildings else ""
        lines.append(
            f"{a.aoi:<34} {a.scot:6.3f} {a.tracking:6.3f} {a.change:6.3f} {a.tp:6d} {a.fp:6d} {a.fn:6d} "
            f"{a.mismatches:5d} {a.change_tp:5d} {a.change_fp:5d} {a.change_fn:5d}{note}"
        )
    lines.append("-" * len(head))
    lines.append(
        f"overall  SCOT {result.scot:.4f}   tracking {result.tracking:.4f}   change {result.change:.4f}   "
        f"F1@0.5 {result.f1:.4f}   F1@0.25 {result.f1_25:.4f}   ({len(result.per_aoi)} AOIs)"
    )
    return "\n".join(lines)


def evaluate_aoi(
    aoi: str,
    truth: pd.DataFrame,
    proposal: pd.DataFrame,
    region: list[float] | None,
    threshold: float,
    beta: float,
    min_truth_area: float,
) -> tuple[AOIScore, int, int]:
    """One AOI's SCOT score and its pixel-IoU sums (intersection, union), from its rows of both tables.

    ``region``: score only this box ``[row0, row1, col0, col1]`` (source pixels) of every month.
    """
    if region is not None:
        try:
            truth, proposal = clip_to_region(truth, region), clip_to_region(proposal, region)
        except ValueError as exc:
            raise SN7Error(f"evaluate: {exc}") from None
    months = set(truth["month"].unique())
    _, t, p = prepare(truth, proposal, min_truth_area)
    inter, union = pixel_counts(truth, proposal, region)
    return score_aoi_months(t, p, aoi, months, threshold=threshold, beta=beta), inter, union


def run(cfg: EvaluateConfig) -> dict[str, Path]:
    """Score ``proposal`` (default: the pipeline's submission) against ``truth`` (default: the data set)."""
    with gc_paused():
        return _run(cfg)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (its previous state restored after).

    Reading a table makes ~40,000 polygon objects, which the collector tracks: each such burst set
    off a full collection of every object the process holds (~140,000 after the stage's imports),
    ~0.1 s, more than reading the table itself. Nothing here makes garbage cycles worth collecting.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _run(cfg: EvaluateConfig) -> dict[str, Path]:
    ensure_writable_file(cfg.out)
    if cfg.truth:
        truth = read_table(cfg.truth, name="truth")
        truth_src = Path(cfg.truth)
        if cfg.aois:
            truth = truth[truth["aoi"].isin(cfg.aois)]
    else:
        truth = ground_truth_table(cfg.data_root, cfg.split_dir, cfg.aois)
        truth_src = Path(cfg.data_root)
    proposal_src = Path(cfg.proposal or cfg.submission)
    proposal = read_table(proposal_src, name="proposal")
    if len(truth) == 0:
        raise SN7DataError(truth_src, "the truth table is empty")
    check_unique_ids(truth, truth_src)
    check_unique_ids(proposal, proposal_src)
    extra = sorted(set(proposal["aoi"].unique()) - set(truth["aoi"].unique()))
    if extra:
        log.warning("evaluate: proposal AOIs not in the truth are ignored: %s", ", ".join(extra))
    aois = sorted(truth["aoi"].unique())
    regions: dict[str, list[float]] = {}
    if cfg.band_frac is not None:
        regions = band_regions(cfg.data_root, aois, cfg.band_frac, cfg.split_dir)
    elif cfg.region is not None:
        regions = {a: [float(v) for v in cfg.region] for a in aois}
        r0, r1, c0, c1 = regions[aois[0]]
        if r1 > r0 and c1 > c0:  # (an empty box is clip_to_region's one line)
            if not cfg.truth:  # the truth is the data set: its images give each AOI's size
                regions = regions_on_images(regions, cfg.data_root, cfg.split_dir)
            check_region_holds_truth(truth, regions, truth_src)
    scored = map_aois(
        evaluate_aoi,
        [
            (
                a,
                (
                    a,
                    truth[truth["aoi"] == a],
                    proposal[proposal["aoi"] == a],
                    regions.get(a),
                    cfg.iou_threshold,
                    cfg.beta,
                    cfg.min_truth_area,
                ),
            )
            for a in aois
        ],
        cfg.cluster,
        stage="evaluate",
    )
    result = summarize([score for score, _, _ in scored])
    inter, union = sum(i for _, i, _ in scored), sum(u for _, _, u in scored)
    metrics = result.to_dict()
    metrics["pixel_iou"] = inter / union if union else 0.0
    metrics["region"] = [float(v) for v in cfg.region] if cfg.region is not None and cfg.band_frac is None else None
    metrics["regions"] = regions or None
    for score, i, u in scored:  # building scores per place
        metrics["per_aoi"][score.aoi] |= building_scores(score, i, u)
    print(format_table(result))
    if len(scored) > 1:
        for score, _, _ in scored:
            print(f"{score.aoi:<34} " + format_buildings(metrics["per_aoi"][score.aoi]) + _region_note(regions.get(score.aoi)))
        for score, _, _ in scored:
            print(f"{score.aoi:<34} " + format_sizes(metrics["per_aoi"][score.aoi]["by_size"]))
    print(format_buildings(metrics) + ("   (held-out bands)" if cfg.band_frac is not None else _region_note(metrics["region"])))
    print(format_sizes(metrics["by_size"]))
    out = Path(cfg.out)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    print(f"metrics written to {out}")
    return {"metrics": out}


def _region_note(region: list[float] | None) -> str:
    return f"   (region rows {region[0]:g}-{region[1]:g}, cols {region[2]:g}-{region[3]:g})" if region else ""
