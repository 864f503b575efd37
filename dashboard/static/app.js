// wellwatch dashboard: the plate map, a well's time courses and QC, dose-response, stream health.
// State comes from /api/state, then server-sent events (/api/events) carry what changed.
"use strict";

const S = {
  version: 0, plateFormat: 96, wells: new Map(), dose: new Map(), models: {}, health: {},
  daemon: {}, quarantined: [], plateMap: null, plate: null, selected: null, charts: [], doseCharts: new Map(),
  nothingCounted: null, progress: null,
};
const $ = (id) => document.getElementById(id);
const key = (m) => `${m.plate}|${m.well}|${m.timepoint}`;
// every plate format the daemon knows (daemon/plate.py): rows, columns
const FORMATS = { 6: [2, 3], 12: [3, 4], 24: [4, 6], 48: [6, 8], 96: [8, 12], 384: [16, 24], 1536: [32, 48] };
const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
function rowName(r) { return r < 26 ? LETTERS[r] : LETTERS[Math.floor(r / 26) - 1] + LETTERS[r % 26]; }

// --- colours: viridis stops, interpolated ------------------------------------------------------
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function rgbOf(x) {
  x = Math.max(0, Math.min(1, x));
  const p = x * (VIRIDIS.length - 1), i = Math.min(Math.floor(p), VIRIDIS.length - 2), f = p - i;
  return VIRIDIS[i].map((v, k) => Math.round(v + f * (VIRIDIS[i + 1][k] - v)));
}
function colour(x) { const c = rgbOf(x); return `rgb(${c[0]},${c[1]},${c[2]})`; }
// a label that reads on its well: white on the dark end of viridis, black on the light end
function labelColour(x) {
  const [r, g, b] = rgbOf(x);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b < 140 ? "#fff" : "#000";
}

// --- what a well shows -----------------------------------------------------------------------
function deadCells(m) { return m.cell_counts && m.cell_counts.dead != null ? m.cell_counts.dead : m.counts.dead; }
// counts per field: wells imaged with 1 and with 5 fields compare
function metricValue(m, metric) {
  if (!m) return null;
  if (metric === "live_fraction") return m.live_fraction;
  const total = metric === "cells" ? (m.cells != null ? m.cells : m.counts.live + m.counts.dead) : deadCells(m);
  return m.frames ? total / m.frames : null;
}
function metricLabel(metric, m) {
  if (metric === "live_fraction") return "live fraction (tiles)";
  const cells = m ? m.cells != null : true;
  if (metric === "cells") return cells ? "cells per field" : "non-empty tiles per field (no segmentation)";
  return m && m.cell_counts ? "dead cells per field" : "dead tiles per field";
}

// --- state ------------------------------------------------------------------------------------
function applyWells(list) { for (const m of list) S.wells.set(key(m), m); }
function applyDose(list) { for (const d of list) S.dose.set(`${d.plate}|${d.compound}|${d.timepoint}`, d); }
function plates() { return [...new Set([...S.wells.values()].map((m) => m.plate))].sort(); }
function timepoints(plate) {
  return [...new Set([...S.wells.values()].filter((m) => m.plate === plate).map((m) => m.timepoint))].sort((a, b) => a - b);
}

async function loadState() {
  const st = await (await fetch("/api/state")).json();
  S.version = st.version; S.plateFormat = st.plate_format; S.models = st.models; S.health = st.health;
  S.daemon = st.daemon; S.quarantined = st.quarantined; S.plateMap = st.plate_map;
  S.nothingCounted = st.nothing_counted; S.progress = st.progress;
  S.wells.clear(); S.dose.clear(); applyWells(st.wells); applyDose(st.dose);
  render();
}

function listen() {
  const es = new EventSource(`/api/events?since=${S.version}`);
  es.addEventListener("changes", (ev) => {
    const c = JSON.parse(ev.data);
    S.version = c.version; S.health = c.health; S.models = c.models; S.quarantined = c.quarantined;
    S.nothingCounted = c.nothing_counted; S.progress = c.progress;
    applyWells(c.wells); applyDose(c.dose);
    render(c.wells.map((m) => m.well));
  });
  es.addEventListener("reload", () => { es.close(); loadState().then(listen); });
}

