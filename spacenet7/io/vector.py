"""Vector helpers: pixel <-> map coordinates, GeoJSON/GPKG writing, atomic and empty-safe."""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pyogrio.errors
import shapely
from affine import Affine

from spacenet7.errors import SN7DataError
from spacenet7.io.atomic import atomic_path
from spacenet7.io.raster import write_problem

# what pyogrio raises for a failed write (FeatureError, DataLayerError: RuntimeErrors; DataSourceError)
WRITE_ERRORS: tuple[type[Exception], ...] = (pyogrio.errors.DataLayerError, pyogrio.errors.DataSourceError, OSError)


def area_m2(gdf: gpd.GeoDataFrame) -> np.ndarray:
    """True ground area in m^2 (a local UTM zone), not Web Mercator's inflated area."""
    if len(gdf) == 0:
        return np.zeros(0)
    return gdf.to_crs(gdf.estimate_utm_crs()).area.to_numpy()


def pixel_to_map(geoms: np.ndarray | list, transform: Affine) -> np.ndarray:
    """Apply a raster's affine transform to pixel-space geometries (x = column, y = row)."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    return shapely.transform(np.asarray(geoms, dtype=object), lambda xy: xy @ np.array([[a, d], [b, e]]) + [c, f])


def map_to_pixel(geoms: np.ndarray | list, transform: Affine) -> np.ndarray:
    """Inverse of :func:`pixel_to_map`."""
    return pixel_to_map(geoms, ~transform)


def read_vector(path: str | Path, *, layer: str | None = None) -> gpd.GeoDataFrame:
    """Read a vector file with pyogrio, reporting failures as one :class:`SN7DataError`."""
    path = Path(path)
    if not path.exists():
        raise SN7DataError(path, "file not found")
    try:
        return gpd.read_file(path, layer=layer, engine="pyogrio")
    except Exception as exc:  # pyogrio raises several types; all mean "unreadable"
        raise SN7DataError(path, f"not a readable vector file ({str(exc).splitlines()[0][:200]})") from None


def write_vector(
    gdf: gpd.GeoDataFrame,
    path: str | Path,
    *,
    layer: str | None = None,
    driver: str | None = None,
    append_layer: bool = False,
    layer_options: dict[str, str] | None = None,
) -> Path:
    """Write a GeoDataFrame; an empty frame still writes a valid, typed (Polygon) layer.

    Single-layer files are written to a temporary file and renamed. For multi-layer GPKGs
    (``append_layer=True``) the caller is responsible for writing into a temporary file.

    Raises:
        SN7DataError: the file could not be written (a full disk named as such).
    """
    path = Path(path)
    driver = driver or {".geojson": "GeoJSON", ".gpkg": "GPKG", ".json": "GeoJSON"}[path.suffix.lower()]
    kwargs = dict(
        driver=driver, layer=layer or path.stem, geometry_type="Polygon", promote_to_multi=False, **(layer_options or {})
    )
    try:
        if append_layer:
            with warnings.catch_warnings():  # the caller's temporary file ends in .partial, not .gpkg
                warnings.filterwarnings("ignore", message=".*non conformant file extension")
                warnings.filterwarnings("ignore", message=".*filename extension should be")
                pyogrio.write_dataframe(gdf, path, append=False, **kwargs)
            return path
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="'crs' was not provided")  # pixel-space layers
            pyogrio.write_dataframe(gdf, tmp, **kwargs)
    except WRITE_ERRORS as exc:  # a full disk is a FeatureError or DataSourceError
        raise SN7DataError(path, write_problem(path, exc)) from None
    return path
