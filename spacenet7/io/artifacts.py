"""The files one stage writes and another reads: their readers and writers, in one place.

- The chip index of a chip folder (``index.parquet`` or ``index.csv``, and ``chips.json``, the
  settings): written by ``chip``, read by ``train`` and ``tune``.
- The target rasters' bit codec (:data:`BITS`, :func:`pack_targets`, :func:`unpack_targets`):
  ``chip layout=rasters`` writes one uint8 band per month, training windows read it
  (:mod:`spacenet7.data.windows`).
- The vectorize output of an AOI (``<AOI>.parquet``, GeoParquet, and ``<AOI>.json``, its month
  list): written by ``vectorize``, read by ``export``, ``serve``, the notebook helpers and the API.

The probability rasters that ``predict`` writes and ``vectorize`` reads have their own module,
:mod:`spacenet7.io.probability`; where each file lies in a run folder, :mod:`spacenet7.io.layout`.
Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from spacenet7.data.targets import CHANNELS
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.atomic import atomic_path

# ---------------------------------------------------------------------------------------------
# the chip index

CHIP_META = "chips.json"  # a chip folder's settings (removed while chip runs: train trusts no half-written folder)


def index_path(chip_dir: str | Path) -> Path:
    """The chip index of a chip folder (parquet preferred, csv accepted)."""
    chip_dir = Path(chip_dir)
    for name in ("index.parquet", "index.csv"):
        if (chip_dir / name).exists():
            return chip_dir / name
    return chip_dir / "index.parquet"


def chip_meta_path(chip_dir: str | Path) -> Path:
    """The chip folder's metadata file (:data:`CHIP_META`)."""
    return Path(chip_dir) / CHIP_META


def load_index(chip_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read the chip index and the chip metadata (``chips.json``), with clear errors."""
    path = index_path(chip_dir)
    if not path.exists():
        raise SN7Error(f"{path}: chip index not found (run `spacenet7 chip` first, or fix chip_dir=)")
    try:
        index = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pyarrow / pandas raise many types for a truncated or foreign file
        raise SN7DataError(
            path, f"unreadable chip index, truncated? re-run `spacenet7 chip` ({str(exc).splitlines()[0][:120]})"
        ) from None
    meta_path = chip_meta_path(chip_dir)
    if not meta_path.exists():
        raise SN7DataError(meta_path, "chip metadata not found; re-run `spacenet7 chip`")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise SN7DataError(meta_path, f"not valid JSON ({exc}); re-run `spacenet7 chip`") from None
    return index, meta


def write_index(chip_dir: str | Path, index: pd.DataFrame, meta: dict, fmt: str) -> tuple[Path, Path]:
    """Write the chip index (``fmt``: ``parquet`` or ``csv``), then ``chips.json`` last; returns both paths."""
    idx_path = Path(chip_dir) / f"index.{fmt}"
    with atomic_path(idx_path) as tmp:
        index.to_parquet(tmp, index=False) if fmt == "parquet" else index.to_csv(tmp, index=False)
    meta_path = chip_meta_path(chip_dir)
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return idx_path, meta_path


# ---------------------------------------------------------------------------------------------
# target rasters: one uint8 band of bits per month

BITS: dict[str, int] = {**{name: i for i, name in enumerate(CHANNELS)}, "ignore": len(CHANNELS)}
"""The bit of each target channel in a target raster, then the ignore bit."""


def pack_targets(targets: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """(3, H, W) 0/1 targets and an (H, W) ignore mask -> one (H, W) uint8 of bits (see :data:`BITS`)."""
    packed = np.zeros(ignore.shape, np.uint8)
    for c in range(targets.shape[0]):
        packed |= (targets[c] > 0).astype(np.uint8) << c
    packed |= ignore.astype(np.uint8) << BITS["ignore"]
    return packed


def unpack_targets(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_targets`: ((3, H, W) uint8 targets, (H, W) bool ignore)."""
    targets = np.stack([(packed >> c) & 1 for c in range(len(CHANNELS))]).astype(np.uint8)
    return targets, ((packed >> BITS["ignore"]) & 1).astype(bool)


# ---------------------------------------------------------------------------------------------
# vectorize outputs: <AOI>.parquet and its month list <AOI>.json


def write_vectors(path: str | Path, gdf: gpd.GeoDataFrame, meta: dict) -> Path:
    """Write an AOI's tracked buildings (GeoParquet at ``path``) and its month list beside it (``.json``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        gdf.to_parquet(tmp, index=False)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return path


def load_vectors(path: str | Path) -> tuple[gpd.GeoDataFrame, dict]:
    """Read a vectorize output and its month list."""
    path = Path(path)
    if not path.exists():
        raise SN7DataError(path, "vectorize output not found (run `spacenet7 vectorize` first)")
    try:
        gdf = gpd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a truncated or foreign file
        raise SN7DataError(
            path, f"unreadable GeoParquet, truncated? re-run `spacenet7 vectorize` ({str(exc).splitlines()[0][:120]})"
        ) from None
    return gdf, read_month_list(path.with_suffix(".json"))


def read_month_list(meta_path: str | Path) -> dict:
    """The month list (``<AOI>.json``) of a vectorize output, checked: ``aoi`` and ``months`` (``stem``, ``month``).

    Raises:
        SN7DataError: missing file, not JSON, or a key that export and serve need is missing.
    """
    meta_path = Path(meta_path)
    if not meta_path.exists():
        raise SN7DataError(meta_path, "month list of the vectorize output not found; re-run `spacenet7 vectorize`")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta.get("aoi"), str) or not isinstance(meta["months"], list):
            raise TypeError("'aoi' must be a name and 'months' a list")
        for m in meta["months"]:
            m["stem"], m["month"]  # noqa: B018 - the keys export and serve need
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SN7DataError(
            meta_path, f"not a vectorize month list ({type(exc).__name__}: {exc}); re-run `spacenet7 vectorize`"
        ) from None
    return meta