// --- rendering --------------------------------------------------------------------------------
function render(changedWells) {
  const ps = plates();
  const sel = $("plate-select");
  if (sel.options.length !== ps.length) {
    sel.innerHTML = ps.map((p) => `<option>${p}</option>`).join("");
  }
  if (!S.plate || !ps.includes(S.plate)) S.plate = ps[ps.length - 1] || null;
  sel.value = S.plate || "";
  $("plate-name").textContent = S.plate ? `- ${S.plate}` : "(waiting for the stream)";
  const tps = timepoints(S.plate);
  const slider = $("timepoint");
  const atEnd = Number(slider.value) >= Number(slider.max);
  slider.max = Math.max(0, tps.length - 1);
  if ($("follow-latest").checked || atEnd) slider.value = slider.max;
  renderHealth();
  renderNothingCounted();
  renderPlate();
  renderDose();
  renderQuarantine();
  if (S.selected && changedWells && changedWells.includes(S.selected)) openWell(S.selected, false);
}

function currentTimepoint() {
  const tps = timepoints(S.plate);
  return tps.length ? tps[Math.min(Number($("timepoint").value), tps.length - 1)] : null;
}

function renderHealth() {
  const h = S.health, parts = [];
  parts.push(h.connected ? `<span class="good">&#9679; connected</span>` : `<span class="bad">&#9679; not connected${h.error ? ": " + h.error : ""}</span>`);
  parts.push(`<span>seq ${h.seq}</span>`);
  parts.push(`<span class="${h.gaps ? "bad" : ""}">gaps ${h.gaps} (${h.missed} missed)</span>`);
  if (h.last_latency_s != null) parts.push(`<span title="from the file's last write to its count on the stream, for files written while the daemon runs">file&#8594;stream ${(h.last_latency_s * 1000).toFixed(0)} ms</span>`);
  const p = S.progress;
  if (h.backlog_frames || (p && p.backlog_frames)) {
    // files that were there before the daemon started: their age is not latency
    const age = h.backlog_age_s != null ? `, oldest seen ${fmtAge(h.backlog_age_s)} old` : "";
    parts.push(`<span id="backlog" title="files written before the daemon started, counted now">catching up: ${h.backlog_frames || p.backlog_frames} backlog files${age}</span>`);
  }
  if (p && p.waiting) parts.push(`<span>${p.waiting} on their way</span>`);
  if (h.lag_s != null) parts.push(`<span>stream&#8594;page ${(h.lag_s * 1000).toFixed(0)} ms</span>`);
  if (h.idle_s != null) parts.push(`<span>last message ${h.idle_s.toFixed(0)} s ago</span>`);
  $("health").innerHTML = parts.join("");
  const models = Object.entries(S.models || {}).map(([n, sha]) => `<span title="${sha}">${n} ${sha.slice(0, 12)}</span>`);
  if (S.daemon && S.daemon.provider) models.push(`<span>${S.daemon.provider}</span>`);
  $("models").innerHTML = models.join("") || "<span>models: (no message yet)</span>";
}

function fmtAge(s) { return s < 120 ? `${s.toFixed(0)} s` : s < 7200 ? `${(s / 60).toFixed(0)} min` : `${(s / 3600).toFixed(1)} h`; }

