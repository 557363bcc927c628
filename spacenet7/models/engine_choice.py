"""Which inference engine to run: truth parity, measured speed, and ``predict engine=auto``'s choice.

An engine (a runtime at a precision: torch fp32, torch bf16, ONNX Runtime fp32, OpenVINO int8, ...)
counts as equivalent to torch fp32 when its scores against the labels of the real held-out bands are
within :data:`PARITY_TOLERANCE` of torch fp32's (:func:`at_parity`): building F1 at IoU >= 0.5 and
> 0.25 and pixel IoU on every place, and SCOT's tracking term and SCOT where there are months to
track. SCOT's change term rests on the few buildings that appear during the months (24 on the real
band): one more true "new" building moves SCOT by ~0.07, far beyond the tolerance, and torch bf16
(predict's default) does that against torch fp32. So SCOT also counts as at parity when its
change-term counts (true, false and missed new buildings) each differ by at most
:data:`CHANGE_SLACK` building.
``bench/bench_runtimes.py`` measures that and each engine's tiles per second side by side, and
writes a report (JSON); ``spacenet7 compile parity=REPORT`` compiles the fastest engine at parity
and records the choice as data, in the model file's metadata (:class:`spacenet7.models.runtime.ModelMeta`
``runtime``) and, for a bundle, in its card (``runtime``). ``predict engine=auto`` then runs the
fastest candidate at parity whose package is installed and whose file is present and unchanged,
and torch otherwise (:func:`pick`).

Everything here is plain data, validated on load (:func:`check_candidate`, :func:`check_runtime`):
nothing in a card or a model file is imported or called.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

PARITY_TOLERANCE = 0.005
"""The largest absolute difference from torch fp32, per score and place, of an engine at parity."""
PARITY_SCORES = ("f1", "f1_iou25", "pixel_iou")
"""The building scores compared on every place (evaluate's per-AOI keys); ``tracking`` and ``scot`` where present."""
CHANGE_COUNTS = ("change_tp", "change_fp", "change_fn")
"""SCOT's change-term counts: true, false and missed new buildings."""
CHANGE_SLACK = 1
"""SCOT is at parity, whatever its difference, when each change-term count differs by at most this many buildings."""
ENGINES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8", "int8+bf16")
PACKAGES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}
"""The module each engine needs."""
_CANDIDATE_KEYS: dict[str, tuple[type, ...]] = {
    "engine": (str,),
    "precision": (str,),
    "amp": (bool,),
    "file": (str, type(None)),
    "sha256": (str, type(None)),
    "tiles_per_s": (int, float, type(None)),
    "speedup": (int, float, type(None)),
    "parity": (bool, type(None)),
    "basis": (str,),
    "name": (str,),
}
_RUNTIME_KEYS: dict[str, tuple[type, ...]] = {
    "chosen": (dict,),
    "candidates": (list,),
    "tolerance": (int, float),
    "report": (str, type(None)),
}


def _check_fields(doc: Any, fields: Mapping[str, tuple[type, ...]], where: str) -> None:
    """``doc`` is a map of known keys, each present one of its types (a bool only where ``bool`` is listed).

    Raises:
        ValueError: naming the key.
    """
    if not isinstance(doc, dict):
        raise ValueError(f"{where} is {type(doc).__name__}, expected a map")
    unknown = sorted(str(k) for k in doc if k not in fields)
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {unknown}; it has {sorted(fields)}")
    for key, kinds in fields.items():
        value = doc.get(key)
        if key in doc and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise ValueError(f"{where}.{key}={str(value)[:40]!r} is {type(value).__name__}")


def check_candidate(doc: Any, where: str = "runtime", need_file: bool = True) -> dict[str, Any]:
    """One engine candidate, validated as data.

    ``{engine, precision, amp, file, sha256, tiles_per_s, speedup, parity, basis, name}``: ``engine`` one of
    :data:`ENGINES`, ``precision`` one of :data:`PRECISIONS`, ``amp`` whether the runtime runs bf16
    (predict's ``amp``), ``file`` a model file's name (no folder: it lies beside the card or is the
    model file itself; ``None`` for torch), ``sha256`` its digest, ``tiles_per_s`` and ``speedup``
    (over torch bf16 channels-last) as measured, ``parity`` true / false / null (not measured).

    Raises:
        ValueError: naming the key.
    """
    _check_fields(doc, _CANDIDATE_KEYS, where)
    for key in ("engine", "precision"):
        if key not in doc:
            raise ValueError(f"{where}.{key} is missing")
    if doc["engine"] not in ENGINES:
        raise ValueError(f"{where}.engine={doc['engine'][:40]!r} is not one of {list(ENGINES)}")
    if doc["precision"] not in PRECISIONS:
        raise ValueError(f"{where}.precision={doc['precision'][:40]!r} is not one of {list(PRECISIONS)}")
    file = doc.get("file")
    if file is not None and ("/" in file or "\\" in file or file in ("", ".", "..") or not file.endswith((".onnx", ".xml"))):
        raise ValueError(f"{where}.file={file[:80]!r} must be the name of an .onnx or .xml file beside the card")
    if need_file and doc["engine"] != "torch" and file is None:
        raise ValueError(f"{where}: engine={doc['engine']} needs its model file (file)")
    for key in ("tiles_per_s", "speedup"):
        value = doc.get(key)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{where}.{key}={value} must be a positive number or null")
    return doc


