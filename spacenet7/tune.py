"""Stage ``tune``: an Optuna study over training settings, with pruning of bad trials while they train.

Each trial samples the search space (``conf/tune/<name>.yaml``: a name per dimension, the train
override ``path`` it sets and its distribution), composes the training config from
``conf/train.yaml`` with the shared ``train.*`` settings and the sampled overrides through the
same code path as ``spacenet7 train`` (:func:`spacenet7.config.compose_checked`), and trains it
with the ``train`` stage (:func:`spacenet7.stages.run_stage`) in ``<run_dir>/trials/<number>``.
TPE samples; the median (or Hyperband) pruner stops a trial whose validation metric, reported
every validation epoch by optuna-integration's Lightning callback, falls behind earlier trials at
the same epoch.

The study lives in SQLite under ``run_dir`` (``study.db``) unless ``storage`` names another
database: re-running the command resumes it and adds ``n_trials``; several processes or machines
given one URL share one study. At the end the best trial is printed and written as
``best.yaml``, a training experiment (``<run_dir>/experiment/best.yaml``), with ``trials.csv``
and Optuna's optimization-history and parameter-importance plots as PNGs.
"""

from __future__ import annotations

import json
import logging
import random
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from spacenet7.compose import compose_checked, compose_node, override_value, to_overrides
from spacenet7.config import Dist, Objective, Param, Pruner, TuneConfig
from spacenet7.errors import SN7Error
from spacenet7.io.atomic import atomic_path, ensure_writable_dir
from spacenet7.io.layout import RunLayout
from spacenet7.stages import run_stage

log = logging.getLogger(__name__)
METRIC = {Objective.iou: "val/iou", Objective.f1: "val/f1", Objective.scot: "val/iou"}  # reported each epoch, for pruning
GROUPS_REPLACED = ("model", "loss", "optimizer", "augment")  # best.yaml carries them whole (no leftover group keys)
# a running trial records a heartbeat this often; one silent for the grace period (its process was killed) is
# marked failed when the study is opened and before each new trial (Optuna's fail_stale_trials)
HEARTBEAT_S = 60
GRACE_S = 180


def sampler_seed(seed: int, done: int) -> int:
    """The TPE sampler's seed for a run of ``seed`` on a study that holds ``done`` trials.

    A hash of both, not ``seed + done``: a resumed study (seed 0, 1 trial) and a fresh one (seed 1)
    would otherwise draw the same parameters.
    """
    import numpy as np

    return int(np.random.SeedSequence([seed, done]).generate_state(1)[0])


def storage_url(cfg: TuneConfig) -> str:
    """The study's database: ``cfg.storage``, or SQLite in the run folder."""
    return cfg.storage or f"sqlite:///{(Path(cfg.run_dir) / 'study.db').resolve()}"


def suggest(trial: Any, name: str, p: Param) -> Any:
    """Draw dimension ``name`` of the space from ``trial``."""
    if p.dist is Dist.categorical:
        return trial.suggest_categorical(name, list(p.choices or []))
    assert p.low is not None and p.high is not None  # checked in Param
    if p.dist is Dist.int:
        return trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1))
    if p.dist is Dist.log_float:
        return trial.suggest_float(name, p.low, p.high, log=True)
    return trial.suggest_float(name, p.low, p.high, step=p.step)


def trial_overrides(cfg: TuneConfig, params: dict[str, Any]) -> list[str]:
    """The train overrides of one trial: the shared ``train.*`` settings, then the sampled values."""
    shared = to_overrides(cfg.train)
    if cfg.objective is Objective.f1:
        shared.append("monitor=val/f1")  # the best checkpoint is the objective's
    return shared + [f"{cfg.space[name].path}={override_value(v)}" for name, v in params.items()]


def _midpoint(p: Param) -> Any:
    if p.dist is Dist.categorical:
        return (p.choices or [None])[0]
    v = p.low if p.dist is Dist.log_float else ((p.low or 0) + (p.high or 0)) / 2
    return int(v or 0) if p.dist is Dist.int else v


def _pruner(cfg: TuneConfig) -> Any:
    import optuna

    if cfg.pruner is Pruner.median:
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_startup_trials, n_warmup_steps=cfg.prune_warmup_epochs)
    if cfg.pruner is Pruner.hyperband:
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def pruning_callback(trial: Any, monitor: str) -> Any:
    """optuna-integration's Lightning pruning callback, reporting during ``fit`` only (not train's final ``validate``)."""
    from optuna_integration import PyTorchLightningPruningCallback

    class FitPruning(PyTorchLightningPruningCallback):
        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.state.fn == "fit":
                super().on_validation_end(trainer, pl_module)

    return FitPruning(trial, monitor=monitor)


