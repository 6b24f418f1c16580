// llmtap dashboard: the page reads its filters from the URL, fetches the view's JSON with them,
// and draws it. Everything from the database is put on the page as text (textContent), never HTML.
/* global uPlot */

const DEFAULTS = { since: "24h" }; // since=all: no lower bound
const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

function params() {
  const p = new URLSearchParams(location.search);
  for (const [k, v] of Object.entries(DEFAULTS)) if (!p.has(k)) p.set(k, v);
  if (!p.has("tz")) p.set("tz", browserZone);
  return p;
}

function query(p) {
  const q = new URLSearchParams(p);
  if (q.get("since") === "all") q.delete("since");
  return q;
}

// Exact money: decimal strings with up to 9 places, added as integers of 1e-9 USD.
function addMoney(a, b) {
  const nano = (s) => {
    const [whole, frac = ""] = String(s ?? "0").split(".");
    const sign = whole.startsWith("-") ? -1n : 1n;
    return sign * (BigInt(whole.replace("-", "") || "0") * 1000000000n + BigInt((frac + "000000000").slice(0, 9)));
  };
  const n = nano(a) + nano(b);
  const abs = n < 0n ? -n : n;
  return `${n < 0n ? "-" : ""}${abs / 1000000000n}.${String(abs % 1000000000n).padStart(9, "0")}`;
}

