// tuneserve dashboard: a client of the JSON API, like the CLI. No framework, no CDN.
// Pages (the URL hash): #/ overview, #/jobs/<id> a job with live curves, #/datasets/<id> a
// dataset with its validation report, #/experiments/<id> an experiment's jobs and leaderboard,
// #/models/<id> a chat model's playground (chat.js, which also draws a chat job's report).
// Every value from the server goes into the page as text (textContent), never as HTML.
"use strict";

const KEY_STORAGE = "tuneserve.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const BATCH_EVENTS = new Set(["batch_probe", "oom_recovered", "eval_oom", "gradient_checkpointing", "resumed"]);
const EVAL_METRICS = ["accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "f1_micro",
                      "subset_accuracy", "hamming_loss", "token_accuracy"];
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const SVG_NS = "http://www.w3.org/2000/svg";
const OVERVIEW_REFRESH_MS = 5000;
const EXPERIMENT_REFRESH_MS = 3000;
const RECONNECT_MS = 2000;

// ---- small helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") {
    if (!Number.isFinite(value)) return String(value);
    if (Number.isInteger(value)) return String(value);
    const abs = Math.abs(value);
    if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
    return String(Number(value.toFixed(digits)));
  }
  if (Array.isArray(value)) return value.map((v) => fmt(v)).join(", ");
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k} ${fmt(v)}`).join(", ");
  return String(value);
}

const when = (iso) => (iso ? iso.replace("T", " ").slice(0, 19) : "–");
const duration = (seconds) => {
  const t = Math.max(0, Math.round(seconds));
  return `${Math.floor(t / 3600)}:${String(Math.floor(t / 60) % 60).padStart(2, "0")}:${String(t % 60).padStart(2, "0")}`;
};
const badge = (state) => h("span", { class: `badge state-${state}` }, state);
const link = (href, text) => h("a", { href }, text);

const isBlank = (cell) => cell === null || cell === undefined || cell === "–";

// A column is numeric when every cell that has a value is a number: its header and all its
// cells (the "–" of a missing value too) are right-aligned, so the digits line up under it.
// Each cell carries its column's name in data-label: at phone width a row becomes a card of
// "label: value" lines (style.css), so no table scrolls sideways.
function table(caption, columns, rows, opts = {}) {
  const numeric = columns.map((c, i) => opts.numeric?.includes(c) || (rows.some((r) => typeof r[i] === "number")
    && rows.every((r) => typeof r[i] === "number" || isBlank(r[i]))));
  const head = h("tr", {}, columns.map((c, i) => h("th", { scope: "col", class: numeric[i] ? "num" : null }, c)));
  const body = rows.map((cells) => h("tr", {}, cells.map((cell, i) => {
    const label = columns[i];
    if (cell instanceof Node) return h("td", { class: numeric[i] ? "num" : (i === 0 ? "id" : null), "data-label": label }, cell);
    const kind = numeric[i] ? "num" : (opts.text?.includes(label) ? "text" : null);
    return h("td", { class: kind, "data-label": label }, fmt(cell));
  })));
  return h("div", { class: "scroll" }, h("table", { class: "stack" }, caption ? h("caption", {}, caption) : null,
    h("thead", {}, head), h("tbody", {}, body)));
}

// Counts as small horizontal bars (a label distribution): the bar's width is the share of the
// largest count, the number is written beside it, and the list reads as text without styles.
function bars(caption, counts) {
  const max = Math.max(1, ...Object.values(counts));
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  return h("figure", { class: "bars" }, h("figcaption", {}, caption),
    h("ul", {}, Object.entries(counts).map(([name, n]) => h("li", { "data-label": name, "data-count": n },
      h("span", { class: "bar-name" }, name),
      h("span", { class: "bar-track", "aria-hidden": "true" },
        h("span", { class: "bar", style: `width:${((n / max) * 100).toFixed(1)}%` })),
      h("span", { class: "bar-value num" }, `${n}`, h("span", { class: "muted" },
        total ? ` (${Math.round((n / total) * 100)}%)` : ""))))));
}

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(Boolean).map(([k, v]) =>
    h("div", {}, h("dt", {}, k), h("dd", {}, v instanceof Node ? v : fmt(v)))));
}

// ---- the API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

function authHeaders() {
  const key = localStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function failure(resp) {
  let detail = resp.statusText;
  try { detail = (await resp.json()).detail; } catch (_) { /* not JSON */ }
  return new ApiError(resp.status, typeof detail === "string" ? detail : JSON.stringify(detail));
}

async function api(path) {
  const resp = await fetch(path, { headers: authHeaders() });
  if (!resp.ok) throw await failure(resp);
  return resp.json();
}

// The events of one Server-Sent Events response, parsed as the spec reads them: yields
// { event, data, id } per block that carries data (comments and keep-alives are skipped).
async function* sseEvents(resp) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = { event: "message", data: "", id: null };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event.event = val;
        else if (field === "data") event.data += (event.data ? "\n" : "") + val;
        else if (field === "id") event.id = val;
      }
      if (event.data) yield event;
    }
  }
}

// Server-Sent Events over fetch (EventSource cannot send the Authorization header). Resumes
// with Last-Event-ID after a dropped connection; returns when the server ends the stream.
async function followEvents(path, onEvent, signal) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const headers = { ...authHeaders(), Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const resp = await fetch(path, { headers, signal });
      if (!resp.ok) throw await failure(resp);
      for await (const event of sseEvents(resp)) {
        if (event.id) lastId = event.id;
        onEvent(event.event, JSON.parse(event.data));
        if (event.event === "end") return;
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError) throw err;
    }
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

// ---- charts (SVG) --------------------------------------------------------------------------

function niceTicks(lo, hi, count = 5) {
  const span = hi - lo;
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => span / st <= count) || 10 * mag;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

// series: [{name, points: [[x, y], ...]}]. Each line is a <path class="series"> carrying its
// point count in data-points, so a test (or a screen reader's summary) can tell it was drawn.
// xLog: a logarithmic x axis (ticks at powers of ten; points at x <= 0 left out). marks: vertical
// lines at given x, each a <line class="mark" data-mark="label" data-x="x">, e.g. a chosen value.
function lineChart(id, title, series, { yFormat = fmt, xFormat = String, xLabel = "step", xLog = false, marks = [] } = {}) {
  const W = 600, H = 250, L = 58, R = 14, T = 12, B = 34;
  const tx = xLog ? Math.log10 : (x) => x;
  const drawn = series.map((sr, i) => ({ ...sr, color: COLORS[i % COLORS.length],
    points: sr.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!xLog || x > 0)) }))
    .filter((sr) => sr.points.length);
  const legend = drawn.map((sr) => h("span", { class: "legend" },
    h("span", { class: "swatch", style: `background:${sr.color}` }), sr.name));
  const figure = h("figure", { class: "chart", "data-chart": id }, h("figcaption", {}, title, legend));
  if (!drawn.length) {
    figure.append(h("p", { class: "muted" }, "No points yet."));
    return figure;
  }
  const xs = drawn.flatMap((sr) => sr.points.map((p) => tx(p[0])));
  const ys = drawn.flatMap((sr) => sr.points.map((p) => p[1]));
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
  const pad = (y1 - y0) * 0.06;
  y0 -= pad; y1 += pad;
  const px = (x) => L + ((tx(x) - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const at = xLabel === "step" ? "at step " : `at ${xLabel} `;
  const summary = drawn.map((sr) => {
    const first = sr.points[0], last = sr.points[sr.points.length - 1];
    return `${sr.name}: ${sr.points.length} points, ${yFormat(first[1])} ${at}${xFormat(first[0])} to ${yFormat(last[1])} ${at}${xFormat(last[0])}`;
  }).join("; ") + marks.map((m) => `; ${m.label}`).join("");
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}. ${summary}`,
                         "data-x-scale": xLog ? "log" : "linear" },
    s("title", {}, `${title}. ${summary}`));
  for (const t of niceTicks(y0, y1)) {
    svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: py(t), y2: py(t) }));
    svg.append(s("text", { x: L - 6, y: py(t) + 4, "text-anchor": "end" }, yFormat(t)));
  }
  // On a log axis a tick is a whole power of ten; on a linear one a whole step.
  const xTicks = niceTicks(x0, x1, 6).filter((t) => Number.isInteger(t)).map((t) => (xLog ? 10 ** t : t));
  for (const t of xTicks) {
    svg.append(s("text", { x: px(t), y: H - B + 16, "text-anchor": "middle" }, xFormat(t)));
  }
  svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  svg.append(s("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  svg.append(s("text", { x: W - R, y: H - 4, "text-anchor": "end" }, xLabel));
  for (const sr of drawn) {
    const d = sr.points.map(([x, y], i) => `${i ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
    svg.append(s("path", { class: "series", d, stroke: sr.color, "data-series": sr.name,
                           "data-points": sr.points.length }));
    if (sr.points.length < 3) {
      for (const [x, y] of sr.points) svg.append(s("circle", { cx: px(x), cy: py(y), r: 3, fill: sr.color }));
    }
  }
  for (const m of marks.filter((m) => Number.isFinite(m.x) && (!xLog || m.x > 0))) {
    const x = px(m.x).toFixed(1);
    svg.append(s("line", { class: "mark", x1: x, x2: x, y1: T, y2: H - B, "data-mark": m.label, "data-x": m.x }));
    svg.append(s("text", { class: "mark-label", x: Number(x) + 4, y: T + 10 }, m.label));
  }
  figure.append(svg);
  return figure;
}

const expFmt = (v) => (v === 0 ? "0" : Number(v).toExponential(1));

// learning_rate "auto": the range test's curve, loss against the rate (log axis) with the rate
// it chose marked; the newest lr_range_test event (a job runs it once, before its first step).
function rangeTestChart(events) {
  const test = [...events].reverse().find((e) => e.kind === "lr_range_test" && e.data && Array.isArray(e.data.lrs));
  if (!test) return null;
  const { lrs, losses = [], raw_losses: raw = [], chosen } = test.data;
  return lineChart("lr-range", "Learning-rate range test", [
    { name: "smoothed loss", points: lrs.map((lr, i) => [lr, losses[i]]) },
    { name: "raw loss", points: lrs.map((lr, i) => [lr, raw[i]]) }],
  { xLog: true, xLabel: "learning rate", xFormat: expFmt,
    marks: typeof chosen === "number" ? [{ x: chosen, label: `chosen ${expFmt(chosen)}` }] : [] });
}

// ---- pages ---------------------------------------------------------------------------------

const main = () => document.getElementById("main");

function show(title, ...content) {
  const heading = h("h1", { tabindex: "-1" }, title);
  main().replaceChildren(heading, ...content.filter(Boolean));  // a section left out is null
  return heading;
}

function showError(err) {
  const box = h("p", { class: "error", role: "alert" },
    err instanceof ApiError ? `${err.message} (HTTP ${err.status})` : `Error: ${err.message}`);
  if (err instanceof ApiError && err.status === 401) {
    document.getElementById("key-box").open = true;
    document.getElementById("key-input").focus();
  }
  main().replaceChildren(h("h1", {}, "Something went wrong"), box);
}

async function overviewPage() {
  const [datasets, jobs, models, experiments] = await Promise.all([api("/datasets"), api("/jobs?limit=50"),
    api("/models"), api("/experiments?limit=50")]);
  show("Overview",
    h("section", { "aria-labelledby": "exp-h" }, h("h2", { id: "exp-h" }, `Experiments (${experiments.count})`),
      experiments.data.length ? table(null, ["experiment", "state", "progress", "models", "metric", "created"],
        experiments.data.map((e) => [link(`#/experiments/${e.id}`, e.name || e.id), badge(e.state),
          h("progress", { max: 1, value: e.progress, "aria-label": `${Math.round(e.progress * 100)}%` }),
          e.base_models.length, e.primary_metric, when(e.created_at)]))
        : h("p", { class: "muted" }, "No experiments yet: compare base models with `tuneserve experiments create`.")),
    h("section", { "aria-labelledby": "jobs-h" }, h("h2", { id: "jobs-h" }, `Jobs (${jobs.count})`),
      jobs.data.length ? table(null, ["job", "state", "progress", "base model", "best", "model", "created"],
        jobs.data.map((j) => [link(`#/jobs/${j.id}`, j.id), badge(j.state),
          h("progress", { max: 1, value: j.progress, "aria-label": `${Math.round(j.progress * 100)}%` }),
          j.base_model, j.best_metric === null ? "–" : `${j.best_metric_name} ${fmt(j.best_metric)}`,
          j.model_id || "–", when(j.created_at)]), { text: ["base model"] })
        : h("p", { class: "muted" }, "No jobs yet: start one with `tuneserve jobs create` or POST /jobs.")),
    h("section", { "aria-labelledby": "ds-h" }, h("h2", { id: "ds-h" }, `Datasets (${datasets.count})`),
      datasets.data.length ? table(null, ["dataset", "name", "task", "rows", "labels", "created"],
        datasets.data.map((d) => [link(`#/datasets/${d.id}`, d.id), d.name, d.task, fmt(d.num_rows),
          fmt(d.labels), when(d.created_at)]), { text: ["name", "labels"] })
        : h("p", { class: "muted" }, "No datasets yet: upload one with `tuneserve datasets upload`.")),
    h("section", { "aria-labelledby": "models-h" }, h("h2", { id: "models-h" }, `Models (${models.count})`),
      models.data.length ? table(null, ["model", "task", "base model", "labels", "job", "created"],
        models.data.map((m) => [m.task === "chat" ? link(`#/models/${m.id}`, m.id) : h("span", { class: "mono" }, m.id), m.task, m.base_model, fmt(m.labels),
          m.job_id ? link(`#/jobs/${m.job_id}`, m.job_id) : "–", when(m.created_at)]), { text: ["base model"] })
        : h("p", { class: "muted" }, "No tuned models yet.")));
  // Keep the list current while something is queued or running.
  const active = jobs.data.some((j) => !TERMINAL.has(j.state)) || experiments.data.some((e) => !TERMINAL.has(e.state));
  if (!active) return null;
  const timer = setTimeout(() => {
    if (location.hash === "" || location.hash === "#/") route({ refresh: true });
  }, OVERVIEW_REFRESH_MS);
  return { stop: () => clearTimeout(timer) };
}

