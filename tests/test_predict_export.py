import json
import shutil
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
import torch

from spacenet7 import export, predict, vectorize
from spacenet7.config import ExportConfig, Grid, PredictConfig, VectorizeConfig
from spacenet7.data.bands import InputSpec
from spacenet7.data.sn7 import scan
from spacenet7.errors import SN7DataError
from spacenet7.io import probability
from spacenet7.io.artifacts import load_vectors
from spacenet7.io.vector import area_m2, pixel_to_map
from spacenet7.metrics.table import read_table
from spacenet7.models import inference
from spacenet7.models.mosaic import predict_mosaic


@pytest.fixture(scope="module")
def run(synth_root, trained_checkpoint, tmp_path_factory):
    """A briefly trained model, its predictions, vectors and exports for the last AOI."""
    d = tmp_path_factory.mktemp("run")
    aois = sorted(scan(synth_root))
    ckpt = trained_checkpoint  # conftest's briefly trained demo network, shared across modules
    pcfg = PredictConfig(
        checkpoint=str(ckpt),
        data_root=str(synth_root),
        aois=[aois[-1]],
        out_dir=str(d / "pred"),
        tile=128,
        overlap=32,
        block=96,
        progress=False,
    )
    predict.run(pcfg)
    vcfg = VectorizeConfig(pred_dir=str(d / "pred"), out_dir=str(d / "vec"), threshold=0.3)
    vectorize.run(vcfg)
    ecfg = ExportConfig(vec_dir=str(d / "vec"), out_dir=str(d / "fp"), submission=str(d / "submission.csv"))
    export.run(ecfg)
    return {"dir": d, "aoi": aois[-1], "ckpt": ckpt, "pcfg": pcfg, "vcfg": vcfg, "ecfg": ecfg, "root": synth_root}


def test_predictions_are_georeferenced_cogs_with_nodata(run):
    recs = scan(run["root"])[run["aoi"]]
    for rec in recs:
        p = run["dir"] / "pred" / run["aoi"] / f"{rec.stem}.tif"
        with rasterio.open(p) as ds, rasterio.open(rec.image) as src:
            assert ds.crs == src.crs and ds.transform == src.transform and ds.count == 3
            assert ds.descriptions == ("footprint", "boundary", "contact")
            assert ds.profile["compress"].lower() == "deflate"
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            a = ds.read(1)
        if rec.udm is not None:
            with rasterio.open(rec.udm) as u:
                cloud = u.read(1) > 0
            assert (a[cloud] == 255).all() and (a[~cloud] <= 254).all()
    assert not (run["dir"] / "pred" / run["aoi"] / ".raw").exists()


