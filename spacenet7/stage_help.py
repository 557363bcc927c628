"""``spacenet7 STAGE --help``: the stage's settings with their defaults and one-line descriptions.

The descriptions are the comments beside (or above) each field of the stage's dataclass in
:mod:`spacenet7.config` (the one home of every default), or the ``name: text`` lines of the
class docstring; the config groups are the ones in ``conf/<STAGE>.yaml``'s defaults list.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import tokenize
from dataclasses import MISSING, fields, is_dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

from spacenet7.stages import STAGES

_DOC_ENTRY = re.compile(r"^\s+(\w+):\s+(.+)$")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: one-line description}`` of a dataclass, from its source comments and docstring."""
    docs: dict[str, str] = {}
    for line in (cls.__doc__ or "").splitlines():
        if m := _DOC_ENTRY.match(line):
            docs[m.group(1)] = m.group(2).strip()
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return docs
    source = inspect.cleandoc("\n" + source) if source.startswith(" ") else source
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    body = ast.parse(source).body[0]
    for node in getattr(body, "body", []):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        inside = [comments[k] for k in range(node.lineno, (node.end_lineno or node.lineno) + 1) if k in comments]
        text = " ".join(inside)
        if not text:  # comment lines just above the field
            above: list[str] = []
            k = node.lineno - 1
            while k >= 1 and lines[k - 1].strip().startswith("#"):
                above.insert(0, comments.get(k, ""))
                k -= 1
            text = " ".join(above)
        if text:
            docs[node.target.id] = text
    return docs


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return "???"


def _show(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict) and not value:
        return "{}"
    return str(value)


def settings(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key, default, description)`` of every setting of a dataclass, nested dataclasses as ``a.b``."""
    out: list[tuple[str, str, str]] = []
    docs = field_docs(cls)
    hints = get_type_hints(cls)
    for f in fields(cls):
        tp = hints.get(f.name)
        if is_dataclass(tp) and isinstance(tp, type):
            out += settings(tp, f"{prefix}{f.name}.")
            continue
        out.append((prefix + f.name, _show(_default(f)), docs.get(f.name, "")))
    return out


def groups(stage: str, conf_dir: Path) -> list[tuple[str, str, list[str]]]:
    """``(group, default option, options)`` of the config groups in ``conf/<stage>.yaml``'s defaults list."""
    import yaml

    doc = yaml.safe_load((conf_dir / f"{stage}.yaml").read_text()) or {}
    out = []
    for item in doc.get("defaults") or []:
        if not isinstance(item, dict):
            continue
        for group, option in item.items():
            name = str(group).lstrip("+").removeprefix("optional ").split("@")[0].strip()
            if name.startswith(("hydra", "override")) or not (conf_dir / name).is_dir():
                continue
            options = sorted(p.stem for p in (conf_dir / name).glob("*.yaml"))
            out.append((name, _show(option), options))
    return out


def stage_help(stage: str) -> str:
    """The help text of one stage."""
    from spacenet7.config import CONF_DIR, SCHEMAS, TRAIN_GROUPS

    lines = [
        f"spacenet7 {stage}: {STAGES[stage].description}",
        "",
        f"usage: spacenet7 {stage} [key=value ...]   (conf/{stage}.yaml; `--cfg job` prints the composed config)",
    ]
    rows = settings(SCHEMAS[stage])
    if stage == "pipeline":  # its stage nodes are the stages' own settings: point there
        rows = [r for r in rows if r[0].split(".")[0] not in STAGES or r[0].split(".")[0] == "pipeline"]
        rows = [r for r in rows if not r[0].startswith(("groups.", "pretrain"))]
    width = min(max((len(k) + len(v) + 3 for k, v, _ in rows), default=0), 48)
    lines += ["", "settings (default):"]
    for key, value, doc in rows:
        left = f"{key}={value}"
        if len(left) > width:
            left = left[: width - 1] + "…"
        lines.append(f"  {left:<{width}}  {doc}".rstrip())
    grps = groups(stage, CONF_DIR)
    if stage == "pipeline":
        lines += ["", "each stage's settings as <stage>.<key>=value (spacenet7 <stage> --help lists them), e.g. predict.tile=512"]
        grps += [(f"train/{g}", "", sorted(p.stem for p in (CONF_DIR / g).glob("*.yaml"))) for g in TRAIN_GROUPS]
    if grps:
        lines += ["", "config groups (group=option):"]
        lines += [f"  {g}={d or '(train.yaml)'}   options: {', '.join(opts)}" for g, d, opts in grps]
    return "\n".join(lines)