function upsert(points, point) {
  const at = points.findIndex((p) => p.step === point.step);
  if (at >= 0) points[at] = point; else points.push(point);
  points.sort((a, b) => a.step - b.step);
}

function jobSections(state) {
  const { job, train, evals, events, metrics } = state;
  const hp = job.hyperparameters || {};
  const status = h("section", { "aria-live": "polite", "aria-labelledby": "status-h" },
    h("h2", { id: "status-h", class: "visually-hidden" }, "Status"),
    h("progress", { max: 1, value: job.progress, "aria-label": `progress ${Math.round(job.progress * 100)}%` }),
    facts([
      ["state", badge(job.state)],
      ["step", `${job.step} / ${job.total_steps ?? "?"} (${Math.round(job.progress * 100)}%)`],
      ["epoch", fmt(job.epoch, 2)],
      ["micro-batch × accumulation", job.micro_batch_size ? `${job.micro_batch_size} × ${job.grad_accum_steps}` : "–"],
      job.state === "running" && job.eta_s !== null ? ["ETA", duration(job.eta_s)] : null,
      ["best " + (job.best_metric_name || "metric"), job.best_metric],
      ["base model", job.base_model],
      ["dataset", link(`#/datasets/${job.dataset_id}`, job.dataset_id)],
      job.experiment_id ? ["experiment", link(`#/experiments/${job.experiment_id}`, job.experiment_id)] : null,
      ["hyperparameters", ["epochs", "batch_size", "learning_rate", "max_seq_length"]
        .filter((k) => k in hp).map((k) => `${k} ${fmt(hp[k])}`).join(", ")],
      job.device ? ["device", job.device] : null,
      // The memory plan made before the model loaded: its sentence, then each choice and why.
      job.memory_plan ? ["memory plan", [job.memory_plan.message,
        ...Object.entries(job.memory_plan.reasons || {}).map(([k, v]) => `${k}: ${v}`)].join(" · ")] : null,
      ["model", job.model_id || "–"],
      job.error ? ["error", job.error] : null,
    ]));

  const metricNames = EVAL_METRICS.filter((m) => evals.some((p) => typeof p[m] === "number"));
  // A chat job's train points carry token accuracy too: drawn beside the evaluation's.
  const trainMetricNames = EVAL_METRICS.filter((m) => train.some((p) => typeof p[m] === "number"));
  const charts = h("section", { "aria-labelledby": "curves-h" }, h("h2", { id: "curves-h" }, "Curves"),
    h("div", { class: "charts" },
      lineChart("loss", "Loss", [
        { name: "train loss", points: train.map((p) => [p.step, p.loss]) },
        { name: "eval loss", points: evals.map((p) => [p.step, p.loss]) }]),
      lineChart("learning-rate", "Learning rate", [
        { name: "learning rate", points: train.map((p) => [p.step, p.learning_rate]) }],
        { yFormat: expFmt }),
      rangeTestChart(events),
      lineChart("eval", "Evaluation", [
        ...metricNames.map((m) => ({ name: m, points: evals.map((p) => [p.step, p[m]]) })),
        ...trainMetricNames.map((m) => ({ name: `train ${m}`, points: train.map((p) => [p.step, p[m]]) }))])));

  // Adaptive batch: what the probe chose, and every change after it (OOM halving, resume).
  const batchEvents = events.filter((e) => BATCH_EVENTS.has(e.kind));
  const batch = h("section", { "aria-labelledby": "batch-h" }, h("h2", { id: "batch-h" }, "Adaptive batch"),
    batchEvents.length ? table(null, ["time", "what", "step", "micro-batch × accumulation", "message"],
      batchEvents.map((e) => {
        const d = e.data || {};
        const micro = d.new_micro_batch_size ?? d.micro_batch_size;
        const accum = d.new_grad_accum_steps ?? d.grad_accum_steps;
        return [when(e.time).slice(11), e.kind, d.step ?? "–", micro ? `${micro} × ${accum ?? "?"}` : "–", e.message];
      }), { text: ["message"] })
      : h("p", { class: "muted" }, "No batch decisions recorded yet."));

  const reference = (metrics.summary && metrics.summary.best) || evals[evals.length - 1];
  const cm = reference && reference.confusion_matrix;
  const perClass = reference && (reference.per_class || reference.per_label);
  // A chat model has no classes: its page has no confusion-matrix section at all. A single-label
  // job shows the matrix (a heat map); a multi-label one its per-label figures.
  const confusion = job.task === "chat" ? null : h("section", { "aria-labelledby": "cm-h" },
    h("h2", { id: "cm-h" }, cm ? "Confusion matrix" : "Per-class figures"),
    cm ? confusionTable(cm, reference.step)
      : (perClass ? null : h("p", { class: "muted" }, "No evaluation yet: the figures appear after the first one.")),
    perClass ? table(reference.per_class ? "Per class" : "Per label", ["label", "precision", "recall", "f1", "support"],
      Object.entries(perClass).map(([label, v]) => [label, v.precision, v.recall, v.f1, v.support])) : null);

  // The tuned model beside whatever the comparison scored on the same rows (the baselines).
  const splits = (metrics.comparison && metrics.comparison.splits) || {};
  const sides = [];
  for (const fig of Object.values(splits)) {
    // A side is a set of the same metrics as `tuned` (not the deltas or the disagreement list).
    const metricNames = Object.keys(fig.tuned || {}).filter((m) => typeof fig.tuned[m] === "number");
    for (const [side, v] of Object.entries(fig)) {
      if (v && typeof v === "object" && !sides.includes(side) && !side.startsWith("delta")
          && metricNames.some((m) => typeof v[m] === "number")) sides.push(side);
    }
  }
  const rows = [];
  for (const [split, fig] of Object.entries(splits)) {
    for (const [metric, tuned] of Object.entries(fig.tuned || {})) {
      if (typeof tuned === "number") rows.push([split, metric, ...sides.map((side) => (fig[side] || {})[metric] ?? "–")]);
    }
  }
  const note = metrics.comparison && metrics.comparison.note;
  const comparison = h("section", { "aria-labelledby": "cmp-h" },
    h("h2", { id: "cmp-h" }, sides.length > 1 ? `Comparison: ${sides.join(" vs ")}` : "Comparison"),
    rows.length ? table(note || null, ["split", "metric", ...sides], rows)
      : h("p", { class: "muted" }, TERMINAL.has(job.state) ? "No comparison was recorded." : "Made when the job succeeds."));

  const log = h("section", { "aria-labelledby": "events-h" }, h("h2", { id: "events-h" }, `Events (${events.length})`),
    h("ol", { class: "events", tabindex: "0", "aria-label": "job events, oldest first" }, events.map((e) =>
      h("li", {}, h("span", { class: "muted mono" }, when(e.time).slice(11)), h("span", { class: "kind" }, e.kind),
        h("span", { class: "msg" }, e.message)))));
  if (job.task === "chat") return [status, charts, batch, chatReportSection(job, metrics.comparison), log];
  return [status, charts, batch, confusion, comparison, log];
}

