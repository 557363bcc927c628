"""spacenet7: monthly Planet mosaics -> tracked building footprints (SpaceNet 7 style)."""

import itertools

__version__ = "0.1.0"

STAGES: dict[str, str] = {
    "synth": "generate a synthetic AOI data set in the exact SpaceNet 7 layout",
    "chip": "cut georeferenced training chips with footprint/boundary/contact targets",
    "train": "train a segmentation-models-pytorch model with Lightning",
    "predict": "sliding-window inference over whole mosaics -> probability COGs",
    "vectorize": "polygonize probabilities (watershed) and track buildings across months",
    "export": "write GeoJSON/GPKG footprints and the SN7 submission CSV",
    "evaluate": "score a submission with SCOT (tracking + change) and per-month F1",
    "pipeline": "run synth (if needed), chip, train, predict, vectorize, export, evaluate",
    "tune": "hyperparameter search over training settings (Optuna TPE, pruning, resumable SQLite study)",
    "compile": "export a checkpoint to ONNX or OpenVINO for predict engine=onnxruntime|openvino",
    "bundle": "a checkpoint as a model bundle: safetensors weights + a JSON card (architecture, input, settings, scores)",
    "serve": "map viewer of a run's buildings month by month, and an inference API (127.0.0.1)",
}
"""Every CLI stage: first the ones ``pipeline`` runs, in its order (the one definition of the stage
order), then ``pipeline``, then any stage it does not run (add those after ``pipeline``)."""

PIPELINE_STAGES: tuple[str, ...] = tuple(itertools.takewhile(lambda s: s != "pipeline", STAGES))
"""The stages ``pipeline`` runs (and the nodes of its config tree), in order: the keys of
:data:`STAGES` before ``pipeline``."""

__all__ = ["Model", "STAGES", "PIPELINE_STAGES", "__version__"]


def __getattr__(name: str) -> object:
    """``spacenet7.Model`` (:mod:`spacenet7.api`), imported on first use so that the CLI starts fast."""
    if name == "Model":
        from spacenet7.api import Model

        return Model
    raise AttributeError(f"module 'spacenet7' has no attribute {name!r}")
