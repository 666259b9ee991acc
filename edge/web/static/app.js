// flamingo-edge web page: plain JS, no build step. Data from /api/ (docs/HTTP.md), live
// updates from the /api/events SSE feed. Text from the daemon (answers, labels) is always set
// as text, never as HTML.
"use strict";

const fe = { streams: {}, charts: {}, scoreCharts: {}, monitors: {}, alertsOffset: 0,
             alertsTotal: 0, pageSize: 10, windowS: 1800 };
window.fe = fe; // for the browser tests and the curious

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ cache: "no-store" }, opts || {}));
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

const fmt = (v, d = 1) => (v === null || v === undefined) ? "–" : Number(v).toFixed(d);
const when = (iso) => new Date(iso).toLocaleString();
const ago = (t) => { const s = Math.max(0, Date.now() / 1000 - t);
  return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${(s / 3600).toFixed(1)} h ago`; };

function novColour(n) { // 0 (usual) .. 5+ (very unusual): green -> amber -> red
  if (n === null || n === undefined) return "#9aa3b5";
  const x = Math.max(0, Math.min(1, n / 5));
  const h = 140 - 140 * x;
  return `hsl(${h}, 70%, 45%)`;
}

// at least a minute of time axis, so a chart with one or two points does not span years
const xRange = (u, min, max) => (min === null || max - min < 60) ? [(max ?? Date.now() / 1000) - 60, (max ?? Date.now() / 1000) + 1] : [min, max];

function chartWidth(node) { return Math.max(300, (node.clientWidth || 400) - 4); }

// ------------------------------------------------------------------ health
function renderHealth(h) {
  const box = document.getElementById("health");
  box.textContent = "";
  const dropped = Object.values(h.clips_dropped || {}).reduce((a, b) => a + b, 0);
  const enc = h.encode_seconds.count ? (1000 * h.encode_seconds.sum / h.encode_seconds.count).toFixed(0) + " ms" : "–";
  const q = h.query_seconds.count ? (h.query_seconds.sum / h.query_seconds.count).toFixed(2) + " s" : "–";
  const mqtt = h.health && h.health.alerts && h.health.alerts.mqtt ? (h.mqtt_connected ? "connected" : "disconnected") : "off";
  const mb = (b) => (b / 1e6).toFixed(1) + " MB";
  const items = [["health", h.status || (h.ok ? "ok" : "failing")], ["uptime", h.uptime_s === null ? "–" : Math.round(h.uptime_s) + " s"],
    ["model", h.model || "none (gate only)"], ["encoder", h.backend || "–"], ["encode", enc], ["query", q],
    ["clips dropped", String(dropped)], ["queries missed", String(h.queries_missed)],
    ["broker", mqtt], ["clips", mb(h.clips_bytes)], ["history", mb(h.history_bytes)]];
  for (const [k, v] of items) box.append(el("span", { "data-k": k }, `${k} `, el("b", { text: v })));
  box.title = (h.reasons || []).join("\n");
}

// ------------------------------------------------------------------ streams
function streamCard(s) {
  const card = el("div", { class: "card", "data-stream": s.id });
  const labels = Object.entries(s.labels || {}).map(([k, v]) => `${k}: ${v}`).join(", ");
  card.append(
    el("h3", {}, el("span", { text: s.id }), el("span", { class: "badge status" })),
    el("div", { class: "meta", text: `${s.source}${labels ? " · " + labels : ""}` }),
    el("div", { class: "nums" }, el("span", {}, "level ", el("b", { class: "level" }), " dBFS"),
       el("span", {}, "novelty ", el("b", { class: "novelty" })),
       el("span", {}, "memory ", el("b", { class: "memory" }))),
    el("div", { class: "chart", "data-points": "0" }),
    el("div", { class: "strip" }),
    el("div", { class: "legend", text: "memory strip: last 30 clips, coloured by novelty (hatched: masked, dashed: dropped, faded: gate only)" }));
  return card;
}

function updateStreamCard(s) {
  const card = document.querySelector(`.card[data-stream="${CSS.escape(s.id)}"]`);
  if (!card) return;
  const b = card.querySelector(".status");
  b.textContent = s.status; b.className = "badge status " + s.status;
  card.querySelector(".level").textContent = fmt(s.level_dbfs);
  card.querySelector(".novelty").textContent = fmt(s.novelty, 2);
  card.querySelector(".memory").textContent = `${s.memory_clips}/${s.memory_capacity}`;
  const strip = card.querySelector(".strip");
  strip.textContent = "";
  for (const c of s.strip || []) {
    strip.append(el("span", { class: c.state, style: c.state === "dropped" ? null : `background:${c.state === "masked" ? "" : novColour(c.novelty)}`,
                              title: `clip ${c.slot}: ${c.state}, novelty ${fmt(c.novelty, 2)}, ${fmt(c.level_dbfs)} dBFS` }));
  }
}

function levelChart(s, node) {
  const data = [[], [], []];
  for (const [t, l, n] of s.readings) { data[0].push(t); data[1].push(l); data[2].push(n); }
  const u = new uPlot({
    width: chartWidth(node), height: 150, legend: { show: true },
    scales: { x: { time: true, range: xRange }, db: { auto: true }, nov: { auto: true } },
    series: [{}, { label: "level dBFS", stroke: "#2962ff", width: 1.5, scale: "db" },
             { label: "novelty", stroke: "#c77700", width: 1.5, scale: "nov" }],
    axes: [{}, { scale: "db", size: 45 }, { scale: "nov", side: 1, grid: { show: false }, size: 35 }],
  }, data, node);
  node.setAttribute("data-points", String(data[0].length));
  fe.charts[s.id] = u;
}

function addReadings(sid, readings) {
  const u = fe.charts[sid];
  if (!u) return;
  const d = u.data.map((a) => Array.from(a));
  for (const [t, l, n] of readings) { d[0].push(t); d[1].push(l); d[2].push(n); }
  const cut = Date.now() / 1000 - fe.windowS;
  while (d[0].length > 2 && d[0][0] < cut) { d[0].shift(); d[1].shift(); d[2].shift(); }
  u.setData(d);
  u.root.parentNode.setAttribute("data-points", String(d[0].length));
}

async function loadStreams() {
  const { streams } = await api("/api/streams");
  const box = document.getElementById("streams");
  box.textContent = "";
  const askSel = document.getElementById("ask-stream");
  const filtSel = document.querySelector("#alert-filter [name=stream]");
  askSel.textContent = "";
  if (!streams.length) box.append(el("div", { class: "empty", text: "no streams configured" }));
  for (const s of streams) {
    fe.streams[s.id] = s;
    const card = streamCard(s);
    box.append(card);
    updateStreamCard(s);
    levelChart(s, card.querySelector(".chart"));
    askSel.append(el("option", { value: s.id, text: s.id }));
    if (!filtSel.querySelector(`option[value="${CSS.escape(s.id)}"]`)) filtSel.append(el("option", { value: s.id, text: s.id }));
  }
}

// ------------------------------------------------------------------ monitors
function monitorKey(m) { return `${m.stream}/${m.monitor}`; }

function monitorCard(m) {
  const card = el("div", { class: "card", "data-monitor": monitorKey(m) });
  const sched = [m.every_s ? `every ${m.every_s} s` : null, ...(m.triggers || []).map((t) => `when ${t}`)].filter(Boolean).join(", ");
  card.append(
    el("h3", {}, el("span", { text: `${m.stream} / ${m.monitor}` }), el("span", { class: "badge state" }),
       el("span", { class: `badge ${m.severity}`, text: m.severity })),
    el("div", { class: "meta", text: `${m.kind === "gate" ? "level/novelty gate" : m.question || ""}` }),
    el("div", { class: "meta", text: sched + (m.threshold !== null && m.threshold !== undefined ? ` · threshold ${m.threshold}` : "") }),
    el("div", { class: "answer" }),
    el("div", { class: "chart score", "data-points": "0" }));
  return card;
}

function updateMonitor(m) {
  fe.monitors[monitorKey(m)] = m;
  const card = document.querySelector(`.card[data-monitor="${CSS.escape(monitorKey(m))}"]`);
  if (!card) return;
  const st = card.querySelector(".state");
  st.textContent = m.state || "–"; st.className = "badge state " + (m.state || "");
  const a = card.querySelector(".answer");
  a.textContent = "";
  const last = m.last;
  if (!last) { a.append(el("span", { class: "empty", text: "no answer yet" })); }
  else {
    const what = last.answer ? el("q", { text: last.answer }) : el("span", { text: `level ${fmt(last.level_dbfs)} dBFS, novelty ${fmt(last.novelty, 2)}` });
    a.append(...[el("b", { text: last.verdict }), " ", what,
      last.score !== null && last.score !== undefined ? el("span", { text: ` · score ${fmt(last.score, 2)}` }) : null,
      el("span", { class: "meta", text: ` · ${ago(last.t)}${last.model_id !== "level-gate" ? ` · ${fmt(last.latency_s, 2)} s` : ""}` })].filter((x) => x !== null));
  }
  const node = card.querySelector(".chart");
  const hist = m.history || [];
  const scored = hist.some((h) => h[1] !== null);
  if (!scored) { node.style.display = "none"; return; }
  node.style.display = "";
  const data = [hist.map((h) => h[0]), hist.map((h) => h[1]), hist.map(() => m.threshold)];
  let u = fe.scoreCharts[monitorKey(m)];
  if (!u) {
    u = new uPlot({ width: chartWidth(node), height: 110, legend: { show: false },
      scales: { x: { time: true, range: xRange }, y: { range: [0, 1] } },
      series: [{}, { label: "score", stroke: "#6a1b9a", width: 1.5, points: { show: true, size: 4 } },
               { label: "threshold", stroke: "#c62828", dash: [6, 4], width: 1 }],
      axes: [{}, { size: 35 }] }, data, node);
    fe.scoreCharts[monitorKey(m)] = u;
  } else u.setData(data);
  node.setAttribute("data-points", String(data[0].length));
}

function addResult(r) {
  const m = fe.monitors[`${r.stream}/${r.monitor}`];
  if (!m) return;
  m.last = r; m.state = r.state;
  m.history = (m.history || []).concat([[r.t, r.score, r.verdict, r.latency_s]]).slice(-360);
  updateMonitor(m);
}

async function loadMonitors() {
  const { monitors } = await api("/api/monitors");
  const box = document.getElementById("monitors");
  box.textContent = "";
  fe.scoreCharts = {};
  const sel = document.querySelector("#alert-filter [name=monitor]");
  if (!monitors.length) box.append(el("div", { class: "empty", text: "no monitors configured" }));
  for (const m of monitors) {
    box.append(monitorCard(m));
    updateMonitor(m);
    if (!sel.querySelector(`option[value="${CSS.escape(m.monitor)}"]`)) sel.append(el("option", { value: m.monitor, text: m.monitor }));
  }
}

// ------------------------------------------------------------------ alerts
function alertRow(a) {
  const left = el("div", {},
    el("h3", {}, el("span", { class: `badge ${a.severity}`, text: a.severity }),
       el("span", { text: `${a.stream} / ${a.monitor}` }), el("span", { class: "meta", text: `#${a.seq}` })),
    el("div", { class: "meta", text: `raised ${when(a.raised_at)} · audio ${when(a.start)} – ${new Date(a.end).toLocaleTimeString()}` }),
    el("div", { class: "answer" }, el("q", { text: a.answer || a.verdict }),
       a.score !== null && a.score !== undefined ? el("span", { text: ` · score ${fmt(a.score, 2)}` }) : null,
       a.level_dbfs !== null && a.level_dbfs !== undefined ? el("span", { text: ` · ${fmt(a.level_dbfs)} dBFS` }) : null),
    el("div", { class: "meta", text: a.question || "" }),
    el("div", { class: "delivery", text: "delivery: " + (Object.entries(a.delivery || {}).map(([s, d]) => `${s} ${d.state}${d.attempts ? ` (${d.attempts} attempts)` : ""}`).join(", ") || "no sinks (history only)") }));
  const right = el("div", {});
  if (a.spectrogram_url) right.append(el("img", { class: "spectrogram", src: a.spectrogram_url, alt: `spectrogram of alert ${a.seq}`, loading: "lazy" }));
  if (a.clip_url) right.append(el("audio", { controls: "", preload: "metadata", src: a.clip_url }));
  if (!a.clip_url && !a.spectrogram_url) right.append(el("div", { class: "empty", text: "no evidence clip" }));
  return el("div", { class: `alert ${a.severity}`, "data-alert": a.id }, left, right);
}

