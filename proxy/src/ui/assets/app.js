// Tollgate web UI: one page, live over server-sent events (/api/events), no build step.
// Memory stays bounded: the table keeps at most MAX_ROWS flows; the map mirrors the server's bounded snapshot.
"use strict";

const MAX_ROWS = 500;
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const COLORS = { forwarded: "#2f9e6b", error: "#e09a2b", dropped: "#dc3d3d" };

const state = {
  ns: "",
  selection: null, // {type: "node"|"edge", id, from?, to?}
  rows: [],
  selectedFlow: null,
  snap: null,
  es: null,
  structure: "",
  tab: "flows",
  firstLayout: true,
  seq: 0,
};

cytoscape.use(cytoscapeFcose);

const cy = cytoscape({
  container: $("map"),
  wheelSensitivity: 0.25,
  minZoom: 0.2,
  maxZoom: 2.5,
  style: [
    { selector: "node.ns", style: {
      "shape": "round-rectangle", "background-color": "#e9eef5", "background-opacity": 0.55,
      "border-width": 1, "border-color": "#c9d3df", "border-style": "dashed",
      "label": "data(label)", "text-valign": "top", "text-halign": "center", "text-margin-y": -4,
      "font-size": 14, "font-weight": 700, "color": "#5b6b80", "padding": 22,
      "font-family": "DejaVu Sans, sans-serif" } },
    { selector: "node.outside", style: { "background-color": "#f4efe6", "border-color": "#dccfb6" } },
    { selector: "node.wl", style: {
      "shape": "round-rectangle", "width": 150, "height": 50, "background-color": "#ffffff",
      "border-width": 1.5, "border-color": "#b8c4d3", "label": "data(label)", "text-wrap": "wrap",
      "text-valign": "center", "font-size": 14, "line-height": 1.35, "color": "#1d2733", "font-family": "DejaVu Sans, sans-serif" } },
    { selector: "node.wl.world, node.wl.fqdn, node.wl.host", style: { "shape": "ellipse", "width": 120, "background-color": "#fffaf0", "border-color": "#d9c394" } },
    { selector: "node.wl.hasdrops", style: { "border-color": "#dc3d3d", "border-width": 2.5 } },
    { selector: "node.wl:selected", style: { "border-color": "#3b6fd8", "border-width": 3, "background-color": "#eef3fd" } },
    { selector: "edge", style: {
      "curve-style": "bezier", "target-arrow-shape": "triangle", "arrow-scale": 1.1,
      "line-color": "data(color)", "target-arrow-color": "data(color)", "width": "data(width)",
      "label": "data(label)", "font-size": 12, "text-rotation": "none", "color": "#34445a", "text-wrap": "wrap",
      "text-background-color": "#ffffff", "text-background-opacity": 0.92, "text-background-padding": 2,
      "text-background-shape": "round-rectangle", "font-family": "DejaVu Sans, sans-serif" } },
    { selector: "edge.dropped", style: { "line-style": "dashed", "line-dash-pattern": [7, 4], "color": "#b42323" } },
    { selector: "edge:selected", style: { "overlay-color": "#3b6fd8", "overlay-opacity": 0.15, "overlay-padding": 6 } },
  ],
});

// ---------- formatting ----------
function fmtRate(r) { return r >= 10 ? r.toFixed(0) : r >= 0.1 ? r.toFixed(1) : r > 0 ? r.toFixed(2) : "0"; }
function fmtMs(ms) { return ms == null ? "–" : ms >= 100 ? ms.toFixed(0) + " ms" : ms >= 1 ? ms.toFixed(1) + " ms" : (ms * 1000).toFixed(0) + " µs"; }
function fmtTime(ns) {
  const d = new Date(ns / 1e6);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}
function shortWl(id) { return id.startsWith("reserved:") ? id.slice(9) : id.startsWith("fqdn:") ? id.slice(5) : id; }
function endpointText(e) {
  if (e.pod) return `${e.namespace}/${e.pod}`;
  return e.ip ? `${shortWl(e.workload)} ${e.ip}` : shortWl(e.workload);
}

// ---------- live connection ----------
function filterParams() {
  const p = new URLSearchParams();
  for (const el of $("filters").elements) {
    if (el.name && el.value.trim()) p.set(el.name, el.value.trim());
  }
  if (state.selection?.type === "node") p.set("workload", state.selection.id);
  if (state.selection?.type === "edge") p.set("edge", state.selection.from + "," + state.selection.to);
  if (state.ns) p.set("ns", state.ns);
  return p;
}