class _PixelNet(torch.nn.Module):
    """A 1x1 convolution: the sliding window must reproduce it exactly (no seams)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        torch.nn.init.normal_(self.conv.weight)

    def forward(self, x):
        return self.conv(x)


def test_sliding_window_blending_leaves_no_seams():
    net = _PixelNet().eval()
    model = inference.LoadedModel(net, 1.0, InputSpec(), torch.device("cpu"))
    rgb = np.random.default_rng(0).integers(0, 255, (3, 300, 270), dtype=np.uint8)
    out = inference.sliding_window(model, rgb, tile=128, overlap=48, batch_size=3, tta="d4")
    with torch.no_grad():
        direct = net(torch.from_numpy(rgb).float()[None] / 255).sigmoid()[0].numpy()
    assert np.abs(out - direct).max() < 1e-5


def test_multiscale_tta_lands_back_on_the_model_grid(tmp_path):
    """Scales read at ``upscale * s`` come back aligned: a per-pixel net over a smooth image gives
    the same probabilities at every scale (a shifted, transposed or wrongly sized resize would not)."""
    from spacenet7.data.sn7 import records_from_files

    yy, xx = np.mgrid[0:96, 0:80]
    band = lambda a, b: (127 + 100 * np.sin(yy / a) * np.cos(xx / b)).astype(np.uint8)  # noqa: E731
    rgba = np.stack([band(9, 13), band(11, 7), band(15, 10), np.full((96, 80), 255, np.uint8)])
    path = tmp_path / "global_monthly_2020_01_mosaic_A.tif"
    profile = dict(driver="GTiff", width=80, height=96, count=4, dtype="uint8", crs="EPSG:3857")
    with rasterio.open(path, "w", transform=rasterio.Affine(4.78, 0, 0, 0, -4.78, 0), **profile) as ds:
        ds.write(rgba)
    rec = records_from_files([path])["A"][0]
    torch.manual_seed(0)
    model = inference.LoadedModel(_PixelNet().eval(), 2.0, InputSpec(), torch.device("cpu"))
    kw = dict(tile=64, overlap=16, grid=Grid.upscaled)
    one = predict_mosaic(model, rec, tmp_path / "one.tif", **kw)
    multi = predict_mosaic(model, rec, tmp_path / "multi.tif", scales=(0.8, 1.0, 1.25), **kw)
    with rasterio.open(one) as a, rasterio.open(multi) as b:
        assert (a.shape, a.transform) == (b.shape, b.transform) == ((192, 160), a.transform)
        pa, pb = a.read(1).astype(int)[8:-8, 8:-8], b.read(1).astype(int)[8:-8, 8:-8]
    assert pa.std() > 8  # the image's pattern reaches the probabilities
    assert np.abs(pa - pb).mean() < 0.25 and np.abs(pa - pb).max() <= 3
    assert np.abs(pa[2:] - pa[:-2]).mean() > 0.5  # a map one source pixel off would fail the line above


@pytest.mark.parametrize("k, mirror", [(1, False), (2, False), (0, True), (3, True)])
def test_d4_tta_is_invariant_to_the_views_it_averages(k, mirror):
    """Averaged over the 8 rotations/mirrors, an orientation-sensitive net becomes exactly equivariant."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False).eval()  # random 3x3 kernels: no symmetry
    model = inference.LoadedModel(net, 1.0, InputSpec(), torch.device("cpu"))
    x = torch.rand(2, 3, 16, 16)
    view = lambda t: torch.rot90(t.flip(3) if mirror else t, k, (2, 3))  # noqa: E731
    with torch.no_grad():
        tta = inference.predict_batch(model, x, "d4")
        assert torch.allclose(inference.predict_batch(model, view(x), "d4"), view(tta), atol=1e-6)
        plain = inference.predict_batch(model, x, None)
        assert not torch.allclose(inference.predict_batch(model, view(x), None), view(plain), atol=1e-3)


def test_temporal_fusion_blends_with_the_valid_mean(run, tmp_path):
    cfg = PredictConfig(**{**run["pcfg"].__dict__, "out_dir": str(tmp_path), "fusion": False})
    predict.run(cfg)
    raw = sorted((tmp_path / run["aoi"]).glob("*.tif"))
    fused = [run["dir"] / "pred" / run["aoi"] / p.name for p in raw]
    stack = np.stack([rasterio.open(p).read(1).astype(float) for p in raw])
    valid = stack != 255
    mean = np.where(valid, stack, 0).sum(0) / np.maximum(valid.sum(0), 1)
    expect = np.round((1 - cfg.fusion_weight) * stack[0] + cfg.fusion_weight * mean)
    got = rasterio.open(fused[0]).read(1).astype(float)
    assert np.abs(got - expect)[valid[0]].max() <= 1


def test_checkpoint_of_another_architecture_is_a_clear_error(run, tmp_path):
    other = {
        "_target_": "segmentation_models_pytorch.create_model",
        "arch": "FPN",
        "encoder_name": "resnet18",
        "encoder_weights": None,
        "in_channels": 3,
        "classes": 3,
    }
    cfg = PredictConfig(**{**run["pcfg"].__dict__, "out_dir": str(tmp_path), "model": other})
    with pytest.raises(SN7DataError, match="do not fit the architecture FPN"):
        predict.run(cfg)
    assert not list(tmp_path.rglob("*.tif"))


