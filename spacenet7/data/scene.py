"""A procedural model of one SpaceNet 7 AOI: land cover, roads, neighbourhoods, growth, clouds.

Everything is in pixel coordinates (x = column, y = row) on a ``size`` x ``size`` grid at the
SN7 ground sample distance. :func:`make_scene` draws the static scene and the building timeline;
:func:`render_month` turns it into one month's RGB image, cloud mask and visible buildings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from rasterio import features
from scipy import ndimage
from scipy.spatial import cKDTree
from shapely.geometry import LineString, Polygon

SUPERSAMPLE = 2  # render edges at 2x and average down: anti-aliased, like a real sensor's PSF

# land-cover classes: (summer RGB, winter RGB, texture strength, stripes?)
LANDCOVER = {
    "field": ((95, 120, 55), (150, 130, 90), 10.0, True),
    "vegetation": ((45, 70, 35), (70, 80, 55), 16.0, False),
    "bare_soil": ((160, 135, 100), (150, 128, 98), 9.0, False),
    "grass": ((110, 130, 75), (135, 130, 95), 7.0, False),
}
ROOF_PALETTE = np.array([(175, 80, 60), (165, 165, 165), (215, 215, 210), (70, 95, 140), (120, 100, 85), (200, 188, 150)], float)
ROOF_P = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.15])
PAD_RGB = np.array([172.0, 140.0, 104.0])  # freshly cleared soil: warmer and darker than the beige roofs
PAD_MARGIN = (1.0, 2.5)  # a construction lot is cleared beyond the future footprint (pixels)
PAD_REGROW = 3  # months after completion until the cleared margin is yard again
ROAD_RGB = {"asphalt": np.array([110.0, 110.0, 108.0]), "dirt": np.array([165.0, 145.0, 115.0])}


@dataclass(frozen=True)
class Style:
    """How a scene looks: building scale and density, and the sensor's rendering.

    ``demo`` is the crisp default the demo is tuned on; ``planet`` moves every measured property
    toward real Planet mosaics (``python bench/bench_transfer.py`` prints them side by side):
    smaller, denser buildings, a softer point-spread function, darker mid-tones and muted colour.
    """

    building_scale: float = 1.0  # multiplies building depth, width and gaps
    hood_density: float = 1.0  # multiplies the number of neighbourhoods
    psf_sigma: float = 0.5  # Gaussian blur of the rendered image (pixels)
    gamma: float = 1.0  # > 1 darkens mid-tones, keeping highlights (bright roofs, bare soil)
    saturation: float = 1.0  # < 1 mutes colour toward grey
    contrast: float = 1.0  # > 1 stretches values away from the image mean
    balance: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-band gain (white balance)
    haze_prob: float = 0.25  # chance of a hazy month
    haze: tuple[float, float] = (0.1, 0.3)  # haze strength range


STYLES: dict[str, Style] = {
    "demo": Style(),
    "planet": Style(
        building_scale=0.6,
        hood_density=1.6,
        psf_sigma=0.9,
        gamma=1.5,
        saturation=0.7,
        contrast=1.45,
        balance=(1.0, 0.97, 0.8),
        haze_prob=0.6,
        haze=(0.05, 0.2),
    ),
}


@dataclass
class Building:
    """One building and its life: a cleared lot from ``t_pad``, roof from ``t_built`` until ``t_demolish``."""

    id: int
    poly: Polygon
    roof: np.ndarray
    shadow: tuple[float, float]
    t_pad: int
    t_built: int
    t_demolish: int
    kind: str
    lot: Polygon | None = None  # the cleared construction lot (the footprint plus a margin)
    lot_rgb: np.ndarray | None = None

    def exists(self, t: int) -> bool:
        """Whether the building stands in month ``t``."""
        return self.t_built <= t < self.t_demolish

    def lot_visible(self, t: int) -> bool:
        """Bare soil shows from ``t_pad`` until the margin regrows after completion, and after demolition."""
        if self.lot is None or t < self.t_pad:
            return False
        return (self.t_pad < self.t_built and t < self.t_built + PAD_REGROW) or t >= self.t_demolish


@dataclass
class Scene:
    """The static part of an AOI and its building timeline."""

    size: int
    n_months: int
    summer: np.ndarray  # (3, H, W) float land cover in summer
    winter: np.ndarray  # (3, H, W) float land cover in winter
    landcover: np.ndarray  # (H, W) int class index into LANDCOVER
    roads: list[tuple[Polygon, np.ndarray]]
    buildings: list[Building]
    instance: np.ndarray = field(
        repr=False, default_factory=lambda: np.zeros((0, 0), np.int32)
    )  # (H, W) int32, index+1 of building


def make_scene(rng: np.random.Generator, size: int, n_months: int, style: Style = STYLES["demo"]) -> Scene:
    """Draw land cover, roads, neighbourhoods of buildings and their construction timeline."""
    summer, winter, classes = _landcover(rng, size)
    roads = _main_roads(rng, size)
    buildings: list[Building] = []
    road_union = shapely.union_all([p for p, _ in roads]) if roads else Polygon()
    n_hoods = max(3, int(round(rng.uniform(9, 13) * (size / 512) ** 2 * style.hood_density)))
    for k in range(n_hoods):
        # every AOI has an existing town (k = 0) and an industrial area (k = 1); the rest is random
        kind = ("dense", "industrial")[k] if k < 2 else None
        _neighbourhood(
            rng,
            size,
            n_months,
            buildings,
            roads,
            road_union,
            kind=kind,
            developing=False if k == 0 else None,
            scale=style.building_scale,
        )
    for i, b in enumerate(buildings):
        b.id = i + 1
    scene = Scene(size, n_months, summer, winter, classes, roads, buildings)
    scene.instance = (
        features.rasterize(((b.poly, i + 1) for i, b in enumerate(buildings)), out_shape=(size, size), dtype="int32")
        if buildings
        else np.zeros((size, size), "int32")
    )
    return scene


def _landcover(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = max(8, int(rng.uniform(30, 55) * (size / 512) ** 2))
    seeds = rng.uniform(0, size, (n, 2))
    step = 2
    yy, xx = np.mgrid[0:size:step, 0:size:step] + step / 2
    # warp the query grid with smooth noise so parcel edges are not perfectly straight
    warp = ndimage.gaussian_filter(rng.normal(0, 1, (2, *yy.shape)), (0, 6, 6)) * 40
    _, lab = cKDTree(seeds).query(np.stack([(yy + warp[0]).ravel(), (xx + warp[1]).ravel()], 1))
    lab = np.repeat(np.repeat(lab.reshape(yy.shape), step, 0), step, 1)[:size, :size]
    names = list(LANDCOVER)
    cls_of_parcel = rng.choice(len(names), n, p=[0.4, 0.25, 0.2, 0.15])
    classes = cls_of_parcel[lab]
    jitter = rng.normal(0, 8, (n, 3))
    angle = rng.uniform(0, np.pi, n)
    period = rng.uniform(3, 7, n)
    Y, X = np.mgrid[0:size, 0:size].astype(np.float32)
    fine = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 0.8)
    coarse = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 6) * 3
    texture = (fine + coarse).astype(np.float32)
    stripes = np.sin((X * np.cos(angle[lab]) + Y * np.sin(angle[lab])) * 2 * np.pi / period[lab])
    out = []
    for season in (0, 1):
        img = np.zeros((3, size, size), np.float32)
        for k, name in enumerate(names):
            rgb, strength, striped = np.array(LANDCOVER[name][season], float), LANDCOVER[name][2], LANDCOVER[name][3]
            m = classes == k
            base = rgb[:, None] + jitter[lab[m]].T
            tex = texture[m] * strength + (stripes[m] * 9 if striped else 0)
            img[:, m] = base + tex
        out.append(img)
    return out[0], out[1], classes


def _main_roads(rng: np.random.Generator, size: int) -> list[tuple[Polygon, np.ndarray]]:
    roads = []
    for _ in range(int(rng.integers(2, 4))):
        a = rng.uniform(0, np.pi)
        c = rng.uniform(0.2, 0.8, 2) * size
        d = np.array([np.cos(a), np.sin(a)]) * size * 1.5
        line = LineString([c - d, c + d])
        roads.append((line.buffer(rng.uniform(1.5, 2.5), cap_style="flat"), ROAD_RGB["asphalt"]))
    return roads


def _neighbourhood(
    rng: np.random.Generator,
    size: int,
    n_months: int,
    buildings: list,
    roads: list,
    road_union: Any,
    kind: str | None = None,
    developing: bool | None = None,
    scale: float = 1.0,
) -> None:
    drawn = rng.choice(["residential", "dense", "industrial"], p=[0.5, 0.35, 0.15])
    kind = kind or drawn
    centre = rng.uniform(0.1, 0.9, 2) * size
    radius = rng.uniform(35, 90) * (1.6 if kind == "industrial" else 1.0)
    theta = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    drawn_dev = rng.random() < 0.45  # a new development: everything built during the series
    developing = drawn_dev if developing is None else developing
    start = int(rng.integers(1, max(2, n_months - 2))) if developing else 0
    depth_rng: tuple[float, float]  # (low, high) in px, scaled below
    width_rng: tuple[float, float]
    gap_rng: tuple[float, float]
    if kind == "industrial":
        depth_rng, width_rng, gap_rng, p_touch, street = (18, 40), (25, 60), (4.0, 10.0), 0.0, 8
    elif kind == "dense":
        depth_rng, width_rng, gap_rng, p_touch, street = (5, 10), (3, 9), (1, 2.5), 0.55, 4
    else:
        depth_rng, width_rng, gap_rng, p_touch, street = (6, 15), (5, 16), (2, 6), 0.1, 5
    if scale != 1.0:  # smaller buildings, never under 2 px a side
        depth_rng, width_rng, gap_rng = ((max(2.0, a * scale), max(2.5, b * scale)) for a, b in (depth_rng, width_rng, gap_rng))
    local_streets = []
    existing = shapely.STRtree([b.poly for b in buildings]) if buildings else None
    new: list[Polygon] = []
    v = -radius
    while v < radius:
        depth = rng.uniform(*depth_rng)
        u = -radius + rng.uniform(0, 5)
        n_before = len(new)
        while u < radius:
            w = rng.uniform(*width_rng)
            local = np.array([(u, v), (u + w, v), (u + w, v + depth), (u, v + depth)])
            pts = local @ rot.T + centre
            poly = Polygon(pts)
            c = np.asarray(poly.centroid.coords[0])
            inside = np.all(pts >= 1) and np.all(pts <= size - 1)
            if inside and np.linalg.norm(c - centre) < radius * rng.uniform(0.75, 1.0) and rng.random() < 0.9:
                if not poly.intersects(road_union) and (existing is None or not len(existing.query(poly, "intersects"))):
                    new.append(poly)
            gap = 0.0 if rng.random() < p_touch else rng.uniform(*gap_rng)
            u += w + gap
        v += depth_rng[1] + street
        if len(new) == n_before:
            continue
        line = LineString(
            [np.array([-radius, v - street / 2]) @ rot.T + centre, np.array([radius, v - street / 2]) @ rot.T + centre]
        )
        local_streets.append(line.buffer(street / 2 - 0.5, cap_style="flat"))
    dirt = rng.random() < 0.5
    for s in local_streets:
        roads.append((s, ROAD_RGB["dirt" if dirt else "asphalt"]))
    sun = np.array([1.0, 0.8])
    for poly in new:
        if kind == "industrial":
            roof = ROOF_PALETTE[rng.choice([1, 2])] * rng.uniform(0.9, 1.1)
            height = rng.uniform(2, 3.5)
        else:
            roof = ROOF_PALETTE[rng.choice(len(ROOF_PALETTE), p=ROOF_P)] * rng.uniform(0.85, 1.15)
            height = rng.uniform(0.8, 2.0)
        if developing:
            t_built = int(rng.integers(start, n_months + 2))  # some lots are still empty at the end
        else:
            t_built = 0 if rng.random() < 0.85 else int(rng.integers(1, n_months + 1))
        if t_built >= n_months:
            continue
        t_pad = t_built - int(rng.integers(1, 3)) if t_built > 0 else 0
        t_demolish = n_months
        if t_built == 0 and rng.random() < 0.01 and n_months > 3:
            t_demolish = int(rng.integers(2, n_months))
        lot = poly.buffer(rng.uniform(*PAD_MARGIN), join_style="mitre") if t_built > 0 or t_demolish < n_months else None
        lot_rgb = PAD_RGB * rng.uniform(0.9, 1.1) + rng.normal(0, 6, 3)
        buildings.append(
            Building(0, poly, roof, tuple(sun * height), max(t_pad, 0), t_built, t_demolish, str(kind), lot, lot_rgb)
        )


@dataclass
class Month:
    """One rendered month: image, cloud mask, radiometry and jitter actually applied."""

    rgb: np.ndarray  # (3, H, W) uint8
    cloud: np.ndarray  # (H, W) bool, the UDM
    visible: list[Building]  # labelled buildings (existing, not mostly under cloud)
    shift: tuple[float, float]  # applied misregistration (dy, dx) in pixels
    haze: float


def render_month(scene: Scene, t: int, rng: np.random.Generator, cloudy: bool, style: Style = STYLES["demo"]) -> Month:
    """Render month ``t``: season, construction state, shadows, haze, clouds, jitter and noise."""
    s, ss = scene.size, SUPERSAMPLE
    w = 0.5 - 0.5 * np.cos(2 * np.pi * t / 12)  # 0 = summer .. 1 = winter
    bg = scene.summer * (1 - w) + scene.winter * w
    img = np.repeat(np.repeat(bg, ss, 1), ss, 2)
    big = (s * ss, s * ss)
    scale = shapely.affinity.scale

    def burn(items: list, mode: str) -> None:
        items = [(scale(g, ss, ss, origin=(0, 0)), c) for g, c in items]
        if not items:
            return
        idx = features.rasterize(((g, i + 1) for i, (g, _) in enumerate(items)), out_shape=big, dtype="int32")
        m = idx > 0
        if mode == "shadow":
            img[:, m] *= 0.55
        else:
            colors = np.stack([c for _, c in items])
            img[:, m] = colors[idx[m] - 1].T

    burn(scene.roads, "paint")
    burn([(b.lot, b.lot_rgb) for b in scene.buildings if b.lot_visible(t)], "paint")
    standing = [b for b in scene.buildings if b.exists(t)]
    burn([(shapely.affinity.translate(b.poly, *b.shadow), None) for b in standing], "shadow")
    burn([(b.poly, b.roof) for b in standing], "paint")
    img = img.reshape(3, s, ss, s, ss).mean((2, 4))
    img = ndimage.gaussian_filter(img, (0, style.psf_sigma, style.psf_sigma))
    if style.saturation != 1.0:
        grey = img.mean(0, keepdims=True)
        img = grey + style.saturation * (img - grey)
    if style.gamma != 1.0:
        img = 255.0 * np.clip(img / 255.0, 0, 1) ** style.gamma
    if style.contrast != 1.0:
        img = img.mean() + style.contrast * (img - img.mean())
    if style.balance != (1.0, 1.0, 1.0):
        img = img * np.asarray(style.balance)[:, None, None]

    gain = 1 + rng.normal(0, 0.05, 3) + rng.normal(0, 0.05)
    img = img * gain[:, None, None] + rng.normal(0, 4)
    haze = float(rng.uniform(*style.haze)) if rng.random() < style.haze_prob else 0.0
    img = img * (1 - haze) + haze * np.array([205.0, 210.0, 220.0])[:, None, None]
    cloud = np.zeros((s, s), bool)
    if cloudy:
        noise = ndimage.gaussian_filter(rng.normal(0, 1, (s, s)), s / 24)
        noise /= noise.std() + 1e-9
        thr = np.quantile(noise, 1 - rng.uniform(0.08, 0.3))
        opacity = np.clip((noise - thr) * 2.5 + 0.3, 0, 1)
        shade = np.roll(opacity, (int(s * 0.03), int(s * 0.03)), (0, 1))
        img = img * (1 - 0.45 * shade) * (1 - opacity) + opacity * 235
        cloud = ndimage.binary_dilation(opacity > 0.05, iterations=2)
    dy, dx = (0.0, 0.0) if t == 0 else (float(v) for v in rng.uniform(-0.45, 0.45, 2))
    shift = (dy, dx)
    if shift != (0.0, 0.0):
        img = ndimage.shift(img, (0, *shift), order=1, mode="nearest")
    img = img + rng.normal(0, 2.0, img.shape)
    rgb = np.clip(np.round(img), 0, 255).astype(np.uint8)

    cover = np.bincount(scene.instance[cloud], minlength=len(scene.buildings) + 1)
    area = np.bincount(scene.instance.ravel(), minlength=len(scene.buildings) + 1)
    visible = [b for b in standing if cover[b.id] <= 0.5 * max(area[b.id], 1)]
    return Month(rgb, cloud, visible, shift, haze)


def month_schedule(rng: np.random.Generator, n_months: int, cloud_prob: float) -> list[bool]:
    """Which months are cloudy: never the first, at least one when there are 3 or more months."""
    cloudy = [False] + [bool(rng.random() < cloud_prob) for _ in range(n_months - 1)]
    if n_months >= 3 and not any(cloudy):
        cloudy[int(rng.integers(1, n_months))] = True
    return cloudy
