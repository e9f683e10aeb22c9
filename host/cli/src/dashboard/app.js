// duro dashboard: the instance list, an instance page, the schedules, a
// schedule page, the entities and an entity page over the management API. Every value from the API is put in the page as text,
// never as markup. The admin key, when the host has one, comes as ?code= in
// the dashboard's own URL and is sent as a bearer token (the page's
// Referrer-Policy keeps that URL from other sites).
"use strict";

const API = "/runtime/webhooks/durabletask";
const KEY = new URLSearchParams(location.search).get("code");
const STATUSES = ["Pending", "Running", "Completed", "Failed", "Terminated", "Suspended", "ContinuedAsNew"];
const FINISHED = ["Completed", "Failed", "Terminated"];
const REFRESH_MS = 1500;

const main = document.getElementById("main");
const live = document.getElementById("live");
let refreshTimer = null;
let view = null; // the current view's refresh function

// h("tag.class", {attr: value, onclick: fn}, child, ...): an element.
function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag);
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(method, path, body, extraHeaders) {
  const headers = Object.assign({ "content-type": "application/json" }, extraHeaders);
  if (KEY) headers["authorization"] = "Bearer " + KEY;
  const response = await fetch(API + path, { method, headers, body });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
  if (!response.ok && response.status !== 202) {
    throw new Error((json && json.error) || `${response.status} ${response.statusText}`);
  }
  return { status: response.status, json, headers: response.headers };
}

const enc = encodeURIComponent;
const badge = (status) => h("span.badge." + status, { text: status, "data-status": status });
const time = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const preciseTime = (iso) => (iso ? new Date(iso).toLocaleString(undefined, {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
  second: "2-digit", fractionalSecondDigits: 3 }) : "–");
const pretty = (value) => (typeof value === "string" ? value : JSON.stringify(value, null, 2));
const short = (value) => {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > 80 ? text.slice(0, 77) + "…" : text;
};
const dashboardHref = (hash) => location.pathname + location.search + hash;

function notice(kind, text) {
  const old = document.getElementById("notice");
  if (old) old.remove();
  if (!text) return;
  main.prepend(h("div.notice." + kind, { id: "notice", role: kind === "error" ? "alert" : "status", text }));
}

function setLive(text) { live.textContent = text; }

// ---- confirmation dialog -------------------------------------------------

const dialog = document.getElementById("confirm");
function confirmAction(text, askReason) {
  document.getElementById("confirm-text").textContent = text;
  const reason = document.getElementById("confirm-reason");
  reason.value = "";
  document.getElementById("confirm-reason-label").hidden = !askReason;
  dialog.returnValue = "cancel";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok" ? { reason: reason.value } : null);
    }, { once: true });
    dialog.showModal();
    (askReason ? reason : document.getElementById("confirm-cancel")).focus();
  });
}

// ---- the instance list ---------------------------------------------------