def check_runtime(doc: Any) -> dict[str, Any]:
    """A card's ``runtime`` map, validated as data: ``{chosen, candidates: [...], tolerance, report}``.

    Raises:
        ValueError: naming the key.
    """
    _check_fields(doc, _RUNTIME_KEYS, "runtime")
    candidates = [check_candidate(c, f"runtime.candidates[{i}]") for i, c in enumerate(doc.get("candidates", []))]
    if "chosen" in doc:
        check_candidate(doc["chosen"], "runtime.chosen")
    tol = doc.get("tolerance", PARITY_TOLERANCE)
    if not (math.isfinite(tol) and 0 <= tol < 1):
        raise ValueError(f"runtime.tolerance={tol} must be within [0, 1)")
    names = [(c["engine"], c["precision"], c.get("file")) for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError("runtime.candidates lists an engine, precision and file twice")
    return doc


REPORT_FORMAT = "spacenet7-runtime-parity/1"
"""The ``format`` of a ``bench/bench_runtimes.py`` truth-parity report."""
_PLAN_KEYS = {
    "format": (str, type(None)),
    "int8": (bool,),
    "int8_overflow_fix": (str, type(None)),
    "int8_max_drop": (float, type(None)),
}


def report_entries(doc: Any) -> list[dict[str, Any]]:
    """The engines of a truth-parity report as ``{"candidate": ..., "plan": ...}``, validated as data.

    ``candidate``: :func:`check_candidate`'s map (without a file yet); ``plan``: how ``compile`` makes it
    (``format`` onnx / openvino / null for torch, ``int8``, ``int8_overflow_fix``, ``int8_max_drop``).

    Raises:
        ValueError: not a report, or a malformed engine entry (naming it).
    """
    if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT:
        raise ValueError(f"format is not {REPORT_FORMAT!r}")
    engines = doc.get("engines")
    if not isinstance(engines, list) or not engines:
        raise ValueError("engines is not a non-empty list")
    out = []
    for i, e in enumerate(engines):
        where = f"engines[{i}]"
        if not isinstance(e, dict):
            raise ValueError(f"{where} is not a map")
        cand = {k: e[k] for k in _CANDIDATE_KEYS if k in e and k not in ("file", "sha256")}
        check_candidate(cand, where, need_file=False)
        plan = {k: e.get(k) for k in _PLAN_KEYS}
        plan["int8"] = bool(plan["int8"])
        _check_fields(plan, _PLAN_KEYS, where)
        expected = {"torch": None, "onnxruntime": "onnx", "openvino": "openvino"}[cand["engine"]]
        if plan["format"] != expected:
            raise ValueError(f"{where}: engine {cand['engine']} with format {plan['format']!r}, expected {expected!r}")
        if plan["int8_overflow_fix"] not in (None, "auto", "disable", "first_layer", "enable"):
            raise ValueError(f"{where}.int8_overflow_fix={plan['int8_overflow_fix'][:40]!r} is not an overflow fix")
        out.append({"candidate": cand, "plan": plan})
    return out


def at_parity(
    scores: Mapping[str, Mapping[str, float]], reference: Mapping[str, Mapping[str, float]], tolerance: float = PARITY_TOLERANCE
) -> tuple[bool, dict[str, dict[str, float]]]:
    """Whether ``scores`` are within ``tolerance`` of ``reference`` (torch fp32's) on every place and score.

    Args:
        scores: ``{place: {f1, f1_iou25, pixel_iou[, tracking, scot, change_tp, change_fp, change_fn]}}`` of the engine.
        reference: the same of torch fp32; a place or score missing in ``scores`` fails.
        tolerance: the largest absolute difference allowed (either way: an engine that scores
            higher by more is not the same model either).

    Returns:
        ``(parity, deltas)``: deltas ``{place: {score: engine - reference}}``.
    """
    deltas: dict[str, dict[str, float]] = {}
    ok = bool(reference)
    for place, ref in reference.items():
        got = scores.get(place, {})
        keys = [k for k in (*PARITY_SCORES, "tracking", "scot") if k in ref]
        deltas[place] = {}
        for k in keys:
            if k not in got or got[k] is None or ref[k] is None:
                ok = False
                continue
            d = float(got[k]) - float(ref[k])
            deltas[place][k] = d
            if k == "scot" and abs(d) > tolerance + 1e-12:
                ok &= _within_one_building(got, ref)
            else:
                ok &= abs(d) <= tolerance + 1e-12
    return ok, deltas


def _within_one_building(got: Mapping[str, Any], ref: Mapping[str, Any]) -> bool:
    """Whether every change-term count is known on both sides and differs by at most :data:`CHANGE_SLACK`."""
    if any(got.get(k) is None or ref.get(k) is None for k in CHANGE_COUNTS):
        return False
    return all(abs(float(got[k]) - float(ref[k])) <= CHANGE_SLACK for k in CHANGE_COUNTS)


def installed(engine: str) -> bool:
    """Whether the package ``engine`` needs can be imported here (without importing it)."""
    return importlib.util.find_spec(PACKAGES[engine]) is not None


def sha256(path: str | Path) -> str:
    """The SHA-256 of a model file, hex; an OpenVINO ``.xml`` counts with its ``.bin`` (the weights) after it."""
    path = Path(path)
    h = hashlib.sha256()
    for part in (path, path.with_suffix(".bin")) if path.suffix == ".xml" else (path,):
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def file_problem(candidate: Mapping[str, Any], folder: Path) -> str | None:
    """Why a candidate's model file cannot run (missing, changed), or ``None``: present and unchanged."""
    name = candidate.get("file")
    if name is None:
        return None
    path = folder / name
    if not path.is_file():
        return f"{path} is missing"
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        return f"{path.with_suffix('.bin')} is missing"
    if candidate.get("sha256") and sha256(path) != candidate["sha256"]:
        return f"{path} differs from the SHA-256 recorded with it"
    return None


def speed(candidate: Mapping[str, Any]) -> float:
    """A candidate's measured tiles per second (-1 when not measured: after every measured one)."""
    value = candidate.get("tiles_per_s")
    return float(value) if value is not None else -1.0


def pick(
    candidates: Iterable[tuple[Mapping[str, Any], Path]],
    is_installed: Callable[[str], bool] | None = None,
) -> tuple[tuple[dict[str, Any], Path] | None, list[str]]:
    """The fastest candidate at parity that can run here, and why each faster one was passed over.

    Args:
        candidates: ``(candidate, folder of its file)`` pairs (:func:`check_candidate`).
        is_installed: whether an engine's package is installed (default :func:`installed`).

    Returns:
        ``((candidate, folder) or None, reasons)``: ``None`` when none is at parity and runnable (then
        torch runs); ``reasons``: one line per candidate passed over, fastest first.
    """
    is_installed = is_installed or installed
    reasons: list[str] = []
    ranked = sorted(candidates, key=lambda cf: speed(cf[0]), reverse=True)
    for cand, folder in ranked:
        label = f"{cand['engine']} {cand['precision']}"
        if cand.get("parity") is not True:
            why = "not measured against the truth" if cand.get("parity") is None else "not at truth parity"
            reasons.append(f"{label}: {why}")
            continue
        if not is_installed(cand["engine"]):
            reasons.append(f"{label}: the {PACKAGES[cand['engine']]} package is not installed")
            continue
        problem = file_problem(cand, folder)
        if problem:
            reasons.append(f"{label}: {problem}")
            continue
        return (dict(cand), folder), reasons
    return None, reasons


def describe(candidate: Mapping[str, Any]) -> str:
    """One phrase about a candidate: engine, precision, speed and parity."""
    rate = candidate.get("tiles_per_s")
    ratio = candidate.get("speedup")
    measured = f", {rate:.1f} tiles/s" if rate else ""
    measured += f" ({ratio:.2f}x torch bf16)" if ratio else ""
    parity = {True: "at truth parity", False: "NOT at truth parity", None: "parity not measured"}[candidate.get("parity")]
    return f"{candidate['engine']} {candidate['precision']}{measured}, {parity}"
