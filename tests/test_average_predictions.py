"""bench/average_predictions.py: the per-pixel mean of several runs' probability rasters, which vectorize reads."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from spacenet7.errors import SN7DataError
from spacenet7.io.probability import completed_rasters, describe, encode, mark_complete, profile, read_prediction

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("average_predictions", REPO / "bench" / "average_predictions.py")
assert SPEC is not None and SPEC.loader is not None
average_predictions = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(average_predictions)

AOI = "L15-0001E-0001N_0001_0001_13"
TRANSFORM = Affine(1.6, 0, -13542806.9, 0, -1.6, 4578883.7)


def write_run(run: Path, months: dict[str, tuple[np.ndarray, np.ndarray]], transform: Affine = TRANSFORM) -> None:
    """A run folder whose predictions/AOI holds one finished probability raster per month."""
    aoi_dir = run / "predictions" / AOI
    aoi_dir.mkdir(parents=True)
    files = []
    for month, (prob, valid) in months.items():
        path = aoi_dir / f"global_monthly_{month}_mosaic_{AOI}.tif"
        with rasterio.open(path, "w", **profile(CRS.from_epsg(3857), transform, prob.shape[2], prob.shape[1])) as dst:
            dst.write(encode(prob, valid))
            describe(dst, upscale=3.0, grid="upscaled", offset=(640, 0))
        files.append(path)
    mark_complete(aoi_dir, files)


def test_the_mean_of_the_runs_is_written_masked_where_any_run_is_and_vectorize_can_read_it(tmp_path):
    rng = np.random.default_rng(0)
    shape = (3, 32, 48)
    runs, probs = [], []
    valid_b = np.ones(shape[1:], bool)
    valid_b[:4, :] = False  # a run with a masked strip: masked in the mean too
    for i, valid in enumerate([np.ones(shape[1:], bool), valid_b, np.ones(shape[1:], bool)]):
        months = {m: (rng.random(shape).astype(np.float32), valid) for m in ("2018_01", "2018_02")}
        write_run(tmp_path / f"run{i}", months)
        runs.append(tmp_path / f"run{i}")
        probs.append(months)

    assert average_predictions.main([str(tmp_path / "ens"), *map(str, runs)]) == 0

    out = tmp_path / "ens" / "predictions" / AOI
    files = completed_rasters(out)
    assert [f.name for f in files] == [f"global_monthly_{m}_mosaic_{AOI}.tif" for m in ("2018_01", "2018_02")]
    for month, path in zip(("2018_01", "2018_02"), files):
        prob, valid, transform, crs, upscale = read_prediction(path)
        # the mean of the stored (rounded) probabilities, rounded again
        stored = [np.round(run[month][0] * 254) / 254 for run in probs]
        expect = np.round(np.mean(stored, axis=0) * 254) / 254
        assert np.array_equal(valid, valid_b)
        np.testing.assert_allclose(prob[:, valid], expect[:, valid], atol=1e-6)
        assert (transform, crs.to_epsg(), upscale) == (TRANSFORM, 3857, 3.0)
        with rasterio.open(path) as ds:  # the grid tags that put the band back in the mosaic's pixels
            assert ds.tags()["source_offset"] == "640 0" and ds.descriptions == ("footprint", "boundary", "contact")
    assert not list(out.glob(".*partial*"))


def test_runs_with_other_months_or_another_grid_are_refused(tmp_path, capsys):
    prob = np.full((3, 8, 8), 0.5, np.float32)
    valid = np.ones((8, 8), bool)
    write_run(tmp_path / "a", {"2018_01": (prob, valid)})
    write_run(tmp_path / "b", {"2018_02": (prob, valid)})
    write_run(tmp_path / "c", {"2018_01": (prob, valid)}, transform=TRANSFORM * Affine.translation(1, 0))

    assert average_predictions.main([str(tmp_path / "ens"), str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "holds other months" in capsys.readouterr().err
    assert average_predictions.main([str(tmp_path / "ens2"), str(tmp_path / "a"), str(tmp_path / "a")]) == 0
    assert average_predictions.main([str(tmp_path / "ens2"), str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert "another grid" in capsys.readouterr().err
    with pytest.raises(SN7DataError):  # the failed rerun took the first average's record away: vectorize refuses the folder
        completed_rasters(tmp_path / "ens2" / "predictions" / AOI)
