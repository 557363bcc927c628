"""Building-pixel counts of two polygon sets, exactly as GDAL's rasterizer burns them, in numba.

:func:`spacenet7.metrics.pixel.pixel_counts` used to burn each month's truth and proposals into
1024-pixel blocks with ``rasterio.features.rasterize`` and count ``&`` and ``|`` of the masks: 48
GDAL calls for 24 months, each converting every polygon to GeoJSON and OGR, most of ``spacenet7
evaluate``'s time. Here the same blocks get the same pixels from the same scanline fill, written
in numba over flat coordinate arrays of all months at once. The counts are the rasters' counts,
not an approximation: the fill follows GDAL 3.10's ``GDALdllImageFilledPolygon`` (pixel centres on
the lines ``y + 0.5``, even-odd over a polygon's rings, half-open edges, a horizontal edge exactly
on a centre line burnt only when it runs right to left), GDAL's ring orientation (rings walked
clockwise, ``OGRLinearRing::isClockwise``), a multipolygon's parts burnt one by one, and each
block's own pixel coordinates (``x - col0``, ``y - row0``) so that every rounding is GDAL's.
``tests/test_pixel_runs.py`` compares the two paths (``pixel_counts(..., raster=True)``) on
vectorized footprints, rotated and jittered outlines, holes, multipolygons, overlapping proposals,
vertices and edges on pixel centres, and block edges.
"""

from __future__ import annotations

import numba
import numpy as np
import shapely


class RingSet:
    """Polygons as flat arrays: coordinates, ring offsets, part (polygon) -> ring offsets and
    geometry -> part offsets, and each geometry's bounds (as GEOS gives them)."""

    def __init__(self, geoms: np.ndarray) -> None:
        geoms = np.asarray(geoms, dtype=object)
        kinds = shapely.get_type_id(geoms)
        # neither polygon nor multipolygon (a collection that make_valid left): not burnt here, flagged
        self.other = np.zeros(len(geoms), bool)
        if not np.isin(kinds, [3, 6]).all():  # (shapely.GeometryType POLYGON, MULTIPOLYGON)
            self.other = ~np.isin(kinds, [3, 6]) & ~shapely.is_empty(geoms)
            geoms = geoms.copy()
            geoms[self.other] = shapely.Polygon()
            kinds = shapely.get_type_id(geoms)
        self.bounds = np.ascontiguousarray(shapely.bounds(geoms), dtype=np.float64).reshape(-1, 4)
        n = len(geoms)
        simple = n == 0 or (bool((kinds == 3).all()) and not shapely.get_num_interior_rings(geoms).any())
        if simple:  # one exterior ring per geometry: no copies of parts or rings
            xy, ring_of = shapely.get_coordinates(geoms, return_index=True)
            self.part_start = np.arange(n + 1, dtype=np.int64)
            self.geom_start = np.arange(n + 1, dtype=np.int64)
            n_rings = n
        else:
            parts, part_geom = shapely.get_parts(geoms, return_index=True)
            rings, ring_part = shapely.get_rings(parts, return_index=True)
            xy, ring_of = shapely.get_coordinates(rings, return_index=True)
            self.geom_start = _offsets(part_geom, n)
            self.part_start = _offsets(ring_part, len(parts))
            n_rings = len(rings)
        self.xy = np.ascontiguousarray(xy, dtype=np.float64).reshape(-1, 2)
        self.ring_start = _offsets(ring_of, n_rings)


def _offsets(index: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(index, minlength=n), out=out[1:])
    return out