def test_mosaic_with_other_band_count_is_a_clear_error(run, tmp_path):
    rec = scan(run["root"])[run["aoi"]][0]
    dst = tmp_path / "train" / run["aoi"] / "images"
    dst.mkdir(parents=True)
    with rasterio.open(rec.image) as ds:
        prof, arr = ds.profile, ds.read()
    prof.update(count=5, alpha="NO", photometric="MINISBLACK")
    with rasterio.open(dst / rec.image.name, "w", **prof) as ds:
        ds.write(np.concatenate([arr, arr[:1]]))
    cfg = PredictConfig(**{**run["pcfg"].__dict__, "data_root": str(tmp_path), "out_dir": str(tmp_path / "out")})
    with pytest.raises(SN7DataError, match="has 5 band\\(s\\) but input.count=4"):
        predict.run(cfg)
    assert not list((tmp_path / "out").rglob("*.tif")) and not list((tmp_path / "out").rglob(".raw"))


def test_prediction_without_crs_and_all_nodata_month_are_clear_errors(run, tmp_path):
    src = run["dir"] / "pred" / run["aoi"]
    for problem in ("crs", "nodata"):
        d = tmp_path / problem / run["aoi"]
        shutil.copytree(src, d)
        p = sorted(d.glob("*.tif"))[1]
        with rasterio.open(p) as ds:
            prof, arr = ds.profile, ds.read()
        prof.update(driver="GTiff")
        if problem == "crs":
            del prof["crs"]
        else:
            arr[:] = 255
        p.unlink()
        with rasterio.open(p, "w", **prof) as ds:
            ds.write(arr)
        cfg = VectorizeConfig(pred_dir=str(tmp_path / problem), out_dir=str(tmp_path / f"vec_{problem}"))
        with pytest.raises(SN7DataError, match="no CRS" if problem == "crs" else "every pixel is nodata") as e:
            vectorize.run(cfg)
        assert p.name in str(e.value)
        assert not (tmp_path / f"vec_{problem}").exists() or not list((tmp_path / f"vec_{problem}").iterdir())


def test_vectorize_shift_moves_every_footprint_onto_the_labels_registration(run, tmp_path):
    """``shift_px`` translates every output footprint by exactly (dx, dy) source pixels, nothing else."""
    cfg = VectorizeConfig(**{**run["vcfg"].__dict__, "out_dir": str(tmp_path), "shift_px": [0.5, -0.25]})
    vectorize.run(cfg)
    base, _ = load_vectors(run["dir"] / "vec" / f"{run['aoi']}.parquet")
    moved, _ = load_vectors(tmp_path / f"{run['aoi']}.parquet")
    assert len(base) and list(moved["id"]) == list(base["id"]) and list(moved["month"]) == list(base["month"])
    a = shapely.get_coordinates(shapely.from_wkt(base["pix_wkt"].to_numpy()))
    b = shapely.get_coordinates(shapely.from_wkt(moved["pix_wkt"].to_numpy()))
    assert np.allclose(b - a, [0.5, -0.25], atol=1e-3)
    with rasterio.open(next((run["dir"] / "pred" / run["aoi"]).glob("*.tif"))) as ds:
        res = ds.res[0]  # map units follow
    geo = shapely.get_coordinates(moved.geometry.values) - shapely.get_coordinates(base.geometry.values)
    assert np.allclose(geo, [0.5 * res, 0.25 * res], atol=1e-3 * res)


