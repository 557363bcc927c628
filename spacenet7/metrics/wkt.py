"""Polygon WKT read fast: a numba scan, Arrow's number parsing and shapely's ragged-array constructor.

``shapely.from_wkt`` (GEOS's reader) spends ~2.5 us per small polygon: 100 ms for one 40,000-row
submission, the largest part of ``spacenet7 evaluate`` once the scores themselves are fast. Here a
numba pass checks each row against the plain grammar that submissions and truth tables use
(``POLYGON ((x y, ...), ...)``, ``MULTIPOLYGON (((...)), ...)``, ``POLYGON EMPTY``; spaces only
where WKT allows them) and records where its numbers are; Arrow converts those numbers
(``fast_float``: correctly rounded, like the C library's ``strtod`` that GEOS uses), and
``shapely.from_ragged_array`` builds the geometries (~0.2 us each). Rings must be closed and hold
four points, as GEOS requires. Any row outside that grammar (another geometry type, Z values,
``+1``, ``1.``, ``.5``, hex or ``nan`` numbers, tabs, lower case, an open ring, trailing text) goes
to ``shapely.from_wkt`` itself, so every row gets exactly the geometry, or the ``None``, that GEOS
gives it; ``tests/test_wkt.py`` checks this byte for byte (WKB) on random and hostile rows.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely

_OTHER, _POLYGON, _MULTI, _EMPTY = 0, 1, 2, 3


def polygons_from_wkt(wkt: Any) -> np.ndarray:
    """``shapely.from_wkt(wkt, on_invalid="ignore")`` for a column of strings (a pandas column, a pyarrow
    array or a sequence of ``str``): the same geometries (``None`` where GEOS reads none), faster for
    polygons."""
    return read_polygons(wkt)[0]


def read_polygons(wkt: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`polygons_from_wkt`; for each row whether it is known to be valid without asking GEOS (a
    polygon without holes whose ring turns the same way at every vertex, by a margin that float
    rounding cannot undo, once around: a strictly convex ring, simple, so ``shapely.is_valid``); and
    each row's largest absolute coordinate where this reader read it (NaN where GEOS did)."""
    arr = wkt if isinstance(wkt, pa.Array | pa.ChunkedArray) else pa.array(wkt, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if n == 0 or arr.null_count or not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return _geos(arr), np.zeros(n, bool), np.full(n, np.nan)
    _, offsets, data = arr.buffers()
    width = np.int32 if pa.types.is_string(arr.type) else np.int64
    offsets = np.frombuffer(offsets, width, n + 1, arr.offset * np.dtype(width).itemsize).astype(np.int64)
    data = np.frombuffer(data if data is not None else b"", np.uint8)
    kind, row_part, part_ring, ring_point, compact, token_offsets = _scan_rows(
        data, offsets, _POLYGON_WORD, _MULTI_WORD, _EMPTY_WORD
    )
    out = np.empty(n, dtype=object)
    convex, reach = np.zeros(n, bool), np.where(kind == _EMPTY, 0.0, np.nan)
    if len(token_offsets) > 1:
        numbers = pa.LargeStringArray.from_buffers(len(token_offsets) - 1, pa.py_buffer(token_offsets), pa.py_buffer(compact))
        try:
            xy = pc.cast(numbers, pa.float64()).to_numpy(zero_copy_only=False).reshape(-1, 2)
        except pa.ArrowInvalid:  # a number Arrow cannot read (1e999): GEOS reads the whole column
            return _geos(arr), convex, np.full(n, np.nan)
        convex, reach, polygons, multipolygons = _assemble(xy, kind, row_part, part_ring, ring_point)
        for code, gtype, (coords, *offs) in (
            (_POLYGON, shapely.GeometryType.POLYGON, polygons[:3]),
            (_MULTI, shapely.GeometryType.MULTIPOLYGON, multipolygons),
        ):
            rows = np.flatnonzero(kind == code)
            if len(rows):
                out[rows] = shapely.from_ragged_array(gtype, coords, tuple(offs))
    empty = np.flatnonzero(kind == _EMPTY)
    if len(empty):
        out[empty] = shapely.from_wkt(np.full(len(empty), "POLYGON EMPTY", dtype=object))
    other = np.flatnonzero(kind == _OTHER)
    if len(other):
        out[other] = _geos(arr.take(other))
    return out, convex, reach


def _geos(arr: pa.Array) -> np.ndarray:
    if len(arr) == 0:
        return np.empty(0, dtype=object)
    return shapely.from_wkt(np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object), on_invalid="ignore")


