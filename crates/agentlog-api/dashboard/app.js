// The dashboard: pages routed by the URL's hash, each drawn from the API and refreshed while
// it is shown. Text from the API is only ever set as text (textContent, attributes), never
// parsed as markup.
import { api, ApiError, getKey, onUnauthorized, readEvents, setKey } from "./api.js";
import { bar, lineChart, PALETTE } from "./charts.js";

const TERMINAL = new Set(["completed", "failed", "dead_lettered", "cancelled", "expired"]);
const STATUSES = ["pending", "queued", "scheduled", "running", "waiting", "retrying", "completed", "failed", "dead_lettered", "cancelled", "expired"];
const LANES = ["critical", "high", "normal", "low"];
/** How often shown pages refresh, and the stats are sampled for the charts. */
const REFRESH_MS = 2000;
/** The charts' span: samples older than this are dropped. */
const WINDOW_MS = 5 * 60 * 1000;
/** A heartbeat older than this marks an agent stale (the supervisor declares it lost later). */
const STALE_MS = 15_000;

// ---------------------------------------------------------------------------------- helpers

/** An element: `h("td", {class: "num"}, "12")`. Strings become text nodes; `on*` props listen. */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const dash = "—";
const num = (v) => (v === null || v === undefined ? dash : Number(v).toLocaleString("en-US"));
const ms = (v) => (v === null || v === undefined ? dash : `${Number(v).toLocaleString("en-US")} ms`);

