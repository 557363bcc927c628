import shutil

import numpy as np
import pytest
import rasterio

from spacenet7.data.sn7 import instance_raster, parse_stem, rasterize_footprints, read_image, read_labels, read_labels_pix, scan
from spacenet7.errors import SN7DataError, SN7Error
from tests.conftest import REAL_AOI


def test_parse_stem():
    info = parse_stem("global_monthly_2019_07_mosaic_L15-1615E-1205N_6460_3370_13.tif")
    assert (info.aoi, info.year, info.month, info.month_key) == ("L15-1615E-1205N_6460_3370_13", 2019, 7, "2019-07")
    assert parse_stem("global_monthly_2019_07_mosaic_X_Buildings.geojson").aoi == "X"
    with pytest.raises(SN7Error, match="not an SN7 name"):
        parse_stem("monthly_2019_7_X.tif")


def test_scan_gives_sorted_records_with_optional_udm(synth_root):
    aois = scan(synth_root)
    assert len(aois) == 3
    for recs in aois.values():
        keys = [r.month_key for r in recs]
        assert keys == sorted(keys) and len(keys) == 6
        assert all(r.image.exists() and r.labels_match and r.labels_match_pix and r.labels for r in recs)
        assert any(r.udm is None for r in recs)
    assert any(r.udm is not None for recs in aois.values() for r in recs)


def test_valid_mask_is_alpha_and_not_udm(synth_root):
    rec = next(r for recs in scan(synth_root).values() for r in recs if r.udm is not None)
    img = read_image(rec)
    with rasterio.open(rec.udm) as ds:
        udm = ds.read(1) > 0
    with rasterio.open(rec.image_masked) as ds:
        alpha = ds.read(4) > 0
    assert np.array_equal(img.valid, alpha & ~udm)
    assert 0 < img.valid.mean() < 1


def test_labels_map_and_pixel_agree(synth_root):
    rec = next(iter(scan(synth_root).values()))[0]
    img = read_image(rec)
    a = rasterize_footprints(read_labels(rec).geometry, img.shape, img.transform)
    b = rasterize_footprints(read_labels_pix(rec).geometry, img.shape)
    assert a.sum() > 0 and np.array_equal(a, b)


def test_labels_are_reprojected_to_the_raster_crs(synth_root):
    rec = next(iter(scan(synth_root).values()))[0]
    gdf = read_labels(rec, crs="EPSG:4326")
    assert gdf.crs.to_epsg() == 4326
    assert -180 <= gdf.total_bounds[0] <= 180


def _copy_aoi(src_root, tmp_path):
    aoi = sorted((src_root / "train").iterdir())[0]
    dst = tmp_path / "train" / aoi.name
    shutil.copytree(aoi, dst)
    return dst


def test_empty_root_is_a_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(SN7DataError, match="no AOIs found"):
        scan(tmp_path)


def test_misnamed_image_is_a_clear_error(synth_root, tmp_path):
    aoi = _copy_aoi(synth_root, tmp_path)
    (aoi / "images" / "mosaic_2018.tif").write_bytes(b"")
    with pytest.raises(SN7DataError, match="misnamed image") as e:
        scan(tmp_path)
    assert "mosaic_2018.tif" in str(e.value)


def _first(aoi):
    return sorted((aoi / "images").glob("*.tif"))[0]


def test_image_without_crs(synth_root, tmp_path):
    aoi = _copy_aoi(synth_root, tmp_path)
    p = _first(aoi)
    with rasterio.open(p) as ds:
        prof, arr = ds.profile, ds.read()
    del prof["crs"]
    p.unlink()
    with rasterio.open(p, "w", **prof) as ds:
        ds.write(arr)
    rec = scan(tmp_path)[aoi.name][0]
    with pytest.raises(SN7DataError, match="no CRS") as e:
        read_image(rec)
    assert rec.image.name in str(e.value)


def test_truncated_tiff(synth_root, tmp_path):
    aoi = _copy_aoi(synth_root, tmp_path)
    p = _first(aoi)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(SN7DataError, match="truncated|not a readable") as e:
        read_image(scan(tmp_path)[aoi.name][0])
    assert p.name in str(e.value)


def test_wrong_band_count(synth_root, tmp_path):
    aoi = _copy_aoi(synth_root, tmp_path)
    p = _first(aoi)
    with rasterio.open(p) as ds:
        prof, arr = ds.profile, ds.read([1, 2, 3])
    prof.update(count=3, alpha="NO")
    p.unlink()
    with rasterio.open(p, "w", **prof) as ds:
        ds.write(arr)
    with pytest.raises(SN7DataError, match=r"has 3 band\(s\) but input.count=4"):
        read_image(scan(tmp_path)[aoi.name][0])


def test_real_sample_reads(real_sample):
    recs = scan(real_sample)[REAL_AOI]
    assert len(recs) == 1 and recs[0].udm is None
    img = read_image(recs[0])
    assert img.shape == (512, 1024) and img.crs.to_epsg() == 3857
    assert abs(img.transform.a - 4.777) < 0.01
    assert img.valid.mean() > 0.5


def test_real_sample_map_and_pixel_labels_rasterize_alike(real_sample):
    rec = scan(real_sample)[REAL_AOI][0]
    img = read_image(rec)
    m = read_labels(rec, img.crs)
    p = read_labels_pix(rec)
    assert len(m) == len(p) == 1530
    a = rasterize_footprints(m.geometry, img.shape, img.transform).astype(bool)
    b = rasterize_footprints(p.geometry, img.shape).astype(bool)
    iou = (a & b).sum() / (a | b).sum()
    assert iou >= 0.99, iou
    inst = instance_raster(m, img.shape, img.transform)
    assert len(np.unique(inst)) > 1000
