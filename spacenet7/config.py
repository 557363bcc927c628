"""Typed configuration schemas, one per stage; :mod:`spacenet7.compose` registers them in Hydra's
ConfigStore and composes them.

Each ``conf/<stage>.yaml`` starts its defaults list with ``_<stage>_schema`` so Hydra validates
types and unknown keys. ``_target_`` appears only at swap points (model, loss, optimizer,
scheduler, augment); those fields are typed ``Any`` and built with ``hydra.utils.instantiate``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from spacenet7.data.bands import InputSpec
from spacenet7.errors import check, choice
from spacenet7.io.layout import DEMO, REAL
from spacenet7.metrics.rules import BETA, IOU_THRESHOLD, MIN_TRUTH_AREA
from spacenet7.stages import PIPELINE_STAGES, STAGES
from spacenet7.track import TrackConfig  # the schema of vectorize's track node


def _pixel_shift(values: Sequence[float], stage: str, key: str) -> list[float]:
    """A checked ``[dx, dy]`` shift in source pixels (``chip.label_shift_px``, ``vectorize.shift_px``)."""
    check(
        len(values) == 2 and all(abs(float(v)) <= 2 for v in values),
        stage,
        f"{key}={list(values)} must be [dx, dy] in source pixels, each within [-2, 2]",
    )
    return [float(v) for v in values]


# Closed choices. Hydra matches an override by member name, so names are the lower-case values and
# a bad value is refused when the config is composed ("expected one of [aoi, spatial]").
class Split(StrEnum):
    """How chips are split into train and val."""

    aoi = "aoi"  # whole AOIs (grouped)
    spatial = "spatial"  # the right val_frac band of every AOI (one-AOI data)


class Layout(StrEnum):
    """How the training data is laid out on disk."""

    chips = "chips"  # 7-band chips on a fixed grid
    rasters = "rasters"  # one packed target raster per month; windows are drawn at training time


class IndexFormat(StrEnum):
    """File format of the chip index."""

    parquet = "parquet"
    csv = "csv"


class Grid(StrEnum):
    """The grid of the probability rasters."""

    source = "source"  # the mosaic's
    upscaled = "upscaled"  # the model's (the mosaic's times the training upscale)


class TTAViews(StrEnum):
    """Test-time views."""

    d4 = "d4"  # the 8 rotations/mirrors (8x inference)
    flips = "flips"  # identity + 2 mirrors (3x)


FAST_EXTRA = "pip install 'spacenet7[fast]'"
"""How to install the fast runtimes (onnx, onnxruntime, openvino, nncf): named by every error about a missing one."""


class Engine(StrEnum):
    """Which runtime executes the network in ``predict`` (:mod:`spacenet7.models.runtime`)."""

    torch = "torch"  # the checkpoint, eager PyTorch
    onnxruntime = "onnxruntime"  # an exported .onnx file
    openvino = "openvino"  # an exported OpenVINO IR (.xml) or an .onnx file
    # the fastest engine at truth parity recorded by `spacenet7 compile` (the bundle's card, model_file's
    # metadata) whose package is installed; torch otherwise (spacenet7/models/engine_choice.py)
    auto = "auto"


class ModelFormat(StrEnum):
    """What ``spacenet7 compile`` writes."""

    onnx = "onnx"  # <name>.onnx
    openvino = "openvino"  # <name>.xml + <name>.bin (OpenVINO IR)


class OverflowFix(StrEnum):
    """``compile int8_overflow_fix``: half-range int8 weights for CPUs without VNNI (NNCF's ``OverflowFix``).

    Without VNNI (AVX2, AVX-512 before VNNI) the CPU adds int8 products in int16, which can
    saturate; NNCF then quantizes some weights to 7 bits. CPUs with VNNI or AMX add in int32 and
    keep all 8.
    """

    auto = "auto"  # disable where the exporting CPU has VNNI or AMX, else first_layer
    disable = "disable"  # full 8-bit weights everywhere (VNNI / AMX CPUs)
    first_layer = "first_layer"  # 7-bit weights in the first convolution (NNCF's default)
    enable = "enable"  # 7-bit weights in every convolution


class Holdout(StrEnum):
    """What the pipeline holds out and scores."""

    aoi = "aoi"  # the last n_test_aois AOIs (sorted)
    band = "band"  # the right band_frac of every AOI


class Regularize(StrEnum):
    """How ``export`` regularizes building outlines."""

    none = "none"  # the watershed outlines as they are
    rectangle = "rectangle"  # building-like outlines as their minimum rotated rectangle


class ClusterMode(StrEnum):
    """Where the per-AOI work of a stage runs (:mod:`spacenet7.cluster`)."""

    none = "none"  # in this process, one AOI after another (the default)
    local = "local"  # a Dask LocalCluster of ``workers`` processes on this machine
    address = "address"  # an existing Dask scheduler at ``address`` (dask-scheduler, dask-jobqueue on SLURM, ...)


CONF_DIR = Path(os.environ.get("SPACENET7_CONFIG_DIR", Path(__file__).resolve().parent.parent / "conf"))


@dataclass
class ClusterConfig:
    """The ``cluster`` node of the per-AOI stages: in-process, a LocalCluster, or an existing scheduler."""

    mode: ClusterMode = ClusterMode.none
    workers: int = 2  # mode=local: worker processes
    threads_per_worker: int = 1  # mode=local: tasks run at once per worker (each AOI is one task)
    address: Optional[str] = None  # mode=address: the scheduler, e.g. tcp://10.0.0.5:8786
    retries: int = 1  # re-runs of an AOI whose task raised an unexpected error (a killed worker is re-run by Dask itself)

    def __post_init__(self) -> None:
        self.mode = choice(self.mode, ClusterMode, "cluster", "cluster.mode")
        check(self.workers >= 1, "cluster", f"cluster.workers={self.workers} must be >= 1")
        check(self.threads_per_worker >= 1, "cluster", f"cluster.threads_per_worker={self.threads_per_worker} must be >= 1")
        check(self.retries >= 0, "cluster", f"cluster.retries={self.retries} must be >= 0")
        check(
            self.mode is not ClusterMode.address or bool(self.address),
            "cluster",
            "cluster.mode=address needs cluster.address=tcp://HOST:PORT (the scheduler)",
        )


@dataclass
class SynthConfig:
    """``spacenet7 synth``: synthetic AOIs in the SN7 layout (``conf/synth.yaml``)."""

    out_dir: str = "data/synthetic"
    n_aois: int = 4
    n_months: int = 12
    size: int = 512
    seed: int = 0
    start: str = "2018-01"  # YYYY-MM of the first month
    cloud_prob: float = 0.3
    preview: bool = False
    style: str = "demo"  # "demo" (crisp, the demo's) or "planet" (measured closer to real mosaics)

    def __post_init__(self) -> None:
        check(self.n_aois >= 1, "synth", f"n_aois={self.n_aois} must be >= 1")
        check(self.n_months >= 1, "synth", f"n_months={self.n_months} must be >= 1")
        check(self.size >= 64, "synth", f"size={self.size} must be >= 64")
        check(0 <= self.cloud_prob <= 1, "synth", f"cloud_prob={self.cloud_prob} must be within [0, 1]")
        check(bool(re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", str(self.start))), "synth", f"start={self.start!r} must be YYYY-MM")


@dataclass
class ChipConfig:
    """``spacenet7 chip``: training targets and the chip index (``conf/chip.yaml``)."""

    data_root: str = "data/synthetic"
    split_dir: str = "train"
    out_dir: str = DEMO.chips.as_posix()
    aois: Optional[List[str]] = None  # None = every AOI under data_root
    layout: Layout = Layout.chips  # 7-band chips, or target rasters that training draws windows from
    chip_size: int = 256
    overlap: int = 32
    upscale: float = 1.0  # input upscaling (SN7 winners used 3-4x); labels are re-rasterized on the finer grid
    min_valid_frac: float = 0.5
    month_stride: int = 1
    boundary_width: int = 1
    contact_width: int = 1
    split: Split = Split.aoi  # aoi | spatial (for one-AOI data such as the real sample)
    val_frac: float = 0.25
    seed: int = 0
    index_format: IndexFormat = IndexFormat.parquet
    progress: bool = True
    input: InputSpec = field(default_factory=InputSpec)  # band order, alpha band, scaling to 8 bit (recorded in chips.json)
    # (dx, dy) source pixels added to the labels before their targets are rasterized: registers labels that
    # are offset from their imagery onto it, so that the model learns footprints where the image shows them
    # (SN7: [0.3333, 0.3333], python bench/label_offset.py; vectorize.shift_px puts its output back)
    label_shift_px: List[float] = field(default_factory=lambda: [0.0, 0.0])
    # measure each AOI's label offset on its imagery (model-free, spacenet7/data/registration.py; on the training
    # area only) and move its labels by that instead of label_shift_px; the offsets go to chips.json's label_shifts
    register_labels: bool = False
    register_months: int = 2  # register_labels: labelled months measured per AOI (evenly spread; ~10-25 s each)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # per-AOI work on Dask: cluster.mode=local|address

    def __post_init__(self) -> None:
        self.layout = choice(self.layout, Layout, "chip", "layout")
        self.label_shift_px = _pixel_shift(self.label_shift_px, "chip", "label_shift_px")
        check(self.register_months >= 1, "chip", f"register_months={self.register_months} must be >= 1")
        self.split = choice(self.split, Split, "chip", "split")
        self.index_format = choice(self.index_format, IndexFormat, "chip", "index_format")
        check(self.chip_size > 0, "chip", f"chip_size={self.chip_size} must be > 0")
        check(
            0 <= self.overlap < self.chip_size,
            "chip",
            f"overlap={self.overlap} must be >= 0 and smaller than chip_size={self.chip_size}",
        )
        check(self.upscale > 0, "chip", f"upscale={self.upscale} must be > 0")
        check(0 <= self.min_valid_frac <= 1, "chip", f"min_valid_frac={self.min_valid_frac} must be within [0, 1]")
        check(self.month_stride >= 1, "chip", f"month_stride={self.month_stride} must be >= 1")
        check(0 < self.val_frac < 1, "chip", f"val_frac={self.val_frac} must be between 0 and 1")
        check(self.boundary_width >= 1 and self.contact_width >= 1, "chip", "boundary_width and contact_width must be >= 1")


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` arguments; the defaults are the CPU trainer (``trainer=cpu``, ``conf/train.yaml``'s
    choice), the other options of ``conf/trainer/`` set what differs."""

    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    process_group_backend: Optional[str] = None  # strategy=ddp*: nccl (GPUs) or gloo (CPUs); None = Lightning's choice
    num_nodes: int = 1
    precision: str = "auto"  # auto = bf16-mixed on GPUs and bf16-capable CPUs, else 32-true
    log_every_n_steps: int = 5
    gradient_clip_val: Optional[float] = None
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    check_val_every_n_epoch: int = 1
    enable_progress_bar: bool = True


@dataclass
class LoggerConfig:
    """Training loggers: CSV always, wandb offline unless told otherwise."""

    wandb: bool = True
    wandb_mode: str = "offline"  # "online" with a key: logger.wandb_mode=online
    project: str = "spacenet7"
    csv: bool = True


@dataclass
class WindowsConfig:
    """Training windows drawn from a ``layout=rasters`` chip folder (ignored for 7-band chips)."""

    size: int = 256  # window side on the training grid (after upscale)
    per_mosaic: int = 32  # random training windows per mosaic per epoch
    d4: bool = True  # one of the 8 rotations/mirrors per window
    scale_jitter: float = 0.0  # zoom drawn in [1/(1+j), 1+j]; 0 = off
    in_memory: bool = False  # hold each mosaic in memory once read (small data sets)
    on_buildings: float = 0.0  # fraction of windows drawn to hold a building pixel; 0 = uniform windows
    # caps, so that a recipe's time does not grow with the months and AOIs it is pointed at; null = none
    max_per_epoch: int | None = None  # training windows per epoch over all mosaics (each from a random mosaic)
    max_val_windows: int | None = None  # validation windows: an evenly spaced, fixed subset of the grid

    def __post_init__(self) -> None:
        check(self.size > 0, "train", f"windows.size={self.size} must be > 0")
        check(self.per_mosaic > 0, "train", f"windows.per_mosaic={self.per_mosaic} must be > 0")
        check(self.scale_jitter >= 0, "train", f"windows.scale_jitter={self.scale_jitter} must be >= 0")
        check(0 <= self.on_buildings <= 1, "train", f"windows.on_buildings={self.on_buildings} must be within [0, 1]")
        for name in ("max_per_epoch", "max_val_windows"):
            value = getattr(self, name)
            check(value is None or value > 0, "train", f"windows.{name}={value} must be > 0 or null")


@dataclass
class TrainConfig:
    """``spacenet7 train`` (``conf/train.yaml`` and its groups)."""

    chip_dir: str = DEMO.chips.as_posix()
    run_dir: str = DEMO.train.root.as_posix()
    model: Any = None
    loss: Any = None
    optimizer: Any = None
    scheduler: Any = None
    augment: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    batch_size: int = 16
    num_workers: int = 0
    max_epochs: int = 10
    early_stopping_patience: int = 0  # 0 = off
    monitor: str = "val/iou"
    seed: int = 0
    resume: bool = False
    threads: int = 0  # torch CPU threads; 0 = library default
    cache_chips: bool = False  # hold every chip in memory (small data sets only)
    empty_chips: float = 1.0  # fraction of the training chips without buildings to keep (drawn with ``seed``)
    crop: Optional[int] = None  # 7-band chips: train on a random crop x crop window of each chip (None = whole chips)
    windows: WindowsConfig = field(default_factory=WindowsConfig)
    init_from: Optional[str] = None  # a checkpoint of the same architecture to start from (weights only)
    # exponential moving average of the weights (Lightning's EMAWeightAveraging), e.g. 0.998: validation
    # and the checkpoints use the average; None = off
    ema_decay: Optional[float] = None

    def __post_init__(self) -> None:
        check(self.batch_size > 0, "train", f"batch_size={self.batch_size} must be > 0")
        check(self.max_epochs > 0, "train", f"max_epochs={self.max_epochs} must be > 0")
        check(self.num_workers >= 0, "train", f"num_workers={self.num_workers} must be >= 0")
        check(self.crop is None or self.crop > 0, "train", f"crop={self.crop} must be > 0 or null")
        check(0 <= self.empty_chips <= 1, "train", f"empty_chips={self.empty_chips} must be within [0, 1]")
        check(
            self.ema_decay is None or 0 < self.ema_decay < 1, "train", f"ema_decay={self.ema_decay} must be within (0, 1) or null"
        )


@dataclass
class PredictConfig:
    """``spacenet7 predict``: probability rasters for every mosaic (``conf/predict.yaml``)."""

    # a .ckpt of `spacenet7 train` or a .bundle of `spacenet7 bundle`; null = the shipped real model
    # (spacenet7/models/shipped/spacenet7-real.bundle, `make model`)
    checkpoint: Optional[str] = None
    data_root: str = "data/synthetic"  # an SN7-layout data set (dataset=real_sample | sn7 set it)
    split_dir: str = "train"  # the data set's split folder
    aois: Optional[List[str]] = None  # the AOIs to predict; None = every AOI of data_root
    images: Optional[List[str]] = (
        None  # GeoTIFFs of one area instead of a data root (month from the name, TIFF date tag or list order)
    )
    out_dir: str = DEMO.predictions.as_posix()  # <out_dir>/<AOI>/<stem>.tif probability COGs
    tile: int = 256  # sliding-window tile side on the model's grid
    overlap: int = 64  # overlap of neighbouring tiles (blended)
    block: int = 1024  # output block size; bounds memory on huge mosaics
    gdal_cache_mb: int = 256  # GDAL block cache (its default is 5% of RAM)
    batch_size: int = 8  # tiles per forward pass
    tta: bool = True  # average the probabilities over test-time views (rotations and mirrors)
    tta_views: TTAViews = TTAViews.d4  # d4: the 8 rotations/mirrors | flips: identity + 2 mirrors
    # input scales averaged (relative to the checkpoint's upscale), e.g. [0.87, 1, 1.15]: each costs
    # about its square in inference; [1] = the training scale only
    tta_scales: List[float] = field(default_factory=lambda: [1.0])
    amp: bool = True  # bf16/fp16 autocast where the hardware runs it natively
    fusion: bool = True  # blend each month with the AOI's all-month mean
    fusion_weight: float = 0.35
    grid: Grid = Grid.source  # source | upscaled
    # predict only each mosaic's right band of this width fraction (evaluate's band_frac: a scoring run's held-out
    # band), plus the margin its tiles need (the band's probabilities are the whole mosaic's); null = the whole mosaic
    band_frac: Optional[float] = None
    device: str = "auto"  # auto (a CUDA GPU when there is one) | cpu | cuda[:N]
    model: Any = None  # expected architecture; None = the one stored in the checkpoint
    progress: bool = True  # a progress bar per AOI
    threads: int = 0  # torch CPU threads; 0 = library default
    aoi: Optional[str] = None  # images=: the area's name, for files without an SN7 name
    # the imagery's band layout and scaling (InputSpec keys) over the checkpoint's, e.g. for 4-band
    # uint16 BGRN: +input={rgb:[3,2,1],alpha:null,scaling:percentile}; empty = the checkpoint's
    input: Dict[str, Any] = field(default_factory=dict)
    # torch: the checkpoint; onnxruntime / openvino: model_file (spacenet7 compile), or without one the checkpoint
    # exported on the fly (fp32 weights checked against torch; OpenVINO runs bf16 where amp and the CPU allow: 1.7x
    # torch on the make-real network at truth parity, README "Runtimes"); auto: the fastest engine at truth parity
    # that compile recorded in the bundle's card or model_file and that is installed, else torch
    engine: Engine = Engine.torch
    model_file: Optional[str] = None  # an exported .onnx or OpenVINO .xml; engine=onnxruntime|openvino|auto only
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # per-AOI work on Dask: cluster.mode=local|address

    @property
    def exported(self) -> bool:
        """Whether the engine runs an exported model (ONNX or OpenVINO IR), not the checkpoint itself."""
        return self.engine in (Engine.onnxruntime, Engine.openvino)

    @property
    def on_the_fly(self) -> bool:
        """Whether predict exports the checkpoint for its engine itself: an exported-model engine without ``model_file``.

        Properties, not fields: :func:`spacenet7.predict.resolve_auto` settles ``engine=auto`` after the config is built.
        """
        return self.exported and not self.model_file

    def __post_init__(self) -> None:
        self.grid = choice(self.grid, Grid, "predict", "grid")
        self.engine = choice(self.engine, Engine, "predict", "engine")
        check(
            not self.exported or bool(self.model_file) or bool(self.checkpoint),
            "predict",
            f"engine={self.engine} runs an exported model: set model_file= (spacenet7 compile checkpoint=... format=...) "
            "or checkpoint= (exported on the fly)",
        )
        missing = [pkg for pkg in ("onnx", str(self.engine)) if self.on_the_fly and find_spec(pkg) is None]
        check(
            not missing,
            "predict",
            f"engine={self.engine} exports the checkpoint with {' and '.join(missing)}, not installed: "
            f"{FAST_EXTRA}, or predict.engine=torch",
        )
        check(
            not self.exported or self.model is None,
            "predict",
            f"model= (the architecture the checkpoint must have) is checked by engine=torch only; engine={self.engine} "
            "runs the network the checkpoint or model file holds: drop model=",
        )
        check(
            not self.on_the_fly or self.cluster.mode != ClusterMode.address,
            "predict",
            f"engine={self.engine} without model_file= exports the checkpoint on this machine, where workers at "
            f"{self.cluster.address} may not read it: export it first (spacenet7 compile checkpoint=... format=...)",
        )
        check(
            self.engine is not Engine.torch or not self.model_file,
            "predict",
            "model_file= needs engine=onnxruntime or engine=openvino (engine=torch runs checkpoint=)",
        )
        self.tta_views = choice(self.tta_views, TTAViews, "predict", "tta_views")
        check(self.tile > 0, "predict", f"tile={self.tile} must be > 0")
        check(
            self.band_frac is None or 0 < self.band_frac < 1,
            "predict",
            f"band_frac={self.band_frac} must be between 0 and 1",
        )
        check(
            len(self.tta_scales) > 0 and all(0.25 <= float(s) <= 4 for s in self.tta_scales),
            "predict",
            f"tta_scales={list(self.tta_scales)} must be a non-empty list of scales within [0.25, 4]",
        )
        self.tta_scales = [float(s) for s in self.tta_scales]
        check(0 <= self.overlap < self.tile, "predict", f"overlap={self.overlap} must be >= 0 and smaller than tile={self.tile}")
        check(self.block > 0, "predict", f"block={self.block} must be > 0")
        check(self.batch_size > 0, "predict", f"batch_size={self.batch_size} must be > 0")
        check(0 <= self.fusion_weight <= 1, "predict", f"fusion_weight={self.fusion_weight} must be within [0, 1]")
        if self.input:
            unknown = sorted(set(self.input) - set(InputSpec.__dataclass_fields__))
            check(not unknown, "predict", f"input has unknown key(s) {unknown}; keys: {sorted(InputSpec.__dataclass_fields__)}")
            InputSpec(**{**InputSpec().to_dict(), **self.input})  # validates the values
        check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "predict",
            f"device={self.device!r} must be auto, cpu or cuda[:N]",
        )


