"""Percentile scaling of 8-bit mosaics: the per-band table of ``bands.to_uint8`` against the float formula.

    python bench/bench_input_scaling.py [--data-root ROOT] [--upscale 3] [--mosaics 26]

Every mosaic of the data root (default: the real data beside the repository, else a synthetic
AOI built in a temporary folder) is read as training's in-memory load and predict read it: RGB on
the ``--upscale`` grid with the Lanczos kernel, then scaled from its 2nd-98th percentiles to uint8.
Both ways scale the same arrays, one after the other, in one run; the outputs must be equal. Prints
the seconds of each, the ratio, and the machine's load before and after (a busy machine says so).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from spacenet7.data.bands import InputSpec, _scaled, band_limits, to_uint8
from spacenet7.data.sn7 import scan
from spacenet7.io.raster import read_checked

REAL = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_ROOTS = [REAL / "sn7_real_sample", REAL / "sn7_real_timeseries"]


def _images(root: str | None) -> list[Path]:
    if root:
        return [rec.image for recs in scan(root).values() for rec in recs]
    roots = [r for r in REAL_ROOTS if r.is_dir()]
    if roots:
        return [rec.image for recs in scan(":".join(map(str, roots))).values() for rec in recs]
    from spacenet7 import synth
    from spacenet7.config import SynthConfig

    out = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    synth.run(SynthConfig(out_dir=str(out), n_aois=1, n_months=6, size=1024, style="planet"))
    return [rec.image for recs in scan(str(out)).values() for rec in recs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None, help="an SN7 layout (roots joined by ':'); default: ../shared/data's")
    ap.add_argument("--upscale", type=float, default=3.0)
    ap.add_argument("--mosaics", type=int, default=26, help="at most this many mosaics")
    args = ap.parse_args()
    spec = InputSpec(scaling="percentile", resampling="lanczos")
    images = _images(args.data_root)[: args.mosaics]
    load0 = os.getloadavg()[0]
    t_formula = t_table = 0.0
    pixels = 0
    for image in images:
        with rasterio.open(image) as ds:
            shape = (round(ds.height * args.upscale), round(ds.width * args.upscale))
            values = read_checked(ds, list(spec.rgb), out_shape=(3, *shape), resampling=spec.resampling.rasterio)
            limits = band_limits(ds, spec)
        assert values.dtype == np.uint8 and limits is not None
        start = time.perf_counter()
        by_formula = _scaled(values, limits)
        t_formula += time.perf_counter() - start
        start = time.perf_counter()
        by_table = to_uint8(values, limits)
        t_table += time.perf_counter() - start
        np.testing.assert_array_equal(by_table, by_formula)
        pixels += shape[0] * shape[1]
    load1 = os.getloadavg()[0]
    print(f"{len(images)} mosaics, {pixels / 1e6:.0f} M pixels on the {args.upscale:g}x grid, the same output both ways")
    print(f"float formula {t_formula:.2f} s | per-band table {t_table:.2f} s | {t_formula / t_table:.1f}x")
    busy = " (busy: the ratio is rough)" if max(load0, load1) > (os.cpu_count() or 1) else ""  # this run uses one core
    print(f"load average before / after: {load0:.2f} / {load1:.2f} on {os.cpu_count()} CPUs{busy}")


if __name__ == "__main__":
    main()
