"""Realism of the synthetic default: each property is measured on the written files."""

import filecmp
import math

import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from spacenet7 import synth
from spacenet7.config import SynthConfig
from spacenet7.data.scene import LANDCOVER
from spacenet7.data.sn7 import read_labels_pix, scan
from spacenet7.io.vector import read_vector

FOLDERS = {"images", "images_masked", "labels", "labels_match", "labels_match_pix", "UDM_masks"}


@pytest.fixture(scope="module")
def aois(synth_root):
    return scan(synth_root)


def _rgb(path):
    with rasterio.open(path) as ds:
        return ds.read([1, 2, 3]).astype(float)


def test_layout_names_and_georeferencing(synth_root, aois):
    for aoi, recs in aois.items():
        assert aoi.startswith("L15-") and aoi.endswith("_13")
        assert {p.name for p in (synth_root / "train" / aoi).iterdir() if p.is_dir()} == FOLDERS
        with rasterio.open(recs[0].image) as ds:
            assert ds.count == 4 and ds.dtypes[0] == "uint8" and ds.crs.to_epsg() == 3857
            assert ds.transform.a == pytest.approx(4.777, abs=1e-3) and ds.transform.e == pytest.approx(-4.777, abs=1e-3)
            lon, lat = rasterio.warp.transform(ds.crs, "EPSG:4326", [ds.bounds.left], [ds.bounds.top])
            assert -180 < lon[0] < 180 and -60 < lat[0] < 60
        # the name encodes the zoom-13 tile that the image sits on
        tx, ty = (int(v) for v in aoi.split("_")[1:3])
        assert ds.transform.c == pytest.approx(-synth.WORLD + tx * synth.TILE_M)
        assert ds.transform.f == pytest.approx(synth.WORLD - ty * synth.TILE_M)


def test_label_flavours_and_csv(synth_root, aois):
    rec = next(iter(aois.values()))[2]
    raw = read_vector(rec.labels)
    match = read_vector(rec.labels_match)
    pix = read_labels_pix(rec)
    assert raw.crs.to_epsg() == 4326 and (raw["Id"] == 0).all()
    assert match.crs.to_epsg() == 3857 and {"Id", "area", "iou_score"} <= set(match.columns)
    assert set(read_vector(rec.labels_match_pix)["image_fname"]) == {f"{rec.stem}.tif"}
    assert len(raw) == len(match) == len(pix) > 0
    csv = pd.read_csv(synth_root / "sn7_train_ground_truth_pix.csv")
    assert list(csv.columns) == ["filename", "id", "geometry"]
    sub = csv[csv.filename == rec.stem]
    assert sorted(sub["id"]) == sorted(pix["Id"])
    assert shapely.from_wkt(sub["geometry"].iloc[0]).area > 0


def test_ids_persist_with_identical_geometry(aois):
    recs = next(iter(aois.values()))
    first = read_labels_pix(recs[0]).set_index("Id").geometry
    last = read_labels_pix(recs[-1]).set_index("Id").geometry
    common = first.index.intersection(last.index)
    assert len(common) > 10
    assert all(first[i].equals(last[i]) for i in common)


def _all_buildings(aois):
    frames = [read_labels_pix(r) for recs in aois.values() for r in recs]
    return pd.concat(frames).drop_duplicates("Id")


def test_buildings_are_at_sn7_scale_with_varied_orientation(synth_cfg):
    cfg = SynthConfig(**{**synth_cfg.__dict__, "size": 512})
    scene = synth.scene_for(cfg, 0)
    sides, angles = [], []
    for b in scene.buildings:
        c = np.asarray(b.poly.exterior.coords)
        e = np.diff(c[:3], axis=0)
        sides.append(np.hypot(*e.T))
        angles.append(math.atan2(e[0, 1], e[0, 0]) % (math.pi / 2))
    sides = np.array(sides)
    small = ((sides >= 3) & (sides <= 20)).all(1)
    assert small.mean() > 0.75, small.mean()
    assert (sides.max(1) > 25).any(), "no large industrial hall"
    assert np.std(angles) > 0.2, "all buildings share one orientation"
    assert len(scene.buildings) > 150


