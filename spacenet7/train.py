"""Stage ``train``: Lightning fit of :class:`SegmentationTask` on the chip index.

The run directory receives ``checkpoints/{best,last}.ckpt``, ``config.yaml`` (resolved) and
``metrics.json`` (validation scores of the best checkpoint). ``resume=true`` continues from
``checkpoints/last.ckpt`` to the same ``max_epochs``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
import yaml
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, EarlyStopping, EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_only

from spacenet7.config import Layout, TrainConfig
from spacenet7.data.bands import InputSpec
from spacenet7.data.dataset import ChipDataModule
from spacenet7.data.windows import WindowDataModule
from spacenet7.errors import SN7DataError, SN7Error
from spacenet7.io.artifacts import load_index
from spacenet7.io.atomic import atomic_path, ensure_writable_dir
from spacenet7.io.layout import TrainLayout
from spacenet7.logs import single_log_lines
from spacenet7.models.precision import resolve_precision
from spacenet7.models.task import SegmentationTask, read_checkpoint

log = logging.getLogger(__name__)


def drop_empty_chips(index: pd.DataFrame, keep: float, seed: int) -> pd.DataFrame:
    """Keep a ``keep`` fraction of the training chips that contain no building (validation untouched)."""
    if keep >= 1:
        return index
    if not 0 <= keep < 1:
        raise SN7Error(f"train: empty_chips={keep} must be a fraction in [0, 1]")
    empty = index[(index["split"] == "train") & (index["building_frac"] <= 0)]
    return index.drop(empty.sample(frac=1 - keep, random_state=seed).index)


class EpochProgress(Callback):
    """One line per epoch in the stage's log: ``train: epoch 3/40  loss 0.4123  val IoU 0.3561  (2m05s, ~25m00s left)``.

    Written by rank 0 after the epoch's validation (``val IoU`` is ``-`` in an epoch without one). The time left is the
    mean epoch so far times the epochs to go (validation epochs are longer, so it is an estimate).
    """

    def __init__(self) -> None:
        self.start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock."""
        import time

        self.start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the epoch's line (Lightning runs this epoch's validation before this hook)."""
        import time

        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        loss = metrics.get("train/loss")
        iou = metrics.get("val/iou") if trainer.validating or _validated(trainer) else None
        elapsed = time.monotonic() - self.start
        done, total = trainer.current_epoch + 1, trainer.max_epochs or 0
        log.info(
            "train: epoch %d/%d  loss %s  val IoU %s  (%s%s)",
            done,
            total,
            f"{float(loss):.4f}" if loss is not None else "-",
            f"{float(iou):.4f}" if iou is not None else "-",
            _minutes(elapsed),
            f", ~{_minutes(elapsed / done * (total - done))} left" if 0 < done < total else "",
        )


def _minutes(seconds: float) -> str:
    """``125.4`` -> ``2m05s``."""
    whole = int(seconds)
    return f"{whole // 60}m{whole % 60:02d}s"


def _validated(trainer: L.Trainer) -> bool:
    """Whether validation ran at the end of the current epoch."""
    every = trainer.check_val_every_n_epoch or 1
    return trainer.num_val_batches != [] and (trainer.current_epoch + 1) % every == 0


def init_weights(net: torch.nn.Module, checkpoint: str | Path) -> None:
    """Load the network weights of a spacenet7 checkpoint into ``net`` (not its optimizer state or epoch).

    Raises:
        SN7DataError: missing or unreadable file, not a spacenet7 checkpoint (see :func:`read_checkpoint`),
            or weights of another shape.
    """
    path = Path(checkpoint)
    state, hp = read_checkpoint(path)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or extra or wrong:
        what = (
            f"{wrong[0][0]} is {wrong[0][1]} in the checkpoint but {wrong[0][2]} in the model"
            if wrong
            else f"{len(missing)} weights missing (e.g. {missing[0]})"
            if missing
            else f"{len(extra)} unexpected weights (e.g. {extra[0]})"
        )
        trained = hp["model"]
        raise SN7DataError(
            path,
            f"init_from: architecture mismatch ({what}; the checkpoint was trained as "
            f"{trained.get('arch')}/{trained.get('encoder_name')}); use a checkpoint of the same model",
        )
    net.load_state_dict(state, strict=True)
    log.info("train: initialised the network from %s", path)


def check_files(chip_dir: str | Path, index: pd.DataFrame, layout: Layout) -> None:
    """Every file the index lists exists, checked before training starts (not at the first batch that needs it)."""
    chip_dir = Path(chip_dir)
    if layout is Layout.chips:
        paths = [chip_dir / p for p in index["path"].unique()]
    else:
        paths = [chip_dir / p for p in index["target"].unique()] + [Path(p) for p in index["image"].unique()]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise SN7DataError(
            missing[0],
            f"listed in the chip index but not found ({len(missing)} of {len(paths)} files missing); re-run `spacenet7 chip`",
        )


def _datamodule(cfg: TrainConfig, index: pd.DataFrame, meta: dict, augment: Any) -> L.LightningDataModule:
    """The data module for the chip folder's layout: fixed chips or random windows."""
    layout = Layout(meta.get("layout", Layout.chips.value))
    check_files(cfg.chip_dir, index, layout)
    if layout is Layout.chips:
        index = drop_empty_chips(index, cfg.empty_chips, cfg.seed)
        return ChipDataModule(cfg.chip_dir, index, cfg.batch_size, cfg.num_workers, augment, cfg.seed, cfg.cache_chips, cfg.crop)
    geometric = _geometric_transforms(augment)
    if geometric:
        raise SN7Error(
            f"train: the augment config moves pixels ({', '.join(geometric)}), but with chip layout=rasters the "
            "window sampler draws rotations/mirrors itself and augment sees the image only; use augment=planet"
        )
    w = cfg.windows
    return WindowDataModule(
        cfg.chip_dir,
        index,
        w.size,
        w.per_mosaic,
        cfg.batch_size,
        cfg.num_workers,
        augment,
        w.d4,
        w.scale_jitter,
        cfg.seed,
        w.in_memory,
        InputSpec.from_dict(meta.get("input")),
        w.on_buildings,
        w.max_per_epoch,
        w.max_val_windows,
    )