@dataclass
class CompileConfig:
    """``spacenet7 compile``: export a checkpoint for a fast runtime (``conf/compile.yaml``)."""

    checkpoint: str = DEMO.train.best.as_posix()
    format: ModelFormat = ModelFormat.onnx
    out: Optional[str] = None  # None: beside the checkpoint, <stem>.onnx or <stem>.xml (+ .bin)
    opset: int = 17
    tile: int = 256  # side of the example input traced (batch, height and width stay dynamic)
    verify: bool = True  # run the export once in its runtime and compare with torch on a random tile
    int8: bool = False  # static int8 quantization calibrated on `calibration`: NNCF for openvino, ONNX Runtime's QDQ for onnx
    # int8: mosaics to draw calibration tiles from; None: the checkpoint's training imagery (its card's or run's
    # data and AOIs), outside the held-out band, never the scored data
    calibration: Optional[List[str]] = None
    # a bench/bench_runtimes.py report (JSON): compile the fastest engine at truth parity in it (format, int8 and
    # precision from the report) and record the measured choice in the model file and the bundle's card
    parity: Optional[str] = None
    calibration_tiles: int = 64
    # openvino int8: layers return to float, most sensitive first, until the footprints on the calibration
    # tiles agree with fp32's within this building F1 (e.g. 0.01); None: every layer int8
    int8_max_drop: Optional[float] = None
    # with int8_max_drop: put back at most this many layer groups (each re-ranks the rest, ~45 s on the
    # make-real network, so the cap bounds compile's time); the best model by then is kept. None: no cap
    int8_max_iterations: Optional[int] = 8
    # openvino int8: 7-bit weights against the int16 overflow of CPUs without VNNI (OverflowFix); auto:
    # full 8 bits where the exporting CPU has VNNI (on the make-real network: footprint F1 vs fp32 0.963 -> 0.972)
    int8_overflow_fix: OverflowFix = OverflowFix.auto

    def __post_init__(self) -> None:
        self.format = choice(self.format, ModelFormat, "compile", "format")
        self.int8_overflow_fix = choice(self.int8_overflow_fix, OverflowFix, "compile", "int8_overflow_fix")
        check(self.opset >= 17, "compile", f"opset={self.opset} must be >= 17")
        check(self.tile > 0, "compile", f"tile={self.tile} must be > 0")
        check(
            self.int8_max_drop is None or (self.int8 and self.format is ModelFormat.openvino and 0 <= self.int8_max_drop < 1),
            "compile",
            f"int8_max_drop={self.int8_max_drop} needs int8=true and format=openvino, and must be within [0, 1)",
        )
        check(
            self.int8_max_iterations is None or self.int8_max_iterations >= 0,
            "compile",
            f"int8_max_iterations={self.int8_max_iterations} must be >= 0 (or null: no cap)",
        )
        check(
            self.int8_overflow_fix is OverflowFix.auto or (self.int8 and self.format is ModelFormat.openvino),
            "compile",
            f"int8_overflow_fix={self.int8_overflow_fix} needs int8=true and format=openvino",
        )
        check(self.calibration_tiles > 0, "compile", f"calibration_tiles={self.calibration_tiles} must be > 0")
        want = ".onnx" if self.format is ModelFormat.onnx else ".xml"
        check(
            self.out is None or Path(self.out).suffix == want,
            "compile",
            f"out={self.out} must end in {want} for format={self.format}",
        )


