"""Stage ``pipeline``: synth (if the data is missing) -> chip -> train -> predict -> vectorize -> export -> evaluate.

One config tree (:class:`~spacenet7.config.PipelineConfig`): each stage's node is composed from
that stage's own ``conf/<stage>.yaml`` (and, for ``train``, the group choices in ``groups.train``),
then the pipeline's settings for it are merged in, then the hand-off paths
(:func:`spacenet7.compose.handoffs`, the one place they are derived from ``run_dir`` and
``data_root``). :func:`spacenet7.compose.resolve` does this when the config is composed, so a typo, a wrong type or a bad value fails before any stage runs.
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

from spacenet7.compose import wire
from spacenet7.config import Holdout, PipelineConfig
from spacenet7.data.sn7 import band_regions, check_not_too_deep, data_roots, scan
from spacenet7.errors import SN7Error
from spacenet7.io.atomic import atomic_path, ensure_writable_dir
from spacenet7.io.layout import RunLayout
from spacenet7.stages import PIPELINE_STAGES, run_stage

log = logging.getLogger(__name__)


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
