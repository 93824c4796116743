// The xnai-core dashboard: polls /api/state every second and redraws. Every value from
// the server goes into the page as text (textContent), never as markup.
"use strict";

const POLL_MS = 1000;
const MAX_BACKOFF_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
let token = null;  // kept in this page's memory only
let controlsShown = false;  // the circuits' buttons exist (a token and Redis)
let failures = 0;
let lastOk = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return "-";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 120) return `${value.toFixed(1)} s`;
  return `${Math.round(value / 60)} min`;
}

function when(epoch) {
  if (!epoch) return "-";
  return new Date(epoch * 1000).toLocaleTimeString();
}

// The token as an Authorization value: its UTF-8 bytes, one character each. fetch()
// refuses a header beyond Latin-1 (a TypeError: every poll failed with a "€" in the
// token); the service compares the bytes sent with the token's UTF-8.
function bearer(secret) {
  return `Bearer ${Array.from(new TextEncoder().encode(secret), (b) => String.fromCharCode(b)).join("")}`;
}

function badge(state, label) {
  return el("span", { class: `badge ${state}`, text: label || state.replace("_", "-") });
}

function sparkline(name, times, marks) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 100 40");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const max = Math.max(1, ...times);
  const last = times.length ? times[times.length - 1] / 1000 : null;
  svg.setAttribute("aria-label", `Response times of ${name}, last ${seconds(last)}, highest ${seconds(times.length ? max / 1000 : null)}`);
  if (times.length < 1) return svg;
  const step = times.length > 1 ? 100 / (times.length - 1) : 0;
  const points = times.map((t, i) => [i * step, 38 - (t / max) * 34]);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.map((p) => `${p[0].toFixed(2)},${p[1].toFixed(2)}`).join(" "));
  line.setAttribute("vector-effect", "non-scaling-stroke");
  svg.append(line);
  const kinds = { d: "degraded", u: "unhealthy" };
  [...marks].forEach((mark, i) => {
    if (!kinds[mark]) return;
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("class", kinds[mark]);
    dot.setAttribute("cx", points[i][0].toFixed(2));
    dot.setAttribute("cy", points[i][1].toFixed(2));
    dot.setAttribute("r", "1.8");
    svg.append(dot);
  });
  return svg;
}

function renderServices(services) {
  const root = document.getElementById("services");
  root.replaceChildren(...services.map((s) => {
    const uptime = s.uptime === null ? "-" : `${s.uptime.toFixed(1)}%`;
    const card = el("article", { class: "card", "data-service": s.name, "aria-label": `${s.name}: ${s.status}` },
      el("h3", {}, el("span", { text: s.name }), badge(s.status)),
      el("p", { class: "target", text: `${s.type}${s.target === null ? "" : ` ${s.target}`}${s.critical ? "" : " (not critical)"}` }),
      sparkline(s.name, s.times_ms, s.marks),
      el("p", { class: "meta", text: `response ${seconds(s.response_time)} · uptime ${uptime} of the last ${s.marks.length} checks` }),
    );
    if (s.last_error) card.append(el("p", { class: "error", text: `last error ${when(s.last_error.at)}: ${s.last_error.error ?? "(its text is shown with the control token)"}` }));
    return card;
  }));
  if (!services.length) root.replaceChildren(el("p", { class: "note", text: "no services configured" }));
}

async function control(name, action) {
  const status = document.getElementById("token-state");
  try {
    const reply = await fetch(`/api/circuits/${encodeURIComponent(name)}/${action}`, {
      method: "POST", headers: { Authorization: bearer(token) },
    });
    if (reply.status === 401) {
      token = null;
      status.textContent = "token refused: enter it again";
    } else if (!reply.ok) {
      const body = await reply.json().catch(() => ({}));
      status.textContent = `${action} ${name} failed: ${body.error || reply.status}`;
    } else {
      status.textContent = `${name}: ${action} done`;
    }
  } catch (error) {
    status.textContent = `${action} ${name} failed: service unreachable`;
  }
  poll();
}

