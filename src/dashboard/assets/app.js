// The bgsched dashboard: a page over the public /api/v1 endpoints.
// Everything shown is built with DOM calls (never innerHTML), so text from
// jobs and runs cannot become markup.
"use strict";

const PAGE = 100; // jobs per page of the overview table
const POLL_MS = 2000; // how often the open view reads the API again
const SCOPES = ["read", "trigger", "admin"];

const state = {
  token: sessionStorage.getItem("bgsched-token") || "",
  auth: null, // {tokens_file, scope, read_only} once known
  timer: null, // the open view's poll
  gen: 0, // which view is open: a load for an older one shows nothing
  follow: null, // the AbortController of a followed output
  jobsPage: 0,
  filter: "",
  stateFilter: "",
};

// ---------------------------------------------------------------------
// Helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch("/api/v1" + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "unreachable", "The scheduler does not answer (" + e.message + "); trying again.");
  }
  const text = await resp.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch (_) {
    json = null;
  }
  if (!resp.ok) {
    const err = (json && json.error) || {};
    throw new ApiError(resp.status, err.code || "error", err.message || text || resp.statusText);
  }
  return json === null ? text : json;
}

function enc(s) {
  return encodeURIComponent(s);
}

function has(scope) {
  if (!state.auth || state.auth.read_only) return false;
  return SCOPES.indexOf(state.auth.scope) >= SCOPES.indexOf(scope);
}

// Why an action needing `scope` is not allowed, or null.
function whyNot(scope) {
  if (has(scope)) return null;
  if (!state.auth) return "sign in with a token first";
  if (state.auth.read_only) return "the API is read-only: the scheduler has no [http] tokens_file";
  return "needs a token of scope " + scope + " (this one has " + state.auth.scope + ")";
}

// A button for an action that needs `scope`: disabled, saying why, when
// the token does not allow it.
function action(label, scope, onclick, extra) {
  const why = whyNot(scope);
  const b = el("button", Object.assign({ type: "button", onclick, disabled: !!why, title: why || "" }, extra || {}), label);
  return why ? [b, el("span", { class: "why" }, why)] : [b];
}

// Local time as `2026-12-02 14:05:09`, by hand: the browser's locale
// formatting (Intl) costs most of a second on its first use in Chromium,
// which a page of 100 jobs paid before it could draw.
function pad(n) {
  return String(n).padStart(2, "0");
}
function localClock(iso) {
  const d = new Date(iso);
  return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
}
function localTime(iso) {
  const d = new Date(iso);
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + localClock(iso);
}

function relative(iso) {
  if (!iso) return "";
  const ms = new Date(iso).getTime() - Date.now();
  const s = Math.round(Math.abs(ms) / 1000);
  let text;
  if (s < 60) text = s + "s";
  else if (s < 3600) text = Math.round(s / 60) + "m";
  else if (s < 86400) text = Math.round(s / 3600) + "h";
  else text = Math.round(s / 86400) + "d";
  return ms >= 0 ? "in " + text : text + " ago";
}

// A time shown locally, with how far away it is (kept current).
function when(iso) {
  if (!iso) return el("span", { class: "muted" }, "–");
  return el(
    "time",
    { datetime: iso, title: iso },
    localTime(iso),
    " ",
    el("span", { class: "rel", "data-at": iso }, "(" + relative(iso) + ")"),
  );
}

function tickRelative() {
  for (const e of document.querySelectorAll(".rel[data-at]")) {
    e.textContent = "(" + relative(e.dataset.at) + ")";
  }
}

function duration(ms) {
  if (ms === undefined || ms === null) return "";
  if (ms < 1000) return ms + "ms";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + "s";
  const m = Math.floor(s / 60);
  return m + "m " + Math.round(s - m * 60) + "s";
}

function outcome(o) {
  return el("span", { class: "outcome o-" + o }, o);
}

// `polled` banners say what the open view's last load found wrong; the
// next load that succeeds takes them away.
function banner(text, kind, polled) {
  document.getElementById("banners").append(el("div", { class: "banner " + (kind || "warn"), "data-polled": polled ? "1" : null }, text));
}

