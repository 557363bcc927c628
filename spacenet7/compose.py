"""Composing configs: ``conf/<stage>.yaml`` with Hydra overrides -> the stage's typed dataclass.

Every stage's schema (:data:`spacenet7.config.SCHEMAS`, from the registry) is registered in Hydra's
ConfigStore as ``_<stage>_schema``, so a typo, a wrong type or a bad value fails when the config is
composed. The pipeline's tree is composed here too (:func:`resolve`): each stage node is that stage's
own composed config, the pipeline's settings for it merged in, then the hand-offs (:func:`handoffs`,
the one place they are derived from ``run_dir`` and ``data_root``, through
:class:`~spacenet7.io.layout.RunLayout`). The stages hand off through files under ``run_dir``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, Optional, cast, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from spacenet7.config import (
    CONF_DIR,
    SCHEMAS,
    TRAIN_GROUPS,
    Holdout,
    PipelineConfig,
    StageGroups,
    TrainGroups,
    check_stages,
)
from spacenet7.errors import SN7Error
from spacenet7.io.layout import RunLayout
from spacenet7.stages import PIPELINE_STAGES


def node_schema(cls: type, exclude: tuple[str, ...] = ()) -> type:
    """The schema of a stage node in the pipeline's config tree: ``cls``'s keys and types, every
    value unset (``???``), nested dataclasses likewise.

    Hydra validates a pipeline setting against it when the pipeline's config is composed (a typo
    or a wrong type fails there, and no key needs a ``+``), and the keys that stay unset are left
    to the stage's own composed config (:func:`resolve`). The class keeps
    ``cls``'s name, so an error reads "Key 'tiel' not in 'PredictConfig'".
    """
    hints = get_type_hints(cls)
    specs: list[Any] = []
    for f in fields(cls):
        if f.name in exclude:
            continue
        tp = hints[f.name]
        if is_dataclass(tp):
            sub = node_schema(cast(type, tp))
            specs.append((f.name, sub, field(default_factory=sub)))
        elif tp is Any:  # a swap point (model, loss, ...): an open map, so that keys need no + (see _open_swap_points)
            specs.append((f.name, tp, field(default_factory=dict)))
        else:
            specs.append((f.name, tp, field(default=MISSING)))
    return make_dataclass(cls.__name__, specs)


def _open_swap_points(node: DictConfig, cls: type) -> None:
    """Let the ``Any`` maps of a :func:`node_schema` tree (``train.model``, ...) take new keys
    without a ``+``: their keys are checked later, against the stage's composed config."""
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.name not in node:
            continue
        if hints[f.name] is Any:
            OmegaConf.set_struct(node[f.name], False)
        elif is_dataclass(hints[f.name]):
            _open_swap_points(node[f.name], cast(type, hints[f.name]))


def _pipeline_schema() -> type:
    """What ``conf/pipeline.yaml``, a recipe and the command line may set: the run's own keys with
    their defaults, group choices, a :func:`node_schema` per stage, and ``pretrain`` (the same
    stage nodes and group choices, all unset)."""
    hints = get_type_hints(PipelineConfig)
    pretrain = node_schema(PipelineConfig, exclude=("run_dir", "data_root", "stages", "pretrain"))
    specs: list[Any] = []
    for f in fields(PipelineConfig):
        if f.name in PIPELINE_STAGES:
            node = node_schema(hints[f.name])
            specs.append((f.name, node, field(default_factory=node)))
        elif f.name == "pretrain":
            specs.append((f.name, Optional[pretrain], field(default=None)))  # noqa: UP045 - OmegaConf reads typing.Optional
        else:
            specs.append((f.name, hints[f.name], field(default=f.default, default_factory=f.default_factory)))
    return make_dataclass("PipelineConfig", specs)


def _pipeline_schema_node() -> DictConfig:
    node = OmegaConf.structured(_pipeline_schema())
    hints = get_type_hints(PipelineConfig)
    for stage in PIPELINE_STAGES:
        _open_swap_points(node[stage], hints[stage])
    return node


_PIPELINE_SCHEMA = _pipeline_schema_node()


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