function navigate(p) {
  history.pushState(null, "", `${location.pathname}?${p}`);
  load();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

// Stable colours: a model or provider keeps its colour across pages, reloads and filters.
function colour(name) {
  let h = 0;
  for (const ch of String(name)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${h % 360} 60% 48%)`;
}

const int = new Intl.NumberFormat("en-US");
const money = (s) => (s == null ? "—" : `$${s}`);

function card(label, value, note) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label),
    el("div", { class: "value", "data-card": label }, value), el("div", { class: "note" }, note ?? ""));
}

function renderCards(c) {
  const box = document.getElementById("cards");
  const tokens = Number(c.input_tokens ?? 0) + Number(c.output_tokens ?? 0);
  box.replaceChildren(
    card("Calls", int.format(c.calls ?? 0)),
    card("Tokens", int.format(tokens), `${int.format(c.input_tokens ?? 0)} in / ${int.format(c.output_tokens ?? 0)} out`),
    card("Cost", money(c.cost_usd), c.unpriced ? `unpriced: ${c.unpriced} calls` : ""),
    card("Error rate", c.error_pct == null ? "—" : `${c.error_pct} %`, `${int.format(c.errors ?? 0)} errors`),
    card("Cache hit rate", c.cache_hit_pct == null ? "—" : `${c.cache_hit_pct} %`, "of cache lookups"),
    card("Cost saved", money(c.cost_saved_usd), `${int.format(c.cache_hits ?? 0)} cache hits`),
  );
}

function column(table, name) {
  const i = table.columns.indexOf(name);
  return (row) => row[i];
}

// Values per bucket of the axis; null where the bucket has no row (a gap on the chart).
function aligned(axis, table, name, where = () => true) {
  const t = column(table, "t"), v = column(table, name);
  const byT = new Map();
  for (const row of table.rows) if (where(row)) byT.set(t(row), (byT.get(t(row)) ?? 0) + Number(v(row) ?? 0));
  return axis.map((x) => (byT.has(x) ? byT.get(x) : null));
}

const charts = [];

function plot(name, series, data, tz, extra = {}) {
  const box = document.querySelector(`[data-chart="${name}"] .plot`);
  box.replaceChildren();
  const width = Math.max(320, box.clientWidth || 480);
  const opts = {
    width, height: 220, tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), tz),
    series: [{}, ...series], scales: { x: { time: true } }, legend: { live: true }, ...extra,
  };
  charts.push(new uPlot(opts, data, box));
}

function renderCharts(v) {
  while (charts.length) charts.pop().destroy();
  const { axis, tz } = v;
  const model = column(v.cost_stacked, v.stack.column);
  const models = [...new Set(v.cost_stacked.rows.map(model))];
  const calls = aligned(axis, v.calls, "calls");
  // Cost stacked by model: each series is the sum of itself and those below it; a bucket with no
  // calls at all stays a gap.
  let below = axis.map(() => 0);
  const stacked = [], exact = [];
  for (const m of models) {
    const own = aligned(axis, v.cost_stacked, "cost_usd", (r) => model(r) === m);
    const strings = new Map(v.cost_stacked.rows.filter((r) => model(r) === m)
      .map((r) => [column(v.cost_stacked, "t")(r), column(v.cost_stacked, "cost_usd")(r)]));
    below = below.map((b, i) => (calls[i] == null ? b : b + (own[i] ?? 0)));
    stacked.push(below.map((b, i) => (calls[i] == null ? null : b)));
    exact.push(axis.map((x) => strings.get(x) ?? null));
  }
  const costSeries = models.map((m, i) => ({
    label: m ?? "(none)", stroke: colour(m), fill: colour(m).replace("48%)", "48% / 0.35)"),
    value: (u, _v, _si, idx) => (idx == null ? "" : money(exact[i][idx] ?? "0")),
  }));
  const bands = models.slice(1).map((_, i) => ({ series: [i + 2, i + 1] }));
  plot("cost", costSeries.length ? costSeries : [{ label: "cost", stroke: "#999" }],
    [axis, ...(stacked.length ? stacked : [axis.map(() => null)])], tz, { bands });
  plot("calls", [{ label: "calls", stroke: "#4c78a8" }, { label: "errors", stroke: "#d62728" }],
    [axis, calls, aligned(axis, v.calls, "errors").map((e, i) => (calls[i] == null ? null : e))], tz);
  const lat = ["latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "ttft_p50_ms"];
  const shades = ["#1f77b4", "#ff7f0e", "#d62728", "#2ca02c"];
  // Over millions of calls the percentiles come from a sample of them (views.LATENCY_ROWS).
  const approx = document.querySelector('[data-chart="latency"] .approx');
  approx.hidden = v.latency_sample_pct == null;
  approx.textContent = approx.hidden ? "" : `approximate: from ${v.latency_sample_pct}% of the calls`;
  plot("latency", lat.map((n, i) => ({ label: n.replace(/_ms$/, ""), stroke: shades[i] })),
    [axis, ...lat.map((n) => aligned(axis, v.latency, n))], tz);
  plot("tokens", [{ label: "input", stroke: "#9467bd" }, { label: "output", stroke: "#8c564b" }],
    [axis, aligned(axis, v.calls, "input_tokens"), aligned(axis, v.calls, "output_tokens")], tz);
}

// A top list: bars by cost, each value a button that filters every page on it.
function fillTop(box, label, header, rows, pick) {
  box.querySelector("figcaption").textContent = label;
  const table = box.querySelector("table");
  const max = Math.max(...rows.map((r) => Number(r.cost ?? 0)), 0) || 1;
  table.replaceChildren(el("tr", {}, el("th", {}, header), el("th", {}, "calls"), el("th", {}, "cost"), el("th", {}, "")));
  for (const r of rows) {
    const button = el("button", { class: "filter", type: "button", "data-value": r.value ?? "" }, r.value ?? "(none)");
    button.addEventListener("click", () => { if (r.value != null) { const p = params(); pick(p, r.value); navigate(p); } });
    const width = (100 * Number(r.cost ?? 0)) / max;
    table.append(el("tr", {}, el("td", {}, button), el("td", { class: "num" }, int.format(r.calls)),
      el("td", { class: "num" }, money(r.cost)),
      el("td", { style: "width:40%" }, el("div", { class: "bar", style: `width:${width}%;background:${colour(r.value)}` }))));
  }
}

// The filter a value of a dimension (model, user, property:NAME, score:NAME) stands for.
function filterOn(by) {
  const [kind, name] = by.split(":");
  if (kind === "property" || kind === "score") return (p, v) => p.append(kind, `${name}=${v}`);
  return (p, v) => p.append(kind, v);
}

function renderTops(v) {
  const value = column(v.cost_stacked, v.stack.column), cost = column(v.cost_stacked, "cost_usd");
  const calls = column(v.cost_stacked, "calls");
  const totals = new Map();
  for (const r of v.cost_stacked.rows) {
    const t = totals.get(value(r)) ?? { value: value(r), calls: 0, cost: "0" };
    t.calls += calls(r);
    t.cost = addMoney(t.cost, cost(r));
    totals.set(value(r), t);
  }
  const rows = [...totals.values()].sort((a, b) => Number(b.cost) - Number(a.cost)).slice(0, 10);
  const by = v.stack.by;
  fillTop(document.querySelector('[data-top="models"]'), `Top ${by} by cost`, by, rows, filterOn(by));
}

function renderFilters(p) {
  const form = document.getElementById("filters");
  const since = p.get("since");
  if (![...form.since.options].some((o) => o.value === since)) form.since.append(el("option", { value: since }, since));
  form.since.value = since;
  const zones = [...new Set([p.get("tz"), browserZone, "UTC"])];
  form.tz.replaceChildren(...zones.map((z) => el("option", { value: z }, z)));
  form.tz.value = p.get("tz");
  const chips = document.getElementById("chips");
  chips.replaceChildren();
  for (const key of ["provider", "model", "user", "session", "property", "rating", "score"]) {
    for (const value of p.getAll(key)) {
      const chip = el("button", { class: "chip", type: "button", title: "remove this filter" }, `${key}: ${value} ×`);
      chip.addEventListener("click", () => {
        const q = params();
        const kept = q.getAll(key).filter((x) => x !== value);
        q.delete(key);
        for (const x of kept) q.append(key, x);
        navigate(q);
      });
      chips.append(chip);
    }
  }
}

const page = () => location.pathname.split("/")[2] || "overview";
const REPORT_PAGES = {
  sessions: () => [{ title: "Sessions, most recent first, with their Helicone-Session-Path trees", report: "sessions" }],
  users: () => [{ title: "Cost by user", report: "cost", by: "user", overTime: "user" },
    { title: "Latency by user", report: "latency", by: "user" }],
  properties: (key) => (key ? [{ title: `Cost by property ${key}`, report: "cost", by: `property:${key}`, overTime: `property:${key}` },
    { title: `Latency by property ${key}`, report: "latency", by: `property:${key}` }] : []),
  cache: () => [{ title: "Cache by day: hits and misses", report: "cache", by: "day", chart: ["hits", "misses"] },
    { title: "Cache by model", report: "cache", by: "model" }, { title: "Cache by day and model", report: "cache", by: "day,model" }],
};
const MONEY = new Set(["cost_usd", "cost_saved_usd"]);
const FILTERABLE = { user_id: "user", user: "user", model: "model", provider: "provider", session_id: "session" };

async function getJSON(url) {
  const status = document.getElementById("status");
  const reply = await fetch(url);
  const body = await reply.json();
  if (!reply.ok) {
    status.className = "error";
    status.textContent = body.error?.message ?? `error ${reply.status}`;
    return null;
  }
  return body;
}

async function stackChoices(p) {
  const select = document.getElementById("stack");
  if (!select.options.length) {
    const keys = (await getJSON("/api/ui/property-keys")) ?? [];
    const scores = (await getJSON("/api/ui/score-names")) ?? [];
    const choices = ["model", "provider", "user", ...keys.map((k) => `property:${k}`), ...scores.map((n) => `score:${n}`)];
    select.replaceChildren(...choices.map((c) => el("option", { value: c }, c)));
    select.addEventListener("change", () => { const q = params(); q.set("stack", select.value); navigate(q); });
  }
  const wanted = p.get("stack") ?? "model";
  if (![...select.options].some((o) => o.value === wanted)) select.append(el("option", { value: wanted }, wanted));
  select.value = wanted;
}

// More top lists beside the stacked one: each is a `cost --by DIM --limit 10` report, fetched
// after the charts are drawn so they do not wait for it.
async function renderTopReport(box, p, by, label) {
  const q = query(p);
  for (const own of ["q", "sql", "key", "before", "stack"]) q.delete(own);
  q.set("by", by);
  q.set("limit", "10");
  const body = await getJSON(`/api/ui/report/cost?${q}`);
  if (!body) return;
  const at = (name) => body.columns.indexOf(name);
  const rows = body.rows.map((r) => ({ value: r[0], calls: r[at("calls")], cost: r[at("cost_usd")] }));
  fillTop(box, label, body.columns[0], rows, filterOn(by));
}

async function loadOverview(p) {
  await stackChoices(p);
  const body = await getJSON(`/api/ui/overview?${query(p)}`);
  if (!body) return;
  renderCards(body.cards);
  renderCharts(body);
  document.body.dataset.charts = "1";  // every chart drawn (what scripts/bench_ui.py times)
  renderTops(body);
  const keys = [...document.getElementById("stack").options].map((o) => o.value).filter((v) => v.startsWith("property:"));
  const tops = [renderTopReport(document.querySelector('[data-top="users"]'), p, "user", "Top users by cost")];
  const propBox = document.querySelector('[data-top="property"]');
  propBox.hidden = !keys.length;
  if (keys.length) {
    const key = keys[0].slice("property:".length);
    tops.push(renderTopReport(propBox, p, keys[0], `Top values of property ${key} by cost`));
  }
  await Promise.all(tops);
  showSQL(body.sql);
  document.getElementById("status").textContent = `${body.axis.length} ${body.bucket} buckets, ${body.tz}`;
}

function showSQL(sql) {
  const text = typeof sql === "string" ? sql : Object.entries(sql).map(([k, s]) => `-- ${k}\n${s}`).join("\n\n");
  document.querySelector(`main[data-page="${page()}"] .sql pre`).textContent = text;
}

// --- requests: the log, newest first, keyset-paged, and a drawer per call -----------------------

let next = null;

function badge(text, kind) {
  return el("span", { class: `badge ${kind ?? ""}` }, text);
}

function logRow(columns, r) {
  const f = Object.fromEntries(columns.map((c, i) => [c, r[i]]));
  const failed = f.error != null || f.status == null || f.status >= 400;
  const when = new Date(f.created_at).toLocaleString("en-GB", { timeZone: params().get("tz") });
  const tr = el("tr", { "data-id": f.request_id },
    el("td", {}, when), el("td", {}, `${f.provider} / ${f.model ?? "?"}${f.streamed ? " (stream)" : ""}`),
    el("td", {}, badge(f.status ?? "no answer", failed ? "err" : "")),
    el("td", {}, f.cache_status ? badge(f.cache_status, f.cache_status === "HIT" ? "hit" : "") : ""),
    el("td", { class: "num" }, f.input_tokens == null ? "" : int.format(f.input_tokens)),
    el("td", { class: "num" }, f.output_tokens == null ? "" : int.format(f.output_tokens)),
    el("td", { class: "num" }, money(f.cost_usd)),
    el("td", { class: "num" }, f.latency_ms == null ? "" : Math.round(f.latency_ms)),
    el("td", {}, f.user_id ?? ""));
  tr.addEventListener("click", () => openDrawer(f.request_id, f.created_at));
  return tr;
}

async function loadRequests(p, append = false) {
  const q = query(p);
  if (append && next) q.set("before", next);
  const body = await getJSON(`/api/ui/requests?${q}`);
  if (!body) return;
  const tbody = document.querySelector("#log tbody");
  const rows = body.rows.map((r) => logRow(body.columns, r));
  if (append) tbody.append(...rows);
  else tbody.replaceChildren(...rows);
  next = body.next;
  document.getElementById("more").hidden = !next;
  showSQL(body.sql);
  document.getElementById("status").textContent = `${tbody.children.length} calls shown, newest first`;
}

function isStream(text) {
  return /^(data|event):/.test(text) || text.includes("\n\ndata:");
}

function showBody(box, body, id, which) {
  box.replaceChildren();
  if (body == null) {
    box.append(el("p", {}, "not stored (Helicone-Omit or no body)"));
    return;
  }
  const size = el("p", {}, `${int.format(body.size)} characters `);
  const link = el("a", { href: `/api/ui/request/${encodeURIComponent(id)}/body/${which}`, download: "" }, "download");
  size.append(link);
  box.append(size);
  if (body.text == null) {  // a large body: its head and its tail, never the whole thing
    box.append(el("pre", {}, body.head), el("p", {}, "…"), el("pre", {}, body.tail));
    return;
  }
  if (isStream(body.text)) {
    const events = body.text.split(/\r?\n\r?\n/).filter((e) => e.trim());
    const list = el("ol", { class: "events" }, ...events.slice(0, 500).map((e) => el("li", {}, e)));
    box.append(el("p", {}, `${events.length} events`), list);
    return;
  }
  let parsed = null;
  try { parsed = JSON.parse(body.text); } catch { /* not JSON: shown as it is */ }
  const views = { raw: () => el("pre", {}, body.text) };
  if (parsed !== null) views.json = () => el("pre", {}, JSON.stringify(parsed, null, 2));
  const turns = parsed && chatTurns(parsed);
  if (turns && turns.length) {
    views.chat = () => el("div", { class: "chat" }, ...turns.map(([role, text]) =>
      el("div", { class: `turn ${role}` }, el("strong", {}, role), el("div", {}, text))));
  }
  const shown = el("div", {});
  const tabs = el("p", { class: "tabs" });
  for (const name of ["chat", "json", "raw"].filter((n) => views[n])) {
    const button = el("button", { type: "button", "data-view": name }, name);
    button.addEventListener("click", () => {
      shown.replaceChildren(views[name]());
      for (const b of tabs.children) b.toggleAttribute("aria-pressed", b === button);
    });
    tabs.append(button);
  }
  box.append(tabs, shown);
  tabs.firstChild.click();
}

// The conversation in a request or response body, as (role, text) pairs, for the providers' shapes:
// OpenAI chat (messages, choices), Anthropic (messages, content blocks), Gemini (contents,
// candidates). Anything else has no chat view.
function chatTurns(doc) {
  const text = (c) => (typeof c === "string" ? c : Array.isArray(c)
    ? c.map((p) => p.text ?? (p.type ? `[${p.type}]` : "")).join("") : c == null ? "" : JSON.stringify(c));
  const turns = [];
  if (typeof doc.system === "string" || Array.isArray(doc.system)) turns.push(["system", text(doc.system)]);
  for (const m of doc.messages ?? []) turns.push([m.role ?? "?", text(m.content)]);
  for (const c of doc.contents ?? []) turns.push([c.role ?? "user", text(c.parts)]);
  for (const ch of doc.choices ?? []) if (ch.message) turns.push([ch.message.role ?? "assistant", text(ch.message.content)]);
  if (doc.type === "message" && Array.isArray(doc.content)) turns.push([doc.role ?? "assistant", text(doc.content)]);
  for (const cand of doc.candidates ?? []) if (cand.content) turns.push(["model", text(cand.content.parts)]);
  return turns;
}

async function openDrawer(id, at) {
  const body = await getJSON(`/api/ui/request/${encodeURIComponent(id)}${at ? `?at=${encodeURIComponent(at)}` : ""}`);
  if (!body) return;
  const r = body.request;
  const drawer = document.getElementById("drawer");
  drawer.querySelector("h2").textContent = `${r.provider} / ${r.model ?? "?"}`;
  const fields = [
    ["request id", r.request_id], ["time", r.created_at], ["endpoint", r.host ? `${r.method} ${r.host}${r.path}` : null],
    ["status", r.status ?? "no answer"], ["error", r.error], ["latency", r.latency_ms == null ? null : `${r.latency_ms} ms`],
    ["time to first token", r.ttft_ms == null ? null : `${r.ttft_ms} ms`],
    ["tokens", `${r.input_tokens ?? "?"} in (cached ${r.cache_read_tokens ?? 0}, cache write ${r.cache_write_tokens ?? 0}) / ${r.output_tokens ?? "?"} out (reasoning ${r.reasoning_tokens ?? 0}), ${r.usage_source ?? "no usage"}`],
    ["cost", `${money(r.cost_usd)}${r.cost_note ? ` (${r.cost_note})` : ""}, genai-prices ${r.prices_version ?? "?"}`],
    ["user", r.user_id], ["session", r.session_id && `${r.session_id} ${r.session_path ?? ""}`],
    ["properties", r.properties], ["cache", r.cache_status && `${r.cache_status}${r.cache_reference_id ? ` of ${r.cache_reference_id}` : ""}`],
    ["retries", r.retries], ["fallback index", r.fallback_index],
  ];
  drawer.querySelector("dl").replaceChildren(...fields.filter(([, v]) => v != null && v !== "")
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  showBody(drawer.querySelector('[data-body="request"]'), r.request_body, r.request_id, "request");
  showBody(drawer.querySelector('[data-body="response"]'), r.response_body, r.request_id, "response");
  drawer.querySelector('[data-field="request_headers"]').textContent = r.request_headers ?? "";
  drawer.querySelector('[data-field="attempts"]').textContent = r.attempts ?? "llmtap made no extra attempt";
  drawer.querySelector('[data-field="annotations"]').textContent =
    JSON.stringify({ feedback: body.feedback, scores: body.scores }, null, 2);
  drawer.hidden = false;
  drawer.dataset.id = r.request_id;
  document.getElementById("annotate-status").textContent = "";
}

// --- report pages: a built-in report as a table, with its SQL and its exports ---------------------

function cell(name, value, row, columns) {
  if (value == null) return el("td", {}, "");
  if (MONEY.has(name)) return el("td", { class: "num" }, money(value));
  if (typeof value === "number") return el("td", { class: "num" }, Number.isInteger(value) ? int.format(value) : value);
  if (name === "path") {
    const depth = row[columns.indexOf("depth")] ?? 0;
    return el("td", { style: `padding-left:${0.5 + depth * 1.2}rem` }, value);
  }
  if (FILTERABLE[name]) {
    const button = el("button", { class: "filter", type: "button" }, value);
    button.addEventListener("click", () => { const p = params(); p.append(FILTERABLE[name], value); navigate(p); });
    return el("td", {}, button);
  }
  return el("td", {}, typeof value === "object" ? JSON.stringify(value) : value);
}

function table(columns, rows) {
  const t = el("table", {}, el("tr", {}, ...columns.map((c) => el("th", {}, c))));
  for (const r of rows) t.append(el("tr", {}, ...r.map((v, i) => cell(columns[i], v, r, columns))));
  return t;
}

async function loadReports(p) {
  while (charts.length) charts.pop().destroy();
  const controls = document.getElementById("report-controls");
  controls.replaceChildren();
  let key = p.get("key");
  if (page() === "properties") {
    const keys = await getJSON("/api/ui/property-keys");
    if (!keys) return;
    key = key ?? keys[0];
    const select = el("select", { name: "key" }, ...keys.map((k) => el("option", { value: k }, k)));
    select.value = key ?? "";
    select.addEventListener("change", () => { const q = params(); q.set("key", select.value); navigate(q); });
    controls.append(el("label", {}, "Property ", select));
    if (!keys.length) controls.append(" no call has properties yet");
  }
  const box = document.getElementById("report-tables");
  box.replaceChildren();
  for (const spec of REPORT_PAGES[page()](key)) {
    const q = query(p);
    q.delete("key");
    q.delete("q");
    if (spec.by) q.set("by", spec.by);
    const body = await getJSON(`/api/ui/report/${spec.report}?${q}`);
    if (!body) return;
    const exports = el("p", { class: "exports" }, "Export: ",
      ...["csv", "json", "parquet"].map((f) => el("a", { href: `/api/ui/export/report/${spec.report}.${f}?${q}`, download: "" }, f.toUpperCase())));
    const sql = el("details", { class: "sql" }, el("summary", {}, "View SQL"), el("pre", {}, body.sql));
    const figure = el("figure", { class: "report", "data-report": spec.report }, el("figcaption", {}, spec.title));
    if (spec.overTime) {
      const o = query(p);
      for (const own of ["q", "sql", "key", "before", "by"]) o.delete(own);
      o.set("stack", spec.overTime);
      figure.append(el("p", {}, el("a", { href: `/ui/overview?${o}` }, "over time, on the Overview")));
    }
    if (spec.chart) figure.append(reportChart(body, spec.chart, p.get("tz")));
    figure.append(table(body.columns, body.rows), exports, sql);
    box.append(figure);
  }
  if (page() === "sessions" && p.getAll("session").length === 1) await loadTimeline(p, box);
  document.getElementById("status").textContent = `${box.children.length} reports`;
}

// A session's calls on one time axis (a Gantt): each bar starts when the call started and lasts
// its latency; its label is the call's Helicone-Session-Path and model.
async function loadTimeline(p, box) {
  const q = query(p);
  q.set("limit", "500");
  const body = await getJSON(`/api/ui/requests?${q}`);
  if (!body) return;
  const f = (r) => Object.fromEntries(body.columns.map((c, i) => [c, r[i]]));
  const calls = body.rows.map(f).reverse();  // oldest first
  if (!calls.length) return;
  const start = (c) => Date.parse(c.created_at);
  const t0 = Math.min(...calls.map(start));
  const t1 = Math.max(...calls.map((c) => start(c) + (c.latency_ms ?? 0)));
  const span = Math.max(t1 - t0, 1);
  const chart = el("div", { class: "gantt", "data-chart": "timeline" });
  for (const c of calls) {
    const left = (100 * (start(c) - t0)) / span, width = Math.max((100 * (c.latency_ms ?? 0)) / span, 0.3);
    const bar = el("div", { class: "gantt-bar", style: `left:${left}%;width:${width}%;background:${colour(c.model)}`,
      title: `${c.model} ${c.latency_ms ?? "?"} ms ${money(c.cost_usd)}` });
    chart.append(el("div", { class: "gantt-row", "data-id": c.request_id },
      el("span", { class: "gantt-label" }, `${c.session_path ?? "/"} · ${c.model ?? "?"}`),
      el("span", { class: "gantt-track" }, bar)));
  }
  const total = ((t1 - t0) / 1000).toFixed(1);
  box.append(el("figure", { class: "report" }, el("figcaption", {}, `Timeline of ${calls.length} calls over ${total} s`), chart));
}

// A report by day as a line chart of some of its columns (one point per day in the report).
function reportChart(body, names, tz) {
  const box = el("div", { class: "plot", "data-chart": "report" });
  const day = body.columns.indexOf("day");
  const xs = body.rows.map((r) => Date.parse(`${r[day]}T00:00:00Z`) / 1000);
  const shades = ["#2ca02c", "#d62728", "#1f77b4"];
  const series = names.map((n, i) => ({ label: n, stroke: shades[i % shades.length] }));
  const data = [xs, ...names.map((n) => body.rows.map((r) => r[body.columns.indexOf(n)]))];
  requestAnimationFrame(() => charts.push(new uPlot({ width: Math.max(320, box.clientWidth || 640), height: 200,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "UTC"), series: [{}, ...series], scales: { x: { time: true } } }, data, box)));
  return box;
}

// --- SQL: a read-only query box over the file ----------------------------------------------------

async function loadSQL(p) {
  const form = document.getElementById("sqlform");
  if (p.get("sql")) form.sql.value = p.get("sql");
  const text = form.sql.value;
  const q = new URLSearchParams({ sql: text });
  document.getElementById("sql-csv").href = `/api/ui/sql.csv?${q}`;
  document.getElementById("sql-json").href = `/api/ui/sql.json?${q}`;
  const note = document.getElementById("sql-note");
  const result = document.getElementById("sql-result");
  result.replaceChildren();
  note.textContent = "";
  if (!p.get("sql")) { document.getElementById("status").textContent = "read-only: this file only, no other file"; return; }
  const body = await getJSON(`/api/ui/sql?${q}`);
  if (!body) return;
  const shown = table(body.columns, body.rows);
  shown.id = "sql-result";
  result.replaceWith(shown);
  note.textContent = body.truncated ? `first ${body.rows.length} of ${body.total} rows (export for all)` : `${body.total} rows`;
  document.getElementById("status").textContent = "";
}

// --- live: calls as the proxy sees them, pushed over Server-Sent Events ------------------------------

let source = null, paused = false, held = [];
const LIVE_ROWS = 500;

function liveRow(e) {
  const failed = e.error != null || (e.status != null && e.status >= 400);
  const when = new Date(e.started * 1000).toLocaleTimeString("en-GB", { timeZone: params().get("tz") });
  return el("tr", { "data-id": e.request_id, "data-state": e.state, "data-event": JSON.stringify(e) },
    el("td", {}, when), el("td", {}, e.state === "streaming" ? badge("streaming…") : badge("done")),
    el("td", {}, e.provider), el("td", {}, e.endpoint ?? ""),
    el("td", {}, e.status == null ? badge(e.state === "streaming" ? "…" : "no answer", failed ? "err" : "") : badge(e.status, failed ? "err" : "")),
    el("td", {}, e.cache_status ? badge(e.cache_status, e.cache_status === "HIT" ? "hit" : "") : ""),
    el("td", { class: "num" }, e.latency_ms == null ? "" : Math.round(e.latency_ms)),
    el("td", { class: "num" }, e.ttft_ms == null ? "" : Math.round(e.ttft_ms)), el("td", {}, e.user_id ?? ""),
    el("td", {}, e.model ?? ""),
    el("td", { class: "num", "data-field": "tokens" }, e.input_tokens == null ? "" : `${e.input_tokens} / ${e.output_tokens ?? 0}`),
    el("td", { class: "num", "data-field": "cost" }, e.cost_usd == null ? "" : money(e.cost_usd)));
}

// Tokens and cost come after a call's row, once the writer has worked them out ("accounted"); one
// that comes first (or for a row not shown yet) waits here for its row.
const accounted = new Map();

function showLive(e) {
  const tbody = document.querySelector("#live tbody");
  if (e.state === "accounted") {
    const shown = tbody.querySelector(`tr[data-id="${CSS.escape(e.request_id)}"][data-state="done"]`);
    if (shown) shown.replaceWith(liveRow({ ...JSON.parse(shown.dataset.event), ...e, state: "done" }));
    else accounted.set(e.request_id, e);
    while (accounted.size > LIVE_ROWS) accounted.delete(accounted.keys().next().value);
    return;
  }
  const extra = e.state === "done" ? accounted.get(e.request_id) : undefined;
  if (extra) accounted.delete(e.request_id);
  const row = liveRow(extra ? { ...e, ...extra, state: "done" } : e);
  const old = tbody.querySelector(`tr[data-id="${CSS.escape(e.request_id)}"]`);
  if (old) old.replaceWith(row);  // a stream that has ended replaces its "streaming" row
  else tbody.prepend(row);
  while (tbody.children.length > LIVE_ROWS) tbody.lastChild.remove();
}

function loadLive() {
  const status = document.getElementById("status");
  if (source) source.close();
  source = new EventSource("/api/ui/live");
  source.addEventListener("open", () => { status.className = ""; status.textContent = "connected: calls appear as the proxy sees them"; });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {  // refused, not dropped: served by `llmtap ui`
      status.className = "error";
      status.textContent = "the Live page needs a running proxy (llmtap ui reads a file)";
    } else status.textContent = "reconnecting…";
  });
  source.addEventListener("call", (m) => {
    const e = JSON.parse(m.data);
    if (paused) {
      held.push(e);
      document.getElementById("unseen").textContent = `${held.length} new`;
    } else showLive(e);
  });
}

async function load() {
  const p = params();
  document.body.dataset.page = page();
  const main = REPORT_PAGES[page()] ? "report" : page();
  for (const m of document.querySelectorAll("main[data-page]")) m.hidden = m.dataset.page !== main;
  renderFilters(p);
  document.getElementById("filters").q.value = p.get("q") ?? "";
  document.querySelectorAll("nav a").forEach((a) => {
    a.toggleAttribute("aria-current", a.pathname === location.pathname);
    const keep = query(p);
    for (const own of ["q", "sql", "key", "before"]) keep.delete(own);
    a.search = `?${keep}`;
  });
  const status = document.getElementById("status");
  status.className = "";
  status.textContent = "loading…";
  delete document.body.dataset.ready;
  delete document.body.dataset.charts;
  if (page() !== "live" && source) { source.close(); source = null; }
  if (page() === "live") loadLive();
  else if (page() === "requests") {
    await loadRequests(p);
    for (const a of document.querySelectorAll("[data-export]")) a.href = `/api/ui/export/requests.${a.dataset.export}?${query(p)}`;
  } else if (REPORT_PAGES[page()]) await loadReports(p);
  else if (page() === "sql") await loadSQL(p);
  else await loadOverview(p);
  document.body.dataset.ready = "1";
}

document.getElementById("filters").addEventListener("change", (e) => {
  const p = params();
  if (e.target.value) p.set(e.target.name, e.target.value);
  else p.delete(e.target.name);
  navigate(p);
});
document.getElementById("filters").addEventListener("submit", (e) => e.preventDefault());
document.getElementById("sqlform").addEventListener("submit", (e) => {
  e.preventDefault();
  const p = params();
  p.set("sql", e.target.sql.value);
  navigate(p);
});
document.getElementById("more").addEventListener("click", () => loadRequests(params(), true));

// Feedback, scores and properties go through the proxy's local API, as `llmtap feedback` does
// (a same-origin POST: the API refuses other sites' pages). `llmtap ui` is read-only and says so.
async function annotate(route, method, payload) {
  const id = document.getElementById("drawer").dataset.id;
  const said = document.getElementById("annotate-status");
  const reply = await fetch(`/v1/request/${encodeURIComponent(id)}/${route}`, {
    method, headers: { "content-type": "application/json" }, body: JSON.stringify(payload) });
  const body = await reply.json().catch(() => ({}));
  said.className = reply.ok ? "" : "error";
  said.textContent = reply.ok ? "saved: in the file within a second" : body.error?.message ?? `error ${reply.status}`;
}
for (const button of document.querySelectorAll("#annotate [data-rating]")) {
  button.addEventListener("click", () => annotate("feedback", "POST", { rating: button.dataset.rating === "true" }));
}
document.getElementById("annotate").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = e.target;
  const pair = (text) => { const i = text.indexOf("="); return i > 0 ? [text.slice(0, i).trim(), text.slice(i + 1).trim()] : null; };
  const score = pair(form.score.value), prop = pair(form.property.value);
  if (score) {
    const v = score[1] === "true" ? true : score[1] === "false" ? false : Number(score[1]);
    await annotate("score", "POST", { scores: { [score[0]]: v } });
  }
  if (prop) await annotate("property", "PUT", { key: prop[0], value: prop[1] });
  if (!score && !prop) document.getElementById("annotate-status").textContent = "type name=value";
});
document.getElementById("pause").addEventListener("click", (e) => {
  paused = !paused;
  e.target.textContent = paused ? "Resume" : "Pause";
  if (!paused) { held.forEach(showLive); held = []; document.getElementById("unseen").textContent = ""; }
});
const closeDrawer = () => { document.getElementById("drawer").hidden = true; };
document.getElementById("close").addEventListener("click", closeDrawer);
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeDrawer(); });
window.addEventListener("popstate", load);
load();
