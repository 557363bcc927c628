"""Log lines of a running stage: one line per record, in Hydra's format, no library adverts."""

from __future__ import annotations

import logging


class _DropAdverts(logging.Filter):
    """Drops Lightning's advertising lines ("💡 Tip: ... litlogger ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg) and "💡" not in str(record.msg)


def single_log_lines() -> None:
    """One line per log record, in Hydra's format and log file: Lightning's own console handler (added when it
    is imported before Hydra configures logging) is removed, its records go to the root handlers; no adverts."""
    if not logging.getLogger().handlers:  # no root handler (tests, notebooks): Lightning's own stays
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in logger.filters):
            logger.addFilter(_DropAdverts())
