"""The GPU path check, device side (``bash bench/gpu_check.sh`` runs it after installing the carried wheels).

    python bench/gpu_check.py --carry runs/gpu_carry --out $OUT [--budget-s 560] [--epochs 240]
        [--mosaic 8192] [--batch 32] [--dry-run]

Steps, each timed, with the GPU's utilization sampled every 0.25 s (NVML, else nvidia-smi), cheapest
and most important first, each skipped when what is left of ``--budget-s`` (counted from
``--started``, the script's start, so the install counts) cannot hold it:

1. ``finetune``: the real recipe's training on the GPU: ``spacenet7 train experiment=real_sample
   trainer=gpu`` (bf16-mixed) on the carried chips, from scratch as recipe=real trains (from the carried
   pretraining bundle where ``gpu_prepare --pretrain`` made one), the recipe's 240 epochs (3,840 steps;
   capped by time: steps/s and the projected full time are reported);
2. ``sn7_full``: a 2-epoch ``experiment=sn7_full`` smoke run (efficientnet-b3 U-Net, 512^2 windows
   at 3x, bf16) on the same chips;
3. ``predict``: the ``spacenet7 predict device=cuda`` stage on the carried months (the recipe's grid
   and 8-view TTA), with the fine-tuned checkpoint (the shipped bundle if there is none);
4. ``mosaic``: throughput on an ``--mosaic``^2 mosaic (the carried Chengdu month tiled) at the
   recipe's 3x grid through predict's own ``predict_mosaic``: 1 view and 8 views, eager and
   ``torch.compile``, in km^2/min (the SN7 winners processed ~40-350 km^2/min on GPUs) and tiles/s.

The report: ``$OUT/gpu_check.md`` (a table and the commands), ``gpu_check.json``,
``gpu_util.csv`` (time, utilization %, memory MiB) and the log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "spacenet7" / "models" / "shipped" / "spacenet7-real.bundle"


class UtilSampler(threading.Thread):
    """GPU utilization and memory every ``period`` s, into a list and a CSV."""

    def __init__(self, csv: Path, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.csv, self.period, self.rows = csv, period, []
        self.stop_event = threading.Event()
        self.read = self._nvml() or self._smi

    def _nvml(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            return None

        def read() -> tuple[float, float]:
            u = pynvml.nvmlDeviceGetUtilizationRates(handle)
            return float(u.gpu), pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20

        return read

    def _smi(self) -> tuple[float, float]:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.split("\n")[0]
        util, mem = (float(v) for v in out.split(","))
        return util, mem

    def run(self) -> None:
        with open(self.csv, "w") as f:
            f.write("time,util_percent,memory_mib\n")
            while not self.stop_event.is_set():
                try:
                    util, mem = self.read()
                except Exception:
                    util, mem = float("nan"), float("nan")
                t = time.time()
                self.rows.append((t, util, mem))
                f.write(f"{t:.2f},{util:.0f},{mem:.0f}\n")
                f.flush()
                self.stop_event.wait(self.period)

    def between(self, t0: float, t1: float) -> dict[str, float | None]:
        vals = [(u, m) for t, u, m in self.rows if t0 <= t <= t1 and u == u]
        if not vals:
            return {"util_mean": None, "util_max": None, "memory_max_mib": None}
        return {
            "util_mean": sum(u for u, _ in vals) / len(vals),
            "util_max": max(u for u, _ in vals),
            "memory_max_mib": max(m for _, m in vals),
        }


class Check:
    """The steps, their budget and the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.carry, self.out = Path(args.carry), Path(args.out)
        self.work = Path(args.work)
        self.manifest = json.loads((self.carry / "manifest.json").read_text())
        self.deadline = float(args.started) + args.budget_s
        self.steps: list[dict[str, Any]] = []
        self.sampler: UtilSampler | None = None
        self.log = open(self.out / "gpu_check.log", "a") if not args.dry_run else sys.stdout

    def left(self) -> float:
        return self.deadline - time.time()

    def say(self, text: str) -> None:
        print(text, flush=True)
        if self.log is not sys.stdout:
            self.log.write(text + "\n")
            self.log.flush()

    def record(self, name: str, command: str, t0: float, t1: float, **result: Any) -> dict[str, Any]:
        step = {"step": name, "command": command, "seconds": round(t1 - t0, 1), **result}
        if self.sampler is not None:
            step |= self.sampler.between(t0, t1)
        self.steps.append(step)
        self.say(f"gpu_check: {name}: {json.dumps({k: v for k, v in step.items() if k != 'command'})}")
        return step

    def skip(self, name: str, command: str, why: str) -> None:
        self.steps.append({"step": name, "command": command, "skipped": why})
        self.say(f"gpu_check: {name}: skipped ({why})")

    def stage(self, name: str, argv: list[str], need_s: float, cap_s: float) -> tuple[int | None, float]:
        """Run ``python -m spacenet7 ARGV`` within ``cap_s`` (killed after); (exit code or None if killed, seconds)."""
        command = " ".join([sys.executable, "-m", "spacenet7", *argv])
        if self.args.dry_run:
            self.say(f"[dry-run] {name}: {command}")
            return 0, 0.0
        if self.left() < need_s:
            self.skip(name, command, f"{self.left():.0f} s left of the budget, {need_s:.0f} s needed")
            return None, 0.0
        t0 = time.time()
        with open(self.out / "gpu_check.log", "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "spacenet7", *argv], stdout=log, stderr=subprocess.STDOUT)
            try:
                rc: int | None = proc.wait(timeout=max(10.0, min(cap_s, self.left() - 20)))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = None
        return rc, time.time() - t0

    # --- steps ---

    def finetune(self) -> Path | None:
        run_dir = self.work / "finetune"
        shutil.rmtree(run_dir, ignore_errors=True)
        pretrain = self.manifest.get("pretrain")
        argv = [
            "train",
            "experiment=real_sample",
            f"trainer={'cpu' if self.args.cpu else 'gpu'}",
            f"chip_dir={self.manifest['chips']}",
            f"run_dir={run_dir}",
            f"max_epochs={self.args.epochs}",
            "trainer.check_val_every_n_epoch=10",
            f"num_workers={self.args.workers}",
            "threads=0",
            "logger.wandb=false",
            "trainer.enable_progress_bar=false",
        ] + ([f"init_from={pretrain}"] if pretrain else [])
        t0 = time.time()
        rc, secs = self.stage("finetune", argv, need_s=60, cap_s=self.args.finetune_cap_s)
        if self.args.dry_run or (rc is None and secs == 0):
            return None
        metrics = _csv_metrics(run_dir)
        steps = metrics.get("step") or 0
        rate = steps / secs if secs and steps else None
        full_steps = self.args.epochs * 16
        self.record(
            "finetune",
            " ".join(argv),
            t0,
            time.time(),
            exit_code=rc,
            killed_at_cap=rc is None,
            steps=steps,
            steps_per_s=rate,
            projected_full_s=full_steps / rate if rate else None,
            val_iou_last=metrics.get("val/iou"),
            val_iou_best=metrics.get("val/iou_best"),
        )
        last = run_dir / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None

    def sn7_full(self) -> None:
        run_dir = self.work / "sn7_full"
        shutil.rmtree(run_dir, ignore_errors=True)
        argv = [
            "train",
            "experiment=sn7_full",
            f"chip_dir={self.manifest['chips']}",
            f"run_dir={run_dir}",
            "max_epochs=2",
            "model.encoder_weights=null",
            *(["trainer=cpu", "windows.per_mosaic=2", "batch_size=2"] if self.args.cpu else []),
            f"num_workers={self.args.workers}",
            "logger.wandb=false",
            "trainer.enable_progress_bar=false",
        ]
        t0 = time.time()
        rc, secs = self.stage("sn7_full", argv, need_s=45, cap_s=150)
        if self.args.dry_run or (rc is None and secs == 0):
            return
        metrics = _csv_metrics(run_dir)
        self.record(
            "sn7_full", " ".join(argv), t0, time.time(), exit_code=rc, steps=metrics.get("step"), val_iou=metrics.get("val/iou")
        )

    def predict_stage(self, checkpoint: Path) -> None:
        out_dir = self.work / "predict"
        shutil.rmtree(out_dir, ignore_errors=True)
        argv = [
            "predict",
            f"checkpoint={checkpoint}",
            f"data_root={self.manifest['data_root']}",
            f"out_dir={out_dir}",
            f"device={'cpu' if self.args.cpu else 'cuda'}",
            "grid=upscaled",
            "tta=true",
            f"batch_size={self.args.batch}",
            "progress=false",
        ]
        t0 = time.time()
        rc, secs = self.stage("predict", argv, need_s=30, cap_s=120)
        if self.args.dry_run or (rc is None and secs == 0):
            return
        n = len(list(out_dir.glob("*/*.tif")))
        self.record("predict", " ".join(argv), t0, time.time(), exit_code=rc, rasters=n)

    def mosaic(self, checkpoint: Path) -> None:
        variants = [(False, None), (True, None), (False, "d4"), (True, "d4")]
        if self.args.cpu:  # the flow only: torch.compile on the CPU takes minutes
            variants = [(False, None)]
        desc = f"predict_mosaic on a {self.args.mosaic}^2 mosaic at 3x, batch {self.args.batch}"
        if self.args.dry_run:
            for compiled, tta in variants:
                self.say(
                    f"[dry-run] mosaic: {desc}, {'torch.compile' if compiled else 'eager'}, {'8 views' if tta else '1 view'}"
                )
            return
        if self.left() < 60:
            self.skip("mosaic", desc, f"{self.left():.0f} s left")
            return
        import torch

        from spacenet7.config import Grid
        from spacenet7.data.sn7 import records_from_files
        from spacenet7.io.raster import iter_windows
        from spacenet7.models.inference import load_model
        from spacenet7.models.runtime import TorchRuntime

        try:
            from spacenet7.models.mosaic import predict_mosaic
        except ImportError:  # before the predict stage's split
            from spacenet7.predict import predict_mosaic  # type: ignore[no-redef]

        path, km2 = build_mosaic(self.carry, self.work / "mosaic.tif", self.args.mosaic)
        rec = next(iter(records_from_files([str(path)], "mosaic").values()))[0]
        per_view = None
        one_view_s: dict[bool, float] = {}
        for compiled, tta in variants:
            name = f"mosaic {'compile' if compiled else 'eager'} {'8 views' if tta else '1 view'}"
            est = one_view_s.get(compiled, 60.0) * (3.0 if tta else 1.0) + (60 if compiled else 0)
            if self.left() < est + 15:
                self.skip(name, desc, f"{self.left():.0f} s left, ~{est:.0f} s needed")
                continue
            model = load_model(checkpoint, device="cpu" if self.args.cpu else "cuda", amp=True)
            if per_view is None:
                side = self.args.mosaic * round(model.upscale)
                per_view = len(list(iter_windows(side, side, 256, 192)))
            t_c = time.time()
            if compiled:
                model.runtime = TorchRuntime(torch.compile(model.net), model.device, model.amp_dtype)
                with torch.no_grad():  # compile on one full batch and on a remainder batch
                    for b in (self.args.batch, 1):
                        model.runtime(torch.rand(b, 3, 256, 256, device=model.device))
            compile_s = time.time() - t_c
            sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
            sync()
            t0 = time.time()
            predict_mosaic(
                model,
                rec,
                self.work / "mosaic_pred.tif",
                tile=256,
                overlap=64,
                batch_size=self.args.batch,
                tta=tta,
                block=self.args.block,
                grid=Grid.upscaled,
            )
            sync()
            secs = time.time() - t0
            if not tta:
                one_view_s[compiled] = secs
            views = 8 if tta else 1
            self.record(
                name,
                desc,
                t0,
                t0 + secs,
                seconds_compile=round(compile_s, 1),
                km2=round(km2, 1),
                km2_per_min=round(km2 / (secs / 60), 1),
                tiles_per_s=round(per_view * views / secs, 1),
            )

    def run(self) -> None:
        import platform

        info: dict[str, Any] = {"python": platform.python_version()}
        if not self.args.dry_run:
            import torch

            info |= {"torch": torch.__version__, "cuda": torch.version.cuda}
            if not self.args.cpu:
                info["gpu"] = torch.cuda.get_device_name(0)
                smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
                (self.out / "nvidia-smi.txt").write_text(smi)
                self.sampler = UtilSampler(self.out / "gpu_util.csv")
                self.sampler.start()
        self.say(f"gpu_check: {json.dumps(info)}; {self.left():.0f} s of the budget left")
        steps = set(self.args.steps.split(","))
        ckpt = self.finetune() if "finetune" in steps else None
        if "sn7_full" in steps:
            self.sn7_full()
        checkpoint = ckpt or SHIPPED
        if "predict" in steps:
            self.predict_stage(checkpoint)
        if "mosaic" in steps:
            self.mosaic(checkpoint)
        if self.sampler is not None:
            self.sampler.stop_event.set()
        report = {"info": info, "checkpoint": str(checkpoint), "manifest": self.manifest, "steps": self.steps}
        if not self.args.dry_run:
            (self.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
            (self.out / "gpu_check.md").write_text(markdown(report))
        self.say(markdown(report))


def _csv_metrics(run_dir: Path) -> dict[str, Any]:
    """The last step, the last and best val/iou of a run's CSV log."""
    import csv

    files = sorted(run_dir.glob("csv/*/metrics.csv"))
    if not files:
        return {}
    rows = list(csv.DictReader(open(files[-1])))
    steps = [int(r["step"]) + 1 for r in rows if r.get("step") and r.get("train/loss")]
    ious = [float(r["val/iou"]) for r in rows if r.get("val/iou")]
    done = run_dir / "metrics.json"  # train's own record when it finished: the exact step count
    total = json.loads(done.read_text()).get("global_step") if done.is_file() else None
    return {
        "step": total or (max(steps) if steps else None),
        "val/iou": ious[-1] if ious else None,
        "val/iou_best": max(ious) if ious else None,
    }


def build_mosaic(carry: Path, out: Path, side: int) -> tuple[Path, float]:
    """An ``side``^2 RGBA mosaic: the first carried one-month place's mosaic tiled; (its path, its ground area in km^2)."""
    import numpy as np
    import rasterio
    from rasterio.transform import Affine

    src = sorted(carry.glob("data/*/train/*/images/*.tif"))[0]
    with rasterio.open(src) as ds:
        data, t, crs = ds.read(), ds.transform, ds.crs
    reps = (1, -(-side // data.shape[1]), -(-side // data.shape[2]))
    big = np.tile(data, reps)[:, :side, :side]
    out.parent.mkdir(parents=True, exist_ok=True)
    name = out.with_name("global_monthly_2020_01_mosaic_mosaic.tif")
    profile = {"driver": "GTiff", "width": side, "height": side, "count": big.shape[0], "dtype": big.dtype.name}
    profile |= {
        "crs": crs,
        "transform": Affine(t.a, t.b, t.c, t.d, t.e, t.f),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
    }
    with rasterio.open(name, "w", **profile) as ds:
        ds.write(big)
    area = side * side * abs(t.a * t.e) / 1e6
    if crs is not None and crs.to_epsg() == 3857:  # Web Mercator inflates areas by 1 / cos^2(latitude)
        import math

        y = t.f + t.e * side / 2
        lat = 2 * math.atan(math.exp(y / 6378137.0)) - math.pi / 2
        area *= math.cos(lat) ** 2
    return name, area


def markdown(report: dict[str, Any]) -> str:
    """The report as a table."""
    lines = [
        f"GPU check: {report['info']}",
        "",
        "| step | seconds | result | GPU util mean / max % | GPU memory max MiB |",
        "|---|---|---|---|---|",
    ]
    for s in report["steps"]:
        if "skipped" in s:
            lines.append(f"| {s['step']} | - | skipped: {s['skipped']} | - | - |")
            continue
        keys = (
            "exit_code",
            "steps",
            "steps_per_s",
            "projected_full_s",
            "val_iou_last",
            "val_iou",
            "rasters",
            "km2_per_min",
            "tiles_per_s",
            "seconds_compile",
        )
        result = ", ".join(f"{k} {s[k]:.3g}" if isinstance(s[k], float) else f"{k} {s[k]}" for k in keys if s.get(k) is not None)
        util = f"{s['util_mean']:.0f} / {s['util_max']:.0f}" if s.get("util_mean") is not None else "-"
        mem = f"{s['memory_max_mib']:.0f}" if s.get("memory_max_mib") is not None else "-"
        lines.append(f"| {s['step']} | {s['seconds']} | {result} | {util} | {mem} |")
    lines += ["", "Commands:", ""] + [f"- {s['step']}: `{s['command']}`" for s in report["steps"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--carry", default="runs/gpu_carry")
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/gpu_check"))
    ap.add_argument("--work", default="/tmp/gpu_check", help="scratch (runs, predictions, the big mosaic)")
    ap.add_argument("--started", type=float, default=time.time(), help="the script's start (epoch s): the budget counts from it")
    ap.add_argument(
        "--budget-s", type=float, default=560.0, help="everything, install included (the device allows 600 s a command)"
    )
    ap.add_argument("--epochs", type=int, default=240, help="training epochs (recipe=real: 240 = 3,840 steps)")
    ap.add_argument("--finetune-cap-s", type=float, default=200.0, help="fine-tuning is stopped after this (steps/s projected)")
    ap.add_argument("--workers", type=int, default=8, help="data loader workers")
    ap.add_argument("--mosaic", type=int, default=8192, help="side of the throughput mosaic in source pixels")
    ap.add_argument("--block", type=int, default=2048, help="predict's block side (source pixels)")
    ap.add_argument("--batch", type=int, default=32, help="tiles per forward pass on the GPU")
    ap.add_argument("--steps", default="finetune,sn7_full,predict,mosaic", help="the steps to run (a rerun of some)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan; no GPU needed")
    ap.add_argument(
        "--cpu",
        action="store_true",
        help="the same flow on the CPU (trainer=cpu, device=cpu; a check of the steps, not of a GPU)",
    )
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not (Path(args.carry) / "manifest.json").is_file():
        raise SystemExit(f"gpu_check: {args.carry}/manifest.json not found: bash bench/gpu_check.sh --prepare-only first")
    if not args.dry_run:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    Check(args).run()


if __name__ == "__main__":
    main()