def load_study(cfg: TuneConfig) -> Any:
    """Create or resume the study (TPE sampler, the configured pruner, maximizing)."""
    import optuna

    url = storage_url(cfg)
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}  # concurrent writers wait, not fail
    for attempt in range(5):  # processes starting together race to create the tables and the study: retry
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna (since 2.9)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
                )
            study = optuna.create_study(
                study_name=cfg.study_name, storage=storage, direction="maximize", load_if_exists=True, pruner=_pruner(cfg)
            )
            break
        except Exception as exc:  # sqlalchemy IntegrityError / OperationalError of the race
            if attempt == 4:
                raise SN7Error(f"tune: cannot open study {cfg.study_name!r} at {url}: {str(exc).splitlines()[0][:200]}") from None
            log.warning("tune: opening the study failed (%s); retrying", str(exc).splitlines()[0][:120])
            time.sleep(1.0 + attempt + random.random())
    failed = counts(study).get("fail", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # trials of a killed process: RUNNING -> FAIL
    if stale := counts(study).get("fail", 0) - failed:
        log.warning("tune: %d trial(s) of a stopped process marked failed (no heartbeat for %d s)", stale, GRACE_S)
    done = len(study.trials)  # a resumed study draws new random start-up points, not the first run's again
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(cfg.seed, done), n_startup_trials=cfg.startup_trials)
    return study