// The confusion matrix as a heat map: each cell shaded by its share of its true label's row
// (the recall of that row, on the diagonal), so a rare class's mistakes show as clearly as a
// common one's; the count is written in the cell and the share in its title.
function confusionTable(cm, step) {
  const head = h("tr", {}, h("th", { scope: "col" }, "true \\ predicted"),
    cm.labels.map((l) => h("th", { scope: "col", class: "num" }, l)));
  const body = cm.matrix.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0);
    return h("tr", {}, h("th", { scope: "row" }, cm.labels[i]), row.map((n, j) => {
      const share = total ? n / total : 0;
      const tone = i === j ? "cm-hit" : "cm-miss";
      return h("td", { class: `cm num ${tone}`, style: `--share:${share.toFixed(3)}`, "data-share": share.toFixed(3),
        title: `true ${cm.labels[i]}, predicted ${cm.labels[j]}: ${n} of ${total} (${Math.round(share * 100)}%)`,
        "data-label": cm.labels[j] }, String(n));
    }));
  });
  const legend = h("p", { class: "cm-legend muted" }, h("span", { class: "swatch-cell cm-hit", style: "--share:0.8" }),
    " correct ", h("span", { class: "swatch-cell cm-miss", style: "--share:0.8" }),
    " confused; the darker, the larger the share of the row (its true label).");
  return h("div", {}, h("div", { class: "heatmap-wrap" }, h("table", { class: "confusion heatmap" },
    h("caption", {}, `Validation at step ${step} (the best evaluation): rows are true labels, columns predicted.`),
    h("thead", {}, head), h("tbody", {}, body))), legend);
}