function clearPolledBanners() {
  for (const b of document.querySelectorAll("#banners [data-polled]")) b.remove();
}

function clearBanners() {
  document.getElementById("banners").replaceChildren();
}

function show(...nodes) {
  const shown = nodes.flat(2).filter((n) => n !== null && n !== undefined);
  document.getElementById("view").replaceChildren(...shown);
}

// Leave the open view: its poll, its followed output and any load still
// under way for it (that one finds `live()` false and shows nothing).
function stop() {
  state.gen++;
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  if (state.follow) state.follow.abort();
  state.follow = null;
}

// For a view being opened: true while it is still the open one.
function current() {
  const gen = state.gen;
  return () => gen === state.gen;
}

// Run `load(live)` now and every POLL_MS, never two at once, for as long
// as the view that started it is open. `load` checks `live()` after each
// await before it shows anything.
function poll(load) {
  const live = current();
  let busy = false;
  const once = async () => {
    if (busy || !live()) return;
    busy = true;
    try {
      await load(live);
      if (live()) clearPolledBanners();
    } catch (e) {
      if (live()) failed(e, true);
    } finally {
      busy = false;
    }
  };
  once();
  state.timer = setInterval(once, POLL_MS);
}

// What a link to something that does not exist (any more) shows.
function notFound(what, message) {
  stop();
  clearBanners();
  show(el("section", { class: "notfound" },
    el("h1", {}, "No such " + what),
    el("p", {}, message),
    el("p", {}, el("a", { href: "#/" }, "← all jobs"))));
}

function failed(e, polled) {
  if (!polled) clearBanners();
  else clearPolledBanners();
  if (e instanceof ApiError && e.status === 401) {
    stop();
    state.auth = null;
    showScope();
    show(
      el("section", { class: "signin" },
        el("h1", {}, "A token is needed"),
        el("p", {}, "This scheduler has an [http] tokens_file: every call needs a token. Enter one in the Token field above."),
        el("p", { class: "muted" }, e.message)),
    );
    document.getElementById("token").focus();
    return;
  }
  banner(e.message || String(e), "error", polled);
}

// ---------------------------------------------------------------------
// Token

async function loadAuth() {
  state.auth = await api("GET", "/auth");
  showScope();
}

function showScope() {
  const s = document.getElementById("scope");
  if (!state.auth) s.textContent = state.token ? "token not accepted" : "no token";
  else if (state.auth.read_only) s.textContent = "read-only API";
  else s.textContent = "scope: " + state.auth.scope;
}

function setupToken() {
  const input = document.getElementById("token");
  input.value = state.token;
  document.getElementById("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = input.value.trim();
    sessionStorage.setItem("bgsched-token", state.token);
    route();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    state.token = "";
    input.value = "";
    sessionStorage.removeItem("bgsched-token");
    route();
  });
}

// ---------------------------------------------------------------------
// Overview

function overviewHeader(view) {
  const leader = view.leader;
  const parts = [el("h1", {}, "Overview")];
  const facts = el("dl", { class: "facts" },
    el("dt", {}, "Mode"), el("dd", { id: "ov-mode" }, view.mode),
    el("dt", {}, "Leader"),
    el("dd", { id: "ov-leader" }, leader ? leader.instance + " (term " + leader.term + ")" : "none"),
    el("dt", {}, "Config"), el("dd", {}, el("code", {}, view.config_hash.slice(0, 12))),
  );
  parts.push(facts);
  if (view.mode === "cluster") {
    const rows = view.members.map((m) =>
      el("tr", { class: leader && m.instance === leader.instance ? "leader" : "" },
        el("td", {}, m.instance, leader && m.instance === leader.instance ? " ★" : ""),
        el("td", {}, m.host),
        el("td", {}, el("code", {}, (m.config_hash || "").slice(0, 12))),
        el("td", {}, when(m.since))));
    parts.push(el("h2", {}, "Members"),
      el("table", { id: "members" },
        el("thead", {}, el("tr", {}, el("th", {}, "Instance"), el("th", {}, "Host"), el("th", {}, "Config"), el("th", {}, "Up since"))),
        el("tbody", {}, rows)));
  }
  return parts;
}

