"""Exact intersection areas of many polygon pairs, fast.

Building footprints are small and either convex (rectangles, truth outlines) or rectilinear
(pixel-edge polygons from ``polygonize``). Both cases have an exact kernel compiled with numba,
for holeless single polygons:

- one polygon convex: Sutherland-Hodgman clipping of the other ring against it; the clipped
  ring may touch itself, but its shoelace area is exactly the area of the intersection for any
  simple subject ring;
- both rectilinear: a sweep over horizontal slabs between consecutive vertex rows, where each
  polygon is a union of x-intervals bounded by its active vertical edges; the overlap length
  times the slab height, summed.

Other pairs (holes, several parts, non-convex and not rectilinear) go to GEOS
(``shapely.intersection``), split over threads; identical geometries skip the overlay.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import shapely

_POLYGON = shapely.GeometryType.POLYGON


@numba.njit(cache=True)
def _ring_convexity(xy: np.ndarray, start: np.ndarray, out: np.ndarray) -> None:
    """``out[k]`` = +1 (convex, counter-clockwise), -1 (convex, clockwise) or 0 for ring ``k``.

    Collinear and repeated vertices are allowed; the turns must all have one sign and add up to
    one full turn (which rules out self-intersecting stars).
    """
    for k in range(len(start) - 1):
        s, n = start[k], start[k + 1] - start[k] - 1  # the closing vertex repeats the first
        out[k] = 0
        first = -1
        for i in range(n):
            if xy[s + i + 1, 0] != xy[s + i, 0] or xy[s + i + 1, 1] != xy[s + i, 1]:
                first = i
                break
        if n < 3 or first < 0:
            continue
        px, py = xy[s + first + 1, 0] - xy[s + first, 0], xy[s + first + 1, 1] - xy[s + first, 1]
        sign = 0
        total = 0.0
        ok = True
        for step in range(1, n + 1):  # every edge after the first non-degenerate one, and back to it
            i = (first + step) % n
            qx, qy = xy[s + i + 1, 0] - xy[s + i, 0], xy[s + i + 1, 1] - xy[s + i, 1]
            if qx == 0.0 and qy == 0.0:
                continue
            cross = px * qy - py * qx
            if (cross > 0 and sign < 0) or (cross < 0 and sign > 0):
                ok = False
                break
            if cross != 0:
                sign = 1 if cross > 0 else -1
            total += np.arctan2(cross, px * qx + py * qy)
            px, py = qx, qy
        if ok and sign != 0 and abs(abs(total) - 2 * np.pi) < 1e-6:
            out[k] = sign


@numba.njit(cache=True)
def _clip_areas(
    xy: np.ndarray, start: np.ndarray, convex: np.ndarray, pa: np.ndarray, pb: np.ndarray, out: np.ndarray, done: np.ndarray
) -> None:
    """Intersection area of ring pairs ``(pa[k], pb[k])`` where one of them is convex."""
    longest = 0
    for k in range(len(start) - 1):
        longest = max(longest, start[k + 1] - start[k])
    cap = 2 * longest + 8
    buf_a = np.empty((cap, 2))
    buf_b = np.empty((cap, 2))
    for k in range(len(pa)):
        i, j = pa[k], pb[k]
        if convex[j] != 0:
            subj, clip = i, j
        elif convex[i] != 0:
            subj, clip = j, i
        else:
            done[k] = False
            continue
        done[k] = True
        # the subject ring, without its closing vertex
        n = start[subj + 1] - start[subj] - 1
        for v in range(n):
            buf_a[v, 0] = xy[start[subj] + v, 0]
            buf_a[v, 1] = xy[start[subj] + v, 1]
        cur, nxt = buf_a, buf_b
        orient = convex[clip]
        cs, ce = start[clip], start[clip + 1] - 1
        for c in range(cs, ce):
            if n == 0:
                break
            ax, ay = xy[c, 0], xy[c, 1]
            ex, ey = xy[c + 1, 0] - ax, xy[c + 1, 1] - ay
            if ex == 0.0 and ey == 0.0:
                continue
            if 2 * n + 2 > cap:  # a pathological ring: leave the pair to GEOS
                done[k] = False
                break
            m = 0
            for v in range(n):
                sx, sy = cur[v, 0], cur[v, 1]
                w = (v + 1) % n
                tx, ty = cur[w, 0], cur[w, 1]
                ds = orient * (ex * (sy - ay) - ey * (sx - ax))  # >= 0: inside (left of a CCW edge)
                dt = orient * (ex * (ty - ay) - ey * (tx - ax))
                if ds >= 0:
                    nxt[m, 0] = sx
                    nxt[m, 1] = sy
                    m += 1
                    if dt < 0:
                        r = ds / (ds - dt)
                        nxt[m, 0] = sx + r * (tx - sx)
                        nxt[m, 1] = sy + r * (ty - sy)
                        m += 1
                elif dt >= 0:
                    r = ds / (ds - dt)
                    nxt[m, 0] = sx + r * (tx - sx)
                    nxt[m, 1] = sy + r * (ty - sy)
                    m += 1
            cur, nxt = nxt, cur
            n = m
        if not done[k]:
            continue
        area = 0.0
        if n >= 3:
            x0, y0 = cur[0, 0], cur[0, 1]
            for v in range(1, n - 1):
                area += (cur[v, 0] - x0) * (cur[v + 1, 1] - y0) - (cur[v + 1, 0] - x0) * (cur[v, 1] - y0)
        out[k] = abs(area) / 2


@numba.njit(cache=True)
def _ring_rectilinear(xy: np.ndarray, start: np.ndarray, out: np.ndarray) -> None:
    """``out[k]`` = True when every edge of ring ``k`` is horizontal or vertical (pixel-edge polygons)."""
    for k in range(len(start) - 1):
        ok = start[k + 1] - start[k] >= 5
        for i in range(start[k], start[k + 1] - 1):
            if xy[i + 1, 0] != xy[i, 0] and xy[i + 1, 1] != xy[i, 1]:
                ok = False
                break
        out[k] = ok


@numba.njit(cache=True)
def _active_xs(
    ex: np.ndarray, elo: np.ndarray, ehi: np.ndarray, s: int, e: int, ptr: int, act: np.ndarray, n: int, ym: float, xs: np.ndarray
) -> tuple[int, int]:
    """Sweep step for one ring: admit the edges (sorted by ``elo``) starting below ``ym``, drop those
    ending below it, and write the active edges' x, sorted, to ``xs``. Returns (ptr, n)."""
    while ptr < e and elo[ptr] < ym:
        act[n] = ptr
        n += 1
        ptr += 1
    m = 0
    for t in range(n):
        if ehi[act[t]] > ym:
            act[m] = act[t]
            m += 1
    for t in range(m):  # insertion sort: a handful of active edges
        x = ex[act[t]]
        u = t
        while u > 0 and xs[u - 1] > x:
            xs[u] = xs[u - 1]
            u -= 1
        xs[u] = x
    return ptr, m