function listState() {
  const params = new URLSearchParams(location.hash.replace(/^#\/?\??/, ""));
  return {
    status: params.get("status") || "",
    name: params.get("name") || "",
    prefix: params.get("prefix") || "",
    from: params.get("from") || "",
    to: params.get("to") || "",
    top: params.get("top") || "25",
  };
}

let pages = [null]; // continuation tokens of the pages visited; last is the current one
let nextToken = null;

function renderList() {
  const state = listState();
  pages = [null];
  const field = (label, input) => h("label", {}, label, input);
  const statusSelect = h("select", { name: "status", id: "filter-status" },
    h("option", { value: "", text: "Any" }),
    STATUSES.map((s) => h("option", { value: s, text: s, selected: s === state.status })));
  const form = h("form.filters", { id: "filters", onsubmit: (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const params = new URLSearchParams();
    for (const [k, v] of data.entries()) if (v) params.set(k, v);
    const hash = "#/?" + params.toString();
    if (location.hash === hash) renderList(); else location.hash = hash;
  } },
    field("Status", statusSelect),
    field("Orchestration", h("input", { name: "name", id: "filter-name", value: state.name, placeholder: "Workflow" })),
    field("Instance id prefix", h("input", { name: "prefix", id: "filter-prefix", value: state.prefix })),
    field("Created from", h("input", { type: "datetime-local", name: "from", id: "filter-from", value: state.from })),
    field("Created to", h("input", { type: "datetime-local", name: "to", id: "filter-to", value: state.to })),
    field("Per page", h("select", { name: "top", id: "filter-top" },
      ["10", "25", "50", "100"].map((n) => h("option", { value: n, text: n, selected: n === state.top })))),
    h("button.primary", { type: "submit", id: "apply", text: "Apply" }));
  const body = h("tbody", { id: "instances" });
  const table = h("table", { "aria-label": "Instances" },
    h("thead", {}, h("tr", {}, ["Instance", "Orchestration", "Status", "Created", "Last updated"].map((t) => h("th", { scope: "col", text: t })))),
    body);
  const prev = h("button", { id: "prev", text: "← Previous", disabled: true, onclick: () => { pages.pop(); loadPage(); } });
  const next = h("button", { id: "next", text: "Next →", disabled: true, onclick: () => { pages.push(nextToken); loadPage(); } });
  const count = h("span.count", { id: "page-info" });
  main.replaceChildren(
    h("h1", { text: "Instances" }),
    h("section.panel", { "aria-label": "Filters" }, form),
    h("section.panel", {}, table, h("div.pager", {}, prev, next, count)));

  async function loadPage() {
    const query = new URLSearchParams({ top: state.top });
    if (state.status) query.set("runtimeStatus", state.status);
    if (state.name) query.set("name", state.name);
    if (state.prefix) query.set("instanceIdPrefix", state.prefix);
    if (state.from) query.set("createdTimeFrom", new Date(state.from).toISOString());
    if (state.to) query.set("createdTimeTo", new Date(state.to).toISOString());
    const token = pages[pages.length - 1];
    try {
      const { json, headers } = await api("GET", `/instances?${query}`, undefined,
        token ? { "x-ms-continuation-token": token } : {});
      nextToken = headers.get("x-ms-continuation-token");
      body.replaceChildren(...(json.length ? json.map((i) => h("tr", { "data-id": i.instanceId },
        h("td.mono", {}, h("a", { href: "#/instances/" + enc(i.instanceId), text: i.instanceId })),
        h("td", { text: i.name }),
        h("td", {}, badge(i.runtimeStatus)),
        h("td", { text: time(i.createdTime) }),
        h("td", { text: time(i.lastUpdatedTime) }))) :
        [h("tr", {}, h("td.empty", { colspan: 5, text: "No instance matches these filters." }))]));
      prev.disabled = pages.length <= 1;
      next.disabled = !nextToken;
      count.textContent = `page ${pages.length} · ${json.length} shown`;
      notice(null);
      setLive("updated " + new Date().toLocaleTimeString());
    } catch (e) {
      notice("error", "Could not list instances: " + e.message);
    }
  }
  view = loadPage;
  loadPage();
}

// ---- one instance --------------------------------------------------------

function renderInstance(id) {
  const title = h("h1", {}, "Instance ", h("span.mono", { text: id }), " ", h("span", { id: "status" }));
  const summary = h("dl.summary", { id: "summary" });
  const io = h("div", { id: "io" });
  const pending = h("div", { id: "pending" });
  const history = h("tbody", { id: "history" });
  const actions = h("div.actions", { id: "actions" });
  const eventName = h("input", { id: "event-name", name: "event", required: true, placeholder: "Approval", autocomplete: "off" });
  const payload = h("textarea", { id: "event-payload", name: "payload", placeholder: "null" });
  const raiseForm = h("form.raise", { id: "raise", onsubmit: async (e) => {
    e.preventDefault();
    let body = payload.value.trim() || "null";
    try { JSON.parse(body); } catch (err) {
      notice("error", "The payload is not JSON: " + err.message);
      payload.focus();
      return;
    }
    const ok = await confirmAction(`Raise the event "${eventName.value}" on ${id}?`, false);
    if (!ok) return;
    try {
      await api("POST", `/instances/${enc(id)}/raiseEvent/${enc(eventName.value)}`, body);
      notice("info", `Event "${eventName.value}" raised.`);
      refresh();
    } catch (err) { notice("error", "Raise failed: " + err.message); }
  } },
    h("label", {}, "Event name", eventName),
    h("label", {}, "Payload (JSON)", payload),
    h("button.primary", { type: "submit", id: "raise-submit", text: "Raise event" }));

  main.replaceChildren(
    h("p", {}, h("a", { href: "#/", id: "back", text: "← All instances" })),
    title,
    h("section.panel", { "aria-label": "Summary" }, summary),
    h("section.panel", { "aria-label": "Actions" }, h("h2", { text: "Actions" }), actions,
      h("h2", { text: "Raise an event", style: "margin-top:1rem" }), raiseForm),
    h("div.grid2", {}, h("section.panel", { "aria-label": "Input and output" }, io),
      h("section.panel", { "aria-label": "Pending work" }, h("h2", { text: "Waiting on" }), pending)),
    h("section.panel", { "aria-label": "History" }, h("h2", { text: "History" }),
      h("table", {}, h("thead", {}, h("tr", {}, ["#", "Event", "Time", "After", "Details"].map((t) => h("th", { scope: "col", text: t })))), history)));

  let lastStatus = null;

  function renderActions(instance) {
    const status = instance.runtimeStatus;
    const finished = FINISHED.includes(status);
    const act = (label, op, enabled, question, askReason, after) => h("button" + (op === "terminate" || op === "purge" ? ".danger" : ""), {
      id: "action-" + op, text: label, disabled: !enabled, onclick: async () => {
        const ok = await confirmAction(question, askReason);
        if (!ok) return;
        try {
          const reason = ok.reason ? "?reason=" + enc(ok.reason) : "";
          const result = op === "purge"
            ? await api("DELETE", `/instances/${enc(id)}`)
            : await api("POST", `/instances/${enc(id)}/${op}${op === "restart" ? "?restartWithNewInstanceId=true" : reason}`);
          if (after) after(result); else { notice("info", `${label}: done.`); refresh(); }
        } catch (err) { notice("error", `${label} failed: ${err.message}`); }
      } });
    actions.replaceChildren(
      act("Terminate", "terminate", !finished, `Terminate ${id}? It will not run again.`, true),
      act("Suspend", "suspend", status === "Running" || status === "Pending", `Suspend ${id}?`, true),
      act("Resume", "resume", status === "Suspended", `Resume ${id}?`, true),
      act("Restart", "restart", true, `Start ${id}'s orchestration again with the same input, under a new id?`, false,
        (r) => { location.hash = "#/instances/" + enc(r.json.id); }),
      act("Upgrade", "upgrade", !finished, `Move ${id} to the deployed version of ${instance.name}, if its history replays there?`, false,
        (r) => { notice("info", "Now on " + r.json.component); refresh(); }),
      act("Purge", "purge", finished, `Delete ${id} and its history for good?`, false,
        () => { location.hash = "#/"; }));
  }

  async function refresh() {
    try {
      const { json: instance } = await api("GET", `/instances/${enc(id)}?showHistory=true&showHistoryOutput=true`);
      const status = document.getElementById("status");
      if (!status) return;
      status.replaceChildren(badge(instance.runtimeStatus));
      const row = (k, v) => [h("dt", { text: k }), h("dd", {}, v)];
      summary.replaceChildren(
        ...row("Orchestration", instance.name),
        ...row("Status", badge(instance.runtimeStatus)),
        ...row("Created", time(instance.createdTime)),
        ...row("Last updated", time(instance.lastUpdatedTime)),
        ...(instance.parentInstanceId ? row("Parent", h("a", { href: "#/instances/" + enc(instance.parentInstanceId), text: instance.parentInstanceId })) : []),
        ...(instance.scheduledBy ? row("Scheduled by", h("span", {},
          h("a", { href: "#/schedules/" + enc(instance.scheduledBy.schedule), id: "scheduled-by", text: instance.scheduledBy.schedule }),
          ", tick " + time(instance.scheduledBy.tick))) : []),
        ...row("Custom status", instance.customStatus === null ? "–" : short(instance.customStatus)));
      io.replaceChildren(
        h("h2", { text: "Input" }), h("pre", { id: "input", text: pretty(instance.input) }),
        h("h2", { text: "Output", style: "margin-top:.8rem" }), h("pre", { id: "output", text: instance.output === null ? "–" : pretty(instance.output) }));
      if (instance.runtimeStatus !== lastStatus) { renderActions(instance); lastStatus = instance.runtimeStatus; }
      renderHistory(instance.historyEvents || []);
      const { json: work } = await api("GET", `/instances/${enc(id)}/pending`);
      renderPending(work);
      setLive("updated " + new Date().toLocaleTimeString());
    } catch (e) {
      notice("error", `Could not load ${id}: ${e.message}`);
    }
  }

  function renderPending(work) {
    const items = [];
    for (const t of work.tasks) {
      if (t.kind === "createTimer") items.push(h("li", { "data-kind": "timer" }, `Timer #${t.task} due ${time(t.fireTime)}`));
      else if (t.kind === "callActivity") items.push(h("li", { "data-kind": "activity" }, `Activity #${t.task} ${t.name}`));
      else if (t.kind === "callSubOrchestration") items.push(h("li", { "data-kind": "child" }, `Sub-orchestration #${t.task} ${t.name} `,
        h("a", { href: "#/instances/" + enc(t.instance_id), text: t.instance_id })));
    }
    const inbox = work.inbox.map((m) => h("li", { "data-kind": "inbox" }, m.type, m.name ? ` "${m.name}"` : "", m.payload !== undefined ? " " + short(m.payload) : ""));
    pending.replaceChildren(
      items.length ? h("ul", { id: "open-tasks" }, items) : h("p.empty", { text: "No open timer, activity or sub-orchestration." }),
      h("h2", { text: "Inbox" }),
      inbox.length ? h("ul", { id: "inbox" }, inbox) : h("p.empty", { text: "Empty." }));
  }

  function renderHistory(events) {
    let previous = null;
    history.replaceChildren(...events.map((event, n) => {
      const at = Date.parse(event.timestamp);
      const after = previous === null ? "" : `+${Math.max(0, at - previous)} ms`;
      previous = at;
      const rest = Object.assign({}, event);
      delete rest.eventType; delete rest.timestamp;
      const details = Object.keys(rest).length
        ? h("details", {}, h("summary", { text: short(rest) }), h("pre", { text: JSON.stringify(rest, null, 2) }))
        : "";
      return h("tr", { "data-event": event.eventType },
        h("td", { text: String(n) }), h("td", { text: event.eventType }),
        h("td", { text: preciseTime(event.timestamp) }), h("td.mono", { text: after }), h("td", {}, details));
    }));
  }

  view = refresh;
  refresh();
}

// ---- schedules -------------------------------------------------------------

// Pause, resume or trigger a schedule, after a confirmation with a reason.
function scheduleAction(schedule, verb, done) {
  const label = verb[0].toUpperCase() + verb.slice(1);
  const enabled = verb === "pause" ? !schedule.paused : verb === "resume" ? schedule.paused : true;
  const question = {
    pause: `Pause ${schedule.name}? No tick fires until it is resumed.`,
    resume: `Resume ${schedule.name} from its next tick? Ticks missed while paused do not fire.`,
    trigger: `Start a tick of ${schedule.name} now (under its overlap policy, ${schedule.definition.overlap})?`,
  }[verb];
  return h("button", { id: `schedule-${verb}-${schedule.name}`, "data-verb": verb, text: label, disabled: !enabled, onclick: async () => {
    const ok = await confirmAction(question, true);
    if (!ok) return;
    try {
      const reason = ok.reason ? "?reason=" + enc(ok.reason) : "";
      const { json } = await api("POST", `/schedules/${enc(schedule.name)}/${verb}${reason}`);
      const started = json.triggered && json.triggered.instanceId;
      notice("info", verb === "trigger"
        ? (started ? `Started ${started}.` : `The tick was ${json.triggered.decision}.`)
        : `${label}d ${schedule.name}.`);
      done();
    } catch (err) { notice("error", `${label} failed: ${err.message}`); }
  } });
}

function renderSchedules() {
  const body = h("tbody", { id: "schedules" });
  main.replaceChildren(
    h("h1", { text: "Schedules" }),
    h("section.panel", {}, h("table", { "aria-label": "Schedules" },
      h("thead", {}, h("tr", {}, ["Schedule", "Cron", "Orchestration", "State", "Next fire", "Started · skipped · missed", "Actions"].map((t) => h("th", { scope: "col", text: t })))),
      body)));
  async function load() {
    try {
      const { json } = await api("GET", "/schedules");
      body.replaceChildren(...(json.length ? json.map((s) => h("tr", { "data-schedule": s.name },
        h("td.mono", {}, h("a", { href: "#/schedules/" + enc(s.name), text: s.name })),
        h("td.mono", { text: `${s.definition.cron} (${s.definition.timezone})` }),
        h("td", { text: s.definition.orchestration }),
        h("td", {}, h("span.badge." + (s.paused ? "Suspended" : "Running"), { text: s.paused ? "paused" : "active", "data-state": s.paused ? "paused" : "active" })),
        h("td", { text: time(s.nextFireTimes[0]) }),
        h("td", { text: `${s.counts.started} · ${s.counts.skipped} · ${s.counts.missed}` }),
        h("td.actions", {}, ["pause", "resume", "trigger"].map((verb) => scheduleAction(s, verb, load))))) :
        [h("tr", {}, h("td.empty", { colspan: 7, text: "No schedule: add [[schedule]] to the manifest, or POST /schedules." }))]));
      notice(null);
      setLive("updated " + new Date().toLocaleTimeString());
    } catch (e) { notice("error", "Could not list schedules: " + e.message); }
  }
  view = load;
  load();
}

function renderSchedule(name) {
  const summary = h("dl.summary", { id: "schedule-summary" });
  const actions = h("div.actions", { id: "schedule-actions" });
  const fires = h("ol", { id: "next-fires" });
  const runs = h("tbody", { id: "runs" });
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/schedules", id: "back-schedules", text: "← All schedules" })),
    h("h1", {}, "Schedule ", h("span.mono", { text: name })),
    h("section.panel", { "aria-label": "Summary" }, summary),
    h("section.panel", { "aria-label": "Actions" }, h("h2", { text: "Actions" }), actions),
    h("div.grid2", {},
      h("section.panel", { "aria-label": "Next fire times" }, h("h2", { text: "Next fire times" }), fires),
      h("section.panel", { "aria-label": "Recent runs" }, h("h2", { text: "Recent runs" }),
        h("table", {}, h("thead", {}, h("tr", {}, ["Tick", "Decision", "Instance", "Reason"].map((t) => h("th", { scope: "col", text: t })))), runs))));
  async function load() {
    try {
      const { json: s } = await api("GET", `/schedules/${enc(name)}`);
      const row = (k, v) => [h("dt", { text: k }), h("dd", {}, v)];
      const d = s.definition;
      summary.replaceChildren(
        ...row("Cron", `${d.cron} (${d.timezone})`),
        ...row("Orchestration", d.orchestration),
        ...row("Input", short(d.input)),
        ...row("Overlap", d.overlap),
        ...row("Catch up", `${d.catchUp} (window ${d.catchUpWindowMs} ms)`),
        ...row("State", s.paused ? `paused${s.pauseReason ? ": " + s.pauseReason : ""}` : "active"),
        ...row("Defined in", s.origin === "manifest" ? "the manifest" : "the API"),
        ...row("Totals", `${s.counts.started} started · ${s.counts.skipped} skipped · ${s.counts.missed} missed`));
      actions.replaceChildren(...["pause", "resume", "trigger"].map((verb) => scheduleAction(s, verb, load)));
      fires.replaceChildren(...(s.nextFireTimes.length ? s.nextFireTimes.map((t) => h("li", { text: preciseTime(t) }))
        : [h("li.empty", { text: s.paused ? "Paused." : "None: it has ended." })]));
      runs.replaceChildren(...s.recentRuns.map((r) => h("tr", { "data-decision": r.decision },
        h("td", { text: preciseTime(r.tick) }),
        h("td", { text: r.decision }),
        h("td.mono", {}, r.instanceId ? h("a", { href: "#/instances/" + enc(r.instanceId), text: r.instanceId }) : "–"),
        h("td", { text: r.reason || "" }))));
      notice(null);
      setLive("updated " + new Date().toLocaleTimeString());
    } catch (e) { notice("error", `Could not load schedule ${name}: ${e.message}`); }
  }
  view = load;
  load();
}

// ---- entities --------------------------------------------------------------

function renderEntities() {
  const params = new URLSearchParams(location.hash.replace(/^#\/entities\??/, ""));
  const name = h("input", { id: "entity-filter-name", type: "text", placeholder: "entity name", value: params.get("name") || "", autocomplete: "off" });
  const body = h("tbody", { id: "entities" });
  const form = h("form.filters", { onsubmit: (e) => {
    e.preventDefault();
    location.hash = "#/entities" + (name.value ? "?name=" + enc(name.value) : "");
  } }, h("label", {}, "Name ", name), h("button", { type: "submit", text: "Filter" }));
  main.replaceChildren(
    h("h1", { text: "Entities" }),
    form,
    h("section.panel", {}, h("table", { "aria-label": "Entities" },
      h("thead", {}, h("tr", {}, ["Entity", "Key", "State", "Locked by", "Queued", "Operations", "Last operation"].map((t) => h("th", { scope: "col", text: t })))),
      body)));
  async function load() {
    try {
      const path = (params.get("name") ? `/entities/${enc(params.get("name"))}` : "/entities") + "?fetchState=true&top=200";
      const { json } = await api("GET", path);
      body.replaceChildren(...(json.length ? json.map((e) => h("tr", { "data-entity": `${e.entityId.name}/${e.entityId.key}` },
        h("td.mono", { text: e.entityId.name }),
        h("td.mono", {}, h("a", { href: `#/entities/${enc(e.entityId.name)}/${enc(e.entityId.key)}`, text: e.entityId.key })),
        h("td.mono", { text: short(e.state) }),
        h("td.mono", {}, e.lockedBy ? h("a", { href: "#/instances/" + enc(e.lockedBy), text: e.lockedBy }) : "–"),
        h("td", { text: String(e.queued) }),
        h("td", { text: String(e.operations) }),
        h("td", { text: time(e.lastOperationTime) }))) :
        [h("tr", {}, h("td.empty", { colspan: 7, text: "No entity has state: add [[entity]] to the manifest and signal one." }))]));
      notice(null);
      setLive("updated " + new Date().toLocaleTimeString());
    } catch (e) { notice("error", "Could not list entities: " + e.message); }
  }
  view = load;
  load();
}

function renderEntity(name, key) {
  const summary = h("dl.summary", { id: "entity-summary" });
  const state = h("pre.json", { id: "entity-state" });
  const queue = h("tbody", { id: "entity-queue" });
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/entities", id: "back-entities", text: "← All entities" })),
    h("h1", {}, "Entity ", h("span.mono", { text: `${name}/${key}` })),
    h("section.panel", { "aria-label": "Summary" }, summary),
    h("div.grid2", {},
      h("section.panel", { "aria-label": "State" }, h("h2", { text: "State" }), state),
      h("section.panel", { "aria-label": "Waiting for the lock" }, h("h2", { text: "Waiting for the lock" }),
        h("table", {}, h("thead", {}, h("tr", {}, ["#", "Kind", "Operation", "From"].map((t) => h("th", { scope: "col", text: t })))), queue))));
  async function load() {
    try {
      const { json: e } = await api("GET", `/entities/${enc(name)}/${enc(key)}?showDetails=true`);
      const row = (k, v) => [h("dt", { text: k }), h("dd", {}, v)];
      summary.replaceChildren(
        ...row("Locked by", e.lockedBy ? h("a", { href: "#/instances/" + enc(e.lockedBy), id: "entity-locked-by", text: e.lockedBy }) : "nobody"),
        ...row("Queued", String(e.queued)),
        ...row("Operations run", String(e.operations)),
        ...row("Last operation", preciseTime(e.lastOperationTime)));
      state.textContent = e.exists ? pretty(e.state) : "(no state)";
      queue.replaceChildren(...(e.queue.length ? e.queue.map((q, i) => h("tr", {},
        h("td", { text: String(i + 1) }),
        h("td", { text: q.kind }),
        h("td.mono", { text: q.operation || "–" }),
        h("td.mono", {}, q.from ? h("a", { href: "#/instances/" + enc(q.from), text: q.from }) : "a client"))) :
        [h("tr", {}, h("td.empty", { colspan: 4, text: "Nothing waits." }))]));
      notice(null);
      setLive("updated " + new Date().toLocaleTimeString());
    } catch (err) { notice("error", `Could not load entity ${name}/${key}: ${err.message}`); }
  }
  view = load;
  load();
}

// ---- routing and live updates ---------------------------------------------

function route() {
  clearInterval(refreshTimer);
  notice(null);
  const hash = location.hash || "#/";
  const match = hash.match(/^#\/instances\/(.+)$/);
  const schedule = hash.match(/^#\/schedules\/(.+)$/);
  const entity = hash.match(/^#\/entities\/([^/?]+)\/(.+)$/);
  if (match) renderInstance(decodeURIComponent(match[1]));
  else if (entity) renderEntity(decodeURIComponent(entity[1]), decodeURIComponent(entity[2]));
  else if (hash === "#/entities" || hash.startsWith("#/entities?")) renderEntities();
  else if (schedule) renderSchedule(decodeURIComponent(schedule[1]));
  else if (hash === "#/schedules") renderSchedules();
  else renderList();
  main.focus();
  // Live: the page re-reads what it shows, unless a dialog is open or the
  // user is typing in a form.
  refreshTimer = setInterval(() => {
    const typing = document.activeElement && ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    if (!dialog.open && !typing && view) view();
  }, REFRESH_MS);
}

document.addEventListener("keydown", (e) => {
  // "/" jumps to the list's first filter, as in many consoles.
  if (e.key === "/" && !["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName)) {
    const name = document.getElementById("filter-name");
    if (name) { e.preventDefault(); name.focus(); }
  }
});
window.addEventListener("hashchange", route);
document.getElementById("home").setAttribute("href", dashboardHref("#/"));
document.getElementById("nav-instances").setAttribute("href", dashboardHref("#/"));
document.getElementById("nav-schedules").setAttribute("href", dashboardHref("#/schedules"));
document.getElementById("nav-entities").setAttribute("href", dashboardHref("#/entities"));
route();
