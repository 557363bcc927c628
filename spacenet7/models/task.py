"""The Lightning task: an smp network (built from its config), the loss and torchmetrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex

from spacenet7.errors import SN7DataError, SN7Error


def build_net(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the network config (``_target_: segmentation_models_pytorch.create_model``).

    Raises:
        SN7Error: unknown architecture or encoder, with the config key to fix.
    """
    try:
        return instantiate(model_cfg, _convert_="all")
    except Exception as exc:  # smp raises KeyError/ValueError wrapped by Hydra
        cause = exc.__cause__ or exc
        msg = str(cause).splitlines()[0][:300]
        if "encoder" in msg.lower():
            raise SN7Error(
                f"model.encoder_name={model_cfg.get('encoder_name')!r} is not a known smp/timm encoder ({msg})"
            ) from None
        raise SN7Error(f"cannot build model {model_cfg.get('arch')!r}: {msg}") from None


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The network weights (keys without the ``net.`` prefix) and hyper-parameters of a spacenet7 checkpoint.

    The file is read with ``weights_only=True``: a checkpoint can never run code.

    Raises:
        SN7DataError: missing or unloadable file, or not a spacenet7 checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise SN7DataError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SN7DataError(path, f"not a loadable checkpoint ({str(exc).splitlines()[0][:160]})") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if (
        not isinstance(ckpt.get("state_dict") if isinstance(ckpt, dict) else None, dict)
        or not isinstance(hp, dict)
        or "model" not in hp
    ):
        raise SN7DataError(path, "not a spacenet7 checkpoint (no state_dict / model hyper-parameters)")
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return state, hp


class SegmentationTask(L.LightningModule):
    """Footprint/boundary/contact segmentation.

    Args:
        model: network config with ``_target_`` (saved in the checkpoint, so prediction rebuilds it).
        loss: loss config with ``_target_``.
        optimizer: partial optimizer config (``_partial_: true``).
        scheduler: partial LR scheduler config or ``None``.
        chip_meta: chip metadata (upscale, bands) that prediction must reproduce.
    """

    def __init__(
        self, model: dict, loss: dict, optimizer: dict, scheduler: dict | None = None, chip_meta: dict | None = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_net(model).to(memory_format=torch.channels_last)  # faster convolutions: bench/bench_precision.py
        self.loss_fn = instantiate(loss, _convert_="all")
        self.val_iou = BinaryJaccardIndex(ignore_index=-1)
        self.val_f1 = BinaryF1Score(ignore_index=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a (B, 3, H, W) batch."""
        return self.net(x.contiguous(memory_format=torch.channels_last))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Loss of one batch; a non-finite loss stops training with a clear error."""
        logits = self(batch["image"])
        loss = self.loss_fn(logits, batch["target"])
        if not torch.isfinite(loss):
            raise SN7Error(
                f"train: loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step} "
                "(lower optimizer.lr, enable trainer.gradient_clip_val, or check the chips)"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Loss, IoU and F1 of the footprint channel."""
        logits = self(batch["image"])
        loss = self.loss_fn(logits, batch["target"])
        prob = logits[:, 0].sigmoid()
        target = batch["target"][:, 0].long()
        self.val_iou.update(prob, target)
        self.val_f1.update(prob, target)
        n = len(logits)
        self.log("val/loss", loss, batch_size=n, sync_dist=True)
        self.log("val/iou", self.val_iou, prog_bar=True, batch_size=n)
        self.log("val/f1", self.val_f1, prog_bar=True, batch_size=n)

    def configure_optimizers(self):
        """The optimizer and, if configured, its per-epoch scheduler."""
        opt = instantiate(self.hparams.optimizer)(params=self.parameters())
        if not self.hparams.scheduler:
            return opt
        sched = instantiate(self.hparams.scheduler)(optimizer=opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