@numba.njit(cache=True)
def _rectilinear_areas(
    ex: np.ndarray, elo: np.ndarray, ehi: np.ndarray, estart: np.ndarray, pa: np.ndarray, pb: np.ndarray, out: np.ndarray
) -> None:
    """Intersection area of rectilinear ring pairs by a sweep over horizontal slabs.

    Each ring is given by its vertical edges ``(x, ylo, yhi)`` sorted by ``ylo``. Between two
    consecutive edge ends both rings are unions of x-intervals (even-odd rule over the active
    edges); the overlap length of the two interval lists times the slab height is the slab's area.
    Exact for axis-parallel edges.
    """
    longest = 1
    for k in range(len(estart) - 1):
        longest = max(longest, estart[k + 1] - estart[k])
    ys = np.empty(4 * longest)
    act_a = np.empty(longest, np.int64)
    act_b = np.empty(longest, np.int64)
    xa = np.empty(longest)
    xb = np.empty(longest)
    for k in range(len(pa)):
        sa, ea, sb, eb = estart[pa[k]], estart[pa[k] + 1], estart[pb[k]], estart[pb[k] + 1]
        ny = 0
        for i in range(sa, ea):
            ys[ny] = elo[i]
            ys[ny + 1] = ehi[i]
            ny += 2
        for i in range(sb, eb):
            ys[ny] = elo[i]
            ys[ny + 1] = ehi[i]
            ny += 2
        ys[:ny].sort()
        area = 0.0
        pta, ptb, na, nb = sa, sb, 0, 0
        for j in range(ny - 1):
            y0, y1 = ys[j], ys[j + 1]
            if y1 <= y0:
                continue
            ym = 0.5 * (y0 + y1)
            pta, na = _active_xs(ex, elo, ehi, sa, ea, pta, act_a, na, ym, xa)
            ptb, nb = _active_xs(ex, elo, ehi, sb, eb, ptb, act_b, nb, ym, xb)
            i = 0
            q = 0
            length = 0.0
            while i + 1 < na and q + 1 < nb:  # two-pointer overlap of [xa0, xa1], [xa2, xa3], ... with xb
                lo = max(xa[i], xb[q])
                hi = min(xa[i + 1], xb[q + 1])
                if hi > lo:
                    length += hi - lo
                if xa[i + 1] < xb[q + 1]:
                    i += 2
                else:
                    q += 2
            area += length * (y1 - y0)
        out[k] = area


