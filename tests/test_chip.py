import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from shapely.geometry import box

from spacenet7 import chip
from spacenet7.config import ChipConfig
from spacenet7.data.sn7 import instance_raster, rasterize_footprints, read_image, read_labels, scan
from spacenet7.data.splits import aoi_split, spatial_split
from spacenet7.data.targets import make_targets
from spacenet7.errors import SN7Error
from spacenet7.io.artifacts import load_index
from tests.conftest import REAL_AOI


@pytest.fixture(scope="module")
def chips(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("chips")
    cfg = ChipConfig(data_root=str(synth_root), out_dir=str(out), chip_size=128, overlap=32, progress=False, val_frac=0.34)
    chip.run(cfg)
    index, meta = load_index(out)
    return cfg, out, index, meta


def test_index_columns_and_fractions(chips):
    _, _, index, meta = chips
    for col in (
        "path",
        "aoi",
        "month",
        "row_off",
        "col_off",
        "height",
        "width",
        "crs",
        "transform",
        "valid_frac",
        "building_frac",
        "split",
    ):
        assert col in index.columns
    assert index["valid_frac"].between(0.5, 1).all()
    assert index["building_frac"].max() > 0.02
    assert meta["upscale"] == 1.0 and meta["bands"][3:6] == ["footprint", "boundary", "contact"]


def test_chip_georeferencing_round_trips_to_the_source_window(chips, synth_root):
    _, out, index, _ = chips
    row = index.iloc[len(index) // 2]
    rec = next(r for r in scan(synth_root)[row["aoi"]] if r.stem == row["stem"])
    with rasterio.open(out / row["path"]) as ds, rasterio.open(rec.image) as src:
        win = rasterio.windows.from_bounds(*ds.bounds, transform=src.transform)
        assert (round(win.row_off), round(win.col_off)) == (row["row_off"], row["col_off"])
        assert ds.crs == src.crs
        assert np.array_equal(ds.read([1, 2, 3]), src.read([1, 2, 3], window=win))
        assert list(ds.transform)[:6] == pytest.approx(eval(row["transform"]))


def test_no_aoi_leaks_across_the_split(chips):
    _, _, index, _ = chips
    sides = index.groupby("aoi")["split"].nunique()
    assert (sides == 1).all()
    assert set(index["split"]) == {"train", "val"}


def test_splits_are_deterministic():
    aois = [f"a{i}" for i in range(10)]
    assert aoi_split(aois, 0.3, 1) == aoi_split(list(reversed(aois)), 0.3, 1)
    assert sum(v == "val" for v in aoi_split(aois, 0.3, 1).values()) == 3


def test_spatial_split_never_shares_pixels():
    from rasterio.windows import Window

    w = 1000
    sides = {c: spatial_split(Window(c, 0, 200, 200), w, 0.25) for c in range(0, w - 199, 50)}
    train_max = max(c + 200 for c, s in sides.items() if s == "train")
    val_min = min(c for c, s in sides.items() if s == "val")
    assert train_max <= val_min
    assert None in sides.values()


def test_targets_on_touching_buildings():
    inst = np.zeros((12, 20), np.int32)
    inst[3:9, 2:10] = 1
    inst[3:9, 10:17] = 2  # shares an edge with building 1
    fp, boundary, contact = make_targets(inst, boundary_width=1, contact_width=1)
    assert fp.sum() == (inst > 0).sum()
    # the seam between the two buildings is contact, inside both footprints
    assert contact[3:9, 9:11].all()
    assert not contact[:, :8].any() and not contact[:, 12:].any()
    # boundary is the rim of each building including the seam; interiors are not boundary
    assert boundary[3, 4] and boundary[5, 9] and boundary[5, 10] and not boundary[5, 5]
    # a watershed seed (footprint minus boundary minus contact) keeps the two apart
    from scipy import ndimage

    core = fp.astype(bool) & ~boundary.astype(bool) & ~contact.astype(bool)
    assert ndimage.label(core)[1] == 2


def test_upscaled_labels_are_rasterized_from_polygons_not_upsampled():
    poly = box(1.5, 1.5, 4.0, 3.0)  # edges off the coarse pixel grid
    coarse = rasterize_footprints([poly], (6, 6))
    fine = rasterize_footprints([poly], (24, 24), Affine.identity() * Affine.scale(1 / 4))
    naive = np.kron(coarse, np.ones((4, 4), np.uint8))
    assert fine.sum() == pytest.approx(poly.area * 16, abs=2)
    assert not np.array_equal(fine, naive)


def test_upscale_option_chips_on_the_finer_grid(synth_root, tmp_path):
    aoi = sorted(scan(synth_root))[0]
    cfg = ChipConfig(
        data_root=str(synth_root),
        out_dir=str(tmp_path),
        aois=[aoi],
        chip_size=256,
        overlap=0,
        upscale=2.0,
        progress=False,
        month_stride=6,
    )
    chip.run(cfg)
    index, meta = load_index(tmp_path)
    assert meta["upscale"] == 2.0
    row = index.iloc[0]
    rec = scan(synth_root)[aoi][0]
    with rasterio.open(tmp_path / row["path"]) as ds:
        assert ds.transform.a == pytest.approx(4.777 / 2, abs=1e-3)
        fp = ds.read(4)
        bounds = ds.bounds
    labels = read_labels(rec)
    img = read_image(rec, upscale=2.0)
    expect = (instance_raster(labels, img.shape, img.transform) > 0)[: fp.shape[0], : fp.shape[1]]
    assert np.array_equal(fp > 0, expect & img.valid[: fp.shape[0], : fp.shape[1]])
    assert row["src_height"] == 128 and bounds.top == pytest.approx(img.transform.f)


def test_ignore_mask_follows_alpha_and_udm_and_zeroes_targets(chips, synth_root):
    _, out, index, _ = chips
    cloudy = {r.stem for recs in scan(synth_root).values() for r in recs if r.udm is not None}
    rows = index[index["stem"].isin(cloudy) & (index["valid_frac"] < 1)]
    assert len(rows)
    with rasterio.open(out / rows.iloc[0]["path"]) as ds:
        a = ds.read()
    ignore = a[6] > 0
    assert ignore.any() and not a[3:6, ignore].any()
    assert rows.iloc[0]["valid_frac"] == pytest.approx(1 - ignore.mean())


def test_rerun_skips_complete_chips(chips):
    cfg, out, index, _ = chips
    p = out / index.iloc[0]["path"]
    before = p.stat().st_mtime_ns
    chip.run(cfg)
    assert p.stat().st_mtime_ns == before
    assert len(load_index(out)[0]) == len(index)


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(SN7Error, match="chip index not found"):
        load_index(tmp_path)


def test_real_sample_spatial_split(real_sample, tmp_path):
    cfg = ChipConfig(data_root=str(real_sample), out_dir=str(tmp_path), chip_size=256, overlap=0, split="spatial", progress=False)
    chip.run(cfg)
    index, _ = load_index(tmp_path)
    assert set(index["aoi"]) == {REAL_AOI} and set(index["split"]) == {"train", "val"}
    assert index["building_frac"].mean() > 0.05
    assert pd.Series(index["col_off"][index["split"] == "val"]).min() >= (index["col_off"][index["split"] == "train"] + 256).max()
