"""Stage ``bundle``: a trained checkpoint as a model bundle (:mod:`spacenet7.models.bundle`).

``spacenet7 bundle checkpoint=runs/real/train/checkpoints/last.ckpt out=models/real.bundle recipe_name=real``
writes ``out/weights.safetensors`` and ``out/card.json``: the architecture, the input spec the
network was trained on (bands, scaling, resampling, upscale), the vectorize and tracking settings
of the run (its ``pipeline.json``, with ``vectorize.*`` on top), provenance (data, recipe, git
commit, seed) and the scores the run measured (its ``metrics.json``). Every stage that takes
``checkpoint=`` takes the bundle.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from spacenet7.config import BundleConfig
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.models.bundle import card_summary, read_card, write_bundle

log = logging.getLogger(__name__)


def run(cfg: BundleConfig) -> Path:
    """Write the bundle; returns its folder.

    Raises:
        SN7Error: an unreadable checkpoint or scores file, or settings the card cannot hold.
    """
    if cfg.out is None:
        raise SN7Error("bundle: give out=NAME.bundle (the bundle folder to write)")
    scores = None
    if cfg.scores:
        try:
            scores = json.loads(Path(cfg.scores).read_text())
        except (OSError, ValueError) as exc:
            raise SN7DataError(cfg.scores, f"not a readable metrics.json ({str(exc).splitlines()[0][:120]})") from None
        if not isinstance(scores, dict):
            raise SN7DataError(cfg.scores, "not a metrics.json (expected a JSON object)")
    provenance = {k: v for k, v in (("recipe", cfg.recipe_name), ("data", cfg.data), ("seed", cfg.seed)) if v is not None}
    out = write_bundle(
        cfg.checkpoint, cfg.out, name=cfg.name, vectorize=dict(cfg.vectorize), provenance=provenance, scores=scores
    )
    log.info("bundle: wrote %s (%s)", out, card_summary(read_card(out)))
    return out