@numba.njit(cache=True)
def _grow(a: np.ndarray, k: int) -> np.ndarray:
    """``a``, or a copy twice as long, so that index ``k`` exists."""
    if k < len(a):
        return a
    b = np.empty((max(2 * len(a), k + 1),) + a.shape[1:], a.dtype)
    b[: len(a)] = a
    return b


@numba.njit(cache=True)
def _spaces(d: np.ndarray, i: int, end: int) -> int:
    while i < end and d[i] == 32:
        i += 1
    return i


@numba.njit(cache=True)
def _word(d: np.ndarray, i: int, end: int, w: np.ndarray) -> bool:
    if end - i < len(w):
        return False
    for k in range(len(w)):
        if d[i + k] != w[k]:
            return False
    return True


@numba.njit(cache=True)
def _digits(d: np.ndarray, i: int, end: int) -> int:
    """End of the run of ASCII digits at ``i`` (``i`` itself where there is none)."""
    while i < end and 48 <= d[i] <= 57:
        i += 1
    return i


@numba.njit(cache=True)
def _number(d: np.ndarray, i: int, end: int) -> int:
    """End of the number at ``i`` (``-?digits(.digits)?([eE][+-]?digits)?``, then a delimiter), or -1."""
    if i < end and d[i] == 45:  # -
        i += 1
    s, i = i, _digits(d, i, end)
    if i == s:
        return -1
    if i < end and d[i] == 46:  # .
        s, i = i + 1, _digits(d, i + 1, end)
        if i == s:
            return -1
    if i < end and (d[i] == 101 or d[i] == 69):  # e E
        i += 1
        if i < end and (d[i] == 43 or d[i] == 45):
            i += 1
        s, i = i, _digits(d, i, end)
        if i == s:
            return -1
    if i < end and not (d[i] == 32 or d[i] == 44 or d[i] == 41):  # space , )
        return -1
    return i


@numba.njit(cache=True)
def _polygon_text(d, i, end, part_ring, n_rings, ring_point, n_points, tokens, n_tok):
    """``((x y, ...), ...)`` at ``i``: rings and number tokens appended; returns (i, counts) or i = -1."""
    if i >= end or d[i] != 40:  # (
        return -1, n_rings, n_points, n_tok, part_ring, ring_point, tokens
    i = _spaces(d, i + 1, end)
    while True:
        if i >= end or d[i] != 40:
            return -1, n_rings, n_points, n_tok, part_ring, ring_point, tokens
        i = _spaces(d, i + 1, end)
        while True:  # a point: x, at least one space, y
            e = _number(d, i, end)
            if e < 0 or e >= end or d[e] != 32:
                return -1, n_rings, n_points, n_tok, part_ring, ring_point, tokens
            tokens[n_tok, 0] = i
            tokens[n_tok, 1] = e
            i = _spaces(d, e, end)
            e = _number(d, i, end)
            if e < 0:
                return -1, n_rings, n_points, n_tok, part_ring, ring_point, tokens
            tokens[n_tok + 1, 0] = i
            tokens[n_tok + 1, 1] = e
            n_tok += 2
            i = e
            n_points += 1
            i = _spaces(d, i, end)
            if i < end and d[i] == 44:  # , next point
                i = _spaces(d, i + 1, end)
                continue
            if i < end and d[i] == 41:  # ) end of ring
                i = _spaces(d, i + 1, end)
                break
            return -1, n_rings, n_points, n_tok, part_ring, ring_point, tokens
        ring_point = _grow(ring_point, n_rings + 1)
        n_rings += 1
        ring_point[n_rings] = n_points
        if i < end and d[i] == 44:
            i = _spaces(d, i + 1, end)
            continue
        if i < end and d[i] == 41:
            return i + 1, n_rings, n_points, n_tok, part_ring, ring_point, tokens
        return -1, n_rings, n_points, n_tok, part_ring, ring_point, tokens


_POLYGON_WORD = np.frombuffer(b"POLYGON", np.uint8).copy()
_MULTI_WORD = np.frombuffer(b"MULTIPOLYGON", np.uint8).copy()
_EMPTY_WORD = np.frombuffer(b"EMPTY", np.uint8).copy()


