// auditlog admin UI: plain JavaScript, no build step.  Talks to /api/v1 with the
// API key kept in sessionStorage (never localStorage, never a cookie).
"use strict";

const FILTERS = ["from", "to", "user", "action", "target", "domain", "ip", "recipient", "success", "node"];
const PAGE = 200;
const $ = (sel) => document.querySelector(sel);
// query: the parameters of the search on screen, relative times pinned (see pinTimes);
// shown: the same as the person typed them (the URL); gen: bumped by every search so
// that answers to a superseded search are dropped instead of mixed in.
const state = { cursor: null, entries: [], violations: 0, down: {}, query: null, shown: null, gen: 0,
                loading: false, returnTo: null, skew: 0, total: null, histogram: null,
                local: sessionStorage.getItem("auditlog-tz") === "local", live: null };

// Times come as RFC 3339 UTC with microseconds; shown as they are, or in the browser's
// time zone (the toggle), microseconds kept either way.
function showTime(iso) {
  if (!iso || !state.local) return iso || "";
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) return iso;
  const d = new Date(t), pad = (n, w = 2) => String(n).padStart(w, "0");
  const off = -d.getTimezoneOffset(), sign = off >= 0 ? "+" : "-";
  const micro = (iso.match(/\.(\d+)Z$/) || [, "000000"])[1];
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:` +
    `${pad(d.getSeconds())}.${micro} ${sign}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`;
}

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
    const resp = await api("/api/v1/whoami");
    const server = Date.parse(resp.headers.get("Date") || "");
    state.skew = Number.isFinite(server) ? server - Date.now() : 0;
    const who = await resp.json();
    text($("#who"), `${who.name} · role ${who.role} · node ${who.node}`);
    $("#signin").hidden = true;
    text($("#signin-error"), "");   // a stale "not valid" must not come back with the form
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

// "-24h", "now": the API resolves them against its clock at every request, so a
// cursor from page 1 would no longer match page 2's filter.  One search pins them
// to absolute times once (on the server's clock, from the Date header), while the
// URL keeps what was typed, so a shared "last 24 h" link stays relative.
const RELATIVE = /^-(\d{1,12})([smhdw])$/;
const UNIT_MS = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3, w: 7 * 86400e3 };

function pinTime(v, now) {
  const m = RELATIVE.exec(v);
  let t = null;
  if (m) t = now - Number(m[1]) * UNIT_MS[m[2]];
  else if (v.toLowerCase() === "now") t = now;
  if (t === null || !Number.isFinite(t) || t < 0) return v;   // the API explains what is wrong
  return new Date(t).toISOString();
}

function pinTimes(p) {
  const q = new URLSearchParams(p);
  const now = Date.now() + state.skew;
  for (const name of ["from", "to"]) if (q.has(name)) q.set(name, pinTime(q.get(name), now));
  return q;
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
  state.shown = p.toString();
  state.query = pinTimes(p);
  state.gen++;
  state.cursor = null; state.entries = []; state.violations = 0; state.down = {};
  state.loading = false; state.total = null; state.histogram = null;
  $("#results tbody").replaceChildren();
  $("#load-more").hidden = true;
  $("#report").hidden = true;
  if (!$("#detail").hidden) closeDetail(false);
  text($("#count"), ""); text($("#histogram-caption"), ""); $("#histogram").replaceChildren();
  banners();   // nothing from the previous search lingers, even if this one fails
  stopLive();
  const gen = state.gen;
  await Promise.all([loadPage(), loadHistogram(gen)]);
  if ($("#live").checked) startLive(gen);
}

// The search on screen is the one in the form (an edited, unsubmitted form is searched
// first), so exports and reports cover exactly what the table and the URL show.
async function applied() {
  if (state.query === null || params().toString() !== state.shown) await search();
  return new URLSearchParams(state.query);
}

// Appends the next page of the search on screen; returns its first new row (or null).
// While a page loads the table is aria-busy and "load more" aria-disabled.
async function loadPage() {
  if (state.loading) return null;      // a double click must not fetch the same page twice
  const gen = state.gen;
  state.loading = true;
  busy(true);
  try {
    return await fetchPage(gen);
  } finally {
    if (gen === state.gen) { state.loading = false; busy(false); }
  }
}

function busy(on) {
  $("#results").setAttribute("aria-busy", on ? "true" : "false");
  // not .disabled: disabling the focused button would drop its focus
  if (on) $("#load-more").setAttribute("aria-disabled", "true"); else $("#load-more").removeAttribute("aria-disabled");
}

async function fetchPage(gen) {
  const p = new URLSearchParams(state.query);
  p.set("limit", PAGE);
  if (state.cursor) p.set("cursor", state.cursor);
  $("#error-banner").hidden = true;
  let data;
  try {
    data = await (await api("/api/v1/audit-log?" + p.toString())).json();
  } catch (e) {
    if (gen !== state.gen) return null;
    if (e.status === 401) { showSignIn("Your API key is no longer valid."); return null; }
    text($("#error-banner"), e.message); $("#error-banner").hidden = false;
    if (!state.entries.length) text($("#count"), "");   // no stale "N shown" over an empty table
    return null;
  }
  if (gen !== state.gen) return null;  // a newer search replaced this one
  state.cursor = data.next_cursor;
  // a node down for any page of this search leaves a gap, even if it is back now
  for (const [n, s] of Object.entries(data.nodes || {})) if (s.status !== "ok") state.down[n] = s;
  const tbody = $("#results tbody");
  let first = null;
  for (const e of data.events) {
    state.entries.push(e);
    if (e.integrity !== "ok") state.violations++;
    const tr = row(e);
    first = first || tr;
    tbody.appendChild(tr);
  }
  $("#load-more").hidden = !state.cursor;
  showCount();
  banners();
  return first;
}

function row(e) {
  const tr = document.createElement("tr");
  tr.tabIndex = 0;
  tr.dataset.id = e.id || "";
  if (e.integrity !== "ok") tr.className = "violation";
  cell(tr, showTime(e.ts));
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
    if (ev.key === "Home" && tr.parentNode.firstElementChild) { ev.preventDefault(); tr.parentNode.firstElementChild.focus(); }
    if (ev.key === "End" && tr.parentNode.lastElementChild) { ev.preventDefault(); tr.parentNode.lastElementChild.focus(); }
  });
  return tr;
}

function banners() {
  const vb = $("#violation-banner");
  if (state.violations > 0) {
    text(vb, `Integrity violation: ${state.violations} entr${state.violations === 1 ? "y" : "ies"} in this result failed verification (highlighted). The log may have been tampered with.`);
    vb.hidden = false;
  } else vb.hidden = true;
  const down = Object.entries(state.down);
  const ub = $("#unreachable-banner");
  if (down.length) {
    text(ub, down.map(([n, s]) => `Node ${n} temporarily unreachable${s.error ? " (" + s.error + ")" : ""}: its entries are missing from this result.`).join(" "));
    ub.hidden = false;
  } else ub.hidden = true;
}

function showDetail(e, tr) {
  const dl = $("#detail-body");
  dl.replaceChildren();
  const add = (k, v, pre, filter) => {
    const dt = document.createElement("dt"); text(dt, k);
    const dd = document.createElement("dd");
    if (pre) { const p = document.createElement("pre"); text(p, v); dd.appendChild(p); }
    else { const span = document.createElement("span"); span.className = "value"; text(span, v); dd.appendChild(span); }
    if (filter && v && v !== "–") {
      // filter on this value: the one field set, the rest of the search kept
      const b = document.createElement("button");
      b.type = "button"; b.className = "filter-on"; b.dataset.field = filter;
      text(b, "filter"); b.setAttribute("aria-label", `Filter on ${k} ${v}`);
      b.addEventListener("click", () => {
        $("#filters").elements[filter].value = v;
        closeDetail(false);
        search();
      });
      dd.append(" ", b);
    }
    dl.append(dt, dd);
  };
  const recipient = e.details && typeof e.details.recipient === "string" ? e.details.recipient : null;
  add("id", e.id); add("time", showTime(e.ts)); add("node", e.node, false, "node"); add("user", e.user, false, "user");
  add("action", e.action, false, "action");
  add("target", e.target || "–", false, "target"); add("domain", e.domain || "–", false, "domain");
  add("ip", e.ip || "–", false, "ip");
  if (recipient) add("recipient", recipient, false, "recipient");
  add("user agent", e.user_agent || "–"); add("outcome", e.success ? "success" : "failure");
  add("details", JSON.stringify(e.details, null, 2), true);
  add("signature", e.signature);
  add("integrity", e.integrity + (e.violation ? ": " + e.violation : ""));
  text($("#detail-title"), "Entry " + (e.id || ""));
  $("#detail").hidden = false;
  state.returnTo = tr;   // the row itself: integrity markers can share (or lack) an id
  $("#detail-close").focus();
}

function closeDetail(refocus = true) {
  $("#detail").hidden = true;
  const back = state.returnTo;
  state.returnTo = null;
  if (refocus && back && back.isConnected) back.focus();
}

// -- histogram -----------------------------------------------------------------------
// Counted by the server over the whole filtered range (GET /api/v1/audit-log/histogram),
// not over the loaded rows; drag across it (or press a bar) to zoom: that sets from/to.

const INTERVALS = [["1s", 1e3], ["5s", 5e3], ["15s", 15e3], ["1m", 6e4], ["5m", 3e5], ["15m", 9e5],
                   ["1h", 36e5], ["3h", 108e5], ["6h", 216e5], ["12h", 432e5], ["1d", 864e5],
                   ["7d", 6048e5], ["30d", 2592e6], ["365d", 31536e6]];
const BARS = 60;

function pickInterval(span) {
  for (const [name, ms] of INTERVALS) if (span / ms <= BARS) return [name, ms];
  return INTERVALS[INTERVALS.length - 1];
}

async function loadHistogram(gen) {
  const q = new URLSearchParams(state.query);
  q.delete("order");   // a count has no order
  const now = Date.now() + state.skew;
  let lo = q.has("from") ? Date.parse(q.get("from")) : NaN;
  let hi = q.has("to") ? Date.parse(q.get("to")) : NaN;
  try {
    if (!Number.isFinite(lo)) {
      // no start: a first look by day says where the matches begin
      const p = new URLSearchParams(q); p.set("interval", "1d");
      const first = await (await api("/api/v1/audit-log/histogram?" + p.toString())).json();
      if (gen !== state.gen) return;
      if (!first.buckets.length) { drawHistogram(first, 0); return; }
      lo = Date.parse(first.buckets[0].start);
      const last = Date.parse(first.buckets[first.buckets.length - 1].start) + 864e5;
      if (!Number.isFinite(hi)) hi = Math.max(Math.min(now, last), lo + 1000);
    }
    if (!Number.isFinite(hi)) hi = now;
    const [name, ms] = pickInterval(Math.max(hi - lo, 1000));
    const p = new URLSearchParams(q);
    p.set("interval", name);
    if (!p.has("from")) p.set("from", new Date(lo - (lo % ms)).toISOString());
    const data = await (await api("/api/v1/audit-log/histogram?" + p.toString())).json();
    if (gen !== state.gen) return;
    drawHistogram(data, ms);
  } catch (e) {
    if (gen !== state.gen) return;
    state.total = null;
    $("#histogram").replaceChildren();
    text($("#histogram-caption"), "No histogram: " + e.message);
  }
}

function drawHistogram(data, ms) {
  state.total = data.count;
  state.histogram = { buckets: data.buckets || [], ms, data };
  showCount();
  const svg = $("#histogram");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const buckets = data.buckets || [];
  if (!buckets.length) { text($("#histogram-caption"), `${data.count} matching events`); return; }
  const width = svg.clientWidth || 800, h = 64, plot = h - 14;
  const max = buckets.reduce((a, b) => (b.count > a ? b.count : a), 0) || 1, bw = width / buckets.length;
  buckets.forEach((b, i) => {
    if (!b.count && !b.violations) return;
    const r = document.createElementNS(ns, "rect");
    const bh = Math.max(2, (b.count / max) * (plot - 2));
    if (b.violations) r.setAttribute("class", "bad");   // entries there that do not verify
    r.setAttribute("x", i * bw + 0.5); r.setAttribute("width", Math.max(1, bw - 1));
    r.setAttribute("y", plot - bh); r.setAttribute("height", bh);
    r.dataset.start = b.start; r.dataset.count = b.count;
    const t = document.createElementNS(ns, "title");
    const per = Object.entries(b.nodes || {}).map(([n, c]) => `${n}: ${c}`).join(", ");
    t.textContent = `${b.count} events from ${showTime(b.start)}${per ? " (" + per + ")" : ""}` +
      (b.violations ? `, ${b.violations} that do not verify` : "");
    r.appendChild(t); svg.appendChild(r);
  });
  // axes: the first and last bucket's start, and the tallest bar's count
  const label = (x, y, s, anchor) => {
    const el = document.createElementNS(ns, "text");
    el.setAttribute("x", x); el.setAttribute("y", y); el.setAttribute("text-anchor", anchor);
    el.setAttribute("class", "axis"); el.textContent = s; svg.appendChild(el);
  };
  label(2, h - 2, shortTime(buckets[0].start), "start");
  label(width - 2, h - 2, shortTime(buckets[buckets.length - 1].start), "end");
  label(width - 2, 9, `max ${max}`, "end");
  const bad = data.violations ? `, ${data.violations} that do not verify` : "";
  const down = Object.entries(data.nodes || {}).filter(([, s]) => s.status !== "ok").map(([n]) => n);
  text($("#histogram-caption"),
    `${data.count} matching events${bad} · ${buckets.length} × ${data.interval}` +
    (down.length ? ` · without ${down.join(", ")} (unreachable)` : "") + " · drag across it to zoom");
}

function shortTime(iso) { return showTime(iso).replace(".000000", "").replace(/:00(Z?)$/, "$1"); }

function showCount() {
  const total = state.total == null ? "" : ` of ${state.total}`;
  text($("#count"), `${state.entries.length}${total} shown${state.cursor ? ", more available" : ""}`);
}

// brush: drag across the chart to set from/to (a click on a bar zooms into its bucket)
function wireBrush() {
  const svg = $("#histogram");
  let x0 = null, band = null;
  const at = (ev) => { const r = svg.getBoundingClientRect(); return Math.min(Math.max(ev.clientX - r.left, 0), r.width); };
  const timeAt = (x) => {
    const hgm = state.histogram, r = svg.getBoundingClientRect();
    if (!hgm || !hgm.buckets.length) return null;
    const i = (x / r.width) * hgm.buckets.length;
    return Date.parse(hgm.buckets[0].start) + i * hgm.ms;
  };
  svg.addEventListener("mousedown", (ev) => {
    if (!state.histogram || !state.histogram.buckets.length) return;
    x0 = at(ev);
    band = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    band.setAttribute("class", "brush"); band.setAttribute("y", 0); band.setAttribute("height", 64);
    band.setAttribute("x", x0); band.setAttribute("width", 0); svg.appendChild(band);
  });
  svg.addEventListener("mousemove", (ev) => {
    if (x0 === null) return;
    const x = at(ev);
    band.setAttribute("x", Math.min(x0, x)); band.setAttribute("width", Math.abs(x - x0));
  });
  const finish = (ev) => {
    if (x0 === null) return;
    const x1 = at(ev), a = Math.min(x0, x1), b = Math.max(x0, x1);
    x0 = null; if (band) band.remove(); band = null;
    let from, to;
    if (b - a < 3) {   // a click: the bucket under it
      const hgm = state.histogram, i = Math.floor((a / svg.getBoundingClientRect().width) * hgm.buckets.length);
      if (!hgm.buckets[i]) return;
      from = Date.parse(hgm.buckets[i].start); to = from + hgm.ms;
    } else {
      from = timeAt(a); to = timeAt(b);
    }
    zoom(from, to);
  };
  svg.addEventListener("mouseup", finish);
  svg.addEventListener("mouseleave", (ev) => { if (x0 !== null) finish(ev); });
}

function zoom(from, to) {
  if (from == null || to == null || !(to > from)) return;
  const form = $("#filters");
  form.elements.from.value = new Date(Math.floor(from / 1000) * 1000).toISOString();
  form.elements.to.value = new Date(Math.ceil(to / 1000) * 1000).toISOString();
  search();
}

// -- live: new entries as they are appended (follow=true) ---------------------------

function stopLive() {
  if (state.live) { state.live.abort(); state.live = null; }
  $("#live-status").hidden = true;
}

async function startLive(gen) {
  stopLive();
  const q = new URLSearchParams(state.query);
  q.delete("order"); q.delete("to"); q.delete("from");   // from now on, as they come
  q.set("follow", "true");
  const ctl = new AbortController();
  state.live = ctl;
  $("#live-status").hidden = false;
  let buf = "";
  try {
    const resp = await api("/api/v1/audit-log?" + q.toString(), { signal: ctl.signal });
    const reader = resp.body.getReader(), dec = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done || gen !== state.gen) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl); buf = buf.slice(nl + 1);
        if (line.trim()) liveLine(JSON.parse(line));
      }
    }
  } catch (e) {
    if (e.name !== "AbortError" && gen === state.gen) {
      text($("#error-banner"), "Live view stopped: " + e.message); $("#error-banner").hidden = false;
    }
  } finally {
    if (state.live === ctl) { state.live = null; $("#live-status").hidden = true; }
  }
}

function liveLine(x) {
  if (x.node_status) {
    const s = x.node_status;
    if (s.status !== "ok") state.down[s.node] = s; else delete state.down[s.node];
    banners();
    return;
  }
  if (!x.id) return;   // a heartbeat
  state.entries.push(x);
  if (x.integrity !== "ok") state.violations++;
  const tr = row(x);
  tr.classList.add("new");
  const tbody = $("#results tbody");
  if (new URLSearchParams(state.query).get("order") === "asc") tbody.appendChild(tr); else tbody.prepend(tr);
  if (state.total != null) state.total++;
  showCount();
  banners();
}

// -- exports and reports -------------------------------------------------------------

async function download(path, filename) {
  const p = await applied();
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
  const q = await applied();
  const p = new URLSearchParams();
  for (const name of ["from", "to", "node"]) if (q.has(name)) p.set(name, q.get(name));
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
  $("#signout").addEventListener("click", () => {
    sessionStorage.removeItem("auditlog-key");
    state.gen++;   // answers still in flight belong to the signed-out session
    stopLive();
    showSignIn("");
  });
  $("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
  // not id="reset": a form control with that id shadows form.reset() (a TypeError on Clear)
  $("#clear-filters").addEventListener("click", () => { $("#filters").reset(); search(); });
  document.querySelectorAll("[data-range]").forEach((b) => b.addEventListener("click", () => {
    $("#filters").elements.from.value = b.dataset.range; $("#filters").elements.to.value = ""; search();
  }));
  $("#load-more").addEventListener("click", async () => {
    const first = await loadPage();
    if (first && $("#load-more").hidden) first.focus();   // the button is gone: keep focus in the table
  });
  $("#export-csv").addEventListener("click", () => download("/api/v1/audit-log/export.csv", "auditlog.csv"));
  $("#export-pdf").addEventListener("click", () => download("/api/v1/audit-log/export.pdf", "auditlog-report.pdf"));
  $("#four-eyes").addEventListener("click", fourEyes);
  $("#detail-close").addEventListener("click", () => closeDetail());
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !$("#detail").hidden) closeDetail(); });
  wireBrush();
  $("#live").addEventListener("change", () => { if ($("#live").checked) startLive(state.gen); else stopLive(); });
  // UTC or the browser's time zone, kept for the tab
  const tz = $("#tz");
  tz.value = state.local ? "local" : "utc";
  tz.addEventListener("change", () => {
    state.local = tz.value === "local";
    sessionStorage.setItem("auditlog-tz", tz.value);
    text($("#time-heading"), state.local ? "Time (local)" : "Time (UTC)");
    $("#results tbody").replaceChildren(...state.entries.map(row));
    if (state.histogram) drawHistogram(state.histogram.data, state.histogram.ms);
  });
  text($("#time-heading"), state.local ? "Time (local)" : "Time (UTC)");
  // date-time pickers beside from/to: a picked local time goes into the field as UTC
  for (const name of ["from", "to"]) {
    const pick = $(`#${name}-pick`);
    pick.addEventListener("change", () => {
      const t = Date.parse(pick.value);   // datetime-local: the browser's time zone
      if (Number.isFinite(t)) $("#filters").elements[name].value = new Date(t).toISOString();
    });
  }
  if (key()) signIn(key()); else showSignIn("");
});