def _geometric_transforms(augment: Any) -> list[str]:
    """Names of the transforms in an albumentations pipeline that move pixels (image and masks)."""
    import albumentations as A

    if augment is None:
        return []
    found = []
    for t in getattr(augment, "transforms", [augment]):
        if hasattr(t, "transforms"):
            found += _geometric_transforms(t)
        elif isinstance(t, A.DualTransform):
            found.append(type(t).__name__)
    return found


def _strategy(name: str, backend: str | None) -> str | Strategy:
    """Lightning's strategy by name, or a DDP strategy on the given process-group backend (gloo for CPUs)."""
    if backend is None:
        return name
    if name not in ("ddp", "ddp_spawn"):
        raise SN7Error(f"train: trainer.process_group_backend={backend!r} needs trainer.strategy=ddp or ddp_spawn (got {name!r})")
    return DDPStrategy(process_group_backend=backend, start_method="spawn" if name == "ddp_spawn" else "popen")


def run(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> dict[str, Path]:
    """Train; returns paths of the best/last checkpoints and ``metrics.json``.

    ``callbacks``: extra Lightning callbacks for the fit (``spacenet7 tune``'s pruning).
    """
    for key in ("model", "loss", "optimizer"):
        if not getattr(cfg, key):
            raise SN7Error(f"train: config has no {key} (choose one, e.g. {key}=...)")
    single_log_lines()  # one line per Lightning record, no adverts (also when the pipeline or tune runs this)
    layout = TrainLayout(Path(cfg.run_dir))
    resume_from = layout.last
    if cfg.resume and resume_from.exists():  # read with weights_only before Lightning loads it: a truncated or
        read_checkpoint(resume_from)  # pickled file is one line, and nothing in it runs
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True)
    ensure_writable_dir(cfg.run_dir)
    index, meta = load_index(cfg.chip_dir)
    if not (index["split"] == "val").any():
        raise SN7Error(f"{cfg.chip_dir}: chip index has no 'val' chips (check chip split/val_frac)")
    run_dir = layout.root
    ckpt_dir = layout.checkpoints
    last = layout.last
    if cfg.resume and not last.exists():
        raise SN7Error(f"{last}: resume=true but there is no last checkpoint to resume from")
    task = SegmentationTask(cfg.model, cfg.loss, cfg.optimizer, cfg.scheduler, chip_meta=meta)
    if cfg.init_from and not cfg.resume:
        init_weights(task.net, cfg.init_from)
    augment = instantiate(cfg.augment, _convert_="all") if cfg.augment else None
    if augment is not None and hasattr(augment, "set_random_seed"):
        augment.set_random_seed(cfg.seed)  # albumentations 2.x has its own RNG, untouched by seed_everything
    dm = _datamodule(cfg, index, meta, augment)
    best_cb = ModelCheckpoint(
        dirpath=ckpt_dir, filename=layout.best.stem, monitor=cfg.monitor, mode="max", save_top_k=1, enable_version_counter=False
    )
    # Lightning's save_last only writes when the monitored checkpoint improves; resume needs every epoch,
    # validated or not (check_val_every_n_epoch > 1)
    last_cb = ModelCheckpoint(
        dirpath=ckpt_dir, filename=layout.last.stem, save_top_k=1, save_on_train_epoch_end=True, enable_version_counter=False
    )
    callbacks = [best_cb, last_cb, EpochProgress(), *(callbacks or [])]
    if cfg.ema_decay is not None:  # validation, best.ckpt and last.ckpt see the averaged weights
        callbacks.append(EMAWeightAveraging(decay=cfg.ema_decay))
    if cfg.early_stopping_patience > 0:
        callbacks.append(EarlyStopping(monitor=cfg.monitor, mode="max", patience=cfg.early_stopping_patience))
    loggers: list[Logger] = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(run_dir, name="csv"))
    if cfg.logger.wandb:
        os.environ.setdefault("WANDB_SILENT", "true")
        wandb_logger = WandbLogger(
            project=cfg.logger.project, save_dir=str(run_dir), mode=cfg.logger.wandb_mode, config=asdict(cfg)
        )
        getattr(wandb_logger, "_wandb_init", {}).pop("anonymous", None)  # Lightning passes None: wandb warns it has no effect
        loggers.append(wandb_logger)
    trainer_kw = {k: v for k, v in asdict(cfg.trainer).items() if v is not None}
    trainer_kw["strategy"] = _strategy(cfg.trainer.strategy, trainer_kw.pop("process_group_backend", None))
    trainer_kw["precision"] = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    if cfg.trainer.precision == "auto" and trainer_kw["precision"] == "32-true":
        log.info("train: precision 32-true (auto: no GPU, and no native bf16 on this CPU: AMX or AVX512-BF16 trains ~2x faster)")
    trainer = L.Trainer(
        **trainer_kw,
        max_epochs=cfg.max_epochs,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=run_dir,
        deterministic="warn",
        num_sanity_val_steps=0,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    if getattr(rank_zero_only, "rank", 0) == 0:  # DDP: every process runs this function; one writes
        layout.config.write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    trainer.fit(task, dm, ckpt_path=str(last) if cfg.resume else None)
    best = Path(best_cb.best_model_path) if best_cb.best_model_path else layout.best
    if not best_cb.best_model_path and trainer.is_global_zero:  # validation never ran (check_val_every_n_epoch)
        log.warning("train: no validation epoch ran; best.ckpt is the last checkpoint")
        shutil.copyfile(last, best)
    trainer.strategy.barrier()
    epochs, steps = trainer.current_epoch, trainer.global_step
    scores = trainer.validate(task, dm, ckpt_path=str(best), verbose=False)[0]  # every rank (DDP), rank 0 writes
    metrics: dict[str, float | int | str] = {k.replace("/", "_"): float(v) for k, v in scores.items()}
    metrics.update(best_checkpoint=str(best), epochs=epochs, global_step=steps)
    if trainer.is_global_zero:
        with atomic_path(layout.metrics) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
    if cfg.logger.wandb:
        import wandb

        wandb.finish()
    log.info("train: best %s = %.4f (%s)", cfg.monitor, metrics.get(cfg.monitor.replace("/", "_"), float("nan")), best)
    return {"best": best, "last": last, "metrics": layout.metrics}
