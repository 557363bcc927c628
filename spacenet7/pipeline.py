"""Stage ``pipeline``: synth (if the data is missing) -> chip -> train -> predict -> vectorize -> export -> evaluate.

One config tree (:class:`~spacenet7.config.PipelineConfig`): each stage's node is composed from
that stage's own ``conf/<stage>.yaml`` (and, for ``train``, the group choices in ``groups.train``),
then the pipeline's settings for it are merged in, then the hand-off paths (:func:`handoffs`,
the one place they are derived from ``run_dir`` and ``data_root``). :func:`resolve` does this
when the config is composed, so a typo, a wrong type or a bad value fails before any stage runs.
The stages hand off through files under ``run_dir``. What is held out and scored:

- ``holdout=aoi``: the last ``n_test_aois`` AOIs (sorted), never chipped or trained on;
- ``holdout=band``: the right ``band_frac`` of every AOI (the training run's validation band;
  training windows never reach it). Prediction uses the last checkpoint, not the one the band
  selected, and evaluate scores only that band of each AOI (``evaluate.band_frac``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf, open_dict

from spacenet7.config import TRAIN_GROUPS, Holdout, PipelineConfig, StageGroups, TrainGroups, check_stages, compose_node
from spacenet7.data.sn7 import band_regions, check_not_too_deep, data_roots, scan
from spacenet7.errors import SN7Error
from spacenet7.io.atomic import atomic_path, ensure_writable_dir
from spacenet7.io.layout import RunLayout
from spacenet7.stages import PIPELINE_STAGES, run_stage

log = logging.getLogger(__name__)


def handoffs(
    run_dir: str | Path,
    data_root: str | Path,
    holdout: Holdout,
    band_frac: float,
    pretrain_dir: str | Path | None = None,
    train_aois: list[str] | None = None,
    test_aois: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The settings that wire the stages to each other's files, per stage: the one place they are derived.

    Args:
        run_dir: the run's folder; every stage writes under it.
        data_root: the data set (SN7 layout).
        holdout: what is held out (``band``: chips split spatially, the last checkpoint predicts,
            evaluate scores only that band).
        band_frac: ``holdout=band``: the held-out band's width fraction.
        pretrain_dir: the synthetic-pretraining run, whose best checkpoint ``train`` starts from.
        train_aois: the AOIs chipped and trained on (``None`` until the data has been scanned).
        test_aois: the held-out AOIs, predicted and scored.
    """
    run, root = RunLayout(Path(run_dir)), str(data_root)
    ckpt = run.train.last if holdout is Holdout.band else run.train.best
    out: dict[str, dict[str, Any]] = {
        "synth": {"out_dir": root},
        "chip": {"data_root": root, "out_dir": str(run.chips), "aois": train_aois},
        "train": {"chip_dir": str(run.chips), "run_dir": str(run.train.root)},
        "predict": {"checkpoint": str(ckpt), "data_root": root, "aois": test_aois, "out_dir": str(run.predictions)},
        "vectorize": {"pred_dir": str(run.predictions), "out_dir": str(run.vectors), "aois": test_aois},
        "export": {
            "vec_dir": str(run.vectors),
            "out_dir": str(run.footprints),
            "submission": str(run.submission),
        },
        "evaluate": {
            "data_root": root,
            "aois": test_aois,
            "submission": str(run.submission),
            "out": str(run.metrics),
        },
    }
    if pretrain_dir is not None:
        out["train"]["init_from"] = str(RunLayout(Path(pretrain_dir)).train.best)
    if holdout is Holdout.band:
        out["chip"] |= {"split": "spatial", "val_frac": band_frac}
        out["evaluate"]["band_frac"] = band_frac
    return out


