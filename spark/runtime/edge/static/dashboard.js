// The Spark RPC dashboard: one EventSource, one card per service, redrawn on every sample.
// Plain JavaScript, no dependencies: the edge serves this file as it is.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const withToken = (path) => (token ? `${path}?token=${encodeURIComponent(token)}` : path);
const $ = (sel, root = document) => root.querySelector(sel);
const cards = new Map(); // service -> {el, sections: {name: lastHtml}}

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function num(value, digits = 0) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString(undefined, {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  });
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value < 10 ? `${num(value, 2)} ms` : `${num(value, 0)} ms`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${num(seconds, seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} m ${Math.floor(seconds % 60)} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} m`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}

function percent(rate) {
  return rate === null || rate === undefined ? "–" : `${num(rate * 100, 1)}%`;
}

function toast(text) {
  const el = $("#toast");
  el.textContent = text;
  el.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("show"), 2500);
}

// -- sections ----------------------------------------------------------------------------

function statsHtml(s) {
  const items = [
    ["workers", "Workers", num(s.workers)],
    ["inflight", "In flight", num(s.inflight)],
    ["backlog", "Backlog", num(s.backlog)],
    ["pending", "Pending", num(s.pending)],
    ["dead", "Dead letters", num(s.dead), s.dead > 0],
    ["served", "Calls served", num(s.served)],
    ["rate", "Calls/s", num(lastPoint(s)?.rate, 1)],
    ["errors", "Error rate", percent(s.error_rate), s.error_rate > 0.05],
    ["p50", "p50", ms(lastPoint(s)?.p50_ms ?? s.p50_ms)],
    ["p99", "p99", ms(lastPoint(s)?.p99_ms ?? s.p99_ms)],
    ["oldest", "Oldest", duration(s.oldest_age)],
  ];
  return items.map(([key, label, value, alert]) =>
    `<div class="stat${alert ? " alert" : ""}" data-testid="stat-${key}">` +
    `<div class="label">${label}</div><div class="value">${esc(value)}</div></div>`).join("");
}

function lastPoint(s) {
  return s.series && s.series.length ? s.series[s.series.length - 1] : null;
}

function workersHtml(s) {
  if (!s.worker_list.length) return `<p class="muted">No live workers.</p>`;
  const rows = s.worker_list.map((w) => `
    <tr data-testid="worker" data-worker="${esc(w.id)}">
      <td><code>${esc(w.host)}</code></td><td class="num">${esc(w.pid)}</td>
      <td>${esc(w.state)}</td><td class="num">${duration(w.uptime)}</td>
      <td class="num" data-testid="worker-processed">${num(w.processed)}</td>
      <td class="num">${num(w.failed)}</td>
      <td class="num">${num(w.inflight)}${w.concurrency ? ` / ${w.concurrency}` : ""}</td>
    </tr>`).join("");
  return `<table><thead><tr><th>Host</th><th class="num">PID</th><th>State</th>
    <th class="num">Uptime</th><th class="num">Processed</th><th class="num">Failed</th>
    <th class="num">In flight</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function methodsHtml(s) {
  const stats = new Map(s.methods.map((m) => [m.method, m]));
  const described = s.api && Array.isArray(s.api.methods) ? s.api.methods : [];
  // rpc.* (discovery) is the runtime's, not the service's: not listed.
  const names = new Set([...described.map((m) => m.name), ...stats.keys()]
    .filter((name) => !name.startsWith("rpc.")));
  if (!names.size) return `<p class="muted">No methods known yet.</p>`;
  const docs = new Map(described.map((m) => [m.name, m]));
  const rows = [...names].sort().map((name) => {
    const doc = docs.get(name) || {};
    const st = stats.get(name) || {};
    const params = (doc.params || []).map((p) => esc(p.name)).join(", ");
    return `<tr data-testid="method" data-method="${esc(name)}">
      <td><code>${esc(name)}(${params})</code>
        ${doc.summary ? `<div class="summary">${esc(doc.summary)}</div>` : ""}</td>
      <td class="num">${num(st.calls ?? 0)}</td><td class="num">${num(st.errors ?? 0)}</td>
      <td class="num">${ms(st.p50_ms)}</td><td class="num">${ms(st.p99_ms)}</td></tr>`;
  }).join("");
  return `<table><thead><tr><th>Method</th><th class="num">Calls</th><th class="num">Errors</th>
    <th class="num">p50</th><th class="num">p99</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function errorText(error) {
  if (error === null || error === undefined) return "";
  if (typeof error === "string") return error;
  const data = error.data ? ` ${JSON.stringify(error.data)}` : "";
  return `${error.code ?? ""} ${error.message ?? ""}${data}`.trim();
}

function deadHtml(s) {
  if (!s.dead) return `<p class="muted" data-testid="no-dead-letters">No dead letters.</p>`;
  const rows = s.dead_letters.map((d) => `
    <tr data-testid="dead-letter" data-id="${esc(d.id)}">
      <td><code>${esc(d.method ?? "(malformed)")}</code>
        <div class="summary">request ${esc(d.request_id ?? "?")} · ${esc(d.id)}</div></td>
      <td class="error">${esc(errorText(d.error))}</td>
      <td class="num">${num(d.deliveries)}</td>
      <td><div class="actions">
        <button data-action="replay" data-service="${esc(s.service)}" data-id="${esc(d.id)}"
          ${d.replayable ? "" : "disabled"}>Replay</button>
        <button class="danger" data-action="purge" data-service="${esc(s.service)}"
          data-id="${esc(d.id)}">Purge</button></div></td></tr>`).join("");
  const more = s.dead > s.dead_letters.length
    ? `<p class="muted">${s.dead_letters.length} of ${num(s.dead)} shown.</p>` : "";
  return `<div class="actions" style="margin-bottom:6px">
      <button data-action="replay-all" data-service="${esc(s.service)}">Replay all</button>
      <button class="danger" data-action="purge-all" data-service="${esc(s.service)}">Purge all</button>
    </div>
    <table><thead><tr><th>Request</th><th>Last error</th><th class="num">Deliveries</th><th></th>
    </tr></thead><tbody>${rows}</tbody></table>${more}`;
}

// -- chart (canvas, no library) --------------------------------------------------------------

function drawChart(canvas, series, windowSeconds) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (!width || !height) return;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const pad = { left: 46, right: 56, top: 10, bottom: 22 };
  const w = width - pad.left - pad.right, h = height - pad.top - pad.bottom;
  const now = series.length ? series[series.length - 1].t : Date.now() / 1000;
  const t0 = now - windowSeconds;
  const x = (t) => pad.left + ((t - t0) / windowSeconds) * w;
  const maxRate = niceMax(Math.max(1, ...series.map((p) => p.rate)));
  const maxMs = niceMax(Math.max(1, ...series.map((p) => p.p99_ms ?? 0)));
  ctx.font = "11px system-ui, sans-serif";
  ctx.strokeStyle = "#e3e6eb";
  ctx.fillStyle = "#6b7280";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad.top + h - (h * i) / 4;
    ctx.beginPath(); ctx.moveTo(pad.left, y); ctx.lineTo(pad.left + w, y); ctx.stroke();
    ctx.textAlign = "right";
    ctx.fillText(fmtAxis((maxRate * i) / 4), pad.left - 6, y + 4);
    ctx.textAlign = "left";
    ctx.fillText(`${fmtAxis((maxMs * i) / 4)} ms`, pad.left + w + 6, y + 4);
  }
  ctx.textAlign = "center";
  for (let m = 0; m <= windowSeconds / 60; m++) {
    const t = now - m * 60;
    ctx.fillText(m === 0 ? "now" : `-${m}m`, x(t), height - 6);
  }
  const line = (key, max, color) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    for (const p of series) {
      if (p.t < t0 || p[key] === null || p[key] === undefined) { started = false; continue; }
      const px = x(p.t), py = pad.top + h - (p[key] / max) * h;
      if (started) ctx.lineTo(px, py); else { ctx.moveTo(px, py); started = true; }
    }
    ctx.stroke();
  };
  const css = getComputedStyle(document.documentElement);
  line("p99_ms", maxMs, css.getPropertyValue("--p99").trim());
  line("p50_ms", maxMs, css.getPropertyValue("--p50").trim());
  line("rate", maxRate, css.getPropertyValue("--rate").trim());
}

function niceMax(value) {
  const exp = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * exp >= value) return step * exp;
  return 10 * exp;
}

function fmtAxis(value) {
  return value >= 100 ? num(value, 0) : value >= 10 ? num(value, 1) : num(value, 2);
}

// -- rendering -------------------------------------------------------------------------------

function card(service) {
  let entry = cards.get(service);
  if (entry) return entry;
  const el = document.createElement("section");
  el.className = "card";
  el.dataset.testid = "service";
  el.dataset.service = service;
  el.innerHTML = `
    <h2><span data-testid="service-name">${esc(service)}</span>
      <span class="badge" data-part="health"></span></h2>
    <div class="stats" data-part="stats"></div>
    <div class="chart"><canvas data-testid="chart" aria-label="calls per second and latency"></canvas></div>
    <div class="legend"><span><i style="background:var(--rate)"></i>calls/s</span>
      <span><i style="background:var(--p50)"></i>p50</span>
      <span><i style="background:var(--p99)"></i>p99</span>
      <span class="muted">last minutes</span></div>
    <div class="cols">
      <div><h3>Workers</h3><div data-part="workers" data-testid="workers"></div></div>
      <div><h3>Methods</h3><div data-part="methods" data-testid="methods"></div></div>
    </div>
    <h3>Dead letters</h3><div data-part="dead" data-testid="dead-letters"></div>`;
  $("#services").appendChild(el);
  entry = { el, html: {} };
  cards.set(service, entry);
  return entry;
}

function setPart(entry, part, html) {
  if (entry.html[part] === html) return; // unchanged: keep the DOM (and buttons) as they are
  entry.html[part] = html;
  $(`[data-part="${part}"]`, entry.el).innerHTML = html;
}

function render(state) {
  $("#updated").textContent = `updated ${new Date(state.at * 1000).toLocaleTimeString()}`;
  const main = $("#services");
  let banner = $("#banner");
  if (state.error) {
    if (!banner) {
      banner = document.createElement("div");
      banner.id = "banner";
      banner.className = "banner";
      main.prepend(banner);
    }
    banner.textContent = state.error;
    return;
  }
  if (banner) banner.remove();
  const services = state.services || [];
  $("#empty")?.remove();
  if (!services.length && !$("#none")) {
    main.insertAdjacentHTML("beforeend", `<p class="muted" id="none">No services yet.</p>`);
  } else if (services.length) {
    $("#none")?.remove();
  }
  const seen = new Set();
  for (const s of services) {
    seen.add(s.service);
    const entry = card(s.service);
    const health = $('[data-part="health"]', entry.el);
    health.textContent = s.workers ? `${s.workers} live` : "no live workers";
    health.className = `badge ${s.workers ? "ok" : "bad"}`;
    setPart(entry, "stats", statsHtml(s));
    setPart(entry, "workers", workersHtml(s));
    setPart(entry, "methods", methodsHtml(s));
    setPart(entry, "dead", deadHtml(s));
    drawChart($("canvas", entry.el), s.series || [], state.window || 300);
  }
  for (const [service, entry] of cards) {
    if (!seen.has(service)) { entry.el.remove(); cards.delete(service); }
  }
}

// -- actions -----------------------------------------------------------------------------------

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const { action, service, id } = button.dataset;
  const all = action.endsWith("-all");
  const verb = action.replace("-all", "");
  if (all && !confirm(`${verb} every dead letter of ${service}?`)) return;
  button.disabled = true;
  try {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const resp = await fetch(`dashboard/dlq/${encodeURIComponent(service)}/${verb}`, {
      method: "POST", headers, body: JSON.stringify(all ? { all: true } : { ids: [id] }),
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      toast(`${verb} refused: ${body.error || resp.status}`);
    } else if (verb === "purge") {
      toast(`purged ${body.deleted} dead letter(s) of ${service}`);
    } else {
      toast(`replayed ${body.replayed?.length ?? 0} request(s) of ${service}`);
    }
  } catch (err) {
    toast(`${verb} failed: ${err}`);
  } finally {
    button.disabled = false;
  }
});

// -- live updates --------------------------------------------------------------------------------

function connect() {
  const status = $("#connection");
  const source = new EventSource(withToken("dashboard/events"));
  source.onopen = () => { status.textContent = "live"; status.className = "pill live"; };
  source.onmessage = (event) => render(JSON.parse(event.data));
  source.onerror = () => {
    // EventSource reconnects by itself; say so meanwhile.
    status.textContent = "reconnecting…";
    status.className = "pill down";
  };
}

window.addEventListener("resize", () => {
  for (const entry of cards.values()) entry.html = {};
});
connect();
