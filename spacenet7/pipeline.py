"""Stage ``pipeline``: synth (if the data is missing) -> chip -> train -> predict -> vectorize -> export -> evaluate.

Each stage is composed from its own ``conf/<stage>.yaml`` with the hand-off paths of this run
plus ``overrides.<stage>`` from the pipeline config, exactly as if typed on the command line,
and the stages hand off through files under ``run_dir``. What is held out and scored:

- ``holdout=aoi``: the last ``n_test_aois`` AOIs (sorted), never chipped or trained on;
- ``holdout=band``: the right ``band_frac`` of every AOI (the training run's validation band;
  training windows never reach it). Prediction uses the last checkpoint, not the one the band
  selected, and evaluate scores only that band (``region``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import cast

from spacenet7.config import Holdout, PipelineConfig, compose, compose_checked
from spacenet7.data.sn7 import check_not_too_deep, image_grid, scan
from spacenet7.errors import SN7Error
from spacenet7.io.atomic import atomic_path, ensure_writable_dir

log = logging.getLogger(__name__)
ORDER = ["synth", "chip", "train", "predict", "vectorize", "export", "evaluate"]


def _list(xs: list[str]) -> str:
    return "[" + ",".join(xs) + "]"


def stage_overrides(cfg: PipelineConfig, train_aois: list[str], test_aois: list[str],
                    region: list[int] | None = None) -> dict[str, list[str]]:
    """The Hydra overrides that wire every stage to this run's files (``region``: the held-out band)."""
    run, root = Path(cfg.run_dir), cfg.data_root
    ckpt = run / "train" / "checkpoints" / ("last.ckpt" if cfg.holdout is Holdout.band else "best.ckpt")
    base = {
        "synth": [f"out_dir={root}"],
        "chip": [f"data_root={root}", f"out_dir={run / 'chips'}", f"aois={_list(train_aois)}"],
        "train": [f"chip_dir={run / 'chips'}", f"run_dir={run / 'train'}"],
        "predict": [f"checkpoint={ckpt}", f"data_root={root}", f"aois={_list(test_aois)}", f"out_dir={run / 'predictions'}"],
        "vectorize": [f"pred_dir={run / 'predictions'}", f"out_dir={run / 'vectors'}", f"aois={_list(test_aois)}"],
        "export": [f"vec_dir={run / 'vectors'}", f"out_dir={run / 'footprints'}", f"submission={run / 'submission.csv'}"],
        "evaluate": [f"data_root={root}", f"aois={_list(test_aois)}", f"submission={run / 'submission.csv'}",
                     f"out={run / 'metrics.json'}"],
    }
    if cfg.holdout is Holdout.band:
        base["chip"] += ["split=spatial", f"val_frac={cfg.band_frac}"]
        base["evaluate"] += [f"region={_list([str(v) for v in region or []])}"]
    return {k: v + flatten_overrides(cfg.overrides.get(k) or {}) for k, v in base.items()}


def band_region(root: Path, aois: list[str], frac: float) -> list[int]:
    """The held-out band ``[row0, row1, col0, col1]`` (source pixels), the same in every AOI.

    Raises:
        SN7Error: AOIs of different sizes (one pixel box cannot describe their bands).
    """
    records = scan(root, aois=aois)
    shapes = {aoi: image_grid(recs[0])[2] for aoi, recs in records.items()}
    if len(set(shapes.values())) > 1:
        raise SN7Error(f"pipeline: holdout=band needs AOIs of one size, found {shapes}")
    h, w = next(iter(shapes.values()))
    return [0, h, int(round(w * (1 - frac))), w]


def flatten_overrides(settings: dict, prefix: str = "") -> list[str]:
    """``{"logger": {"wandb": False}, "experiment": "demo_cpu"}`` -> ``["logger.wandb=false", "experiment=demo_cpu"]``."""
    out = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += flatten_overrides(value, f"{name}.")
        else:
            out.append(f"{name}={_value(value)}")
    return out


def _value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def write_manifest(run_dir: Path, data_root: Path, train_aois: list[str], test_aois: list[str],
                   overrides: dict[str, list[str]]) -> Path:
    """``<run_dir>/pipeline.json``: where the data is, which AOIs were held out, how each stage was called."""
    path = run_dir / "pipeline.json"
    doc = {"data_root": str(Path(data_root).resolve()), "train_aois": train_aois, "test_aois": test_aois,
           "stages": {k: f"spacenet7 {k} " + " ".join(v) for k, v in overrides.items()}}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2))
    return path


