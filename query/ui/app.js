// auditlog admin UI: plain JavaScript, no build step.  Talks to /api/v1 with the
// API key kept in sessionStorage (never localStorage, never a cookie).
"use strict";

const FILTERS = ["from", "to", "user", "action", "target", "domain", "ip", "recipient", "success", "node"];
const PAGE = 200;
const $ = (sel) => document.querySelector(sel);
const state = { cursor: null, entries: [], violations: 0, nodes: {} };

function key() { return sessionStorage.getItem("auditlog-key"); }

async function api(path, opts = {}) {
  const resp = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), Authorization: "Bearer " + key() } });
  if (!resp.ok) {
    let msg = resp.status + " " + resp.statusText;
    try { msg = (await resp.json()).error.message; } catch (e) { /* not JSON */ }
    const err = new Error(msg);
    err.status = resp.status;
    throw err;
  }
  return resp;
}

function text(el, s) { el.textContent = s == null ? "" : String(s); return el; }
function cell(row, s, cls) { const td = document.createElement("td"); text(td, s); if (cls) td.className = cls; row.appendChild(td); return td; }

// -- sign in -------------------------------------------------------------------------

async function signIn(k) {
  sessionStorage.setItem("auditlog-key", k);
  try {
    const who = await (await api("/api/v1/whoami")).json();
    text($("#who"), `${who.name} · role ${who.role} · node ${who.node}`);
    $("#signin").hidden = true;
    $("#main").hidden = false;
    $("#signout").hidden = false;
    formFromUrl();
    search();
  } catch (e) {
    sessionStorage.removeItem("auditlog-key");
    showSignIn(e.status === 401 ? "That API key is not valid." : e.message);
  }
}

function showSignIn(msg) {
  $("#signin").hidden = false;
  $("#main").hidden = true;
  $("#signout").hidden = true;
  text($("#who"), "");
  text($("#signin-error"), msg || "");
  $("#apikey").focus();
}

// -- filters <-> URL -----------------------------------------------------------------

function params() {
  const form = $("#filters");
  const p = new URLSearchParams();
  for (const name of FILTERS) {
    const v = form.elements[name].value.trim();
    if (v) p.set(name, v);
  }
  p.set("order", form.elements.order.value);
  return p;
}

function formFromUrl() {
  const q = new URLSearchParams(location.search);
  const form = $("#filters");
  for (const name of FILTERS) form.elements[name].value = q.get(name) || "";
  form.elements.order.value = q.get("order") === "asc" ? "asc" : "desc";
}

// -- results -------------------------------------------------------------------------

async function search() {
  const p = params();
  history.replaceState(null, "", "?" + p.toString());
  state.cursor = null; state.entries = []; state.violations = 0;
  $("#results tbody").replaceChildren();
  $("#report").hidden = true;
  await loadPage();
}

async function loadPage() {
  const p = params();
  p.set("limit", PAGE);
  if (state.cursor) p.set("cursor", state.cursor);
  $("#error-banner").hidden = true;
  let data;
  try {
    data = await (await api("/api/v1/audit-log?" + p.toString())).json();
  } catch (e) {
    if (e.status === 401) return showSignIn("Your API key is no longer valid.");
    text($("#error-banner"), e.message); $("#error-banner").hidden = false;
    return;
  }
  state.cursor = data.next_cursor;
  state.nodes = data.nodes || {};
  const tbody = $("#results tbody");
  for (const e of data.events) {
    state.entries.push(e);
    if (e.integrity !== "ok") state.violations++;
    tbody.appendChild(row(e));
  }
  $("#load-more").hidden = !state.cursor;
  text($("#count"), `${state.entries.length} shown${state.cursor ? ", more available" : ""}`);
  banners();
  histogram();
}

