// The sluiceway page: one WebSocket to the server that served it, speaking the protocol of
// docs/protocol.rst. Everything the server sends is rendered as text (textContent), never as
// markup: entity names, data and messages are untrusted.

const RECONNECT_FIRST = 500; // ms before the first reconnection attempt, doubling each time
const RECONNECT_MAX = 10000;
const REDRAW_EVERY = 300; // ms between redraws of what envelopes change
const TREE_EVERY = 2000; // ms between refreshes of the selected run's tree while it moves
const RUNS_EVERY = 5000; // ms between refreshes of the runs list
const GAUGES_EVERY = 2000; // ms between capacity snapshots
const LOG_KEEP = 500; // envelopes kept in the log
const PAGE_SIZE = 25;
// The log follows every entity of the selected run, sampled: at most one batch of envelopes
// every SAMPLE_EVERY seconds, its newest SAMPLE_KEEP; the server counts the others in the
// batch's "skipped" (the tree's counts, refreshed every two seconds, count everything). A run of
// 10,000 children would otherwise send each page every envelope of every child, which costs
// the server more than the run. "every envelope" asks for all of them, still in batches.
const SAMPLE_EVERY = 1;
const SAMPLE_KEEP = 25;
const EVERY_EVERY = 0.25;
const STATUSES = ["PENDING", "IN_PROGRESS", "WAITING", "COMPLETED", "FAILED", "CANCELLED"];

const $ = (id) => document.getElementById(id);

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function when(seconds) {
  if (typeof seconds !== "number") return "";
  return new Date(seconds * 1000).toLocaleString();
}

// -- the connection ---------------------------------------------------------------------------

class Connection {
  constructor(onEvent, onState) {
    this.token = new URLSearchParams(location.hash.slice(1)).get("token");
    this.url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
    this.onEvent = onEvent;
    this.onState = onState;
    this.nextId = 1;
    this.pending = new Map();
    this.delay = RECONNECT_FIRST;
    this.socket = null;
    this.connectedOnce = false;
    this.hello = null;
  }

  connect() {
    const protocols = ["sluiceway.v1"];
    if (this.token) protocols.push("bearer." + this.token);
    let socket;
    try {
      socket = new WebSocket(this.url, protocols);
    } catch (error) {
      this.onState("refused", `cannot connect: ${error.message}`);
      return;
    }
    this.socket = socket;
    let opened = false;
    socket.onopen = () => { opened = true; };
    socket.onmessage = (message) => this.receive(message.data);
    socket.onclose = (close) => {
      if (this.socket !== socket) return;
      this.socket = null;
      for (const { reject } of this.pending.values()) reject(new Error("connection lost"));
      this.pending.clear();
      const wait = this.delay;
      this.delay = Math.min(this.delay * 2, RECONNECT_MAX);
      const again = `trying again in ${(wait / 1000).toFixed(1)} s`;
      if (!opened) {
        // Refused at the handshake (a wrong token, another origin, a server stopping) or
        // not there at all: the browser does not say which.
        this.onState("refused", `the server refused the connection or is away (token?); ${again}`);
      } else {
        this.onState("reconnecting", `reconnecting: ${again} (code ${close.code})`);
      }
      setTimeout(() => this.connect(), wait);
    };
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.event === "hello") {
      this.hello = frame;
      this.delay = RECONNECT_FIRST;
      const state = this.connectedOnce ? "resumed" : "connected";
      this.connectedOnce = true;
      this.onState(state, state);
      this.onEvent(frame);
      return;
    }
    if (frame.event) {
      this.onEvent(frame);
      return;
    }
    const waiting = this.pending.get(frame.id);
    if (!waiting) return;
    this.pending.delete(frame.id);
    if (frame.ok) waiting.resolve(frame.result);
    else waiting.reject(Object.assign(new Error(frame.error.message), { code: frame.error.code }));
  }

  request(op, fields = {}) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN || !this.hello) {
      return Promise.reject(new Error("not connected"));
    }
    const id = this.nextId++;
    const frame = { v: 1, id, op, ...fields };
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket.send(JSON.stringify(frame));
    });
  }

  drop() {
    // For tests and for the "reconnect" button: close as a network failure would.
    if (this.socket) this.socket.close(4000, "dropped by the page");
  }
}

// -- what the page shows -----------------------------------------------------------------------

