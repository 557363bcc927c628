"""Peak RSS of predicting a large mosaic (default 10,000 x 10,000) with block-wise windowed I/O.

    python bench/bench_predict_memory.py [size]

Writes a synthetic 4-band EPSG:3857 mosaic in the SN7 layout, a randomly initialised unet_small
checkpoint, runs `predict` in a child process and prints its peak RSS next to the size of the
mosaic held in memory (the naive approach), so the ratio shows the bound.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine


def make_inputs(d: Path, size: int) -> tuple[Path, Path]:
    import torch

    from spacenet7.compose import compose
    from spacenet7.models.task import SegmentationTask

    aoi = "L15-0001E-0001N_1_1_13"
    img = d / "train" / aoi / "images" / f"global_monthly_2020_01_mosaic_{aoi}.tif"
    img.parent.mkdir(parents=True)
    prof = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=4,
        dtype="uint8",
        crs="EPSG:3857",
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        transform=Affine(4.777, 0, 0, 0, -4.777, 0),
    )
    rng = np.random.default_rng(0)
    block = rng.integers(0, 255, (4, 512, 512), dtype=np.uint8)
    block[3] = 255
    with rasterio.open(img, "w", **prof) as ds:
        for _, win in ds.block_windows(1):
            ds.write(block[:, : win.height, : win.width], window=win)
    cfg = compose("train", ["experiment=demo_cpu", "run_dir=/tmp/x"])
    task = SegmentationTask(cfg.model, cfg.loss, cfg.optimizer, chip_meta={"upscale": 1.0, "source_bands": 4})
    ckpt = d / "model.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, ckpt)
    return d, ckpt


def peak_rss_mb(size: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root, ckpt = make_inputs(Path(tmp), size)
        cmd = [
            sys.executable,
            "-c",
            "import resource, sys; from spacenet7.cli import main; "
            "sys.argv = sys.argv[1:]; "
            "import atexit; atexit.register(lambda: print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))"
            "; main()",
            "spacenet7",
            "predict",
            f"checkpoint={ckpt}",
            f"data_root={root}",
            f"out_dir={root / 'pred'}",
            "fusion=false",
            "progress=false",
            f"hydra.run.dir={root / 'hydra'}",
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return int(out.split("PEAK_RSS_KB")[-1].split()[0]) / 1024


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    small = peak_rss_mb(1000)
    big = peak_rss_mb(size)
    naive_mb = size * size * (4 + 3 * 4 + 3 * 4) / 2**20  # uint8 mosaic + float32 input + float32 probabilities
    print(
        f"predict peak RSS (default tile/overlap/block, GDAL cache 256 MB): 1000x1000 {small:.0f} MB, "
        f"{size}x{size} {big:.0f} MB (target <= 2048 MB); ratio {big / small:.2f}x for {(size / 1000) ** 2:.0f}x the pixels; "
        f"holding the mosaic in memory would need >= {naive_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