function overviewBanners(view) {
  clearBanners();
  if (view.configs_differ) banner("The members run different configs (see their hashes): reload or restart them so they agree.");
  if (view.mode === "cluster" && !view.leader) banner("No leader: nothing fires until a replica wins the election.", "error");
  for (const u of view.unreadable || []) banner(u);
  for (const j of view.jobs) {
    if (j.last_tick_ahead) banner(j.name + ": " + j.last_tick_ahead);
  }
}

function jobState(j) {
  if (j.service && j.state === "running" && j.running.length) {
    return "service up " + relative(j.running[0].started_at).replace(/ ago$/, "") + ", " + j.service.restarts + " restart(s)";
  }
  if (j.state === "running" && j.running.length) return "running since " + localClock(j.running[0].started_at);
  if (j.state === "paused" && j.paused && j.paused.until) return "paused until " + localTime(j.paused.until);
  return j.state;
}

function strip(outcomes) {
  // Oldest left, newest right.
  return el("span", { class: "strip", "aria-label": "recent outcomes: " + outcomes.join(", ") },
    outcomes.slice().reverse().map((o) => el("i", { class: "o-" + o, title: o })));
}

function jobRow(j) {
  const last = j.last_run;
  return el("tr", { "data-job": j.name },
    el("td", {}, el("a", { href: "#/jobs/" + enc(j.name) }, j.name),
      j.description ? el("div", { class: "muted small" }, j.description) : null),
    el("td", {}, j.schedule_words, el("div", {}, el("code", {}, j.schedule))),
    el("td", { class: "wide" }, j.timezone),
    el("td", { class: "next" }, j.service ? "always running (service)" : when(j.next_run)),
    el("td", {}, last ? [outcome(last.outcome), " ", duration(last.duration_ms), el("div", { class: "small" }, when(last.started_at))] : el("span", { class: "muted" }, "never")),
    el("td", { class: "wide" }, strip(j.recent_outcomes || [])),
    el("td", { class: "state s-" + j.state }, jobState(j)));
}

function jobsTable(view) {
  const needle = state.filter.toLowerCase();
  const matching = view.jobs.filter((j) =>
    (!needle || j.name.toLowerCase().includes(needle) || (j.description || "").toLowerCase().includes(needle)) &&
    (!state.stateFilter || j.state === state.stateFilter));
  const pages = Math.max(1, Math.ceil(matching.length / PAGE));
  state.jobsPage = Math.min(state.jobsPage, pages - 1);
  const shown = matching.slice(state.jobsPage * PAGE, (state.jobsPage + 1) * PAGE);
  const pager = el("div", { class: "pager" },
    el("span", { id: "jobs-count" }, matching.length + " of " + view.jobs.length + " jobs"),
    pages > 1 ? [
      el("button", { type: "button", disabled: state.jobsPage === 0, onclick: () => { state.jobsPage--; renderOverview(view); } }, "‹ Previous"),
      " page " + (state.jobsPage + 1) + " of " + pages + " ",
      el("button", { type: "button", disabled: state.jobsPage >= pages - 1, onclick: () => { state.jobsPage++; renderOverview(view); } }, "Next ›"),
    ] : null);
  return [
    pager,
    el("div", { class: "scroll" },
      el("table", { id: "jobs" },
        el("thead", {}, el("tr", {},
          ["Job", "Schedule", "Zone", "Next run", "Last run", "Recent", "State"].map((h, i) =>
            el("th", { class: i === 2 || i === 5 ? "wide" : "" }, h)))),
        el("tbody", {}, shown.map(jobRow)))),
  ];
}

let lastView = null;

