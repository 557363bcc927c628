"""Small models and GeoTIFFs: random-weight checkpoints and mosaics built in a few seconds (no training), and
:func:`train_briefly`, the one tiny trainer (conftest.py's session-scoped ``trained_checkpoint`` calls it once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

ARCH = {
    "_target_": "segmentation_models_pytorch.create_model",
    "arch": "Unet",
    "encoder_name": "timm-regnetx_004",
    "encoder_weights": None,
    "encoder_depth": 4,
    "decoder_channels": [64, 32, 16, 8],
    "decoder_use_norm": "batchnorm",
    "in_channels": 3,
    "classes": 3,
}
INPUT = {"count": 4, "rgb": [1, 2, 3], "alpha": 4, "scaling": "percentile"}


def random_checkpoint(path: Path, upscale: float = 2.0, seed: int = 0) -> Path:
    """A spacenet7 checkpoint of the real recipe's architecture with random weights (Lightning's layout)."""
    import torch

    from spacenet7.models.task import build_net

    torch.manual_seed(seed)
    net = build_net(ARCH)
    with torch.no_grad():  # the footprint channel's bias up, so that random weights still find shapes
        net.segmentation_head[0].bias[0] = 0.5
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save(
        {"state_dict": state, "hyper_parameters": {"model": ARCH, "chip_meta": {"upscale": upscale, "input": INPUT}}}, path
    )
    return path


def train_briefly(data_root: Path, out: Path, *, upscale: float = 1.0, epochs: int = 4, batches: int = 12) -> Path:
    """The demo network (``experiment=demo_cpu``) trained for a few steps on a synthetic data set: its best checkpoint.

    Chips of every AOI (128 px on the ``upscale``d grid; a third of the AOIs validate), ``epochs`` of
    ``batches`` steps: enough that it finds real footprints, so predictions and exports are not empty.
    """
    from spacenet7 import chip, train
    from spacenet7.compose import compose
    from spacenet7.config import ChipConfig

    chip.run(
        ChipConfig(
            data_root=str(data_root),
            out_dir=str(out / "chips"),
            chip_size=128,
            overlap=0,
            progress=False,
            val_frac=0.34,
            upscale=upscale,
        )
    )
    cfg = compose(
        "train",
        [
            "experiment=demo_cpu",
            f"chip_dir={out / 'chips'}",
            f"run_dir={out / 'train'}",
            "logger.wandb=false",
            "trainer.enable_progress_bar=false",
            f"max_epochs={epochs}",
            f"trainer.limit_train_batches={batches}",
        ],
    )
    return train.run(cfg)["best"]


def geotiff(path: Path, bands: int = 4, size: int = 96, seed: int = 0, date: str | None = None) -> Path:
    """A georeferenced uint8 mosaic (UTM) with three bright roofs; ``bands=4`` adds an opaque alpha band."""
    rng = np.random.default_rng(seed)
    img = np.full((bands, size, size), 60, np.uint8)
    img[:3] += rng.integers(0, 20, (3, size, size)).astype(np.uint8)
    for r, c in [(10, 10), (40, 50), (70, 20)]:
        img[:3, r : r + 12, c : c + 12] = 220
    if bands == 4:
        img[3] = 255
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": "uint8",
        "crs": "EPSG:32618",
        "transform": from_origin(500000, 4000000, 4.77, 4.77),
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(img)
        if date:
            ds.update_tags(TIFFTAG_DATETIME=date)
    return path
