"""SCOT speed: ``spacenet7 evaluate`` end to end vs the literal quadratic reference, side by side in one run.

python bench/bench_scot.py                     # 24 months x 2000 buildings, the whole reference (~10-20 s)
python bench/bench_scot.py --reference-months 4   # the reference on 4 of the months, scaled (quicker)

The case: one AOI, 24 months of 2000 grid buildings (30% born after the first month), the proposal
the same buildings jittered differently, both written as SN7 CSVs. Timed:

- the reference: the two CSVs read as solaris reads them (pandas + shapely WKT) and scored by
  ``metrics.reference.reference_scot`` (dense IoU matrices, one ``linear_sum_assignment`` per month);
- ``spacenet7 evaluate`` as a user runs it (a fresh process), and the same command on a one-building
  table: the difference is evaluate's own time beyond start-up (reading, SCOT, F1 at two
  thresholds, pixel IoU, the JSON); the best of ``--repeats`` runs each;
- ``evaluate.run`` in this process (after a warm-up), and the fast SCOT alone at 24 x 5000.

Wall and CPU seconds are both printed: on a shared machine the wall ratio says little. The load
(``/proc/loadavg``) is read before and after, and the run says when the machine was busy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import months_of_buildings, table  # noqa: E402

from spacenet7 import evaluate  # noqa: E402
from spacenet7.config import EvaluateConfig  # noqa: E402
from spacenet7.metrics.reference import reference_scot  # noqa: E402
from spacenet7.metrics.scot import scot  # noqa: E402


def load() -> tuple[float, int]:
    """The 1-minute load average and the number of CPUs."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0]), os.cpu_count() or 1
    except OSError:
        return float("nan"), os.cpu_count() or 1


def timed(fn, *a):
    """(result, wall s, CPU s of this process)."""
    t, c = time.perf_counter(), time.process_time()
    r = fn(*a)
    return r, time.perf_counter() - t, time.process_time() - c


def child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cli(args: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of ``python -m spacenet7 evaluate ARGS`` in a fresh process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="offline")
    c, t = child_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "spacenet7", "evaluate", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t, child_cpu() - c


