// GuildNet dashboard: vanilla JS, no build step. All data goes through /api with the session
// cookie; no token is ever held here.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGES = ["page-loading", "page-login", "setup-gate", "page-tasks", "page-agents", "page-orgs", "page-artifacts"];
const state = { tasks: new Map(), agents: [], orgs: [], openTask: null, taskLog: null, agentLog: null, events: null, editorAgent: null };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function show(id, on) { const e = $(id); if (e) e.hidden = !on; }
function setError(id, msg) {
  const e = $(id);
  if (!e) return;
  e.textContent = msg || "";
  e.hidden = !msg;
  if (msg && e.scrollIntoView) e.scrollIntoView({ block: "nearest" });
}

class ApiError extends Error {
  constructor(status, message, field) { super(message); this.status = status; this.field = field; }
}

async function api(method, path, body) {
  const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  let resp;
  try { resp = await fetch(path, opts); } catch (e) { throw new ApiError(0, "cannot reach the dashboard server: " + e.message); }
  let data = null;
  const text = await resp.text();
  if (text) { try { data = JSON.parse(text); } catch (_) { data = null; } }
  if (!resp.ok) {
    const msg = data && data.error && data.error.message ? data.error.message : `HTTP ${resp.status}`;
    if (resp.status === 401 && path !== "/api/login") { showLogin(); }
    throw new ApiError(resp.status, msg, data && data.error ? data.error.field : undefined);
  }
  return data;
}

function ago(ts) {
  if (!ts) return "–";
  const s = Math.max(0, Math.round((Date.now() - new Date(ts).getTime()) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}

function statusBadge(status, testid) {
  return el("span", { class: `status ${status}`, "data-testid": testid || "task-status", text: status });
}

function safeHref(uri) {
  try { const u = new URL(uri, location.href); return (u.protocol === "https:" || u.protocol === "http:") ? u.href : null; } catch (_) { return null; }
}

// ---- navigation ----------------------------------------------------------------------------

function showOnly(id) { for (const p of PAGES) show(p, p === id); }

function showLogin() {
  closeLive();
  show("nav", false);
  showOnly("page-login");
  $("login-password").focus();
}

async function boot() {
  setError("global-error", "");
  let s;
  try { s = await api("GET", "/api/session"); } catch (e) { setError("global-error", e.message); return; }
  if (!s.authenticated) return showLogin();
  let setup;
  try { setup = await api("GET", "/api/setup"); } catch (e) { setError("global-error", e.message); return; }
  if (!setup.configured) { show("nav", false); showOnly("setup-gate"); return; }
  show("nav", true);
  openLive();
  route();
}

// Deep links: #/tasks/<id> opens that task, #/agents/<name> that agent's log.
function route() {
  const [page, item] = (location.hash.replace(/^#\//, "") || "tasks").split("/").map(decodeURIComponent);
  const known = ["tasks", "agents", "orgs", "artifacts"];
  const p = known.includes(page) ? page : "tasks";
  showOnly("page-" + p);
  for (const k of known) $("nav-" + k).classList.toggle("active", k === p);
  if (p === "tasks") { loadOrgs().then(fillOrgSelect); loadTasks(); if (item && item !== state.openTask) openTask(item); }
  if (p === "agents") { loadAgents(); if (item) openAgentLog(item); }
  if (p === "orgs") loadOrgs();
  if (p === "artifacts") loadArtifacts();
}

// ---- login / setup -------------------------------------------------------------------------

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  setError("login-error", "");
  $("login-submit").disabled = true;
  try {
    await api("POST", "/api/login", { password: $("login-password").value });
    $("login-password").value = "";
    await boot();
  } catch (e) { setError("login-error", e.message); }
  finally { $("login-submit").disabled = false; }
});

$("logout").addEventListener("click", async () => {
  try { await api("POST", "/api/logout"); } catch (_) { /* ignore */ }
  showLogin();
});

for (const r of document.querySelectorAll("input[name=setup-mode]")) {
  r.addEventListener("change", () => {
    const connect = $("setup-mode-connect").checked;
    show("setup-create-fields", !connect);
    show("setup-connect-fields", connect);
  });
}

$("setup-skip").addEventListener("click", async () => {
  try { await api("POST", "/api/setup/skip"); await boot(); } catch (e) { setError("setup-error", e.message); }
});

$("setup-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  setError("setup-error", "");
  const connect = $("setup-mode-connect").checked;
  const body = connect
    ? { mode: "connect", hostname: $("setup-hostname").value.trim(), loginServer: $("setup-login-server").value.trim(), authKey: $("setup-auth-key").value.trim() }
    : { mode: "create", hostname: $("setup-hostname").value.trim(), serverUrl: $("setup-server-url").value.trim() };
  if (connect && $("setup-api-key").value.trim()) body.apiKey = $("setup-api-key").value.trim();
  if (!connect && $("setup-listen-addr").value.trim()) body.listenAddr = $("setup-listen-addr").value.trim();
  const ok = await runFlow("Setting up the network", "/api/setup/stream", body, "setup-error");
  $("setup-auth-key").value = "";
  $("setup-api-key").value = "";
  if (ok) { $("progress-close").onclick = () => { show("progress-overlay", false); boot(); }; }
});

// ---- progress streams (POST + SSE over fetch) ----------------------------------------------

function parseSse(buffer, onEvent) {
  let idx;
  while ((idx = buffer.indexOf("\n\n")) >= 0) {
    const block = buffer.slice(0, idx);
    buffer = buffer.slice(idx + 2);
    let name = "message"; const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const c = line.indexOf(":");
      const f = c < 0 ? line : line.slice(0, c);
      const v = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
      if (f === "event") name = v; else if (f === "data") data.push(v);
    }
    if (data.length) { let d; try { d = JSON.parse(data.join("\n")); } catch (_) { d = { line: data.join("\n") }; } onEvent(name, d); }
  }
  return buffer;
}