const view = {
  runsCursor: null, // the cursor of the page shown (null: the newest)
  runsNext: null,
  runs: [],
  selected: null, // the run whose tree and log are shown
  detail: null, // the entity whose details are shown
  subscription: null,
  lastSeq: 0, // the last seq received for the selected run (resume from it)
  received: [], // every seq received for the selected run, in order (tests read it)
  batches: [], // per envelopes event: [how many it held, how many it skipped] (tests read it)
  skipped: 0, // envelopes of the selected run left out of sampled batches
  duplicates: 0,
  envelopes: [],
  entities: new Map(), // id -> {name, type} seen in envelopes
  tree: null,
  expanded: new Set(),
  subtrees: new Map(), // id -> a tree node fetched on expanding it
  every: false, // whether every envelope is asked for, rather than a sample
  waitingPrompt: new Map(), // entity id -> the prompt of its latest WAITING envelope
  gauges: [],
  dirty: new Set(),
};

let conn;

function markDirty(...parts) {
  for (const part of parts) view.dirty.add(part);
}

function onState(state, text) {
  const badge = $("connection");
  badge.dataset.state = state;
  badge.textContent = text;
  if (state === "connected" || state === "resumed") refreshAll();
}

function onEvent(frame) {
  if (frame.event === "hello") {
    $("app").textContent = `${frame.app} · sluiceway ${frame.version}`;
    return;
  }
  if (frame.subscription !== view.subscription) return;
  if (frame.event === "envelopes") {
    const skipped = frame.skipped || 0;
    if (skipped) {
      view.skipped += skipped;
      keepInLog({ gap: skipped });
    }
    const before = view.received.length;
    for (const envelope of frame.envelopes) addEnvelope(envelope);
    view.batches.push([view.received.length - before, skipped]);
    markDirty("log", "seq");
    scheduleTree();
  } else if (frame.event === "end") {
    view.subscription = null;
    markDirty("seq");
    scheduleTree();
  }
}

function addEnvelope(envelope) {
  if (envelope.seq <= view.lastSeq) {
    view.duplicates += 1; // never expected: a resumed subscription starts after lastSeq
    return;
  }
  view.lastSeq = envelope.seq;
  view.received.push(envelope.seq);
  keepInLog(envelope);
  if (!view.entities.has(envelope.entity_id)) {
    view.entities.set(envelope.entity_id, { name: envelope.entity_name, type: envelope.entity_type });
    markDirty("entities");
  }
  if (envelope.type === "WAITING") view.waitingPrompt.set(envelope.entity_id, envelope.message || "");
  if (envelope.type === "MESSAGE") view.waitingPrompt.delete(envelope.entity_id);
}

// The log's entries: envelopes, and { gap: n } where a sampled batch left n out.
function keepInLog(entry) {
  view.envelopes.push(entry);
  if (view.envelopes.length > LOG_KEEP) view.envelopes.splice(0, view.envelopes.length - LOG_KEEP);
}

async function refreshAll() {
  loadRuns();
  loadGauges();
  if (view.selected) {
    await subscribe();
    loadTree();
    loadDetail();
  }
}

// -- runs ----------------------------------------------------------------------------------

function runFilters() {
  const fields = { limit: PAGE_SIZE };
  const status = $("filter-status").value;
  const type = $("filter-type").value.trim();
  const name = $("filter-name").value.trim();
  if (status) fields.status = status;
  if (type) fields.type = type;
  if (name) fields.name = name;
  if (view.runsCursor) fields.cursor = view.runsCursor;
  return fields;
}

async function loadRuns() {
  try {
    const result = await conn.request("list", runFilters());
    view.runs = result.runs;
    view.runsNext = result.cursor;
    markDirty("runs");
  } catch (error) {
    if (error.code) showResult(`list: ${error.message}`);
  }
}

function renderRuns() {
  const body = $("runs-table").tBodies[0];
  body.replaceChildren();
  for (const run of view.runs) {
    const row = element("tr", null, { "data-id": run.id });
    row.append(
      element("td", run.name),
      element("td", run.type),
      element("td", run.status, { class: "status", "data-status": run.status }),
      element("td", when(run.created_at)),
    );
    row.setAttribute("aria-selected", String(view.selected === run.id));
    row.addEventListener("click", () => select(run.id));
    body.append(row);
  }
  if (!view.runs.length) {
    const row = element("tr");
    row.append(element("td", "no run matches", { colspan: "4", class: "muted" }));
    body.append(row);
  }
  $("runs-next").disabled = !view.runsNext;
}

