"""CPU side of the GPU check (bench/gpu_check.sh): everything the device needs, in one folder under 64 MiB.

    python bench/gpu_prepare.py [--out runs/gpu_carry] [--places ROOT ...] [--months 4]
        [--pretrain none | CHECKPOINT] [--no-wheels]
    (or: bash bench/gpu_check.sh --prepare-only [the same options])

The device (an H200 machine, no network) has torch, lightning, timm, onnxruntime and opencv but not
the geo stack, so the folder holds:

- ``data/<place>/train/<AOI>/images``: the real places' mosaics, every month of a one-month place and
  ``--months`` evenly spread months of a time series (the whole 25 would not fit), nothing else;
- ``chips/``: ``spacenet7 chip`` of that data with the real recipe's chip settings (target rasters
  at 3x, labels registered, the right quarter for validation), made here because reading the labels
  needs pyogrio (a 33 MB wheel); the index names the mosaics relative to the repository root;
- ``pretrain.bundle``, only with ``--pretrain CHECKPOINT``: a pretraining checkpoint as a bundle (training's
  ``init_from``; 3 MB instead of the checkpoint's 10). recipe=real trains from scratch, so the default is none;
  ``recipe=real_sample``'s synthetic pretraining is ``runs/real/pretrain/train/checkpoints/best.ckpt`` after
  ``spacenet7 pipeline recipe=real_sample``;
- ``wheels/``: the packages the device lacks (cp312 manylinux wheels, ``pip download``: rasterio's
  alone is 34 MiB), and ``stubs/``: importable stand-ins for pyogrio and geopandas (with pyproj 43 MB
  of wheels; nothing on the device reads or writes vector files);
- ``manifest.json``: what is there, its size, and the working tree's size beside it.

It refuses (exit 1) when the folder and the working tree together exceed ``--limit-mib`` (64:
what travels to the device).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLACES = ["../shared/data/sn7_real_sample", "../shared/data/sn7_real_timeseries"]
PRETRAIN = "none"  # recipe=real trains from scratch (conf/recipe/real.yaml: pretrain null)
# what spacenet7 train / predict import that the device image lacks (its package list: torch, lightning,
# timm, onnxruntime, opencv, numpy, pandas, scipy, scikit-image, pyarrow, pyyaml, pillow, safetensors, ...);
# pyogrio (33 MB), geopandas and pyproj (9 MB) are imported but never used there: stubs stand in for them
WHEELS = [
    "rasterio",
    "affine",
    "cligj",
    "click-plugins",
    "shapely",
    "segmentation_models_pytorch",
    "hydra-core",
    "omegaconf",
    "antlr4-python3-runtime",
    "albumentations",
    "albucore",
    "pydantic",
    "pydantic_core",
    "annotated-types",
    "typing-inspection",
    "stringzilla",
    "simsimd",
]
SDIST_ONLY = {"antlr4-python3-runtime"}  # omegaconf's pinned 4.9.3 has no wheel on the registry
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
# the real recipe's chip settings (conf/recipe/real_sample.yaml, holdout=band: split spatial, val_frac 0.25)
CHIP = [
    "layout=rasters",
    "upscale=3.0",
    "overlap=0",
    "chip_size=256",
    "split=spatial",
    "val_frac=0.25",
    "input.scaling=percentile",
    "input.resampling=lanczos",
    "label_shift_px=[0.3333,0.3333]",
    "progress=false",
]
GEOPANDAS_STUB = '''"""A stand-in for geopandas on the GPU check's device: spacenet7 imports it, nothing there uses it."""

__version__ = "0.0.0+spacenet7-gpu-check-stub"


def _absent(*args, **kwargs):
    raise ImportError("geopandas is not installed on this machine (the GPU check carries a stub)")


class GeoDataFrame:
    def __init__(self, *args, **kwargs):
        _absent()


class GeoSeries(GeoDataFrame):
    pass


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _absent
'''
PYOGRIO_STUB = '''"""A stand-in for pyogrio on the GPU check's device: spacenet7 imports it, nothing there reads vector files."""

__version__ = "0.0.0+spacenet7-gpu-check-stub"


def _absent(*args, **kwargs):
    raise ImportError("pyogrio is not installed on this machine (the GPU check carries a stub)")


read_dataframe = write_dataframe = list_layers = read_info = _absent
'''
PYOGRIO_STUB_ERRORS = '''"""pyogrio.errors stand-in."""


class DataSourceError(RuntimeError):
    pass


class DataLayerError(RuntimeError):
    pass


class FeatureError(DataLayerError):
    pass
