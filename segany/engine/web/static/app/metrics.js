// The metrics page of the annotation tool: per stage and annotator, seconds per mask, masks
// per image and clicks per mask (a table from GET /api/stats and GET /api/stats/timeline),
// the prefilled proposals' review (accepted / edited / rejected, masks and seconds per image
// with and without prefill, per annotator, from /api/stats' prefill), and a hand-written SVG
// line plot of one metric over time, one line per (stage, annotator),
// with the model versions' registration times marked on the time axis. Refreshes every
// REFRESH_MS; a failed request is shown in #error (the last good numbers stay on screen).
//
// The page is authenticated by the session cookie the server's URL sets. For tests,
// window.seganyMetrics exposes refresh() and the last data; document.body.dataset.state is
// "loading", "ready" or "error" and dataset.refreshes counts finished refreshes.

const REFRESH_MS = 10_000;
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22"];
const METRICS = {
  seconds_per_mask: "seconds per mask",
  clicks_per_mask: "clicks per mask",
  masks_per_image: "masks per image",
  masks: "masks accepted",
};
const SIZE = { width: 860, height: 380, left: 64, right: 170, top: 24, bottom: 52 };

const $ = (id) => document.getElementById(id);
const state = { stats: null, timeline: null, refreshes: 0, timer: null };

