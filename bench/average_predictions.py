"""Average the probability rasters of several runs (an ensemble of networks), for vectorize to cut.

    python bench/average_predictions.py OUT_RUN RUN [RUN ...]

Each RUN is a pipeline run folder whose ``predictions/`` holds the same AOIs and months on the same grid
(runs of one recipe that differ in seed or in a knob). Writes OUT_RUN/predictions/<AOI>/<month>.tif, each the
per-pixel mean of the runs' probabilities (a pixel masked in any run stays masked), with the completion record
that vectorize requires; then the rest of the chain scores the ensemble:

    python bench/average_predictions.py runs/ens3 runs/old240 runs/nojitter240 runs/noaug240
    spacenet7 pipeline recipe=real run_dir=runs/ens3 'stages=[vectorize,export,evaluate]'

The stored probabilities are uint8 (p * 254), so the mean is of values already rounded to 1/254.
What a 2-, 3- and 4-network ensemble of the real recipe scored: docs/real-data.md, "Several networks averaged".
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio

from spacenet7.data.targets import CHANNELS
from spacenet7.errors import SN7DataError
from spacenet7.io.atomic import atomic_path
from spacenet7.io.probability import (
    completed_rasters,
    decode,
    describe,
    encode,
    grid_tags,
    mark_complete,
    offset_tag,
    profile,
    unmark_complete,
)
from spacenet7.io.raster import open_raster


def average_aoi(aoi_dirs: list[Path], out_dir: Path) -> int:
    """Write the mean of the AOI folders' finished predictions into ``out_dir``; the number of months."""
    months = [completed_rasters(d) for d in aoi_dirs]
    names = [p.name for p in months[0]]
    for d, files in zip(aoi_dirs[1:], months[1:]):
        if [p.name for p in files] != names:
            raise SN7DataError(d, f"holds other months than {aoi_dirs[0]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    unmark_complete(out_dir)  # an earlier average's record goes first: vectorize never mixes two sets of months
    written = []
    for name in names:
        probs, valids, grids = [], [], []
        for d in aoi_dirs:
            with open_raster(d / name, bands=len(CHANNELS)) as ds:
                prob, valid = decode(ds.read())
                grids.append((ds.crs, ds.transform, ds.shape, grid_tags(ds), offset_tag(ds)))
            if grids[-1] != grids[0]:
                raise SN7DataError(d / name, f"lies on another grid than {aoi_dirs[0] / name}")
            probs.append(prob)
            valids.append(valid)
        crs, transform, (height, width), (upscale, grid), offset = grids[0]
        with atomic_path(out_dir / name) as tmp, rasterio.open(tmp, "w", **profile(crs, transform, width, height)) as dst:
            dst.write(encode(np.mean(probs, axis=0), np.logical_and.reduce(valids)))
            describe(dst, upscale, grid, offset)
        written.append(out_dir / name)
    mark_complete(out_dir, written)
    return len(written)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_run", type=Path, help="the ensemble's run folder (its predictions/ is written)")
    ap.add_argument("runs", type=Path, nargs="+", help="run folders with predictions/ of the same AOIs and months")
    args = ap.parse_args(argv)
    if len(args.runs) < 2:
        ap.error("give at least two runs to average")
    try:
        aois = sorted(p.name for p in (args.runs[0] / "predictions").iterdir() if p.is_dir())
        if not aois:
            raise SN7DataError(args.runs[0] / "predictions", "holds no AOI folder")
        for aoi in aois:
            n = average_aoi([r / "predictions" / aoi for r in args.runs], args.out_run / "predictions" / aoi)
            print(f"{aoi}: {n} months, the mean of {len(args.runs)} runs")
    except (SN7DataError, OSError) as exc:
        print(f"average_predictions: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