async function jobPage(id) {
  const [job, metrics, events] = await Promise.all([
    api(`/jobs/${encodeURIComponent(id)}`), api(`/jobs/${encodeURIComponent(id)}/metrics`),
    api(`/jobs/${encodeURIComponent(id)}/events`)]);
  const state = { job, metrics, train: metrics.train, evals: metrics.eval, events };
  const body = h("div", {});
  const heading = show(`Job ${job.id}`, body);
  heading.append(" ", badge(job.state));
  let pending = false;
  const render = () => {
    pending = false;
    body.replaceChildren(...jobSections(state).filter(Boolean));
    heading.lastChild.replaceWith(badge(state.job.state));
  };
  render();
  if (TERMINAL.has(job.state)) return null;

  const controller = new AbortController();
  const schedule = () => { if (!pending) { pending = true; requestAnimationFrame(render); } };
  let live = 0;  // stream events applied: shown as data-live-events, for tests and curious users
  followEvents(`/jobs/${encodeURIComponent(id)}/events/stream`, (kind, data) => {
    body.dataset.liveEvents = String(++live);
    if (kind === "log") {
      if (!state.events.some((e) => e.id === data.id)) state.events.push(data);
    } else if (kind === "metric") {
      if (data.kind === "train" || data.kind === "eval") upsert(data.kind === "eval" ? state.evals : state.train, data);
    } else if (kind === "progress") {
      Object.assign(state.job, data);
    } else if (kind === "end") {
      state.job = data;
      // The comparison and summary are made at the end: read them once more.
      api(`/jobs/${encodeURIComponent(id)}/metrics`).then((m) => { state.metrics = m; schedule(); }).catch(() => {});
    }
    schedule();
  }, controller.signal).catch(showError);
  return { stop: () => controller.abort() };
}