def test_neighbourhoods_cluster_and_some_buildings_touch(aois):
    b = _all_buildings(aois)
    geoms = b.geometry.values
    tree = shapely.STRtree(geoms)
    i, j = tree.query(geoms, predicate="dwithin", distance=1e-6)
    touching = (i < j).sum()
    assert touching >= 5, touching
    # Clark-Evans ratio < 1 means clustered (1 = random, > 1 = regular)
    rec = next(iter(aois.values()))[-1]
    g = read_labels_pix(rec).geometry.centroid
    pts = np.c_[g.x, g.y]
    from scipy.spatial import cKDTree

    d, _ = cKDTree(pts).query(pts, k=2)
    density = len(pts) / 256**2
    ratio = d[:, 1].mean() / (0.5 / math.sqrt(density))
    assert ratio < 0.8, ratio


def test_roofs_vary_in_colour_and_cast_shadows(aois):
    rec = next(iter(aois.values()))[0]
    rgb = _rgb(rec.image)
    pix = read_labels_pix(rec)
    from spacenet7.data.sn7 import rasterize_footprints

    means = []
    for g in pix.geometry:
        m = rasterize_footprints([g.buffer(-1)], rgb.shape[1:]).astype(bool)
        if m.sum() >= 4:
            means.append(rgb[:, m].mean(1))
    assert np.std(np.array(means), axis=0).mean() > 15, "roof colours do not vary"
    # shadow side (down-right, sun from the upper left) is darker than the lit side
    fp = rasterize_footprints(pix.geometry, rgb.shape[1:]).astype(bool)
    bright = rgb.mean(0)
    down = np.roll(fp, (2, 2), (0, 1)) & ~fp
    up = np.roll(fp, (-2, -2), (0, 1)) & ~fp
    assert bright[down & ~up].mean() < bright[up & ~down].mean() - 5


def test_background_has_varied_textured_land_cover_and_roads(synth_cfg):
    scene = synth.scene_for(synth_cfg, 0)
    assert len(np.unique(scene.landcover)) >= 3
    means = [scene.summer[:, scene.landcover == k].mean(1) for k in np.unique(scene.landcover)]
    assert np.ptp(np.array(means), axis=0).max() > 40, "land-cover classes look alike"
    field = scene.summer[1][scene.landcover == list(LANDCOVER).index("vegetation")]
    assert field.std() > 5, "no texture"
    assert len(scene.roads) >= 2
    road_area = shapely.union_all([p for p, _ in scene.roads]).intersection(shapely.box(0, 0, 256, 256)).area
    assert road_area > 0.01 * 256**2


def test_growth_with_construction_pads_and_rare_demolition(aois):
    new_counts, demolished, total = [], 0, 0
    pad_change, roof_change, lot_change = [], [], []  # lot: pad vs the pixels around it
    for recs in aois.values():
        ids = [set(read_labels_pix(r)["Id"]) for r in recs]
        clouds = [r.udm is not None for r in recs]
        seen = set()
        for t, s in enumerate(ids):
            if t:
                new_counts.append(len(s - seen))
            seen |= s
        clear = [s for s, c in zip(ids, clouds) if not c]
        demolished += len(clear[0] - clear[-1])
        total += len(clear[0])
        imgs = [_rgb(r.image) for r in recs]
        pix = {t: read_labels_pix(r).set_index("Id").geometry for t, r in enumerate(recs)}
        from spacenet7.data.sn7 import rasterize_footprints

        for i in ids[-1] - ids[2]:
            t = next((k for k in range(3, len(recs)) if i in ids[k]), None)
            if t is None or clouds[t] or clouds[t - 1] or clouds[t - 2]:
                continue
            m = rasterize_footprints([pix[t][i]], imgs[0].shape[1:]).astype(bool)
            if m.sum() < 4:
                continue
            roof_change.append(np.abs(imgs[t][:, m].mean(1) - imgs[t - 1][:, m].mean(1)).max())
            pad_change.append(np.abs(imgs[t - 1][:, m].mean(1) - imgs[0][:, m].mean(1)).max())
            ring = ndimage.binary_dilation(m, iterations=1) & ~m  # the lot is cleared beyond the footprint:
            lot_change.append(np.abs(imgs[t - 1][:, ring].mean(1) - imgs[t - 1][:, m].mean(1)).max())  # same soil
    assert sum(new_counts) > 20 and sum(c > 0 for c in new_counts) >= len(new_counts) // 2
    assert demolished / total < 0.05
    assert len(roof_change) >= 5
    assert np.median(roof_change) > 10, "roof does not replace the pad"
    assert np.median(pad_change) > 10, "no construction pad before the roof"
    assert np.median(lot_change) < 15, "the construction lot is not cleared beyond the footprint"