// -- the selected run -------------------------------------------------------------------------

async function select(id) {
  if (view.subscription !== null) {
    conn.request("unsubscribe", { subscription: view.subscription }).catch(() => {});
  }
  Object.assign(view, {
    selected: id, detail: id, subscription: null, lastSeq: 0, received: [], batches: [],
    skipped: 0, duplicates: 0, envelopes: [], tree: null,
  });
  view.entities.clear();
  view.expanded.clear();
  view.subtrees.clear();
  view.waitingPrompt.clear();
  markDirty("runs", "log", "entities", "tree", "seq");
  $("log-scope").textContent = scopeText();
  await subscribe();
  loadTree();
  loadDetail();
}

function scopeText() {
  return view.every
    ? "of every entity of the run, every one"
    : `of every entity of the run, at most ${SAMPLE_KEEP} every ${SAMPLE_EVERY} s`;
}

async function subscribe() {
  if (!view.selected) return;
  try {
    const result = await conn.request("subscribe", {
      entity_id: view.selected, after_seq: view.lastSeq, subtree: true,
      ...(view.every ? { interval: EVERY_EVERY } : { interval: SAMPLE_EVERY, keep: SAMPLE_KEEP }),
    });
    view.subscription = result.subscription;
  } catch (error) {
    if (error.code) showResult(`subscribe: ${error.message}`);
  }
}

// Every envelope, or a sample: the subscription is replaced, from the last seq received
// (nothing missed, nothing twice; what the old one still sends is ignored).
async function setEvery(every) {
  view.every = every;
  $("log-scope").textContent = scopeText();
  if (!view.selected) return;
  if (view.subscription !== null) {
    conn.request("unsubscribe", { subscription: view.subscription }).catch(() => {});
    view.subscription = null;
  }
  await subscribe();
}

let treeTimer = null;
function scheduleTree() {
  if (treeTimer !== null) return;
  treeTimer = setTimeout(() => {
    treeTimer = null;
    loadTree();
    if (view.detail) loadDetail();
  }, TREE_EVERY);
}

async function loadTree() {
  if (!view.selected) return;
  try {
    view.tree = await conn.request("tree", { entity_id: view.selected, depth: 1, max_children: 30 });
    // The runs list refreshes every few seconds: the selected run's row follows it at once.
    const row = view.runs.find((run) => run.id === view.tree.id);
    if (row && row.status !== view.tree.status) {
      row.status = view.tree.status;
      markDirty("runs");
    }
    for (const id of view.expanded) {
      view.subtrees.set(id, await conn.request("tree", { entity_id: id, depth: 1, max_children: 30 }));
    }
    markDirty("tree");
  } catch (error) {
    if (error.code) showResult(`tree: ${error.message}`);
  }
}

function renderTree() {
  const holder = $("tree");
  holder.replaceChildren();
  const tree = view.tree;
  $("run-title").textContent = tree ? `${tree.type} ${tree.name}` : "Select a run";
  if (!tree) return;
  const list = element("ul");
  list.append(renderNode(tree, true));
  holder.append(list);
}

function renderNode(node, isRoot) {
  const item = element("li");
  const line = element("div", null, { class: "node", "data-id": node.id });
  line.setAttribute("aria-selected", String(view.detail === node.id));
  const counts = node.children_by_status || {};
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  if (total && !isRoot) {
    const open = view.expanded.has(node.id);
    const toggle = element("button", open ? "−" : "+", { class: "expand", type: "button" });
    toggle.addEventListener("click", () => toggleNode(node.id));
    line.append(toggle);
  }
  const name = element("span", node.name, { class: "name" });
  name.addEventListener("click", () => showDetail(node.id));
  line.append(name, element("span", node.type, { class: "muted" }),
    element("span", node.status, { class: "status", "data-status": node.status }));
  if (total) {
    const bar = element("span", null, { class: "bar", title: countsText(counts) });
    for (const status of STATUSES) {
      if (!counts[status]) continue;
      const part = element("span", null, { "data-status": status });
      part.style.width = `${(100 * counts[status]) / total}%`;
      bar.append(part);
    }
    line.append(bar, element("span", countsText(counts), { class: "counts" }));
  }
  item.append(line);
  const children = isRoot ? node.children : (view.expanded.has(node.id) && view.subtrees.get(node.id)?.children);
  if (children && children.length) {
    const list = element("ul");
    for (const child of children) list.append(renderNode(child, false));
    const shown = isRoot ? node : view.subtrees.get(node.id);
    if (shown && shown.more) list.append(element("li", `… ${shown.more} more`, { class: "muted" }));
    item.append(list);
  }
  return item;
}