def run(cfg: TuneConfig) -> dict[str, Path]:
    """Run ``n_trials`` more trials of the study; write the best trial and the plots."""
    import optuna

    run_dir = ensure_writable_dir(cfg.run_dir)
    midpoint = {name: _midpoint(p) for name, p in cfg.space.items()}  # every path and the shared settings, before any work
    compose_checked("train", [*trial_overrides(cfg, midpoint), f"run_dir={run_dir / 'trials' / 'check'}"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(cfg)
    monitor = METRIC[cfg.objective]
    if study.trials:  # a resumed study: n_trials are added to those it holds, never topped up to n_trials
        print(
            f"=== tune: resuming study {study.study_name!r} with {len(study.trials)} trial(s) "
            f"({', '.join(f'{v} {k}' for k, v in sorted(counts(study).items()))}); adding n_trials={cfg.n_trials} more",
            flush=True,
        )

    def objective(trial: optuna.Trial) -> float:
        params = {name: suggest(trial, name, p) for name, p in cfg.space.items()}
        overrides = trial_overrides(cfg, params)
        trial.set_user_attr("overrides", overrides)
        trial_dir = run_dir / "trials" / f"{trial.number:04d}"
        tcfg = compose_checked("train", [*overrides, f"run_dir={trial_dir}"])
        print(f"\n=== tune: trial {trial.number}: " + " ".join(f"{k}={v}" for k, v in params.items()), flush=True)
        try:
            out = run_stage("train", tcfg, callbacks=[pruning_callback(trial, monitor)])
        except optuna.TrialPruned as exc:
            print(f"=== tune: trial {trial.number}: {str(exc).lower().rstrip('.')}", flush=True)
            raise
        finally:
            if tcfg.logger.wandb:
                import wandb

                wandb.finish()
        metrics = json.loads(out["metrics"].read_text())
        value = float(metrics[monitor.replace("/", "_")])
        if cfg.objective is Objective.scot:
            value = validation_scot(cfg, tcfg.chip_dir, out["best"], trial_dir / "scot")
        print(f"=== tune: trial {trial.number}: {cfg.objective} = {value:.4f}", flush=True)
        return value

    if cfg.n_trials:
        # a trial whose training fails (a non-finite loss at a high learning rate, an encoder that does not
        # exist) is recorded as failed and the study goes on
        study.optimize(objective, n_trials=cfg.n_trials, timeout=cfg.timeout, gc_after_trial=True, catch=(SN7Error,))
    return report(cfg, study, run_dir)


def counts(study: Any) -> dict[str, int]:
    """Trials per state (complete, pruned, fail, running, ...)."""
    out: dict[str, int] = {}
    for t in study.trials:
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    return out


def report(cfg: TuneConfig, study: Any, run_dir: Path) -> dict[str, Path]:
    """Print the best trial; write ``experiment/best.yaml``, ``trials.csv`` and the plots."""
    n = counts(study)
    print(
        f"\n=== tune: study {study.study_name!r} ({storage_url(cfg)}): {len(study.trials)} trials, "
        + ", ".join(f"{v} {k}" for k, v in sorted(n.items()))
    )
    outputs: dict[str, Path] = {}
    with atomic_path(run_dir / "trials.csv") as tmp:
        study.trials_dataframe().to_csv(tmp, index=False)
    outputs["trials"] = run_dir / "trials.csv"
    if not n.get("complete"):
        raise SN7Error(
            f"tune: no trial of study {study.study_name!r} completed; nothing to report "
            f"({', '.join(f'{v} {k}' for k, v in n.items()) or 'no trials'})"
        )
    best = study.best_trial
    print(
        f"best trial {best.number}: {cfg.objective} = {best.value:.4f}  " + " ".join(f"{k}={v}" for k, v in best.params.items())
    )
    path = run_dir / "experiment" / "best.yaml"
    write_best(
        best.user_attrs["overrides"],
        path,
        f"spacenet7 tune: study {study.study_name}, trial {best.number}, {cfg.objective} = {best.value:.4f}",
    )
    outputs["best"] = path
    print(
        f"best.yaml:     {path}\ntrain it:      spacenet7 train experiment=best hydra.searchpath=[file://{run_dir.resolve()}] "
        "run_dir=...  (or copy it to conf/experiment/)"
    )
    if cfg.plots:
        outputs.update(plots(study, run_dir))
    return outputs


def write_best(overrides: list[str], path: Path, title: str) -> Path:
    """The trial's training config as an experiment file (``# @package _global_``).

    Values are the trial's composed config without resolving interpolations (``T_max: ${max_epochs}``
    stays one), minus ``run_dir`` and ``resume``; the model, loss, optimizer and augment groups are
    replaced whole, so nothing of the default group's is left over.
    """
    from omegaconf import OmegaConf

    composed = compose_node("train", [*overrides, "run_dir=unused"])  # as `spacenet7 train` composes it
    doc = OmegaConf.to_container(composed, resolve=False)
    assert isinstance(doc, dict)
    for key in ("run_dir", "resume"):
        doc.pop(key, None)
    body = {"defaults": [{f"override /{g}": None} for g in GROUPS_REPLACED], **doc}
    text = f"# @package _global_\n# {title}\n# overrides: {' '.join(overrides)}\n" + yaml.safe_dump(body, sort_keys=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def plots(study: Any, run_dir: Path) -> dict[str, Path]:
    """Optuna's optimization history and parameter importances (matplotlib) as PNGs."""
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out: dict[str, Path] = {}
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    jobs: dict[str, Any] = {"history": ovm.plot_optimization_history}
    if len(complete) >= 2:
        jobs["importance"] = ovm.plot_param_importances
    else:
        log.warning("tune: parameter importances need 2 completed trials (have %d); not plotted", len(complete))
    for name, fn in jobs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" warnings of optuna.visualization.matplotlib
            ax = fn(study)
        fig: Any = ax.get_figure()
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        path = run_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        out[name] = path
    return out


def validation_scot(cfg: TuneConfig, chip_dir: str, checkpoint: Path, work: Path) -> float:
    """SCOT of the trial's best checkpoint on the validation AOIs of its chip folder (the band, ``split=spatial``)."""
    from spacenet7.io.artifacts import load_index

    run = RunLayout(work)  # the trial's predictions, vectors, submission and scores, as in a pipeline run
    index, meta = load_index(chip_dir)
    aois = sorted(index.loc[index["split"] == "val", "aoi"].unique())
    root = str(meta.get("data_root"))
    split_dir = (meta.get("settings") or {}).get("split_dir", "train")
    listed = "[" + ",".join(aois) + "]"
    band = float(meta["val_frac"]) if meta.get("split") == "spatial" else None
    run_stage(
        "predict",
        compose_checked(
            "predict",
            [
                f"checkpoint={checkpoint}",
                f"data_root={root}",
                f"split_dir={split_dir}",
                f"aois={listed}",
                f"out_dir={run.predictions}",
                "progress=false",
                *to_overrides(cfg.scot_predict),
            ],
        ),
    )
    run_stage(
        "vectorize",
        compose_checked(
            "vectorize",
            [
                f"pred_dir={run.predictions}",
                f"out_dir={run.vectors}",
                f"aois={listed}",
                *to_overrides(cfg.scot_vectorize),
            ],
        ),
    )
    run_stage(
        "export",
        compose_checked(
            "export",
            [
                f"vec_dir={run.vectors}",
                f"out_dir={run.footprints}",
                f"submission={run.submission}",
                "geojson=false",
                "gpkg=false",
            ],
        ),
    )
    ev = [
        f"data_root={root}",
        f"split_dir={split_dir}",
        f"aois={listed}",
        f"submission={run.submission}",
        f"out={run.metrics}",
    ]
    if band is not None:
        ev.append(f"band_frac={band}")
    run_stage("evaluate", compose_checked("evaluate", ev))
    return float(json.loads(run.metrics.read_text())["scot"])
