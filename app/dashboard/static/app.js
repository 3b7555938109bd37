// tuneserve dashboard: a client of the JSON API, like the CLI. No framework, no CDN.
// Pages (the URL hash): #/ overview, #/jobs/<id> a job with live curves, #/datasets/<id>.
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

function table(caption, columns, rows, opts = {}) {
  const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: opts.numeric?.includes(c) ? "num" : null }, c)));
  const body = rows.map((cells) => h("tr", {}, cells.map((cell, i) => {
    if (cell instanceof Node) return h("td", { class: i === 0 ? "id" : null }, cell);
    const numeric = typeof cell === "number";
    return h("td", { class: numeric ? "num" : (opts.text?.includes(columns[i]) ? "text" : null) }, fmt(cell));
  })));
  return h("div", { class: "scroll" }, h("table", {}, caption ? h("caption", {}, caption) : null,
    h("thead", {}, head), h("tbody", {}, body)));
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
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
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
          if (event.id) lastId = event.id;
          if (event.data) onEvent(event.event, JSON.parse(event.data));
          if (event.event === "end") return;
        }
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
function lineChart(id, title, series, { yFormat = fmt } = {}) {
  const W = 600, H = 250, L = 58, R = 14, T = 12, B = 34;
  const drawn = series.map((sr, i) => ({ ...sr, color: COLORS[i % COLORS.length],
    points: sr.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)) }))
    .filter((sr) => sr.points.length);
  const legend = drawn.map((sr) => h("span", { class: "legend" },
    h("span", { class: "swatch", style: `background:${sr.color}` }), sr.name));
  const figure = h("figure", { class: "chart", "data-chart": id }, h("figcaption", {}, title, legend));
  if (!drawn.length) {
    figure.append(h("p", { class: "muted" }, "No points yet."));
    return figure;
  }
  const xs = drawn.flatMap((sr) => sr.points.map((p) => p[0]));
  const ys = drawn.flatMap((sr) => sr.points.map((p) => p[1]));
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
  const pad = (y1 - y0) * 0.06;
  y0 -= pad; y1 += pad;
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const summary = drawn.map((sr) => {
    const first = sr.points[0], last = sr.points[sr.points.length - 1];
    return `${sr.name}: ${sr.points.length} points, ${yFormat(first[1])} at step ${first[0]} to ${yFormat(last[1])} at step ${last[0]}`;
  }).join("; ");
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}. ${summary}` },
    s("title", {}, `${title}. ${summary}`));
  for (const t of niceTicks(y0, y1)) {
    svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: py(t), y2: py(t) }));
    svg.append(s("text", { x: L - 6, y: py(t) + 4, "text-anchor": "end" }, yFormat(t)));
  }
  for (const t of niceTicks(x0, x1, 6).filter((t) => Number.isInteger(t))) {
    svg.append(s("text", { x: px(t), y: H - B + 16, "text-anchor": "middle" }, t));
  }
  svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  svg.append(s("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  svg.append(s("text", { x: W - R, y: H - 4, "text-anchor": "end" }, "step"));
  for (const sr of drawn) {
    const d = sr.points.map(([x, y], i) => `${i ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
    svg.append(s("path", { class: "series", d, stroke: sr.color, "data-series": sr.name,
                           "data-points": sr.points.length }));
    if (sr.points.length < 3) {
      for (const [x, y] of sr.points) svg.append(s("circle", { cx: px(x), cy: py(y), r: 3, fill: sr.color }));
    }
  }
  figure.append(svg);
  return figure;
}

// ---- pages ---------------------------------------------------------------------------------

const main = () => document.getElementById("main");