async function reload() {
  // Only the newest request may fill the table: answers to older filters can arrive late.
  const seq = ++state.seq;
  if (state.es) { state.es.close(); state.es = null; }
  const p = filterParams();
  p.set("limit", String(MAX_ROWS));
  const resp = await fetch("/api/flows?" + p);
  const body = await resp.json();
  if (seq !== state.seq) return;
  if (!resp.ok) { $("filter-error").textContent = body.error; return; }
  $("filter-error").textContent = "";
  state.rows = body.flows;
  renderRows(false);
  connect();
}

function connect() {
  if (state.es) state.es.close();
  const es = new EventSource("/api/events?" + filterParams());
  state.es = es;
  es.addEventListener("open", () => { $("live").classList.add("on"); $("live-text").textContent = "live"; });
  es.addEventListener("error", () => { $("live").classList.remove("on"); $("live-text").textContent = "reconnecting"; });
  es.addEventListener("snapshot", (ev) => render(JSON.parse(ev.data)));
  es.addEventListener("flows", (ev) => {
    const fresh = JSON.parse(ev.data).flows;
    const seen = new Set(state.rows.map((r) => r.uuid));
    const add = fresh.filter((r) => !seen.has(r.uuid));
    if (!add.length) return;
    state.rows = add.concat(state.rows).slice(0, MAX_ROWS);
    renderRows(true, new Set(add.map((r) => r.uuid)));
  });
}

// ---------- snapshot ----------
function render(snap) {
  state.snap = snap;
  window.tollgate.snapshots += 1;
  $("source").textContent = snap.source;
  const sel = $("ns");
  const known = new Set([...sel.options].map((o) => o.value));
  for (const ns of snap.map.namespaces) {
    if (!known.has(ns)) sel.add(new Option(ns, ns));
  }
  const rate = snap.map.edges.reduce((a, e) => a + e.rate, 0);
  const dropsMin = snap.map.edges.reduce((a, e) => a + e.recent_drops, 0);
  $("stat-rate").textContent = fmtRate(rate);
  $("stat-drops").textContent = dropsMin;
  $("stat-drops").classList.toggle("bad", dropsMin > 0);
  $("stat-flows").textContent = snap.flows_seen.toLocaleString();
  $("stat-lost").textContent = snap.flows_lost ? `${snap.flows_lost.toLocaleString()} skipped (UI behind)` : "";
  renderMap(snap.map);
  renderDrops(snap.drops);
  renderHttp(snap.http);
  renderDns(snap.dns);
  if (state.selection && !state.selectedFlow) renderSelectionDetail();
}

function renderMap(map) {
  $("map-empty").classList.toggle("hidden", map.nodes.length > 0);
  const nsIds = new Set();
  const elements = [];
  for (const n of map.nodes) {
    const parent = n.namespace ? "ns:" + n.namespace : "ns:~outside";
    nsIds.add(parent);
    const pods = n.kind === "pod" ? `\n${n.pods.length} pod${n.pods.length === 1 ? "" : "s"}` : "";
    elements.push({ group: "nodes", data: { id: n.id, parent, label: n.name + pods }, classes: "wl " + n.kind });
  }
  // Compound (namespace) nodes go first: a child can only be added once its parent exists.
  elements.unshift(...[...nsIds].sort().map((id) => {
    const outside = id === "ns:~outside";
    return { group: "nodes", data: { id, label: outside ? "outside the cluster" : id.slice(3) }, classes: "ns" + (outside ? " outside" : "") };
  }));
  const dropTargets = new Set();
  for (const e of map.edges) {
    if (e.recent_drops > 0) dropTargets.add(e.to);
    const head = e.protocols.join("/") + (e.ports.length ? " :" + e.ports.join(",") : "") + " · " + fmtRate(e.rate) + "/s";
    const tail = [];
    if (e.errors) tail.push(e.errors + " errors");
    if (e.drops) tail.push(e.drops + " dropped");
    const parts = tail.length ? [head + "\n" + tail.join(" · ")] : [head];
    elements.push({ group: "edges", data: {
      id: e.from + "->" + e.to, source: e.from, target: e.to, label: parts.join(" · "),
      color: COLORS[e.verdict], width: Math.min(7, 1.6 + Math.log2(1 + e.rate * 4)),
      verdict: e.verdict, drops: e.drops, requests: e.requests,
    }, classes: e.verdict });
  }
  const structure = elements.map((e) => e.data.id).sort().join("|");
  cy.batch(() => {
    const want = new Set(elements.map((e) => e.data.id));
    cy.elements().forEach((el) => { if (!want.has(el.id())) el.remove(); });
    for (const el of elements) {
      const have = cy.getElementById(el.data.id);
      if (have.nonempty()) {
        have.data(el.data);
        have.classes(el.classes);
      } else {
        cy.add(el);
      }
    }
    cy.nodes(".wl").forEach((n) => n.toggleClass("hasdrops", dropTargets.has(n.id())));
  });
  if (structure !== state.structure) {
    state.structure = structure;
    cy.layout({
      name: "fcose", animate: !state.firstLayout, animationDuration: 400, randomize: state.firstLayout,
      nodeRepulsion: 4500, idealEdgeLength: 120, nodeSeparation: 80, nestingFactor: 0.2, gravity: 0.8,
      gravityCompound: 2.0, gravityRangeCompound: 1.2, tilingPaddingVertical: 20, tilingPaddingHorizontal: 20,
      fit: true, padding: 36,
      stop: () => {
        // A small map fills the pane but never zooms past readable; a large one stays fitted.
        if (cy.zoom() > 1.6) { cy.zoom(1.6); cy.center(); }
      },
    }).run();
    state.firstLayout = false;
  }
  if (state.selection) {
    const el = cy.getElementById(state.selection.type === "edge" ? state.selection.from + "->" + state.selection.to : state.selection.id);
    if (el.nonempty() && !el.selected()) { cy.elements().unselect(); el.select(); }
  }
}

