"""Scaling bench: predict + vectorize in process vs on a Dask LocalCluster, side by side in one run.

    python bench/bench_cluster.py [--aois 8] [--months 6] [--size 256] [--workers 2]

Builds a synthetic tree (``synth``, AOIs x months x size^2) and a randomly initialised demo network
(inference cost does not depend on the weights), then runs ``predict`` (no TTA) and ``vectorize``
twice, each in a fresh child process: ``cluster.mode=none`` and a LocalCluster of ``--workers``
processes (one thread each). It prints the wall time of each stage, the peak RSS of the process
and of every worker, the cost per AOI, checks that both runs wrote the same rasters and vectors,
and projects the time of the SN7 test set (20 AOIs x 24 months of 1024^2) and of 1,000 AOIs on N
workers from the per-AOI cost measured here (linear in pixels; a worker = one core of this machine).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_inputs(d: Path, aois: int, months: int, size: int) -> Path:
    """The synthetic tree under ``d/data`` and a random demo-network checkpoint; returns the checkpoint."""
    import torch

    from spacenet7 import synth
    from spacenet7.compose import compose
    from spacenet7.config import SynthConfig
    from spacenet7.models.task import SegmentationTask

    synth.run(SynthConfig(out_dir=str(d / "data"), n_aois=aois, n_months=months, size=size, seed=0))
    cfg = compose("train", ["experiment=demo_cpu", "run_dir=/tmp/x"])
    task = SegmentationTask(cfg.model, cfg.loss, cfg.optimizer, chip_meta={"upscale": 1.0})
    ckpt = d / "model.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, ckpt)
    return ckpt


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds (user + system) this process has used: the cost, whatever else shares the cores."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(d: Path, mode: str, workers: int) -> dict:
    """One measured run (in a fresh process): predict + vectorize, in process or on a LocalCluster."""
    from spacenet7 import predict, vectorize
    from spacenet7.config import ClusterConfig, ClusterMode, PredictConfig, VectorizeConfig

    out = d / mode
    res: dict = {"mode": mode}
    lc = client = None
    cluster = ClusterConfig()
    if mode != "none":
        from distributed import Client, LocalCluster

        t0 = time.perf_counter()
        lc = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(lc)
        res["startup_s"] = time.perf_counter() - t0
        cluster = ClusterConfig(mode=ClusterMode.address, address=lc.scheduler_address)

    def cpu() -> float:  # this process's and every worker's CPU seconds so far
        return _cpu_s() + (sum(client.run(_cpu_s).values()) if client is not None else 0.0)

    c0 = cpu()
    t0 = time.perf_counter()
    predict.run(
        PredictConfig(
            checkpoint=str(d / "model.ckpt"),
            data_root=str(d / "data"),
            out_dir=str(out / "pred"),
            tta=False,
            progress=False,
            cluster=cluster,
        )
    )
    res["predict_s"] = time.perf_counter() - t0
    c1 = cpu()
    res["predict_cpu_s"] = c1 - c0
    t0 = time.perf_counter()
    vectorize.run(VectorizeConfig(pred_dir=str(out / "pred"), out_dir=str(out / "vec"), cluster=cluster))
    res["vectorize_s"] = time.perf_counter() - t0
    res["vectorize_cpu_s"] = cpu() - c1
    res["process_rss_mb"] = _maxrss_mb()
    if client is not None and lc is not None:
        res["worker_rss_mb"] = sorted(client.run(_maxrss_mb).values())
        client.close()
        lc.close()
    return res


def same_outputs(a: Path, b: Path) -> bool:
    """Both runs wrote the same probability rasters and vectors."""
    import geopandas as gpd
    import numpy as np
    import rasterio

    tifs = sorted(p.relative_to(a) for p in a.rglob("*.tif"))
    if not tifs or tifs != sorted(p.relative_to(b) for p in b.rglob("*.tif")):
        return False
    for t in tifs:
        with rasterio.open(a / t) as x, rasterio.open(b / t) as y:
            if not np.array_equal(x.read(), y.read()):
                return False
    vecs = sorted(p.name for p in (a / "vec").glob("*.parquet"))
    return bool(vecs) and all(gpd.read_parquet(a / "vec" / v).equals(gpd.read_parquet(b / "vec" / v)) for v in vecs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aois", type=int, default=8)
    ap.add_argument("--months", type=int, default=6)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("DIR", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1], args.workers)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        make_inputs(d, args.aois, args.months, args.size)
        print(f"inputs: {args.aois} AOIs x {args.months} months x {args.size}^2 ({time.perf_counter() - t0:.0f} s)", flush=True)
        runs = {}
        for mode in ("none", "local"):
            r = subprocess.run(
                [sys.executable, __file__, "--child", str(d), mode, "--workers", str(args.workers)],
                capture_output=True,
                text=True,
                check=False,
            )
            if r.returncode:
                sys.exit(f"{mode} run failed:\n{r.stderr[-3000:]}")
            runs[mode] = json.loads(r.stdout.strip().splitlines()[-1])
        same = same_outputs(d / "none", d / "local")
    report(runs, args, same)


def report(runs: dict, args, same: bool) -> None:
    """The measured table, then the projections (from CPU seconds: one worker = one free core)."""
    n, m, s, w = args.aois, args.months, args.size, args.workers
    one, many = runs["none"], runs["local"]
    t1 = one["predict_s"] + one["vectorize_s"]
    tw = many["predict_s"] + many["vectorize_s"]
    c1 = one["predict_cpu_s"] + one["vectorize_cpu_s"]
    cw = many["predict_cpu_s"] + many["vectorize_cpu_s"]
    print(
        f"\n| run ({n} AOIs x {m} months x {s}^2, predict tta=false + vectorize) | predict wall s | vectorize wall s | "
        "total wall s | wall per AOI s | CPU s (per AOI) | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| in process (measured) | {one['predict_s']:.1f} | {one['vectorize_s']:.1f} | {t1:.1f} | {t1 / n:.2f} | "
        f"{c1:.1f} ({c1 / n:.2f}) | {one['process_rss_mb']:.0f} |"
    )
    rss = ", ".join(f"{x:.0f}" for x in many["worker_rss_mb"])
    print(
        f"| LocalCluster, {w} workers x 1 thread (measured; + {many['startup_s']:.1f} s cluster start) | {many['predict_s']:.1f} | "
        f"{many['vectorize_s']:.1f} | {tw:.1f} | {tw / n:.2f} | {cw:.1f} ({cw / n:.2f}) | driver {many['process_rss_mb']:.0f}, workers {rss} |"
    )
    print(
        f"wall speedup {t1 / tw:.2f}x on {w} workers; CPU cost ratio cluster / in process {cw / c1:.2f}; outputs identical: {same}"
    )
    per_am = cw / (n * m)  # CPU seconds per AOI-month at size^2 on the cluster (workers + driver)
    sn7 = per_am * (1024 / s) ** 2 * 24  # one worker's seconds per SN7 AOI (24 months of 1024^2), on a free core
    one_sn7 = c1 / (n * m) * (1024 / s) ** 2 * 24
    print(
        f"\nCPU s per AOI-month here: in process {c1 / (n * m):.3f}, cluster {per_am:.3f}; an SN7 AOI (24 x 1024^2): "
        f"{one_sn7:.0f} core-s in process, {sn7:.0f} core-s on the cluster"
    )
    print("\n| what (predict tta=false + vectorize; one worker = one free core of this machine) | workers | time | |")
    print("|---|---|---|---|")
    print(f"| SN7 test set, 20 AOIs x 24 months x 1024^2 | 1 core, in process | {20 * one_sn7 / 60:.0f} min | projected |")
    for k in (2, 10, 20):
        t = math.ceil(20 / k) * sn7 + many["startup_s"]
        print(f"| SN7 test set, 20 AOIs x 24 months x 1024^2 | {k} | {t / 60:.1f} min | projected |")
    for k in (10, 100, 1000):
        t = math.ceil(1000 / k) * sn7 + many["startup_s"]
        print(f"| 1,000 AOIs x 24 months x 1024^2 | {k} | {t / 3600:.2f} h | projected |")


if __name__ == "__main__":
    main()
