"""The SpaceNet 7 layout, read the same way for the real data and the synthetic default.

Layout::

    <root>/<split>/<AOI>/images/global_monthly_YYYY_MM_mosaic_<AOI>.tif
                        images_masked/<same name>            (alpha 0 = unusable)
                        UDM_masks/<stem>_UDM.tif             (only some months)
                        labels/<stem>_Buildings.geojson      (EPSG:4326, Id 0)
                        labels_match/<stem>_Buildings.geojson      (EPSG:3857, Id/area/iou_score)
                        labels_match_pix/<stem>_Buildings.geojson  (pixel coordinates)

Names, with one meaning each across the package:

- ``aoi``: an area's name, the folder name ``L15-0331E-1257N_1327_3160_13``;
- ``stem``: one month's file name without suffix, ``global_monthly_YYYY_MM_mosaic_<aoi>``;
- ``year``, ``month``: integers (``month`` 1-12), as in :class:`StemInfo` and :class:`MonthRecord`;
- ``month_key``: the string ``YYYY-MM`` (sorts in time order). The tables and files (chip index,
  vectors, submission frames, ``metrics.json``'s ``per_month``) call their month-key column
  ``month``, as SN7's own tools do; that column never holds the integer.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio import features
from rasterio.windows import Window

from spacenet7.data.bands import InputSpec, Scaling, band_limits, check_fits, nodata_mask, to_uint8
from spacenet7.data.splits import band_start
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.raster import open_raster, read_resampled
from spacenet7.io.vector import read_vector

log = logging.getLogger(__name__)
STEM_RE = re.compile(r"^global_monthly_(\d{4})_(\d{2})_mosaic_(.+)$")
IDENTITY = Affine.identity()  # pixel coordinates
TIF_RE = re.compile(r"\.tiff?$", re.IGNORECASE)  # .tif, .TIF, .tiff
LABEL_SUFFIX = "_Buildings.geojson"
UDM_SUFFIX = "_UDM.tif"


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
    for suffix in (LABEL_SUFFIX, UDM_SUFFIX, ".geojson"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    else:
        stem = TIF_RE.sub("", stem)
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
    path: Path | None = None  # the image file, when not ``images/<stem>.tif`` (``.TIF``, a user's own file)

    @property
    def stem(self) -> str:
        """The SN7 image stem ``global_monthly_YYYY_MM_mosaic_<AOI>``."""
        return make_stem(self.aoi, self.year, self.month)

    @property
    def month_key(self) -> str:
        """``YYYY-MM``."""
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def image(self) -> Path:
        """The mosaic file."""
        return self.path or self.aoi_dir / "images" / f"{self.stem}.tif"

    @property
    def image_masked(self) -> Path | None:
        """The ``images_masked`` copy (alpha 0 = unusable), if present."""
        p = self.aoi_dir / "images_masked" / self.image.name
        return p if p.exists() else None

    @property
    def udm(self) -> Path | None:
        """The month's UDM, if present."""
        p = self.aoi_dir / "UDM_masks" / f"{self.stem}{UDM_SUFFIX}"
        return p if p.exists() else None

    def _label(self, folder: str) -> Path | None:
        p = self.aoi_dir / folder / f"{self.stem}{LABEL_SUFFIX}"
        return p if p.exists() else None

    @property
    def labels(self) -> Path | None:
        """``labels/`` footprints (EPSG:4326), if present."""
        return self._label("labels")

    @property
    def labels_match(self) -> Path | None:
        """``labels_match/`` footprints with track ids, if present."""
        return self._label("labels_match")

    @property
    def labels_match_pix(self) -> Path | None:
        """``labels_match_pix/`` footprints in pixel coordinates, if present."""
        return self._label("labels_match_pix")


def data_roots(root: str | Path) -> list[Path]:
    """The data set roots of a ``data_root`` setting: one path, or several joined by ``os.pathsep``
    (``:`` on Linux and macOS, as in ``PATH``), read together as one data set without copying."""
    parts = [p for p in str(root).split(os.pathsep) if p]
    return [Path(p) for p in parts] or [Path(root)]