def test_month_to_month_radiometry_and_subpixel_jitter(aois):
    recs = next(iter(aois.values()))
    clear = [r for r in recs if r.udm is None]
    imgs = [_rgb(r.image) for r in clear]
    assert np.ptp([im.mean() for im in imgs]) > 3, "radiometry does not change"
    shifts = [phase_cross_correlation(imgs[0][1], im[1], upsample_factor=20)[0] for im in imgs[1:]]
    mags = [float(np.hypot(*s)) for s in shifts]
    assert max(mags) > 0.05, "no misregistration jitter"
    assert max(mags) < 1.0, "jitter larger than a pixel"


def test_clouds_match_udm_and_alpha(aois):
    n_udm = n_none = 0
    for recs in aois.values():
        for r in recs:
            with rasterio.open(r.image_masked) as ds:
                alpha = ds.read(4)
            if r.udm is None:
                n_none += 1
                assert (alpha == 255).all()
                continue
            n_udm += 1
            with rasterio.open(r.udm) as ds:
                udm = ds.read(1) > 0
            assert np.array_equal(alpha == 0, udm)
            assert 0.02 < udm.mean() < 0.7
            assert _rgb(r.image)[:, udm].mean() > _rgb(r.image)[:, ~udm].mean() + 30, "clouds are not bright"
    assert n_udm >= 1 and n_none >= 1


def test_same_seed_gives_identical_files(tmp_path):
    kw = dict(n_aois=1, n_months=3, size=96, seed=11)
    synth.run(SynthConfig(out_dir=str(tmp_path / "a"), **kw))
    synth.run(SynthConfig(out_dir=str(tmp_path / "b"), **kw))
    cmp = filecmp.dircmp(tmp_path / "a", tmp_path / "b")

    def same(c):
        return not c.diff_files and not c.left_only and not c.right_only and all(same(s) for s in c.subdirs.values())

    files = list((tmp_path / "a").rglob("*.*"))
    assert len(files) > 10
    assert all(filecmp.cmp(f, tmp_path / "b" / f.relative_to(tmp_path / "a"), shallow=False) for f in files)
    assert same(cmp)
    synth.run(SynthConfig(out_dir=str(tmp_path / "c"), **{**kw, "seed": 12}))
    assert (tmp_path / "a" / "sn7_train_ground_truth_pix.csv").read_bytes() != (
        tmp_path / "c" / "sn7_train_ground_truth_pix.csv"
    ).read_bytes()


def test_preview_png(tmp_path):
    synth.run(SynthConfig(out_dir=str(tmp_path), n_aois=1, n_months=2, size=96, seed=1, preview=True))
    png = list(tmp_path.rglob("*_preview.png"))
    assert len(png) == 1
    from PIL import Image

    im = Image.open(png[0])
    assert im.width > 2 * im.height * 0.8  # two panels side by side


@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    """The same seed rendered in the demo style and the planet style."""
    out = {}
    for style in ("demo", "planet"):
        cfg = SynthConfig(
            out_dir=str(tmp_path_factory.mktemp(style)), n_aois=1, n_months=2, size=384, seed=7, cloud_prob=0.0, style=style
        )
        synth.run(cfg)
        rec = next(iter(scan(cfg.out_dir).values()))[0]
        out[style] = (_rgb(rec.image), read_labels_pix(rec))
    return out


def test_planet_style_buildings_are_smaller_and_denser(styles):
    (_, demo), (_, planet) = styles["demo"], styles["planet"]
    # the real Chengdu sample: median footprint ~20 px, ~29 buildings per 100^2 px (bench/bench_transfer.py)
    assert np.median(planet.area) < 0.6 * np.median(demo.area)
    assert 10 <= np.median(planet.area) <= 40
    assert len(planet) > 2 * len(demo)


def test_planet_style_is_softer_darker_and_muted(styles):
    (demo, _), (planet, _) = styles["demo"], styles["planet"]

    def fine_over_coarse(rgb):
        g = rgb.mean(0)
        return (
            np.abs(g - ndimage.gaussian_filter(g, 1)).mean()
            / np.abs(ndimage.gaussian_filter(g, 1) - ndimage.gaussian_filter(g, 4)).mean()
        )

    assert fine_over_coarse(planet) < 0.85 * fine_over_coarse(demo)
    assert planet.mean() < 0.85 * demo.mean()
    # real mosaics are warm: blue well below red (Chengdu means R 84, B 52)
    assert planet[2].mean() < 0.75 * planet[0].mean()


def test_unknown_style_is_a_clear_error(tmp_path):
    with pytest.raises(synth.SN7Error, match="style"):
        synth.run(SynthConfig(out_dir=str(tmp_path), style="photoreal"))
