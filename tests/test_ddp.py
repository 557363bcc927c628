"""Multi-process training: ``trainer=ddp_cpu`` (Lightning DDP, 2 CPU processes over gloo) through the CLI.

Lightning's DDP launcher re-runs the command line once per extra process; the run must write one
set of checkpoints, one ``metrics.json`` and one CSV log (rank 0), and resume from ``last.ckpt``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from spacenet7 import chip
from spacenet7.compose import compose
from spacenet7.config import ChipConfig
from spacenet7.data.sn7 import scan

pytestmark = pytest.mark.ddp


@pytest.fixture(scope="module")
def chip_dir(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_chips")
    chip.run(
        ChipConfig(
            data_root=str(synth_root),
            out_dir=str(out),
            aois=sorted(scan(synth_root))[:1],
            chip_size=128,
            overlap=0,
            split="spatial",
            val_frac=0.5,
            progress=False,
        )
    )
    return out


def test_ddp_cpu_config_is_two_gloo_processes():
    t = compose("train", ["trainer=ddp_cpu", "run_dir=x"]).trainer
    assert (t.accelerator, t.devices, t.strategy, t.process_group_backend) == ("cpu", 2, "ddp", "gloo")


# two runs of 2 processes each: 34 s on 2 free cores (default suite: issue 17 asks CI to run it), minutes on a busy machine
def test_ddp_cpu_trains_writes_once_and_resumes(chip_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "spacenet7",
        "train",
        "experiment=demo_cpu",
        "trainer=ddp_cpu",
        f"chip_dir={chip_dir}",
        f"run_dir={run_dir}",
        "logger.wandb=false",
        "trainer.enable_progress_bar=false",
        "batch_size=2",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
    ]
    env = {**os.environ, "SPACENET7_LOG_DIR": str(tmp_path / "logs")}
    r = subprocess.run([*args, "max_epochs=1"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "distributed_backend=gloo" in out and "MEMBER: 2/2" in out, out[-3000:]
    assert (run_dir / "train_ddp_process_1.log").exists(), "the second process did not run"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["epochs"] == 1 and m["global_step"] == 2  # 2 batches per process per epoch (DistributedSampler)
    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]

    r = subprocess.run([*args, "max_epochs=2", "resume=true"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["epochs"] == 2 and m["global_step"] == 4
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert sorted(p.name for p in (run_dir / "csv").iterdir()) == ["version_0", "version_1"]  # one log per run, not per process
