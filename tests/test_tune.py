"""spacenet7 tune: a real (tiny) Optuna study: pruning, resume, best.yaml that trains, shared storage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from spacenet7 import chip, train, tune
from spacenet7.compose import compose
from spacenet7.config import ChipConfig
from spacenet7.errors import SN7Error

FAST = [
    "+train.batch_size=4",
    "+train.trainer.limit_train_batches=3",
    "+train.trainer.limit_val_batches=2",
    "+train.trainer.enable_progress_bar=false",
    "train.max_epochs=2",
]


@pytest.fixture(scope="module")
def chip_dir(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune_chips")
    chip.run(ChipConfig(data_root=str(synth_root), out_dir=str(out), chip_size=128, overlap=0, progress=False, val_frac=0.34))
    return out


def _cfg(chip_dir, run_dir, *extra):
    return compose("tune", ["tune=lr", f"run_dir={run_dir}", f"train.chip_dir={chip_dir}", *FAST, *extra])


def test_study_prunes_resumes_and_its_best_trains(chip_dir, tmp_path, capsys):
    run_dir = tmp_path / "tune"
    # trial 0 completes; from trial 1 on, a trial whose validation IoU at an epoch is below the median
    # of the finished trials' at that epoch is pruned
    out = tune.run(_cfg(chip_dir, run_dir, "n_trials=4", "startup_trials=4", "prune_startup_trials=1"))
    study = optuna.load_study(study_name="spacenet7", storage=f"sqlite:///{run_dir / 'study.db'}")
    states = tune.counts(study)
    assert len(study.trials) == 4
    assert states.get("pruned", 0) >= 1, states  # pruning really happened while training
    assert states.get("complete", 0) >= 2, states  # (parameter importances need two)
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert all(t.intermediate_values for t in pruned)  # pruned on a reported validation metric
    assert all(not (run_dir / "trials" / f"{t.number:04d}" / "metrics.json").exists() for t in pruned)
    printed = capsys.readouterr().out
    assert f"best trial {study.best_trial.number}" in printed and "was pruned at epoch" in printed
    for name in ("history", "importance"):
        assert out[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "trials.csv").read_text().count("\n") == 5

    # re-running the same command resumes the study and adds trials
    tune.run(_cfg(chip_dir, run_dir, "n_trials=1", "startup_trials=4", "prune_startup_trials=1"))
    study = optuna.load_study(study_name="spacenet7", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert len(study.trials) == 5 and [t.number for t in study.trials] == list(range(5))

    # best.yaml is a training experiment with the best trial's settings
    best = out["best"]
    assert best == run_dir / "experiment" / "best.yaml"
    doc = yaml.safe_load(best.read_text())
    assert doc["optimizer"]["lr"] == pytest.approx(study.best_trial.params["lr"])
    tcfg = compose(
        "train", ["experiment=best", f"hydra.searchpath=[file://{run_dir}]", f"run_dir={tmp_path / 'again'}", "max_epochs=1"]
    )
    assert tcfg.optimizer["lr"] == pytest.approx(study.best_trial.params["lr"])
    assert tcfg.chip_dir == str(chip_dir) and tcfg.trainer.limit_train_batches == 3 and tcfg.scheduler["T_max"] == 1
    m = json.loads(train.run(tcfg)["metrics"].read_text())
    # best.yaml reproduces the best trial: its first epoch (same seed, settings and learning rate; the cosine
    # schedule's T_max only acts from the second epoch) scores what that trial reported after its first epoch
    assert m["epochs"] == 1 and m["val_iou"] == pytest.approx(study.best_trial.intermediate_values[0], abs=1e-3)


def test_bad_search_space_is_one_line_before_any_trial(chip_dir, tmp_path):
    with pytest.raises(SN7Error, match="optimizer.lrr"):
        tune.run(_cfg(chip_dir, tmp_path / "t", "space.lr.path=optimizer.lrr"))
    assert not (tmp_path / "t" / "study.db").exists()
    with pytest.raises(SN7Error, match="log_float needs low > 0"):
        _cfg(chip_dir, tmp_path / "t", "space.lr.low=0")
    with pytest.raises(SN7Error, match="search space is empty"):
        compose("tune", ["tune=lr", "~space.lr"])


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(chip_dir, tmp_path):
    run_dir = tmp_path / "shared"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [
        sys.executable,
        "-m",
        "spacenet7",
        "tune",
        "tune=lr",
        f"run_dir={run_dir}",
        f"train.chip_dir={chip_dir}",
        *FAST,
        "n_trials=3",
        "plots=false",
        "pruner=none",
    ]
    procs = [
        subprocess.Popen([*cmd, f"seed={i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in (1, 2)
    ]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    study = optuna.load_study(study_name="spacenet7", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert len(study.trials) == 6 and sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state.name == "COMPLETE" for t in study.trials)


@pytest.mark.slow
def test_scot_objective_scores_the_validation_aois(chip_dir, tmp_path):
    run_dir = tmp_path / "scot"
    tune.run(_cfg(chip_dir, run_dir, "n_trials=1", "objective=scot", "train.max_epochs=1", "plots=false"))
    study = optuna.load_study(study_name="spacenet7", storage=f"sqlite:///{run_dir / 'study.db'}")
    scored = json.loads((run_dir / "trials" / "0000" / "scot" / "metrics.json").read_text())
    assert study.trials[0].value == pytest.approx(scored["scot"])
    val_aois = set(json.loads((Path(chip_dir) / "chips.json").read_text())["aois"])
    assert set(scored["per_aoi"]) < val_aois  # the validation AOIs only