function renderCircuits(circuits, controls, tokenConfigured) {
  const body = document.querySelector("#circuits tbody");
  const note = document.getElementById("circuits-note");
  const form = document.getElementById("token-form");
  form.hidden = !tokenConfigured;
  controlsShown = Boolean(controls);
  document.getElementById("actions-head").hidden = !controls;
  if (circuits === null) {
    delete body.dataset.layout;
    body.replaceChildren();
    note.textContent = "No shared circuits: the config sets no redis_url.";
    return;
  }
  note.textContent = circuits.length ? "" : "No circuits under this prefix yet.";
  // Rows are updated in place while the circuits and the controls stay the same, so a
  // button keeps its keyboard focus (and a click its target) across polls.
  const layout = JSON.stringify([circuits.map((c) => c.name), Boolean(controls)]);
  if (body.dataset.layout !== layout) {
    body.dataset.layout = layout;
    body.replaceChildren(...circuits.map((c) => circuitRow(c, controls)));
  }
  circuits.forEach((c, i) => {
    const cells = body.rows[i].cells;
    const label = c.state + (c.forced_open ? " (forced)" : "");
    const shown = cells[1].firstChild;
    if (!shown || shown.textContent !== label || !shown.classList.contains(c.state)) {
      cells[1].replaceChildren(badge(c.state, label));
    }
    cells[2].textContent = String(c.failures);
    cells[3].textContent = c.retry_after === null ? "-" : seconds(c.retry_after);
    for (const button of body.rows[i].querySelectorAll("button")) button.disabled = token === null;
  });
}

function circuitRow(c, controls) {
  const row = el("tr", { "data-circuit": c.name },
    el("th", { scope: "row", text: c.name }), el("td"), el("td"), el("td"));
  if (controls) {
    const cell = el("td");
    for (const action of ["open", "close", "reset"]) {
      const button = el("button", { type: "button", "aria-label": `${action} circuit ${c.name}`, text: action });
      button.addEventListener("click", () => control(c.name, action));
      cell.append(button);
    }
    row.append(cell);
  }
  return row;
}

function renderList(id, items, empty, text) {
  const root = document.getElementById(id);
  if (!items.length) {
    root.replaceChildren(el("li", { class: "empty", text: empty }));
    return;
  }
  root.replaceChildren(...items.map((item) => el("li", { text: text(item) })));
}

function render(state) {
  const overall = document.getElementById("overall");
  overall.className = `badge ${state.overall}`;
  overall.textContent = `stack ${state.overall}`;
  renderServices(state.services);
  renderCircuits(state.circuits, state.controls, state.token);
  renderList("alerts", state.alerts, "no active alert", (a) => `${a.severity} · ${a.service} · ${a.message ?? a.kind} (since ${when(a.since)})`);
  renderList("episodes", state.episodes, "no degradation recorded since start",
    (e) => `${e.service}: ${e.worst} from ${when(e.started)}${e.ended ? ` to ${when(e.ended)}` : " (ongoing)"}${e.reason ? ` · ${e.reason}` : ""}`);
  const recovery = state.services.filter((s) => s.recovery);
  renderList("recovery", recovery, "no recovery rules configured", (s) => {
    const r = s.recovery;
    const latch = r.escalated ? `LATCHED: manual intervention needed (${r.escalation_reason || "escalated"}); reset with: xnai-core recovery reset ${s.name}` : "not latched";
    const last = r.last_attempt ? ` · last ${r.last_attempt.action} ${r.last_attempt.outcome || ""}` : "";
    return `${s.name}: ${r.state} · ${r.attempts} attempts, ${r.successes} succeeded · ${latch}${last}`;
  });
  document.getElementById("footer").textContent =
    `started ${when(state.started_at)} · ${state.reloads} reloads · recovery ${state.recovery.coordinated ? "coordinated through Redis" : "in this process"}`;
}

async function poll() {
  const connection = document.getElementById("connection");
  try {
    // With the token entered, the state includes what only its bearer sees (targets,
    // error texts, reasons), as /ops/health does.
    const sent = token;
    const headers = sent === null ? {} : { Authorization: bearer(sent) };
    const reply = await fetch("/api/state", { cache: "no-store", headers });
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    const state = await reply.json();
    if (sent !== null && sent === token && state.running && !state.sensitive) {
      // The service answered without the detail its token grants: not that token.
      token = null;
      document.getElementById("token-state").textContent = "token refused: enter it again";
    }
    failures = 0;
    lastOk = Date.now();
    connection.className = "connection";
    connection.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
    if (state.running) render(state);
  } catch (error) {
    failures += 1;
    connection.className = "connection lost";
    connection.textContent = `reconnecting… (last update ${lastOk ? new Date(lastOk).toLocaleTimeString() : "never"})`;
  }
}

function loop() {
  const delay = failures ? Math.min(MAX_BACKOFF_MS, POLL_MS * 2 ** (failures - 1)) : POLL_MS;
  setTimeout(async () => { await poll(); loop(); }, delay);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    token = input.value.trim() || null;
    input.value = "";
    document.getElementById("token-state").textContent = token
      ? (controlsShown ? "controls unlocked, details shown" : "token entered: details shown")
      : "enter the token for the controls and details";
    poll();
  });
  poll().then(loop);
});
