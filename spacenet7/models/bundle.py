"""Model bundles: a trained network as a versioned, self-describing folder that nothing in it can run.

A bundle is a directory (by convention ``<name>.bundle``) holding

- ``weights.safetensors``: the network's tensors (safetensors: raw arrays and a JSON header, no pickle);
- ``card.json``: what prediction, vectorizing and a reader need, as plain data::

    {"format": "spacenet7-bundle", "format_version": 1, "name": ..., "created": ...,
     "architecture": {segmentation_models_pytorch.create_model keyword arguments},
     "input": {"upscale": 3.0, "input": {InputSpec: bands, alpha, scaling, resampling, ...}},
     "vectorize": {threshold, seed_threshold, min_seed_px, min_area_px, simplify_px, shift_px, track: {...}},
     "provenance": {"data": ..., "recipe": ..., "git_commit": ..., "seed": ..., "checkpoint": ...},
     "scores": {the run's metrics.json, as measured}, "weights": {"file": ..., "sha256": ...},
     "runtime": {compiled engines beside the card and the one chosen (optional; spacenet7 compile)}}

Loading a bundle (:func:`read_bundle`) validates the card as data (unknown keys, wrong types and any
``_``-key such as Hydra's ``_target_`` are refused, the architecture by the same check as a
checkpoint's model node, :func:`spacenet7.models.task.model_kwargs`), checks the weights' SHA-256
and reads them with ``safetensors``; the network is then built by ``smp.create_model(**kwargs)``.
Every stage that takes ``checkpoint=`` takes a bundle there too (:func:`spacenet7.models.task.read_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.layout import RunLayout

log = logging.getLogger(__name__)

FORMAT = "spacenet7-bundle"
FORMAT_VERSION = 1
CARD = "card.json"
WEIGHTS = "weights.safetensors"
SHIPPED = Path(__file__).resolve().parent / "shipped" / "spacenet7-real.bundle"
"""The shipped real model (``make model`` writes it): ``predict`` and ``serve`` use it when no checkpoint is given."""

_KEYS = {
    "format": str,
    "format_version": int,
    "name": str,
    "created": str,
    "architecture": dict,
    "input": dict,
    "vectorize": dict,
    "predict": dict,
    "provenance": dict,
    "scores": dict,
    "weights": dict,
    "runtime": dict,
}
_REQUIRED = ("format", "format_version", "architecture", "input", "weights")
VECTORIZE_KEYS = ("threshold", "seed_threshold", "min_seed_px", "min_area_px", "simplify_px", "shift_px", "track")
"""The ``vectorize`` settings a card carries (the ones tuned with the model)."""
PREDICT_KEYS = ("tile", "overlap", "tta", "tta_views", "tta_scales", "fusion", "fusion_weight", "grid")
"""The ``predict`` settings a card carries: the ones its scores were measured with (the Python API and serve use them)."""


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` names a bundle: a directory (holding ``card.json``), its ``card.json``, or a ``.bundle`` path."""
    p = Path(path)
    return p.is_dir() or p.name == CARD or p.suffix == ".bundle"


def bundle_dir(path: str | Path) -> Path:
    """The bundle folder of ``path`` (the folder, or the folder of its ``card.json``)."""
    p = Path(path)
    return p.parent if p.name == CARD and not p.is_dir() else p


def shipped_or_fail(what: str) -> Path:
    """The shipped bundle, or one line saying it is absent and what to do.

    Args:
        what: the stage or caller named by the error.

    Raises:
        SN7Error: the shipped bundle is not installed.
    """
    if (SHIPPED / CARD).is_file():
        return SHIPPED
    raise SN7Error(
        f"{what}: no checkpoint given and the shipped model is not installed ({SHIPPED}): "
        "give checkpoint=PATH (a .ckpt or a .bundle), or build it with `make model` after `make real`"
    )


def _bad(path: Path, problem: str) -> SN7DataError:
    return SN7DataError(path, f"not a spacenet7 bundle ({problem})")


def _plain_map(value: Any, where: str) -> None:
    from spacenet7.models.task import _check_plain

    if not isinstance(value, dict):
        raise ValueError(f"{where} is {type(value).__name__}, expected a map")
    try:
        _check_plain(value, where)
    except ValueError as exc:
        raise ValueError(str(exc).replace("a model config is data", "a card is data")) from None