function renderNothingCounted() {
  const n = S.nothingCounted, box = $("nothing-counted");
  box.hidden = !n;
  if (!n) return;
  const r = n.reasons || {}, e = n.expects || {};
  const rows = [];
  if (r.other_channel) rows.push(`<li>${r.other_channel} file(s) in channel(s) <b>${(n.channels_seen || []).join(", ")}</b>; the configuration expects <b>${(e.channels || []).join(", ")}</b> (channels.label_free)</li>`);
  if (r.unmatched_name) rows.push(`<li>${r.unmatched_name} name(s) that watch.naming = "${e.naming}" does not match, e.g. <code>${n.examples.unmatched_name[0]}</code></li>`);
  if (r.quarantined) rows.push(`<li>${r.quarantined} quarantined, e.g. ${n.examples.quarantined[0]}</li>`);
  if (r.smaller_than_tile) rows.push(`<li>${r.smaller_than_tile} frame(s) smaller than one ${e.tile_size} px tile of the model, e.g. ${n.examples.smaller_than_tile[0]}</li>`);
  box.innerHTML = `<h2>Nothing counted</h2><p>${n.files} file(s) arrived but none became a counted frame:</p><ul>${rows.join("")}</ul>`;
}

function renderPlate() {
  const [rows, cols] = FORMATS[S.plateFormat] || FORMATS[96];
  const plate = $("plate");
  const metric = $("metric").value, t = currentTimepoint();
  $("timepoint-label").textContent = t == null ? "-" : `${t} (${Number($("timepoint").value) + 1}/${timepoints(S.plate).length})`;
  if (plate.dataset.format !== String(S.plateFormat)) {
    plate.dataset.format = S.plateFormat;
    plate.className = `plate p${S.plateFormat}`;
    plate.style.gridTemplateColumns = `1.2em repeat(${cols}, 1fr)`;
    let html = `<div></div>`;
    for (let c = 1; c <= cols; c++) html += `<div class="hdr">${c}</div>`;
    for (let r = 0; r < rows; r++) {
      const row = rowName(r);
      html += `<div class="hdr">${row}</div>`;
      for (let c = 1; c <= cols; c++) html += `<div class="well" id="well-${row}${c}" data-well="${row}${c}">${row}${c}</div>`;
    }
    plate.innerHTML = html;
    plate.onclick = (ev) => { const w = ev.target.dataset.well; if (w) openWell(w, true); };
  }
  const here = [...S.wells.values()].filter((m) => m.plate === S.plate && m.timepoint === t);
  let max = 1;
  if (metric !== "live_fraction") for (const m of here) max = Math.max(max, metricValue(m, metric) || 0);
  const byWell = new Map(here.map((m) => [m.well, m]));
  for (const el of plate.querySelectorAll(".well")) {
    const m = byWell.get(el.dataset.well), v = metricValue(m, metric);
    el.classList.toggle("has-data", !!m);
    el.classList.toggle("partial", !!m && m.fields_expected != null && !m.complete);
    el.classList.toggle("selected", el.dataset.well === S.selected);
    const x = v == null ? null : metric === "live_fraction" ? v : v / max;
    el.style.background = x == null ? "" : colour(x);
    el.style.color = x == null ? "" : labelColour(x);
    el.dataset.value = v == null ? "" : String(v);
    el.dataset.liveFraction = m && m.live_fraction != null ? String(m.live_fraction) : "";
    el.dataset.frames = m ? String(m.frames) : "";
    el.title = m ? `${m.well} t${m.timepoint}: live fraction ${fmt(m.live_fraction)}, tiles ${m.counts.live} live / ${m.counts.dead} dead / ${m.counts.empty} empty` +
      (m.cells != null ? `, cells ${m.cells}` : "") + `, ${m.frames}/${m.fields_expected ?? "?"} fields` + intervalText(m) + wellContent(m.well) : el.dataset.well;
    el.dataset.interval = m && m.live_fraction_interval ? m.live_fraction_interval.join(",") : "";
  }
  const lo = "0", hi = metric === "live_fraction" ? "1" : String(Number(max.toFixed(1)));
  $("legend").innerHTML = `${metricLabel(metric, here[0])}: ${lo} <span class="bar" style="background:linear-gradient(90deg,${[0, .25, .5, .75, 1].map(colour).join(",")})"></span> ${hi}`;
  const frames = here.reduce((a, m) => a + m.frames, 0);
  $("progress").textContent = t == null ? "no wells yet" : `timepoint ${t}: ${here.length} wells, ${frames} fields counted`;
}

