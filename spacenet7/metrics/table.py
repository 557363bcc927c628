"""Reading and checking ``filename,id,geometry`` tables (SN7 ground truth and submissions)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import shapely

from spacenet7.data.sn7 import STEM_RE
from spacenet7.errors import SN7DataError
from spacenet7.metrics.wkt import read_polygons

log = logging.getLogger(__name__)
COLUMNS = ("filename", "id", "geometry")
MAX_COORD = 1e9  # pixel coordinates: any mosaic is far smaller; beyond it a value is garbage (1e300)


def month_rows(filename: str, ids: Iterable, wkts: Iterable[str]) -> list[dict]:
    """``filename,id,geometry`` rows of one month; a month without buildings gets one empty row
    (id -1, ``POLYGON EMPTY``) so that it still counts as a month."""
    rows = [{"filename": filename, "id": int(i), "geometry": w} for i, w in zip(ids, wkts)]
    return rows or [{"filename": filename, "id": -1, "geometry": "POLYGON EMPTY"}]


def read_table(path: str | Path, *, name: str = "table") -> pd.DataFrame:
    """Read a CSV into a checked frame with ``aoi``, ``month``, ``id`` and shapely ``geometry``.

    Empty geometries (``POLYGON EMPTY``) mark months without buildings: the month is kept in
    the month list but contributes no polygon.

    Raises:
        SN7DataError: missing columns, unparseable filenames, malformed WKT, non-integer ids.
    """
    path = Path(path)
    if not path.exists():
        raise SN7DataError(path, f"{name} file not found")
    df = _read_csv_arrow(path)
    if df is None:
        try:
            df = pd.read_csv(path, dtype={"filename": str, "geometry": str}, keep_default_na=False)
        except Exception as exc:
            raise SN7DataError(path, f"not a readable CSV ({str(exc).splitlines()[0]})") from None
    return check_table(df, path)


def _read_csv_arrow(path: Path) -> pd.DataFrame | None:
    """The frame ``pd.read_csv(path, dtype={"filename": str, "geometry": str}, keep_default_na=False)`` reads,
    from pyarrow's CSV reader (3-5x faster), or None for any file where the two might differ: pyarrow
    refuses it (ragged rows, bad UTF-8, an empty file...), a column name repeats or is missing, or the
    ids are not all integers. pandas then reads it, and its errors are the ones reported."""
    try:
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(use_threads=False),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={"filename": pa.string(), "geometry": pa.string()}, strings_can_be_null=False
            ),
        )
    except (pa.ArrowException, OSError, ValueError):
        return None
    names = table.column_names
    if len(set(names)) != len(names) or not set(COLUMNS) <= set(names):
        return None
    ids = table.column("id")
    if ids.type != pa.int64() or ids.null_count:
        return None
    return table.to_pandas()


def check_table(df: pd.DataFrame, path: str | Path = "<table>") -> pd.DataFrame:
    """Validate and parse a raw ``filename,id,geometry`` frame (see :func:`read_table`)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise SN7DataError(path, f"missing column(s) {', '.join(missing)} (need filename,id,geometry)")
    df = df.reset_index(drop=True)
    codes, files = pd.factorize(df["filename"].astype(str))  # a table names a few dozen files: each is parsed once
    names = pd.Series(files, dtype=str).str.replace(r"\.tif$", "", regex=True)
    parts = names.str.extract(STEM_RE)
    bad = parts[0].isna().to_numpy()[codes]
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SN7DataError(
            path, f"row {i + 2}: unparseable filename {df['filename'].iloc[i]!r} (expected global_monthly_YYYY_MM_mosaic_<AOI>)"
        )
    month = parts[1].astype(int)
    bad = ~month.between(1, 12).to_numpy()[codes]
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SN7DataError(path, f"row {i + 2}: month {parts[1].iloc[codes[i]]} in {df['filename'].iloc[i]!r} is not 01-12")
    ids = pd.to_numeric(df["id"], errors="coerce")
    bad = ids.isna() | ~np.isfinite(ids.astype(float)) | (ids != np.round(ids))  # inf: not an id either
    if bad.any():
        i = int(np.flatnonzero(bad.values)[0])
        raise SN7DataError(path, f"row {i + 2}: id {str(df['id'].iloc[i])!r} is not an integer")
    huge = np.flatnonzero((ids.abs() >= 2.0**63).to_numpy())  # int64 would wrap it (1e30 -> -9223372036854775808)
    if len(huge):
        i = int(huge[0])
        raise SN7DataError(path, f"row {i + 2}: id {str(df['id'].iloc[i])!r} is outside the 64-bit integer range")
    wkt = df["geometry"].astype(str)
    geoms, convex, reach = read_polygons(wkt)  # shapely.from_wkt's geometries, faster
    wkt = wkt.values
    bad = np.flatnonzero(pd.isna(geoms))
    if len(bad):
        i = int(bad[0])
        raise SN7DataError(path, f"row {i + 2}: malformed WKT {wkt[i][:60]!r}")
    kinds = shapely.get_type_id(geoms)
    bad = np.flatnonzero(~np.isin(kinds, [3, 6]))  # Polygon, MultiPolygon
    if len(bad):
        i = int(bad[0])
        raise SN7DataError(path, f"row {i + 2}: geometry is not a polygon ({wkt[i][:40]!r})")
    _check_coordinates(geoms, wkt, path, reach)
    invalid = np.zeros(len(geoms), bool)  # strictly convex rings are valid: GEOS checks the others
    invalid[~convex] = ~shapely.is_valid(geoms[~convex])
    if invalid.any():
        geoms[invalid] = shapely.make_valid(geoms[invalid])
        log.info("%s: repaired %d invalid polygon(s) of %d (shapely.make_valid)", path, int(invalid.sum()), len(geoms))
    out = pd.DataFrame(
        {
            "filename": names.array.take(codes),
            "aoi": parts[2].array.take(codes),
            "month": (parts[0] + "-" + parts[1]).array.take(codes),
            "id": ids.astype(np.int64).values,
            "geometry": geoms,
        }
    )
    return out


def _check_coordinates(geoms: np.ndarray, wkt: np.ndarray, path: str | Path, reach: np.ndarray | None = None) -> None:
    """Every coordinate finite and within :data:`MAX_COORD` pixels (NaN, inf or 1e300 break the overlay).
    ``reach``: each row's largest absolute coordinate where already known (NaN where not)."""
    rows = np.flatnonzero(~(reach <= MAX_COORD)) if reach is not None else np.arange(len(geoms))
    coords, row = shapely.get_coordinates(geoms[rows], return_index=True)
    row = rows[row]
    if not len(coords) or (coords.min() >= -MAX_COORD and coords.max() <= MAX_COORD):  # (NaN fails both)
        return
    bad = np.flatnonzero(~(np.abs(coords) <= MAX_COORD).all(axis=1))  # NaN compares False: caught too
    if len(bad):
        i = int(row[bad[0]])
        raise SN7DataError(
            path, f"row {i + 2}: coordinate {coords[bad[0]].tolist()} is not a finite pixel coordinate ({wkt[i][:60]!r})"
        )


def check_unique_ids(df: pd.DataFrame, path: str | Path) -> None:
    """Ids must be unique within one (AOI, month) of one table."""
    live = df[~shapely.is_empty(df["geometry"].values)]
    dup = live.duplicated(["aoi", "month", "id"], keep=False)
    if dup.any():
        row = live[dup].iloc[0]
        raise SN7DataError(path, f"id {row['id']} appears more than once in {row['filename']}")