def check_card(card: Any) -> dict[str, Any]:
    """A card's content, validated as data (nothing in it is imported, called or instantiated).

    Raises:
        ValueError: what is wrong, naming the key.
    """
    from spacenet7.models.task import check_chip_meta, model_kwargs

    if not isinstance(card, dict):
        raise ValueError(f"the card is {type(card).__name__}, expected a JSON object")
    unknown = sorted(str(k) for k in card if k not in _KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; a card has {sorted(_KEYS)}")
    missing = [k for k in _REQUIRED if k not in card]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    for key, kind in _KEYS.items():
        if key in card and (not isinstance(card[key], kind) or isinstance(card[key], bool)):
            raise ValueError(f"{key} is {type(card[key]).__name__}, expected {kind.__name__}")
    if card["format"] != FORMAT:
        raise ValueError(f"format={card['format'][:40]!r}, expected {FORMAT!r}")
    if card["format_version"] != FORMAT_VERSION:
        raise ValueError(f"format_version={card['format_version']} is not one this spacenet7 reads ({FORMAT_VERSION})")
    for key in ("architecture", "input", "vectorize", "predict", "provenance", "scores", "weights", "runtime"):
        if key in card:
            _plain_map(card[key], key)
    if "runtime" in card:
        from spacenet7.models.engine_choice import check_runtime

        check_runtime(card["runtime"])
    if "_target_" in card["architecture"]:
        raise ValueError("architecture._target_ is not allowed: the architecture is create_model's keyword arguments")
    model_kwargs(card["architecture"])
    bad_input = sorted(set(card["input"]) - {"upscale", "input"})
    if bad_input:
        raise ValueError(f"input has unknown key(s) {bad_input}; it has upscale and input")
    if "upscale" not in card["input"]:
        raise ValueError("input.upscale is missing")
    if problem := check_chip_meta(card["input"]):
        raise ValueError(problem.replace("chip_meta.", "input."))
    if "vectorize" in card:
        vectorize_settings(card["vectorize"])
    if "predict" in card:
        predict_settings(card["predict"])
    weights = card["weights"]
    if set(weights) != {"file", "sha256"} or not all(isinstance(weights[k], str) for k in ("file", "sha256")):
        raise ValueError("weights must be {file: <name>.safetensors, sha256: <hex>}")
    if "/" in weights["file"] or "\\" in weights["file"] or not weights["file"].endswith(".safetensors"):
        raise ValueError(f"weights.file={weights['file'][:80]!r} must be a .safetensors file inside the bundle")
    for name, score in card.get("scores", {}).items():
        if isinstance(score, float) and not math.isfinite(score):
            raise ValueError(f"scores.{name}={score} is not a finite number")
    return card


def _stage_settings(stage: str, settings: dict[str, Any], schema: type, keys: Any) -> dict[str, Any]:
    """A card's ``stage`` map checked against the stage's schema dataclass: only ``keys``, its types and values.

    Raises:
        ValueError: an unknown key, a wrong type or a bad value.
    """
    from omegaconf import OmegaConf

    unknown = sorted(set(settings) - set(keys))
    if unknown:
        raise ValueError(f"{stage} has unknown key(s) {unknown}; it has {list(keys)}")
    try:
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), settings))
    except SN7Error as exc:
        raise ValueError(f"{stage}.{str(exc).removeprefix(f'{stage}: ')}") from None
    except Exception as exc:  # omegaconf: a wrong type, an unknown nested key
        raise ValueError(f"{stage}: {(str(exc).splitlines() or [type(exc).__name__])[0][:160]}") from None
    return settings


def vectorize_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A card's ``vectorize`` map checked against :class:`spacenet7.config.VectorizeConfig` (types and values).

    Raises:
        ValueError: an unknown key, a wrong type or a bad value.
    """
    from spacenet7.config import VectorizeConfig

    return _stage_settings("vectorize", settings, VectorizeConfig, VECTORIZE_KEYS)


def predict_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A card's ``predict`` map checked against :class:`spacenet7.config.PredictConfig` (keys :data:`PREDICT_KEYS`).

    Raises:
        ValueError: an unknown key, a wrong type or a bad value.
    """
    from spacenet7.config import PredictConfig

    return _stage_settings("predict", settings, PredictConfig, PREDICT_KEYS)