function renderOverview(view) {
  lastView = view;
  const filter = el("input", { id: "filter", type: "search", placeholder: "Filter by name (press /)", value: state.filter,
    "aria-label": "Filter jobs by name" });
  filter.addEventListener("input", () => { state.filter = filter.value; state.jobsPage = 0; renderJobs(); });
  const select = el("select", { id: "state-filter", "aria-label": "Filter jobs by state" },
    ["", "running", "idle", "paused", "disabled"].map((s) =>
      el("option", { value: s, selected: s === state.stateFilter }, s || "any state")));
  select.addEventListener("change", () => { state.stateFilter = select.value; state.jobsPage = 0; renderJobs(); });
  const focused = document.activeElement && document.activeElement.id;
  const caret = focused === "filter" ? document.activeElement.selectionStart : null;
  show(el("section", {}, overviewHeader(view)),
    el("section", {}, el("h2", {}, "Jobs"), el("div", { class: "filters" }, filter, select), el("div", { id: "jobs-area" }, jobsTable(view))));
  overviewBanners(view);
  // When the jobs were first on screen, from the page's start (the browser
  // test reports it).
  if (!performance.getEntriesByName("bgsched-jobs-drawn").length) performance.mark("bgsched-jobs-drawn");
  if (focused === "filter") {
    filter.focus();
    if (caret !== null) filter.setSelectionRange(caret, caret);
  }
}

// Redrawn every poll; a focused link or button in it is focused again in
// the new table, so keyboard users keep their place.
function renderJobs() {
  if (!lastView) return;
  const area = document.getElementById("jobs-area");
  const f = document.activeElement;
  const had = f && area.contains(f) ? { href: f.getAttribute("href"), text: f.textContent } : null;
  area.replaceChildren(...jobsTable(lastView));
  if (had) {
    const again = [...area.querySelectorAll("a, button")].find((e) =>
      had.href ? e.getAttribute("href") === had.href : e.textContent === had.text);
    if (again) again.focus();
  }
}

// `/readyz` of the replica serving this page (public, like /api/v1): not
// ready (etcd session unconfirmed, clock skewed, still connecting) shows
// as a banner.
async function readiness() {
  try {
    const resp = await fetch("/readyz");
    if (resp.ok) return null;
    const body = await resp.json();
    const why = Object.entries(body).filter(([k]) => k !== "status").map(([k, v]) => k + ": " + v).join("; ");
    return "This replica is not ready (" + why + ").";
  } catch (_) {
    return "This replica does not answer /readyz.";
  }
}

async function overview() {
  poll(async (live) => {
    const [view, notReady] = await Promise.all([api("GET", "/jobs"), readiness()]);
    if (!live()) return;
    if (!document.getElementById("jobs-area")) renderOverview(view);
    else {
      lastView = view;
      // Only what changes: the header and the table; the filter keeps focus.
      const header = document.querySelector("main section");
      header.replaceChildren(...overviewHeader(view));
      renderJobs();
      overviewBanners(view);
    }
    if (notReady) banner(notReady, "error", true);
  });
}

// ---------------------------------------------------------------------
// A job

// The pattern is checked by the scheduler, which says what is wrong: it
// is a Rust regular expression, not always one a browser reads alike.
function paramsForm(job) {
  const names = Object.keys(job.params || {});
  const cannot = !!whyNot("trigger");
  const inputs = names.map((name) => {
    const p = job.params[name];
    return el("label", { class: "param" }, name + (p.required ? " *" : ""),
      el("input", { name, "data-param": name, required: p.required, placeholder: p.default || "", disabled: cannot,
        title: p.pattern ? "must match " + p.pattern : "" }));
  });
  const form = el("form", { id: "trigger-form", class: "inline" }, inputs);
  const start = async () => {
    const params = {};
    for (const i of form.querySelectorAll("input[data-param]")) if (i.value !== "") params[i.dataset.param] = i.value;
    try {
      const accepted = await api("POST", "/jobs/" + enc(job.name) + "/runs", { params });
      location.hash = "#/runs/" + accepted.run_id;
    } catch (e) {
      failed(e);
    }
  };
  // A submit button, so Enter in any field starts the run too.
  form.addEventListener("submit", (ev) => { ev.preventDefault(); start(); });
  form.append(...action("Run now", "trigger", null, { id: "trigger", type: "submit" }));
  return form;
}