def test_exports_read_back_with_crs_and_counts(run):
    gdf, meta = load_vectors(run["dir"] / "vec" / f"{run['aoi']}.parquet")
    gpkg = run["dir"] / "fp" / f"{run['aoi']}.gpkg"
    layers = [name for name, _ in pyogrio.list_layers(gpkg)]
    assert {"buildings", "buildings_by_month", "layer_styles"} <= set(layers)
    assert len(layers) == len(meta["months"]) + 3
    for m in meta["months"]:
        gj = run["dir"] / "fp" / run["aoi"] / f"{m['stem']}.geojson"
        back = gpd.read_file(gj)
        n = int((gdf["stem"] == m["stem"]).sum())
        assert len(back) == n
        assert back.crs is not None and back.crs.to_epsg() == 4326  # RFC 7946, whatever the source CRS
        assert list(back.columns[:4]) == ["id", "month", "first_seen", "last_seen"]
        layer = gpd.read_file(gpkg, layer="m" + m["month"].replace("-", "_"))
        assert len(layer) == n and layer.crs.to_epsg() == 3857
    b = gpd.read_file(gpkg, layer="buildings")
    assert len(b) == gdf["id"].nunique() and set(b.columns) >= {"first_seen", "last_seen", "n_months"}
    sub = read_table(run["dir"] / "submission.csv")
    assert set(sub["filename"]) == {m["stem"] for m in meta["months"]}


def test_gdal_ogrinfo_reads_every_export(run):
    if not shutil.which("ogrinfo"):
        pytest.skip("ogrinfo (Debian gdal-bin) is not installed; .ci/run installs it when apt is available")
    gdf, meta = load_vectors(run["dir"] / "vec" / f"{run['aoi']}.parquet")
    gpkg = run["dir"] / "fp" / f"{run['aoi']}.gpkg"
    for m in meta["months"]:
        n = int((gdf["stem"] == m["stem"]).sum())
        gj = run["dir"] / "fp" / run["aoi"] / f"{m['stem']}.geojson"
        for path, layer, epsg in ((gj, [], "4326"), (gpkg, ["m" + m["month"].replace("-", "_")], "3857")):
            info = subprocess.run(["ogrinfo", "-so", str(path), *(layer or ["-al"])], capture_output=True, text=True)
            assert info.returncode == 0, info.stderr
            assert f"Feature Count: {n}" in info.stdout
            assert epsg in info.stdout
            assert "month: Date" in info.stdout or "month: DateTime" in info.stdout


def test_area_is_true_ground_area():
    from shapely.geometry import box

    # a 100 m x 100 m square near Chengdu, built in UTM 48N and carried to Web Mercator
    utm = gpd.GeoDataFrame(geometry=[box(400_000, 3_360_000, 400_100, 3_360_100)], crs="EPSG:32648")
    merc = utm.to_crs("EPSG:3857")
    assert merc.area.iloc[0] > 1.3 * 10_000  # Web Mercator inflates area by 1/cos^2(lat)
    assert area_m2(merc) == pytest.approx([10_000], rel=1e-3)
    assert len(area_m2(merc.iloc[:0])) == 0


def test_export_to_wgs84_is_rfc7946(run, tmp_path):
    cfg = ExportConfig(
        **{**run["ecfg"].__dict__, "out_dir": str(tmp_path), "crs": "EPSG:4326", "submission": str(tmp_path / "s.csv")}
    )
    export.run(cfg)
    gj = sorted((tmp_path / run["aoi"]).glob("*.geojson"))[0]
    doc = json.loads(gj.read_text())
    assert "crs" not in doc  # RFC 7946: WGS84 implied, no crs member
    assert gpd.read_file(gj).crs.to_epsg() == 4326


