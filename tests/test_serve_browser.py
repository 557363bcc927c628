"""The map page in a real browser: Playwright driving Debian's headless chromium against ``spacenet7 serve``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import geopandas as gpd
import pytest

from spacenet7.serve.headless import ARGS, CHROMIUM  # noqa: E402 (no FastAPI needed)

# the README's screenshot: SPACENET7_SCREENSHOT=docs/serve_map.png pytest tests/test_serve_browser.py
# refreshes it; otherwise the test writes into its tmp folder, not the source tree
SCREENSHOT_ENV = "SPACENET7_SCREENSHOT"
LARGE_MONTH = 20_000  # footprints in the stress month
RENDER_BUDGET_S = 2.0  # the bound for drawing that month
pytestmark = pytest.mark.browser

pytest.importorskip("fastapi", reason="spacenet7 serve needs the serve extra: pip install '.[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} not found: the browser test needs Debian's chromium (apt-get install chromium; make test installs it when run as root)",
        allow_module_level=True,
    )

from spacenet7.config import ServeConfig  # noqa: E402
from spacenet7.serve.app import create_app  # noqa: E402
from spacenet7.serve.server import serve_in_thread  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


def _open(browser, url: str):
    """A page on ``url`` that records every request and response, and fails on a page error."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.requests, page.responses, page.errors = [], [], []
    page.on("request", lambda r: page.requests.append(r.url))
    page.on("response", lambda r: page.responses.append(r))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    page.wait_for_function("window.sn7 && window.sn7.ready", timeout=30_000)
    return page


def _wait_month(page, month: str) -> dict:
    page.wait_for_function(f"window.sn7.lastRender && window.sn7.lastRender.month === {json.dumps(month)}", timeout=30_000)
    return page.evaluate("window.sn7.lastRender")


def _export_count(run: Path, aoi: str, stem: str) -> int:
    return len(gpd.read_file(run / "footprints" / aoi / f"{stem}.geojson"))


