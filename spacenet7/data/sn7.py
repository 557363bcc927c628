"""The SpaceNet 7 layout, read the same way for the real data and the synthetic default.

Layout::

    <root>/<split>/<AOI>/images/global_monthly_YYYY_MM_mosaic_<AOI>.tif
                        images_masked/<same name>            (alpha 0 = unusable)
                        UDM_masks/<stem>_UDM.tif             (only some months)
                        labels/<stem>_Buildings.geojson      (EPSG:4326, Id 0)
                        labels_match/<stem>_Buildings.geojson      (EPSG:3857, Id/area/iou_score)
                        labels_match_pix/<stem>_Buildings.geojson  (pixel coordinates)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio import features
from rasterio.windows import Window

from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.raster import open_raster, read_resampled
from spacenet7.io.vector import read_vector

STEM_RE = re.compile(r"^global_monthly_(\d{4})_(\d{2})_mosaic_(.+)$")
LABEL_SUFFIX = "_Buildings.geojson"
UDM_SUFFIX = "_UDM.tif"
IMAGE_BANDS = 4  # R, G, B, alpha


@dataclass(frozen=True)
class StemInfo:
    """What an SN7 file name says: AOI and month."""

    aoi: str
    year: int
    month: int

    @property
    def month_key(self) -> str:
        """``YYYY-MM``."""
        return f"{self.year:04d}-{self.month:02d}"


def parse_stem(name: str) -> StemInfo:
    """Parse ``global_monthly_YYYY_MM_mosaic_<AOI>`` (a suffix like ``.tif`` is ignored).

    Raises:
        SN7Error: the name does not follow the SN7 pattern.
    """
    stem = Path(name).name
    for suffix in (LABEL_SUFFIX, UDM_SUFFIX, ".tif", ".geojson"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    m = STEM_RE.match(stem)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise SN7Error(f"{name}: not an SN7 name (expected global_monthly_YYYY_MM_mosaic_<AOI>)")
    return StemInfo(aoi=m.group(3), year=int(m.group(1)), month=int(m.group(2)))


def make_stem(aoi: str, year: int, month: int) -> str:
    """The SN7 image stem for an AOI and month."""
    return f"global_monthly_{year:04d}_{month:02d}_mosaic_{aoi}"


@dataclass(frozen=True)
class MonthRecord:
    """Every file of one (AOI, month). Optional files are ``None`` when absent."""

    aoi: str
    year: int
    month: int
    aoi_dir: Path

    @property
    def stem(self) -> str:
        return make_stem(self.aoi, self.year, self.month)

    @property
    def month_key(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def image(self) -> Path:
        return self.aoi_dir / "images" / f"{self.stem}.tif"

    @property
    def image_masked(self) -> Path | None:
        p = self.aoi_dir / "images_masked" / f"{self.stem}.tif"
        return p if p.exists() else None

    @property
    def udm(self) -> Path | None:
        p = self.aoi_dir / "UDM_masks" / f"{self.stem}{UDM_SUFFIX}"
        return p if p.exists() else None

    def _label(self, folder: str) -> Path | None:
        p = self.aoi_dir / folder / f"{self.stem}{LABEL_SUFFIX}"
        return p if p.exists() else None

    @property
    def labels(self) -> Path | None:
        return self._label("labels")

    @property
    def labels_match(self) -> Path | None:
        return self._label("labels_match")

    @property
    def labels_match_pix(self) -> Path | None:
        return self._label("labels_match_pix")


def scan(root: str | Path, split: str = "train", aois: list[str] | None = None) -> dict[str, list[MonthRecord]]:
    """Discover AOIs and their months under ``<root>/<split>/``.

    Args:
        root: data set root (holds ``train/``).
        split: sub-folder, ``train`` in SN7.
        aois: keep only these AOIs (all when ``None``).

    Returns:
        AOI name -> month records sorted by month.

    Raises:
        SN7DataError: no AOI found, a requested AOI is missing, or an image is misnamed.
    """
    base = Path(root) / split
    if not base.is_dir():
        raise SN7DataError(base, "not a folder (expected <root>/<split>/<AOI>/images/*.tif)")
    out: dict[str, list[MonthRecord]] = {}
    for aoi_dir in sorted(p for p in base.iterdir() if (p / "images").is_dir()):
        if aois is not None and aoi_dir.name not in aois:
            continue
        records = []
        for tif in sorted(p for p in (aoi_dir / "images").glob("*.tif") if not p.name.startswith(".")):  # not temp or macOS ._ files
            try:
                info = parse_stem(tif.name)
            except SN7Error:
                raise SN7DataError(tif, "misnamed image (expected global_monthly_YYYY_MM_mosaic_<AOI>.tif)") from None
            if info.aoi != aoi_dir.name:
                raise SN7DataError(tif, f"image names AOI {info.aoi!r} but lies in folder {aoi_dir.name!r}")
            records.append(MonthRecord(info.aoi, info.year, info.month, aoi_dir))
        if records:
            out[aoi_dir.name] = sorted(records, key=lambda r: (r.year, r.month))
    if not out:
        raise SN7DataError(base, "no AOIs found (expected <AOI>/images/global_monthly_*.tif)")
    if aois is not None and (missing := sorted(set(aois) - set(out))):
        raise SN7DataError(base, f"requested AOIs not found: {', '.join(missing)}")
    return out


@dataclass
class Image:
    """An RGB image with its valid-pixel mask and georeferencing."""

    rgb: np.ndarray  # (3, H, W) uint8
    valid: np.ndarray  # (H, W) bool: alpha > 0 and not UDM
    transform: Affine
    crs: rasterio.crs.CRS

    @property
    def shape(self) -> tuple[int, int]:
        return self.valid.shape


def read_image(record: MonthRecord, *, window: Window | None = None, upscale: float = 1) -> Image:
    """Read RGB and the valid mask (alpha band of ``images_masked`` AND NOT UDM).

    Args:
        record: the (AOI, month).
        window: a window in source pixels (whole image when ``None``).
        upscale: resample ``upscale`` times finer (bilinear for RGB, nearest for masks).

    Raises:
        SN7DataError: missing CRS, wrong band count, truncated file, UDM of another size.
    """
    from rasterio.enums import Resampling

    with open_raster(record.image, bands=IMAGE_BANDS) as ds:
        win = window or Window(0, 0, ds.width, ds.height)
        rgb = read_resampled(ds, [1, 2, 3], win, upscale)
        transform = ds.window_transform(win) * Affine.scale(1 / upscale)
        crs, full = ds.crs, (ds.height, ds.width)
        alpha_src = record.image_masked or record.image
    with open_raster(alpha_src, bands=IMAGE_BANDS) as ds:
        _same_grid(ds, full, alpha_src)
        valid = read_resampled(ds, 4, win, upscale, Resampling.nearest) > 0
    if record.udm is not None:
        with open_raster(record.udm, require_crs=False) as ds:
            _same_grid(ds, full, record.udm)
            valid &= read_resampled(ds, 1, win, upscale, Resampling.nearest) == 0
    return Image(rgb=rgb, valid=valid, transform=transform, crs=crs)


def _same_grid(ds, shape: tuple[int, int], path: Path) -> None:
    if (ds.height, ds.width) != shape:
        raise SN7DataError(path, f"size {ds.height}x{ds.width} differs from the image's {shape[0]}x{shape[1]}")


def image_grid(record: MonthRecord) -> tuple[Affine, rasterio.crs.CRS, tuple[int, int]]:
    """Transform, CRS and (H, W) of a record's image, checked."""
    with open_raster(record.image, bands=IMAGE_BANDS) as ds:
        return ds.transform, ds.crs, (ds.height, ds.width)