def test_empty_month_writes_valid_empty_layers(tmp_path):
    aoi = "L15-0001E-0001N_1_1_13"
    stems = [f"global_monthly_2020_0{m}_mosaic_{aoi}" for m in (1, 2)]
    from shapely.geometry import box

    g = gpd.GeoDataFrame(
        {
            "id": [1],
            "stem": [stems[0]],
            "month": ["2020-01"],
            "first_seen": ["2020-01"],
            "last_seen": ["2020-01"],
            "n_months": [1],
            "filled": [False],
            "pix_wkt": [box(0, 0, 5, 5).wkt],
        },
        geometry=[box(0, 0, 20, 20)],
        crs="EPSG:3857",
    )
    (tmp_path / "vec").mkdir()
    g.to_parquet(tmp_path / "vec" / f"{aoi}.parquet")
    (tmp_path / "vec" / f"{aoi}.json").write_text(
        json.dumps({"aoi": aoi, "months": [{"stem": s, "month": f"2020-0{i + 1}"} for i, s in enumerate(stems)]})
    )
    export.run(ExportConfig(vec_dir=str(tmp_path / "vec"), out_dir=str(tmp_path / "fp"), submission=str(tmp_path / "s.csv")))
    empty = gpd.read_file(tmp_path / "fp" / aoi / f"{stems[1]}.geojson")
    assert len(empty) == 0 and empty.crs.to_epsg() == 4326
    assert len(gpd.read_file(tmp_path / "fp" / f"{aoi}.gpkg", layer="m2020_02")) == 0
    sub = pd.read_csv(tmp_path / "s.csv")
    assert (sub["filename"] == stems[1]).sum() == 1 and sub.loc[sub.filename == stems[1], "geometry"].iloc[0] == "POLYGON EMPTY"


def test_unknown_export_crs_fails_before_writing(run, tmp_path):
    from spacenet7.errors import SN7Error

    cfg = ExportConfig(
        **{**run["ecfg"].__dict__, "out_dir": str(tmp_path / "fp"), "crs": "EPSG:99999999", "submission": str(tmp_path / "s.csv")}
    )
    with pytest.raises(SN7Error, match="crs='EPSG:99999999' is not a CRS"):
        export.run(cfg)
    assert not (tmp_path / "fp").exists() and not (tmp_path / "s.csv").exists()


def test_partial_files_of_a_killed_write_are_invisible_and_cleared(tmp_path):
    """A temp file left by a kill during a write is never read as output, and the next run removes it."""
    from spacenet7.io.atomic import atomic_path, clear_partials

    target = tmp_path / "vectors" / "A.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("failed mid-write")
    assert not target.exists() and not tmp.exists()
    tmp.write_text("half written")  # what SIGKILL leaves: the temp file, never renamed or removed
    assert tmp.name.startswith(".A.parquet.") and tmp.suffix == ".partial"
    assert not list((tmp_path / "vectors").glob("*.parquet")), "a reader's glob would pick up the partial file"
    assert clear_partials(tmp_path, "B.parquet") == 0 and tmp.exists()
    assert clear_partials(tmp_path) == 1 and not tmp.exists()


def test_the_vector_stages_import_no_torch():
    """vectorize, export and evaluate read probability rasters and tables: no torch, no Lightning."""
    code = "import sys, spacenet7.vectorize, spacenet7.export, spacenet7.evaluate; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_band_prediction_is_the_whole_mosaics_band(run, tmp_path):
    """``band_frac``: only the right band (plus its tiles' margin, on the whole mosaic's tile grid) is predicted,
    its offset in the mosaic recorded; its probabilities are the whole mosaic's there."""
    common = {**run["pcfg"].__dict__, "tile": 64, "overlap": 16, "block": 1024, "amp": False}
    predict.run(PredictConfig(**{**common, "out_dir": str(tmp_path / "whole")}))
    predict.run(PredictConfig(**{**common, "out_dir": str(tmp_path / "band"), "band_frac": 0.25}))
    whole = sorted((tmp_path / "whole" / run["aoi"]).glob("*.tif"))
    assert whole and [p.name for p in whole] == sorted(p.name for p in (tmp_path / "band" / run["aoi"]).glob("*.tif"))
    for a in whole:
        with rasterio.open(a) as da, rasterio.open(tmp_path / "band" / run["aoi"] / a.name) as db:
            # band cols 192-256 of 256; one 64 px tile of margin, floored to the tile step (48 px): from col 96
            assert db.tags()["source_offset"] == "96 0" and (db.width, db.height) == (160, da.height)
            assert db.transform == da.window_transform(rasterio.windows.Window(96, 0, 160, da.height))
            pa, pb = da.read().astype(int), db.read().astype(int)
        assert np.abs(pa[:, :, 192:] - pb[:, :, 192 - 96 :]).max() <= 1  # fusion's rounding of the all-month mean