class Objective(StrEnum):
    """What ``spacenet7 tune`` maximizes."""

    iou = "iou"  # validation footprint IoU of the trial's best checkpoint
    f1 = "f1"  # validation footprint pixel F1
    scot = "scot"  # SCOT of the validation AOIs: predict + vectorize + export + evaluate after training


class Dist(StrEnum):
    """A search-space distribution."""

    float = "float"  # uniform in [low, high] (step: a grid)
    log_float = "log_float"  # log-uniform in [low, high]
    int = "int"  # integers in [low, high] (step)
    categorical = "categorical"  # one of choices


class Pruner(StrEnum):
    """How unpromising trials are stopped while they train (on the validation metric of each epoch)."""

    median = "median"  # below the median of earlier trials at the same epoch
    hyperband = "hyperband"
    none = "none"


@dataclass
class Param:
    """One search dimension: a training setting (a Hydra override path) and its distribution."""

    path: str = MISSING  # e.g. optimizer.lr, model.encoder_name, loss.channel_weights, model (a group)
    dist: Dist = Dist.float
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    choices: Optional[List[Any]] = None

    def __post_init__(self) -> None:
        self.dist = choice(self.dist, Dist, "tune", "dist")
        if self.dist is Dist.categorical:
            check(bool(self.choices), "tune", f"{self.path}: dist=categorical needs choices=[...]")
        else:
            check(
                self.low is not None and self.high is not None and self.low <= self.high,
                "tune",
                f"{self.path}: dist={self.dist} needs low <= high (got {self.low}, {self.high})",
            )
            check(self.dist is not Dist.log_float or (self.low or 0) > 0, "tune", f"{self.path}: log_float needs low > 0")


