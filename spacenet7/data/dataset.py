"""Torch dataset and Lightning data module over the chip index."""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import pandas as pd
import rasterio
import torch
from torch.utils.data import DataLoader, Dataset

from spacenet7.data.targets import CHANNELS, CHIP_IGNORE, CHIP_RGB, CHIP_TARGETS

IGNORE = -1.0


class ChipDataset(Dataset):
    """Chips of one split -> ``{"image": (3,H,W) float, "target": (3,H,W) float, "ignore": (H,W) bool}``.

    Ignored pixels (alpha 0 or UDM) carry ``-1`` in every target channel. Augmentations (an
    albumentations pipeline) see the image and all masks together, so geometry stays aligned.
    With ``crop``, each item is a random ``crop`` x ``crop`` window of its chip (chips no larger
    are used whole): fewer pixels per step, so more steps in the same time on a CPU.
    """

    def __init__(
        self, chip_dir: str | Path, index: pd.DataFrame, augment: Any = None, cache: bool = False, crop: int | None = None
    ) -> None:
        self.chip_dir = Path(chip_dir)
        self.paths = index["path"].tolist()
        self.augment = augment
        self.crop = crop
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def _read(self, i: int) -> np.ndarray:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        with rasterio.open(self.chip_dir / self.paths[i]) as ds:
            arr = ds.read()
        if self._cache is not None:
            self._cache[i] = arr
        return arr

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        arr = self._read(i)
        if self.crop and max(arr.shape[1:]) > self.crop:  # a random crop x crop window (torch's seeded RNG)
            r = int(torch.randint(0, max(1, arr.shape[1] - self.crop + 1), (1,)))
            c = int(torch.randint(0, max(1, arr.shape[2] - self.crop + 1), (1,)))
            arr = arr[:, r : r + self.crop, c : c + self.crop]
        image = np.moveaxis(arr[CHIP_RGB], 0, -1)
        masks = np.moveaxis(arr[CHIP_TARGETS.start :], 0, -1)  # targets then ignore: augmented together
        if self.augment is not None:
            res = self.augment(image=image, mask=masks)
            image, masks = res["image"], res["mask"]
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0))).float() / 255.0
        m = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(masks), -1, 0)))
        ignore = m[CHIP_IGNORE - CHIP_TARGETS.start] > 0
        target = m[: len(CHANNELS)].float()
        target[:, ignore] = IGNORE
        return {"image": x, "target": target, "ignore": ignore}


def loader(ds: Dataset, batch_size: int, num_workers: int, seed: int, train: bool) -> DataLoader:
    """The training or validation loader of a sized data set (chips or windows).

    Args:
        ds: the data set (with ``__len__``).
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 = in the main process; else kept between epochs).
        seed: seeds the shuffling generator.
        train: shuffle and drop the last partial batch (when there is more than one batch).

    Returns:
        The DataLoader.
    """
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train,
        num_workers=num_workers,
        drop_last=train and len(cast(Sized, ds)) > batch_size,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )


class ChipDataModule(L.LightningDataModule):
    """Train/val loaders from the chip index (``split`` column)."""

    def __init__(
        self,
        chip_dir: str | Path,
        index: pd.DataFrame,
        batch_size: int,
        num_workers: int = 0,
        augment: Any = None,
        seed: int = 0,
        cache: bool = False,
        crop: int | None = None,
    ) -> None:
        super().__init__()
        self.crop = crop
        self.chip_dir, self.index = Path(chip_dir), index
        self.batch_size, self.num_workers, self.augment, self.seed = batch_size, num_workers, augment, seed
        self.cache = cache
        self._datasets: dict[str, ChipDataset] = {}

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self._datasets:
            self._datasets[split] = ChipDataset(
                self.chip_dir,
                self.index[self.index["split"] == split],
                self.augment if train else None,
                self.cache,
                self.crop if train else None,
            )
        return loader(self._datasets[split], self.batch_size, self.num_workers, self.seed, train)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training chips (augmented)."""
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        """Validation chips in index order."""
        return self._loader("val", False)
