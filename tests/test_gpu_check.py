"""bench/gpu_check.sh's CPU side: the carried folder (chips, mosaics, stubs, manifest) under the device's 64 MiB."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent


def sh(*args: str, carry: Path, out: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CARRY": str(carry), "OUT": str(out)}
    return subprocess.run(
        ["bash", "bench/gpu_check.sh", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def carry(synth_root, tmp_path_factory) -> Path:
    carry = tmp_path_factory.mktemp("gpu") / "carry"
    r = sh(
        "--prepare-only",
        "--places",
        str(synth_root),
        "--months",
        "2",
        "--no-wheels",
        carry=carry,
        out=carry.parent / "out",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MiB carried" in r.stdout
    return carry


def test_prepare_only_builds_what_the_device_needs(carry, synth_root):
    manifest = json.loads((carry / "manifest.json").read_text())
    aois = sorted(p.name for p in (synth_root / "train").iterdir() if p.is_dir())
    # two evenly spread months of every AOI, the mosaics only (the labels went into the chips)
    mosaics = sorted(carry.glob("data/*/train/*/images/*.tif"))
    assert len(mosaics) == 2 * len(aois) and manifest["places"][synth_root.name]["months"] == 2 * len(aois)
    assert not list(carry.glob("data/*/train/*/labels*"))
    # the chips: the recipe's target rasters, their mosaics named relative to the repository root
    meta = json.loads((carry / "chips" / "chips.json").read_text())
    assert meta["layout"] == "rasters" and meta["upscale"] == 3.0 and meta["split"] == "spatial"
    index = pd.read_parquet(carry / "chips" / "index.parquet")
    assert set(index["split"]) == {"train", "val"}
    for image in index["image"].unique():
        assert not Path(image).is_absolute() and (REPO / image).resolve().is_file()
    assert (REPO / manifest["chips"]).resolve() == (carry / "chips").resolve()
    assert all((REPO / r).resolve().is_dir() for r in manifest["data_root"].split(os.pathsep))
    assert manifest["pretrain"] is None and manifest["wheels"] == []
    # under what travels to the device, with the working tree
    assert 0 < manifest["carry_bytes"] and manifest["carry_bytes"] + manifest["worktree_bytes"] < 64 * 2**20
    assert sum(manifest["files"].values()) == manifest["carry_bytes"]


def test_the_stubs_stand_in_for_the_vector_stack(carry, tmp_path):
    """With pyogrio and geopandas shadowed by the stubs (the device has neither), train and predict import and predict runs."""
    from model_fixtures import geotiff, random_checkpoint

    img = geotiff(tmp_path / "area_2020-01.tif")
    ckpt = random_checkpoint(tmp_path / "m.ckpt")
    stubs = os.pathsep.join(str(carry / "stubs" / m) for m in ("pyogrio", "geopandas"))
    code = (
        "import pyogrio, pyogrio.errors, geopandas, spacenet7.train, spacenet7.cli; "
        "assert 'stub' in pyogrio.__version__ and 'stub' in geopandas.__version__; "
        "from spacenet7 import predict; from spacenet7.config import PredictConfig; "
        f"out = predict.run(PredictConfig(checkpoint={str(ckpt)!r}, images=[{str(img)!r}], aoi='area', "
        f"out_dir={str(tmp_path / 'p')!r}, tta=False, progress=False, grid='upscaled')); print(len(out)); "
        "geopandas.read_file('x')"
    )
    env = {**os.environ, "PYTHONPATH": stubs + os.pathsep + str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.stdout.strip().splitlines()[-1] == "1", r.stdout + r.stderr
    assert "ImportError: geopandas is not installed on this machine" in r.stderr


def test_the_device_plan_runs_the_issue_steps(carry, tmp_path):
    r = sh("--dry-run", "--budget-s", "600", carry=carry, out=tmp_path / "out", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    plan = r.stdout
    assert (
        "[dry-run] finetune:" in plan
        and "train experiment=real_sample trainer=gpu" in plan
        and "max_epochs=240" in plan
        and "init_from" not in plan
    )
    assert f"chip_dir={os.path.relpath(carry / 'chips', REPO)}" in plan
    assert "[dry-run] sn7_full:" in plan and "experiment=sn7_full" in plan and "max_epochs=2" in plan
    assert "[dry-run] predict:" in plan and "device=cuda" in plan and "grid=upscaled" in plan and "tta=true" in plan
    for variant in ("eager, 1 view", "torch.compile, 1 view", "eager, 8 views", "torch.compile, 8 views"):
        assert f"8192^2 mosaic at 3x, batch 32, {variant}" in plan


def test_prepare_refuses_what_would_not_travel(synth_root, tmp_path):
    r = sh(
        "--prepare-only",
        "--places",
        str(synth_root),
        "--months",
        "1",
        "--pretrain",
        "none",
        "--no-wheels",
        "--limit-mib",
        "0.01",
        carry=tmp_path / "carry",
        out=tmp_path / "out",
    )
    assert r.returncode == 1 and "would travel, over 0.01 MiB; largest:" in r.stderr


def test_prepare_refuses_a_missing_pretraining_checkpoint_before_any_work(synth_root, tmp_path):
    r = sh(
        "--prepare-only",
        "--places",
        str(synth_root),
        "--pretrain",
        str(tmp_path / "absent.ckpt"),
        "--no-wheels",
        carry=tmp_path / "carry",
        out=tmp_path / "out",
    )
    assert r.returncode == 1 and f"{tmp_path / 'absent.ckpt'}: no such pretraining checkpoint" in r.stderr
    assert not (tmp_path / "carry").exists()


def test_the_device_side_refuses_without_a_carried_folder(tmp_path):
    r = sh(carry=tmp_path / "absent", out=tmp_path / "out", timeout=60)
    assert r.returncode == 1 and "--prepare-only" in r.stderr