def test_vectorizing_part_of_a_mosaic_writes_the_mosaics_pixels(synth_root, tmp_path):
    """A probability raster of part of a mosaic (``source_offset``) gives the footprints the whole mosaic's
    raster gives there, in the whole mosaic's pixel and map coordinates."""
    from spacenet7.serve.testing import oracle_predictions

    aoi = sorted(scan(synth_root))[-1]
    oracle_predictions(synth_root, aoi, tmp_path / "whole")
    (tmp_path / "part" / aoi).mkdir(parents=True)
    c0, r0 = 100, 60
    for src in sorted((tmp_path / "whole" / aoi).glob("*.tif")):
        with rasterio.open(src) as ds:
            win = rasterio.windows.Window(c0, r0, ds.width - c0, ds.height - r0)
            prof = probability.profile(ds.crs, ds.window_transform(win), int(win.width), int(win.height))
            with rasterio.open(tmp_path / "part" / aoi / src.name, "w", **prof) as dst:
                dst.write(ds.read(window=win))
                probability.describe(dst, 1.0, "source", offset=(c0, r0))
    probability.mark_complete(tmp_path / "part" / aoi, sorted((tmp_path / "part" / aoi).glob("*.tif")))
    vecs = {}
    for name in ("whole", "part"):
        vectorize.run(
            VectorizeConfig(
                pred_dir=str(tmp_path / name), out_dir=str(tmp_path / f"vec_{name}"), shift_px=[0.25, 0.5], simplify_px=0
            )
        )
        vecs[name] = load_vectors(tmp_path / f"vec_{name}" / f"{aoi}.parquet")

    def inside(gdf):  # footprints clear of the part's edges: month, pixel and map polygons
        pix = shapely.from_wkt(gdf["pix_wkt"].to_numpy())
        keep = (shapely.bounds(pix)[:, 0] > c0 + 2) & (shapely.bounds(pix)[:, 1] > r0 + 2)
        return gdf["month"].to_numpy()[keep], pix[keep], gdf.geometry.values[keep]

    (wm, wp, _), (pm, pp, pg) = inside(vecs["whole"][0]), inside(vecs["part"][0])
    assert len(wp) > 5 and len(wp) == len(pp)
    same = 0
    for month, poly in zip(wm, wp):  # each one is the part's footprint there (the oracle's flat probabilities
        # leave the watershed ties, which it breaks by position in the array: a pixel may go to the neighbour)
        cand = [k for k in np.flatnonzero(pm == month) if shapely.intersects(pp[k], poly)]
        k = max(cand, key=lambda k: shapely.area(shapely.intersection(pp[k], poly)))
        assert shapely.area(shapely.intersection(pp[k], poly)) / shapely.area(shapely.union(pp[k], poly)) > 0.5
        same += bool(shapely.equals(pp[k], poly))
    # map coordinates: the whole mosaic's transform applied to the mosaic's pixel coordinates
    whole_transform = rasterio.Affine(*vecs["whole"][1]["transform"])
    assert np.allclose(shapely.get_coordinates(pg), shapely.get_coordinates(pixel_to_map(pp, whole_transform)))
    assert same >= len(wp) // 2  # a shift of even one pixel would leave none the same
    assert vecs["part"][1]["transform"] == vecs["whole"][1]["transform"]


def test_a_bad_source_offset_tag_is_one_line_naming_the_raster(tmp_path):
    path = tmp_path / "month.tif"
    prof = probability.profile("EPSG:3857", rasterio.Affine(4.78, 0, 0, 0, -4.78, 0), 8, 8)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(np.zeros((3, 8, 8), np.uint8))
        probability.describe(dst, 1.0, "source", offset=(5, 7))
    assert probability.source_offset(path) == (5, 7)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(source_offset="5 minus-seven")
    with pytest.raises(SN7DataError, match="source_offset tag '5 minus-seven' is not two non-negative integers") as exc:
        probability.source_offset(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