function pauseControls(job) {
  if (job.paused) {
    return el("div", { class: "inline" },
      "Paused since ", when(job.paused.since), job.paused.until ? [" until ", when(job.paused.until)] : null, " ",
      ...action("Resume", "admin", async () => {
        try { await api("POST", "/jobs/" + enc(job.name) + "/resume", {}); openJob(job.name); } catch (e) { failed(e); }
      }, { id: "resume" }));
  }
  const until = el("input", { id: "pause-until", type: "datetime-local", "aria-label": "Pause until (optional)", disabled: !!whyNot("admin") });
  return el("div", { class: "inline" }, el("label", {}, "until ", until), " ",
    ...action("Pause", "admin", async () => {
      const body = until.value ? { until: new Date(until.value).toISOString() } : {};
      try { await api("POST", "/jobs/" + enc(job.name) + "/pause", body); openJob(job.name); } catch (e) { failed(e); }
    }, { id: "pause" }));
}

function historyTable(runs, id) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, ["Run", "Tick", "Trigger", "Instance", "Started", "Duration", "Outcome"].map((h) => el("th", {}, h)))),
    el("tbody", {}, runs.map((r) => el("tr", {},
      el("td", {}, el("a", { href: "#/runs/" + r.run_id }, r.run_id.slice(0, 13) + "…")),
      el("td", {}, localTime(r.tick)),
      el("td", {}, r.trigger),
      el("td", {}, r.instance),
      el("td", {}, when(r.started_at)),
      el("td", {}, duration(r.duration_ms)),
      el("td", {}, outcome(r.outcome), r.exit_code ? " (exit " + r.exit_code + ")" : "")))));
}

function nextRuns(job) {
  if (job.service) return el("span", { class: "muted" }, "none: a service, kept running");
  return (job.next_runs || []).length
    ? el("ul", { id: "next-runs" }, job.next_runs.map((t) => el("li", {}, when(t))))
    : el("span", { class: "muted" }, job.paused ? "none while paused" : "none");
}

// What changes while a job page is open: redrawn from each poll, apart
// from the form fields, which keep what is typed into them.
function jobLive(job) {
  return {
    state: el("dd", { id: "job-state" }, jobState(job)),
    next: el("dd", {}, nextRuns(job)),
    running: el("div", {}, job.running.length ? [el("h2", {}, "Running now"), el("div", { class: "scroll" }, historyTable(job.running, "running"))] : []),
    scheduled: el("div", {}, (job.scheduled || []).length ? [el("h2", {}, "Scheduled"), el("ul", { id: "scheduled" },
      job.scheduled.map((r) => el("li", {}, when(r.at), " ", el("a", { href: "#/runs/" + r.run_id }, r.run_id.slice(0, 13) + "…"),
        Object.keys(r.params || {}).length ? [" ", el("code", {}, Object.entries(r.params).map(([k, v]) => k + "=" + v).join(" "))] : null)))] : []),
    pause: el("div", {}, pauseControls(job)),
  };
}