// --- calibrated intervals (models from `wellwatch calibrate`) ---------------------------------
function intervalText(m) {
  if (!m.live_fraction_interval) return "";
  const [lo, hi] = m.live_fraction_interval;
  return `, calibrated live fraction ${fmt(m.live_fraction_estimate)} (${Math.round(m.interval_level * 100)}% interval ` +
    `${fmt(lo)}-${fmt(hi)})` + (m.calls_usable === false ? ", per-tile calls not usable one by one" : "");
}
// Vertical error bars at each x (bounds[i] = [low, high] or null), drawn over a uPlot chart.
function errorBars(stroke, bounds) {
  return { hooks: { draw: [(u) => {
    const ctx = u.ctx, w = 4 * devicePixelRatio;
    ctx.save(); ctx.strokeStyle = stroke; ctx.lineWidth = devicePixelRatio;
    u.data[0].forEach((x, i) => {
      const b = bounds[i];
      if (!b) return;
      const px = u.valToPos(x, "x", true), lo = u.valToPos(b[0], "y", true), hi = u.valToPos(b[1], "y", true);
      ctx.beginPath(); ctx.moveTo(px, lo); ctx.lineTo(px, hi);
      ctx.moveTo(px - w, lo); ctx.lineTo(px + w, lo); ctx.moveTo(px - w, hi); ctx.lineTo(px + w, hi); ctx.stroke();
    });
    ctx.restore();
  }] } };
}

function wellContent(well) {
  const c = S.plateMap && S.plateMap.wells[well];
  if (!c) return "";
  return c.role === "treated" ? ` | ${c.compound} ${c.concentration} ${c.unit}` : ` | ${c.role}${c.compound ? " (" + c.compound + ")" : ""}`;
}
function fmt(v, d = 3) { return v == null ? "-" : Number(v).toFixed(d); }
function fmtConc(v) { return v == null ? "-" : Number(v).toPrecision(3); }

// --- one well ---------------------------------------------------------------------------------
async function openWell(well, scroll) {
  S.selected = well;
  const data = await (await fetch(`/api/well/${encodeURIComponent(S.plate)}/${encodeURIComponent(well)}`)).json();
  const panel = $("well-panel");
  panel.hidden = false;
  $("well-title").textContent = `Well ${well} (${S.plate})`;
  $("well-content").textContent = data.content ? wellContent(well).slice(3) : "";
  for (const el of document.querySelectorAll(".plate .well")) el.classList.toggle("selected", el.dataset.well === well);
  drawWellCharts(data);
  drawQc(data.frames);
  if (scroll) panel.scrollIntoView({ block: "nearest" });
}