def scan(root: str | Path, split: str = "train", aois: list[str] | None = None) -> dict[str, list[MonthRecord]]:
    """Discover AOIs and their months under ``<root>/<split>/``.

    Args:
        root: data set root (holds ``train/``), or several roots joined by ``os.pathsep``
            (:func:`data_roots`), read as one data set; an AOI name may appear under one root only.
        split: sub-folder, ``train`` in SN7.
        aois: keep only these AOIs (all when ``None``).

    Returns:
        AOI name -> month records sorted by month.

    Raises:
        SN7DataError: no AOI found, a requested AOI is missing, an AOI under two roots, or an image is misnamed.
    """
    roots = data_roots(root)
    out: dict[str, list[MonthRecord]] = {}
    for one in roots:
        base = one / split
        if not base.is_dir():
            check_not_too_deep(one, split)
            raise SN7DataError(base, "not a folder (expected <root>/<split>/<AOI>/images/*.tif)")
        found = _scan_one(base, aois)
        if not found and (aois is None or len(roots) == 1):
            raise SN7DataError(base, "no AOIs found (expected <AOI>/images/global_monthly_*.tif)")
        twice = sorted(set(found) & set(out))
        if twice:
            raise SN7DataError(base, f"AOI {twice[0]} also lies under another data root")
        out |= found
    if aois is not None and (missing := sorted(set(aois) - set(out))):
        raise SN7DataError(
            roots[0] / split if len(roots) == 1 else Path(str(root)), f"requested AOIs not found: {', '.join(missing)}"
        )
    return dict(sorted(out.items()))


def _scan_one(base: Path, aois: list[str] | None) -> dict[str, list[MonthRecord]]:
    """The AOIs of one ``<root>/<split>`` folder (those of ``aois`` only, when given)."""
    out: dict[str, list[MonthRecord]] = {}
    for aoi_dir in sorted(p for p in base.iterdir() if (p / "images").is_dir()):
        if aois is not None and aoi_dir.name not in aois:
            continue
        records = []
        for tif in sorted(image_files(aoi_dir / "images")):
            try:
                info = parse_stem(tif.name)
            except SN7Error:
                raise SN7DataError(tif, "misnamed image (expected global_monthly_YYYY_MM_mosaic_<AOI>.tif)") from None
            if info.aoi != aoi_dir.name:
                raise SN7DataError(tif, f"image names AOI {info.aoi!r} but lies in folder {aoi_dir.name!r}")
            records.append(MonthRecord(info.aoi, info.year, info.month, aoi_dir, None if tif.name.endswith(".tif") else tif))
        _check_unique_months(records)
        if records:
            out[aoi_dir.name] = sorted(records, key=lambda r: (r.year, r.month))
    return out


def check_not_too_deep(root: str | Path, split: str = "train") -> None:
    """Raise a clear error when ``root`` is itself the ``<split>`` folder (it holds AOI folders)."""
    root = Path(root)
    if root.is_dir() and any((p / "images").is_dir() for p in root.iterdir() if p.is_dir()):
        raise SN7DataError(
            root,
            f"holds AOI folders itself, so it is the {split}/ folder, one level too deep; "
            f"give the data root above it: data_root={root.parent}",
        )


def image_files(folder: Path) -> list[Path]:
    """GeoTIFFs of a folder (``.tif``, ``.TIF``, ``.tiff``), without hidden files: temporary
    ``.partial`` files and macOS ``._*`` resource forks start with a dot."""
    return [p for p in folder.iterdir() if TIF_RE.search(p.name) and not p.name.startswith(".") and p.is_file()]


def _check_unique_months(records: list[MonthRecord]) -> None:
    seen: dict[tuple[str, str], Path] = {}
    for r in records:
        if (key := (r.aoi, r.month_key)) in seen:
            raise SN7DataError(r.image, f"a second image for {r.aoi} {r.month_key} (the first is {seen[key].name})")
        seen[key] = r.image


DATE_RE = re.compile(r"(?<!\d)((?:19|20)\d{2})[-_.]?(0[1-9]|1[0-2])(?:[-_.]?(?:0[1-9]|[12]\d|3[01]))?(?!\d)")