function row(e) {
  const tr = document.createElement("tr");
  tr.tabIndex = 0;
  tr.dataset.id = e.id || "";
  if (e.integrity !== "ok") tr.className = "violation";
  cell(tr, e.ts);
  cell(tr, e.node);
  cell(tr, e.user);
  cell(tr, e.action);
  cell(tr, e.target || (e.details && e.details.subject) || "", "target");
  cell(tr, e.ip || "");
  cell(tr, e.success ? "success" : "failure", e.success ? "" : "outcome-fail");
  tr.addEventListener("click", () => showDetail(e, tr));
  tr.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); showDetail(e, tr); }
    if (ev.key === "ArrowDown" && tr.nextElementSibling) { ev.preventDefault(); tr.nextElementSibling.focus(); }
    if (ev.key === "ArrowUp" && tr.previousElementSibling) { ev.preventDefault(); tr.previousElementSibling.focus(); }
  });
  return tr;
}

function banners() {
  const vb = $("#violation-banner");
  if (state.violations > 0) {
    text(vb, `Integrity violation: ${state.violations} entr${state.violations === 1 ? "y" : "ies"} in this result failed verification (highlighted). The log may have been tampered with.`);
    vb.hidden = false;
  } else vb.hidden = true;
  const down = Object.entries(state.nodes).filter(([, s]) => s.status !== "ok");
  const ub = $("#unreachable-banner");
  if (down.length) {
    text(ub, down.map(([n, s]) => `Node ${n} temporarily unreachable${s.error ? " (" + s.error + ")" : ""}: its entries are missing from this result.`).join(" "));
    ub.hidden = false;
  } else ub.hidden = true;
}

function showDetail(e, tr) {
  const dl = $("#detail-body");
  dl.replaceChildren();
  const add = (k, v, pre) => {
    const dt = document.createElement("dt"); text(dt, k);
    const dd = document.createElement("dd");
    if (pre) { const p = document.createElement("pre"); text(p, v); dd.appendChild(p); } else text(dd, v);
    dl.append(dt, dd);
  };
  add("id", e.id); add("time", e.ts); add("node", e.node); add("user", e.user); add("action", e.action);
  add("target", e.target || "–"); add("domain", e.domain || "–"); add("ip", e.ip || "–");
  add("user agent", e.user_agent || "–"); add("outcome", e.success ? "success" : "failure");
  add("details", JSON.stringify(e.details, null, 2), true);
  add("signature", e.signature);
  add("integrity", e.integrity + (e.violation ? ": " + e.violation : ""));
  text($("#detail-title"), "Entry " + (e.id || ""));
  $("#detail").hidden = false;
  $("#detail").dataset.returnTo = tr.dataset.id;
  $("#detail-close").focus();
}

function closeDetail() {
  const d = $("#detail");
  d.hidden = true;
  const back = document.querySelector(`#results tr[data-id="${CSS.escape(d.dataset.returnTo || "")}"]`);
  if (back) back.focus();
}

// -- histogram -----------------------------------------------------------------------

function histogram() {
  const svg = $("#histogram");
  svg.replaceChildren();
  const ts = state.entries.filter((e) => e.ts).map((e) => Date.parse(e.ts));
  if (!ts.length) { text($("#histogram-caption"), ""); return; }
  const lo = Math.min(...ts), hi = Math.max(...ts);
  const n = 48, span = Math.max(hi - lo, 1), width = svg.clientWidth || 800, h = 64;
  const bins = new Array(n).fill(0), bad = new Array(n).fill(0);
  state.entries.forEach((e) => {
    if (!e.ts) return;
    const i = Math.min(n - 1, Math.floor(((Date.parse(e.ts) - lo) / span) * n));
    bins[i]++; if (e.integrity !== "ok") bad[i]++;
  });
  const max = Math.max(...bins), bw = width / n;
  const ns = "http://www.w3.org/2000/svg";
  bins.forEach((c, i) => {
    if (!c) return;
    const r = document.createElementNS(ns, "rect");
    const bh = Math.max(2, (c / max) * (h - 4));
    r.setAttribute("x", i * bw + 1); r.setAttribute("width", Math.max(1, bw - 2));
    r.setAttribute("y", h - bh); r.setAttribute("height", bh);
    if (bad[i]) r.setAttribute("class", "bad");
    const t = document.createElementNS(ns, "title");
    t.textContent = `${c} events from ${new Date(lo + (span * i) / n).toISOString()}`;
    r.appendChild(t); svg.appendChild(r);
  });
  text($("#histogram-caption"), `${ts.length} loaded events, ${new Date(lo).toISOString()} – ${new Date(hi).toISOString()}, ${n} intervals`);
}

