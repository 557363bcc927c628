"""``spacenet7 STAGE [hydra overrides...]``: a thin dispatcher to one ``@hydra.main`` per stage."""

from __future__ import annotations

import importlib
import logging
import sys

from spacenet7 import STAGES
from spacenet7.errors import SN7Error

USAGE = "usage: spacenet7 STAGE [hydra overrides...]   (spacenet7 STAGE --help for its config)"


def _help() -> str:
    width = max(map(len, STAGES))
    lines = [USAGE, "", "stages (run in this order by `pipeline`):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in STAGES.items()]
    lines += ["", "examples:", "  spacenet7 synth out_dir=data/synthetic n_aois=3 n_months=12 size=1024 seed=0",
              "  spacenet7 train -m model.encoder_name=resnet18,efficientnet-b0 experiment=demo_cpu",
              "  spacenet7 evaluate truth=TRUTH.csv proposal=PROPOSAL.csv out=metrics.json"]
    return "\n".join(lines)


def run_stage(stage: str, cfg) -> object:
    """Call ``spacenet7.<stage>.run`` with the typed config."""
    module = importlib.import_module(f"spacenet7.{stage}")
    return module.run(cfg)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_help())
        sys.exit(0 if argv else 2)
    stage = argv.pop(0)
    if stage not in STAGES:
        print(f"spacenet7: error: unknown stage {stage!r}; choose one of: {', '.join(STAGES)}", file=sys.stderr)
        sys.exit(2)

    import hydra
    from omegaconf import OmegaConf

    from spacenet7.config import CONF_DIR, register

    register()

    @hydra.main(config_path=str(CONF_DIR), config_name=stage, version_base="1.3")
    def _app(cfg) -> None:
        for noisy in ("pyogrio", "rasterio", "fiona", "matplotlib", "PIL"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            run_stage(stage, OmegaConf.to_object(cfg))
        except SN7Error as exc:
            print(f"spacenet7 {stage}: error: {exc}", file=sys.stderr)
            sys.exit(1)

    sys.argv = [f"spacenet7-{stage}", *argv]
    _app()


if __name__ == "__main__":
    main()