def file_month(path: Path) -> tuple[int, int] | None:
    """(year, month) from a file: an SN7 name, a date in the name (``2019-03``, ``20190315``, ...),
    or the TIFF date tag; ``None`` when none says."""
    try:
        info = parse_stem(path.name)
        return info.year, info.month
    except SN7Error:
        pass
    if m := DATE_RE.search(path.stem):
        return int(m.group(1)), int(m.group(2))
    with open_raster(path, require_crs=False) as ds:
        tag = ds.tags().get("TIFFTAG_DATETIME", "")
    if m := re.match(r"^(\d{4})[:-](\d{2})", tag):
        if 1 <= int(m.group(2)) <= 12:
            return int(m.group(1)), int(m.group(2))
    return None


def records_from_files(paths: Sequence[str | Path], aoi: str | None = None) -> dict[str, list[MonthRecord]]:
    """Month records for GeoTIFFs given by path: SN7 files or a user's own time series.

    The AOI is ``aoi`` when given, else the one in the SN7 name. The month comes from the SN7
    name, a date in the file name, or the TIFF date tag; when no file has one, from the list
    order (``0001-01``, ``0001-02``, ...).

    Raises:
        SN7DataError: a missing file, no AOI name for a non-SN7 file, some files dated and others
            not, or two files for one month.
    """
    files = [Path(p) for p in paths]
    for p in files:
        if not p.is_file():
            raise SN7DataError(p, "file not found")
    found = [file_month(p) for p in files]
    if any(m is None for m in found) and not all(m is None for m in found):
        first = files[found.index(None)]
        raise SN7DataError(
            first,
            "no date in its name or TIFF tags, but other files have one; name every month "
            "(e.g. area_2019-03.tif) or none (the list order is then the month order)",
        )
    dated = [m for m in found if m is not None]  # every file's month, or none at all (checked above)
    months = dated or [(1 + i // 12, 1 + i % 12) for i in range(len(files))]
    out: dict[str, list[MonthRecord]] = {}
    for p, (year, month) in zip(files, months):
        name = aoi
        if name is None:
            try:
                name = parse_stem(p.name).aoi
            except SN7Error:
                raise SN7DataError(p, "not an SN7 mosaic name, so give the area a name: aoi=<name>") from None
        aoi_dir = p.parent.parent if p.parent.name == "images" else p.parent  # SN7 layout: images_masked/, UDM_masks/ beside
        out.setdefault(name, []).append(MonthRecord(name, year, month, aoi_dir, p))
    for recs in out.values():
        _check_unique_months(recs)
    return {k: sorted(v, key=lambda r: (r.year, r.month)) for k, v in out.items()}


@dataclass
class Image:
    """An RGB image with its valid-pixel mask and georeferencing."""

    rgb: np.ndarray  # (3, H, W) uint8
    valid: np.ndarray  # (H, W) bool: alpha > 0 and not UDM
    transform: Affine
    crs: rasterio.crs.CRS

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return self.valid.shape


def read_image(record: MonthRecord, *, window: Window | None = None, upscale: float = 1, spec: InputSpec | None = None) -> Image:
    """Read 8-bit RGB and the valid mask (alpha of ``images_masked`` > 0, not UDM, not nodata).

    Args:
        record: the (AOI, month).
        window: a window in source pixels (whole image when ``None``).
        upscale: resample ``upscale`` times finer (RGB with ``spec.resampling``, bilinear by default; masks nearest).
        spec: the file's band layout and scaling (:class:`InputSpec`; SN7's RGBA uint8 when ``None``).

    Raises:
        SN7DataError: missing CRS, too few bands, not 8 bit without scaling, truncated file,
            UDM or alpha file of another size.
    """
    from rasterio.enums import Resampling

    spec = spec or InputSpec()
    with open_raster(record.image) as ds:
        check_fits(ds, spec, record.image)
        win = window or Window(0, 0, ds.width, ds.height)
        values = read_resampled(ds, list(spec.rgb), win, upscale, spec.resampling.rasterio)
        rgb = to_uint8(values, band_limits(ds, spec))
        valid = ~nodata_mask(ds, values)
        transform = ds.window_transform(win) * Affine.scale(1 / upscale)
        crs, full = ds.crs, (ds.height, ds.width)
    if spec.alpha is not None:
        alpha_src = record.image_masked or record.image
        with open_raster(alpha_src) as ds:
            _same_grid(ds, full, alpha_src)
            check_fits(ds, InputSpec(count=spec.count, rgb=[1, 1, 1], alpha=spec.alpha, scaling=Scaling.fixed), alpha_src)
            valid &= read_resampled(ds, spec.alpha, win, upscale, Resampling.nearest) > 0
    if record.udm is not None:
        with open_raster(record.udm, require_crs=False) as ds:
            _same_grid(ds, full, record.udm)
            valid &= read_resampled(ds, 1, win, upscale, Resampling.nearest) == 0
    return Image(rgb=rgb, valid=valid, transform=transform, crs=crs)


def _same_grid(ds: rasterio.io.DatasetReader, shape: tuple[int, int], path: Path) -> None:
    if (ds.height, ds.width) != shape:
        raise SN7DataError(path, f"size {ds.height}x{ds.width} differs from the image's {shape[0]}x{shape[1]}")


def image_grid(record: MonthRecord) -> tuple[Affine, rasterio.crs.CRS, tuple[int, int]]:
    """Transform, CRS and (H, W) of a record's image, checked."""
    with open_raster(record.image) as ds:
        return ds.transform, ds.crs, (ds.height, ds.width)


def band_regions(root: str | Path, aois: list[str], frac: float, split: str = "train") -> dict[str, list[float]]:
    """Each AOI's held-out right band of width ``frac``: ``[row0, row1, col0, col1]`` in its source pixels.

    AOIs may differ in size (a half AOI beside a whole one): each band is cut from its own mosaic's size.
    """
    out = {}
    for aoi, recs in scan(root, split, aois).items():
        h, w = image_grid(recs[0])[2]
        out[aoi] = [0.0, float(h), float(band_start(w, frac)), float(w)]
    return out


def _read_label_file(record: MonthRecord, folder: str) -> tuple[gpd.GeoDataFrame, Path]:
    """One label file of ``folder`` with an ``Id`` column (an empty file has no properties at all), and its path."""
    path = record._label(folder)
    if path is None:
        raise SN7DataError(record.aoi_dir / folder / f"{record.stem}{LABEL_SUFFIX}", "label file not found")
    gdf = read_vector(path)
    if len(gdf) == 0:
        gdf["Id"] = np.zeros(0, np.int64)
    if "Id" not in gdf.columns:
        raise SN7DataError(path, "missing property 'Id'")
    return gdf, path


def _footprints(gdf: gpd.GeoDataFrame, path: Path) -> gpd.GeoDataFrame:
    """Non-empty footprints with ``Id``; invalid polygons (self-intersections, ...) repaired and counted."""
    gdf = gdf[~gdf.geometry.is_empty & gdf.geometry.notna()].reset_index(drop=True)
    invalid = ~gdf.geometry.is_valid.to_numpy()
    if invalid.any():
        gdf.loc[invalid, "geometry"] = shapely.make_valid(gdf.geometry.values[invalid])
        log.info("%s: repaired %d invalid polygon(s) of %d (shapely.make_valid)", path, int(invalid.sum()), len(gdf))
    return _polygonal(gdf, path)[["Id", "geometry"]]


def _polygonal(gdf: gpd.GeoDataFrame, path: Path) -> gpd.GeoDataFrame:
    """Footprints are areas: a collection keeps its polygons; points and lines are dropped, counted in one warning."""
    kinds = gdf.geometry.geom_type.to_numpy()
    mixed = kinds == "GeometryCollection"
    if mixed.any():
        parts = [
            shapely.union_all([g for g in shapely.get_parts(c) if g.geom_type in ("Polygon", "MultiPolygon")])
            for c in gdf.geometry.values[mixed]
        ]
        gdf = gdf.copy()
        gdf.loc[mixed, "geometry"] = parts
    keep = np.isin(gdf.geometry.geom_type.to_numpy(), ["Polygon", "MultiPolygon"]) & ~gdf.geometry.is_empty.to_numpy()
    if not keep.all():
        dropped = {k: int((kinds[~keep] == k).sum()) for k in dict.fromkeys(kinds[~keep])}
        log.warning(
            "%s: ignored %d of %d label(s) that are not polygons (%s): footprints are areas",
            path,
            int((~keep).sum()),
            len(gdf),
            ", ".join(f"{n} {k}" for k, n in dropped.items()),
        )
    return gdf[keep].reset_index(drop=True)


def check_labels_on_image(labels: gpd.GeoDataFrame, transform: Affine, shape: tuple[int, int], record: MonthRecord) -> None:
    """Refuse a month whose footprints all lie outside its image (labels of another AOI, or in another CRS):
    its targets would say "no building" everywhere.

    Args:
        labels: the month's footprints in the image's CRS (:func:`read_labels`).
        transform: the image's transform.
        shape: the image's (H, W).
        record: the month (for the file names of the message).

    Raises:
        SN7DataError: naming the label file and the image.
    """
    if not len(labels):
        return
    (xa, ya), (xb, yb) = transform * (0, 0), transform * (shape[1], shape[0])
    frame = shapely.box(min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))
    if not labels.geometry.intersects(frame).any():
        raise SN7DataError(
            record.labels_match or record.aoi_dir / "labels_match",
            f"all {len(labels)} footprint(s) lie outside the image {record.image.name} "
            "(labels of another area, or coordinates in another CRS than the file declares?)",
        )


def read_labels(record: MonthRecord, crs: Any = None) -> gpd.GeoDataFrame:
    """``labels_match`` footprints in ``crs`` (the image's CRS when ``None``), reprojected if needed.

    Columns: ``Id`` (track id) and ``geometry``. Empty geometries are dropped.
    """
    gdf, path = _read_label_file(record, "labels_match")
    if crs is None:
        _, crs, _ = image_grid(record)
    if gdf.crs is None:
        raise SN7DataError(path, "label file declares no CRS")
    if len(gdf) and gdf.crs != crs:
        gdf = gdf.to_crs(crs)
    return _footprints(gdf.set_crs(crs, allow_override=True), path)


def shift_labels(labels: gpd.GeoDataFrame, transform: Affine, dx: float, dy: float) -> gpd.GeoDataFrame:
    """``labels`` moved by (``dx``, ``dy``) pixels of the grid ``transform`` describes (x = column, y = row)."""
    if not (dx or dy) or not len(labels):
        return labels
    t = transform
    return labels.set_geometry(labels.geometry.translate(t.a * dx + t.b * dy, t.d * dx + t.e * dy))


def read_labels_pix(record: MonthRecord) -> gpd.GeoDataFrame:
    """``labels_match_pix`` footprints in pixel coordinates (x = column, y = row), no CRS.

    SN7 files declare CRS84 although the coordinates are pixels; the declaration is dropped.
    """
    gdf, path = _read_label_file(record, "labels_match_pix")
    return _footprints(gdf.set_crs(None, allow_override=True), path)


def read_truth_pix(record: MonthRecord) -> gpd.GeoDataFrame:
    """A month's SN7 ground truth in pixel coordinates (x = column, y = row), no CRS.

    ``labels_match_pix`` where the data set has it; otherwise ``labels_match`` (map coordinates)
    brought onto the image's pixel grid, as SN7's own ``labels_match_pix`` files were made.
    """
    if record.labels_match_pix is not None or record.labels_match is None:
        return read_labels_pix(record)
    transform, crs, _ = image_grid(record)
    gdf = read_labels(record, crs)
    inv = ~transform
    pix = gdf.geometry.affine_transform([inv.a, inv.b, inv.d, inv.e, inv.c, inv.f])
    return gpd.GeoDataFrame({"Id": gdf["Id"].to_numpy()}, geometry=np.asarray(pix, dtype=object), crs=None)


def rasterize_footprints(
    geoms: Any, shape: tuple[int, int], transform: Affine = IDENTITY, values: np.ndarray | None = None, dtype: str = "uint8"
) -> np.ndarray:
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