function drawWellCharts(data) {
  for (const c of S.charts) c.destroy();
  S.charts = [];
  const box = $("well-charts");
  box.innerHTML = "";
  const ts = data.totals.map((m) => m.timepoint);
  const done = data.frames.filter((f) => f.state === "done");
  const fields = [...new Set(done.map((f) => f.field))].sort((a, b) => a - b);
  const perField = (fn) => fields.map((fi) => ts.map((t) => {
    const f = done.find((x) => x.field === fi && x.timepoint === t);
    return f ? fn(f) : null;
  }));
  const frac = (a, b) => (a + b ? a / (a + b) : null);
  const hasCells = data.totals.some((m) => m.cells != null);
  const panels = [
    ["live", (m) => (m.cell_counts ? m.cell_counts.live : m.counts.live), (f) => (f.cell_live ?? f.live), hasCells ? "live cells" : "live tiles"],
    ["dead", (m) => deadCells(m), (f) => (f.cell_dead ?? f.dead), hasCells ? "dead cells" : "dead tiles"],
    ["cells", (m) => (m.cells ?? m.counts.live + m.counts.dead), (f) => (f.cells ?? f.live + f.dead), hasCells ? "cells" : "non-empty tiles"],
    ["live fraction", (m) => m.live_fraction, (f) => frac(f.live, f.dead), "live fraction (tiles)"],
  ];
  // a calibrated model's estimate per timepoint, from the stream's well messages, with its interval
  const calibrated = ts.map((t) => S.wells.get(`${S.plate}|${S.selected}|${t}`) || {});
  const palette = ["#e91e63", "#3f51b5", "#009688", "#ff9800", "#795548", "#9c27b0", "#607d8b", "#8bc34a"];
  for (const [name, total, field, label] of panels) {
    const div = document.createElement("div");
    div.className = "chart";
    div.dataset.chart = name;
    div.innerHTML = `<h4>${label}</h4>`;
    box.appendChild(div);
    const series = [{ label: "timepoint" }, { label: "well", stroke: "#222", width: 2, points: { show: true } }];
    const rows = [ts, data.totals.map(total)];
    let bars = {};
    if (name === "live fraction" && calibrated.some((m) => m.live_fraction_interval)) {
      series.push({ label: "calibrated estimate", stroke: "#111", width: 0, points: { show: true, size: 6 } });
      rows.push(calibrated.map((m) => m.live_fraction_estimate ?? null));
      bars = errorBars("#111", calibrated.map((m) => m.live_fraction_interval || null));
    }
    perField(field).forEach((vals, i) => {
      series.push({ label: `field ${fields[i]}`, stroke: palette[i % palette.length], width: 1, dash: [4, 3] });
      rows.push(vals);
    });
    // one timepoint: an axis around it, not uPlot's 0-100
    const x = ts.length === 1 ? { time: false, auto: false, range: [ts[0] - 1, ts[0] + 1] } : { time: false };
    S.charts.push(new uPlot({ width: 300, height: 170, series, scales: { x }, ...bars,
      axes: [{ label: "timepoint", incrs: [1, 2, 5, 10, 20, 50, 100] }, {}], legend: { show: name === "live" } }, rows, div));
  }
}

function drawQc(frames) {
  const body = $("qc-table").querySelector("tbody");
  body.innerHTML = frames.map((f) => `<tr class="${f.state}"><td>${f.timepoint ?? "-"}</td><td>${f.field ?? "-"}</td><td>${f.state}</td>` +
    `<td>${f.live ?? "-"}</td><td>${f.dead ?? "-"}</td><td>${f.empty ?? "-"}</td><td>${f.cells ?? "-"}</td>` +
    `<td>${f.path}${f.version > 1 ? " (v" + f.version + ")" : ""}</td><td>${f.reason ?? ""}</td></tr>`).join("") ||
    `<tr><td colspan="9" class="muted">no journal rows (no journal given, or none yet)</td></tr>`;
}

// --- dose-response ----------------------------------------------------------------------------
function curve(fit, lo, hi, top) {
  const xs = [], ys = [];
  for (let i = 0; i <= 60; i++) {
    const x = Math.pow(10, Math.log10(lo) + (Math.log10(hi) - Math.log10(lo)) * i / 60);
    const mid = fit.ic50 ?? fit.gec50;
    const t = top ?? fit.top, b = fit.bottom ?? fit.gr_inf;
    xs.push(x); ys.push(b + (t - b) / (1 + Math.pow(x / mid, fit.hill)));
  }
  return [xs, ys];
}