const REPORT_NAMES = {
  accepted_rows: "Accepted rows", rejected_total: "Rejected rows", imbalance_ratio: "Imbalance (largest / smallest class)",
  label_shape: "Label shape", answer_column: "Answer column",
};

function reportSections(report) {
  const parts = [];
  const plain = Object.entries(REPORT_NAMES).filter(([k]) => report[k] !== undefined && report[k] !== null)
    .map(([k, name]) => [name, report[k]]);
  if (plain.length) parts.push(facts(plain));
  if (report.inference && Object.keys(report.inference).length) {
    parts.push(h("h3", {}, "How the columns were chosen"),
      h("ul", { class: "reasons" }, Object.entries(report.inference).map(([what, why]) =>
        h("li", {}, h("strong", {}, what.replace(/_/g, " ")), ": ", why))));
  }
  if (report.split) {
    const sp = report.split;
    parts.push(h("h3", {}, "Validation split"), h("p", {}, sp.method === "validation_file"
      ? "From the validation file that was uploaded."
      : `${sp.method} split: ${Math.round((sp.validation_split || 0) * 100)}% of the training file held out (seed ${sp.seed}).`));
  }
  if (report.text_length_chars) {
    const t = report.text_length_chars;
    parts.push(h("h3", {}, "Text length (characters)"), table(null, Object.keys(t), [Object.values(t)]));
  }
  const dup = report.duplicates;
  if (dup) {
    parts.push(h("h3", {}, "Duplicates"), h("p", {}, dup.count
      ? `${dup.count} rows repeat a text (${dup.distinct_texts_repeated} distinct texts); ${dup.conflicting_labels} with conflicting labels.`
      : "No text appears twice."));
  }
  if (report.overlap_with_train && Object.keys(report.overlap_with_train).length) {
    parts.push(h("h3", {}, "Overlap with the training split"), table(null, ["split", "texts also in train"],
      Object.entries(report.overlap_with_train).map(([split, n]) => [split, n])));
  }
  if (report.rejected_by_reason && Object.keys(report.rejected_by_reason).length) {
    parts.push(h("h3", {}, "Rejections by reason"), table(null, ["reason", "rows"],
      Object.entries(report.rejected_by_reason).map(([why, n]) => [why, n]), { text: ["reason"] }));
  }
  if (report.files) {
    parts.push(h("h3", {}, "Files read"), table(null, ["split", "field", "name", "format", "encoding", "rows read"],
      Object.entries(report.files).map(([split, f]) => [split, f.field, f.name, f.format, f.encoding, f.rows_read]),
      { text: ["name"] }));
  }
  return parts;
}