@dataclass
class TuneConfig:
    """``spacenet7 tune``: an Optuna study over training settings (``conf/tune.yaml``, space in ``conf/tune/``)."""

    run_dir: str = "runs/tune"
    # train settings every trial shares, as `spacenet7 train` overrides (other keys: +train.batch_size=4)
    train: Dict[str, Any] = field(
        default_factory=lambda: {
            "experiment": "demo_cpu",
            "chip_dir": DEMO.chips.as_posix(),
            "max_epochs": 8,
            "logger": {"wandb": False},
        }
    )
    space: Dict[str, Param] = field(default_factory=dict)  # name -> Param (conf/tune/<name>.yaml)
    n_trials: int = 10  # trials this run adds to the study
    timeout: Optional[float] = None  # seconds; stop starting new trials after it
    objective: Objective = Objective.iou
    study_name: str = "spacenet7"
    storage: Optional[str] = None  # None: sqlite:///<run_dir>/study.db; any SQLAlchemy URL lets processes/machines share it
    seed: int = 0  # TPE's seed (offset by the trials already in the study); give each process of a shared study its own
    startup_trials: int = 4  # random trials before TPE models the space
    pruner: Pruner = Pruner.median
    prune_startup_trials: int = 2  # median: trials that finish before any is pruned
    prune_warmup_epochs: int = 0  # median: epochs of every trial that are never pruned
    plots: bool = True  # optimization history and parameter importances as PNGs
    # objective=scot: predict / vectorize settings for the validation AOIs (others: +scot_predict.grid=upscaled)
    scot_predict: Dict[str, Any] = field(default_factory=lambda: {"tta": False})
    scot_vectorize: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.objective = choice(self.objective, Objective, "tune", "objective")
        self.pruner = choice(self.pruner, Pruner, "tune", "pruner")
        check(self.n_trials >= 0, "tune", f"n_trials={self.n_trials} must be >= 0")
        check(bool(self.space), "tune", "the search space is empty (choose one: tune=<name>, conf/tune/<name>.yaml)")
        check("run_dir" not in self.train, "tune", "train must not set run_dir (each trial trains in <run_dir>/trials/<number>)")


