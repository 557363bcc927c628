"""Tracking speed: 24 months x N buildings, showing near-linear scaling in N.

Two inputs: jittered rectangles (convex: the numba overlay path) and the same buildings rotated,
rasterized and polygonized as ``vectorize`` emits them (pixel staircases: mostly GEOS).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import months_of_buildings, months_of_pixel_footprints  # noqa: E402

from spacenet7.config import TrackConfig  # noqa: E402
from spacenet7.track import track  # noqa: E402


def main() -> None:
    t = time.perf_counter()
    track(months_of_buildings(2, 10, 0), TrackConfig())
    print(f"first call in this process (loads or compiles the numba overlay kernels): {time.perf_counter() - t:.2f} s")
    base = None
    for n in (1250, 2500, 5000):
        months = months_of_buildings(24, n, 0)
        t = time.perf_counter()
        rows = track(months, TrackConfig())
        dt = time.perf_counter() - t
        base = base or dt / n
        print(
            f"track 24 months x {n} buildings: {dt:.3f} s ({rows['id'].nunique()} tracks); "
            f"time per building vs n=1250: {dt / n / base:.2f}x" + ("   (target <= 1 s)" if n == 5000 else "")
        )
    months = months_of_pixel_footprints(24, 5000, 0)
    t = time.perf_counter()
    rows = track(months, TrackConfig())
    print(
        f"track 24 months x 5000 pixel-staircase footprints (polygonize output): {time.perf_counter() - t:.3f} s "
        f"({rows['id'].nunique()} tracks)"
    )


if __name__ == "__main__":
    main()
