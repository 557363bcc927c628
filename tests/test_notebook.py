"""The exploration notebook runs top to bottom on a pipeline run, and is stored without outputs."""

import base64
import io
import re
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pytest

from spacenet7 import viz
from spacenet7.errors import SN7Error

NB = Path(__file__).resolve().parents[1] / "notebooks" / "explore_predictions.ipynb"


def test_notebook_is_stored_stripped():
    nb = nbformat.read(NB, 4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "run `nbstripout notebooks/*.ipynb`"


def test_notebook_executes_on_a_pipeline_run(tiny_run, monkeypatch):
    from nbclient import NotebookClient

    run, _ = tiny_run
    monkeypatch.setenv("SPACENET7_RUN_DIR", str(run))
    monkeypatch.setenv("SPACENET7_OFFLINE", "1")
    nb = nbformat.read(NB, 4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]

    def cell(call: str):
        (found,) = [c for c in code if call in c.source]
        return found

    def pngs(c) -> list[bytes]:
        return [base64.b64decode(o["data"]["image/png"]) for o in c.outputs if "image/png" in o.get("data", {})]

    def printed(c) -> str:
        return "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream" and o.get("name") == "stdout")

    # each plotting cell draws its figures: two months, the timeline, the scores, the errors, the static map
    expected = {"viz.plot_month": 2, "viz.plot_timeline": 1, "viz.plot_scores": 1, "viz.plot_errors": 1, "viz.web_map": 1}
    assert {call: len(pngs(cell(call))) for call in expected} == expected
    for png in [p for call in expected for p in pngs(cell(call))]:
        img = plt.imread(io.BytesIO(png))
        assert min(img.shape[:2]) >= 100 and img[..., :3].std() > 0.01  # a drawn figure, not an empty canvas
    # and what the cells print is this run's
    loaded = viz.load_run(run)
    assert f"held-out AOIs: {loaded.test_aois}" in printed(cell("viz.load_run"))
    aoi, month = viz.worst_month(loaded)
    assert printed(cell("viz.worst_month")).split() == [aoi, str(month)]
    image = loaded.records[loaded.test_aois[0]][-1].image
    assert re.match(rf"\d+ footprints in {re.escape(image.name)} ", printed(cell("model.predict")))
    for call in ("viz.timeline", "viz.scot_breakdown", "footprints.head()"):  # the tables shown
        assert any("text/html" in o.get("data", {}) for o in cell(call).outputs), call
    html = [o for o in cell("viz.web_map").outputs if "text/html" in o.get("data", {})]
    assert html and "first_seen" in html[0]["data"]["text/html"], "the folium map did not render"


def test_viz_helpers(tiny_run):
    run_dir, _ = tiny_run
    run = viz.load_run(run_dir)
    aoi = run.test_aois[0]
    tl = viz.timeline(run, aoi)
    assert list(tl.columns) == ["month", "truth", "predicted", "truth_new", "predicted_new"]
    assert tl["truth"].iloc[-1] > 0 and tl["truth_new"].iloc[0] == 0
    a, month = viz.worst_month(run)
    scores = viz.month_scores(run)
    assert scores.loc[(scores.aoi == a) & (scores.month == month), "f1_50"].iloc[0] == scores["f1_50"].min()
    tp, fp, fn = viz.errors(run, a, month)
    row = scores[(scores.aoi == a) & (scores.month == month)].iloc[0]
    assert len(tp) == row["tp50"] and len(fp) == row["n_proposal"] - row["tp50"] and len(fn) == row["n_truth"] - row["tp50"]
    last = run.records[aoi][-1].month_key
    fig = viz.plot_month(run, aoi, -1)  # mosaic, truth, probability, prediction (+ 2 colour bars)
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert titles[0] == f"{last} mosaic" and titles[1].startswith("ground truth (")
    n_pred = int((run.vectors[aoi]["stem"] == run.records[aoi][-1].stem).sum())
    assert titles[3].startswith(f"predicted ({n_pred})") and fig._suptitle.get_text() == aoi
    plt.close(fig)
    fig = viz.plot_timeline(tl)
    assert [ax.get_title() for ax in fig.axes] == ["buildings per month", "new buildings per month"]
    assert list(fig.axes[0].lines[0].get_ydata()) == list(tl["truth"])  # truth, as counted
    plt.close(fig)
    fig = viz.plot_scores(run)
    assert [ax.get_title() for ax in fig.axes] == ["per-month F1", "SCOT breakdown per AOI"]
    f1_line = fig.axes[0].lines[0]
    assert f1_line.get_label() == f"{a} F1@0.5" and list(f1_line.get_ydata()) == list(scores.loc[scores.aoi == a, "f1_50"])
    plt.close(fig)
    fig = viz.plot_errors(run, a, month)
    assert fig.axes[0].get_title().endswith(f"{len(tp)} TP (green), {len(fp)} FP (red), {len(fn)} FN (orange)")
    plt.close(fig)
    m, static = viz.web_map(run.vectors[aoi], tiles=False)
    assert static is not None and "first_seen" in m.get_root().render()


def test_load_run_needs_a_pipeline_run(tmp_path):
    with pytest.raises(SN7Error, match=rf"^{re.escape(str(tmp_path / 'pipeline.json'))}: not a pipeline run"):
        viz.load_run(tmp_path)