function time(atMs) {
  if (!atMs) return dash;
  const d = new Date(atMs);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function ago(atMs) {
  if (!atMs) return dash;
  const s = Math.max(0, Math.round((Date.now() - atMs) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}

const badge = (status) => h("span", { class: `badge st-${status}` }, String(status).replace("_", " "));
const taskLink = (id) => h("a", { href: `#/task/${encodeURIComponent(id)}`, class: "mono" }, id);
const json = (v) => h("pre", { class: "json" }, v === undefined ? dash : JSON.stringify(v, null, 2));

function table(headers, rows, empty = "Nothing here yet.") {
  if (!rows.length) return h("p", { class: "muted empty" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.startsWith("#") ? "num" : "" }, x.replace(/^#/, ""))))),
    h("tbody", {}, rows),
  );
}

/** A message of an API error, as the API words it (code and field too). */
function problem(error) {
  if (!(error instanceof ApiError)) return h("p", { class: "error", role: "alert" }, String(error?.message || error));
  return h("p", { class: "error", role: "alert" }, `${error.status || ""} ${error.code}: ${error.message}${error.field ? ` (field ${error.field})` : ""}`);
}

const section = (title, ...children) => h("section", { class: "card" }, h("h2", {}, title), children);

// ------------------------------------------------------------------------- session and key

const session = { tenant: null, admin: false, keysRequired: false };
const dialog = document.getElementById("key-dialog");

onUnauthorized((error) => askForKey(error));

function askForKey(error) {
  document.getElementById("key-error").textContent = getKey() && error ? `${error.code}: ${error.message}` : "";
  if (!dialog.open) dialog.showModal();
  document.getElementById("key-input").focus();
}

document.getElementById("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("key-input");
  setKey(input.value.trim());
  try {
    await start();
    input.value = "";
    dialog.close();
  } catch (error) {
    document.getElementById("key-error").textContent = error instanceof ApiError ? `${error.code}: ${error.message}` : String(error);
  }
});

document.getElementById("signout").addEventListener("click", () => {
  setKey("");
  session.tenant = null;
  location.reload();
});

/** Who the key names (from /v1/stats) and whether it may use the admin operations. */
async function start() {
  const stats = await api("/v1/stats");
  session.tenant = stats.tenant.name;
  session.keysRequired = Boolean(getKey());
  try {
    await api("/v1/admin/replay");
    session.admin = true;
  } catch (error) {
    // 403: not in api.admin_tenants; 503: admin, but this server manages no projection.
    session.admin = error instanceof ApiError && error.status === 503;
  }
  document.getElementById("nav-admin").hidden = !session.admin;
  document.getElementById("signout").hidden = !session.keysRequired;
  document.getElementById("who").textContent = session.keysRequired ? `tenant ${session.tenant}${session.admin ? " (admin)" : ""}` : "";
  sample(stats);
  render();
}

// ------------------------------------------------------------------- samples for the charts

/** `/v1/stats` over time: [{t, types: {name: {finished, submitted, p50, p99}}}]. */
const samples = [];
const sampleListeners = new Set();

function finishedOf(s) {
  return s.completed + s.failed + s.dead_lettered + s.cancelled + s.expired;
}

function sample(stats) {
  const t = Date.now();
  const types = {};
  for (const [name, s] of Object.entries(stats.agent_types)) {
    types[name] = { finished: finishedOf(s), submitted: s.submitted, p50: s.submit_to_outcome_ms.p50, p99: s.submit_to_outcome_ms.p99 };
  }
  samples.push({ t, types, stats });
  while (samples.length && samples[0].t < t - WINDOW_MS - REFRESH_MS) samples.shift();
  for (const listener of sampleListeners) listener();
}

setInterval(async () => {
  if (!session.tenant || document.hidden) return;
  try {
    sample(await api("/v1/stats"));
  } catch {
    // The next tick tries again; the page shows the API's error where it reads.
  }
}, REFRESH_MS);

/** Outcomes per second of each agent type between consecutive samples. */
function rates(field) {
  const names = [...new Set(samples.flatMap((s) => Object.keys(s.types)))].sort();
  return names.map((name, i) => {
    const points = [];
    for (let j = 1; j < samples.length; j++) {
      const [a, b] = [samples[j - 1], samples[j]];
      const dt = (b.t - a.t) / 1000;
      // A type first seen in `b` has no earlier count: its total is not a rate.
      if (dt <= 0 || !a.types[name] || !b.types[name]) continue;
      points.push([b.t, Math.max(0, (b.types[name][field] - a.types[name][field]) / dt)]);
    }
    return { name, color: PALETTE[i % PALETTE.length], points };
  });
}

function latencies(field) {
  const names = [...new Set(samples.flatMap((s) => Object.keys(s.types)))].sort();
  return names.map((name, i) => ({
    name,
    color: PALETTE[i % PALETTE.length],
    points: samples.filter((s) => s.types[name]?.[field] !== undefined).map((s) => [s.t, s.types[name][field]]),
  }));
}

const legend = (series) => h("ul", { class: "legend" }, series.map((s) => h("li", {}, h("span", { class: `swatch c${PALETTE.indexOf(s.color)}` }), s.name)));

// -------------------------------------------------------------------------------- health

async function health() {
  const node = document.getElementById("health");
  try {
    const ready = await api("/readyz", { accept: [503] });
    node.textContent = ready.ready ? "ready" : "not ready";
    node.className = `health ${ready.ready ? "ok" : "bad"}`;
    node.title = ready.ready ? `projection lag ${ready.lag_records ?? "?"} records` : ready.waiting_for.join("; ");
    return ready;
  } catch (error) {
    node.textContent = "unreachable";
    node.className = "health bad";
    node.title = error.message;
    return null;
  }
}
health();
setInterval(() => document.hidden || health(), 5000);

// -------------------------------------------------------------------------------- pages

/** What a page gets: where to draw, a signal aborted when it is left, and a refresher. */
class Page {
  constructor(root) {
    this.root = root;
    this.controller = new AbortController();
    this.signal = this.controller.signal;
    this.timers = [];
    this.cleanups = [];
  }
  every(fn, ms = REFRESH_MS) {
    const run = async () => {
      if (this.signal.aborted || document.hidden) return;
      try {
        await fn();
      } catch (error) {
        if (error.name !== "AbortError") this.flash(problem(error));
      }
    };
    this.timers.push(setInterval(run, ms));
    return run();
  }
  onSample(fn) {
    sampleListeners.add(fn);
    this.cleanups.push(() => sampleListeners.delete(fn));
  }
  /** Replaces the children of `node` with `children` (one redraw, no flicker of focus). */
  fill(node, ...children) {
    node.replaceChildren();
    append(node, children);
  }
  flash(node) {
    let slot = this.root.querySelector(".flash");
    if (!slot) this.root.prepend((slot = h("div", { class: "flash" })));
    slot.replaceChildren(node);
  }
  leave() {
    this.controller.abort();
    this.timers.forEach(clearInterval);
    this.cleanups.forEach((f) => f());
  }
}

function overview(page) {
  const ready = h("div");
  const charts = h("div", { class: "grid2" });
  const perType = h("div");
  page.root.append(h("h1", {}, "Overview"), h("div", { class: "flash" }), charts, section("Agent types", perType), section("Health", ready));
  const draw = () => {
    const throughput = rates("finished");
    const submitted = rates("submitted");
    const p99 = latencies("p99");
    const p50 = latencies("p50");
    // The span of the samples so far (at least a minute, at most the window): a fresh page's
    // first seconds are not squeezed against the right edge.
    const windowMs = Math.min(WINDOW_MS, Math.max(60_000, samples.length ? Date.now() - samples[0].t : 0));
    const chart = (series, unit) => lineChart(series, { windowMs, unit, height: 150 });
    page.fill(
      charts,
      section("Throughput: outcomes per second", chart(throughput, "/s"), legend(throughput)),
      section("Submissions per second", chart(submitted, "/s"), legend(submitted)),
      section("Latency, submit to outcome, p99", chart(p99, "ms"), legend(p99)),
      section("Latency, submit to outcome, p50", chart(p50, "ms"), legend(p50)),
    );
    const last = samples[samples.length - 1];
    if (!last) return;
    const rows = Object.entries(last.stats.agent_types).map(([name, s]) =>
      h(
        "tr",
        {},
        h("td", {}, h("a", { href: `#/tasks?agent_type=${encodeURIComponent(name)}` }, name)),
        [s.submitted, s.completed, s.failed, s.dead_lettered, s.cancelled, s.expired, s.retries].map((v) => h("td", { class: "num" }, num(v))),
        ["p50", "p90", "p99", "max"].map((q) => h("td", { class: "num" }, ms(s.submit_to_outcome_ms[q]))),
      ),
    );
    const t = last.stats.tenant;
    page.fill(
      perType,
      h("p", {}, `Tenant ${t.name}: ${num(t.submitted)} submitted, ${num(t.finished)} finished, ${num(t.open)} open.`),
      table(["agent type", "#submitted", "#completed", "#failed", "#dead letters", "#cancelled", "#expired", "#retries", "#p50", "#p90", "#p99", "#max"], rows),
      h("p", { class: "muted" }, "Latency percentiles (submit to outcome) cover every outcome since the projection started: the API keeps one histogram per agent type."),
    );
  };
  page.onSample(draw);
  draw();
  page.every(async () => {
    const r = await health();
    if (!r) return;
    const components = Object.entries(r.components || {}).map(([name, c]) =>
      h(
        "li",
        { title: c.last_error ? `last error: ${c.last_error}` : `since ${time(c.since_ms)}` },
        badge(c.state),
        name,
        c.restarts ? h("span", { class: "muted" }, ` (${c.restarts} restarts)`) : null,
      ),
    );
    page.fill(
      ready,
      h(
        "p",
        {},
        badge(r.ready ? "ready" : "not_ready"),
        ` projection lag: ${r.lag_records === null || r.lag_records === undefined ? "unknown" : `${num(r.lag_records)} records`}`,
      ),
      r.waiting_for.length ? h("ul", { class: "problems" }, r.waiting_for.map((w) => h("li", {}, w))) : null,
      components.length ? h("ul", { class: "components" }, components) : null,
    );
  }, 5000);
}

function lanes(page) {
  const body = h("div");
  page.root.append(
    h("h1", {}, "Lanes"),
    h("div", { class: "flash" }),
    h("p", { class: "muted" }, "Tasks waiting per agent type and lane: the lag of the type's worker group on each lane's topic (in-flight tasks included until their outcome is written). Workers read lanes highest priority first."),
    body,
  );
  let previous = {};
  page.every(async () => {
    const { agent_types } = await api("/v1/agent-types", { signal: page.signal });
    const totals = Object.fromEntries(agent_types.map((t) => [t.name, Object.values(t.lag).reduce((a, b) => a + b, 0)]));
    const max = Math.max(1, ...Object.values(totals));
    const rows = agent_types.map((t) => {
      const total = totals[t.name];
      const delta = previous[t.name] === undefined ? null : total - previous[t.name];
      return h(
        "tr",
        { "data-type": t.name },
        h("td", {}, t.name),
        LANES.map((lane) => h("td", { class: `num${t.lag[lane] ? " hot" : ""}`, "data-lane": lane }, t.lanes.includes(lane) ? num(t.lag[lane] ?? 0) : dash)),
        h("td", { class: "num", "data-total": "" }, num(total)),
        h("td", { class: "num" }, delta === null ? dash : delta > 0 ? `+${delta}` : String(delta)),
        h("td", {}, bar(total, max, `${total} waiting`, { warn: 100 })),
        h("td", { class: "num" }, num(t.concurrency)),
        h("td", { class: "num" }, num(t.partitions)),
        h("td", {}, t.runtime?.kind || dash),
      );
    });
    previous = totals;
    page.fill(
      body,
      section(
        "Waiting tasks",
        table(["agent type", ...LANES.map((l) => `#${l}`), "#total", "#change", "backlog", "#concurrency", "#partitions", "runtime"], rows, "No agent types are declared."),
      ),
    );
  });
}

function agents(page) {
  const body = h("div");
  page.root.append(h("h1", {}, "Agents"), h("div", { class: "flash" }), body);
  page.every(async () => {
    const list = (await api("/v1/agents", { signal: page.signal })).agents;
    const rows = list.map((a) => {
      const stale = a.status === "running" && a.last_heartbeat_at_ms && Date.now() - a.last_heartbeat_at_ms > STALE_MS;
      return h(
        "tr",
        {},
        h("td", { class: "mono" }, a.agent_id),
        h("td", {}, a.agent_type || dash),
        h("td", {}, badge(a.status), stale ? h("span", { class: "badge st-lost" }, "stale") : null),
        h("td", { class: stale ? "warn" : "" }, ago(a.last_heartbeat_at_ms)),
        h("td", {}, bar(a.in_flight, a.capacity, `${a.in_flight} of ${a.capacity}`, { warn: a.capacity }), ` ${a.in_flight}/${a.capacity}`),
        h("td", { class: "num" }, num(a.completed_total)),
        h("td", { class: "num" }, num(a.failed_total)),
        h("td", { class: "num" }, `${a.cpu_percent.toFixed(1)}%`),
        h("td", { class: "num" }, `${(a.memory_bytes / 1048576).toFixed(0)} MiB`),
        h("td", {}, a.host || dash),
      );
    });
    const live = list.filter((a) => a.status === "running").length;
    page.fill(
      body,
      section(
        `${live} running of ${list.length} registered, least loaded first`,
        table(["agent", "type", "health", "heartbeat", "load", "#completed", "#failed", "#cpu", "#memory", "host"], rows, "No agents have registered."),
      ),
    );
  });
}

function dlq(page) {
  const body = h("div");
  const note = h("div", { class: "flash" });
  page.root.append(h("h1", {}, "Dead letters"), note, h("p", { class: "muted" }, "Tasks that used up their attempts. Resubmitting sends the original command again as a new attempt series."), body);
  let cursor = null;
  const load = async () => {
    const query = new URLSearchParams({ limit: "50" });
    if (cursor) query.set("cursor", cursor);
    const page_ = await api(`/v1/dlq?${query}`, { signal: page.signal });
    const rows = page_.dead_letters.map((d) =>
      h(
        "tr",
        { "data-task": d.task_id },
        h("td", {}, taskLink(d.task_id)),
        h("td", {}, d.agent_type),
        h("td", { class: "num" }, num(d.attempts)),
        h("td", {}, h("code", {}, d.error_kind)),
        h("td", { class: "reason" }, d.reason),
        h("td", {}, time(d.dead_lettered_at_ms)),
        h("td", {}, d.task_status ? badge(d.task_status) : dash),
        h(
          "td",
          {},
          h(
            "button",
            {
              type: "button",
              class: "resubmit",
              // A letter whose task ran again (or is running) was resubmitted already.
              disabled: Boolean(d.truncated) || (d.task_status && d.task_status !== "dead_lettered"),
              title: d.truncated
                ? `cannot be resubmitted: ${d.truncated} was cut to fit the log`
                : d.task_status && d.task_status !== "dead_lettered"
                  ? `resubmitted already: the task is ${d.task_status}`
                  : "POST /v1/dlq/{id}/resubmit",
              onclick: async (event) => {
                event.target.disabled = true;
                try {
                  const written = await api(`/v1/dlq/${encodeURIComponent(d.task_id)}/resubmit`, { method: "POST" });
                  note.replaceChildren(h("p", { class: "ok", role: "status" }, `Resubmitted `, taskLink(written.task_id), ` at ${written.position}.`));
                  await load();
                } catch (error) {
                  event.target.disabled = false;
                  note.replaceChildren(problem(error));
                }
              },
            },
            "Resubmit",
          ),
        ),
      ),
    );
    page.fill(
      body,
      section("Dead letters, newest first", table(["task", "agent type", "#attempts", "error", "reason", "dead-lettered", "status now", ""], rows, "No dead letters.")),
      page_.next_cursor
        ? h("button", { type: "button", onclick: () => ((cursor = page_.next_cursor), load().catch((e) => note.replaceChildren(problem(e)))) }, "Older")
        : null,
      cursor ? h("button", { type: "button", class: "link", onclick: () => ((cursor = null), load().catch((e) => note.replaceChildren(problem(e)))) }, "Newest") : null,
    );
  };
  page.every(load, 5000);
}

/** The agent types (cached for the forms). */
let typesCache = null;
async function agentTypes() {
  if (!typesCache) typesCache = (await api("/v1/agent-types")).agent_types;
  return typesCache;
}

function tasks(page, params) {
  const note = h("div", { class: "flash" });
  const results = h("div");
  const typeSelect = h("select", { name: "agent_type" }, h("option", { value: "" }, "any type"));
  const statusSelect = h("select", { name: "status" }, h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s }, s.replace("_", " "))));
  const submitType = h("select", { name: "agent_type", required: true, id: "submit-type" });
  const submitLane = h("select", { name: "lane", id: "submit-lane" }, LANES.map((l) => h("option", { value: l, selected: l === "normal" }, l)));
  const input = h("textarea", { name: "input", rows: 5, spellcheck: "false", id: "submit-input" }, '{"text": "hello agents"}');
  const filters = h(
    "form",
    { class: "row", id: "filter-form", onsubmit: (e) => (e.preventDefault(), search()) },
    h("label", {}, "Status ", statusSelect),
    h("label", {}, "Agent type ", typeSelect),
    h("button", { type: "submit" }, "Search"),
  );
  const submitForm = h(
    "form",
    {
      id: "submit-form",
      onsubmit: async (e) => {
        e.preventDefault();
        let value;
        try {
          value = JSON.parse(input.value);
        } catch (error) {
          note.replaceChildren(h("p", { class: "error", role: "alert" }, `input is not JSON: ${error.message}`));
          return;
        }
        try {
          const written = await api("/v1/tasks", { method: "POST", body: { agent_type: submitType.value, lane: submitLane.value, input: value } });
          positions.set(written.task_id, written.position);
          location.hash = `#/task/${encodeURIComponent(written.task_id)}`;
        } catch (error) {
          note.replaceChildren(problem(error));
        }
      },
    },
    h("div", { class: "row" }, h("label", {}, "Agent type ", submitType), h("label", {}, "Lane ", submitLane)),
    h("label", { class: "block" }, "Input (JSON)", input),
    h("button", { type: "submit" }, "Submit task"),
  );
  page.root.append(h("h1", {}, "Tasks"), note, h("div", { class: "split" }, section("Search", filters, results), section("Submit a task", submitForm)));
  let cursor = null;
  let shown = [];
  const wanted = params.get("agent_type");
  if (wanted) typeSelect.append(h("option", { value: wanted, selected: true }, wanted));
  agentTypes()
    .then((types) => {
      for (const t of types) {
        if (t.name !== wanted) typeSelect.append(h("option", { value: t.name }, t.name));
        submitType.append(h("option", { value: t.name, title: t.description }, t.name));
      }
    })
    .catch((e) => note.replaceChildren(problem(e)));
  statusSelect.value = params.get("status") || "";
  async function search(more = false) {
    const query = new URLSearchParams({ limit: "25" });
    const status = statusSelect.value;
    const type = typeSelect.value;
    if (status) query.set("status", status);
    if (type) query.set("agent_type", type);
    if (more && cursor) query.set("cursor", cursor);
    try {
      const answer = await api(`/v1/tasks?${query}`, { signal: page.signal });
      shown = more ? shown.concat(answer.tasks) : answer.tasks;
      cursor = answer.next_cursor;
      const rows = shown.map((t) =>
        h("tr", {}, h("td", {}, taskLink(t.task_id)), h("td", {}, t.agent_type || dash), h("td", {}, badge(t.status)), h("td", { class: "num" }, num(t.attempts)), h("td", {}, time(t.created_at_ms))),
      );
      page.fill(results, table(["task", "agent type", "status", "#attempts", "created"], rows, "No tasks match."), cursor ? h("button", { type: "button", onclick: () => search(true) }, "More") : null);
    } catch (error) {
      if (error.name !== "AbortError") page.fill(results, problem(error));
    }
  }
  search();
}