def register() -> None:
    """Register every stage schema as ``_<stage>_schema``, and the pipeline's training-group
    choices as groups ``train/<group>`` (one option per ``conf/<group>/*.yaml``, setting
    ``groups.train.<group>``), so that ``spacenet7 pipeline train/model=unet`` is a Hydra group
    override, checked against the options there are. Idempotent."""
    cs = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        cs.store(name=f"_{name}_schema", node=_PIPELINE_SCHEMA if schema is PipelineConfig else schema)
    for group in TRAIN_GROUPS:
        for option in sorted((CONF_DIR / group).glob("*.yaml")):
            cs.store(group=f"train/{group}", name=option.stem, node={group: option.stem}, package="groups.train")


def compose_node(stage: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/<stage>.yaml`` with Hydra overrides: the config tree, before conversion.

    Works inside a running Hydra app (the pipeline) and outside one (tests, notebooks).
    """
    from hydra import compose as hydra_compose

    with _hydra_initialized():
        return hydra_compose(config_name=stage, overrides=list(overrides or []))


@contextmanager
def _hydra_initialized() -> Iterator[None]:
    """Hydra's global state for ``conf/``: the running app's, or one set up for the duration."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    if GlobalHydra.instance().is_initialized():
        yield
    else:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            yield


def to_config(stage: str, cfg: DictConfig) -> Any:
    """A composed config tree as its typed dataclass (the pipeline's tree is resolved: every stage
    node composed and merged, :func:`resolve`)."""
    if stage == "pipeline":
        with _hydra_initialized():
            return resolve(cfg)
    return OmegaConf.to_object(cfg)


def compose(stage: str, overrides: list[str] | None = None) -> Any:
    """Compose ``conf/<stage>.yaml`` with overrides and return its typed dataclass."""
    with _hydra_initialized():
        return to_config(stage, compose_node(stage, overrides))


def compose_checked(stage: str, overrides: list[str] | None = None) -> Any:
    """:func:`compose`, with Hydra's and OmegaConf's errors (unknown key, wrong type, bad override
    syntax) turned into one :class:`SN7Error` line naming the stage and the key."""
    try:
        return compose(stage, overrides)
    except SN7Error:
        raise
    except Exception as exc:  # hydra.errors.*, omegaconf.errors.*: several types, all "bad config"
        if "LexerNoViableAltException" in str(exc) and "=" in getattr(exc, "override", ""):
            key, value = exc.override.split("=", 1)  # type: ignore[attr-defined]
            raise SN7Error(
                f"{stage}: bad config: cannot read {exc.override!r}: an unquoted value may hold only letters, digits "  # type: ignore[attr-defined]
                f"and _-./:+ (Hydra's override grammar); quote it: {key}={override_value(value)} "
                f'(in a shell: "{key}={override_value(value)}")'
            ) from None
        lines = [str(exc).splitlines()[0]] if str(exc) else [type(exc).__name__]
        if exc.__cause__ is not None and str(exc.__cause__):
            lines.append(str(exc.__cause__).splitlines()[0])
        raise SN7Error(f"{stage}: bad config: " + ": ".join(line.rstrip(".") for line in lines)) from None


_PLAIN = re.compile(r"[A-Za-z0-9_./:+\-]*")


def override_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged: ``None`` -> ``null``, booleans
    lower-case, lists as ``[a,b]``, and a string with any character the grammar treats specially
    (``,`` ``=`` brackets, quotes, spaces, ``$``...) or one it would read as another type
    (``null``, ``true``, ``1e-3``) single-quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in ("null", "true", "false", "nan", "inf", "-inf") and not _is_number(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def to_overrides(settings: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"logger": {"wandb": False}, "lr": 0.001}`` -> ``["logger.wandb=false", "lr=0.001"]``: nested
    settings as Hydra overrides (for the command-line style interfaces that take override paths:
    ``spacenet7 tune``'s search space and its trials, and the API's stage settings)."""
    out = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out += to_overrides(value, f"{name}.")
        else:
            out.append(f"{name}={override_value(value)}")
    return out