def set_values(node: DictConfig) -> dict[str, Any]:
    """The keys of a stage node that the pipeline's config sets (the rest stay ``???``), as plain values."""
    out: dict[str, Any] = {}
    for key in node:
        if OmegaConf.is_missing(node, key):
            continue
        value = node._get_node(key)
        if isinstance(value, DictConfig) and OmegaConf.get_type(value) not in (dict, None):  # a nested schema node
            sub = set_values(value)
            if sub:
                out[str(key)] = sub
        elif isinstance(value, DictConfig) and not value:
            continue  # an unset swap point (train.model, ...): an empty open map
        else:
            out[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else node[key]
    return out


def _keys(d: dict[str, Any], prefix: str = "") -> list[str]:
    return [k for key, v in d.items() for k in (_keys(v, f"{prefix}{key}.") if isinstance(v, dict) else [f"{prefix}{key}"])]


def _stage_node(
    stage: str, given: dict[str, Any], wired: dict[str, Any], groups: TrainGroups | None, cache: dict[tuple[str, ...], DictConfig]
) -> Any:
    """One stage's config: its own composed config, the pipeline's settings, then the hand-offs."""
    clash = sorted(set(_keys(given)) & set(wired))
    if clash:
        raise SN7Error(
            f"pipeline: {', '.join(f'{stage}.{k}' for k in clash)} is wired by the pipeline "
            f"(from run_dir and data_root); set those instead"
        )
    choices = [] if groups is None else [f"{g}={getattr(groups, g)}" for g in TRAIN_GROUPS if getattr(groups, g) is not None]
    cached = (stage, *choices)
    if cached not in cache:  # group choices are option names, checked against conf/<group>/
        cache[cached] = compose_node(stage, choices)
    base = cache[cached].copy()
    for (
        key,
        value,
    ) in given.items():  # an empty map (predict's input) takes new keys, as with a leading + on the stage's command line
        if isinstance(value, dict) and isinstance(base.get(key), DictConfig) and not base[key]:
            with open_dict(base):
                base[key] = value
    merged = OmegaConf.merge(base, given, wired)
    return OmegaConf.to_object(merged)


def _pretrain_tree(spec: DictConfig) -> DictConfig:
    """The nested pretraining pipeline's tree: the default ``conf/pipeline.yaml`` (no recipe) under
    ``<run_dir>/pretrain``, running synth -> chip -> train, with ``spec.pretrain`` merged in."""
    pre = RunLayout(Path(spec.run_dir)).pretrain
    base = compose_node("pipeline")
    wired = {"run_dir": str(pre.root), "data_root": str(pre.synthetic_data), "stages": ["synth", "chip", "train"]}
    return cast(DictConfig, OmegaConf.merge(base, set_values(spec.pretrain), wired))


def resolve(spec: DictConfig, cache: dict[tuple[str, ...], DictConfig] | None = None) -> PipelineConfig:
    """The composed pipeline tree (schema ``_pipeline_schema``) as a :class:`PipelineConfig`: every
    stage node composed from its own config, the pipeline's settings and the hand-offs merged in,
    and checked (the stages' own checks included). The AOIs are set later, once the data is scanned.

    Raises:
        SN7Error: a hand-off path set by hand, a bad value (the stages' checks).
    """
    cache = {} if cache is None else cache  # each stage's own config, composed once per group choice
    run = {
        f.name: spec[f.name] for f in dataclasses.fields(PipelineConfig) if f.name not in (*PIPELINE_STAGES, "groups", "pretrain")
    }
    run["stages"] = list(run["stages"])
    check_stages(run["stages"])  # before composing the stages: a typo is refused at once
    groups = StageGroups(train=TrainGroups(**OmegaConf.to_container(spec.groups.train)))  # type: ignore[arg-type]
    pretrain = None
    if spec.pretrain is not None:
        pretrain = resolve(_pretrain_tree(spec), cache)
        if pretrain.pretrain is not None:
            raise SN7Error("pipeline: pretrain cannot itself have a pretrain section")
    holdout = Holdout(spec.holdout)
    wired = handoffs(
        spec.run_dir, spec.data_root, holdout, spec.band_frac, pretrain_dir=None if pretrain is None else pretrain.run_dir
    )
    nodes = {
        stage: _stage_node(stage, set_values(spec[stage]), wired[stage], groups.train if stage == "train" else None, cache)
        for stage in PIPELINE_STAGES
    }
    return PipelineConfig(**run, groups=groups, pretrain=pretrain, **nodes)


def wire(cfg: PipelineConfig, train_aois: list[str], test_aois: list[str]) -> PipelineConfig:
    """``cfg`` with the hand-offs that depend on the data: the AOIs of each stage, the held-out band."""
    wired = handoffs(
        cfg.run_dir,
        cfg.data_root,
        cfg.holdout,
        cfg.band_frac,
        pretrain_dir=None if cfg.pretrain is None else cfg.pretrain.run_dir,
        train_aois=train_aois,
        test_aois=test_aois,
    )
    return dataclasses.replace(cfg, **{s: dataclasses.replace(getattr(cfg, s), **wired[s]) for s in PIPELINE_STAGES})


def write_manifest(cfg: PipelineConfig, train_aois: list[str], test_aois: list[str]) -> Path:
    """``<run_dir>/pipeline.json``: where the data is, which AOIs were held out, and the resolved config tree."""
    path = RunLayout(Path(cfg.run_dir)).manifest
    doc = {
        "data_root": os.pathsep.join(str(r.resolve()) for r in data_roots(cfg.data_root)),
        "train_aois": train_aois,
        "test_aois": test_aois,
        "config": dataclasses.asdict(cfg),
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2))
    return path