async function datasetPage(id) {
  const [ds, jobs] = await Promise.all([api(`/datasets/${encodeURIComponent(id)}`),
                                        api(`/jobs?dataset_id=${encodeURIComponent(id)}`)]);
  const distribution = ds.label_distribution || {};
  const report = ds.report || {};
  const rejected = ds.rejected_rows || [];
  show(`Dataset ${ds.name}`,
    facts([["id", ds.id], ["task", ds.task], ["format", `${ds.format} (${ds.encoding})`],
      ["text column", ds.text_column], ["label columns", ds.label_columns], ["labels", ds.labels],
      ["rows", ds.num_rows], ["rejected rows", rejected.length], ["created", when(ds.created_at)]]),
    h("section", { "aria-labelledby": "warn-h" }, h("h2", { id: "warn-h" }, `Warnings (${(ds.warnings || []).length})`),
      (ds.warnings || []).length ? h("ul", { class: "warnings" }, ds.warnings.map((w) => h("li", {}, w)))
        : h("p", { class: "muted" }, "None.")),
    ds.task === "chat" ? null : h("section", { "aria-labelledby": "dist-h" }, h("h2", { id: "dist-h" }, "Label distribution"),
      Object.keys(distribution).length ? h("div", { class: "bar-groups" },
        Object.entries(distribution).map(([split, counts]) => bars(split, counts)))
        : h("p", { class: "muted" }, "No labels.")),
    h("section", { "aria-labelledby": "rej-h" }, h("h2", { id: "rej-h" }, "Rejected rows"),
      rejected.length ? table(rejected.length > 50 ? `The first 50 of ${rejected.length}` : null,
        ["file", "row", "reason"], rejected.slice(0, 50).map((r) => [r.field || "file", r.row, r.reason]),
        { text: ["reason"] })
        : h("p", { class: "muted" }, "None: every row was kept.")),
    h("section", { "aria-labelledby": "report-h", class: "report" }, h("h2", { id: "report-h" }, "Validation report"),
      Object.keys(report).length ? reportSections(report) : h("p", { class: "muted" }, "No further findings.")),
    h("section", { "aria-labelledby": "preview-h" }, h("h2", { id: "preview-h" }, "Preview"),
      (ds.preview || []).length ? table(null, Object.keys(ds.preview[0]), ds.preview.map((row) => Object.values(row)),
        { text: Object.keys(ds.preview[0]) }) : h("p", { class: "muted" }, "No rows to show.")),
    h("section", { "aria-labelledby": "dsjobs-h" }, h("h2", { id: "dsjobs-h" }, `Jobs on it (${jobs.count})`),
      jobs.data.length ? table(null, ["job", "state", "best", "created"], jobs.data.map((j) =>
        [link(`#/jobs/${j.id}`, j.id), badge(j.state),
         j.best_metric === null ? "–" : `${j.best_metric_name} ${fmt(j.best_metric)}`, when(j.created_at)]))
        : h("p", { class: "muted" }, "None yet.")));
  return null;
}