// Runs a flow stream in the progress overlay. Resolves true on success. Validation errors
// (a 4xx JSON error) are shown in `errorId` and the overlay is not opened.
async function runFlow(title, path, body, errorId) {
  let resp;
  try {
    resp = await fetch(path, { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json", "Accept": "text/event-stream" }, body: JSON.stringify(body) });
  } catch (e) { setError(errorId, "cannot reach the dashboard server: " + e.message); return false; }
  if (!resp.ok) {
    let msg = `HTTP ${resp.status}`;
    try { const d = await resp.json(); if (d.error) msg = d.error.message; } catch (_) { /* keep */ }
    setError(errorId, msg);
    return false;
  }
  $("progress-title").textContent = title;
  $("progress-steps").replaceChildren();
  $("progress-log").textContent = "";
  $("progress-done").textContent = "";
  $("progress-done").className = "";
  show("progress-hint", false);
  show("progress-close", false);
  $("progress-close").onclick = () => show("progress-overlay", false);
  show("progress-overlay", true);
  const steps = new Map();
  const stepEl = (name) => {
    if (!steps.has(name)) { const li = el("li", { "data-step": name, text: name }); steps.set(name, li); $("progress-steps").append(li); }
    return steps.get(name);
  };
  let ok = false, finished = false, lastError = null;
  // An error is shown once: on its step. Log lines and the final line that only repeat it
  // are not shown again.
  const onEvent = (name, d) => {
    if (name === "begin") for (const s of d.steps || []) stepEl(s);
    else if (name === "step") { const li = stepEl(d.step); li.className = "running"; li.textContent = `${d.step}: ${d.message || ""}`; }
    else if (name === "stepDone") { const li = stepEl(d.step); li.className = "done"; li.textContent = `${d.step}: ${d.message || "done"}`; }
    else if (name === "stepError") { const li = stepEl(d.step); li.className = "failed"; li.textContent = `${d.step}: ${d.message}`; lastError = d.message; }
    else if (name === "log") { if (!lastError || !(d.line || "").includes(lastError)) $("progress-log").textContent += (d.step ? `[${d.step}] ` : "") + (d.line || "") + "\n"; }
    else if (name === "hint") { $("progress-hint").textContent = d.message; show("progress-hint", true); }
    else if (name === "done") {
      finished = true; ok = !!d.ok;
      $("progress-done").textContent = ok ? "Done." : (lastError && (d.message || "").includes(lastError) ? "Failed (see the step above)." : `Failed: ${d.message}`);
      $("progress-done").className = ok ? "" : "error";
    }
  };
  try {
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf = parseSse(buf + dec.decode(value, { stream: true }).replace(/\r\n/g, "\n"), onEvent);
    }
  } catch (e) { $("progress-done").textContent = "Connection lost: " + e.message; $("progress-done").className = "error"; }
  if (!finished && !$("progress-done").textContent) { $("progress-done").textContent = "The stream ended without a result."; $("progress-done").className = "error"; }
  show("progress-close", true);
  return ok;
}

// ---- live events ---------------------------------------------------------------------------

let refreshTimer = null;
function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refreshVisible(); }, 250);
}

