"""``spacenet7 STAGE [hydra overrides...]``: a thin dispatcher to one ``@hydra.main`` per stage."""

from __future__ import annotations

import importlib
import logging
import os
import sys

from spacenet7 import STAGES
from spacenet7.errors import SN7Error

STAGE_ENV = "SPACENET7_STAGE"  # set for the processes a stage starts (Lightning's DDP re-launches this command)
USAGE = "usage: spacenet7 STAGE [hydra overrides...]   (spacenet7 STAGE --help for its config)"


def _help() -> str:
    width = max(map(len, STAGES))
    lines = [USAGE, "", "stages (run in this order by `pipeline`):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in STAGES.items()]
    lines += [
        "",
        "examples:",
        "  spacenet7 synth out_dir=data/synthetic n_aois=3 n_months=12 size=1024 seed=0",
        "  spacenet7 train -m model.encoder_name=resnet18,efficientnet-b0 experiment=demo_cpu",
        "  spacenet7 pipeline train.max_epochs=3 predict.tile=512 train/model=unet",
        "  spacenet7 evaluate truth=TRUTH.csv proposal=PROPOSAL.csv out=metrics.json",
    ]
    return "\n".join(lines)


def run_stage(stage: str, cfg) -> object:
    """Call ``spacenet7.<stage>.run`` with the typed config."""
    module = importlib.import_module(f"spacenet7.{stage}")
    return module.run(cfg)


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

    import hydra

    from spacenet7.config import CONF_DIR, register, to_config

    register()
    precheck(stage, argv)
    os.environ[STAGE_ENV] = stage

    @hydra.main(config_path=str(CONF_DIR), config_name=stage, version_base="1.3")
    def _app(cfg) -> None:
        for noisy in ("pyogrio", "rasterio", "fiona", "matplotlib", "PIL"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            run_stage(stage, to_config(stage, cfg))
        except SN7Error as exc:
            fail(stage, str(exc))
        except OSError as exc:  # the OS's reason, with the file it concerns, as one line
            fail(stage, os_error_line(exc))

    sys.argv = [f"spacenet7-{stage}", *argv, *hydra_overrides(stage, argv)]
    _app()


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
    from spacenet7.config import compose_checked

    # hydra.searchpath stays: it decides which configs exist (train experiment=best of a tune run)
    overrides = [a for a in argv if not a.lstrip("+~").startswith("hydra.") or a.lstrip("+~").startswith("hydra.searchpath")]
    if stage == "train" and not any(a.split("=", 1)[0] == "run_dir" for a in overrides):
        overrides.append("run_dir=unused")  # its default is Hydra's run folder, known only once Hydra runs
    try:
        compose_checked(stage, overrides)
    except SN7Error as exc:
        fail(stage, str(exc))


def fail(stage: str, message: str) -> None:
    """Report one line on stderr and exit 1."""
    message = message.removeprefix(f"{stage}: ")
    print(f"spacenet7 {stage}: error: {message}", file=sys.stderr)
    sys.exit(1)


def os_error_line(exc: OSError) -> str:
    """``<path>: <reason>`` for an OSError (GDAL's first message line when the OS gave none)."""
    reason = exc.strerror or str(exc).splitlines()[0][:200] or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason


def hydra_overrides(stage: str, argv: list[str]) -> list[str]:
    """Hydra settings for this stage: the job is named after it, and ``train run_dir=X`` keeps
    Hydra's record of the run inside ``X``."""
    given = {a.split("=", 1)[0].lstrip("+~"): a.split("=", 1)[1] for a in argv if "=" in a}
    out = [] if "hydra.job.name" in given else [f"hydra.job.name={stage}"]
    if stage == "train" and "run_dir" in given and "hydra.run.dir" not in given:
        out.append(f"hydra.run.dir={given['run_dir']}")
    return out


if __name__ == "__main__":
    main()
