"""Disk and loader cost of training windows (chip layout=rasters) against 7-band chips, at 3x.

    python bench/bench_windows.py [--size 1024] [--aois 2] [--months 3]

Builds a synthetic tree in the SN7 shape (1024^2 mosaics by default), prepares it both ways at
the full-data recipe's 3x upscale, and measures side by side in one run:
- prepared bytes / source-imagery bytes, for target rasters and for 512^2 chips. The source is
  counted as written (synthetic mosaics are deflate-compressed) and as SN7 ships it (uncompressed
  4-band uint8, H x W x 4 bytes); the projection to the full SN7 training set (60 AOIs x 24 months
  of 1024^2) uses the per-mosaic figures;
- training windows per second on one core (torch and GDAL single-threaded) at 512^2 output, read
  from disk (no in-memory cache), with and without the photometric augmentation, against
  reading the same number of 512^2 chips.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("GDAL_NUM_THREADS", "1")

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from spacenet7 import chip, synth  # noqa: E402
from spacenet7.compose import compose  # noqa: E402
from spacenet7.config import SynthConfig  # noqa: E402
from spacenet7.data.dataset import ChipDataset  # noqa: E402
from spacenet7.data.windows import RandomWindows  # noqa: E402
from spacenet7.io.artifacts import load_index  # noqa: E402


def _bytes(folder: Path, pattern: str = "*.tif") -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern))


def _rate(ds, n: int) -> float:
    ds[0]  # open files once
    t = time.perf_counter()
    for i in range(n):
        ds[i % len(ds)]
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--aois", type=int, default=2)
    ap.add_argument("--months", type=int, default=3)
    ap.add_argument("--windows", type=int, default=150)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth.run(SynthConfig(out_dir=str(tmp / "data"), n_aois=args.aois, n_months=args.months, size=args.size, seed=0))
        n_mosaics = args.aois * args.months
        src_written = _bytes(tmp / "data" / "train", "images/*.tif")
        src_raw = n_mosaics * args.size * args.size * 4
        base = [f"data_root={tmp / 'data'}", "upscale=3", "progress=false", "split=spatial"]
        t0 = time.perf_counter()
        chip.run(compose("chip", base + [f"out_dir={tmp / 'rasters'}", "layout=rasters"]))
        t_rasters = time.perf_counter() - t0
        t0 = time.perf_counter()
        chip.run(compose("chip", base + [f"out_dir={tmp / 'chips'}", "layout=chips", "chip_size=512", "overlap=0"]))
        t_chips = time.perf_counter() - t0
        rasters, chips = _bytes(tmp / "rasters"), _bytes(tmp / "chips")
        print(
            f"{n_mosaics} mosaics of {args.size}^2 at 3x; source imagery {src_written / 2**20:.1f} MiB as written, "
            f"{src_raw / 2**20:.1f} MiB uncompressed (as SN7 ships it)"
        )
        for name, size, secs in (
            ("target rasters (layout=rasters)", rasters, t_rasters),
            ("7-band 512^2 chips (layout=chips)", chips, t_chips),
        ):
            print(
                f"  {name:<34} {size / 2**20:8.1f} MiB = {size / src_written:5.2f}x written source, "
                f"{size / src_raw:5.2f}x uncompressed; {size / n_mosaics / 2**20:.2f} MiB and {secs / n_mosaics:.1f} s per mosaic"
            )
        full = 60 * 24
        print(
            f"  full SN7 ({full} mosaics of 1024^2): source ~{full * 1024 * 1024 * 4 / 2**30:.1f} GiB uncompressed; "
            f"rasters ~{rasters / n_mosaics * full / 2**30 * (1024 / args.size) ** 2:.2f} GiB, "
            f"chips ~{chips / n_mosaics * full / 2**30 * (1024 / args.size) ** 2:.1f} GiB (projected from this run)"
        )

        idx_r, _ = load_index(tmp / "rasters")
        idx_c, _ = load_index(tmp / "chips")
        augment = instantiate(compose("train", ["augment=planet", "run_dir=/tmp/unused"]).augment, _convert_="all")
        plain = RandomWindows(tmp / "rasters", idx_r, size=512, per_mosaic=64)
        aug = RandomWindows(tmp / "rasters", idx_r, size=512, per_mosaic=64, augment=augment, scale_jitter=0.15)
        chips_ds = ChipDataset(tmp / "chips", idx_c[idx_c["split"] == "train"])
        rates = {"windows (D4)": [], "windows (D4 + scale jitter + planet augment)": [], "512^2 chips, read as is": []}
        for _ in range(2):  # interleaved rounds
            rates["windows (D4)"].append(_rate(plain, args.windows))
            rates["windows (D4 + scale jitter + planet augment)"].append(_rate(aug, args.windows))
            rates["512^2 chips, read as is"].append(_rate(chips_ds, args.windows))
        ref = max(rates["512^2 chips, read as is"])
        print("loader, one core, 512^2 training windows at 3x (best of 2 rounds):")
        for name, r in rates.items():
            print(f"  {name:<46} {max(r):6.1f} windows/s ({max(r) / ref:.2f}x reading chips)")


if __name__ == "__main__":
    main()
