"""Bad input and faults, second sweep (issue 32, classes D-H): garbage in, memory, tune and DDP
bookkeeping, serve exposure, and the one line that must not drown or mislead.

Each case runs the real CLI entry point (``cli(capsys, ...)`` of ``tests/test_bad_input.py``) or the
function the CLI calls, and would fail on the code before the fix.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from shapely.geometry import box
from test_bad_input import _log_dir, cli, one_aoi, partials, write_tif  # noqa: F401 - fixtures used by name

from spacenet7.data.sn7 import scan
from spacenet7.errors import SN7DataError, SN7Error

EXE = [sys.executable, "-m", "spacenet7"]
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# H. The one line is drowned or misleading


def test_non_ascii_path_says_to_quote_the_value(tmp_path, capsys):
    out = tmp_path / "données"
    code, err = cli(capsys, "synth", f"out_dir={out}", "n_aois=1", "n_months=1", "size=64")
    assert code == 1 and len(err) == 1, err
    assert "LexerNoViableAltException" not in err[0]
    assert err[0].startswith("spacenet7 synth: error: ") and f"quote it: out_dir='{out}'" in err[0], err[0]
    code, err = cli(capsys, "synth", f"out_dir='{out}'", "n_aois=1", "n_months=1", "size=64")  # and quoted, it works
    assert code == 0 and (out / "train").is_dir(), err


def test_port_in_use_names_the_port(tmp_path, capsys):
    from spacenet7.serve.server import bind

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(SN7Error, match=rf"cannot listen on 127\.0\.0\.1:{port}: Address already in use; .*port=0"):
            bind("127.0.0.1", port)
    finally:
        taken.close()


def test_sigterm_stops_a_stage_at_once_with_one_line(capsys, monkeypatch):
    """Lightning's own SIGTERM handler only sets a flag read at the next batch; the CLI's stops the stage now."""
    from spacenet7 import cli as cli_module

    def busy(stage, cfg):  # a stage deep in C code or a long loop when the signal comes
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)

    monkeypatch.setattr(cli_module, "run_stage", busy)
    before = signal.getsignal(signal.SIGTERM)
    t0 = time.monotonic()
    code, err = cli(capsys, "synth", "n_aois=1")
    assert time.monotonic() - t0 < 5
    assert code == 143 and err == ["spacenet7 synth: stopped by SIGTERM"], err
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


@pytest.mark.slow
def test_sigterm_stops_training_within_5_s(tmp_path, synth_root):
    """A real training run (Lightning's handler installed) stops within 5 s of a SIGTERM."""
    from spacenet7 import chip
    from spacenet7.config import ChipConfig

    chips = tmp_path / "chips"
    chip.run(ChipConfig(data_root=str(synth_root), out_dir=str(chips), chip_size=128, overlap=0, progress=False))
    env = {**os.environ, "SPACENET7_LOG_DIR": str(tmp_path / "logs")}
    argv = [f"chip_dir={chips}", f"run_dir={tmp_path / 'run'}", "experiment=demo_cpu", "max_epochs=1000", "logger.wandb=false"]
    proc = subprocess.Popen([*EXE, "train", *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "run").rglob("metrics.csv")) and time.monotonic() < deadline:  # an epoch has run
        time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 5, err[-2000:]
    assert proc.returncode == 143 and "spacenet7 train: stopped by SIGTERM" in err


def test_not_georeferenced_warnings_are_not_printed(tmp_path, capsys, monkeypatch):
    """A file without georeferencing is an error where a CRS matters, never a warning line beside it."""
    import warnings

    from spacenet7 import cli as cli_module

    def read_plain_file(stage, cfg):
        path = tmp_path / "plain.tif"
        with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as ds:
            ds.write(np.zeros((1, 4, 4), np.uint8))
        with rasterio.open(path):
            pass

    monkeypatch.setattr(cli_module, "run_stage", read_plain_file)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # as outside pytest: only the CLI's own filter may hide it
        code, err = cli(capsys, "synth", "n_aois=1")
    assert code == 0, err
    assert not [w for w in seen if w.category is rasterio.errors.NotGeoreferencedWarning], [str(w.message) for w in seen]