/** Positions of tasks submitted from this page, so the task page reads its own write. */
const positions = new Map();

function task(page, id) {
  const head = h("div");
  const outcome = h("div");
  const timeline = h("div");
  const live = h("pre", { class: "stream", id: "stream-text" });
  const liveState = h("span", { class: "muted", id: "stream-state" }, "connecting…");
  const progress = h("div", { id: "stream-progress" });
  const note = h("div", { class: "flash" });
  const inputCard = h("div");
  page.root.append(
    h("p", { class: "crumb" }, h("a", { href: "#/tasks" }, "← Tasks")),
    h("h1", {}, "Task ", h("span", { class: "mono" }, id)),
    note,
    head,
    h("div", { class: "grid2" }, section("Outcome", outcome), section("Live stream", h("p", {}, liveState), progress, live)),
    section("Timeline", timeline),
    inputCard,
  );
  let done = false;
  let first = true;
  let drawn = null;
  const refresh = async () => {
    if (done) return;
    let t;
    try {
      const after = first && positions.get(id);
      t = await api(`/v1/tasks/${encodeURIComponent(id)}${after ? `?after=${encodeURIComponent(after)}&wait_ms=5000` : ""}`, { signal: page.signal });
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        page.fill(head, h("p", { class: "muted" }, "Not in the projection yet…"));
        return;
      }
      throw error;
    }
    first = false;
    done = TERMINAL.has(t.status);
    drawTask(t);
  };
  const drawTask = (t) => {
    // Redrawn only when it changed: a redraw would reset what the operator types in a form.
    const text = JSON.stringify(t);
    if (text === drawn) return;
    drawn = text;
    const fields = [
      ["status", badge(t.status)],
      ["agent type", t.agent_type || dash],
      ["lane", t.lane || dash],
      ["attempts", `${t.attempts}${t.max_attempts ? ` of ${t.max_attempts}` : ""}`],
      ["agent", t.agent_id || dash],
      ["created", time(t.created_at_ms)],
      ["updated", time(t.updated_at_ms)],
      // The id to search for in the trace backend (Jaeger, Tempo...): set when the task's
      // trace was sampled, by agentlog or by whoever submitted it.
      ["trace id", t.trace_id ? h("code", {}, t.trace_id) : dash],
      ["job", t.job_id || dash],
      ["parent", t.parent_task_id ? taskLink(t.parent_task_id) : dash],
      ["ordering key", t.ordering_key || dash],
      ["labels", Object.keys(t.labels).length ? Object.entries(t.labels).map(([k, v]) => `${k}=${v}`).join(", ") : dash],
    ];
    const actions = h("div", { class: "row" });
    if (!TERMINAL.has(t.status)) {
      actions.append(
        h(
          "button",
          {
            type: "button",
            class: "danger",
            disabled: t.cancel_requested,
            onclick: async () => {
              try {
                await api(`/v1/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST", body: { reason: "cancelled from the dashboard" } });
                note.replaceChildren(h("p", { class: "ok", role: "status" }, "Cancel requested."));
              } catch (error) {
                note.replaceChildren(problem(error));
              }
            },
          },
          t.cancel_requested ? "Cancel requested" : "Cancel",
        ),
      );
    }
    if (t.status === "waiting" && t.waiting_for) {
      const payload = h("textarea", { rows: 2, spellcheck: "false", id: "signal-payload" }, '{"approved": true, "by": "dashboard"}');
      actions.append(
        h(
          "form",
          {
            class: "signal",
            onsubmit: async (e) => {
              e.preventDefault();
              try {
                const body = { payload: JSON.parse(payload.value) };
                await api(`/v1/tasks/${encodeURIComponent(id)}/signals/${encodeURIComponent(t.waiting_for.signal)}`, { method: "POST", body });
                note.replaceChildren(h("p", { class: "ok", role: "status" }, `Signal ${t.waiting_for.signal} sent.`));
              } catch (error) {
                note.replaceChildren(problem(error));
              }
            },
          },
          h("label", { class: "block" }, `Waiting for signal `, h("code", {}, t.waiting_for.signal), ` (until ${time(t.waiting_for.timeout_at_ms)}); payload (JSON)`, payload),
          h("button", { type: "submit" }, `Send ${t.waiting_for.signal}`),
        ),
      );
    }
    page.fill(
      head,
      section("Task", h("dl", { class: "fields cols" }, fields.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))), actions),
    );
    page.fill(inputCard, section("Input", json(t.input)));
    const o = t.outcome;
    page.fill(
      outcome,
      o
        ? [
            h("p", {}, badge(o.status), ` at ${time(o.at_ms)}, attempt ${o.attempt ?? dash}, ran ${ms(o.duration_ms)}`),
            o.error_kind ? h("p", { class: "error" }, h("code", {}, o.error_kind), ` ${o.message || ""}`) : null,
            h("h3", {}, "Output"),
            json(o.output),
          ]
        : [h("p", { class: "muted" }, `No outcome yet (${t.status}).`), t.progress ? h("p", {}, `Progress: ${t.progress.percent ?? "?"}% ${t.progress.message || ""}`) : null],
    );
    const rows = t.timeline.map((e) =>
      h("tr", {}, h("td", {}, time(e.at_ms)), h("td", {}, h("code", {}, e.event)), h("td", { class: "num" }, e.attempt ?? dash), h("td", { class: "mono" }, e.agent_id || dash), h("td", {}, e.detail || dash)),
    );
    page.fill(timeline, table(["at", "event", "#attempt", "agent", "detail"], rows, "No events yet."));
  };
  page.every(refresh, 1000);
  // The live stream: progress and output chunks as the agent reports them, then the outcome.
  readEvents(`/v1/tasks/${encodeURIComponent(id)}/stream`, {
    signal: page.signal,
    endOn: "outcome",
    onState: (text) => (liveState.textContent = text),
    onEvent: (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        data = { text: event.data };
      }
      if (event.event === "chunk") live.append(data.text !== undefined ? data.text : JSON.stringify(data.json));
      else if (event.event === "progress") progress.replaceChildren(h("p", {}, `attempt ${data.attempt}: ${data.percent ?? "?"}% ${data.message || ""}`));
      else if (event.event === "outcome") {
        done = TERMINAL.has(data.status);
        drawTask(data);
      }
    },
  }).catch((error) => {
    if (error instanceof ApiError && error.status === 404) liveState.textContent = "no stream (the task is not known yet)";
    else liveState.replaceChildren(problem(error));
  });
}

function admin(page) {
  const state = h("div");
  const note = h("div", { class: "flash" });
  page.root.append(h("h1", {}, "Admin"), note, h("p", { class: "muted" }, "Operations on the projection this API serves (tenants listed in api.admin_tenants)."), state);
  const show = (r) =>
    page.fill(
      state,
      section(
        "Replay",
        h("p", {}, "Rebuilds the projection from the log into a new generation and swaps it in when caught up; the API keeps serving meanwhile."),
        h("dl", { class: "fields", id: "replay-state" }, Object.entries(r).map(([k, v]) => [h("dt", {}, k.replaceAll("_", " ")), h("dd", {}, k.endsWith("_at_ms") ? time(v) : String(v))])),
        h(
          "button",
          {
            type: "button",
            id: "replay",
            disabled: r.state === "running",
            onclick: async () => {
              try {
                show(await api("/v1/admin/replay", { method: "POST" }));
              } catch (error) {
                note.replaceChildren(problem(error));
              }
            },
          },
          "Start replay",
        ),
      ),
      section(
        "Snapshots",
        h("p", {}, "A RocksDB checkpoint of the projection with its offsets, in the snapshots directory under projection.dir (agentlog snapshot restore takes it)."),
        h(
          "button",
          {
            type: "button",
            id: "snapshot",
            onclick: async () => {
              try {
                const taken = await api("/v1/admin/snapshots", { method: "POST" });
                note.replaceChildren(h("p", { class: "ok", role: "status" }, "Snapshot taken: ", h("code", {}, taken.snapshot)));
              } catch (error) {
                note.replaceChildren(problem(error));
              }
            },
          },
          "Take snapshot",
        ),
      ),
    );
  page.every(async () => {
    try {
      show(await api("/v1/admin/replay", { signal: page.signal }));
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) {
        page.leave();
        page.fill(state, h("p", { class: "error", role: "alert", id: "admin-refused" }, `${error.message}. Admin pages are for admin tenants only.`));
        return;
      }
      throw error;
    }
  });
}

// ------------------------------------------------------------------------------- routing

const PAGES = { overview, lanes, agents, tasks, dlq, admin };
let current = null;

function render() {
  if (current) current.leave();
  const main = document.getElementById("main");
  main.replaceChildren();
  current = new Page(main);
  if (!session.tenant) {
    main.append(h("p", { class: "muted" }, "This agentlog needs an API key. ", h("button", { type: "button", onclick: () => askForKey() }, "Enter API key")));
    return;
  }
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  const params = new URLSearchParams(query || "");
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.page === (name === "task" ? "tasks" : name || "overview"));
  if (name === "task" && rest.length) task(current, decodeURIComponent(rest.join("/")));
  else (PAGES[name] || overview)(current, params);
  document.title = `agentlog · ${name || "overview"}`;
}

window.addEventListener("hashchange", render);

start().catch((error) => {
  if (error instanceof ApiError && error.status === 401) return; // the key dialog is open
  document.getElementById("main").replaceChildren(problem(error));
});