cy.on("tap", "node.wl", (ev) => select({ type: "node", id: ev.target.id() }));
cy.on("tap", "edge", (ev) => select({ type: "edge", id: ev.target.id(), from: ev.target.data("source"), to: ev.target.data("target") }));
cy.on("tap", (ev) => { if (ev.target === cy) select(null); });

function select(sel) {
  state.selection = sel;
  state.selectedFlow = null;
  if (!sel) cy.elements().unselect();
  const box = $("selection");
  box.innerHTML = sel
    ? `<span class="pill">${sel.type === "edge" ? esc(shortWl(sel.from) + " → " + shortWl(sel.to)) : esc(shortWl(sel.id))} <button id="unselect" title="clear">×</button></span>`
    : "";
  if (sel) $("unselect").onclick = () => select(null);
  showTab("flows");
  renderSelectionDetail();
  reload();
}

// ---------- detail panel ----------
function renderSelectionDetail() {
  const d = $("detail");
  const snap = state.snap;
  const sel = state.selection;
  if (!sel || !snap) {
    d.innerHTML = `<div class="placeholder"><h3>Nothing selected</h3><p>Select a workload or an edge on the map to see its traffic, or a flow in the table to see which rule allowed it or why it was denied.</p></div>`;
    return;
  }
  if (sel.type === "node") {
    const n = snap.map.nodes.find((x) => x.id === sel.id);
    const out = snap.map.edges.filter((e) => e.from === sel.id);
    const inn = snap.map.edges.filter((e) => e.to === sel.id);
    const eps = snap.http.filter((h) => h.workload === sel.id);
    const names = snap.dns.filter((x) => x.workload === sel.id);
    const edgeRows = (list, side) => list.map((e) => `<tr><td>${esc(shortWl(e[side]))}</td><td>${esc(e.protocols.join("/"))}</td><td class="num">${fmtRate(e.rate)}/s</td><td class="num">${e.drops ? `<b style="color:var(--drop)">${e.drops} dropped</b>` : ""}</td></tr>`).join("");
    d.innerHTML = `<div class="kicker">Workload</div><h3>${esc(n ? n.name : sel.id)}</h3>
      <dl><dt>Namespace</dt><dd>${esc(n?.namespace ?? "outside the cluster")}</dd>
      <dt>Identity</dt><dd>${n?.identity ?? ""}</dd>
      <dt>Pods</dt><dd><div class="chips">${(n?.pods ?? []).map((p) => `<span class="chip">${esc(p)}</span>`).join("")}</div></dd></dl>
      ${inn.length ? `<div class="kicker">Inbound</div><table class="mini">${edgeRows(inn, "from")}</table>` : ""}
      ${out.length ? `<div class="kicker">Outbound</div><table class="mini">${edgeRows(out, "to")}</table>` : ""}
      ${eps.length ? `<div class="kicker">HTTP endpoints</div><table class="mini">${eps.slice(0, 12).map((h) => `<tr><td class="mono">${esc(h.method)} ${esc(h.path)}</td><td class="num">${fmtRate(h.rate)}/s</td><td class="num">p99 ${fmtMs(h.p99_ms)}</td></tr>`).join("")}</table>` : ""}
      ${names.length ? `<div class="kicker">DNS names</div><table class="mini">${names.slice(0, 12).map((x) => `<tr><td class="mono">${esc(x.name)}</td><td class="mono">${esc(x.ips.join(", "))}</td></tr>`).join("")}</table>` : ""}`;
  } else {
    const e = snap.map.edges.find((x) => x.from === sel.from && x.to === sel.to);
    if (!e) return;
    d.innerHTML = `<div class="kicker">Edge</div><h3>${esc(shortWl(e.from))} → ${esc(shortWl(e.to))}</h3>
      <dl><dt>Protocols</dt><dd>${esc(e.protocols.join(", "))}</dd><dt>Ports</dt><dd>${esc(e.ports.join(", "))}</dd>
      <dt>Rate</dt><dd>${fmtRate(e.rate)} req/s (last minute)</dd><dt>Requests</dt><dd>${e.requests}</dd>
      <dt>Errors</dt><dd>${e.errors}</dd><dt>Dropped</dt><dd>${e.drops ? `<b style="color:var(--drop)">${e.drops}</b> (${e.recent_drops} in the last minute)` : "0"}</dd></dl>
      <p class="muted">The table below shows this edge's flows; select one to see the rule that decided it.</p>`;
  }
}

