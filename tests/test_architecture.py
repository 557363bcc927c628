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
    from spacenet7.compose import handoffs

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


PACKAGE = Path(__file__).resolve().parent.parent / "spacenet7"
TOP = {"spacenet7.__main__", "spacenet7.cli", "spacenet7.api"}  # the command line and the Python facade: above every stage


def _import_graph() -> dict[str, set[str]]:
    """Every spacenet7 module -> the spacenet7 modules it imports, at module level or inside a function
    (``from spacenet7 import evaluate`` counts as importing ``spacenet7.evaluate``), read with ``ast``."""
    import ast

    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            found: list[str] = []
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in names]
                found = subs if len(subs) == len(node.names) else [node.module, *subs]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
                arg = node.args[0]  # importlib.import_module("spacenet7.x"): a constant is an import too
                found = [arg.value] if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else []
            targets |= {t for t in found if t in names and t != name}
        graph[name] = targets
    return graph


def _stage_of(module: str) -> str | None:
    from spacenet7.stages import REGISTRY

    return next((s.name for s in REGISTRY if module == s.module or module.startswith(s.module + ".")), None)


def test_no_stage_imports_another_stage_and_nothing_imports_the_cli():
    """Stages hand over files (spacenet7.io.artifacts), and run one another only through the registry
    (spacenet7.stages.run_stage); the command line is the top: nothing below it reaches up to it."""
    graph = _import_graph()
    sideways = sorted(
        (m, t)
        for m, targets in graph.items()
        for t in targets
        if m not in TOP and _stage_of(t) is not None and _stage_of(t) != _stage_of(m)
    )
    assert sideways == [], sideways
    assert sorted(m for m, targets in graph.items() if "spacenet7.cli" in targets) == ["spacenet7.__main__"]
    upward = sorted(
        (m, t) for m, targets in graph.items() for t in targets if _stage_of(m) is None and m not in TOP and _stage_of(t)
    )
    assert upward == [], f"shared modules import a stage: {upward}"


# lazy imports both ways, left as they are (each a known two-way dependency, not a layering slip):
KNOWN_CYCLES = {
    # VectorizeConfig(bundle=...) takes a card's settings; a card's settings are checked against VectorizeConfig
    frozenset({"spacenet7.config", "spacenet7.models.bundle"}),
    # a checkpoint may be a bundle (task reads bundles); a bundle's card is checked against the architecture (task)
    frozenset({"spacenet7.models.bundle", "spacenet7.models.task"}),
}


def test_the_package_has_no_import_cycle():
    """No circle of imports, lazy ones included, but the known two-way dependencies above."""
    graph = _import_graph()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert {frozenset(c) for c in cycles} <= KNOWN_CYCLES, cycles


def test_the_cpu_trainer_is_trainer_configs_defaults():
    """TrainerConfig holds the CPU trainer's values (conf/trainer/cpu.yaml sets none); the other options differ."""
    from spacenet7.compose import compose
    from spacenet7.config import TrainerConfig

    assert compose("train", ["run_dir=x"]).trainer == TrainerConfig() == compose("train", ["run_dir=x", "trainer=cpu"]).trainer
    assert TrainerConfig().log_every_n_steps == 5
    assert compose("train", ["run_dir=x", "trainer=gpu"]).trainer.accelerator == "gpu"


def test_the_scot_constants_live_in_one_place():
    """SN7's IoU threshold, beta and minimum truth area: evaluate's defaults and every metric function's default."""
    import inspect

    from spacenet7.config import EvaluateConfig
    from spacenet7.metrics import matching, reference, rules, scot

    cfg = EvaluateConfig()
    assert (cfg.iou_threshold, cfg.beta, cfg.min_truth_area) == (rules.IOU_THRESHOLD, rules.BETA, rules.MIN_TRUTH_AREA)
    want = {"threshold": rules.IOU_THRESHOLD, "beta": rules.BETA, "min_truth_area": rules.MIN_TRUTH_AREA}
    want["min_area"] = rules.MIN_TRUTH_AREA
    for fn in (scot.combine, scot.score_aoi, scot.drop_small, scot.scot, scot.prepare, scot.score_aoi_months, matching.match):
        for name, p in inspect.signature(fn).parameters.items():
            if name in want:
                assert p.default is want[name], f"{fn.__name__}({name}={p.default})"
    assert inspect.signature(reference.reference_scot).parameters["min_truth_area"].default is rules.MIN_TRUTH_AREA


def test_only_the_run_layout_joins_a_run_folders_paths():
    """``run_dir / "predictions"`` and the like are written in spacenet7/io/layout.py only."""
    import re

    # (a chip folder's own chips/ and targets/ are chip's; a run folder's chips/ is RunLayout.chips)
    names = "pipeline.json|metrics.json|submission.csv|checkpoints|best.ckpt|last.ckpt|predictions|vectors|footprints|pretrain"
    joined = re.compile(r'[\w)\]] / "(' + names.replace(".", r"\.") + ')"')
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{n}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "layout.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if joined.search(line)
    ]
    assert offenders == [], offenders