@numba.njit(cache=True)
def _scan_rows(data, offsets, poly_w, multi_w, empty_w):
    """Per row: kind (other, polygon, multipolygon, empty) and part offsets; per part: ring offsets; per ring:
    point offsets; the numbers' bytes back to back with their offsets. A row outside the grammar adds nothing."""
    n = len(offsets) - 1
    kind = np.zeros(n, np.int8)
    row_part = np.zeros(n + 1, np.int64)
    part_ring = np.zeros(n + 1, np.int64)  # grows: one entry per part
    ring_point = np.zeros(n + 1, np.int64)  # grows: one entry per ring
    tokens = np.empty((max(8 * n, 16), 2), np.int64)
    n_parts = n_rings = n_points = n_tok = 0
    for r in range(n):
        i, end = offsets[r], offsets[r + 1]
        saved = (n_parts, n_rings, n_points, n_tok)
        tokens = _grow(tokens, n_tok + (end - i) // 2 + 2)  # room for every number the row can hold
        i = _spaces(data, i, end)
        ok = False
        code = _OTHER
        if _word(data, i, end, multi_w):
            code = _MULTI
            i = _spaces(data, i + len(multi_w), end)
            if i < end and data[i] == 40:
                i = _spaces(data, i + 1, end)
                while True:
                    i, n_rings, n_points, n_tok, part_ring, ring_point, tokens = _polygon_text(
                        data, i, end, part_ring, n_rings, ring_point, n_points, tokens, n_tok
                    )
                    if i < 0:
                        break
                    part_ring = _grow(part_ring, n_parts + 1)
                    n_parts += 1
                    part_ring[n_parts] = n_rings
                    i = _spaces(data, i, end)
                    if i < end and data[i] == 44:
                        i = _spaces(data, i + 1, end)
                        continue
                    if i < end and data[i] == 41:
                        ok = _spaces(data, i + 1, end) == end
                    break
        elif _word(data, i, end, poly_w):
            code = _POLYGON
            j = i + len(poly_w)
            i = _spaces(data, j, end)
            if i > j and _word(data, i, end, empty_w):
                code = _EMPTY
                ok = _spaces(data, i + len(empty_w), end) == end
            else:
                i, n_rings, n_points, n_tok, part_ring, ring_point, tokens = _polygon_text(
                    data, i, end, part_ring, n_rings, ring_point, n_points, tokens, n_tok
                )
                if i >= 0:
                    part_ring = _grow(part_ring, n_parts + 1)
                    n_parts += 1
                    part_ring[n_parts] = n_rings
                    ok = _spaces(data, i, end) == end
        if ok:
            kind[r] = code
        else:  # back out whatever this row appended
            n_parts, n_rings, n_points, n_tok = saved
        row_part[r + 1] = n_parts
    compact, token_offsets = _gather_tokens(data, tokens[:n_tok])
    return kind, row_part, part_ring[: n_parts + 1], ring_point[: n_rings + 1], compact, token_offsets


@numba.njit(cache=True)
def _gather_tokens(data: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The number tokens' bytes, back to back, and their offsets (an Arrow large_string array)."""
    offsets = np.empty(len(tokens) + 1, np.int64)
    offsets[0] = 0
    for k in range(len(tokens)):
        offsets[k + 1] = offsets[k] + tokens[k, 1] - tokens[k, 0]
    out = np.empty(offsets[-1], np.uint8)
    j = 0
    for k in range(len(tokens)):  # byte by byte: a slice per token costs more than its few bytes
        for b in range(tokens[k, 0], tokens[k, 1]):
            out[j] = data[b]
            j += 1
    return out, offsets


@numba.njit(cache=True)
def _check_rings(xy, kind, row_part, part_ring, ring_point) -> None:
    """Rows with a ring that is not closed or has fewer than 4 points go to GEOS (which refuses them)."""
    for r in range(len(kind)):
        if kind[r] != _POLYGON and kind[r] != _MULTI:
            continue
        for p in range(row_part[r], row_part[r + 1]):
            for g in range(part_ring[p], part_ring[p + 1]):
                s, e = ring_point[g], ring_point[g + 1]
                if e - s < 4 or xy[s, 0] != xy[e - 1, 0] or xy[s, 1] != xy[e - 1, 1]:
                    kind[r] = _OTHER


@numba.njit(cache=True)
def _ragged(xy, rows, row_part, part_ring, ring_point):
    """GeoArrow arrays of ``rows``: coordinates, ring offsets, part (polygon) offsets, row offsets."""
    n_parts = n_rings = n_points = 0
    for r in rows:
        for p in range(row_part[r], row_part[r + 1]):
            for g in range(part_ring[p], part_ring[p + 1]):
                n_points += ring_point[g + 1] - ring_point[g]
            n_rings += part_ring[p + 1] - part_ring[p]
        n_parts += row_part[r + 1] - row_part[r]
    coords = np.empty((n_points, 2))
    ring_offsets = np.zeros(n_rings + 1, np.int64)
    part_offsets = np.zeros(n_parts + 1, np.int64)
    geom_offsets = np.zeros(len(rows) + 1, np.int64)
    k = g_out = p_out = 0
    for i in range(len(rows)):
        r = rows[i]
        for p in range(row_part[r], row_part[r + 1]):
            for g in range(part_ring[p], part_ring[p + 1]):
                for q in range(ring_point[g], ring_point[g + 1]):
                    coords[k, 0] = xy[q, 0]
                    coords[k, 1] = xy[q, 1]
                    k += 1
                g_out += 1
                ring_offsets[g_out] = k
            p_out += 1
            part_offsets[p_out] = g_out
        geom_offsets[i + 1] = p_out
    return coords, ring_offsets, part_offsets, geom_offsets


@numba.njit(cache=True)
def _convex_rows(xy, kind, row_part, part_ring, ring_point) -> np.ndarray:
    """Rows that are one ring turning strictly one way at every vertex, once around (see :func:`read_polygons`).

    Repeated points are skipped (GEOS accepts them). A turn counts when its cross product exceeds
    1e-14 |e1| |e2|: the differences are correctly rounded and the products and their difference
    err by at most ~9e-16 |e1| |e2|, so the exact orientation has the same strict sign.
    """
    out = np.zeros(len(kind), np.bool_)
    for r in range(len(kind)):
        if kind[r] != _POLYGON or part_ring[row_part[r] + 1] - part_ring[row_part[r]] != 1:
            continue
        g = part_ring[row_part[r]]
        s, e = ring_point[g], ring_point[g + 1] - 1  # without the closing point
        ok = True
        for q in range(s, e):
            if not (np.isfinite(xy[q, 0]) and np.isfinite(xy[q, 1])):
                ok = False
        if not ok or e - s < 3:
            continue
        first = -1
        for q in range(s, e):  # the first edge of non-zero length
            if xy[q + 1, 0] != xy[q, 0] or xy[q + 1, 1] != xy[q, 1]:
                first = q
                break
        if first < 0:
            continue
        px, py = xy[first + 1, 0] - xy[first, 0], xy[first + 1, 1] - xy[first, 1]
        sign = 0
        turns = 0
        total = 0.0
        for step in range(1, e - s + 1):  # every later edge, and back to the first
            q = s + (first - s + step) % (e - s)
            qx, qy = xy[q + 1, 0] - xy[q, 0], xy[q + 1, 1] - xy[q, 1]
            if qx == 0.0 and qy == 0.0:
                continue
            cross = px * qy - py * qx
            margin = 1e-14 * (abs(px) + abs(py)) * (abs(qx) + abs(qy))
            turn = 1 if cross > margin else (-1 if cross < -margin else 0)
            if turn == 0 or (sign != 0 and turn != sign):
                ok = False
                break
            sign = turn
            turns += 1
            total += np.arctan2(cross, px * qx + py * qy)
            px, py = qx, qy
        out[r] = ok and turns >= 3 and abs(abs(total) - 2 * np.pi) < 1e-6
    return out


@numba.njit(cache=True)
def _assemble(xy, kind, row_part, part_ring, ring_point):
    """After the numbers are read: rows with an open or short ring to GEOS (``kind`` updated), the convex
    flags, the largest absolute coordinates, and the GeoArrow arrays of the polygon rows and of the multipolygon rows (one numba entry
    point: each costs ~40 ms to load from numba's cache in a new process)."""
    _check_rings(xy, kind, row_part, part_ring, ring_point)
    convex = _convex_rows(xy, kind, row_part, part_ring, ring_point)
    reach = np.full(len(kind), np.nan)
    for r in range(len(kind)):
        if kind[r] == _EMPTY:
            reach[r] = 0.0
        elif kind[r] != _OTHER:
            top = 0.0
            for q in range(ring_point[part_ring[row_part[r]]], ring_point[part_ring[row_part[r + 1]]]):
                top = max(top, abs(xy[q, 0]), abs(xy[q, 1]))
            reach[r] = top
    polygons = _ragged(xy, np.flatnonzero(kind == _POLYGON), row_part, part_ring, ring_point)
    multipolygons = _ragged(xy, np.flatnonzero(kind == _MULTI), row_part, part_ring, ring_point)
    return convex, reach, polygons, multipolygons