function renderFlowDetail(r) {
  const ok = r.verdict === "FORWARDED";
  const denied = r.drop_reason && r.drop_reason.startsWith("POLICY") || r.drop_reason === "AUTH_REQUIRED";
  const cls = ok ? "allow" : denied ? "deny" : "other";
  const title = ok ? "Allowed" : denied ? "Denied by policy" : r.verdict === "ERROR" ? "Failed" : "Dropped";
  const pol = r.policies.map((p) => `<div><span class="chip">${esc(p.role)}</span> ${esc(p.kind)} <b>${esc(p.namespace ? p.namespace + "/" : "")}${esc(p.name)}</b> <span class="muted">rev ${p.revision}</span></div>`).join("");
  $("detail").innerHTML = `<div class="kicker">Flow · ${esc(r.kind)}</div>
    <h3><span class="badge ${esc(r.verdict)}">${esc(r.verdict)}</span> ${esc(r.protocol)}</h3>
    <div class="flowline">${esc(endpointText(r.source))}:${r.source.port}<br>→ ${esc(endpointText(r.destination))}:${r.destination.port}</div>
    <div class="policy-box ${cls}" id="policy-box"><div class="title">${title}${r.drop_reason ? ` · ${esc(r.drop_reason)}` : ""}</div>
      <code>${esc(r.policy || (ok ? "no L7 rule recorded for this flow" : "no reason recorded"))}</code>${pol ? `<div style="margin-top:6px">${pol}</div>` : ""}</div>
    <dl><dt>Time</dt><dd>${esc(r.time.replace("T", " ").replace(/\.(\d{3})\d*Z$/, ".$1 UTC"))}</dd><dt>Summary</dt><dd class="mono">${esc(r.summary)}</dd>
    ${r.http_status ? `<dt>HTTP status</dt><dd>${r.http_status}</dd>` : ""}
    ${r.latency_ms != null ? `<dt>Latency</dt><dd>${fmtMs(r.latency_ms)}</dd>` : ""}
    <dt>Direction</dt><dd>${esc(r.direction)}</dd><dt>Node</dt><dd>${esc(r.node)}</dd>
    ${r.auth ? `<dt>Auth</dt><dd>${esc(r.auth)}</dd>` : ""}
    <dt>Source labels</dt><dd><div class="chips">${r.source.labels.map((l) => `<span class="chip">${esc(l)}</span>`).join("")}</div></dd>
    <dt>Dest. labels</dt><dd><div class="chips">${r.destination.labels.map((l) => `<span class="chip">${esc(l)}</span>`).join("")}</div></dd></dl>`;
}

// ---------- tables ----------
function renderRows(live, fresh) {
  $("count-flows").textContent = state.rows.length;
  $("flow-rows").innerHTML = state.rows.map((r) => `<tr data-uuid="${esc(r.uuid)}" class="${fresh && fresh.has(r.uuid) ? "fresh" : ""}${state.selectedFlow === r.uuid ? " sel" : ""}${r.kind === "policy-verdict" ? " pv" : ""}">
    <td class="mono muted">${fmtTime(r.time_ns)}</td>
    <td>${esc(endpointText(r.source))}</td><td class="muted">${r.kind === "response" ? "←" : "→"}</td>
    <td>${esc(endpointText(r.destination))}${r.destination.port ? `<span class="muted">:${r.destination.port}</span>` : ""}</td>
    <td><span class="proto">${esc(r.protocol)}</span></td>
    <td class="mono">${r.kind === "policy-verdict" ? `<span class="muted">policy verdict ·</span> ${esc(r.summary)}` : esc(r.summary)}</td>
    <td><span class="badge ${esc(r.verdict)}">${esc(r.verdict)}</span></td></tr>`).join("");
}