// -- exports and reports -------------------------------------------------------------

async function download(path, filename) {
  const p = params();
  try {
    const blob = await (await api(path + "?" + p.toString())).blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = filename;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) {
    text($("#error-banner"), "Export failed: " + e.message); $("#error-banner").hidden = false;
  }
}

async function fourEyes() {
  const p = new URLSearchParams();
  const form = $("#filters");
  for (const name of ["from", "to", "node"]) if (form.elements[name].value.trim()) p.set(name, form.elements[name].value.trim());
  let rep;
  try { rep = await (await api("/api/v1/reports/four-eyes?" + p.toString())).json(); }
  catch (e) { text($("#error-banner"), e.message); $("#error-banner").hidden = false; return; }
  const body = $("#report-body");
  body.replaceChildren();
  const table = document.createElement("table");
  table.className = "report-table";
  table.innerHTML = "<thead><tr><th scope='col'>Time</th><th scope='col'>Entry</th><th scope='col'>Action</th><th scope='col'>Target</th><th scope='col'>By</th><th scope='col'>Confirmed by</th><th scope='col'>Verdict</th></tr></thead>";
  const tb = document.createElement("tbody");
  for (const r of rep.rotations) {
    const tr = document.createElement("tr");
    cell(tr, r.ts); cell(tr, r.id); cell(tr, r.action); cell(tr, r.target); cell(tr, r.user);
    cell(tr, r.confirmed_by.join(", ") || "–");
    cell(tr, r.ok ? "ok" : r.problem, r.ok ? "good" : "bad");
    tb.appendChild(tr);
  }
  for (const o of rep.orphan_confirmations) {
    const tr = document.createElement("tr");
    cell(tr, o.ts); cell(tr, o.id); cell(tr, o.action); cell(tr, "confirms " + o.confirms); cell(tr, o.user);
    cell(tr, "–"); cell(tr, o.problem, "bad");
    tb.appendChild(tr);
  }
  table.appendChild(tb);
  const summary = document.createElement("p");
  text(summary, rep.rotations.length ? (rep.ok ? "Every action was confirmed by a second, different person." : "Some actions lack a second pair of eyes.") : "No actions needing confirmation in this range.");
  body.append(summary, table);
  $("#report").hidden = false;
  $("#report").scrollIntoView({ behavior: "smooth" });
}

// -- wiring --------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", (ev) => { ev.preventDefault(); signIn($("#apikey").value.trim()); });
  $("#signout").addEventListener("click", () => { sessionStorage.removeItem("auditlog-key"); showSignIn(""); });
  $("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
  $("#reset").addEventListener("click", () => { $("#filters").reset(); search(); });
  document.querySelectorAll("[data-range]").forEach((b) => b.addEventListener("click", () => {
    $("#filters").elements.from.value = b.dataset.range; $("#filters").elements.to.value = ""; search();
  }));
  $("#load-more").addEventListener("click", loadPage);
  $("#export-csv").addEventListener("click", () => download("/api/v1/audit-log/export.csv", "auditlog.csv"));
  $("#export-pdf").addEventListener("click", () => download("/api/v1/audit-log/export.pdf", "auditlog-report.pdf"));
  $("#four-eyes").addEventListener("click", fourEyes);
  $("#detail-close").addEventListener("click", closeDetail);
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !$("#detail").hidden) closeDetail(); });
  if (key()) signIn(key()); else showSignIn("");
});
