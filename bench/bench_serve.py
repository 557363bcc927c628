"""``spacenet7 serve`` under load: drawing a month of 20,000 footprints, and a burst of tiles and predictions.

1. A synthetic AOI of 2048^2 px whose second month holds 20,000 footprints (``spacenet7/serve/testing.py``),
   drawn in headless Chromium (Debian's, driven by Playwright) with Leaflet's canvas renderer (the
   page's default, ``preferCanvas``) and with its SVG renderer, side by side: time from the month's
   request to the painted frame, median of 5 switches.
2. A bounded burst to 127.0.0.1: 200 mosaic tiles 16 at a time, then 10 simultaneous predictions,
   with the server's defaults (1 worker, 4 queued, the rest refused with 503); latency percentiles.

Usage: ``python bench/bench_serve.py [RUN_DIR]``; RUN_DIR is a pipeline run with a checkpoint (default:
a tiny pipeline run made here, 1 epoch, with oracle predictions as in the tests).
"""

import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from spacenet7.compose import compose
from spacenet7.config import ServeConfig
from spacenet7.data.sn7 import scan
from spacenet7.serve.app import create_app
from spacenet7.serve.headless import ARGS, CHROMIUM
from spacenet7.serve.server import serve_in_thread
from spacenet7.serve.testing import large_month_run, load_burst, oracle_run, percentiles

N = 20_000
REPEATS = 5


def render_times(browser, url: str, renderer: str) -> list[float]:
    """Seconds from asking for the 20,000-footprint month to its painted frame, ``REPEATS`` times."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{url}?renderer={renderer}")
    page.wait_for_function("window.sn7 && window.sn7.ready", timeout=60_000)
    out = []
    for _ in range(REPEATS):
        page.evaluate("window.sn7.showMonth(1)")
        page.wait_for_function("window.sn7.lastRender.month === '2020-02'", timeout=120_000)
        out.append(page.evaluate("window.sn7.lastRender.ms") / 1000)
        assert page.evaluate("window.sn7.drawnCount()") == N
        page.evaluate("window.sn7.showMonth(0)")
        page.wait_for_function("window.sn7.lastRender.month === '2020-01'", timeout=120_000)
    page.close()
    return out


def tiny_run(tmp: Path) -> Path:
    from spacenet7 import pipeline

    cfg = compose(
        "pipeline",
        [
            f"run_dir={tmp / 'run'}",
            f"data_root={tmp / 'data'}",
            "synth.n_aois=3",
            "synth.n_months=4",
            "synth.size=128",
            "chip.chip_size=128",
            "train.max_epochs=1",
            "train.logger.wandb=false",
            "train.trainer.enable_progress_bar=false",
            "predict.progress=false",
            "predict.tile=128",
            "predict.overlap=32",
        ],
    )
    with contextlib.redirect_stdout(io.StringIO()):
        pipeline.run(cfg)
        return oracle_run(tmp / "run", tmp / "served")


def main() -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        large = large_month_run(tmp / "large", N)
        app = create_app(ServeConfig(run_dir=str(large)))
        with serve_in_thread(app) as url, sync_playwright() as p:
            t0 = time.perf_counter()
            body = app.state.catalog.footprints_geojson("L15-0000E-0000N_0000_0000_13", "2020-02")
            print(
                f"server: {N} footprints as GeoJSON in {time.perf_counter() - t0:.2f} s (once per server), {len(body) / 2**20:.1f} MiB"
            )
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            canvas = render_times(browser, url, "canvas")
            svg = render_times(browser, url, "svg")
            browser.close()
        c, s = statistics.median(canvas), statistics.median(svg)
        print(
            f"draw {N} footprints, median of {REPEATS}: canvas (the page's) {c:.2f} s, SVG {s:.2f} s; SVG / canvas = {s / c:.1f}x"
        )
        print(f"  canvas: {', '.join(f'{t:.2f}' for t in canvas)}\n  svg:    {', '.join(f'{t:.2f}' for t in svg)}")

        run = Path(sys.argv[1]) if len(sys.argv) > 1 else tiny_run(tmp / "tiny")
        manifest = json.loads((run / "pipeline.json").read_text())
        aoi = manifest["test_aois"][0]
        recs = scan(manifest["data_root"], aois=[aoi])[aoi]
        app = create_app(ServeConfig(run_dir=str(run)))
        print(f"\nload burst on {run} (predict settings: {app.state.inference.describe()})")
        image = recs[0].image.read_bytes()
        with serve_in_thread(app) as url:
            t0 = time.perf_counter()
            burst = load_burst(url, aoi, [r.month_key for r in recs], image)
            print(f"200 tiles, 16 at a time: {percentiles(burst['tiles'])}")
            print(
                f"10 simultaneous predictions of one {recs[0].image.name} ({len(image) / 1024:.0f} KiB): {percentiles(burst['predictions'])}"
            )
            ok = [t for c, t in burst["predictions"] if c == 200]
            busy = [t for c, t in burst["predictions"] if c == 503]
            print(
                f"  the {len(ok)} answered 200: {', '.join(f'{t:.2f}' for t in sorted(ok))} s (one worker: each waits for those before it)"
            )
            print(f"  the {len(busy)} answered 503: {', '.join(f'{t:.2f}' for t in sorted(busy))} s")
            print(
                f"burst wall time {time.perf_counter() - t0:.1f} s; afterwards /api/health answers "
                f"{__import__('httpx').get(url + 'api/health').json()}"
            )


if __name__ == "__main__":
    main()