def run(cfg: PipelineConfig) -> dict[str, object]:
    """Run the stages in order; returns each stage's outputs."""
    stages = [s for s in PIPELINE_STAGES if s in cfg.stages]
    ensure_writable_dir(cfg.run_dir)
    root = Path(cfg.data_root)
    outputs: dict[str, object] = {}
    timings: dict[str, float] = {}
    if "synth" in stages:
        stages.remove("synth")
        if not all((r / "train").is_dir() for r in data_roots(root)):
            check_not_too_deep(root)
            t0 = time.perf_counter()
            outputs["synth"] = run_stage("synth", cfg.synth)
            timings["synth"] = time.perf_counter() - t0
        else:
            log.info("pipeline: data found at %s, skipping synth", root)
    aois = sorted(scan(root))
    bands: dict[str, list[float]] = {}
    if cfg.holdout is Holdout.band:
        train_aois = test_aois = aois
        bands = band_regions(root, aois, cfg.band_frac)
        for aoi, (r0, r1, c0, c1) in bands.items():
            log.info("pipeline: held-out band rows %d-%d, cols %d-%d of %s", r0, r1, c0, c1, aoi)
    else:
        if cfg.n_test_aois < 1 or cfg.n_test_aois >= len(aois):
            raise SN7Error(f"pipeline: n_test_aois={cfg.n_test_aois} must leave at least one training AOI ({len(aois)} AOIs)")
        train_aois, test_aois = aois[: -cfg.n_test_aois], aois[-cfg.n_test_aois :]
        log.info("pipeline: training AOIs %s; held-out AOIs %s", train_aois, test_aois)
    cfg = wire(cfg, train_aois, test_aois)
    if cfg.pretrain is not None and "train" in stages:
        print(f"\n=== synthetic pretraining under {cfg.pretrain.run_dir}", flush=True)
        t0 = time.perf_counter()
        outputs["pretrain"] = run(cfg.pretrain)
        timings["pretrain"] = time.perf_counter() - t0
    write_manifest(cfg, train_aois, test_aois)
    for stage in stages:
        print(f"\n=== spacenet7 {stage}", flush=True)
        t0 = time.perf_counter()
        outputs[stage] = run_stage(stage, getattr(cfg, stage))
        timings[stage] = time.perf_counter() - t0
    layout = RunLayout(Path(cfg.run_dir))
    print("\n=== timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f" (total {sum(timings.values()):.0f}s)")
    if bands:
        for aoi, (r0, r1, c0, c1) in bands.items():
            print(f"held-out:      band rows {r0:g}-{r1:g}, cols {c0:g}-{c1:g} of {aoi}")
    else:
        print(f"held-out:      {', '.join(test_aois)}")
    if "train" in stages:
        print(f"checkpoints:   {layout.train.checkpoints}")
    if "export" in stages:
        print(f"GIS files:     {layout.footprints}/<AOI>.gpkg and <AOI>/<stem>.geojson")
        print(f"submission:    {layout.submission}")
    if "evaluate" in stages:
        print(f"metrics:       {layout.metrics}")
    return outputs
