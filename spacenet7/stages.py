"""The stage registry: every ``spacenet7 STAGE``, in one table.

Each :class:`Stage` names its one-line description (``spacenet7 --help``), its typed config
(a dataclass of :mod:`spacenet7.config`, registered as ``_<name>_schema`` for ``conf/<name>.yaml``),
the module whose ``run(cfg)`` runs it, and whether ``spacenet7 pipeline`` runs it. The table's
order is the CLI's and the pipeline's: the pipeline's stages first, in the order they run.

Adding a stage: an entry here, its dataclass in :mod:`spacenet7.config`, ``conf/<name>.yaml``
and its module with ``run(cfg)``; a pipeline stage also gets a node of
:class:`~spacenet7.config.PipelineConfig` and its hand-offs (:func:`spacenet7.compose.handoffs`).

Nothing here imports a stage: a stage's module is imported when it runs (the CLI starts fast,
and ``spacenet7 chip`` never loads torch).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from spacenet7.logs import single_log_lines


@dataclass(frozen=True)
class Stage:
    """One CLI stage."""

    name: str
    description: str
    schema: str  # the name of its config dataclass in spacenet7.config
    module: str  # the module whose run(cfg) runs the stage
    in_pipeline: bool = False  # run by `spacenet7 pipeline` (in the registry's order) and a node of its config tree

    def load(self) -> ModuleType:
        """The stage's module."""
        return importlib.import_module(self.module)

    def run(self, cfg: Any, **kwargs: Any) -> Any:
        """Run the stage with its typed config: ``<module>.run(cfg, **kwargs)``."""
        return self.load().run(cfg, **kwargs)


REGISTRY: tuple[Stage, ...] = (
    Stage(
        "synth",
        "generate a synthetic AOI data set in the exact SpaceNet 7 layout",
        "SynthConfig",
        "spacenet7.synth",
        in_pipeline=True,
    ),
    Stage(
        "chip",
        "cut georeferenced training chips with footprint/boundary/contact targets",
        "ChipConfig",
        "spacenet7.chip",
        in_pipeline=True,
    ),
    Stage(
        "train", "train a segmentation-models-pytorch model with Lightning", "TrainConfig", "spacenet7.train", in_pipeline=True
    ),
    Stage(
        "predict",
        "sliding-window inference over whole mosaics -> probability COGs",
        "PredictConfig",
        "spacenet7.predict",
        in_pipeline=True,
    ),
    Stage(
        "vectorize",
        "polygonize probabilities (watershed) and track buildings across months",
        "VectorizeConfig",
        "spacenet7.vectorize",
        in_pipeline=True,
    ),
    Stage(
        "export", "write GeoJSON/GPKG footprints and the SN7 submission CSV", "ExportConfig", "spacenet7.export", in_pipeline=True
    ),
    Stage(
        "evaluate",
        "score a submission with SCOT (tracking + change) and per-month F1",
        "EvaluateConfig",
        "spacenet7.evaluate",
        in_pipeline=True,
    ),
    Stage(
        "pipeline",
        "run synth (if needed), chip, train, predict, vectorize, export, evaluate",
        "PipelineConfig",
        "spacenet7.pipeline",
    ),
    Stage(
        "tune",
        "hyperparameter search over training settings (Optuna TPE, pruning, resumable SQLite study)",
        "TuneConfig",
        "spacenet7.tune",
    ),
    Stage(
        "compile",
        "export a checkpoint to ONNX or OpenVINO for predict engine=onnxruntime|openvino",
        "CompileConfig",
        "spacenet7.compile",
    ),
    Stage(
        "bundle",
        "a checkpoint as a model bundle: safetensors weights + a JSON card (architecture, input, settings, scores)",
        "BundleConfig",
        "spacenet7.bundle",
    ),
    Stage(
        "serve",
        "map viewer of a run's buildings month by month, and an inference API (127.0.0.1)",
        "ServeConfig",
        "spacenet7.serve",
    ),
)

STAGES: dict[str, Stage] = {s.name: s for s in REGISTRY}
"""Every stage by name, in the registry's order."""

PIPELINE_STAGES: tuple[str, ...] = tuple(s.name for s in REGISTRY if s.in_pipeline)
"""The stages ``pipeline`` runs (and the nodes of its config tree), in order."""


def run_stage(name: str, cfg: Any, **kwargs: Any) -> Any:
    """Run stage ``name`` with its typed config (the CLI, ``pipeline`` and ``tune`` run stages through this)."""
    module = STAGES[name].load()
    single_log_lines()  # again: the stage's imports may have brought Lightning's own console handler
    return module.run(cfg, **kwargs)