def group_counts(
    t: RingSet, t_start: np.ndarray, p: RingSet, p_start: np.ndarray, region: tuple[int, int, int, int] | None, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per group (an AOI's month), the pixels burnt by both sets and by either, as ``pixel._box_counts``
    counts them on rasters of ``block``-pixel squares: the group's geometries are ``t_start[k]:t_start[k + 1]``
    of ``t`` (and of ``p``); its frame is ``region`` ``(r0, r1, c0, c1)`` or else its polygons' pixel bounds;
    only the squares that some polygon's pixel bounds reach are counted, each polygon in every square its
    bounds touch."""
    r0, r1, c0, c1 = region if region is not None else (0, 0, 0, 0)
    return _group_counts(
        t.xy, t.ring_start, t.part_start, t.geom_start, t.bounds, t_start,
        p.xy, p.ring_start, p.part_start, p.geom_start, p.bounds, p_start,
        region is not None, r0, r1, c0, c1, block,
    )  # fmt: skip


@numba.njit(cache=True)
def _clockwise(xy: np.ndarray, s: int, n: int) -> bool:
    """``OGRLinearRing::isClockwise`` of the closed ring ``xy[s:s + n]``."""
    if n < 2:
        return True
    fallback = False
    v = 0
    for i in range(1, n - 1):
        if xy[s + i, 1] < xy[s + v, 1] or (xy[s + i, 1] == xy[s + v, 1] and xy[s + i, 0] > xy[s + v, 0]):
            v = i
            fallback = False
        elif xy[s + i, 1] == xy[s + v, 1] and xy[s + i, 0] == xy[s + v, 0]:
            fallback = True
    nxt = v - 1
    if nxt < 0:
        nxt = n - 2
    if abs(xy[s + nxt, 0] - xy[s + v, 0]) < 1e-5 and abs(xy[s + nxt, 1] - xy[s + v, 1]) < 1e-5:
        fallback = True
    dx0 = xy[s + nxt, 0] - xy[s + v, 0]
    dy0 = xy[s + nxt, 1] - xy[s + v, 1]
    nxt = v + 1
    if nxt >= n - 1:
        nxt = 0
    if abs(xy[s + nxt, 0] - xy[s + v, 0]) < 1e-5 and abs(xy[s + nxt, 1] - xy[s + v, 1]) < 1e-5:
        fallback = True
    dx1 = xy[s + nxt, 0] - xy[s + v, 0]
    dy1 = xy[s + nxt, 1] - xy[s + v, 1]
    cross = dx1 * dy0 - dx0 * dy1
    if not fallback:
        if cross > 0:
            return False
        if cross < 0:
            return True
    total = xy[s, 0] * (xy[s + 1, 1] - xy[s + n - 1, 1])
    for i in range(1, n - 1):
        total += xy[s + i, 0] * (xy[s + i + 1, 1] - xy[s + i - 1, 1])
    total += xy[s + n - 1, 0] * (xy[s, 1] - xy[s + n - 2, 1])
    return total < 0


@numba.njit(cache=True)
def _burn(mask: np.ndarray, box: np.ndarray, y: int, a: int, b: int) -> None:
    """Pixels ``[a, b)`` of row ``y`` (already cut to the block) set in the bit mask (64 pixels a word),
    and the box of burnt pixels grown."""
    wa, wb = a >> 6, (b - 1) >> 6
    lo = np.uint64(0xFFFFFFFFFFFFFFFF) << np.uint64(a & 63)
    hi = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(63 - ((b - 1) & 63))
    if wa == wb:
        mask[y, wa] |= lo & hi
    else:
        mask[y, wa] |= lo
        for k in range(wa + 1, wb):
            mask[y, k] = np.uint64(0xFFFFFFFFFFFFFFFF)
        mask[y, wb] |= hi
    box[0] = min(box[0], y)
    box[1] = max(box[1], y + 1)
    box[2] = min(box[2], a)
    box[3] = max(box[3], b)


@numba.njit(cache=True)
def _fill_polygon(
    xy: np.ndarray,
    ring_start: np.ndarray,
    ring0: int,
    ring1: int,
    bx: float,
    by: float,
    h: int,
    w: int,
    lx: np.ndarray,
    ly: np.ndarray,
    ints: np.ndarray,
    mask: np.ndarray,
    box: np.ndarray,
) -> None:
    """GDAL's filled-polygon scanline of one polygon (rings ``ring0:ring1``) on a ``h`` x ``w`` block whose
    pixel (0, 0) has its corner at ``(bx, by)``, burnt into ``mask``."""
    n = 0
    for r in range(ring0, ring1):  # the block's pixel coordinates
        s, m = ring_start[r], ring_start[r + 1] - ring_start[r]
        for i in range(m):
            lx[n + i] = xy[s + i, 0] - bx
            ly[n + i] = xy[s + i, 1] - by
        n += m
    if n == 0:
        return
    dminy = ly[0]
    dmaxy = ly[0]
    for i in range(1, n):
        dminy = min(dminy, ly[i])
        dmaxy = max(dmaxy, ly[i])
    miny = max(int(dminy), 0)  # C casts truncate toward zero
    maxy = min(int(dmaxy), h - 1)
    for y in range(miny, maxy + 1):
        dy = y + 0.5
        count = 0
        off = 0
        for r in range(ring0, ring1):
            m = ring_start[r + 1] - ring_start[r]
            for i in range(m):
                if i == 0:
                    i1, i2 = off + m - 1, off
                else:
                    i1, i2 = off + i - 1, off + i
                dy1, dy2 = ly[i1], ly[i2]
                if (dy1 < dy and dy2 < dy) or (dy1 > dy and dy2 > dy):
                    continue
                if dy1 < dy2:
                    dx1, dx2 = lx[i1], lx[i2]
                elif dy1 > dy2:
                    dy1, dy2 = dy2, dy1
                    dx1, dx2 = lx[i2], lx[i1]
                else:  # horizontal, on the centre line: burnt when it runs right to left as GDAL walks the ring,
                    # clockwise (the other way round where the ring runs counter-clockwise)
                    if lx[i1] != lx[i2] and (lx[i1] > lx[i2]) == _clockwise(xy, ring_start[r], m):
                        a = max(int(np.floor(min(lx[i1], lx[i2]) + 0.5)), 0)
                        b = min(int(np.floor(max(lx[i1], lx[i2]) + 0.5)), w)
                        if a < b:
                            _burn(mask, box, y, a, b)
                    continue
                if dy < dy2 and dy >= dy1:
                    ints[count] = int(np.floor((dy - dy1) * (dx2 - dx1) / (dy2 - dy1) + dx1 + 0.5))
                    count += 1
            off += m
        if count > 16:
            ints[:count].sort()
        else:  # insertion sort: a handful of crossings
            for i in range(1, count):
                v = ints[i]
                j = i
                while j > 0 and ints[j - 1] > v:
                    ints[j] = ints[j - 1]
                    j -= 1
                ints[j] = v
        for i in range(0, count - 1, 2):
            a, b = max(ints[i], 0), min(ints[i + 1], w)
            if a < b:
                _burn(mask, box, y, a, b)


@numba.njit(cache=True)
def _block_keys(
    bounds: np.ndarray, g0: int, g1: int, keys: np.ndarray, k: int, r0: int, r1: int, c0: int, c1: int, block: int, ncb: int
) -> tuple[np.ndarray, int]:
    """The blocks ``pixel._box_counts`` rasterizes: those the pixel bounds of some polygon reach."""
    for g in range(g0, g1):
        x0, y0, x1, y1 = bounds[g, 0], bounds[g, 1], bounds[g, 2], bounds[g, 3]
        if np.isnan(x0):  # an empty geometry
            continue
        ra, rb = max(r0, int(np.floor(y0))), min(r1, int(np.ceil(y1)))
        ca, cb = max(c0, int(np.floor(x0))), min(c1, int(np.ceil(x1)))
        if ra < rb and ca < cb:
            for bi in range((ra - r0) // block, (rb - 1 - r0) // block + 1):
                for bj in range((ca - c0) // block, (cb - 1 - c0) // block + 1):
                    if k == len(keys):
                        grown = np.empty(2 * len(keys), np.int64)
                        grown[:k] = keys
                        keys = grown
                    keys[k] = bi * ncb + bj
                    k += 1
    return keys, k


@numba.njit(cache=True)
def _block_members(
    bounds: np.ndarray,
    geom_start: np.ndarray,
    g0: int,
    g1: int,
    blocks: np.ndarray,
    r0: int,
    r1: int,
    c0: int,
    c1: int,
    block: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``blocks``, the geometries the block's raster gets (``STRtree.query`` of its frame: the
    envelopes intersect, closed boxes): offsets into a list of geometry indices."""
    nrb = (r1 - r0 + block - 1) // block
    ncb = (c1 - c0 + block - 1) // block
    pairs = np.empty((max(g1 - g0, 16), 2), np.int64)
    k = 0
    for g in range(g0, g1):
        x0, y0, x1, y1 = bounds[g, 0], bounds[g, 1], bounds[g, 2], bounds[g, 3]
        if np.isnan(x0) or geom_start[g] == geom_start[g + 1]:
            continue
        lo_i = max(int(np.floor((y0 - r0) / block)) - 1, 0)
        hi_i = min(int(np.floor((y1 - r0) / block)) + 1, nrb - 1)
        lo_j = max(int(np.floor((x0 - c0) / block)) - 1, 0)
        hi_j = min(int(np.floor((x1 - c0) / block)) + 1, ncb - 1)
        for bi in range(lo_i, hi_i + 1):
            br0 = r0 + bi * block
            if not (y0 <= br0 + min(block, r1 - br0) and y1 >= br0):
                continue
            for bj in range(lo_j, hi_j + 1):
                bc0 = c0 + bj * block
                if not (x0 <= bc0 + min(block, c1 - bc0) and x1 >= bc0):
                    continue
                at = np.searchsorted(blocks, bi * ncb + bj)
                if at == len(blocks) or blocks[at] != bi * ncb + bj:
                    continue
                if k == len(pairs):
                    grown = np.empty((2 * len(pairs), 2), np.int64)
                    grown[:k] = pairs
                    pairs = grown
                pairs[k, 0] = at
                pairs[k, 1] = g
                k += 1
    start = np.zeros(len(blocks) + 1, np.int64)
    for i in range(k):
        start[pairs[i, 0] + 1] += 1
    for b in range(len(blocks)):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    members = np.empty(k, np.int64)
    for i in range(k):
        members[fill[pairs[i, 0]]] = pairs[i, 1]
        fill[pairs[i, 0]] += 1
    return start, members


@numba.njit(cache=True)
def _longest_part(ring_start: np.ndarray, part_start: np.ndarray) -> int:
    longest = 1
    for p in range(len(part_start) - 1):
        longest = max(longest, ring_start[part_start[p + 1]] - ring_start[part_start[p]])
    return longest


@numba.njit(cache=True)
def _frame_counts(
    txy, t_ring, t_part, t_geom, t_bounds, tg0, tg1, pxy, p_ring, p_part, p_geom, p_bounds, pg0, pg1,
    r0, r1, c0, c1, block, lx, ly, ints, mt, mp, box,
) -> tuple[int, int]:  # fmt: skip
    """One group's counts on the frame ``[r0, r1) x [c0, c1)``."""
    ncb = (c1 - c0 + block - 1) // block
    keys = np.empty(64, np.int64)
    keys, k = _block_keys(t_bounds, tg0, tg1, keys, 0, r0, r1, c0, c1, block, ncb)
    keys, k = _block_keys(p_bounds, pg0, pg1, keys, k, r0, r1, c0, c1, block, ncb)
    blocks = np.unique(keys[:k])
    t_start, t_members = _block_members(t_bounds, t_geom, tg0, tg1, blocks, r0, r1, c0, c1, block)
    p_start, p_members = _block_members(p_bounds, p_geom, pg0, pg1, blocks, r0, r1, c0, c1, block)
    inter = union = 0
    for b in range(len(blocks)):
        bi, bj = blocks[b] // ncb, blocks[b] % ncb
        br0, bc0 = r0 + bi * block, c0 + bj * block
        h, w = min(block, r1 - br0), min(block, c1 - bc0)
        box[0], box[1], box[2], box[3] = h, 0, w, 0
        for i in range(t_start[b], t_start[b + 1]):
            g = t_members[i]
            for p in range(t_geom[g], t_geom[g + 1]):
                _fill_polygon(txy, t_ring, t_part[p], t_part[p + 1], float(bc0), float(br0), h, w, lx, ly, ints, mt, box)
        for i in range(p_start[b], p_start[b + 1]):
            g = p_members[i]
            for p in range(p_geom[g], p_geom[g + 1]):
                _fill_polygon(pxy, p_ring, p_part[p], p_part[p + 1], float(bc0), float(br0), h, w, lx, ly, ints, mp, box)
        for y in range(box[0], box[1]):  # count, then clear, only the burnt box
            for k in range(box[2] >> 6, ((box[3] - 1) >> 6) + 1):
                inter += _popcount(mt[y, k] & mp[y, k])
                union += _popcount(mt[y, k] | mp[y, k])
                mt[y, k] = 0
                mp[y, k] = 0
    return inter, union


@numba.njit(cache=True)
def _popcount(v: np.uint64) -> int:
    """Set bits of a 64-bit word (SWAR)."""
    v = v - ((v >> np.uint64(1)) & np.uint64(0x5555555555555555))
    v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
    v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((v * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(cache=True)
def _extent(bounds: np.ndarray, g0: int, g1: int, ext: np.ndarray) -> None:
    for g in range(g0, g1):
        if not np.isnan(bounds[g, 0]):  # (empty geometries have NaN bounds)
            ext[0], ext[1] = min(ext[0], bounds[g, 0]), min(ext[1], bounds[g, 1])
            ext[2], ext[3] = max(ext[2], bounds[g, 2]), max(ext[3], bounds[g, 3])


@numba.njit(cache=True)
def _group_counts(
    txy, t_ring, t_part, t_geom, t_bounds, t_start, pxy, p_ring, p_part, p_geom, p_bounds, p_start,
    has_region, rr0, rr1, rc0, rc1, block,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    longest = max(_longest_part(t_ring, t_part), _longest_part(p_ring, p_part))
    lx = np.empty(longest)
    ly = np.empty(longest)
    ints = np.empty(longest + 1, np.int64)
    mt = np.zeros((block, (block + 63) // 64), np.uint64)  # bit masks: 64 pixels a word
    mp = np.zeros((block, (block + 63) // 64), np.uint64)
    box = np.empty(4, np.int64)
    n = len(t_start) - 1
    inter = np.zeros(n, np.int64)
    union = np.zeros(n, np.int64)
    for k in range(n):
        tg0, tg1, pg0, pg1 = t_start[k], t_start[k + 1], p_start[k], p_start[k + 1]
        if has_region:
            r0, r1, c0, c1 = rr0, rr1, rc0, rc1
        else:  # the pixel bounds of the group's polygons (shapely.total_bounds, floor and ceil)
            ext = np.array([np.inf, np.inf, -np.inf, -np.inf])
            _extent(t_bounds, tg0, tg1, ext)
            _extent(p_bounds, pg0, pg1, ext)
            x0, y0, x1, y1 = ext[0], ext[1], ext[2], ext[3]
            if x0 > x1:  # no polygon in this month
                continue
            r0, r1, c0, c1 = int(np.floor(y0)), int(np.ceil(y1)), int(np.floor(x0)), int(np.ceil(x1))
        inter[k], union[k] = _frame_counts(
            txy, t_ring, t_part, t_geom, t_bounds, tg0, tg1, pxy, p_ring, p_part, p_geom, p_bounds, pg0, pg1,
            r0, r1, c0, c1, block, lx, ly, ints, mt, mp, box,
        )  # fmt: skip
    return inter, union
