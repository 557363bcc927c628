"""Where a run's files live: every path of a run folder, derived from its ``run_dir`` in one place.

``spacenet7 pipeline run_dir=RUN`` writes (and ``serve``, ``bundle``, ``tune``, the notebook read)::

    RUN/pipeline.json             the manifest: data, held-out AOIs, the resolved config tree
    RUN/chips/                    chip: the chip index, chips.json, chips/ or targets/
    RUN/train/                    train: config.yaml, metrics.json, checkpoints/{best,last}.ckpt
    RUN/predictions/<AOI>/<stem>.tif   predict: probability COGs
    RUN/vectors/<AOI>.parquet     vectorize: tracked buildings (and <AOI>.json, the month list)
    RUN/footprints/               export: <AOI>.gpkg and <AOI>/<stem>.geojson
    RUN/submission.csv            export: the SN7 submission
    RUN/metrics.json              evaluate: SCOT, F1, pixel IoU
    RUN/pretrain/                 synthetic pretraining: a run folder of its own (data in RUN/pretrain/data)

Nothing here touches the disk: these are names only (no heavy imports, so that the config schemas
can take their defaults from :data:`DEMO`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainLayout:
    """A training run folder (``spacenet7 train run_dir=``; ``RUN/train`` in a pipeline run)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``: Lightning's ``best.ckpt`` and ``last.ckpt``."""
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        """The checkpoint of the best validation epoch."""
        return self.checkpoints / "best.ckpt"

    @property
    def last(self) -> Path:
        """The checkpoint of the last epoch (``resume=true`` continues from it)."""
        return self.checkpoints / "last.ckpt"

    @property
    def metrics(self) -> Path:
        """Validation scores of the best checkpoint."""
        return self.root / "metrics.json"

    @property
    def config(self) -> Path:
        """The resolved training config."""
        return self.root / "config.yaml"


@dataclass(frozen=True)
class RunLayout:
    """The folders and files of one pipeline run, all under ``root`` (the pipeline's ``run_dir``)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def manifest(self) -> Path:
        """``pipeline.json``: where the data is, the held-out AOIs, the resolved config tree."""
        return self.root / "pipeline.json"

    @property
    def chips(self) -> Path:
        """The chip folder (``chip out_dir``, ``train chip_dir``)."""
        return self.root / "chips"

    @property
    def train(self) -> TrainLayout:
        """The training run folder."""
        return TrainLayout(self.root / "train")

    @property
    def predictions(self) -> Path:
        """Probability rasters, one folder per AOI (``predict out_dir``, ``vectorize pred_dir``)."""
        return self.root / "predictions"

    def prediction(self, aoi: str, stem: str) -> Path:
        """One month's probability raster."""
        return self.predictions / aoi / f"{stem}.tif"

    @property
    def vectors(self) -> Path:
        """Tracked buildings, one GeoParquet per AOI (``vectorize out_dir``, ``export vec_dir``)."""
        return self.root / "vectors"

    def vector_file(self, aoi: str) -> Path:
        """One AOI's tracked buildings (its month list beside it, ``<AOI>.json``)."""
        return self.vectors / f"{aoi}.parquet"

    @property
    def footprints(self) -> Path:
        """GIS files (``export out_dir``)."""
        return self.root / "footprints"

    @property
    def submission(self) -> Path:
        """The SN7 submission CSV (``export submission``, ``evaluate submission``)."""
        return self.root / "submission.csv"

    @property
    def metrics(self) -> Path:
        """The scores (``evaluate out``)."""
        return self.root / "metrics.json"

    @property
    def pretrain(self) -> RunLayout:
        """The synthetic-pretraining run, a run folder of its own."""
        return RunLayout(self.root / "pretrain")

    @property
    def synthetic_data(self) -> Path:
        """The synthetic data set of a pretraining run (``RUN/pretrain/data``)."""
        return self.root / "data"

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunLayout | None:
        """The run folder a checkpoint would belong to by its place (``RUN/train/checkpoints/x.ckpt``: any
        ``checkpoints`` folder two levels below a folder), else ``None``; nothing is checked on disk."""
        path = Path(checkpoint).resolve()
        return cls(path.parent.parent.parent) if path.parent.name == "checkpoints" else None


DEMO = RunLayout(Path("runs/demo"))
"""``make demo``'s run: the stages' default paths when run one by one."""

REAL = RunLayout(Path("runs/real"))
"""``make real``'s run (``make model`` bundles its last checkpoint)."""