def _read_label_file(record: MonthRecord, folder: str) -> gpd.GeoDataFrame:
    """One label file of ``folder`` with an ``Id`` column (an empty file has no properties at all)."""
    path = record._label(folder)
    if path is None:
        raise SN7DataError(record.aoi_dir / folder / f"{record.stem}{LABEL_SUFFIX}", "label file not found")
    gdf = read_vector(path)
    if len(gdf) == 0:
        gdf["Id"] = np.zeros(0, np.int64)
    if "Id" not in gdf.columns:
        raise SN7DataError(path, "missing property 'Id'")
    return gdf


def _footprints(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    gdf = gdf[~gdf.geometry.is_empty & gdf.geometry.notna()]
    return gdf[["Id", "geometry"]].reset_index(drop=True)


def read_labels(record: MonthRecord, crs=None) -> gpd.GeoDataFrame:
    """``labels_match`` footprints in ``crs`` (the image's CRS when ``None``), reprojected if needed.

    Columns: ``Id`` (track id) and ``geometry``. Empty geometries are dropped.
    """
    gdf = _read_label_file(record, "labels_match")
    if crs is None:
        _, crs, _ = image_grid(record)
    if gdf.crs is None:
        raise SN7DataError(record.labels_match, "label file declares no CRS")
    if len(gdf) and gdf.crs != crs:
        gdf = gdf.to_crs(crs)
    return _footprints(gdf.set_crs(crs, allow_override=True))


def read_labels_pix(record: MonthRecord) -> gpd.GeoDataFrame:
    """``labels_match_pix`` footprints in pixel coordinates (x = column, y = row), no CRS.

    SN7 files declare CRS84 although the coordinates are pixels; the declaration is dropped.
    """
    return _footprints(_read_label_file(record, "labels_match_pix").set_crs(None, allow_override=True))


def rasterize_footprints(geoms, shape: tuple[int, int], transform: Affine = Affine.identity(),
                         values: np.ndarray | None = None, dtype: str = "uint8") -> np.ndarray:
    """Burn polygons into a (H, W) raster; pixel centres inside a polygon are set.

    Args:
        geoms: polygons in the coordinates of ``transform`` (identity = pixel coordinates).
        shape: output (H, W).
        transform: raster transform.
        values: per-polygon burn values (instance ids); 1 when ``None``. Later polygons win.
        dtype: output dtype.
    """
    geoms = [g for g in np.asarray(geoms, dtype=object) if g is not None and not g.is_empty]
    if values is None:
        values = np.ones(len(geoms), dtype=dtype)
    if not geoms:
        return np.zeros(shape, dtype=dtype)
    return features.rasterize(zip(geoms, values), out_shape=shape, transform=transform, fill=0, dtype=dtype)


def instance_raster(gdf: gpd.GeoDataFrame, shape: tuple[int, int], transform: Affine) -> np.ndarray:
    """Rasterize footprints as instance labels 1..N (int32), in row order of ``gdf``."""
    geoms = shapely.make_valid(np.asarray(gdf.geometry.values, dtype=object))
    return rasterize_footprints(geoms, shape, transform, values=np.arange(1, len(geoms) + 1, dtype="int32"), dtype="int32")