function show(title, ...content) {
  const heading = h("h1", { tabindex: "-1" }, title);
  main().replaceChildren(heading, ...content);
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
  const [datasets, jobs, models] = await Promise.all([api("/datasets"), api("/jobs?limit=50"), api("/models")]);
  show("Overview",
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
        models.data.map((m) => [h("span", { class: "mono" }, m.id), m.task, m.base_model, fmt(m.labels),
          m.job_id ? link(`#/jobs/${m.job_id}`, m.job_id) : "–", when(m.created_at)]), { text: ["base model"] })
        : h("p", { class: "muted" }, "No tuned models yet.")));
  // Keep the list current while something is queued or running.
  const active = jobs.data.some((j) => !TERMINAL.has(j.state));
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
  const charts = h("section", { "aria-labelledby": "curves-h" }, h("h2", { id: "curves-h" }, "Curves"),
    h("div", { class: "charts" },
      lineChart("loss", "Loss", [
        { name: "train loss", points: train.map((p) => [p.step, p.loss]) },
        { name: "eval loss", points: evals.map((p) => [p.step, p.loss]) }]),
      lineChart("learning-rate", "Learning rate", [
        { name: "learning rate", points: train.map((p) => [p.step, p.learning_rate]) }],
        { yFormat: (v) => (v === 0 ? "0" : Number(v).toExponential(1)) }),
      lineChart("eval", "Evaluation", metricNames.map((m) => ({ name: m, points: evals.map((p) => [p.step, p[m]]) })))));

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
  const confusion = h("section", { "aria-labelledby": "cm-h" }, h("h2", { id: "cm-h" }, "Confusion matrix"),
    cm ? confusionTable(cm, reference.step) : h("p", { class: "muted" }, "No evaluation with a confusion matrix yet."),
    reference && reference.per_class ? table("Per class", ["label", "precision", "recall", "f1", "support"],
      Object.entries(reference.per_class).map(([label, v]) => [label, v.precision, v.recall, v.f1, v.support])) : null);

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
  return [status, charts, batch, confusion, comparison, log];
}

function confusionTable(cm, step) {
  const max = Math.max(1, ...cm.matrix.flat());
  const head = h("tr", {}, h("th", { scope: "col" }, "true \\ predicted"), cm.labels.map((l) => h("th", { scope: "col" }, l)));
  const body = cm.matrix.map((row, i) => h("tr", {}, h("th", { scope: "row" }, cm.labels[i]), row.map((n) => {
    const share = n / max;
    return h("td", { class: "cm num", style: `background: rgba(31, 95, 191, ${(share * 0.85).toFixed(3)});` +
      (share > 0.5 ? "color:#fff;" : "") }, String(n));
  })));
  return h("div", { class: "scroll" }, h("table", { class: "confusion" },
    h("caption", {}, `Validation at step ${step} (the best evaluation): rows are true labels, columns predicted.`),
    h("thead", {}, head), h("tbody", {}, body)));
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
    body.replaceChildren(...jobSections(state));
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

async function datasetPage(id) {
  const [ds, jobs] = await Promise.all([api(`/datasets/${encodeURIComponent(id)}`),
                                        api(`/jobs?dataset_id=${encodeURIComponent(id)}`)]);
  const distribution = ds.label_distribution || {};
  const labels = [...new Set(Object.values(distribution).flatMap((split) => Object.keys(split)))].sort();
  const report = ds.report || {};
  show(`Dataset ${ds.name}`,
    facts([["id", ds.id], ["task", ds.task], ["format", `${ds.format} (${ds.encoding})`],
      ["text column", ds.text_column], ["label columns", ds.label_columns], ["labels", ds.labels],
      ["rows", ds.num_rows], ["rejected rows", (ds.rejected_rows || []).length], ["created", when(ds.created_at)]]),
    h("section", { "aria-labelledby": "warn-h" }, h("h2", { id: "warn-h" }, `Warnings (${(ds.warnings || []).length})`),
      (ds.warnings || []).length ? h("ul", {}, ds.warnings.map((w) => h("li", {}, w)))
        : h("p", { class: "muted" }, "None.")),
    h("section", { "aria-labelledby": "dist-h" }, h("h2", { id: "dist-h" }, "Label distribution"),
      table(null, ["split", ...labels], Object.entries(distribution).map(([split, counts]) =>
        [split, ...labels.map((l) => counts[l] ?? 0)]))),
    h("section", { "aria-labelledby": "rej-h" }, h("h2", { id: "rej-h" }, "Rejected rows"),
      (ds.rejected_rows || []).length ? table(ds.rejected_rows.length > 50 ? "The first 50" : null, ["row", "reason"],
        ds.rejected_rows.slice(0, 50).map((r) => [r.row, r.reason]), { text: ["reason"] })
        : h("p", { class: "muted" }, "None: every row was kept.")),
    h("section", { "aria-labelledby": "report-h" }, h("h2", { id: "report-h" }, "Validation report"),
      Object.keys(report).length ? facts(Object.entries(report).map(([k, v]) =>
        [k, v !== null && typeof v === "object" ? h("pre", {}, JSON.stringify(v, null, 2)) : v]))
        : h("p", { class: "muted" }, "No further findings.")),
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

// ---- routing -------------------------------------------------------------------------------

let current = null;

async function route({ refresh = false } = {}) {
  if (current) current.stop();
  current = null;
  const match = (location.hash || "#/").match(/^#\/(jobs|datasets)\/([\w.-]+)$/);
  try {
    current = match ? await (match[1] === "jobs" ? jobPage(match[2]) : datasetPage(match[2])) : await overviewPage();
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