@numba.njit(cache=True)
def _vertical_edges(xy: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vertical edges ``(x, ylo, yhi)`` of every ring, sorted by ring then ``ylo``, and per-ring offsets."""
    nr = len(start) - 1
    estart = np.zeros(nr + 1, np.int64)
    for k in range(nr):
        c = 0
        for i in range(start[k], start[k + 1] - 1):
            if xy[i, 0] == xy[i + 1, 0] and xy[i, 1] != xy[i + 1, 1]:
                c += 1
        estart[k + 1] = estart[k] + c
    ex = np.empty(estart[nr])
    elo = np.empty(estart[nr])
    ehi = np.empty(estart[nr])
    for k in range(nr):
        n = estart[k]
        for i in range(start[k], start[k + 1] - 1):
            if xy[i, 0] == xy[i + 1, 0] and xy[i, 1] != xy[i + 1, 1]:
                x, lo, hi = xy[i, 0], min(xy[i, 1], xy[i + 1, 1]), max(xy[i, 1], xy[i + 1, 1])
                u = n
                while u > estart[k] and elo[u - 1] > lo:  # insertion sort by ylo within the ring
                    ex[u], elo[u], ehi[u] = ex[u - 1], elo[u - 1], ehi[u - 1]
                    u -= 1
                ex[u], elo[u], ehi[u] = x, lo, hi
                n += 1
    return ex, elo, ehi, estart


def geos_intersection_area(a: np.ndarray, b: np.ndarray, threads: int = 2, min_chunk: int = 2000) -> np.ndarray:
    """Element-wise intersection areas with GEOS; large batches run on threads (GEOS releases the GIL)."""
    if len(a) < 2 * min_chunk or threads < 2:
        return shapely.area(shapely.intersection(a, b))
    bounds = np.linspace(0, len(a), threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(
            lambda k: shapely.area(shapely.intersection(a[bounds[k] : bounds[k + 1]], b[bounds[k] : bounds[k + 1]])),
            range(threads),
        )
        return np.concatenate(list(parts))


class PolygonSet:
    """Polygons prepared once for many intersection queries: rings, convexity, areas."""

    def __init__(self, geoms: np.ndarray) -> None:
        self.geoms = np.asarray(geoms, dtype=object)
        self.area = shapely.area(self.geoms)
        simple = (shapely.get_type_id(self.geoms) == _POLYGON) & (shapely.get_num_interior_rings(self.geoms) == 0)
        simple &= ~shapely.is_empty(self.geoms)
        self.ring_of = np.full(len(self.geoms), -1, np.int64)
        self.ring_of[simple] = np.arange(int(simple.sum()))
        xy, idx = shapely.get_coordinates(self.geoms[simple], return_index=True)  # no holes: the exterior ring
        self.xy = np.ascontiguousarray(xy, dtype=np.float64)
        self.start = np.zeros(int(simple.sum()) + 1, np.int64)
        np.cumsum(np.bincount(idx, minlength=len(self.start) - 1), out=self.start[1:])
        self.convex = np.zeros(int(simple.sum()), np.int8)
        self.rectilinear = np.zeros(int(simple.sum()), np.bool_)
        if len(self.convex):
            _ring_convexity(self.xy, self.start, self.convex)
            _ring_rectilinear(self.xy, self.start, self.rectilinear)


def pair_intersection_area(a: PolygonSet, b: PolygonSet, ia: np.ndarray, ib: np.ndarray, threads: int = 2) -> np.ndarray:
    """Exact intersection areas of the pairs ``(a[ia[k]], b[ib[k]])``."""
    out = np.zeros(len(ia))
    ra, rb = a.ring_of[ia], b.ring_of[ib]
    both = np.flatnonzero((ra >= 0) & (rb >= 0))  # pairs of holeless single polygons: the numba kernels
    ra, rb = ra[both], rb[both] + len(a.convex)  # ring indices into both sets, concatenated
    xy = np.concatenate([a.xy, b.xy])
    start = np.concatenate([a.start[:-1], b.start + len(a.xy)])
    convex = np.concatenate([a.convex, b.convex])
    rectilinear = np.concatenate([a.rectilinear, b.rectilinear])
    done = np.zeros(len(both), np.bool_)
    clip = (convex[ra] != 0) | (convex[rb] != 0)
    if clip.any():
        res, ok = np.zeros(int(clip.sum())), np.zeros(int(clip.sum()), np.bool_)
        _clip_areas(xy, start, convex, ra[clip], rb[clip], res, ok)
        out[both[clip]] = res
        done[clip] = ok
    sweep = ~done & rectilinear[ra] & rectilinear[rb]
    if sweep.any():
        res = np.zeros(int(sweep.sum()))
        _rectilinear_areas(*_vertical_edges(xy, start), ra[sweep], rb[sweep], res)
        out[both[sweep]] = res
        done[sweep] = True
    slow = np.ones(len(ia), bool)
    slow[both[done]] = False
    slow = np.flatnonzero(slow)
    if len(slow):
        ga, gb = a.geoms[ia[slow]], b.geoms[ib[slow]]
        same = shapely.equals_exact(ga, gb, 0.0)
        out[slow[same]] = a.area[ia[slow[same]]]
        out[slow[~same]] = geos_intersection_area(ga[~same], gb[~same], threads)
    return out
