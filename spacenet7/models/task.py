"""The Lightning task: an smp network (built from its config), the loss and torchmetrics."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex

from spacenet7.data.bands import InputSpec
from spacenet7.errors import SN7DataError, SN7Error

SMP_FACTORY = "segmentation_models_pytorch.create_model"  # the one factory a model config may name
_SCALARS = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``value`` is plain data: scalars, lists and string-keyed maps of them,
    with no key starting with ``_`` (Hydra's ``_target_``, ``_args_``, ``_partial_``...)."""
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a non-string key {key!r}")
            if key.startswith("_"):
                raise ValueError(f"{where}.{key} is not allowed: a model config is data, nothing in it is instantiated")
            _check_plain(item, f"{where}.{key}")
        return
    raise ValueError(f"{where} is a {type(value).__name__}, not plain data")


def model_kwargs(model_cfg: Any) -> dict[str, Any]:
    """The keyword arguments of ``segmentation_models_pytorch.create_model`` that a model config holds.

    A model config (a Hydra node, or the ``model`` hyper-parameter of a checkpoint) is validated
    data, never instantiated: its ``_target_``, if any, must be :data:`SMP_FACTORY`, and every other
    value must be plain data (str, int, float, bool, None, lists and maps of them) without a
    ``_``-key at any depth, so that no file can name a callable to run.

    Raises:
        ValueError: what is wrong, naming the key (``model._target_``, ``model.x.y``).
    """
    if not isinstance(model_cfg, dict):
        raise ValueError(f"model is {type(model_cfg).__name__}, expected a map of {SMP_FACTORY} arguments")
    kwargs = dict(model_cfg)
    target = kwargs.pop("_target_", SMP_FACTORY)
    if target != SMP_FACTORY:
        raise ValueError(f"model._target_={str(target)[:80]!r}; only {SMP_FACTORY} is allowed")
    _check_plain(kwargs, "model")
    return kwargs


def build_net(model_cfg: dict[str, Any], source: str | Path | None = None) -> torch.nn.Module:
    """The network of a model config: ``segmentation_models_pytorch.create_model(**kwargs)`` (:func:`model_kwargs`).

    Args:
        model_cfg: the config (``_target_: segmentation_models_pytorch.create_model`` or none).
        source: the checkpoint the config comes from, named by the error; ``None``: the stage's config.

    Raises:
        SN7DataError: ``source``'s config is not a plain smp config ("not a spacenet7 checkpoint").
        SN7Error: the stage's config is not one, or names an unknown architecture or encoder (with the key to fix).
    """
    try:
        kwargs = model_kwargs(model_cfg)
    except ValueError as exc:
        if source is not None:
            raise SN7DataError(source, f"not a spacenet7 checkpoint ({exc})") from None
        raise SN7Error(f"bad model config: {exc}") from None
    import segmentation_models_pytorch as smp

    try:
        return smp.create_model(**kwargs)
    except Exception as exc:  # smp raises KeyError/ValueError/TypeError
        msg = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        if "encoder" in msg.lower():
            raise SN7Error(f"model.encoder_name={kwargs.get('encoder_name')!r} is not a known smp/timm encoder ({msg})") from None
        raise SN7Error(f"cannot build model {kwargs.get('arch')!r}: {msg}") from None


def check_chip_meta(meta: Any) -> str | None:
    """What is wrong with a checkpoint's ``chip_meta`` (``None``: nothing; a missing one is the SN7 default).

    ``upscale`` must be a positive finite number and ``input`` a valid :class:`InputSpec` map.
    """
    if meta is None:
        return None
    if not isinstance(meta, dict):
        return f"chip_meta is {type(meta).__name__}, expected a map"
    upscale = meta.get("upscale", 1.0)
    if isinstance(upscale, bool) or not isinstance(upscale, (int, float)) or not (math.isfinite(upscale) and upscale > 0):
        return f"chip_meta.upscale={repr(upscale)[:40]} must be a positive number"
    spec = meta.get("input")
    if spec is not None and not isinstance(spec, dict):
        return f"chip_meta.input is {type(spec).__name__}, expected a map"
    try:
        InputSpec.from_dict(spec)
    except TypeError as exc:  # an unknown key
        return f"chip_meta.input: {str(exc).splitlines()[0][:160]}"
    except (SN7Error, ValueError) as exc:
        return f"chip_meta.{str(exc).splitlines()[0][:160]}"
    return None


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The network weights (keys without the ``net.`` prefix) and hyper-parameters of a spacenet7 checkpoint.

    The file is read with ``weights_only=True``, and its model config is checked as plain data
    (:func:`model_kwargs`) and its chip metadata as values prediction can use (:func:`check_chip_meta`):
    a checkpoint can never run code. A model bundle (a ``.bundle`` folder, :mod:`spacenet7.models.bundle`)
    is read the same way: its card as validated data, its weights as safetensors.

    Raises:
        SN7DataError: missing or unloadable file, or not a spacenet7 checkpoint (or bundle).
    """
    from spacenet7.models.bundle import is_bundle, read_bundle

    if is_bundle(path):
        return read_bundle(path)
    path = Path(path)
    if not path.is_file():
        raise SN7DataError(path, "checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch's "Detected pickle protocol 4": the line below says what matters
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SN7DataError(
            path, f"not a loadable checkpoint ({(str(exc).splitlines() or [type(exc).__name__])[0][:160]})"
        ) from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if (
        not isinstance(ckpt.get("state_dict") if isinstance(ckpt, dict) else None, dict)
        or not isinstance(hp, dict)
        or "model" not in hp
    ):
        raise SN7DataError(path, "not a spacenet7 checkpoint (no state_dict / model hyper-parameters)")
    try:
        model_kwargs(hp["model"])
    except ValueError as exc:
        raise SN7DataError(path, f"not a spacenet7 checkpoint ({exc})") from None
    if problem := check_chip_meta(hp.get("chip_meta")):
        raise SN7DataError(path, f"not a spacenet7 checkpoint ({problem})")
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

    def configure_optimizers(self) -> Any:
        """The optimizer and, if configured, its per-epoch scheduler."""
        opt = instantiate(self.hparams["optimizer"])(params=self.parameters())
        if not self.hparams.get("scheduler"):
            return opt
        sched = instantiate(self.hparams["scheduler"])(optimizer=opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