function renderDose() {
  const t = currentTimepoint();
  // Per compound, the fit of the slider's timepoint, else the latest one before it (still being imaged).
  const best = new Map();
  for (const d of S.dose.values()) {
    if (d.plate !== S.plate || t == null || d.timepoint > t) continue;
    const b = best.get(d.compound);
    if (!b || d.timepoint > b.timepoint) best.set(d.compound, d);
  }
  const here = [...best.values()];
  $("dose-section").hidden = S.dose.size === 0;
  $("dose-timepoint").textContent = t == null ? "" : `at timepoint ${t}` +
    (here.some((d) => d.timepoint !== t) ? " (latest fit so far shown where this timepoint has none yet)" : "");
  const box = $("dose-panels");
  for (const el of [...box.children]) if (!best.has(el.dataset.compound)) { S.doseCharts.get(el.id)?.destroy(); S.doseCharts.delete(el.id); el.remove(); }
  for (const d of here) {
    const id = `dose-${d.compound}`;
    let div = document.getElementById(id);
    if (!div) {
      div = document.createElement("div");
      div.id = id; div.className = "chart dose"; div.dataset.compound = d.compound;
      box.appendChild(div);
    }
    const sig = JSON.stringify([d.timepoint, d.points, d.viability_fit, d.gr_fit]);
    if (div.dataset.sig === sig) continue;
    div.dataset.sig = sig;
    const v = d.viability_fit, g = d.gr_fit;
    div.dataset.ic50 = v.ic50 ?? "";
    div.dataset.gr50 = g.gr50 ?? "";
    div.dataset.timepoint = d.timepoint;
    const ci = (c) => (c ? ` (95% CI ${fmtConc(c[0])}-${fmtConc(c[1])})` : "");
    const text = `<h4>${d.compound} <span class="muted">t${d.timepoint}, ${d.points.length} wells${d.complete ? "" : ", timepoint incomplete"}, fitted by the ${d.source || "daemon"}</span></h4>` +
      `<p class="dose-text">IC50 ${v.ic50 != null ? fmtConc(v.ic50) + " " + d.unit + ci(v.ic50_ci) : "- (" + (v.reason || "") + ")"}; ` +
      `GR50 ${g.gr50 != null ? fmtConc(g.gr50) + " " + d.unit + ci(g.gr50_ci) : "- (" + (g.reason || "") + ")"}` +
      `${g.ok && g.gr_inf != null ? ", GRinf " + fmt(g.gr_inf, 2) : ""}</p>`;
    if (S.doseCharts.has(id)) S.doseCharts.get(id).destroy();
    div.innerHTML = text;
    const pts = d.points.filter((p) => p.concentration > 0);
    if (!pts.length) continue;
    const lo = Math.min(...pts.map((p) => p.concentration)) / 2, hi = Math.max(...pts.map((p) => p.concentration)) * 2;
    // One x axis: the points and the fitted curves' grid, merged and sorted; null where a series has no value.
    const rows = [];
    for (const p of pts) rows.push([p.concentration, p.viability, p.gr, null, null, p.viability_interval || null]);
    if (v.ic50 != null) { const [xs, ys] = curve(v, lo, hi); xs.forEach((x, i) => rows.push([x, null, null, ys[i], null])); }
    if (g.ok && g.gec50 != null) { const [xs, ys] = curve(g, lo, hi, 1); xs.forEach((x, i) => rows.push([x, null, null, null, ys[i]])); }
    rows.sort((a, b) => a[0] - b[0]);
    const cols = [0, 1, 2, 3, 4].map((k) => rows.map((r) => r[k]));
    const doseBars = errorBars("#3f51b5", rows.map((r) => r[5] || null));
    const dots = { show: true, size: 7 };
    const chart = new uPlot({ width: 520, height: 260, ...doseBars, scales: { x: { time: false, distr: 3 }, y: { range: [-1, 1.3] } },
      axes: [{ label: `concentration (${d.unit})` }, { label: "viability / GR" }],
      series: [{ label: "conc." },
        { label: "viability", stroke: "#3f51b5", paths: () => null, points: dots },
        { label: "GR", stroke: "#e91e63", paths: () => null, points: dots },
        { label: "viability fit", stroke: "#3f51b5", width: 2, spanGaps: true, points: { show: false } },
        { label: "GR fit", stroke: "#e91e63", width: 2, spanGaps: true, points: { show: false } }] }, cols, div);
    S.doseCharts.set(id, chart);
  }
}

function renderQuarantine() {
  $("quarantine-section").hidden = !S.quarantined.length;
  $("quarantine-list").innerHTML = S.quarantined.map((q) => `<li>${q.path}: ${q.reason}</li>`).join("");
}

// --- controls ---------------------------------------------------------------------------------
$("metric").onchange = () => renderPlate();
$("timepoint").oninput = () => { $("follow-latest").checked = false; renderPlate(); renderDose(); };
$("plate-select").onchange = (ev) => { S.plate = ev.target.value; render(); };
loadState().then(listen);