/** GET a JSON URL; throws an Error whose message has the status and the server's detail. */
async function getJSON(url) {
  let response;
  try {
    response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  } catch (e) {
    throw new Error(`${url}: the server cannot be reached (${e.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(`${url}: ${response.status} ${detail}`);
  }
  if (body === null) throw new Error(`${url}: the answer is not JSON`);
  return body;
}

function fmt(value, digits = 2) {
  if (value === null || value === undefined) return "–";
  return value.toFixed(digits);
}

const tickLabel = (v) => String(Number(v.toPrecision(6)));

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

const seriesName = (s, stages) =>
  (s.annotator === null ? "(no annotator)" : s.annotator) + (stages > 1 ? ` · stage ${s.stage}` : "");
const seriesKey = (s) => `${s.stage}\u0000${s.annotator}`;

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = message === null;
}

// ------------------------------------------------------------------------------ table

function renderTable(stats, timeline) {
  const stage = $("stage").value;
  const versionsOf = new Map(timeline.series.map((s) => [seriesKey(s), s.model_versions]));
  const body = $("groups").tBodies[0];
  body.replaceChildren();
  const groups = stats.groups.filter((g) => stage === "" || String(g.stage) === stage);
  if (groups.length === 0) {
    const row = el("tr");
    row.append(el("td", { colspan: "8", class: "empty" }, "no masks yet"));
    body.append(row);
  }
  for (const g of groups) {
    const row = el("tr", { "data-stage": String(g.stage), "data-annotator": g.annotator ?? "" });
    const versions = (versionsOf.get(seriesKey(g)) || [])
      .map((v) => `${v.name === null ? "(none)" : v.name} (${v.masks})`).join(", ");
    const cells = [g.stage, g.annotator ?? "(no annotator)", g.masks, g.images_done,
      fmt(g.seconds_per_mask, 1), fmt(g.masks_per_image), fmt(g.clicks_per_mask)];
    for (const c of cells) row.append(el("td", {}, String(c)));
    row.append(el("td", { class: "versions" }, versions || "–"));
    body.append(row);
  }
  const im = stats.images;
  $("summary").textContent = `${im.total} images (${im.done} done, ${im.in_progress} in ` +
    `progress, ${im.new} new, ${im.skipped} skipped), ${stats.masks} masks`;
  const emb = stats.embeddings;
  if (emb && emb.images !== undefined) {
    const now = emb.encoding === null ? "" : `, encoding image ${emb.encoding}`;
    const cached = emb.cached === null
      ? `${emb.images} images, cache not known yet (the model is not loaded)`
      : `${emb.cached} of ${emb.images} images cached for model ${emb.fingerprint}`;
    $("embeddings").textContent = `embeddings: ${cached}, ${emb.queued} queued${now}`;
  } else {
    $("embeddings").textContent = "";
  }

  const vbody = $("versions").tBodies[0];
  vbody.replaceChildren();
  for (const v of timeline.model_versions) {
    const row = el("tr");
    const cells = [v.id ?? "–", v.name ?? "(no model version)", v.fingerprint ?? "–",
      v.created_at ? v.created_at.replace("T", " ").slice(0, 19) : "–", v.masks,
      fmt(v.seconds_per_mask, 1)];
    for (const c of cells) row.append(el("td", {}, String(c)));
    vbody.append(row);
  }
}

// ------------------------------------------------------------------------------ prefill

const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(0)} %`);

/** Stage 2 from /api/stats' `prefill`: one row for everyone, then one per annotator. */
function renderPrefill(stats) {
  const pre = stats.prefill;
  const body = $("prefill").tBodies[0];
  body.replaceChildren();
  if (!pre) return;
  $("prefill-summary").textContent = `${pre.proposals} proposals on ${pre.images_prefilled} ` +
    `prefilled images, ${pre.pending} waiting for review`;
  const rows = [{ ...pre, annotator: "all", all: true }, ...(pre.by_annotator || [])];
  for (const r of rows) {
    const name = r.all ? "all" : (r.annotator ?? "(no annotator)");
    const row = el("tr", { "data-annotator": r.all ? "*" : (r.annotator ?? "") });
    if (r.all) row.className = "total";
    const w = r.with_prefill;
    const wo = r.without_prefill;
    const cells = [name, r.reviewed, r.accepted, r.edited, r.rejected, pct(r.accept_rate),
      pct(r.edit_rate), pct(r.reject_rate), fmt(r.seconds_per_review, 1),
      w.images, fmt(w.masks_per_image), fmt(w.seconds_per_image, 1),
      wo.images, fmt(wo.masks_per_image), fmt(wo.seconds_per_image, 1)];
    cells.forEach((c, k) => row.append(el("td", { "data-col": PREFILL_COLS[k] }, String(c))));
    body.append(row);
  }
}

/** The prefill table's columns (each cell's data-col). */
const PREFILL_COLS = ["annotator", "reviewed", "accepted", "edited", "rejected", "accept_rate",
  "edit_rate", "reject_rate", "seconds_per_review", "with_images", "with_masks_per_image",
  "with_seconds_per_image", "without_images", "without_masks_per_image",
  "without_seconds_per_image"];

// ------------------------------------------------------------------------------ plot

/** About `count` round tick values from 0 to at least `max`. */
function ticks(max, count = 5) {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * p).find((s) => s >= raw);
  const out = [];
  for (let v = 0; v < max + step * 0.999; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function timeLabel(ms, bucket) {
  const iso = new Date(ms).toISOString();
  return bucket === "hour" ? iso.slice(5, 16).replace("T", " ") : iso.slice(0, 10);
}

function renderPlot(timeline) {
  const metric = $("metric").value;
  const { width, height, left, right, top, bottom } = SIZE;
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": `${METRICS[metric]} over time`,
  });
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const stages = new Set(timeline.series.map((s) => s.stage)).size;
  const lines = timeline.series
    .map((s, i) => ({ s, color: COLORS[i % COLORS.length],
      points: s.points.filter((p) => p[metric] !== null) }))
    .filter((line) => line.points.length > 0);
  $("caption").textContent = `${METRICS[metric]} per ${timeline.bucket} (UTC), one line per ` +
    "annotator and stage; dashed lines: a new model version.";
  if (timeline.start === null || lines.length === 0) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle",
      class: "no-data" }, `no ${METRICS[metric]} to plot yet`));
    $("plot").replaceChildren(root);
    return;
  }
  const t0 = Date.parse(timeline.start);
  const t1 = Date.parse(timeline.end);
  const half = (timeline.bucket_seconds * 1000) / 2;
  const x = (ms) => left + ((ms - t0) / (t1 - t0)) * plotW;
  const maxY = Math.max(...lines.flatMap((l) => l.points.map((p) => p[metric])));
  const yt = ticks(maxY);
  const yMax = yt[yt.length - 1];
  const y = (v) => top + plotH - (v / yMax) * plotH;

  const grid = svg("g", { class: "grid" });
  const yAxis = svg("g", { class: "axis y-axis" });
  for (const v of yt) {
    grid.append(svg("line", { x1: left, x2: left + plotW, y1: y(v), y2: y(v) }));
    yAxis.append(svg("line", { x1: left - 5, x2: left, y1: y(v), y2: y(v) }));
    yAxis.append(svg("text", { x: left - 8, y: y(v) + 4, "text-anchor": "end" }, tickLabel(v)));
  }
  yAxis.append(svg("line", { x1: left, x2: left, y1: top, y2: top + plotH }));
  yAxis.append(svg("text", { x: 16, y: top + plotH / 2, "text-anchor": "middle",
    transform: `rotate(-90 16 ${top + plotH / 2})` }, METRICS[metric]));

  const xAxis = svg("g", { class: "axis x-axis" });
  xAxis.append(svg("line", { x1: left, x2: left + plotW, y1: top + plotH, y2: top + plotH }));
  const buckets = timeline.buckets.map(Date.parse);
  const every = Math.max(1, Math.ceil(buckets.length / 8));
  buckets.forEach((ms, i) => {
    if (i % every !== 0) return;
    const px = x(ms + half);
    xAxis.append(svg("line", { x1: px, x2: px, y1: top + plotH, y2: top + plotH + 5 }));
    xAxis.append(svg("text", { x: px, y: top + plotH + 18, "text-anchor": "middle" },
      timeLabel(ms, timeline.bucket)));
  });
  xAxis.append(svg("text", { x: left + plotW / 2, y: height - 8, "text-anchor": "middle" },
    `time (UTC, per ${timeline.bucket})`));

  const marks = svg("g", { class: "model-versions" });
  let lastX = -Infinity;
  let row = 0;
  for (const v of timeline.model_versions) {
    if (v.created_at === null) continue;
    const ms = Date.parse(v.created_at);
    if (ms < t0 || ms > t1) continue;
    row = x(ms) - lastX < 90 ? row + 1 : 0; // stagger the labels of close versions
    lastX = x(ms);
    const g = svg("g", { class: "model-version", "data-version": v.id });
    g.append(svg("line", { x1: x(ms), x2: x(ms), y1: top, y2: top + plotH }));
    g.append(svg("text", { x: x(ms) + 3, y: top + 10 + 13 * row }, v.name));
    g.append(svg("title", {}, `model version ${v.name} (${v.fingerprint}), ${v.created_at}`));
    marks.append(g);
  }

  const series = svg("g", { class: "lines" });
  const legend = svg("g", { class: "legend" });
  lines.forEach(({ s, color, points }, i) => {
    const g = svg("g", { class: "series", "data-annotator": s.annotator ?? "",
      "data-stage": s.stage });
    const d = points.map((p, j) =>
      `${j ? "L" : "M"}${x(Date.parse(p.t) + half).toFixed(1)},${y(p[metric]).toFixed(1)}`);
    g.append(svg("path", { d: d.join(" "), stroke: color }));
    for (const p of points) {
      const c = svg("circle", { cx: x(Date.parse(p.t) + half), cy: y(p[metric]), r: 3.5,
        fill: color });
      c.append(svg("title", {}, `${seriesName(s, stages)}, ${timeLabel(Date.parse(p.t),
        timeline.bucket)}: ${tickLabel(p[metric])} ${METRICS[metric]} (${p.masks} masks)`));
      g.append(c);
    }
    series.append(g);
    const ly = top + 8 + i * 20;
    const item = svg("g", { class: "legend-item" });
    item.append(svg("rect", { x: left + plotW + 16, y: ly - 8, width: 14, height: 4,
      fill: color }));
    item.append(svg("text", { x: left + plotW + 36, y: ly }, seriesName(s, stages)));
    legend.append(item);
  });
  root.append(grid, marks, yAxis, xAxis, series, legend);
  $("plot").replaceChildren(root);
}

// ------------------------------------------------------------------------------ refresh

async function refresh() {
  const params = new URLSearchParams({ bucket: $("bucket").value });
  if ($("stage").value) params.set("stage", $("stage").value);
  try {
    const [stats, timeline] = await Promise.all([
      getJSON("/api/stats"), getJSON(`/api/stats/timeline?${params}`),
    ]);
    state.stats = stats;
    state.timeline = timeline;
    renderTable(stats, timeline);
    renderPrefill(stats);
    renderPlot(timeline);
    showError(null);
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}; refreshes every ` +
      `${REFRESH_MS / 1000} s`;
    document.body.dataset.state = "ready";
  } catch (e) {
    showError(`Could not load the metrics: ${e.message}`);
    document.body.dataset.state = "error";
  } finally {
    state.refreshes += 1;
    document.body.dataset.refreshes = String(state.refreshes);
  }
}

function start() {
  $("metric").addEventListener("change", () => {
    if (state.timeline) renderPlot(state.timeline);
  });
  $("bucket").addEventListener("change", refresh);
  $("stage").addEventListener("change", refresh);
  state.timer = setInterval(refresh, REFRESH_MS);
  refresh();
}

window.seganyMetrics = { refresh, state };
start();