'''


def folder_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def worktree_bytes(repo: Path) -> int:
    """Bytes of what travels besides the carried folder: tracked and untracked-not-ignored files."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    names = {n for n in out.decode().split("\0") if n}
    return sum((repo / n).stat().st_size for n in names if (repo / n).is_file())


def pick_months(n_months: int, keep: int) -> list[int]:
    """``keep`` month indices evenly spread over ``n_months`` (first and last included)."""
    if keep >= n_months:
        return list(range(n_months))
    if keep <= 1:
        return [0]
    return sorted({round(i * (n_months - 1) / (keep - 1)) for i in range(keep)})


def copy_place(root: Path, dest: Path, months: int) -> list[str]:
    """Copy each AOI's chosen months (images and label files only) of ``root`` into ``dest``; their stems."""
    from spacenet7.data.sn7 import scan

    stems = []
    for aoi, recs in scan(root).items():
        chosen = [recs[i] for i in pick_months(len(recs), months)]
        for rec in chosen:
            src_aoi = rec.image.parent.parent
            for sub in ("images", "labels", "labels_match", "labels_match_pix"):
                for f in (src_aoi / sub).glob(f"{rec.stem}*") if (src_aoi / sub).is_dir() else []:
                    (dest / "train" / aoi / sub).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dest / "train" / aoi / sub / f.name)
            stems.append(rec.stem)
    return stems


def relative_index(chips: Path, repo: Path) -> None:
    """Name the mosaics in the chip index (and chips.json) relative to the repository root, where the device runs."""
    import pandas as pd

    index_path = chips / "index.parquet"
    index = pd.read_parquet(index_path)
    index["image"] = [os.path.relpath(Path(p).resolve(), repo.resolve()) for p in index["image"]]
    index.to_parquet(index_path, index=False)
    meta_path = chips / "chips.json"
    meta = json.loads(meta_path.read_text())
    roots = meta.get("data_root", "").split(os.pathsep)
    meta["data_root"] = os.pathsep.join(os.path.relpath(Path(r).resolve(), repo.resolve()) for r in roots if r)
    if isinstance(meta.get("settings"), dict):
        meta["settings"]["data_root"] = meta["data_root"]
    meta_path.write_text(json.dumps(meta, indent=2))


def download_wheels(dest: Path) -> list[str]:
    """cp312 manylinux wheels of :data:`WHEELS`, at the versions installed here (``pip download``, no dependencies)."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = []
    for name in WHEELS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    binary = [p for p in pins if p.split("==")[0] not in SDIST_ONLY]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    cmd += ["--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest), *binary]
    subprocess.run(cmd, check=True)
    source = [p for p in pins if p.split("==")[0] in SDIST_ONLY]
    if source:  # pure Python, published as a source archive only: built into a wheel here
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), *source], check=True)
    return sorted(p.name for p in dest.glob("*.whl"))


def prepare(args: argparse.Namespace) -> dict:
    """Build the carried folder; returns the manifest."""
    from spacenet7 import chip
    from spacenet7.compose import compose

    out, repo = Path(args.out), Path(args.repo_root)
    if args.pretrain != "none" and not Path(args.pretrain).is_file():
        raise SystemExit(f"gpu_prepare: {args.pretrain}: no such pretraining checkpoint (--pretrain none trains from scratch)")
    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    t0 = time.perf_counter()
    roots, stems = [], {}
    for root in args.places:
        dest = out / "data" / Path(root).name
        stems[Path(root).name] = copy_place(Path(root), dest, args.months)
        roots.append(str(dest))
    chip.run(compose("chip", [f"data_root={os.pathsep.join(roots)}", f"out_dir={out / 'chips'}", *CHIP]))
    relative_index(out / "chips", repo)
    for sub in ("labels", "labels_match", "labels_match_pix"):  # chipped: the device needs the mosaics only
        for d in (out / "data").glob(f"*/train/*/{sub}"):
            shutil.rmtree(d)
    pretrain = None
    if args.pretrain != "none":
        from spacenet7.models.bundle import write_bundle

        pretrain = str(write_bundle(args.pretrain, out / "pretrain.bundle", name="real-pretrain"))
    for name, files in {
        "pyogrio": {"__init__.py": PYOGRIO_STUB, "errors.py": PYOGRIO_STUB_ERRORS},
        "geopandas": {"__init__.py": GEOPANDAS_STUB},
    }.items():
        (out / "stubs" / name / name).mkdir(parents=True)  # stubs/<name> goes on PYTHONPATH where <name> is missing
        for file, text in files.items():
            (out / "stubs" / name / name / file).write_text(text)
    wheels = download_wheels(out / "wheels") if args.wheels else []
    carry, tree = folder_bytes(out), worktree_bytes(repo)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "places": {name: {"months": len(s), "stems": s} for name, s in stems.items()},
        "data_root": os.pathsep.join(os.path.relpath(Path(r).resolve(), repo.resolve()) for r in roots),
        "chips": os.path.relpath((out / "chips").resolve(), repo.resolve()),
        "pretrain": os.path.relpath(Path(pretrain).resolve(), repo.resolve()) if pretrain else None,
        "wheels": wheels,
        "carry_bytes": carry,
        "worktree_bytes": tree,
        "limit_bytes": int(args.limit_mib * 2**20),
        "files": {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    total = carry + tree
    print(
        f"gpu_prepare: {out}: {carry / 2**20:.1f} MiB carried + {tree / 2**20:.1f} MiB working tree = {total / 2**20:.1f} MiB "
        f"(limit {args.limit_mib:g} MiB); {sum(len(s) for s in stems.values())} mosaics, {len(wheels)} wheels, "
        f"pretrain {'yes' if pretrain else 'no'}"
    )
    if total > manifest["limit_bytes"]:
        biggest = sorted(manifest["files"].items(), key=lambda kv: -kv[1])[:5]
        raise SystemExit(
            f"gpu_prepare: {total / 2**20:.1f} MiB would travel, over {args.limit_mib:g} MiB; largest: "
            + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in biggest)
            + " (fewer --months, or no --pretrain)"
        )
    return manifest


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/gpu_carry", help="the folder to carry (ignored by git: runs/)")
    ap.add_argument("--places", nargs="+", default=PLACES, help="data roots (default: both real places)")
    ap.add_argument("--months", type=int, default=3, help="months of a time series (evenly spread; 4 would not fit)")
    ap.add_argument(
        "--pretrain",
        default=PRETRAIN,
        help="a pretraining checkpoint for init_from, or none (the default: from scratch, as recipe=real)",
    )
    ap.add_argument("--no-wheels", dest="wheels", action="store_false", help="do not download the device's wheels")
    ap.add_argument("--limit-mib", type=float, default=64.0)
    ap.add_argument("--repo-root", default=str(REPO), help="where the device runs (mosaic paths are relative to it)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return prepare(args)


if __name__ == "__main__":
    main()