function countsText(counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const parts = STATUSES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`);
  return `${total} ${total === 1 ? "child" : "children"}: ${parts.join(", ")}`;
}

async function toggleNode(id) {
  if (view.expanded.has(id)) {
    view.expanded.delete(id);
    view.subtrees.delete(id);
  } else {
    view.expanded.add(id);
    try {
      view.subtrees.set(id, await conn.request("tree", { entity_id: id, depth: 1, max_children: 30 }));
    } catch (error) {
      if (error.code) showResult(`tree: ${error.message}`);
    }
  }
  markDirty("tree");
}

// -- details and actions -----------------------------------------------------------------------

async function showDetail(id) {
  view.detail = id;
  markDirty("tree");
  await loadDetail();
}

async function loadDetail() {
  if (!view.detail) return;
  try {
    const entity = await conn.request("get", { entity_id: view.detail });
    renderDetail(entity);
  } catch (error) {
    if (error.code) showResult(`get: ${error.message}`);
  }
}

function renderDetail(entity) {
  const fields = $("detail-fields");
  fields.replaceChildren();
  const rows = [
    ["name", entity.name], ["type", entity.type], ["status", entity.status],
    ["id", entity.id], ["attempt", entity.attempt], ["parked on", entity.parked_on || "—"],
    ["lease", entity.lease_owner ? `${entity.lease_owner} until ${when(entity.lease_expires)}` : "—"],
    ["created", when(entity.created_at)], ["modified", when(entity.modified_at)],
  ];
  for (const [name, value] of rows) fields.append(element("dt", name), element("dd", value));
  const shown = { data: entity.data, result: entity.result, error: entity.error };
  $("detail-json").textContent = JSON.stringify(shown, null, 2);
  // The actions the entity's status allows.
  $("actions").hidden = false;
  $("selected-name").textContent = `${entity.type} ${entity.name}`;
  const ended = ["COMPLETED", "FAILED", "CANCELLED"].includes(entity.status);
  $("action-cancel").disabled = ended;
  $("action-retry").disabled = entity.status !== "FAILED";
  const waiting = entity.status === "WAITING" && entity.parked_on !== "timer" && entity.parked_on !== "children";
  $("message-form").hidden = !waiting;
  view.detailEntity = entity;
  renderPrompt();
}

function renderPrompt() {
  // The prompt comes with the entity's WAITING envelope, which may arrive after its details.
  const entity = view.detailEntity;
  if (!entity || $("message-form").hidden) return;
  const prompt = view.waitingPrompt.get(entity.id);
  $("message-prompt").textContent = prompt ? `it asks: ${prompt}` : "it waits for a message";
}

function showResult(text) {
  $("action-result").textContent = text;
}

async function act(op, fields, done) {
  try {
    const result = await conn.request(op, fields);
    showResult(done(result));
    loadTree();
    loadDetail();
    loadRuns();
  } catch (error) {
    showResult(`${op}: ${error.message}`);
  }
}

// -- the log ----------------------------------------------------------------------------------

function renderLog() {
  const entity = $("log-entity").value;
  const type = $("log-type").value;
  const status = $("log-status").value.trim().toUpperCase();
  const list = $("log");
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.replaceChildren();
  for (const envelope of view.envelopes) {
    if (envelope.gap) {
      const text = `${envelope.gap} envelope${envelope.gap === 1 ? "" : "s"} not shown (sampled: the tree counts every entity)`;
      list.append(element("li", text, { class: "gap muted", "data-skipped": String(envelope.gap) }));
      continue;
    }
    if (entity && envelope.entity_id !== entity) continue;
    if (type && envelope.type !== type) continue;
    if (status && (envelope.status || "") !== status) continue;
    const item = element("li", null, { "data-type": envelope.type, "data-seq": String(envelope.seq) });
    const said = envelope.error ? `${envelope.error.type}: ${envelope.error.message}` : envelope.message || "";
    item.append(
      element("span", envelope.seq, { class: "muted" }),
      element("span", envelope.entity_name),
      element("span", envelope.status ? `${envelope.type} ${envelope.status}` : envelope.type),
      element("span", said),
    );
    list.append(item);
  }
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function renderEntities() {
  const select = $("log-entity");
  const chosen = select.value;
  select.replaceChildren(element("option", "every entity", { value: "" }));
  for (const [id, entity] of view.entities) {
    select.append(element("option", `${entity.name} (${entity.type})`, { value: id }));
  }
  select.value = view.entities.has(chosen) ? chosen : "";
}

// -- capacity ---------------------------------------------------------------------------------

async function loadGauges() {
  try {
    view.gauges = (await conn.request("capacity")).nodes;
    markDirty("gauges");
  } catch (error) {
    if (error.code) showResult(`capacity: ${error.message}`);
  }
}

function renderGauges() {
  const holder = $("gauges");
  holder.replaceChildren();
  if (!view.gauges.length) {
    holder.append(element("p", "no capacity node is shown", { class: "muted" }));
    return;
  }
  for (const node of view.gauges) {
    for (const [resource, limit] of Object.entries(node.limits)) {
      const used = node.in_use[resource] || 0;
      const gauge = element("div", null, { class: node.parent ? "gauge child" : "gauge", "data-name": node.name });
      const label = `${node.name}: ${used} / ${limit === null ? "∞" : limit} ${resource}` +
        (node.waiting_in_subtree ? `, ${node.waiting_in_subtree} waiting` : "");
      gauge.append(element("div", label));
      const meter = element("div", null, { class: "meter" });
      const fill = element("span");
      fill.style.width = limit ? `${Math.min(100, (100 * used) / limit)}%` : "0%";
      meter.append(fill);
      gauge.append(meter);
      holder.append(gauge);
    }
  }
}

// -- wiring -----------------------------------------------------------------------------------

function redraw() {
  const dirty = view.dirty;
  if (!dirty.size) return;
  view.dirty = new Set();
  if (dirty.has("runs")) renderRuns();
  if (dirty.has("tree")) renderTree();
  if (dirty.has("entities")) renderEntities();
  if (dirty.has("log")) {
    renderLog();
    renderPrompt();
  }
  if (dirty.has("gauges")) renderGauges();
  if (dirty.has("seq")) $("last-seq").textContent = String(view.lastSeq);
}

function start() {
  conn = new Connection(onEvent, onState);
  window.sluiceway = { view, connection: () => conn, select };
  const filtersChanged = () => { view.runsCursor = null; loadRuns(); };
  $("run-filters").addEventListener("input", filtersChanged);
  $("run-filters").addEventListener("submit", (event) => event.preventDefault());
  $("runs-first").addEventListener("click", () => { view.runsCursor = null; loadRuns(); });
  $("runs-next").addEventListener("click", () => {
    if (view.runsNext) { view.runsCursor = view.runsNext; loadRuns(); }
  });
  $("log-filters").addEventListener("input", () => markDirty("log"));
  $("log-every").addEventListener("change", (event) => setEvery(event.target.checked));
  $("log-filters").addEventListener("submit", (event) => event.preventDefault());
  $("action-cancel").addEventListener("click", () => {
    const entity = view.detailEntity;
    if (!entity || !confirm(`Cancel ${entity.type} ${entity.name} and what it runs?`)) return;
    act("cancel", { entity_id: entity.id }, (r) => `cancelled ${r.cancelled.length} entities`);
  });
  $("action-retry").addEventListener("click", () => {
    const entity = view.detailEntity;
    if (entity) act("retry", { entity_id: entity.id }, (r) => `retrying: ${r.state}`);
  });
  $("message-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const entity = view.detailEntity;
    if (!entity) return;
    const fields = { entity_id: entity.id, message: $("message-text").value };
    const data = $("message-data").value.trim();
    if (data) {
      try {
        fields.data = JSON.parse(data);
      } catch (error) {
        showResult(`the data is not JSON: ${error.message}`);
        return;
      }
    }
    act("send_message", fields, () => `sent "${fields.message}"`);
  });
  setInterval(redraw, REDRAW_EVERY);
  setInterval(() => { if (conn.hello && !document.hidden) loadRuns(); }, RUNS_EVERY);
  setInterval(() => { if (conn.hello && !document.hidden) loadGauges(); }, GAUGES_EVERY);
  conn.connect();
}

start();