async function openJob(name) {
  stop();
  clearBanners();
  const live = current();
  let job;
  try {
    job = await api("GET", "/jobs/" + enc(name));
  } catch (e) {
    if (!live()) return;
    if (e.status === 404) return notFound("job", e.message);
    return failed(e);
  }
  if (!live()) return;
  const outcomeFilter = el("select", { id: "outcome-filter", "aria-label": "Filter runs by outcome" },
    ["", "success", "failed", "timed_out", "killed", "cancelled", "lost", "skipped", "missed", "paused"].map((o) => el("option", { value: o }, o || "any outcome")));
  const area = el("div", { id: "history-area", class: "scroll" });
  const older = el("button", { type: "button", id: "older", hidden: true }, "Older runs");
  let before = null;
  let expanded = false; // older pages shown: the poll leaves the table be
  const loadRuns = async (more) => {
    const q = new URLSearchParams({ limit: "20" });
    if (more && before) q.set("before", before);
    if (outcomeFilter.value) q.set("outcome", outcomeFilter.value);
    const page = await api("GET", "/jobs/" + enc(name) + "/runs?" + q);
    if (!live()) return;
    if (more) {
      expanded = true;
      area.querySelector("tbody").append(...historyTable(page.runs, "history").querySelector("tbody").children);
    } else {
      expanded = false;
      area.replaceChildren(page.runs.length ? historyTable(page.runs, "history")
        : el("p", { class: "muted", id: "no-runs" }, outcomeFilter.value ? "No runs with outcome " + outcomeFilter.value + "." : "No runs yet."));
    }
    before = page.next;
    older.hidden = !page.next;
  };
  outcomeFilter.addEventListener("change", () => loadRuns(false).catch(failed));
  older.addEventListener("click", () => loadRuns(true).catch(failed));
  const params = Object.entries(job.params || {});
  const parts = jobLive(job);
  let paused = JSON.stringify(job.paused || null);
  show(
    el("p", {}, el("a", { href: "#/" }, "← all jobs")),
    el("h1", {}, job.name),
    job.description ? el("p", {}, job.description) : null,
    el("dl", { class: "facts" },
      el("dt", {}, "Schedule"), el("dd", {}, job.schedule_words, " ", el("code", {}, job.schedule)),
      el("dt", {}, "Time zone"), el("dd", {}, job.timezone),
      el("dt", {}, "State"), parts.state,
      el("dt", {}, "Overlap"), el("dd", {}, job.overlap),
      el("dt", {}, "Enabled"), el("dd", {}, job.enabled ? "yes" : "no"),
      el("dt", {}, "Next runs"), parts.next),
    params.length ? [el("h2", {}, "Parameters"), el("div", { class: "scroll" }, el("table", { id: "params" },
      el("thead", {}, el("tr", {}, ["Name", "Required", "Pattern", "Default"].map((h) => el("th", {}, h)))),
      el("tbody", {}, params.map(([n, p]) => el("tr", {}, el("td", {}, n), el("td", {}, p.required ? "yes" : "no"),
        el("td", {}, p.pattern ? el("code", {}, p.pattern) : ""), el("td", {}, p.default || ""))))))] : null,
    el("h2", {}, "Config"), configFacts(job.config || {}),
    el("h2", {}, "Run"), paramsForm(job),
    el("h2", {}, "Pause"), parts.pause,
    parts.running,
    parts.scheduled,
    el("h2", {}, "History"), el("div", { class: "filters" }, outcomeFilter), area, older,
  );
  let first = true;
  poll(async (live) => {
    if (!first) {
      let fresh;
      try {
        fresh = await api("GET", "/jobs/" + enc(name));
      } catch (e) {
        if (live() && e.status === 404) return notFound("job", e.message + " (it left the config)");
        throw e;
      }
      if (!live()) return;
      const now = jobLive(fresh);
      for (const k of ["state", "next", "running", "scheduled"]) parts[k].replaceChildren(...now[k].childNodes);
      const p = JSON.stringify(fresh.paused || null);
      // Redrawn only when it changes: a date being typed stays.
      if (p !== paused) {
        paused = p;
        parts.pause.replaceChildren(...now.pause.childNodes);
      }
    }
    first = false;
    if (!expanded) await loadRuns(false);
  });
}