async function loadAlerts() {
  const f = new FormData(document.getElementById("alert-filter"));
  const q = new URLSearchParams({ limit: String(fe.pageSize), offset: String(fe.alertsOffset) });
  for (const k of ["stream", "monitor", "severity"]) if (f.get(k)) q.set(k, f.get(k));
  if (f.get("since")) q.set("since", String(Date.now() / 1000 - Number(f.get("since"))));
  const res = await api("/api/alerts?" + q);
  fe.alertsTotal = res.total;
  const box = document.getElementById("alerts");
  box.textContent = "";
  if (!res.alerts.length) box.append(el("div", { class: "empty", text: "no alerts" }));
  for (const a of res.alerts) box.append(alertRow(a));
  const last = Math.min(res.total, fe.alertsOffset + res.alerts.length);
  document.getElementById("page").textContent = res.total ? `${fe.alertsOffset + 1}–${last} of ${res.total}` : "";
  document.getElementById("prev").disabled = fe.alertsOffset === 0;
  document.getElementById("next").disabled = last >= res.total;
}

// ------------------------------------------------------------------ ask now
async function ask(ev) {
  ev.preventDefault();
  const out = document.getElementById("ask-result");
  const btn = document.getElementById("ask-go");
  const body = { stream: document.getElementById("ask-stream").value,
                 window_s: Number(document.getElementById("ask-window").value),
                 answer: document.getElementById("ask-answer").value,
                 question: document.getElementById("ask-question").value };
  out.textContent = "asking… (queued with the monitors' queries)";
  btn.disabled = true;
  try {
    const r = await api("/api/ask", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    out.textContent = "";
    out.append(el("q", { class: "answer-text", text: r.answer || "(empty answer)" }));
    if (r.probs) out.append(el("span", { text: " · " + Object.entries(r.probs).map(([k, v]) => `${k} ${fmt(v, 2)}`).join(", ") }));
    out.append(el("span", { class: "meta", text: ` · ${r.stream}, ${when(r.start)} – ${new Date(r.end).toLocaleTimeString()} · ${fmt(r.seconds, 2)} s` }));
    out.setAttribute("data-answered", "1");
  } catch (e) {
    out.textContent = "";
    out.append(el("span", { class: "err", text: e.message }));
  } finally { btn.disabled = false; }
}

// ------------------------------------------------------------------ live feed
function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("/api/events");
  es.onopen = () => { conn.textContent = "live"; conn.className = "conn on"; };
  es.onerror = () => { conn.textContent = "reconnecting"; conn.className = "conn off"; };
  es.addEventListener("reading", (ev) => {
    const d = JSON.parse(ev.data);
    const s = fe.streams[d.stream];
    if (!s) return;
    const lastR = d.readings[d.readings.length - 1];
    Object.assign(s, { status: d.status, strip: d.strip, memory_clips: d.memory_clips,
                       level_dbfs: lastR[1], novelty: lastR[2] });
    updateStreamCard(s);
    addReadings(d.stream, d.readings);
  });
  es.addEventListener("result", (ev) => addResult(JSON.parse(ev.data)));
  es.addEventListener("alert", () => { if (fe.alertsOffset === 0) loadAlerts().catch(console.error); });
  es.addEventListener("health", (ev) => renderHealth(JSON.parse(ev.data)));
  fe.events = es;
}

async function start() {
  document.getElementById("ask").addEventListener("submit", ask);
  document.getElementById("alert-filter").addEventListener("change", () => { fe.alertsOffset = 0; loadAlerts(); });
  document.getElementById("prev").addEventListener("click", () => { fe.alertsOffset = Math.max(0, fe.alertsOffset - fe.pageSize); loadAlerts(); });
  document.getElementById("next").addEventListener("click", () => { fe.alertsOffset += fe.pageSize; loadAlerts(); });
  window.addEventListener("resize", () => {
    for (const u of [...Object.values(fe.charts), ...Object.values(fe.scoreCharts)]) u.setSize({ width: chartWidth(u.root.parentNode), height: u.height });
  });
  try {
    await Promise.all([loadStreams(), loadMonitors(), loadAlerts(), api("/api/health").then(renderHealth)]);
  } catch (e) {
    document.querySelector("main").prepend(el("div", { class: "ask-result" }, el("span", { class: "err", text: "cannot load: " + e.message })));
  }
  connect();
  document.body.setAttribute("data-ready", "1");
}

start();