@dataclass
class VectorizeConfig:
    """``spacenet7 vectorize``: watershed polygons and tracking (``conf/vectorize.yaml``)."""

    pred_dir: str = DEMO.predictions.as_posix()
    out_dir: str = DEMO.vectors.as_posix()
    aois: Optional[List[str]] = None
    # the tuned thresholds (their one home): chosen with TTA on the demo's validation AOI, never the held-out one
    threshold: float = 0.4
    seed_threshold: float = 0.55
    min_seed_px: int = 2
    min_area_px: float = 4.0
    simplify_px: float = 0.0
    # (dx, dy) source pixels added to every output footprint: the registration of the labels the footprints
    # are meant to match. The model learns where buildings are in the image; SN7's labels sit about a third
    # of a pixel up and left of them (python bench/label_offset.py), so recipe=real_sample sets
    # [-0.3333, -0.3333]. [0, 0] for imagery whose labels are registered to it (the synthetic data).
    shift_px: List[float] = field(default_factory=lambda: [0.0, 0.0])
    track: TrackConfig = field(default_factory=TrackConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # per-AOI work on Dask: cluster.mode=local|address
    # a model bundle whose card's settings (thresholds, min sizes, shift_px, track) replace these: the ones
    # the model was measured with; "shipped" = the shipped real model's. null = these settings
    bundle: Optional[str] = None

    def __post_init__(self) -> None:
        if self.bundle is not None:
            from spacenet7.models.bundle import apply_vectorize_settings

            apply_vectorize_settings(self)
        check(0 < self.threshold < 1, "vectorize", f"threshold={self.threshold} must be between 0 and 1")
        check(0 < self.seed_threshold <= 1, "vectorize", f"seed_threshold={self.seed_threshold} must be within (0, 1]")
        check(
            self.min_area_px >= 0 and self.min_seed_px >= 0 and self.simplify_px >= 0,
            "vectorize",
            "min_area_px, min_seed_px and simplify_px must be >= 0",
        )
        self.shift_px = _pixel_shift(self.shift_px, "vectorize", "shift_px")


@dataclass
class ExportConfig:
    """``spacenet7 export``: GIS files and the SN7 submission (``conf/export.yaml``)."""

    vec_dir: str = DEMO.vectors.as_posix()
    out_dir: str = DEMO.footprints.as_posix()
    submission: str = DEMO.submission.as_posix()
    crs: Optional[str] = None  # the GPKG's CRS; None = the source CRS (GeoJSON is always RFC 7946: EPSG:4326)
    geojson: bool = True
    gpkg: bool = True
    regularize: Regularize = Regularize.none  # rectangle: building-like outlines as their minimum rotated rectangle
    regularize_min_fill: float = 0.75  # rectangle: only outlines filling at least this fraction of their rectangle
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # per-AOI work on Dask: cluster.mode=local|address

    def __post_init__(self) -> None:
        self.regularize = choice(self.regularize, Regularize, "export", "regularize")
        check(
            0 < self.regularize_min_fill <= 1,
            "export",
            f"regularize_min_fill={self.regularize_min_fill} must be within (0, 1]",
        )


@dataclass
class EvaluateConfig:
    """``spacenet7 evaluate``: SCOT, building F1 and pixel IoU (``conf/evaluate.yaml``)."""

    truth: Optional[str] = None
    proposal: Optional[str] = None
    out: str = DEMO.metrics.as_posix()
    data_root: str = "data/synthetic"  # ground truth when truth is None
    split_dir: str = "train"
    aois: Optional[List[str]] = None
    submission: str = DEMO.submission.as_posix()  # proposal when proposal is None
    iou_threshold: float = IOU_THRESHOLD  # SN7's scoring rules (spacenet7/metrics/rules.py)
    min_truth_area: float = MIN_TRUTH_AREA
    beta: float = BETA
    region: Optional[List[float]] = None  # [row0, row1, col0, col1] source pixels: score only this box of every month
    band_frac: Optional[float] = None  # score only the right band of this width fraction of each AOI (its own size)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # per-AOI work on Dask: cluster.mode=local|address

    def __post_init__(self) -> None:
        check(
            self.band_frac is None or 0 < self.band_frac < 1,
            "evaluate",
            f"band_frac={self.band_frac} must be between 0 and 1",
        )
        check(0 < self.iou_threshold < 1, "evaluate", f"iou_threshold={self.iou_threshold} must be between 0 and 1")
        check(self.beta > 0, "evaluate", f"beta={self.beta} must be > 0")
        check(self.min_truth_area >= 0, "evaluate", f"min_truth_area={self.min_truth_area} must be >= 0")
        check(
            self.region is None or len(self.region) == 4,
            "evaluate",
            f"region={self.region} must be [row0, row1, col0, col1] in source pixels",
        )


TRAIN_GROUPS: tuple[str, ...] = ("model", "loss", "optimizer", "augment", "trainer", "experiment")
"""The config groups of ``conf/train.yaml`` that the pipeline lets one choose (``train/<group>=<option>``)."""


@dataclass
class TrainGroups:
    """The training groups the pipeline composes ``train`` with; ``None`` = ``conf/train.yaml``'s own choice."""

    model: Optional[str] = None
    loss: Optional[str] = None
    optimizer: Optional[str] = None
    augment: Optional[str] = None
    trainer: Optional[str] = None
    experiment: Optional[str] = None


@dataclass
class StageGroups:
    """Group choices per stage (``groups.train.model``; set them with ``train/model=unet``)."""

    train: TrainGroups = field(default_factory=TrainGroups)


@dataclass
class PipelineConfig:
    """``spacenet7 pipeline``: one config tree, a node per stage (``conf/pipeline.yaml``).

    Each stage node is that stage's own composed config (``conf/<stage>.yaml`` and, for ``train``,
    the groups in ``groups.train``) with the pipeline's settings for it merged in, and the hand-off
    paths (:func:`spacenet7.compose.handoffs`) set from ``run_dir`` and ``data_root``.
    """

    run_dir: str = DEMO.root.as_posix()
    data_root: str = "data/synthetic"
    n_test_aois: int = 1  # holdout=aoi: the last AOIs (sorted) are held out, never chipped or trained on
    holdout: Holdout = Holdout.aoi  # aoi | band (the right band_frac of every AOI is held out: one-AOI data)
    band_frac: float = 0.25  # holdout=band: width fraction of the held-out band (the training run's validation band)
    stages: List[str] = field(default_factory=lambda: list(PIPELINE_STAGES))
    groups: StageGroups = field(default_factory=StageGroups)
    synth: SynthConfig = field(default_factory=SynthConfig)
    chip: ChipConfig = field(default_factory=ChipConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    vectorize: VectorizeConfig = field(default_factory=VectorizeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    # synthetic pretraining: a nested pipeline (synth -> chip -> train) of the default config with the
    # recipe's pretrain settings merged in, run under <run_dir>/pretrain; train then starts from its best checkpoint
    pretrain: Optional[PipelineConfig] = None

    def __post_init__(self) -> None:
        self.holdout = choice(self.holdout, Holdout, "pipeline", "holdout")
        check(0 < self.band_frac < 1, "pipeline", f"band_frac={self.band_frac} must be between 0 and 1")
        check(self.n_test_aois >= 1, "pipeline", f"n_test_aois={self.n_test_aois} must be >= 1")
        check_stages(self.stages)


def check_stages(stages: list[str]) -> None:
    """Refuse stage names that are not pipeline stages (one line naming them).

    Raises:
        SN7Error: an unknown stage.
    """
    unknown = [s for s in stages if s not in PIPELINE_STAGES]
    check(not unknown, "pipeline", f"unknown stage(s) {unknown}; stages are {list(PIPELINE_STAGES)}")


@dataclass
class ServeConfig:
    """``spacenet7 serve``: the map viewer and the inference API over a run directory (``conf/serve.yaml``)."""

    run_dir: str = DEMO.root.as_posix()
    data_root: Optional[str] = None  # the imagery and truth; None = the run's pipeline.json
    # the inference API's model (a .ckpt or a .bundle); None = the run's (pipeline.json), else the shipped model
    checkpoint: Optional[str] = None
    host: str = "127.0.0.1"  # another address exposes the server beyond this machine
    port: int = 8000  # 0 = any free port
    # the names a request's Host header may give (DNS rebinding: a web page must not reach the server under its
    # own name); host= is added when it names one address. "*" accepts any, "*.example.org" a domain's names
    allowed_hosts: List[str] = field(default_factory=lambda: ["localhost", "127.0.0.1", "::1"])
    max_upload_mb: float = 64.0  # a request body over this is refused (413)
    max_pixels: int = 16_777_216  # one image, on the model's grid (after upscale)
    max_files: int = 24  # images in one time series
    workers: int = 1  # predictions run at once (one model, loaded once)
    queue: int = 4  # predictions waiting for a worker; more are refused with 503
    tmp_dir: Optional[str] = None  # where uploads are unpacked, one folder per request (removed); None = the system's
    # the pipeline's own predict/vectorize settings (pipeline.json) with these on top, e.g. overrides.predict.tta=false
    overrides: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(0 <= self.port <= 65535, "serve", f"port={self.port} must be within [0, 65535]")
        check(self.max_upload_mb > 0, "serve", f"max_upload_mb={self.max_upload_mb} must be > 0")
        check(self.max_pixels > 0 and self.max_files > 0, "serve", "max_pixels and max_files must be > 0")
        check(self.workers >= 1 and self.queue >= 0, "serve", f"workers={self.workers} must be >= 1 and queue={self.queue} >= 0")
        unknown = sorted(set(self.overrides) - {"predict", "vectorize"})
        check(
            not unknown,
            "serve",
            f"overrides has unknown stage(s) {unknown}; serve takes overrides.predict and overrides.vectorize",
        )


@dataclass
class BundleConfig:
    """``spacenet7 bundle``: a checkpoint as a model bundle, safetensors weights and a JSON card (``conf/bundle.yaml``)."""

    checkpoint: str = REAL.train.last.as_posix()  # a .ckpt of `spacenet7 train` (or a bundle, to re-card it)
    out: Optional[str] = None  # the bundle folder to write, e.g. models/my-area.bundle (required)
    name: Optional[str] = None  # the card's name; None = out's stem
    # vectorize settings for the card over the run's (pipeline.json, when the checkpoint is RUN/train/checkpoints/x.ckpt),
    # e.g. +vectorize.shift_px=[-0.3333,-0.3333]: threshold, seed_threshold, min_seed_px, min_area_px, simplify_px, shift_px, track
    vectorize: Dict[str, Any] = field(default_factory=dict)
    recipe_name: Optional[str] = None  # provenance: the recipe the checkpoint was trained with (e.g. real)
    data: Optional[str] = None  # provenance: the training data; None = the checkpoint's chip metadata
    seed: Optional[int] = None  # provenance: the training seed; None = the run's
    scores: Optional[str] = None  # a metrics.json measured with this model; None = the run's metrics.json, if any

    def __post_init__(self) -> None:
        check(
            self.out is None or str(self.out).endswith(".bundle"),
            "bundle",
            f"out={self.out} must be a folder name ending in .bundle",
        )


SCHEMAS: dict[str, type] = {name: globals()[stage.schema] for name, stage in STAGES.items()}
"""Each stage's typed config (the registry's :attr:`~spacenet7.stages.Stage.schema`); registered as its
composition schema ``_<stage>_schema`` (:func:`spacenet7.compose.register`), except the pipeline's, which
is generated from :class:`PipelineConfig` (:func:`spacenet7.compose._pipeline_schema`) and resolved into
one by :func:`spacenet7.compose.resolve`."""