def read_card(path: str | Path) -> dict[str, Any]:
    """A bundle's validated card (:func:`check_card`).

    Raises:
        SN7DataError: ``<bundle>/card.json: not a spacenet7 bundle (...)``, or a missing bundle.
    """
    folder = bundle_dir(path)
    card_path = folder / CARD
    if not folder.is_dir():
        raise SN7DataError(folder, "bundle not found")
    if not card_path.is_file():
        raise _bad(card_path, "no card.json")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
        return check_card(card)
    except (ValueError, RecursionError) as exc:  # json's and check_card's
        raise _bad(card_path, (str(exc).splitlines() or [type(exc).__name__])[0][:200]) from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def read_bundle(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A bundle's network weights and hyper-parameters in the form of :func:`spacenet7.models.task.read_checkpoint`.

    Returns:
        ``(state, hp)``: the tensors (keys of the network), and ``{"model": architecture, "chip_meta":
        input, "card": card}``.

    Raises:
        SN7DataError: the card is not valid data, or the weights are missing, changed or not safetensors.
    """
    from safetensors.torch import load as load_safetensors

    card = read_card(path)
    folder = bundle_dir(path)
    weights = folder / card["weights"]["file"]
    if not weights.is_file():
        raise _bad(folder / CARD, f"its weights {weights.name} are missing")
    data = weights.read_bytes()
    if hashlib.sha256(data).hexdigest() != card["weights"]["sha256"]:
        raise _bad(weights, "its SHA-256 differs from the card's: the file was changed or truncated")
    try:
        state = load_safetensors(data)
    except Exception as exc:  # safetensors_rust.SafetensorError
        raise _bad(weights, f"not readable safetensors ({(str(exc).splitlines() or [''])[0][:120]})") from None
    return state, {"model": dict(card["architecture"]), "chip_meta": dict(card["input"]), "card": card}


def git_commit(folder: Path) -> str | None:
    """The commit checked out in ``folder``'s repository (``+dirty`` with uncommitted changes), or ``None``."""
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def run_folder(checkpoint: Path) -> Path | None:
    """The pipeline run a checkpoint belongs to (``RUN/train/checkpoints/x.ckpt`` with ``RUN/pipeline.json``)."""
    run = RunLayout.of_checkpoint(checkpoint)
    return run.root if run is not None and run.manifest.is_file() else None


def _json_safe(value: Any) -> Any:
    """Plain JSON data: non-finite floats as ``None``, keys as strings, ``_``-keys dropped."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def make_card(
    checkpoint: str | Path,
    hp: dict[str, Any],
    *,
    name: str,
    vectorize: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    scores: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card of a checkpoint (its weights entry left to :func:`write_bundle`).

    The vectorize settings come from the run's ``pipeline.json`` when the checkpoint lives in a run
    folder, with ``vectorize`` on top; the scores from the run's ``metrics.json`` unless given.
    """
    from spacenet7.data.bands import InputSpec
    from spacenet7.models.task import model_kwargs

    path = Path(checkpoint)
    run = run_folder(path)
    doc = json.loads(RunLayout(run).manifest.read_text()) if run else {}
    config = doc.get("config") or {}
    vec = {k: v for k, v in (config.get("vectorize") or {}).items() if k in VECTORIZE_KEYS}
    vec.update(vectorize or {})
    if isinstance(vec.get("track"), dict):
        from spacenet7.track import TrackConfig

        vec["track"] = {k: v for k, v in vec["track"].items() if k in TrackConfig.__dataclass_fields__}
    pred = {k: v for k, v in (config.get("predict") or {}).items() if k in PREDICT_KEYS}
    meta = hp.get("chip_meta") or {}
    train = config.get("train") or {}
    prov: dict[str, Any] = {
        "data": meta.get("data_root") or doc.get("data_root"),
        "aois": meta.get("aois"),
        "recipe": None,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "seed": train.get("seed"),
        "checkpoint": path.name,
        "run": str(run) if run else None,
        "holdout": config.get("holdout"),
        "band_frac": config.get("band_frac") if config.get("holdout") == "band" else None,
        # the engine that predicted for the scores (recipe=real: OpenVINO, within 0.004 of torch); the card's
        # readers (the Python API, serve) run torch
        "scores_engine": (config.get("predict") or {}).get("engine") if run else None,
    }
    prov.update(provenance or {})
    if scores is None:
        metrics = RunLayout(run).metrics if run else None
        scores = json.loads(metrics.read_text()) if metrics and metrics.is_file() else {}
    return _json_safe(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "architecture": model_kwargs(hp["model"]),
            "input": {"upscale": float(meta.get("upscale", 1.0)), "input": InputSpec.from_dict(meta.get("input")).to_dict()},
            "vectorize": vec,
            "predict": pred,
            "provenance": prov,
            "scores": scores,
        }
    )


