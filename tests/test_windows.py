"""Training windows drawn from whole mosaics (chip layout=rasters)."""

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from spacenet7 import chip
from spacenet7.compose import compose
from spacenet7.data.bands import InputSpec, to_uint8
from spacenet7.data.sn7 import read_image, records_from_files
from spacenet7.data.targets import CHANNELS
from spacenet7.data.windows import GridWindows, MosaicReader, RandomWindows
from spacenet7.errors import SN7Error
from spacenet7.io.artifacts import load_index, pack_targets, unpack_targets


@pytest.fixture(scope="module")
def both_layouts(synth_root, tmp_path_factory):
    """The same synthetic data prepared as 2x chips and as 2x target rasters, spatial split."""
    out = {}
    for layout in ("chips", "rasters"):
        d = tmp_path_factory.mktemp(layout)
        chip.run(
            compose(
                "chip",
                [
                    f"data_root={synth_root}",
                    f"out_dir={d}",
                    f"layout={layout}",
                    "upscale=2",
                    "chip_size=96",
                    "overlap=0",
                    "split=spatial",
                    "progress=false",
                    "min_valid_frac=0",
                ],
            )
        )
        out[layout] = (d, *load_index(d))
    return out


def test_pack_round_trips():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (len(CHANNELS), 9, 7)).astype(np.uint8)
    ignore = rng.random((9, 7)) > 0.7
    t2, i2 = unpack_targets(pack_targets(targets, ignore))
    assert np.array_equal(t2, targets) and np.array_equal(i2, ignore)


