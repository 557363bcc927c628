// spacenet7 serve: the map page. Leaflet (npm, served from node_modules) with its canvas renderer,
// so that a month of 20,000 footprints stays interactive. window.sn7 exposes the state for tests.
(() => {
  "use strict";
  const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];
  const NEW_COLOR = "#ff2d95";
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const fmt = (v, d = 3) => (typeof v === "number" ? v.toFixed(d) : v ?? "-");

  function viridis(t) {  // t in [0, 1]
    const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
    const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
    const a = VIRIDIS[i], b = VIRIDIS[i + 1];
    const ch = (k) => Math.round(parseInt(a.substr(k, 2), 16) * (1 - f) + parseInt(b.substr(k, 2), 16) * f);
    return `rgb(${ch(1)},${ch(3)},${ch(5)})`;
  }

  const state = { run: null, aoi: null, t: 0, monthIndex: {}, labels: {}, request: 0, data: null, selected: null };
  const HIGHLIGHT = { color: "#ffe600", weight: 4, opacity: 1 };
  const label = (month) => state.labels[month] ?? month;  // m01, m02, ... for imagery without dates
  const isChange = (p) => p.new || p.filled;
  // ?renderer=svg draws with SVG instead (bench/bench_serve.py measures both)
  const svg = new URLSearchParams(location.search).get("renderer") === "svg";
  const renderer = svg ? L.svg({ padding: 0.3 }) : L.canvas({ padding: 0.3, tolerance: 2 });
  const map = L.map("map", { preferCanvas: !svg, renderer, keyboard: false, zoomSnap: 0.25 });
  L.control.scale({ metric: true, imperial: false, maxWidth: 160 }).addTo(map);
  let mosaic = null, prob = null, basemap = null;

  const colorOf = (month) => {
    const n = state.aoi ? state.aoi.months.length : 1;
    return viridis(n > 1 ? (state.monthIndex[month] ?? 0) / (n - 1) : 0);
  };
  const styleOf = (f) => {
    const p = f.properties;
    if (p.new) return { renderer, color: NEW_COLOR, weight: 2.5, opacity: 1, fillColor: colorOf(p.first_seen), fillOpacity: 0.85 };
    return { renderer, color: "#ffffff", weight: 0.7, opacity: 0.8, fillColor: colorOf(p.first_seen), fillOpacity: 0.55,
             dashArray: p.filled ? "3 3" : null };
  };
  const footprints = L.geoJSON(null, {
    style: styleOf,
    filter: (f) => !$("changes-only").checked || isChange(f.properties),  // "changes only": new or gap-filled
    onEachFeature: (f, layer) => layer.on("click", (e) => select(f, layer, e.latlng)),
  });
  const truth = L.geoJSON(null, { style: { renderer, color: "#ffd400", weight: 1.6, fill: false, dashArray: "4 3" }, interactive: false });

  function select(f, layer, latlng) {  // highlight the clicked building, its popup and the side panel
    if (state.selected && footprints.hasLayer(state.selected)) footprints.resetStyle(state.selected);
    state.selected = layer;
    layer.setStyle(HIGHLIGHT);
    if (!svg && layer.bringToFront) layer.bringToFront();
    layer.bindPopup(infoHtml(f.properties, "popup-id"), { className: "building-popup", maxWidth: 260 }).openPopup(latlng);
    showInfo(f.properties);
  }

  function showInfo(p) {
    $("info").innerHTML = infoHtml(p, "info-id");
    $("info").dataset.id = p.id;
  }

  function infoHtml(p, id) {
    const m = label(state.aoi.months[state.t].month);
    return `<b>building <span id="${id}">${p.id}</span></b><table>
      <tr><td>first month</td><td>${label(p.first_seen)}</td></tr>
      <tr><td>last month</td><td>${label(p.last_seen)}</td></tr>
      <tr><td>months present</td><td>${p.n_months}</td></tr>
      <tr><td>area</td><td>${fmt(p.area_m2, 1)} m²</td></tr>
      <tr><td>gap-filled in ${m}</td><td>${p.filled ? "yes (not seen; carried over)" : "no"}</td></tr>
      <tr><td>new in ${m}</td><td>${p.new ? "yes" : "no"}</td></tr></table>`;
  }

  function tileLayer(kind, m, opts) {
    const a = state.aoi;
    return L.tileLayer(`/tiles/${kind}/${enc(a.aoi)}/${m.month}/{z}/{x}/{y}.png`, {
      bounds: a.bounds, maxNativeZoom: a.maxzoom, maxZoom: a.maxzoom + 4, keepBuffer: 4, ...opts,
    });
  }

  function setTiles(m) {
    for (const layer of [mosaic, prob]) if (layer) map.removeLayer(layer);
    mosaic = m.image && $("show-mosaic").checked ? tileLayer("mosaic", m, { zIndex: 2 }).addTo(map) : null;
    prob = m.probability && $("show-prob").checked ? tileLayer("probability", m, { zIndex: 3, opacity: 0.75 }).addTo(map) : null;
  }

  function scoresTable(rows) {
    return "<table>" + rows.filter(([, v]) => v !== undefined).map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("") + "</table>";
  }

  function showScores(m) {
    const s = m.scores || {}, a = state.aoi.scot || {};
    let html = "";
    if (Object.keys(s).length) {
      html += `<h3>${label(m.month)} vs ground truth</h3>` + scoresTable([
        ["F1 (IoU ≥ 0.5)", fmt(s.f1_50)], ["precision / recall", `${fmt(s.precision50)} / ${fmt(s.recall50)}`],
        ["F1 (IoU > 0.25)", fmt(s.f1)], ["buildings: truth / predicted", `${s.n_truth} / ${s.n_proposal}`]]);
    }
    if (Object.keys(a).length) {
      html += `<h3>AOI SCOT</h3>` + scoresTable([
        ["SCOT", fmt(a.scot)], ["tracking", fmt(a.tracking)], ["change", fmt(a.change)],
        ["tracking TP / FP / FN", `${a.tp} / ${a.fp} / ${a.fn}`], ["mismatches", a.mismatches],
        ["change TP / FP / FN", `${a.change_tp} / ${a.change_fp} / ${a.change_fn}`]]);
    }
    $("scores").innerHTML = html || "<i>no ground truth in this run</i>";
  }

  async function showTruth(m) {
    truth.clearLayers();
    if (!$("show-truth").checked || !m.truth) { map.removeLayer(truth); return; }
    const data = await (await fetch(`/api/aois/${enc(state.aoi.aoi)}/${m.month}/truth.geojson`)).json();
    truth.addData(data);
    truth.addTo(map);
  }

  async function showMonth(t) {
    const a = state.aoi;
    t = Math.max(0, Math.min(a.months.length - 1, t));
    const request = ++state.request;
    const m = a.months[t];
    state.t = t;
    $("month").value = t;
    $("month-label").textContent = m.label ?? m.month;
    $("show-truth").disabled = !m.truth;
    const t0 = performance.now();
    const res = await fetch(`/api/aois/${enc(a.aoi)}/${m.month}/footprints.geojson`);
    const data = await res.json();
    if (request !== state.request) return;  // a later month was asked for meanwhile
    state.data = data;
    state.selected = null;
    map.closePopup();
    drawFootprints();
    if ($("show-footprints").checked) footprints.addTo(map);
    setTiles(m);
    showScores(m);
    await showTruth(m);
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));  // the canvas has painted
    const ms = performance.now() - t0;
    const n = data.features.length, nNew = data.features.filter((f) => f.properties.new).length;
    const nFilled = data.features.filter((f) => f.properties.filled).length;
    $("count").textContent = `${n} buildings, ${nNew} new this month` + (nFilled ? `, ${nFilled} gap-filled` : "");
    $("count").dataset.count = n;
    $("render-time").textContent = `drawn in ${ms.toFixed(0)} ms`;
    document.body.dataset.month = m.month;
    downloads(m);
    window.sn7.lastRender = { month: m.month, n, ms };
  }

  function drawFootprints() {  // the month's data through the "changes only" filter
    map.removeLayer(footprints);
    footprints.clearLayers();
    if (state.data) footprints.addData(state.data);
    if ($("show-footprints").checked) footprints.addTo(map);
  }

  function downloads(m) {  // the run's GIS files (served from /files/run/)
    const files = [...(state.aoi.downloads || [])];
    if (m.geojson) files.unshift({ label: `${label(m.month)} footprints (GeoJSON)`, path: m.geojson });
    $("downloads").innerHTML = files.length
      ? "<h3>downloads</h3>" + files.map((f) => `<a href="/files/run/${f.path.split("/").map(enc).join("/")}" download>${f.label}</a>`).join("<br>")
      : "";
  }

  function legend() {
    $("legend").innerHTML = state.aoi.months.map((m) => `<span style="background:${colorOf(m.month)}">${label(m.month)}</span>`).join("")
      + `<span class="new">new</span>`;
  }

  async function showAoi(name) {
    state.aoi = state.run.aois.find((a) => a.aoi === name);
    state.monthIndex = Object.fromEntries(state.aoi.months.map((m, i) => [m.month, i]));
    state.labels = Object.fromEntries(state.aoi.months.map((m) => [m.month, m.label ?? m.month]));
    $("month").max = state.aoi.months.length - 1;
    if (state.aoi.bounds) {
      map.setMaxBounds(L.latLngBounds(state.aoi.bounds).pad(1.5));
      map.fitBounds(state.aoi.bounds);
    }
    legend();
    await showMonth(0);
  }

  function drawnCount() {  // footprint shapes drawn on the map: registered with the canvas renderer, or SVG paths
    return footprints.getLayers().filter((l) => map.hasLayer(l) && (svg ? l._path && l._path.isConnected : renderer._layers[L.stamp(l)])).length;
  }

  window.sn7 = { map, footprints, truth, renderer, state, showMonth, drawnCount, lastRender: null, ready: false };

  $("month").addEventListener("input", (e) => showMonth(+e.target.value));
  document.addEventListener("keydown", (e) => {
    if (e.target === $("month") || e.target.tagName === "SELECT" || !state.aoi) return;  // the slider steps itself
    if (e.key === "ArrowRight") { showMonth(state.t + 1); e.preventDefault(); }
    if (e.key === "ArrowLeft") { showMonth(state.t - 1); e.preventDefault(); }
  });
  $("aoi").addEventListener("change", (e) => showAoi(e.target.value));
  for (const id of ["show-mosaic", "show-prob"]) $(id).addEventListener("change", () => setTiles(state.aoi.months[state.t]));
  $("show-footprints").addEventListener("change", (e) => (e.target.checked ? footprints.addTo(map) : map.removeLayer(footprints)));
  $("show-truth").addEventListener("change", () => showTruth(state.aoi.months[state.t]));
  $("changes-only").addEventListener("change", () => { map.closePopup(); state.selected = null; drawFootprints(); });
  $("show-basemap").addEventListener("change", (e) => {
    if (e.target.checked) {  // only on request: the page itself never leaves this server
      basemap = L.tileLayer("https://tile.openstreetmap.org/{z}/{x}/{y}.png", {
        zIndex: 1, maxZoom: 22, maxNativeZoom: 19, attribution: "© OpenStreetMap contributors" }).addTo(map);
    } else if (basemap) { map.removeLayer(basemap); basemap = null; }
  });

  (async () => {
    state.run = await (await fetch("/api/run")).json();
    $("run-name").textContent = state.run.run_dir.split("/").filter(Boolean).pop();
    $("run-name").title = state.run.run_dir;
    for (const a of state.run.aois) $("aoi").append(new Option(a.aoi, a.aoi));
    await showAoi(state.run.aois[0].aoi);
    window.sn7.ready = true;
  })();
})();