def case(n_months: int, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    truth = table(months_of_buildings(n_months, n, 0))
    prop = truth.copy()
    prop["geometry"] = table(months_of_buildings(n_months, n, 0, jitter_seed=1))["geometry"].values  # jittered differently
    prop["id"] = prop["id"] + 100000
    return truth, prop


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    pd.DataFrame(
        {"filename": df["filename"], "id": df["id"], "geometry": shapely.to_wkt(df["geometry"].values, rounding_precision=-1)}
    ).to_csv(path, index=False)
    return path


def reference_end_to_end(truth_csv: Path, prop_csv: Path, months: int | None):
    """The reference's scores and seconds (wall, CPU): read both CSVs with pandas + shapely, then
    ``reference_scot``; with ``months``, on that many months spread over the series, scaled up by
    the quadratic cost (sum over months of truth x proposal counts)."""
    t, c = time.perf_counter(), time.process_time()
    tables = []
    for path in (truth_csv, prop_csv):
        df = pd.read_csv(path)
        df["geometry"] = shapely.from_wkt(df["geometry"].to_numpy(dtype=object))
        parts = df["filename"].str.extract(r"global_monthly_(\d{4})_(\d{2})_mosaic_(.+)$")
        df["aoi"], df["month"] = parts[2], parts[0] + "-" + parts[1]
        tables.append(df)
    read_wall, read_cpu = time.perf_counter() - t, time.process_time() - c
    truth, prop = tables
    all_months = sorted(truth["month"].unique())
    keep = all_months if months is None else [all_months[int(i)] for i in np.linspace(0, len(all_months) - 1, months).round()]
    scale = 1.0
    if months is not None:
        nt, npr = truth["month"].value_counts(), prop["month"].value_counts()
        scale = sum(nt[m] * npr[m] for m in all_months) / sum(nt[m] * npr[m] for m in keep)
    scores, wall, cpu = timed(reference_scot, truth[truth["month"].isin(keep)], prop[prop["month"].isin(keep)])
    return scores, read_wall + wall * scale, read_cpu + cpu * scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--months", type=int, default=24)
    ap.add_argument("--buildings", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each evaluate timing (the best is kept)")
    ap.add_argument("--reference-months", type=int, default=None, help="time the reference on this many months, scaled")
    args = ap.parse_args()
    load0, ncpu = load()
    print(f"machine: {ncpu} CPUs, load average {load0:.2f} at the start")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        truth, prop = case(args.months, args.buildings)
        truth_csv, prop_csv = write_csv(truth, tmp / "truth.csv"), write_csv(prop, tmp / "proposal.csv")
        tiny_csv = write_csv(truth.iloc[:1], tmp / "tiny.csv")
        print(f"case: {args.months} months x {args.buildings} buildings ({len(truth)} truth rows, {len(prop)} proposal rows)")

        # spacenet7 evaluate as a user runs it, and its start-up (the same command on one building)
        full = [cli([f"truth={truth_csv}", f"proposal={prop_csv}", f"out={tmp / 'm.json'}"], tmp) for _ in range(args.repeats)]
        tiny = [cli([f"truth={tiny_csv}", f"proposal={tiny_csv}", f"out={tmp / 't.json'}"], tmp) for _ in range(args.repeats)]
        (f_wall, f_cpu), (t_wall, t_cpu) = min(full), min(tiny)
        own_wall, own_cpu = max(f_wall - t_wall, 1e-3), max(min(c for _, c in full) - min(c for _, c in tiny), 1e-3)
        metrics = json.loads((tmp / "m.json").read_text())

        # evaluate.run in this process, warm
        cfg = EvaluateConfig(truth=str(truth_csv), proposal=str(prop_csv), out=str(tmp / "m2.json"))
        with contextlib.redirect_stdout(io.StringIO()):
            evaluate.run(EvaluateConfig(truth=str(tiny_csv), proposal=str(tiny_csv), out=str(tmp / "t2.json")))
            runs = [timed(evaluate.run, cfg)[1:] for _ in range(args.repeats)]
        in_wall, in_cpu = min(w for w, _ in runs), min(c for _, c in runs)

        ref, ref_wall, ref_cpu = reference_end_to_end(truth_csv, prop_csv, args.reference_months)
    aoi = next(iter(ref))
    if args.reference_months is None:  # the same scores
        assert abs(ref[aoi]["scot"] - metrics["scot"]) < 1e-12 and ref[aoi]["mismatches"] == metrics["per_aoi"][aoi]["mismatches"]

    scope = "" if args.reference_months is None else f" ({args.reference_months} of {args.months} months timed, scaled)"
    print(f"reference{scope}: read + reference_scot {ref_wall:.2f} s wall, {ref_cpu:.2f} s CPU")
    print(
        f"spacenet7 evaluate: {f_wall:.2f} s wall ({f_cpu:.2f} s CPU) in all; start-up (one building) {t_wall:.2f} s "
        f"({t_cpu:.2f} s CPU); its own time {own_wall:.3f} s wall, {own_cpu:.3f} s CPU "
        f"(SCOT {metrics['scot']:.4f}, F1 {metrics['f1']:.4f}, pixel IoU {metrics['pixel_iou']:.4f})"
    )
    print(f"evaluate.run in this process (warm): {in_wall:.3f} s wall, {in_cpu:.3f} s CPU")
    print(
        f"ratio, reference / evaluate's own time: {ref_wall / own_wall:.0f}x wall, {ref_cpu / own_cpu:.0f}x CPU; "
        f"reference / whole command (start-up included): {ref_wall / f_wall:.1f}x wall, {ref_cpu / f_cpu:.1f}x CPU"
    )

    t5, p5 = case(24, 5000)
    scot(t5.iloc[:50], p5.iloc[:50])
    res, wall, cpu = timed(scot, t5, p5)
    print(
        f"fast SCOT alone (tables in memory), 24 months x 5000 buildings: {wall:.3f} s wall, {cpu:.3f} s CPU (SCOT {res.scot:.4f})"
    )
    load1, _ = load()
    busy = max(load0, load1) > 0.5 * ncpu
    print(
        f"load average {load0:.2f} -> {load1:.2f} on {ncpu} CPUs: "
        + (
            "BUSY machine (other work is running): wall times and wall ratios are inflated; CPU seconds are the better guide"
            if busy
            else "quiet machine"
        )
    )


if __name__ == "__main__":
    main()
