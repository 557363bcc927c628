"""Sim-to-real transfer: a model trained on synthetic data only, scored on the whole real SN7 sample.

    python bench/bench_transfer.py                      # trains the demo recipe on synthetic data first
    python bench/bench_transfer.py --checkpoint CKPT    # scores an existing synthetic-only checkpoint
    python bench/bench_transfer.py --style planet        # the planet-style synthetic data

Prints, side by side for the real sample (../shared/data/sn7_real_sample) and the synthetic
training data, the image statistics that separate them (per-band mean and std, texture as the
mean gradient magnitude, sharpness as the ratio of fine to coarse detail, roof/ground contrast,
building size and density), then the transfer score: building F1 at IoU >= 0.5 and pixel IoU
on the whole real month (no region: every labelled building counts).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

for key, value in (("HF_HUB_OFFLINE", "1"), ("NO_ALBUMENTATIONS_UPDATE", "1"), ("WANDB_MODE", "offline")):
    os.environ.setdefault(key, value)

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from spacenet7 import evaluate, export, pipeline, predict, vectorize  # noqa: E402
from spacenet7.compose import compose  # noqa: E402
from spacenet7.data.sn7 import instance_raster, read_image, read_labels, scan  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "sn7_real_sample"


def image_stats(root: Path, max_months: int = 6) -> dict[str, float]:
    """Mean image statistics over up to ``max_months`` labelled months of a data set."""
    rows = []
    for recs in scan(root).values():
        for rec in recs[:max_months]:
            img = read_image(rec)
            inst = instance_raster(read_labels(rec, img.crs), img.shape, img.transform)
            rgb = img.rgb.astype(np.float32)
            gray = rgb.mean(0)
            ok = img.valid
            fine = np.abs(gray - ndimage.gaussian_filter(gray, 1))[ok].mean()
            coarse = np.abs(ndimage.gaussian_filter(gray, 1) - ndimage.gaussian_filter(gray, 4))[ok].mean()
            grad = np.hypot(*np.gradient(gray))[ok].mean()
            roof = inst > 0
            ground = ~ndimage.binary_dilation(roof, iterations=3) & ok
            ids, counts = np.unique(inst[inst > 0], return_counts=True)
            rows.append(
                {
                    **{f"{c}_mean": float(rgb[i][ok].mean()) for i, c in enumerate("RGB")},
                    **{f"{c}_std": float(rgb[i][ok].std()) for i, c in enumerate("RGB")},
                    "saturation": float((rgb.max(0) - rgb.min(0))[ok].mean()),
                    "texture_grad": float(grad),
                    "fine/coarse": float(fine / max(coarse, 1e-6)),
                    "roof-ground contrast": float(abs(gray[roof & ok].mean() - gray[ground].mean()) / gray[ok].std())
                    if roof.any()
                    else 0.0,
                    "building px (median)": float(np.median(counts)) if len(counts) else 0.0,
                    "buildings per 100^2 px": float(len(ids) / ok.sum() * 1e4),
                    "building cover": float(roof[ok].mean()),
                }
            )
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def score(checkpoint: Path, out: Path) -> dict:
    """Predict, vectorize, export and evaluate the whole real sample with one checkpoint."""
    predict.run(
        compose(
            "predict",
            [
                f"checkpoint={checkpoint}",
                "dataset=real_sample",
                f"data_root={REAL}",
                f"out_dir={out / 'pred'}",
                "grid=upscaled",
                "progress=false",
                "fusion=false",
            ],
        )
    )
    vectorize.run(compose("vectorize", [f"pred_dir={out / 'pred'}", f"out_dir={out / 'vec'}"]))
    export.run(
        compose(
            "export",
            [f"vec_dir={out / 'vec'}", f"out_dir={out / 'fp'}", f"submission={out / 'sub.csv'}", "gpkg=false", "geojson=false"],
        )
    )
    evaluate.run(compose("evaluate", [f"data_root={REAL}", f"submission={out / 'sub.csv'}", f"out={out / 'metrics.json'}"]))
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, help="a synthetic-only checkpoint (default: train the demo recipe)")
    ap.add_argument("--run-dir", type=Path, default=Path("runs/transfer"))
    ap.add_argument("--style", default="demo", help="synth style of the training data (demo | planet)")
    args = ap.parse_args()
    if not (REAL / "train").is_dir():
        raise SystemExit(f"bench_transfer: the real sample is not at {REAL} (it lives in ../shared)")
    run = args.run_dir
    data = run / "data"
    ckpt = args.checkpoint
    if ckpt is None:
        cfg = compose(
            "pipeline",
            [f"run_dir={run}", f"data_root={data}", "stages=[synth,chip,train]", "n_test_aois=1", f"synth.style={args.style}"],
        )
        pipeline.run(cfg)
        ckpt = run / "train" / "checkpoints" / "best.ckpt"
    elif not data.is_dir():
        pipeline.run(compose("pipeline", [f"run_dir={run}", f"data_root={data}", "stages=[synth]", f"synth.style={args.style}"]))
    real, synthetic = image_stats(REAL), image_stats(data)
    print(f"\n{'statistic':<26} {'real sample':>12} {'synthetic':>12} {'synthetic/real':>15}")
    for k in real:
        print(f"{k:<26} {real[k]:12.3f} {synthetic[k]:12.3f} {synthetic[k] / real[k] if real[k] else float('nan'):15.2f}")
    m = score(ckpt, run / "transfer")
    print(
        f"\ntransfer of {ckpt} (synthetic only) to the whole real sample: building F1@0.5 {m['f1']:.3f} "
        f"(P {m['precision']:.3f} R {m['recall']:.3f}), F1@0.25 {m['f1_iou25']:.3f}, pixel IoU {m['pixel_iou']:.3f}"
    )


if __name__ == "__main__":
    main()
