"""Training windows drawn from whole mosaics, instead of pre-cut chips.

``spacenet7 chip layout=rasters`` writes one *target raster* per month: a single uint8 band on
the training grid (the source grid ``upscale`` times finer) whose bits hold the footprint,
boundary and contact targets and the ignore mask (:data:`spacenet7.io.artifacts.BITS`),
deflate-compressed and tiled.
The imagery itself is never copied: windows read it from the source mosaics and resample it on
the fly. The index lists, per month and split, the region of the training grid that split may use.

- :class:`RandomWindows` draws ``per_mosaic`` random windows from the region of every training
  mosaic each epoch: a random position, one of the 8 rotations/mirrors, optional scale jitter.
  A window never leaves its region, so the validation band is never sampled for training.
  ``max_per_epoch`` caps the epoch, so that a recipe's training time does not grow with the
  number of months and AOIs it is pointed at.
- :class:`GridWindows` is the fixed, deterministic validation grid over the validation regions
  (optionally an evenly spaced, still fixed, subset of it: ``max_windows``).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import pandas as pd
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset

from spacenet7.data.bands import InputSpec, band_limits, to_uint8
from spacenet7.data.dataset import IGNORE, loader
from spacenet7.io.artifacts import BITS, unpack_targets
from spacenet7.io.raster import iter_windows, read_checked

MAX_OPEN = 64  # mosaics a dataset keeps open at once when reading from disk (2 files each)
MAX_BUILDING_PIXELS = 4096  # building pixels kept per training region for on_buildings draws (32 KB)


@dataclass(frozen=True)
class Region:
    """A rectangle of one mosaic's training grid (rows ``r0:r1``, columns ``c0:c1``)."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return self.r1 - self.r0, self.c1 - self.c0