def test_window_targets_equal_chip_targets(both_layouts):
    chips_dir, chips_index, _ = both_layouts["chips"]
    rast_dir, rast_index, meta = both_layouts["rasters"]
    assert meta["layout"] == "rasters"
    checked = 0
    for _, row in chips_index.iloc[:: max(1, len(chips_index) // 12)].iterrows():
        src = rast_index[rast_index["stem"] == row["stem"]].iloc[0]
        reader = MosaicReader(src["image"], rast_dir / src["target"], src["upscale"])
        rgb, packed = reader.read(int(row["row_off"]), int(row["col_off"]), int(row["height"]), int(row["width"]))
        targets, ignore = unpack_targets(packed)
        with rasterio.open(chips_dir / row["path"]) as ds:
            chip_arr = ds.read()
        assert np.array_equal(targets, chip_arr[3:6]), row["path"]
        assert np.array_equal(ignore, chip_arr[6] > 0), row["path"]
        # the image is resampled from the source on the fly: the same as the chip's up to rounding
        assert np.abs(rgb.astype(int) - chip_arr[:3].astype(int)).max() <= 1
        checked += 1
    assert checked >= 6


def test_label_shift_moves_the_targets_and_rebuilds(synth_root, tmp_path):
    """``label_shift_px`` moves the labels before they are rasterized: half a source pixel on the 2x grid
    is one target pixel; changing it rebuilds the prepared files."""
    args = [f"data_root={synth_root}", f"out_dir={tmp_path}", "layout=rasters", "upscale=2", "progress=false"]
    chip.run(compose("chip", args))
    path = sorted(tmp_path.glob("targets/*/*.tif"))[0]
    with rasterio.open(path) as ds:
        base = unpack_targets(ds.read(1))[0][0]
    chip.run(compose("chip", [*args, "label_shift_px=[0.5,-0.5]"]))
    with rasterio.open(path) as ds:
        moved = unpack_targets(ds.read(1))[0][0]
    assert base.sum() > 100 and not np.array_equal(moved, base)
    expect = np.roll(base, (-1, 1), (0, 1))  # dx +0.5 px: one target pixel right; dy -0.5: one up
    assert (moved[1:-1, 1:-1] == expect[1:-1, 1:-1]).mean() > 0.999


def test_rasters_take_far_less_disk_than_chips(both_layouts):
    def size(d):
        return sum(p.stat().st_size for p in d.rglob("*.tif"))

    assert size(both_layouts["rasters"][0]) * 3 < size(both_layouts["chips"][0])


def test_training_windows_never_touch_the_validation_band(both_layouts, monkeypatch):
    root, index, _ = both_layouts["rasters"]
    val = index[index["split"] == "val"]
    edge = int(val["c0"].min())
    assert (index.loc[index["split"] == "train", "c1"] <= edge).all()
    seen = []
    real_read = MosaicReader.read

    def spy(self, r, c, h, w):
        seen.append((r, c, h, w))
        return real_read(self, r, c, h, w)

    monkeypatch.setattr(MosaicReader, "read", spy)
    torch.manual_seed(0)
    ds = RandomWindows(root, index, size=80, per_mosaic=40, scale_jitter=0.3)
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["image"].shape == (3, 80, 80) and sample["target"].shape == (3, 80, 80)
    assert len(seen) == len(ds)
    cols = np.array([(c, c + w) for _, c, _, w in seen])
    rows = np.array([(r, r + h) for r, _, h, _ in seen])
    assert cols.min() >= 0 and cols.max() <= edge, "a training window reached into the validation band"
    assert rows.min() >= 0 and rows.max() <= int(index["height"].max())
    # and the draws cover the training area, not one spot
    assert cols[:, 0].min() < edge // 4 and cols[:, 1].max() > edge * 3 // 4


@pytest.mark.parametrize("in_memory", [False, True])
def test_on_buildings_windows_hold_a_building_and_stay_in_the_training_area(both_layouts, in_memory):
    root, index, _ = both_layouts["rasters"]
    edge = int(index.loc[index["split"] == "val", "c0"].min())
    rng = np.random.default_rng(0)
    frac = {}
    for p in (0.0, 1.0):
        ds = RandomWindows(root, index, size=24, per_mosaic=30, in_memory=in_memory, on_buildings=p)
        hits = []
        for i in range(len(ds)):
            row, win, *_ = ds.draw(i, rng)
            r, c, h, w = int(win.row_off), int(win.col_off), int(win.height), int(win.width)
            reg = dict(ds.regions)[row]
            assert reg.r0 <= r and r + h <= reg.r1 and reg.c0 <= c and c + w <= reg.c1 <= edge
            targets, _ = unpack_targets(ds.reader(row).read(r, c, h, w)[1])
            hits.append(targets[CHANNELS.index("footprint")].any())
        frac[p] = float(np.mean(hits))
    assert frac[1.0] == 1.0 and frac[0.0] < 0.9, frac  # the tiny synthetic AOIs are dense: uniform 24^2 windows still miss often


def test_random_windows_use_every_orientation(both_layouts):
    root, index, _ = both_layouts["rasters"]
    ds = RandomWindows(root, index, size=64, per_mosaic=50)
    rng = np.random.default_rng(1)
    views = {ds.draw(i, rng)[3:] for i in range(len(ds))}
    assert len(views) == 8


@pytest.mark.parametrize("zoom", [0.87, 0.93, 1.07, 1.15])
def test_scale_jitter_keeps_targets_on_the_image(zoom):
    """A zoomed window's targets stay where its image is: a building painted into the image and
    its footprint bit keep the same centre (a half-pixel lag teaches the model to shift footprints)."""
    from spacenet7.data.windows import _zoom
    from spacenet7.io.artifacts import BITS

    yy, xx = np.mgrid[0:96, 0:96]
    inside = ((yy - 40.3) ** 2 + (xx - 51.7) ** 2) < 14**2
    rgb = np.repeat(np.where(inside, 255, 0).astype(np.uint8)[None], 3, 0)
    packed = (inside.astype(np.uint8) << BITS["footprint"]).astype(np.uint8)
    img, tgt = _zoom(rgb, packed, zoom)
    assert img.shape[1:] == tgt.shape == (round(96 * zoom),) * 2
    img_centre = np.argwhere(img[0] > 127).mean(0)
    tgt_centre = np.argwhere(tgt & (1 << BITS["footprint"])).mean(0)
    assert np.abs(img_centre - tgt_centre).max() < 0.15


def test_validation_grid_is_fixed_and_covers_the_band(both_layouts):
    root, index, _ = both_layouts["rasters"]
    a, b = GridWindows(root, index, 64), GridWindows(root, index, 64)
    assert a.items == b.items
    row = index[index["split"] == "val"].iloc[0]
    covered = np.zeros((int(row["height"]), int(row["width"])), bool)
    row_i = int(index.index[index["split"] == "val"][0])
    for r_idx, r, c, h, w in a.items:
        if r_idx == row_i:
            covered[r : r + h, c : c + w] = True
    assert covered[:, int(row["c0"]) : int(row["c1"])].all()
    assert not covered[:, : int(row["c0"])].any()
    assert torch.equal(a[0]["image"], b[0]["image"])


def test_rasters_layout_rebuilds_when_settings_change(synth_root, tmp_path):
    args = [f"data_root={synth_root}", f"out_dir={tmp_path}", "layout=rasters", "split=spatial", "progress=false"]
    chip.run(compose("chip", args + ["contact_width=1"]))
    target = next((tmp_path / "targets").rglob("*.tif"))
    with rasterio.open(target) as ds:
        before = ds.read(1)
    chip.run(compose("chip", args + ["contact_width=3"]))
    with rasterio.open(target) as ds:
        after = ds.read(1)
    assert unpack_targets(after)[0][2].sum() > unpack_targets(before)[0][2].sum()


def test_unknown_layout_is_a_clear_error(synth_root, tmp_path):
    from spacenet7.compose import compose_checked
    from spacenet7.config import ChipConfig

    with pytest.raises(SN7Error, match=r"layout=tiles: Invalid value 'tiles', expected one of \[chips, rasters\]"):
        compose_checked("chip", [f"data_root={synth_root}", f"out_dir={tmp_path}", "layout=tiles"])
    with pytest.raises(SN7Error, match=r"layout='tiles' must be one of \['chips', 'rasters'\]"):
        ChipConfig(layout="tiles")


def test_geometric_augment_with_windows_is_refused(both_layouts, tmp_path):
    from spacenet7 import train

    root = both_layouts["rasters"][0]
    cfg = compose(
        "train",
        [
            "experiment=demo_cpu",
            f"chip_dir={root}",
            f"run_dir={tmp_path}",
            "logger.wandb=false",
            "augment=default",
            "max_epochs=1",
        ],
    )
    with pytest.raises(SN7Error, match="augment=planet"):
        train.run(cfg)


def test_train_on_windows_runs_and_records_the_layout(both_layouts, tmp_path):
    from spacenet7 import train

    root = both_layouts["rasters"][0]
    cfg = compose(
        "train",
        [
            "experiment=demo_cpu",
            f"chip_dir={root}",
            f"run_dir={tmp_path}",
            "logger.wandb=false",
            "augment=planet",
            "max_epochs=1",
            "windows.size=64",
            "windows.per_mosaic=4",
            "windows.scale_jitter=0.2",
            "trainer.enable_progress_bar=false",
        ],
    )
    out = train.run(cfg)
    ckpt = torch.load(out["best"], map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["chip_meta"]["layout"] == "rasters"
    n_train = int((both_layouts["rasters"][1]["split"] == "train").sum())
    assert ckpt["global_step"] == n_train * 4 // cfg.batch_size
    metrics = pd.read_json(out["metrics"], typ="series")
    assert 0 <= metrics["val_iou"] <= 1


def test_sn7_full_recipe_trains_a_few_steps_on_cpu(tmp_path_factory):
    """experiment=sn7_full on a small synthetic SN7-layout tree: its model, loss, augment and windows (half on buildings)."""
    from spacenet7 import synth, train
    from spacenet7.config import SynthConfig

    d = tmp_path_factory.mktemp("sn7_full")
    synth.run(SynthConfig(out_dir=str(d / "data"), n_aois=3, n_months=2, size=128, seed=1))
    chip.run(
        compose("chip", [f"data_root={d / 'data'}", f"out_dir={d / 'chips'}", "layout=rasters", "upscale=3", "progress=false"])
    )
    cfg = compose(
        "train",
        [
            "experiment=sn7_full",
            "trainer=cpu",
            f"chip_dir={d / 'chips'}",
            f"run_dir={d / 'run'}",
            "num_workers=2",
            "batch_size=2",
            "max_epochs=1",
            "windows.size=64",
            "windows.per_mosaic=2",
            "logger.wandb=false",
            "trainer.enable_progress_bar=false",
        ],
    )
    assert cfg.model["encoder_name"] == "efficientnet-b3" and cfg.windows.scale_jitter > 0 and cfg.windows.on_buildings == 0.5
    out = train.run(cfg)
    ckpt = torch.load(out["last"], map_location="cpu", weights_only=True)
    n_train = int((load_index(d / "chips")[0]["split"] == "train").sum())
    assert ckpt["global_step"] == n_train * 2 // 2
    assert ckpt["hyper_parameters"]["chip_meta"]["upscale"] == 3.0


def test_disk_readers_keep_a_bounded_number_of_files_open(both_layouts, monkeypatch):
    import spacenet7.data.windows as windows

    root, index, _ = both_layouts["rasters"]
    monkeypatch.setattr(windows, "MAX_OPEN", 2)
    ds = RandomWindows(root, index, size=32, per_mosaic=1)
    for i in range(len(ds)):
        ds[i]
    assert len(ds.regions) > 2 and len(ds._readers) == 2
    assert sum(bool(r._handles) for r in ds._readers.values()) <= 2


@pytest.mark.parametrize("kernel", ["lanczos", "cubic"])
def test_windows_resample_with_the_spec_kernel_as_the_whole_mosaic_does(both_layouts, kernel):
    """input.resampling reaches the window reader: a window read from disk equals the in-memory
    (whole-mosaic) resampling up to rounding, and differs from bilinear."""
    rast_dir, rast_index, _ = both_layouts["rasters"]
    src = rast_index.iloc[0]
    spec = InputSpec(resampling=kernel)
    disk = MosaicReader(src["image"], rast_dir / src["target"], src["upscale"], spec=spec)
    whole = MosaicReader(src["image"], rast_dir / src["target"], src["upscale"], in_memory=True, spec=spec)
    bilinear = MosaicReader(src["image"], rast_dir / src["target"], src["upscale"], in_memory=True)
    for r, c in [(10, 14), (37, 61), (0, 0)]:
        rgb, _ = disk.read(r, c, 40, 48)
        ref, _ = whole.read(r, c, 40, 48)
        lin, _ = bilinear.read(r, c, 40, 48)
        assert np.abs(rgb.astype(int) - ref.astype(int)).max() <= 1, (r, c)
        assert np.abs(lin.astype(int) - ref.astype(int)).max() > 2, (r, c)
    disk.close()
    # predict reads the mosaic as training did (read_image with the checkpoint's spec)
    rec = next(iter(records_from_files([src["image"]]).values()))[0]
    img = read_image(rec, upscale=float(src["upscale"]), spec=spec)
    assert np.array_equal(img.rgb, whole.read(0, 0, *img.rgb.shape[1:])[0])


def test_unknown_resampling_is_one_line():
    with pytest.raises(SN7Error, match=r"input.resampling='nearest' must be one of \['bilinear', 'cubic', 'lanczos'\]"):
        InputSpec(resampling="nearest")


def test_max_per_epoch_caps_the_epoch_and_draws_from_every_mosaic(both_layouts):
    root, index, _ = both_layouts["rasters"]
    uncapped = RandomWindows(root, index, size=32, per_mosaic=6)
    n = len(uncapped.regions)
    assert n >= 3 and len(uncapped) == 6 * n
    # a cap above the total changes nothing: the same draws item by item
    same = RandomWindows(root, index, size=32, per_mosaic=6, max_per_epoch=6 * n)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [uncapped.draw(i, a)[:2] for i in range(len(uncapped))] == [same.draw(i, b)[:2] for i in range(len(same))]
    capped = RandomWindows(root, index, size=32, per_mosaic=6, max_per_epoch=n + 1)
    assert len(capped) == n + 1
    rng = np.random.default_rng(0)
    rows = [capped.draw(i % len(capped), rng)[0] for i in range(40 * n)]
    train_rows = {row for row, _ in capped.regions}
    assert set(rows) == train_rows  # every training mosaic, no other
    counts = np.bincount([sorted(train_rows).index(r) for r in rows])
    assert counts.min() > 20  # each about 40 times: none starved by a fixed item -> mosaic mapping


def test_max_val_windows_is_an_even_fixed_subset_of_the_grid(both_layouts):
    root, index, _ = both_layouts["rasters"]
    full = GridWindows(root, index, 32)
    assert len(full) > 8
    sub, again = GridWindows(root, index, 32, max_windows=8), GridWindows(root, index, 32, max_windows=8)
    assert len(sub) == 8 and sub.items == again.items and set(sub.items) <= set(full.items)
    assert sub.items[0] == full.items[0] and sub.items[-1] == full.items[-1]
    assert len({row for row, *_ in sub.items}) > 1  # spread over months, not the first month's windows
    assert GridWindows(root, index, 32, max_windows=10_000).items == full.items


def test_window_caps_must_be_positive():
    from spacenet7.config import WindowsConfig

    with pytest.raises(SN7Error, match=r"windows.max_per_epoch=0 must be > 0 or null"):
        WindowsConfig(max_per_epoch=0)
    with pytest.raises(SN7Error, match=r"windows.max_val_windows=-1 must be > 0 or null"):
        WindowsConfig(max_val_windows=-1)


def test_percentile_scaling_of_8_bit_imagery_by_table_equals_the_formula():
    """``to_uint8`` scales uint8 bands through a 256-entry table per band: every value, any array shape,
    must come out as the float formula gives it (the same values for float imagery holding them)."""
    rng = np.random.default_rng(0)
    limits = np.array([[3.7, 180.2], [0.0, 255.0], [40.5, 41.0]])  # a narrow band clips most values
    values = rng.integers(0, 256, (3, 37, 53), dtype=np.uint8)
    values[:, 0, :3] = [[0, 255, 41], [0, 255, 41], [0, 255, 41]]
    by_table = to_uint8(values, limits)
    by_formula = to_uint8(values.astype(np.float32), limits)
    assert by_table.dtype == np.uint8 and by_table.shape == values.shape
    np.testing.assert_array_equal(by_table, by_formula)
    assert by_table[2].min() == 0 and by_table[2].max() == 255 and 0 < by_table[0].mean() < 255
    np.testing.assert_array_equal(to_uint8(values[:, 5], limits), by_formula[:, 5])