function experimentSections(exp) {
  const metric = exp.primary_metric;
  const rec = exp.recommendation;
  const status = h("section", { "aria-live": "polite", "aria-labelledby": "exp-status-h" },
    h("h2", { id: "exp-status-h", class: "visually-hidden" }, "Status"),
    h("progress", { max: 1, value: exp.progress, "aria-label": `progress ${Math.round(exp.progress * 100)}%` }),
    facts([["state", badge(exp.state)], ["progress", `${Math.round(exp.progress * 100)}%`],
      ["dataset", link(`#/datasets/${exp.dataset_id}`, exp.dataset_id)], ["task", exp.task],
      ["primary metric", `${metric} (${exp.greater_is_better ? "higher" : "lower"} is better)`],
      ["models", exp.base_models.length], ["created", when(exp.created_at)]]));
  const recommendation = h("section", { "aria-labelledby": "rec-h" }, h("h2", { id: "rec-h" }, "Recommendation"),
    rec ? h("div", { class: `recommendation ${rec.beats_tfidf === false ? "warn" : ""}`, "data-final": rec.final },
      h("p", {}, rec.message),
      facts([["model", rec.model_id || "–"], [`${metric} on validation`, rec.validation],
        rec.test !== null ? [`${metric} on test`, rec.test] : null,
        rec.tfidf_validation !== null ? ["TF-IDF baseline", rec.tfidf_validation] : null,
        rec.margin_over_tfidf !== null ? ["margin over TF-IDF", rec.margin_over_tfidf] : null]))
      : h("p", { class: "muted" }, TERMINAL.has(exp.state) ? "No job succeeded: nothing to recommend."
        : "Made as soon as a job has an evaluation."));
  const jobs = h("section", { "aria-labelledby": "exp-jobs-h" }, h("h2", { id: "exp-jobs-h" }, `Jobs (${exp.jobs.length})`),
    table(null, ["base model", "job", "state", "progress", "step", "ETA", "model"], exp.jobs.map((j) => [
      j.base_model, link(`#/jobs/${j.job_id}`, j.job_id), badge(j.state),
      h("progress", { max: 1, value: j.progress, "aria-label": `${Math.round(j.progress * 100)}%` }),
      j.total_steps ? `${j.step} / ${j.total_steps}` : j.step,
      j.state === "running" && j.eta_s !== null ? duration(j.eta_s) : "–", j.model_id || (j.error ? j.error : "–")]),
    { text: ["base model", "model"], numeric: ["step", "ETA"] }));
  const rows = exp.leaderboard || [];
  const board = h("section", { "aria-labelledby": "board-h" }, h("h2", { id: "board-h" }, "Leaderboard"),
    rows.length ? table(`Ranked by ${metric} on validation; a tie goes to the faster, then the smaller model.`,
      ["rank", "name", "kind", metric, `test ${metric}`, "training time", "samples/s", "parameters", "fit"],
      rows.map((r) => [r.rank ?? "–", r.kind === "model" && r.job_id ? link(`#/jobs/${r.job_id}`, r.name) : r.name,
        r.kind, r.validation[metric] ?? "–", (r.test || {})[metric] ?? "–",
        r.training_time_s === null ? "–" : duration(r.training_time_s),
        r.samples_per_second ?? "–", r.parameters ?? "–", r.fit || "–"]),
      { text: ["name"], numeric: [metric, `test ${metric}`, "training time", "samples/s", "parameters"] })
      : h("p", { class: "muted" }, "No job has been evaluated yet."));
  return [status, recommendation, board, jobs];
}