function refreshVisible() {
  if (!$("page-tasks").hidden) loadTasks();
  if (!$("page-agents").hidden) loadAgents();
  if (!$("page-artifacts").hidden) loadArtifacts();
}

function openLive() {
  if (state.events) return;
  const es = new EventSource("/api/events");
  state.events = es;
  es.onopen = () => { $("live-status").textContent = "live"; $("live-status").classList.add("on"); };
  es.onerror = () => { $("live-status").textContent = "reconnecting"; $("live-status").classList.remove("on"); };
  es.addEventListener("task", (m) => {
    let d; try { d = JSON.parse(m.data); } catch (_) { return; }
    const t = state.tasks.get(d.taskId);
    if (t && d.status) { t.status = d.status; if (d.agent) t.agent = d.agent; t.updatedAt = d.ts; renderTasks(); }
    else scheduleRefresh();
    if (state.openTask === d.taskId) refreshTaskDetail();
    if (!$("page-agents").hidden || !$("page-artifacts").hidden) scheduleRefresh();
  });
  es.addEventListener("agent", () => scheduleRefresh());
  es.addEventListener("resync", () => scheduleRefresh());
}

function closeLive() {
  if (state.events) { state.events.close(); state.events = null; }
  $("live-status").textContent = "offline"; $("live-status").classList.remove("on");
}

// ---- tasks ---------------------------------------------------------------------------------

function fillOrgSelect() {
  const sel = $("schedule-org");
  const cur = sel.value;
  sel.replaceChildren(...state.orgs.map((o) => el("option", { value: o.name, text: o.name })));
  if (!state.orgs.length) sel.append(el("option", { value: "", text: "no orgs: create one first" }));
  if (cur && state.orgs.some((o) => o.name === cur)) sel.value = cur;
}

async function loadTasks() {
  try {
    const status = $("tasks-filter-status").value;
    const list = await api("GET", "/api/tasks?limit=200" + (status ? `&status=${encodeURIComponent(status)}` : ""));
    state.tasks = new Map(list.map((t) => [t.id, t]));
    renderTasks();
  } catch (e) { setError("global-error", e.message); }
}

function renderTasks() {
  const status = $("tasks-filter-status").value, org = $("tasks-filter-org").value.trim(), text = $("tasks-filter-text").value.trim().toLowerCase();
  const rows = [...state.tasks.values()]
    .filter((t) => (!status || t.status === status) && (!org || t.org === org) && (!text || t.task.toLowerCase().includes(text) || t.id.includes(text)))
    .sort((a, b) => (b.createdAt || "").localeCompare(a.createdAt || ""));
  show("tasks-empty", rows.length === 0);
  show("tasks-table", rows.length > 0);
  $("tasks-list").replaceChildren(...rows.map((t) => el("tr", { "data-testid": "task-row", "data-task-id": t.id, onclick: () => openTask(t.id) },
    el("td", { class: "task-cell", title: t.task, text: t.task }),
    el("td", { text: t.org }),
    el("td", {}, statusBadge(t.status)),
    el("td", { text: t.agent || "–" }),
    el("td", { text: ago(t.updatedAt) }))));
}