class MosaicReader:
    """Reads windows of one month on the training grid: RGB from the source mosaic, targets from its target raster.

    Args:
        image: the source mosaic (RGB in bands 1-3).
        target: the month's target raster (training grid).
        upscale: training grid / source grid (an integer, or 1).
        in_memory: hold the resampled RGB and the targets in memory (small data sets: fastest).
        spec: the mosaic's band layout and scaling (SN7's RGBA uint8 when ``None``).
    """

    def __init__(
        self, image: str | Path, target: str | Path, upscale: float, in_memory: bool = False, spec: InputSpec | None = None
    ) -> None:
        self.image, self.target, self.upscale = Path(image), Path(target), float(upscale)
        self.spec = spec or InputSpec()
        self._handles: dict[int, tuple[Any, Any]] = {}
        self._memory: tuple[np.ndarray, np.ndarray] | None = None
        if in_memory:
            with rasterio.open(self.target) as t:
                packed = read_checked(t, 1)
            src, _ = self._open()
            self._memory = (self._read_rgb(Window(0, 0, src.width, src.height), packed.shape), packed)
            self.close()  # everything is in memory: no file stays open

    def _open(self) -> tuple[Any, Any]:
        # one handle pair per process: GDAL handles must not cross a fork into DataLoader workers
        pid = os.getpid()
        if pid not in self._handles:
            self._handles = {pid: (rasterio.open(self.image), rasterio.open(self.target))}
        return self._handles[pid]

    def close(self) -> None:
        """Close this process's file handles."""
        for src, tgt in self._handles.values():
            src.close()
            tgt.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}

    def _read_rgb(self, src_win: Window, out_shape: tuple[int, int]) -> np.ndarray:
        src, _ = self._open()
        values = read_checked(
            src, list(self.spec.rgb), window=src_win, out_shape=(3, *out_shape), resampling=self.spec.resampling.rasterio
        )
        return to_uint8(values, band_limits(src, self.spec))

    def footprint_pixels(self, region: Region, most: int = MAX_BUILDING_PIXELS) -> np.ndarray:
        """(n, 2) rows and columns of building pixels inside ``region``, at most ``most`` of them (an even
        subsample), read from the target raster only."""
        if self._memory is not None:
            packed = self._memory[1][region.r0 : region.r1, region.c0 : region.c1]
        else:
            packed = read_checked(self._open()[1], 1, window=Window(region.c0, region.r0, *region.shape[::-1]))
        building, ignored = (packed >> BITS["footprint"]) & 1, (packed >> BITS["ignore"]) & 1
        found = np.argwhere((building == 1) & (ignored == 0))
        found = found[:: max(1, -(-len(found) // most))]
        return (found + (region.r0, region.c0)).astype(np.int32)

    def read(self, r: int, c: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """The window (r, c, h, w) of the training grid: ((3, h, w) uint8 RGB, (h, w) packed targets)."""
        if self._memory is not None:
            rgb, packed = self._memory
            return rgb[:, r : r + h, c : c + w], packed[r : r + h, c : c + w]
        src, tgt = self._open()
        packed = read_checked(tgt, 1, window=Window(c, r, w, h))
        u = self.upscale
        if u == 1:
            return self._read_rgb(Window(c, r, w, h), (h, w)), packed
        # read a source window with a halo (the kernel's reach: 1 pixel for bilinear) so the resampling
        # sees the same neighbours as the whole-mosaic resampling of `chip`, then crop the halo off
        k = self.spec.resampling.halo
        sr0, sc0 = max(0, math.floor(r / u) - k), max(0, math.floor(c / u) - k)
        sr1, sc1 = min(src.height, math.ceil((r + h) / u) + k), min(src.width, math.ceil((c + w) / u) + k)
        out = (int(round((sr1 - sr0) * u)), int(round((sc1 - sc0) * u)))
        rgb = self._read_rgb(Window(sc0, sr0, sc1 - sc0, sr1 - sr0), out)
        dr, dc = int(round(r - sr0 * u)), int(round(c - sc0 * u))
        return rgb[:, dr : dr + h, dc : dc + w], packed


def to_sample(rgb: np.ndarray, packed: np.ndarray, augment: Any = None) -> dict[str, torch.Tensor]:
    """(3, S, S) uint8 RGB + packed targets -> ``{"image", "target", "ignore"}`` tensors (ignored targets are -1)."""
    image = np.ascontiguousarray(np.moveaxis(rgb, 0, -1))
    if augment is not None:  # photometric only: geometry is handled by the sampler
        image = augment(image=image)["image"]
    targets, ignore = unpack_targets(np.ascontiguousarray(packed))
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0))).float().div_(255.0)
    target = torch.from_numpy(targets).float()
    ign = torch.from_numpy(ignore)
    target[:, ign] = IGNORE
    return {"image": x, "target": target, "ignore": ign}


def _regions(index: pd.DataFrame, split: str) -> list[tuple[int, Region]]:
    rows = index[index["split"] == split]
    return [(int(i), Region(int(r.r0), int(r.r1), int(r.c0), int(r.c1))) for i, r in rows.iterrows()]


class _WindowBase(Dataset):
    def __init__(
        self, root: str | Path, index: pd.DataFrame, split: str, size: int, in_memory: bool, spec: InputSpec | None = None
    ) -> None:
        self.root, self.size, self.index = Path(root), int(size), index.reset_index(drop=True)
        self.spec = spec
        self.regions = _regions(self.index, split)
        if not self.regions:
            raise ValueError(f"no '{split}' region in the window index")
        small = [i for i, reg in self.regions if min(reg.shape) < 1]
        if small:
            raise ValueError(f"empty region in rows {small}")
        self._readers: OrderedDict[int, MosaicReader] = OrderedDict()
        self.in_memory = in_memory

    def reader(self, row: int) -> MosaicReader:
        """The reader of index row ``row``; at most :data:`MAX_OPEN` mosaics stay open on disk (least recently used)."""
        if row in self._readers:
            self._readers.move_to_end(row)
            return self._readers[row]
        rec = self.index.iloc[row]
        self._readers[row] = MosaicReader(
            rec["image"], self.root / rec["target"], float(rec["upscale"]), self.in_memory, self.spec
        )
        if not self.in_memory and len(self._readers) > MAX_OPEN:
            self._readers.popitem(last=False)[1].close()
        return self._readers[row]


class RandomWindows(_WindowBase):
    """``per_mosaic`` random windows from the training region of every mosaic, per epoch.

    Each item draws its own position, one of the 8 rotations/mirrors (``d4``) and, with
    ``scale_jitter`` j > 0, a zoom in [1/(1+j), 1+j] (a window of ``size * zoom`` resized to
    ``size``: bilinear for the image, nearest for the targets). With ``on_buildings`` p > 0, a
    fraction p of the windows is drawn among those that hold a random building pixel of the region
    (a region without buildings gets uniform windows), so that sparse training areas spend their
    steps where the footprints are. With ``max_per_epoch`` below ``per_mosaic`` times the number
    of mosaics, an epoch has ``max_per_epoch`` windows, each from a mosaic drawn at random: an AOI
    first (every AOI equally likely), then one of its months (every month equally likely), so that a
    half-AOI sample of one month weighs as much as a whole AOI's 25 months; the same steps per epoch
    on one month or on 24 months of 60 AOIs.
    Randomness comes from torch's generator, which Lightning seeds (and re-seeds per DataLoader
    worker and epoch).

    Args:
        root: the folder of the window index (target paths are relative to it).
        index: the window index (``chips.json`` layout ``rasters``).
        size: output window size in training-grid pixels.
        per_mosaic: windows per mosaic per epoch.
        augment: a photometric albumentations transform (image only), or ``None``.
        d4: draw one of the 8 rotations/mirrors per window.
        scale_jitter: relative zoom range (0 = off).
        in_memory: hold each mosaic in memory once read.
        spec: the mosaics' band layout and scaling (``chips.json``'s ``input``).
        on_buildings: the fraction of windows that hold a building pixel (0 = uniform windows).
        max_per_epoch: at most this many windows per epoch, over all mosaics (``None`` = no cap).
    """

    def __init__(
        self,
        root: str | Path,
        index: pd.DataFrame,
        size: int,
        per_mosaic: int,
        augment: Any = None,
        d4: bool = True,
        scale_jitter: float = 0.0,
        in_memory: bool = False,
        spec: InputSpec | None = None,
        on_buildings: float = 0.0,
        max_per_epoch: int | None = None,
    ) -> None:
        super().__init__(root, index, "train", size, in_memory, spec)
        self.per_mosaic, self.augment, self.d4, self.scale_jitter = int(per_mosaic), augment, d4, float(scale_jitter)
        self.on_buildings = float(on_buildings)
        total = self.per_mosaic * len(self.regions)
        self.length = total if max_per_epoch is None else min(total, int(max_per_epoch))
        self.capped = self.length < total  # then each item draws its mosaic
        aois = self.index.loc[[row for row, _ in self.regions], "aoi"].to_numpy() if "aoi" in self.index else None
        # drawing weights of the regions: each AOI the same share, split evenly over its months
        if aois is None:
            self.weights = np.full(len(self.regions), 1 / len(self.regions))
        else:
            _, inverse, counts = np.unique(aois, return_inverse=True, return_counts=True)
            self.weights = 1.0 / (counts[inverse] * len(counts))
        self._buildings: dict[int, np.ndarray] = {}  # index row -> building pixels of its region (read on first use)

    def building_pixels(self, row: int, reg: Region) -> np.ndarray:
        """(n, 2) building pixels of index row ``row``'s training region (cached)."""
        if row not in self._buildings:
            self._buildings[row] = self.reader(row).footprint_pixels(reg)
        return self._buildings[row]

    def __len__(self) -> int:
        return self.length

    def draw(self, i: int, rng: np.random.Generator) -> tuple[int, Window, float, int, bool]:
        """(row of the index, window read, zoom, quarter turns, mirror) of item ``i``."""
        row, reg = self.regions[int(rng.choice(len(self.regions), p=self.weights)) if self.capped else i // self.per_mosaic]
        zoom = 1.0
        if self.scale_jitter > 0:
            zoom = float(np.exp(rng.uniform(-np.log1p(self.scale_jitter), np.log1p(self.scale_jitter))))
        read = max(1, int(round(self.size * zoom)))
        h, w = min(read, reg.shape[0]), min(read, reg.shape[1])
        r = reg.r0 + int(rng.integers(0, reg.shape[0] - h + 1))
        c = reg.c0 + int(rng.integers(0, reg.shape[1] - w + 1))
        if self.on_buildings > 0 and rng.random() < self.on_buildings:
            pixels = self.building_pixels(row, reg)
            if len(pixels):  # a window holding this pixel, anywhere in it, inside the region
                pr, pc = (int(v) for v in pixels[rng.integers(len(pixels))])
                r = int(rng.integers(max(reg.r0, pr - h + 1), min(pr, reg.r1 - h) + 1))
                c = int(rng.integers(max(reg.c0, pc - w + 1), min(pc, reg.c1 - w) + 1))
        k, mirror = (int(rng.integers(4)), bool(rng.integers(2))) if self.d4 else (0, False)
        return row, Window(c, r, w, h), self.size / read, k, mirror

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        row, win, zoom, k, mirror = self.draw(i, rng)
        rgb, packed = self.reader(row).read(int(win.row_off), int(win.col_off), int(win.height), int(win.width))
        if zoom != 1:
            rgb, packed = _zoom(rgb, packed, zoom)
        rgb, packed = _pad(rgb, packed, self.size)
        if mirror:
            rgb, packed = rgb[:, :, ::-1], packed[:, ::-1]
        if k:
            rgb, packed = np.rot90(rgb, k, (1, 2)), np.rot90(packed, k)
        return to_sample(rgb, packed, self.augment)


def _zoom(rgb: np.ndarray, packed: np.ndarray, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize a window by ``zoom``: bilinear for the image, nearest for the packed targets.

    Both sample at pixel centres. (OpenCV's ``INTER_NEAREST`` samples ``floor(x / zoom)`` instead, about
    half a pixel behind ``INTER_LINEAR``: the targets of every zoomed window lagged its image.)
    """
    h, w = packed.shape
    size = (max(1, int(round(w * zoom))), max(1, int(round(h * zoom))))  # cv2 wants (width, height)
    img = cv2.resize(np.ascontiguousarray(np.moveaxis(rgb, 0, -1)), size, interpolation=cv2.INTER_LINEAR)
    tgt = cv2.resize(np.ascontiguousarray(packed), size, interpolation=cv2.INTER_NEAREST_EXACT)
    return np.moveaxis(img.reshape(size[1], size[0], -1), -1, 0), tgt


def _pad(rgb: np.ndarray, packed: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop or pad a window to ``size`` x ``size``; padding is ignored in the loss and the metrics."""
    h, w = packed.shape
    if (h, w) == (size, size):
        return rgb, packed
    pad = ((0, max(0, size - h)), (0, max(0, size - w)))
    ignore = np.uint8(1 << BITS["ignore"])
    return (np.pad(rgb, ((0, 0), *pad))[:, :size, :size], np.pad(packed, pad, constant_values=ignore)[:size, :size])


class GridWindows(_WindowBase):
    """A fixed grid of ``size`` windows over every validation region (the last one flush to the region's edge).

    With ``max_windows`` below the grid's size, an evenly spaced subset of the grid (every k-th
    window, in month-then-position order), the same at every validation: the validation cost of a
    recipe then does not grow with the months it is pointed at.
    """

    def __init__(
        self,
        root: str | Path,
        index: pd.DataFrame,
        size: int,
        in_memory: bool = False,
        spec: InputSpec | None = None,
        max_windows: int | None = None,
    ) -> None:
        super().__init__(root, index, "val", size, in_memory, spec)
        self.items: list[tuple[int, int, int, int, int]] = []
        for row, reg in self.regions:
            for w in iter_windows(*reg.shape, self.size, self.size):
                self.items.append((row, reg.r0 + int(w.row_off), reg.c0 + int(w.col_off), int(w.height), int(w.width)))
        if max_windows is not None and len(self.items) > max_windows:
            keep = np.linspace(0, len(self.items) - 1, int(max_windows)).round().astype(int)
            self.items = [self.items[k] for k in keep]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row, r, c, h, w = self.items[i]
        rgb, packed = self.reader(row).read(r, c, h, w)
        return to_sample(*_pad(rgb, packed, self.size))


class WindowDataModule(L.LightningDataModule):
    """Random training windows and the fixed validation grid over a ``layout=rasters`` index.

    Args:
        root: the chip folder (index and target rasters).
        index: the window index.
        size: window size on the training grid.
        per_mosaic: training windows per mosaic per epoch.
        batch_size: batch size.
        num_workers: DataLoader workers.
        augment: photometric augmentation (image only).
        d4: random rotations/mirrors.
        scale_jitter: relative zoom range (0 = off).
        seed: seeds the loaders' generators.
        in_memory: hold each mosaic in memory.
        spec: the mosaics' band layout and scaling.
        on_buildings: the fraction of training windows that hold a building pixel.
        max_per_epoch: at most this many training windows per epoch (``None`` = ``per_mosaic`` each).
        max_val_windows: at most this many validation windows, an evenly spaced subset of the grid.
    """

    def __init__(
        self,
        root: str | Path,
        index: pd.DataFrame,
        size: int,
        per_mosaic: int,
        batch_size: int,
        num_workers: int = 0,
        augment: Any = None,
        d4: bool = True,
        scale_jitter: float = 0.0,
        seed: int = 0,
        in_memory: bool = False,
        spec: InputSpec | None = None,
        on_buildings: float = 0.0,
        max_per_epoch: int | None = None,
        max_val_windows: int | None = None,
    ) -> None:
        super().__init__()
        self.train_set = RandomWindows(
            root, index, size, per_mosaic, augment, d4, scale_jitter, in_memory, spec, on_buildings, max_per_epoch
        )
        self.val_set = GridWindows(root, index, size, in_memory, spec, max_val_windows)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def _loader(self, ds: RandomWindows | GridWindows, train: bool) -> DataLoader:
        return loader(ds, self.batch_size, self.num_workers, self.seed, train)

    def train_dataloader(self) -> DataLoader:
        """Random windows, reshuffled every epoch."""
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        """The fixed validation grid."""
        return self._loader(self.val_set, False)
