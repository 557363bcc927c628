"""The package's structure: one home for the run folder's layout, and no stage reaching into another."""

from __future__ import annotations

import json
from pathlib import Path

from spacenet7.config import ChipConfig, EvaluateConfig, ExportConfig, Holdout, PredictConfig, TrainConfig, VectorizeConfig
from spacenet7.io.layout import DEMO, RunLayout, TrainLayout


def test_run_layout_is_every_path_of_a_run_folder(tmp_path):
    run = RunLayout(tmp_path / "run")
    assert run == RunLayout(str(tmp_path / "run")) and isinstance(run.root, Path)
    assert run.manifest == run.root / "pipeline.json"
    assert run.train == TrainLayout(run.root / "train")
    assert (run.train.best, run.train.last) == (
        run.root / "train/checkpoints/best.ckpt",
        run.root / "train/checkpoints/last.ckpt",
    )
    assert run.prediction("A", "m1") == run.predictions / "A" / "m1.tif"
    assert run.vector_file("A") == run.vectors / "A.parquet"
    assert run.pretrain.train.best == run.root / "pretrain/train/checkpoints/best.ckpt"
    assert RunLayout.of_checkpoint(run.train.last) == RunLayout(run.root.resolve())
    assert RunLayout.of_checkpoint(tmp_path / "model.ckpt") is None


def test_the_stage_defaults_are_the_demo_runs_layout():
    """Run one by one with their defaults, the stages hand off through ``runs/demo`` as the pipeline does."""
    assert ChipConfig().out_dir == TrainConfig().chip_dir == DEMO.chips.as_posix() == "runs/demo/chips"
    assert TrainConfig().run_dir == "runs/demo/train"
    assert PredictConfig().out_dir == VectorizeConfig().pred_dir == "runs/demo/predictions"
    assert VectorizeConfig().out_dir == ExportConfig().vec_dir == "runs/demo/vectors"
    assert ExportConfig().submission == EvaluateConfig().submission == "runs/demo/submission.csv"
    assert EvaluateConfig().out == "runs/demo/metrics.json"


def test_the_pipelines_handoffs_follow_the_run_layout(tmp_path):
    from spacenet7.pipeline import handoffs

    run = RunLayout(tmp_path / "run")
    wired = handoffs(run.root, "data", Holdout.band, 0.25, pretrain_dir=run.pretrain.root)
    paths = json.dumps(wired)
    assert wired["predict"]["checkpoint"] == str(run.train.last) and wired["train"]["init_from"] == str(run.pretrain.train.best)
    for path in (run.chips, run.train.root, run.predictions, run.vectors, run.footprints, run.submission, run.metrics):
        assert json.dumps(str(path)) in paths
    assert handoffs(run.root, "data", Holdout.aoi, 0.25)["predict"]["checkpoint"] == str(run.train.best)


def _modules_after_import(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module``."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_chip_and_the_artifact_readers_do_not_import_torch():
    """Cutting chips and reading the files the stages hand over needs no deep-learning stack."""
    for module in ("spacenet7.chip", "spacenet7.io.artifacts", "spacenet7.vectorize", "spacenet7.export"):
        loaded = _modules_after_import(module)
        assert not {"torch", "lightning"} & loaded, f"{module} imports torch or lightning"


def test_the_registry_names_each_stages_schema_module_and_config_file():
    """One table (spacenet7/stages.py) knows every stage: its config dataclass, its module's run(cfg), conf/<name>.yaml."""
    import dataclasses
    import importlib.util

    from spacenet7.config import CONF_DIR, SCHEMAS, PipelineConfig
    from spacenet7.stages import PIPELINE_STAGES, REGISTRY, STAGES

    assert list(STAGES) == [s.name for s in REGISTRY] and list(SCHEMAS) == list(STAGES)
    for stage in REGISTRY:
        assert dataclasses.is_dataclass(SCHEMAS[stage.name]) and SCHEMAS[stage.name].__name__ == stage.schema
        assert importlib.util.find_spec(stage.module) is not None, stage.module
        assert (CONF_DIR / f"{stage.name}.yaml").is_file()
        assert stage.description and "\n" not in stage.description
    # the pipeline's stages come first, in the order they run, and are the nodes of its config tree
    assert [s.name for s in REGISTRY[: len(PIPELINE_STAGES)]] == list(PIPELINE_STAGES)
    nodes = [f.name for f in dataclasses.fields(PipelineConfig) if f.name in STAGES]
    assert nodes == list(PIPELINE_STAGES)


def test_a_stage_runs_through_the_registry(monkeypatch):
    from spacenet7 import stages

    seen = []
    monkeypatch.setattr("spacenet7.evaluate.run", lambda cfg, **kw: seen.append((cfg, kw)) or "done")
    assert stages.run_stage("evaluate", "cfg", extra=1) == "done" and seen == [("cfg", {"extra": 1})]