$("schedule-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  setError("schedule-error", "");
  const org = $("schedule-org").value, task = $("schedule-task").value;
  if (!org) { setError("schedule-error", "Create an org first (Orgs page)."); return; }
  $("schedule-submit").disabled = true;
  try {
    const body = { org, task };
    const url = $("schedule-repo").value.trim(), ref = $("schedule-ref").value.trim();
    const hint = $("schedule-hint").value.trim();
    if (url) body.repo = ref ? { url, ref } : { url };
    else if (ref) throw new ApiError(422, "A ref needs a repository URL.", "repo.ref");
    if (hint) body.agentHint = hint;
    const dir = $("schedule-files-dir").value.trim().replace(/^\/+|\/+$/g, "");
    const picked = Array.from($("schedule-files").files || []);
    if (picked.length) {
      body.files = await Promise.all(picked.map(async (f) => ({ path: dir ? `${dir}/${f.name}` : f.name, content: await f.text() })));
    }
    const t = await api("POST", "/api/schedule", body);
    $("schedule-task").value = "";
    $("schedule-files").value = "";
    state.tasks.set(t.id, t);
    renderTasks();
  } catch (e) { setError("schedule-error", e.message); }
  finally { $("schedule-submit").disabled = false; }
});

function closeTaskLog() { if (state.taskLog) { state.taskLog.close(); state.taskLog = null; } }