def write_bundle(
    checkpoint: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    vectorize: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    scores: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle of a checkpoint (or of another bundle) to the folder ``out``; returns ``out``.

    The folder is written beside itself and renamed into place, so a killed run leaves no half bundle.

    Raises:
        SN7Error: an unreadable checkpoint, or a card that would not validate (a bad ``vectorize`` value).
    """
    import shutil

    from safetensors.torch import save as save_safetensors

    from spacenet7.models.task import read_checkpoint

    out = Path(out)
    state, hp = read_checkpoint(checkpoint)
    if "card" in hp:  # re-bundling a bundle: keep its card, with the given settings on top
        old = hp["card"]
        card = {k: v for k, v in old.items() if k not in ("weights", "runtime")}  # compiled files stay with their bundle
        card["vectorize"] = {**old.get("vectorize", {}), **(vectorize or {})}
        card["provenance"] = {**old.get("provenance", {}), **(provenance or {})}
        card["scores"] = old.get("scores", {}) if scores is None else scores
        card["name"] = name or old.get("name", out.stem)
    else:
        card = make_card(checkpoint, hp, name=name or out.stem, vectorize=vectorize, provenance=provenance, scores=scores)
    data = save_safetensors({k: v.detach().contiguous().cpu() for k, v in state.items()}, metadata={"format": "pt"})
    card["weights"] = {"file": WEIGHTS, "sha256": hashlib.sha256(data).hexdigest()}
    try:
        check_card(card)
    except ValueError as exc:
        raise SN7Error(f"bundle: the card would not validate ({exc})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / WEIGHTS).write_bytes(data)
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def card_summary(card: dict[str, Any]) -> str:
    """One line about a bundle: name, architecture, input scale, and its headline scores."""
    arch = card["architecture"]
    scores = card.get("scores") or {}
    headline = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float) and k in ("scot", "f1", "pixel_iou"))
    return f"{card.get('name', '?')}: {arch.get('arch')}/{arch.get('encoder_name')}, upscale x{card['input']['upscale']:g}" + (
        f", {headline}" if headline else ""
    )


def resolve_bundle(path: str | Path) -> Path:
    """A bundle setting as a path: ``shipped`` is :data:`SHIPPED` (one line when it is absent).

    Raises:
        SN7Error: ``shipped`` but the shipped model is not installed.
    """
    return shipped_or_fail("vectorize") if str(path) == "shipped" else Path(path)


def apply_vectorize_settings(cfg: Any) -> None:
    """Put a bundle card's vectorize settings (thresholds, sizes, ``shift_px``, ``track``) into ``cfg``
    (a :class:`spacenet7.config.VectorizeConfig` whose ``bundle`` is set); keys the card lacks stay.

    Raises:
        SN7DataError: not a valid bundle.
    """
    import dataclasses

    from spacenet7.track import TrackConfig

    settings = dict(read_card(resolve_bundle(cfg.bundle)).get("vectorize") or {})
    track = settings.pop("track", None)
    for key, value in settings.items():
        setattr(cfg, key, list(value) if isinstance(value, list) else value)
    if track:
        base = cfg.track if isinstance(cfg.track, TrackConfig) else TrackConfig(**dict(cfg.track))
        cfg.track = TrackConfig(**{**dataclasses.asdict(base), **track})


def record_runtime(path: str | Path, runtime: dict[str, Any]) -> Path:
    """Write ``runtime`` (the compiled engines beside the card and the chosen one) into a bundle's card, atomically.

    Raises:
        SN7DataError: not a valid bundle.
        SN7Error: the card would not validate with it.
    """
    card = read_card(path)
    card["runtime"] = runtime
    try:
        check_card(card)
    except ValueError as exc:
        raise SN7Error(f"bundle: the card would not validate with this runtime ({exc})") from None
    card_path = bundle_dir(path) / CARD
    tmp = card_path.with_name(f".{CARD}.partial")
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    tmp.replace(card_path)
    return card_path