def pretrain_config(cfg: PipelineConfig) -> PipelineConfig:
    """The nested synthetic-pretraining pipeline: the default pipeline config, ``cfg.pretrain`` merged in."""
    from omegaconf import OmegaConf

    run_dir = Path(cfg.run_dir) / "pretrain"
    base = compose("pipeline", [f"run_dir={run_dir}", f"data_root={run_dir / 'data'}", "stages=[synth,chip,train]"])
    try:
        merged = OmegaConf.merge(OmegaConf.structured(base), dict(cfg.pretrain or {}))
    except Exception as exc:  # omegaconf's validation errors: unknown key, wrong type
        raise SN7Error(f"pipeline: bad pretrain settings ({str(exc).splitlines()[0]})") from None
    pre = cast(PipelineConfig, OmegaConf.to_object(merged))
    if pre.pretrain:
        raise SN7Error("pipeline: pretrain cannot itself have a pretrain section")
    return pre


def run(cfg: PipelineConfig) -> dict[str, object]:
    """Run the stages in order; returns each stage's outputs."""
    from spacenet7.cli import run_stage

    unknown = [s for s in cfg.stages if s not in ORDER]
    if unknown:
        raise SN7Error(f"pipeline: unknown stage(s) {unknown}; stages are {ORDER}")
    stages = [s for s in ORDER if s in cfg.stages]
    for stage, args in stage_overrides(cfg, ["_"], ["_"], [0, 1, 0, 1]).items():  # typos and bad values: before any work
        if stage in stages:
            compose_checked(stage, args)
    ensure_writable_dir(cfg.run_dir)
    root = Path(cfg.data_root)
    outputs: dict[str, object] = {}
    timings: dict[str, float] = {}
    if "synth" in stages:
        stages.remove("synth")
        if not (root / "train").is_dir():
            check_not_too_deep(root)
            t0 = time.perf_counter()
            outputs["synth"] = run_stage("synth", compose_checked("synth", stage_overrides(cfg, [], [])["synth"]))
            timings["synth"] = time.perf_counter() - t0
        else:
            log.info("pipeline: data found at %s, skipping synth", root)
    aois = sorted(scan(root))
    region = None
    if cfg.holdout is Holdout.band:
        train_aois = test_aois = aois
        region = band_region(root, aois, cfg.band_frac)
        log.info("pipeline: held-out band rows %d-%d, cols %d-%d of %s", *region, aois)
    else:
        if cfg.n_test_aois < 1 or cfg.n_test_aois >= len(aois):
            raise SN7Error(f"pipeline: n_test_aois={cfg.n_test_aois} must leave at least one training AOI ({len(aois)} AOIs)")
        train_aois, test_aois = aois[: -cfg.n_test_aois], aois[-cfg.n_test_aois :]
        log.info("pipeline: training AOIs %s; held-out AOIs %s", train_aois, test_aois)
    ovr = stage_overrides(cfg, train_aois, test_aois, region)
    configs = {stage: compose_checked(stage, ovr[stage]) for stage in stages}
    if cfg.pretrain is not None and "train" in stages:
        pre = pretrain_config(cfg)
        print(f"\n=== synthetic pretraining under {pre.run_dir}", flush=True)
        t0 = time.perf_counter()
        outputs["pretrain"] = run(pre)
        timings["pretrain"] = time.perf_counter() - t0
        ovr["train"].append(f"init_from={Path(pre.run_dir) / 'train' / 'checkpoints' / 'best.ckpt'}")
        configs["train"] = compose_checked("train", ovr["train"])
    write_manifest(Path(cfg.run_dir), root, train_aois, test_aois, ovr)
    for stage in stages:
        print(f"\n=== spacenet7 {stage} {' '.join(ovr[stage])}", flush=True)
        t0 = time.perf_counter()
        outputs[stage] = run_stage(stage, configs[stage])
        timings[stage] = time.perf_counter() - t0
    run_dir = Path(cfg.run_dir)
    print("\n=== timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f" (total {sum(timings.values()):.0f}s)")
    held = f"band rows {region[0]}-{region[1]}, cols {region[2]}-{region[3]} of " if region else ""
    print(f"held-out:      {held}{', '.join(test_aois)}")
    if "train" in stages:
        print(f"checkpoints:   {run_dir / 'train' / 'checkpoints'}")
    if "export" in stages:
        print(f"GIS files:     {run_dir / 'footprints'}/<AOI>.gpkg and <AOI>/<stem>.geojson")
        print(f"submission:    {run_dir / 'submission.csv'}")
    if "evaluate" in stages:
        print(f"metrics:       {run_dir / 'metrics.json'}")
    return outputs