async function openTask(id) {
  state.openTask = id;
  history.replaceState(null, "", `#/tasks/${encodeURIComponent(id)}`);
  closeTaskLog();
  $("task-log").textContent = "";
  setError("task-error", "");
  show("task-detail", true);
  await refreshTaskDetail();
  const es = new EventSource(`/api/tasks/${encodeURIComponent(id)}/logs/stream`);
  state.taskLog = es;
  es.onmessage = (m) => {
    let l; try { l = JSON.parse(m.data); } catch (_) { return; }
    const log = $("task-log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(el("span", { class: l.stream, text: l.line + "\n" }));
    if (atBottom) log.scrollTop = log.scrollHeight;
  };
  es.addEventListener("end", () => { closeTaskLog(); refreshTaskDetail(); });
  es.addEventListener("error", (m) => { if (m.data) { setError("task-error", "log stream: " + m.data); closeTaskLog(); } });
  $("task-detail").scrollIntoView({ block: "nearest" });
}

async function refreshTaskDetail() {
  const id = state.openTask;
  if (!id) return;
  let d;
  try { d = await api("GET", `/api/tasks/${encodeURIComponent(id)}`); } catch (e) { setError("task-error", e.message); return; }
  if (state.openTask !== id) return;
  state.tasks.set(d.id, d); renderTasks();
  $("task-detail-id").textContent = d.id;
  $("task-detail-text").textContent = d.task;
  $("task-detail-status").replaceWith(statusBadge(d.status, "task-detail-status"));
  $("task-detail").querySelector("[data-testid=task-detail-status]").id = "task-detail-status";
  const w = d.workload || {};
  $("task-detail-phase").textContent = w.phase || (w.resource ? w.resource : "–");
  $("task-detail-agent").textContent = d.agent || "–";
  $("task-detail-reason").textContent = d.reason || (d.exitCode !== null && d.exitCode !== undefined ? `exit code ${d.exitCode}` : "–");
  const lines = [...(w.conditions || []), ...(w.pods || []), ...(w.events || [])];
  $("task-conditions").replaceChildren(...lines.map((c) => el("li", { text: c })));
  $("task-artifacts").replaceChildren(...artifactLinks(d));
  $("task-cancel").hidden = ["Succeeded", "Failed", "Cancelled"].includes(d.status);
}

function artifactLinks(t) {
  const out = [];
  if (t.prUrl) { const h = safeHref(t.prUrl); out.push(el("p", {}, "Pull request: ", h ? el("a", { href: h, target: "_blank", rel: "noopener noreferrer", "data-testid": "pr-link", text: t.prUrl }) : el("code", { text: t.prUrl }))); }
  if (t.artifacts && t.artifacts.length) {
    out.push(el("ul", { class: "plain" }, ...t.artifacts.map((a) => { const h = safeHref(a.uri); return el("li", {}, `${a.kind}: `, h ? el("a", { href: h, target: "_blank", rel: "noopener noreferrer", text: a.name }) : el("code", { text: `${a.name} (${a.uri})` })); })));
  }
  return out;
}

$("task-detail-close").addEventListener("click", () => { state.openTask = null; closeTaskLog(); show("task-detail", false); history.replaceState(null, "", "#/tasks"); });
$("tasks-filter-status").addEventListener("change", loadTasks);
$("tasks-filter-org").addEventListener("input", renderTasks);
$("tasks-filter-text").addEventListener("input", renderTasks);
$("task-cancel").addEventListener("click", async () => {
  setError("task-error", "");
  try { await api("POST", `/api/tasks/${encodeURIComponent(state.openTask)}/cancel`); await refreshTaskDetail(); } catch (e) { setError("task-error", e.message); }
});

// ---- agents --------------------------------------------------------------------------------

async function loadAgents() {
  try { state.agents = await api("GET", "/api/agents"); setError("agents-error", ""); } catch (e) { setError("agents-error", e.message); return; }
  renderAgents();
}

function agentState(a) {
  if (!a.active) return `exited (task ${a.taskStatus})`;
  return a.state && a.state.runner ? a.state.runner : "–";
}

function renderAgents() {
  const all = $("agents-show-finished").checked;
  const shown = state.agents.filter((a) => all || a.active);
  show("agents-empty", shown.length === 0);
  $("agents-list").replaceChildren(...shown.map((a) => el("tr", { "data-testid": "agent-row", "data-agent": a.name, "data-active": String(a.active), onclick: () => openAgentLog(a.name) },
    el("td", { text: a.name }),
    el("td", { text: a.org }),
    el("td", { text: a.taskId || "–" }),
    el("td", { "data-testid": "agent-state", text: agentState(a) }),
    // A finished agent's last heartbeat is a fixed time, not a counter.
    a.active ? el("td", { class: "heartbeat", "data-ts": a.lastSeenAt, text: ago(a.lastSeenAt) }) : el("td", { text: `last seen ${new Date(a.lastSeenAt).toLocaleString()}` }),
    el("td", {}, a.editor ? el("button", { type: "button", class: "secondary", "data-testid": "open-editor", onclick: (ev) => { ev.stopPropagation(); openEditor(a.name); }, text: "Open editor" }) : el("span", { class: "muted", text: a.active ? "no editor" : "" })))));
}
$("agents-show-finished").addEventListener("change", renderAgents);

setInterval(() => { for (const td of document.querySelectorAll("td.heartbeat")) td.textContent = ago(td.dataset.ts); }, 1000);

function openAgentLog(name) {
  if (state.agentLog) state.agentLog.close();
  history.replaceState(null, "", `#/agents/${encodeURIComponent(name)}`);
  $("agent-detail-name").textContent = name;
  $("agent-log").textContent = "";
  show("agent-detail", true);
  const es = new EventSource(`/api/agents/${encodeURIComponent(name)}/logs/stream`);
  state.agentLog = es;
  es.onmessage = (m) => { let l; try { l = JSON.parse(m.data); } catch (_) { return; } $("agent-log").append(el("span", { class: l.stream, text: l.line + "\n" })); };
  es.addEventListener("end", () => { es.close(); });
}
$("agent-detail-close").addEventListener("click", () => { if (state.agentLog) state.agentLog.close(); show("agent-detail", false); history.replaceState(null, "", "#/agents"); });

async function openEditor(name) {
  setError("agents-error", "");
  try {
    const r = await api("POST", `/api/agents/${encodeURIComponent(name)}/editor`);
    state.editorAgent = name;
    $("editor-agent").textContent = name;
    // The editor comes from its own origin (a one-time ticket URL), never from this one.
    $("editor-frame").src = r.url;
    show("editor-panel", true);
  } catch (e) { setError("agents-error", e.message); }
}
$("editor-close").addEventListener("click", async () => {
  $("editor-frame").src = "about:blank";
  show("editor-panel", false);
  if (state.editorAgent) { try { await api("POST", `/api/agents/${encodeURIComponent(state.editorAgent)}/editor/close`); } catch (_) { /* ignore */ } }
  state.editorAgent = null;
});

// ---- orgs ----------------------------------------------------------------------------------

async function loadOrgs() {
  try { state.orgs = await api("GET", "/api/orgs"); } catch (e) { setError("global-error", e.message); return; }
  renderOrgs();
}

function cfgText(s) { return !s.exists ? "missing" : s.valid ? `ok (${s.server})` : `invalid: ${s.error}`; }

function renderOrgs() {
  show("orgs-empty", state.orgs.length === 0);
  $("orgs-list").replaceChildren(...state.orgs.map((o) => el("tr", { "data-testid": "org-row", "data-org": o.name, onclick: () => openOrg(o.name) },
    el("td", { text: o.name }),
    el("td", { text: cfgText(o.kubeconfig) }),
    el("td", { text: cfgText(o.talosconfig) }),
    el("td", {}, el("button", { type: "button", class: "link", text: "Manage" })))));
  if (state.openOrg) { const o = state.orgs.find((x) => x.name === state.openOrg); if (o) renderOrgDetail(o); }
}

function nodes(v) { return v.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean); }

