import subprocess
import sys

import pytest

from spacenet7.compose import compose
from spacenet7.config import CONF_DIR, SCHEMAS
from spacenet7.stages import STAGES

EXE = [sys.executable, "-m", "spacenet7"]


def _run(*args, **kw):
    return subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=300, **kw)


def test_help_lists_every_stage_with_one_line():
    r = _run("--help")
    assert r.returncode == 0
    for stage, entry in STAGES.items():
        assert any(line.split()[:1] == [stage] and entry.description in line for line in r.stdout.splitlines()), stage


def test_unknown_stage_is_exit_2_with_one_line():
    r = _run("nosuchstage")
    assert r.returncode == 2
    assert "unknown stage 'nosuchstage'" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_has_a_primary_config_that_composes(stage):
    assert (CONF_DIR / f"{stage}.yaml").exists()
    overrides = ["run_dir=/tmp/x"] if stage == "train" else []
    cfg = compose(stage, overrides)
    assert isinstance(cfg, SCHEMAS[stage])


@pytest.mark.parametrize("order", ["overrides first", "flag first"])
def test_cfg_job_prints_the_composed_config_with_overrides(order):
    """``--cfg job`` beside overrides (the stage's own hydra.job.name goes with them, not after the flag)."""
    overrides, flag = ["recipe=real", "train.optimizer.lr=0.004"], ["--cfg", "job"]
    r = _run("pipeline", *(overrides + flag if order == "overrides first" else flag + overrides))
    assert r.returncode == 0, r.stderr
    assert "lr: 0.004" in r.stdout and "run_dir: runs/real" in r.stdout


def test_bad_input_is_one_clear_line_and_nonzero(tmp_path):
    (tmp_path / "train").mkdir()
    r = _run("chip", f"data_root={tmp_path}", f"out_dir={tmp_path / 'chips'}")
    assert r.returncode == 1
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "no AOIs found" in err[0] and str(tmp_path) in err[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "chips").exists()


def test_console_script_and_module_agree(synth_root, tmp_path):
    import shutil

    exe = shutil.which("spacenet7", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "console script not installed"
    a = subprocess.run(
        [exe, "synth", f"out_dir={tmp_path / 'a'}", "n_aois=1", "n_months=2", "size=64", "seed=5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    b = _run("synth", f"out_dir={tmp_path / 'b'}", "n_aois=1", "n_months=2", "size=64", "seed=5")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert (tmp_path / "a" / "sn7_train_ground_truth_pix.csv").read_bytes() == (
        tmp_path / "b" / "sn7_train_ground_truth_pix.csv"
    ).read_bytes()


def test_hydra_multirun_runs_each_job(tmp_path):
    r = _run(
        "synth",
        "-m",
        f"out_dir={tmp_path}/s${{seed}}",
        "n_aois=1",
        "n_months=1",
        "size=64",
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path}/multirun",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    # each job ran with its own seed: its data set is byte for byte what that seed gives in process
    from spacenet7 import synth
    from spacenet7.config import SynthConfig

    truth = "sn7_train_ground_truth_pix.csv"
    for seed in (1, 2):
        synth.run(SynthConfig(out_dir=str(tmp_path / f"ref{seed}"), n_aois=1, n_months=1, size=64, seed=seed))
        assert (tmp_path / f"s{seed}" / truth).read_bytes() == (tmp_path / f"ref{seed}" / truth).read_bytes(), seed
        made = sorted(p.relative_to(tmp_path / f"s{seed}") for p in (tmp_path / f"s{seed}").rglob("*.tif"))
        assert made and made == sorted(p.relative_to(tmp_path / f"ref{seed}") for p in (tmp_path / f"ref{seed}").rglob("*.tif"))
    assert (tmp_path / "s1" / truth).read_bytes() != (tmp_path / "s2" / truth).read_bytes()
    # and Hydra's sweep record has one job folder per value, with that job's override
    for num, seed in ((0, 1), (1, 2)):
        assert f"seed={seed}" in (tmp_path / "multirun" / str(num) / ".hydra" / "overrides.yaml").read_text()
