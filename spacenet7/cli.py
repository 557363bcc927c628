"""``spacenet7 STAGE [hydra overrides...]``: a thin dispatcher to one ``@hydra.main`` per stage."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any

from spacenet7.errors import SN7Error, os_error_line
from spacenet7.logs import single_log_lines
from spacenet7.stages import STAGES
from spacenet7.stages import run_stage as run_registered_stage

STAGE_ENV = "SPACENET7_STAGE"  # set for the processes a stage starts (Lightning's DDP re-launches this command)
USAGE = "usage: spacenet7 STAGE [hydra overrides...]   (spacenet7 STAGE --help for its config)"


def _help() -> str:
    width = max(map(len, STAGES))
    lines = [USAGE, "", "stages (run in this order by `pipeline`):"]
    lines += [f"  {name:<{width}}  {stage.description}" for name, stage in STAGES.items()]
    lines += [
        "",
        "examples:",
        "  spacenet7 synth out_dir=data/synthetic n_aois=3 n_months=12 size=1024 seed=0",
        "  spacenet7 train -m model.encoder_name=resnet18,efficientnet-b0 experiment=demo_cpu",
        "  spacenet7 pipeline train.max_epochs=3 predict.tile=512 train/model=unet",
        "  spacenet7 evaluate truth=TRUTH.csv proposal=PROPOSAL.csv out=metrics.json",
    ]
    return "\n".join(lines)


def run_stage(stage: str, cfg: Any) -> object:
    """Run the stage's module with the typed config (:func:`spacenet7.stages.run_stage`)."""
    return run_registered_stage(stage, cfg)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    relaunched = os.environ.get(STAGE_ENV) if os.environ.get("LOCAL_RANK") else None
    if relaunched and (not argv or argv[0] not in STAGES):  # a DDP process that Lightning started: see ddp_relaunch_argv
        argv = [relaunched, *ddp_relaunch_argv(argv)]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_help())
        sys.exit(0 if argv else 2)
    stage = argv.pop(0)
    if stage not in STAGES:
        print(f"spacenet7: error: unknown stage {stage!r}; choose one of: {', '.join(STAGES)}", file=sys.stderr)
        sys.exit(2)

    if any(a in ("-h", "--help") for a in argv):  # the stage's settings, not Hydra's raw dump
        from spacenet7.stage_help import stage_help

        print(stage_help(stage))
        sys.exit(0)

    import hydra

    from spacenet7.compose import register, to_config
    from spacenet7.config import CONF_DIR

    register()
    precheck(stage, argv)
    os.environ[STAGE_ENV] = stage
    quiet_libraries()
    command = sys.argv[0]  # what was run (the console script, or spacenet7/__main__.py for python -m)

    @hydra.main(config_path=str(CONF_DIR), config_name=stage, version_base="1.3")
    def _app(cfg: Any) -> None:
        single_log_lines()
        for noisy in ("pyogrio", "rasterio", "fiona", "matplotlib", "PIL"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        logging.getLogger("rasterio._env").setLevel(logging.ERROR)  # GDAL's warnings while it writes ("A strile cannot...")
        # Hydra has parsed the command line: Lightning's DDP launcher re-runs sys.argv, so argv[0] must be
        # a runnable file again (the console script), not the display name Hydra was given
        sys.argv[0] = command
        try:
            run_stage(stage, to_config(stage, cfg))
        except SN7Error as exc:
            fail(stage, str(exc))
        except OSError as exc:  # the OS's reason, with the file it concerns, as one line
            fail(stage, os_error_line(exc))

    sys.argv = [f"spacenet7-{stage}", *with_hydra_overrides(stage, argv)]
    with stop_on_sigterm(stage):
        _app()


def quiet_libraries() -> None:
    """Keep a stage's one error line readable: no warning that the stages already check for themselves
    (rasterio's NotGeoreferencedWarning: a missing CRS is an error where it matters), and no C++ log
    lines of TensorFlow or absl, which OpenVINO's and NNCF's imports can pull in."""
    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


class stop_on_sigterm:  # noqa: N801 - used as a context manager, named like one
    """While the block runs, SIGTERM stops the stage at once: one line, exit status 143 (128 + 15).

    Without it Lightning's own handler only sets a flag that the training loop reads at its next
    batch (a validation epoch can take minutes); raising ``SystemExit`` here runs every ``finally``
    (scratch folders, ``.partial`` files), and Lightning, which re-raises it, stops its DDP processes.
    The previous handler is restored afterwards. Outside the main thread it does nothing.
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.previous: Callable[[int, FrameType | None], object] | int | None = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        print(f"spacenet7 {self.stage}: stopped by SIGTERM", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGTERM)

    def __enter__(self) -> stop_on_sigterm:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def ddp_relaunch_argv(argv: list[str]) -> list[str]:
    """The overrides of a process that Lightning's DDP launcher started (``trainer.strategy=ddp``).

    The launcher re-runs ``sys.argv[1:]``, which holds the overrides but not the stage (Hydra
    parses every argument as an override), and appends ``hydra.run.dir`` and ``hydra.job.name``;
    the stage comes from ``SPACENET7_STAGE`` and, for a key given twice, the launcher's value wins.
    """
    last = {a.split("=", 1)[0]: i for i, a in enumerate(argv) if "=" in a}
    return [a for i, a in enumerate(argv) if "=" not in a or last[a.split("=", 1)[0]] == i]


def precheck(stage: str, argv: list[str]) -> None:
    """Compose the stage's config before Hydra runs it, so that a typo, a wrong type or a bad value
    is one line naming the key (Hydra's own report is several). Skipped for Hydra's flags
    (``--help``, ``--cfg``, ``-m``), which Hydra handles itself."""
    if any(a.startswith("-") for a in argv):
        return
    from spacenet7.compose import compose_checked

    # hydra.searchpath stays: it decides which configs exist (train experiment=best of a tune run)
    overrides = [a for a in argv if not a.lstrip("+~").startswith("hydra.") or a.lstrip("+~").startswith("hydra.searchpath")]
    if stage == "train" and not any(a.split("=", 1)[0] == "run_dir" for a in overrides):
        overrides.append("run_dir=unused")  # its default is Hydra's run folder, known only once Hydra runs
    try:
        cfg = compose_checked(stage, overrides)
        if stage == "train" and any(a.split("=", 1)[0] == "run_dir" for a in argv):
            from spacenet7.io.atomic import check_creatable_dir

            check_creatable_dir(cfg.run_dir)  # Hydra makes it (its run folder) before the stage's own checks
    except SN7Error as exc:
        fail(stage, str(exc))


def fail(stage: str, message: str) -> None:
    """Report one line on stderr and exit 1."""
    message = message.removeprefix(f"{stage}: ")
    print(f"spacenet7 {stage}: error: {message}", file=sys.stderr)
    sys.exit(1)


def hydra_overrides(stage: str, argv: list[str]) -> list[str]:
    """Hydra settings for this stage: the job is named after it, and ``train run_dir=X`` keeps
    Hydra's record of the run inside ``X``."""
    given = {a.split("=", 1)[0].lstrip("+~"): a.split("=", 1)[1] for a in argv if "=" in a}
    out = [] if "hydra.job.name" in given else [f"hydra.job.name={stage}"]
    if stage == "train" and "run_dir" in given and "hydra.run.dir" not in given:
        out.append(f"hydra.run.dir={given['run_dir']}")
    return out


def with_hydra_overrides(stage: str, argv: list[str]) -> list[str]:
    """``argv`` with :func:`hydra_overrides` put before its first override, not after its flags: Hydra's
    parser takes the overrides as one run of arguments, so ``recipe=real --cfg job`` followed by an
    appended override would be refused ("unrecognized arguments")."""
    first = next((i for i, a in enumerate(argv) if "=" in a and not a.startswith("-")), len(argv))
    return [*argv[:first], *hydra_overrides(stage, argv), *argv[first:]]


if __name__ == "__main__":
    main()