$("flow-rows").addEventListener("click", (ev) => {
  const tr = ev.target.closest("tr");
  if (!tr) return;
  const r = state.rows.find((x) => x.uuid === tr.dataset.uuid);
  if (!r) return;
  state.selectedFlow = r.uuid;
  for (const el of document.querySelectorAll("#flow-rows tr.sel")) el.classList.remove("sel");
  tr.classList.add("sel");
  renderFlowDetail(r);
});

function renderDrops(rows) {
  $("count-drops").textContent = rows.reduce((a, r) => a + r.count, 0);
  const max = Math.max(1, ...rows.map((r) => r.count));
  $("drop-rows").innerHTML = rows.map((r, i) => `<tr><td class="rank">${i + 1}</td>
    <td><span class="badge DROPPED">${esc(r.reason)}</span></td><td class="wrap">${esc(r.detail || "–")}</td>
    <td class="num"><span class="bar"><i style="width:${(100 * r.count / max).toFixed(0)}%"></i></span>${r.count}</td>
    <td class="num">${r.recent}</td><td class="mono muted wrap">${esc(r.example)}</td></tr>`).join("")
    || `<tr><td colspan="6" class="muted">No drops.</td></tr>`;
}

function renderHttp(rows) {
  $("count-http").textContent = rows.length;
  $("http-rows").innerHTML = rows.map((r) => `<tr><td>${esc(shortWl(r.workload))}</td><td class="mono">${esc(r.method)}</td>
    <td class="mono">${esc(r.path)}</td><td class="num">${r.requests}</td><td class="num">${fmtRate(r.rate)}/s</td>
    <td><span class="bar"><i style="width:${(100 * r.error_rate).toFixed(0)}%"></i></span>${(100 * r.error_rate).toFixed(1)}%${r.drops ? ` <span class="muted">(${r.drops} denied)</span>` : ""}</td>
    <td class="num">${fmtMs(r.p50_ms)}</td><td class="num">${fmtMs(r.p99_ms)}</td></tr>`).join("")
    || `<tr><td colspan="8" class="muted">No HTTP traffic yet.</td></tr>`;
}

function renderDns(rows) {
  $("count-dns").textContent = rows.length;
  $("dns-rows").innerHTML = rows.map((r) => `<tr><td>${esc(shortWl(r.workload))}</td><td class="mono">${esc(r.name)}</td>
    <td class="mono wrap">${esc(r.ips.join(", ")) || '<span class="muted">–</span>'}</td><td class="num">${r.queries}</td>
    <td class="num">${r.refused ? `<b style="color:var(--drop)">${r.refused}</b>` : 0}</td>
    <td class="wrap">${r.fqdn_rules.length ? r.fqdn_rules.map((x) => `<span class="chip">${esc(x)}</span>`).join(" ") : '<span class="muted">none (IPs opened nothing)</span>'}</td></tr>`).join("")
    || `<tr><td colspan="6" class="muted">No DNS traffic yet.</td></tr>`;
}

// ---------- controls ----------
function showTab(name) {
  state.tab = name;
  for (const b of $("tabs").querySelectorAll("button[data-tab]")) b.classList.toggle("active", b.dataset.tab === name);
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("hidden", t.id !== "tab-" + name);
}
for (const b of $("tabs").querySelectorAll("button[data-tab]")) b.onclick = () => showTab(b.dataset.tab);

let typing = null;
$("filters").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(reload, 300); });
$("filters").addEventListener("change", () => { clearTimeout(typing); reload(); });
$("filters").addEventListener("submit", (ev) => { ev.preventDefault(); reload(); });
$("filters").addEventListener("reset", () => setTimeout(reload, 0));
$("ns").addEventListener("change", () => {
  state.ns = $("ns").value;
  state.structure = "";
  state.firstLayout = true;
  reload();
});

// For people poking at the page from devtools, and for the browser test.
window.tollgate = {
  cy, state, snapshots: 0,
  nodes: () => cy.nodes(".wl").map((n) => n.id()).sort(),
  edges: () => cy.edges().map((e) => ({ from: e.data("source"), to: e.data("target"), verdict: e.data("verdict"), drops: e.data("drops"), requests: e.data("requests") })),
  rows: () => state.rows.length,
  select,
};

reload();