async function experimentPage(id) {
  const path = `/experiments/${encodeURIComponent(id)}`;
  const exp = await api(path);
  const body = h("div", { "data-refreshes": "0" });
  const heading = show(`Experiment ${exp.name || exp.id}`, body);
  heading.append(" ", badge(exp.state));
  const render = (e) => {
    body.replaceChildren(...experimentSections(e).filter(Boolean));
    heading.lastChild.replaceWith(badge(e.state));
  };
  render(exp);
  if (TERMINAL.has(exp.state)) return null;
  // No event stream for an experiment: its jobs' states are read again every few seconds
  // (these GETs are logged at DEBUG by the server) until every job has ended.
  let timer = null;
  let stopped = false;
  const poll = async () => {
    try {
      const next = await api(path);
      if (stopped) return;
      body.dataset.refreshes = String(Number(body.dataset.refreshes) + 1);
      render(next);
      if (!TERMINAL.has(next.state)) timer = setTimeout(poll, EXPERIMENT_REFRESH_MS);
    } catch (err) {
      if (!stopped) timer = setTimeout(poll, EXPERIMENT_REFRESH_MS);
    }
  };
  timer = setTimeout(poll, EXPERIMENT_REFRESH_MS);
  return { stop: () => { stopped = true; clearTimeout(timer); } };
}

// ---- routing -------------------------------------------------------------------------------

let current = null;

async function route({ refresh = false } = {}) {
  if (current) current.stop();
  current = null;
  const match = (location.hash || "#/").match(/^#\/(jobs|datasets|experiments|models)\/([\w.-]+)(?:\?(.*))?$/);
  const pages = { jobs: jobPage, datasets: datasetPage, experiments: experimentPage,
                  models: (id) => chatModelPage(id, new URLSearchParams(match[3] || "")) };
  try {
    current = match ? await pages[match[1]](match[2]) : await overviewPage();
    const heading = main().querySelector("h1");
    // Move focus to the new page's title (keyboard and screen-reader users land on it), but
    // not on the overview's timed refresh, which would pull focus away from the user.
    if (heading && !refresh) heading.focus({ preventScroll: true });
    document.title = heading ? `${heading.textContent} · tuneserve` : "tuneserve";
  } catch (err) {
    showError(err);
  }
}

function setUpKeyForm() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  input.value = localStorage.getItem(KEY_STORAGE) || "";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) localStorage.setItem(KEY_STORAGE, input.value.trim());
    document.getElementById("key-box").open = false;
    route();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    input.value = "";
    route();
  });
}

window.addEventListener("hashchange", () => route());
document.addEventListener("DOMContentLoaded", () => { setUpKeyForm(); route(); });
// Keyboard: "g" then "o" goes to the overview from anywhere (links and buttons do the rest).
let lastKey = "";
document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement || event.ctrlKey || event.metaKey || event.altKey) return;
  if (lastKey === "g" && event.key === "o") location.hash = "#/";
  lastKey = event.key;
});