$("org-create-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  setError("org-create-error", "");
  const name = $("org-create-name").value.trim();
  const cp = nodes($("org-create-cp").value), workers = nodes($("org-create-workers").value);
  $("org-create-submit").disabled = true;
  try {
    await api("POST", "/api/orgs", { name });
    $("org-create-name").value = "";
    await loadOrgs();
    openOrg(name);
    if (cp.length) {
      await runFlow(`Provisioning ${name}`, `/api/orgs/${encodeURIComponent(name)}/provision/stream`, { cpNodes: cp, workerNodes: workers }, "org-create-error");
      await loadOrgs();
    }
  } catch (e) { setError("org-create-error", e.message); }
  finally { $("org-create-submit").disabled = false; }
});

function openOrg(name) {
  state.openOrg = name;
  const o = state.orgs.find((x) => x.name === name);
  for (const id of ["kubeconfig-error", "talosconfig-error", "provision-error", "org-delete-error", "pool-error"]) setError(id, "");
  $("org-delete-confirm").value = "";
  if (o) renderOrgDetail(o);
  show("org-detail", true);
  loadPool(name);
}

// ---- warm pool (GET/PUT/DELETE /api/orgs/{name}/pool) ---------------------------------------

function poolText(p) {
  const b = p.backend;
  const parts = [`${p.waiting} waiting`, `${p.warmStarts} warm / ${p.coldStarts} cold starts`];
  if (!b) return "No pool on the backend. " + parts.join(", ");
  parts.unshift(`${b.warm} warm (${b.running} running) of ${b.desired} wanted${b.scaledToZero ? ", scaled to zero (idle)" : ""}`);
  return `${b.resource}: ` + parts.join(", ") + (b.conditions && b.conditions.length ? ". " + b.conditions.join("; ") : "");
}

function fillPoolForm(spec) {
  $("pool-size").value = spec ? String(spec.size) : "";
  $("pool-image").value = spec && spec.image ? spec.image : "";
  $("pool-runner").value = spec && spec.runner ? spec.runner : "";
  $("pool-idle").value = spec && spec.idleSeconds ? String(spec.idleSeconds) : "";
}

async function loadPool(name) {
  $("pool-status").textContent = "";
  try {
    const p = await api("GET", `/api/orgs/${encodeURIComponent(name)}/pool`);
    if (state.openOrg !== name) return;
    $("pool-status").textContent = poolText(p);
    fillPoolForm(p.backend && p.backend.spec);
  } catch (e) { if (state.openOrg === name) setError("pool-error", e.message); }
}

