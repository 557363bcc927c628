"""SCOT speed: the fast evaluator vs the literal quadratic reference, side by side in one run.

python bench/bench_scot.py            # 24 months x 5000 buildings (reference on a subset)
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import months_of_buildings, table  # noqa: E402

from spacenet7.metrics.reference import reference_scot  # noqa: E402
from spacenet7.metrics.scot import scot  # noqa: E402


def timed(fn, *a):
    t = time.perf_counter()
    r = fn(*a)
    return r, time.perf_counter() - t


def main() -> None:
    truth = table(months_of_buildings(24, 5000, 0))
    prop = truth.copy()
    prop["geometry"] = table(months_of_buildings(24, 5000, 0, jitter_seed=1))["geometry"].values  # jittered differently
    prop["id"] = prop["id"] + 100000
    _, cold = timed(scot, truth.iloc[:50], prop.iloc[:50])
    print(f"first call in this process (loads or compiles the numba overlay kernels): {cold:.2f} s")
    res, fast = timed(scot, truth, prop)
    print(f"fast SCOT, 24 months x 5000 buildings: {fast:.3f} s  (SCOT {res.scot:.4f}, target <= 0.5 s)")
    # the reference is quadratic: time it on the first 3 months and on a 500-building subset, side by side
    for months, n in ((3, 500), (3, 1000)):
        t = table(months_of_buildings(months, n, 0))
        p = t.copy()
        p["geometry"] = table(months_of_buildings(months, n, 0, jitter_seed=1))["geometry"].values
        r_ref, t_ref = timed(reference_scot, t, p)
        r_fast, t_fast = timed(scot, t, p)
        aoi = next(iter(r_ref))
        assert abs(r_ref[aoi]["tracking"] - r_fast.per_aoi[0].tracking) < 1e-12
        per_month = t_ref / months * (5000 / n) ** 2
        print(
            f"{months} months x {n}: reference {t_ref:.2f} s, fast {t_fast:.3f} s, ratio {t_ref / t_fast:.0f}x; "
            f"reference extrapolated to 24 x 5000: ~{per_month * 24:.0f} s"
        )


if __name__ == "__main__":
    main()