function configFacts(c) {
  const rows = [
    ["Command", c.command ? el("code", {}, c.command.join(" ")) : null],
    ["Shell", c.shell ? el("code", {}, c.shell) : null],
    ["Working directory", c.working_dir],
    ["Environment", c.env && c.env.length ? c.env.join(", ") : null],
    ["Timeout", c.timeout || "none"],
    ["Retries", c.retries ? c.retries + " (backoff " + c.retry_backoff + ", at most " + c.retry_backoff_max + ")" : "0"],
    ["Catch-up", c.catchup],
    ["Jitter", c.jitter],
    ["Kill grace", c.kill_grace],
    ["On failure", c.on_failure ? el("code", {}, c.on_failure.join(" ")) : null],
  ].filter(([, v]) => v !== null && v !== undefined && v !== "");
  return el("dl", { class: "facts", id: "job-config" }, rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

// ---------------------------------------------------------------------
// A run

function recordFacts(r) {
  const rows = [
    ["Job", el("a", { href: "#/jobs/" + enc(r.job) }, r.job)],
    ["Outcome", el("span", { id: "run-outcome" }, outcome(r.outcome))],
    ["Tick", r.tick ? localTime(r.tick) : ""],
    ["Trigger", r.trigger || ""],
    ["Instance", r.instance || ""],
    ["Term", r.term || "–"],
    ["Started", r.started_at ? when(r.started_at) : ""],
    ["Duration", duration(r.duration_ms)],
    ["Exit code", r.exit_code === undefined ? "" : String(r.exit_code)],
    ["Reason", r.reason || ""],
    ["Parameters", Object.entries(r.params || {}).map(([k, v]) => el("div", {}, el("code", {}, k + "=" + v)))],
  ];
  return el("dl", { class: "facts", id: "run-facts" }, rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

async function followOutput(id, pre) {
  const ctl = new AbortController();
  state.follow = ctl;
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const resp = await fetch("/api/v1/runs/" + id + "/output?follow=true", { headers, signal: ctl.signal });
  if (!resp.ok || !resp.body) throw new ApiError(resp.status, "error", await resp.text());
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  pre.textContent = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    pre.append(decoder.decode(value, { stream: true }));
    pre.scrollTop = pre.scrollHeight;
  }
}

async function openRun(id) {
  stop();
  clearBanners();
  const pre = el("pre", { id: "output", tabindex: "0", "aria-label": "Output" });
  const facts = el("div", { id: "facts-area" });
  const actions = el("div", { class: "inline", id: "run-actions" });
  const live = el("span", { id: "live", class: "muted" });
  show(el("p", {}, el("a", { href: "#/" }, "← all jobs")), el("h1", {}, "Run ", el("code", {}, id)), facts, actions,
    el("h2", {}, "Output ", live), pre);
  let following = false;
  let ended = false;
  const refresh = async (open) => {
    let r;
    try {
      r = await api("GET", "/runs/" + id);
    } catch (e) {
      if (open() && e.status === 404) return notFound("run", e.message);
      throw e;
    }
    if (!open()) return;
    facts.replaceChildren(recordFacts(r));
    const running = r.outcome === "running" || r.outcome === "pending";
    // A run at a later time is cancelled before its time: it never starts.
    const cancellable = running || r.outcome === "scheduled";
    actions.replaceChildren(...(cancellable ? action("Cancel", "trigger", async () => {
      try { await api("POST", "/runs/" + id + "/cancel", {}); } catch (e) { failed(e); }
    }, { id: "cancel" }) : []));
    if (running && !following) {
      // Followed again whenever the stream ends while the run goes on (a
      // scheduler restart, a lost connection): it replays from the start.
      following = true;
      live.textContent = "(live)";
      followOutput(id, pre)
        .catch((e) => { if (e.name !== "AbortError" && open()) failed(e, true); })
        .finally(() => { following = false; if (open()) live.textContent = ""; });
    } else if (!running && !following && !ended && r.outcome !== "scheduled") {
      const text = await api("GET", "/runs/" + id + "/output");
      if (!open()) return;
      ended = true;
      pre.textContent = text;
    }
  };
  poll(refresh);
}

// ---------------------------------------------------------------------
// Routing

async function route() {
  stop();
  clearBanners();
  const live = current();
  try {
    await loadAuth();
  } catch (e) {
    if (!live()) return;
    failed(e);
    // Not a token problem (the scheduler is down or restarting): the same
    // page is asked for again, so it appears once the scheduler answers.
    if (e.status !== 401) setTimeout(() => { if (live()) route(); }, POLL_MS);
    return;
  }
  if (!live()) return;
  const hash = location.hash.replace(/^#/, "") || "/";
  const job = hash.match(/^\/jobs\/(.+)$/);
  const run = hash.match(/^\/runs\/([^/]+)$/);
  if (job) {
    let name;
    try {
      name = decodeURIComponent(job[1]);
    } catch (_) {
      return notFound("job", "\"" + job[1] + "\" is not a job name.");
    }
    return openJob(name);
  }
  if (run) {
    if (!/^[0-9a-f-]{36}$/.test(run[1])) return notFound("run", "\"" + run[1] + "\" is not a run id.");
    return openRun(run[1]);
  }
  if (hash !== "/") return notFound("page", "Nothing is at #" + hash + ".");
  return overview();
}

document.addEventListener("DOMContentLoaded", () => {
  setupToken();
  window.addEventListener("hashchange", route);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "/" && document.activeElement.tagName !== "INPUT") {
      const f = document.getElementById("filter");
      if (f) { ev.preventDefault(); f.focus(); }
    }
  });
  setInterval(tickRelative, 1000);
  route();
});