def test_map_page_draws_each_months_export_and_shows_a_building(browser, served_run, tmp_path):
    run = served_run
    manifest = json.loads((run / "pipeline.json").read_text())
    aoi = manifest["test_aois"][0]
    months = json.loads((run / "vectors" / f"{aoi}.json").read_text())["months"]
    app = create_app(ServeConfig(run_dir=str(run)))
    with serve_in_thread(app) as url:
        page = _open(browser, url)
        counts = []
        for t, m in enumerate(months[:3]):
            if t == 1:
                page.focus("#month")
                page.keyboard.press("ArrowRight")  # the slider, with the keyboard
            elif t == 2:
                page.click("#info")  # focus away from the slider: the page's own arrow keys
                page.keyboard.press("ArrowRight")
            _wait_month(page, m["month"])
            assert page.text_content("#month-label") == m["month"] and page.input_value("#month") == str(t)
            drawn = page.evaluate("window.sn7.drawnCount()")
            assert drawn == _export_count(run, aoi, m["stem"]) == int(page.get_attribute("#count", "data-count"))
            counts.append(drawn)
        assert len(set(counts)) > 1, f"the count did not change with the month: {counts}"
        page.keyboard.press("ArrowLeft")
        _wait_month(page, months[1]["month"])

        # click the largest building of the month: the panel shows its id
        target = page.evaluate("""() => {
            const layers = window.sn7.footprints.getLayers();
            const big = layers.reduce((a, b) => (b.feature.properties.area_m2 > a.feature.properties.area_m2 ? b : a));
            const p = window.sn7.map.latLngToContainerPoint(big.getCenter());
            return {id: big.feature.properties.id, x: p.x, y: p.y};
        }""")
        box = page.locator("#map").bounding_box()
        page.mouse.click(box["x"] + target["x"], box["y"] + target["y"])
        page.wait_for_selector("#info-id")
        assert page.text_content("#info-id") == str(target["id"])
        assert "m²" in page.text_content("#info") and "gap-filled" in page.text_content("#info")
        # ... and the map: a popup on the building, drawn highlighted
        page.wait_for_selector(".building-popup #popup-id")
        assert page.text_content(".building-popup #popup-id") == str(target["id"])
        assert page.evaluate("window.sn7.state.selected.options.color") == "#ffe600"

        # "changes only": the month's new and gap-filled buildings, nothing else
        changes = page.evaluate("window.sn7.state.data.features.filter((f) => f.properties.new || f.properties.filled).length")
        page.check("#changes-only")
        page.wait_for_function(f"window.sn7.drawnCount() === {changes}")
        page.uncheck("#changes-only")
        page.wait_for_function(f"window.sn7.drawnCount() === {_export_count(run, aoi, months[1]['stem'])}")

        # a metric scale bar, and download links to the run's GIS files that answer
        assert page.locator(".leaflet-control-scale-line").first.is_visible()
        links = page.eval_on_selector_all("#downloads a", "(as) => as.map((a) => a.getAttribute('href'))")
        assert any(h.endswith(f"{aoi}.gpkg") for h in links) and any(h.endswith(".geojson") for h in links)
        for href in links:
            assert page.request.get(url.rstrip("/") + href).status == 200, href

        # ground truth and the month's scores
        page.check("#show-truth")
        page.wait_for_function("window.sn7.truth.getLayers().length > 0")
        assert "F1 (IoU ≥ 0.5)" in page.text_content("#scores") and "SCOT" in page.text_content("#scores")
        page.wait_for_load_state("networkidle")

        tiles = [r for r in page.responses if "/tiles/mosaic/" in r.url]
        assert tiles, "no imagery tile was requested"
        for r in tiles:
            body = r.body()
            assert (
                r.status == 200
                and r.headers["content-type"] == "image/png"
                and body[:8] == b"\x89PNG\r\n\x1a\n"
                and len(body) > 100
            )
        hosts = {urlparse(u).hostname for u in page.requests if not u.startswith("data:")}
        assert hosts == {"127.0.0.1"}, f"the page reached beyond the server: {hosts}"
        assert not page.errors, page.errors
        shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "serve_map.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 20_000
        page.close()


def test_a_month_of_20000_footprints_draws_in_under_2_s(browser, tmp_path):
    from spacenet7.serve.testing import large_month_run

    run = large_month_run(tmp_path / "large", LARGE_MONTH)
    app = create_app(ServeConfig(run_dir=str(run)))
    with serve_in_thread(app) as url:
        app.state.catalog.footprints_geojson("L15-0000E-0000N_0000_0000_13", "2020-02")  # built once per server, not per view
        page = _open(browser, url)
        _wait_month(page, "2020-01")
        times = []
        for _ in range(3):
            page.evaluate("window.sn7.showMonth(1)")
            times.append(_wait_month(page, "2020-02")["ms"] / 1000)
            assert page.evaluate("window.sn7.drawnCount()") == LARGE_MONTH
            page.evaluate("window.sn7.showMonth(0)")
            _wait_month(page, "2020-01")
        median = sorted(times)[1]
        print(f"\n{LARGE_MONTH} footprints drawn in {median:.2f} s (median of 3: {', '.join(f'{t:.2f}' for t in times)})")
        assert median < RENDER_BUDGET_S
        page.close()


def test_api_docs_render_offline(browser, served_run):
    app = create_app(ServeConfig(run_dir=str(served_run)))
    with serve_in_thread(app) as url:
        page = browser.new_page()
        hosts: set[str | None] = set()
        page.on("request", lambda r: hosts.add(urlparse(r.url).hostname))
        page.goto(url + "docs")
        page.wait_for_selector(".opblock", timeout=30_000)
        ops = page.locator(".opblock-summary-path").all_text_contents()
        assert {"/api/predict", "/api/track"} <= {o.replace("\u200b", "") for o in ops}
        assert hosts == {"127.0.0.1"}, hosts
        page.close()