$("pool-save").addEventListener("click", async () => {
  setError("pool-error", "");
  const name = state.openOrg;
  const size = $("pool-size").value.trim(), idle = $("pool-idle").value.trim();
  const spec = { size: size === "" ? 0 : Number(size) };
  if ($("pool-image").value.trim()) spec.image = $("pool-image").value.trim();
  if ($("pool-runner").value.trim()) spec.runner = $("pool-runner").value.trim();
  if (idle !== "") spec.idleSeconds = Number(idle);
  try {
    const p = await api("PUT", `/api/orgs/${encodeURIComponent(name)}/pool`, spec);
    $("pool-status").textContent = poolText(p);
  } catch (e) { setError("pool-error", e.message); }
});

$("pool-delete").addEventListener("click", async () => {
  setError("pool-error", "");
  const name = state.openOrg;
  try {
    await api("DELETE", `/api/orgs/${encodeURIComponent(name)}/pool`);
    fillPoolForm(null);
    await loadPool(name);
  } catch (e) { setError("pool-error", e.message); }
});

function renderOrgDetail(o) {
  $("org-detail-name").textContent = o.name;
  $("kubeconfig-status").textContent = "Kubeconfig: " + cfgText(o.kubeconfig);
  $("talosconfig-status").textContent = "Talosconfig: " + cfgText(o.talosconfig);
}

$("org-detail-close").addEventListener("click", () => { state.openOrg = null; show("org-detail", false); });

function readFile(input) {
  return new Promise((resolve, reject) => {
    const f = input.files && input.files[0];
    if (!f) return resolve(null);
    const r = new FileReader();
    r.onload = () => resolve(String(r.result));
    r.onerror = () => reject(new Error("cannot read the file"));
    r.readAsText(f);
  });
}

for (const kind of ["kubeconfig", "talosconfig"]) {
  $(`${kind}-upload`).addEventListener("click", async () => {
    setError(`${kind}-error`, "");
    try {
      const fromFile = await readFile($(`${kind}-file`));
      const content = fromFile !== null ? fromFile : $(`${kind}-text`).value;
      if (!content.trim()) { setError(`${kind}-error`, `Choose a ${kind} file or paste one.`); return; }
      await api("PUT", `/api/orgs/${encodeURIComponent(state.openOrg)}/${kind}`, { content });
      $(`${kind}-text`).value = ""; $(`${kind}-file`).value = "";
      await loadOrgs();
    } catch (e) { setError(`${kind}-error`, e.message); }
  });
}

$("provision-start").addEventListener("click", async () => {
  setError("provision-error", "");
  const name = state.openOrg;
  await runFlow(`Provisioning ${name}`, `/api/orgs/${encodeURIComponent(name)}/provision/stream`, { cpNodes: nodes($("provision-cp").value), workerNodes: nodes($("provision-workers").value) }, "provision-error");
  await loadOrgs();
});

$("org-delete").addEventListener("click", async () => {
  setError("org-delete-error", "");
  try {
    await api("DELETE", `/api/orgs/${encodeURIComponent(state.openOrg)}`, { confirm: $("org-delete-confirm").value.trim() });
    state.openOrg = null; show("org-detail", false); await loadOrgs();
  } catch (e) { setError("org-delete-error", e.message); }
});

// ---- artifacts -----------------------------------------------------------------------------

async function loadArtifacts() {
  let list;
  try { list = await api("GET", "/api/artifacts"); } catch (e) { setError("global-error", e.message); return; }
  show("artifacts-empty", list.length === 0);
  $("artifacts-list").replaceChildren(...list.map((t) => el("li", { "data-testid": "artifact-item" },
    el("strong", { text: `${t.org} / ${t.taskId} ` }), statusBadge(t.status), ...artifactLinks(t))));
}

window.addEventListener("hashchange", () => { if (!$("nav").hidden) route(); });
boot();
