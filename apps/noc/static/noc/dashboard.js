// The NOC dashboard: a live alert console fed by /ws/noc/dashboard/ (apps/noc/consumers.py),
// closed alerts and every alert's history read from /api/alerts/, actions posted to it.
// A classic script on purpose: its globals (socket, alerts, devices, ack) are what the browser
// tests look at (tests/noc/test_dashboard_browser.py).
"use strict";
const BODY = document.body;
const CAN_ACT = BODY.dataset.canAct === "true", CAN_COMMAND = BODY.dataset.canCommand === "true";
const VOCABULARY = JSON.parse(document.getElementById("noc-vocabulary").textContent);
const ACTIVE = new Set(VOCABULARY.active_statuses);
const SEVERITY_RANK = Object.fromEntries(VOCABULARY.severities.map((s, i) => [s, i]));
// Within a severity: not yet handled first, then being handled; each the oldest first.
const STATUS_RANK = {RECEIVED: 0, NEW: 0, ACKNOWLEDGED: 1, IN_PROGRESS: 2};
const PAGE_SIZE = 25;
const CSRF = document.querySelector("input[name=csrfmiddlewaretoken]").value;
const alerts = new Map(), devices = new Map(), commands = new Map();
const rateWindow = []; let received = 0; let socket = null; let retry = 0;
// Flow control: acknowledge what was handled every 2 s, and at once after each 256 KiB read (the
// server cuts off, with 4408, a client that leaves more than NOC_MAX_UNACKED_BYTES, 4 MiB by
// default, unacknowledged: a burst can bring that in under 2 s). Acks count against
// NOC_MAX_MESSAGES_PER_MINUTE: one per 256 KiB stays under it below about 400 KiB/s.
const ACK_EVERY_CHARS = 262144;
let lastSeq = 0, ackedSeq = 0, ackedAt = 0, unackedChars = 0;
function ack(now) {
  const due = now || unackedChars >= ACK_EVERY_CHARS || Date.now() - ackedAt >= 2000;
  if (lastSeq > ackedSeq && socket && socket.readyState === 1 && due) {
    socket.send(JSON.stringify({type: "ack", seq: lastSeq}));
    ackedSeq = lastSeq; ackedAt = Date.now(); unackedChars = 0;
  }
}

// --- small helpers ----------------------------------------------------------------------------
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value); else node[key] = value;
  }
  node.append(...children.filter(c => c != null));
  return node;
}
function cell(text, label) {
  const td = el("td", {textContent: text ?? ""});
  if (label) td.dataset.label = label;
  return td;
}
function deviceLink(deviceId) {
  return el("a", {href: `/noc/devices/${encodeURIComponent(deviceId)}/`, textContent: deviceId,
                  onclick: (event) => event.stopPropagation()});
}
// Today: the time only; another day: its date too.
function when(iso) {
  if (!iso) return "never";
  const date = new Date(iso);
  return date.toDateString() === new Date().toDateString() ? date.toLocaleTimeString() : date.toLocaleString();
}
function say(text) { document.getElementById("action-result").textContent = text; }
async function api(path, body) {
  const options = {credentials: "same-origin", headers: {Accept: "application/json"}};
  if (body !== undefined) {  // a write: the session's CSRF token, as DRF's SessionAuthentication wants
    Object.assign(options, {method: "POST", body: JSON.stringify(body)});
    Object.assign(options.headers, {"Content-Type": "application/json", "X-CSRFToken": CSRF});
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) { location.href = BODY.dataset.loginUrl; }
  if (!response.ok) throw new Error(data.detail || Object.values(data).flat().join(" ") || response.statusText);
  return data;
}

// --- the alarm: a beep and a desktop notification for each new critical alert ---------------
// Keyed by device and type, so the provisional announcement and the stored alert that follows it
// ring once; the snapshot at page load rings nothing, a reconnect's rings what is new in it.
let alarmed = new Set(), audio = null, muted = localStorage.getItem("noc.muted") === "1";
function alarmKey(a) { return `${a.source_id}:${a.alert_type}`; }
function ringsAlarm(a) { return a.severity === "CRITICAL" && (a.provisional || a.status === "NEW"); }
function noteAlarm(a, announce) {
  const key = alarmKey(a);
  if (!a.provisional && !ACTIVE.has(a.status)) { alarmed.delete(key); return; }
  if (a.severity !== "CRITICAL" || alarmed.has(key)) return;
  alarmed.add(key);
  if (announce && ringsAlarm(a)) soundAlarm(a);
}
function soundAlarm(a) {
  BODY.dataset.alarms = Number(BODY.dataset.alarms) + 1;  // what tests read: no audio hardware there
  if (!muted) beep();
  if ("Notification" in window && Notification.permission === "granted") {
    try {
      new Notification(`CRITICAL ${a.alert_type} · ${a.source_id}`, {body: a.message || a.site || "", tag: alarmKey(a)});
      BODY.dataset.notifications = Number(BODY.dataset.notifications) + 1;
    } catch (error) { console.warn("NOC: notification refused", error); }
  }
}
function beep() {
  try {
    audio = audio || new AudioContext();
    if (audio.state === "suspended") audio.resume();
    const oscillator = audio.createOscillator(), gain = audio.createGain(), start = audio.currentTime;
    oscillator.type = "square"; oscillator.frequency.value = 880;
    for (let pulse = 0; pulse < 3; pulse++) {  // three short pulses
      gain.gain.setValueAtTime(0.15, start + pulse * 0.3);
      gain.gain.setValueAtTime(0, start + pulse * 0.3 + 0.15);
    }
    oscillator.connect(gain).connect(audio.destination);
    oscillator.start(start); oscillator.stop(start + 0.9);
  } catch (error) { console.warn("NOC: no sound", error); }
}
function showMute() {
  const button = document.getElementById("mute");
  button.textContent = muted ? "Muted" : "Sound on"; button.setAttribute("aria-pressed", String(muted));
}
document.getElementById("mute").onclick = () => {
  muted = !muted; localStorage.setItem("noc.muted", muted ? "1" : "0"); showMute();
};
// Browsers let a page start sound, and ask to notify, only after the user touched it.
document.addEventListener("click", () => {
  if (!audio) { try { audio = new AudioContext(); } catch (error) { /* no audio here */ } }
  if ("Notification" in window && Notification.permission === "default") Notification.requestPermission();
}, {once: true});
showMute();

// --- the alert console: active alerts live, closed ones from the REST API --------------------
let view = "active", pageIndex = 0, closedPage = {count: 0, results: []}, openAlertId = null;
const selected = new Set();
function filterValues() {
  const value = id => document.getElementById(id).value.trim();
  return {severity: value("filter-severity"), alert_type: value("filter-type"), status: value("filter-status"),
          site: value("filter-site"), device: value("filter-device"), search: value("filter-search").toLowerCase()};
}
function matches(a, f) {
  return (!f.severity || a.severity === f.severity) && (!f.alert_type || a.alert_type === f.alert_type)
    && (!f.status || a.status === f.status) && (!f.site || a.site === f.site)
    && (!f.device || a.source_id === f.device)
    && (!f.search || [a.message, a.source_id, a.site].some(t => (t || "").toLowerCase().includes(f.search)));
}
function byUrgency(a, b) {
  return (SEVERITY_RANK[a.severity] ?? 9) - (SEVERITY_RANK[b.severity] ?? 9)
    || (STATUS_RANK[a.status] ?? 0) - (STATUS_RANK[b.status] ?? 0)
    || (a.first_seen || "").localeCompare(b.first_seen || "");
}
function shownAlerts() {
  if (view === "closed") return {rows: closedPage.results, total: closedPage.count};
  const f = filterValues();
  const all = [...alerts.values()].filter(a => (a.provisional || ACTIVE.has(a.status)) && matches(a, f)).sort(byUrgency);
  pageIndex = Math.min(pageIndex, Math.max(0, Math.ceil(all.length / PAGE_SIZE) - 1));
  return {rows: all.slice(pageIndex * PAGE_SIZE, (pageIndex + 1) * PAGE_SIZE), total: all.length};
}
function renderAlerts() {
  const body = document.querySelector("#alerts tbody"); body.replaceChildren();
  const {rows, total} = shownAlerts();
  for (const a of rows) {
    const tr = el("tr", {className: "sev-" + a.severity});
    if (a.id != null) { tr.dataset.alertId = a.id; tr.onclick = () => openPanel(a.id); }
    if (a.id != null && a.id === openAlertId) tr.classList.add("selected-alert");
    const pick = el("td", {className: "pick"});
    if (CAN_ACT && view === "active" && a.id != null) {
      pick.append(el("input", {type: "checkbox", className: "select", checked: selected.has(a.id),
        ariaLabel: `select alert ${a.id}`, onclick: (event) => event.stopPropagation(),
        onchange: (event) => { event.target.checked ? selected.add(a.id) : selected.delete(a.id); showSelection(); }}));
    }
    const source = el("td", {}, deviceLink(a.source_id)); source.dataset.label = "Device";
    const message = cell(a.message, ""); message.className = "message";
    tr.append(pick, cell(a.severity), cell(a.alert_type), source, cell(a.site, "Site"), cell(statusText(a), "Status"),
              cell(a.count, "×"), cell(when(a.first_seen), "First"), cell(when(a.last_seen), "Last"), message);
    const actions = el("td", {className: "actions"});
    if (CAN_ACT && a.id != null) actions.append(...actionButtons(a, () => "").slice(0, 1));  // its next step
    if (a.id != null) actions.append(el("button", {type: "button", className: "details", textContent: "Details…",
                                                   onclick: (event) => { event.stopPropagation(); openPanel(a.id); }}));
    tr.append(actions); body.append(tr);
  }
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
  document.getElementById("page-info").textContent = `page ${pageIndex + 1} of ${pages} · ${total} ${view}`;
  document.getElementById("page-prev").disabled = pageIndex === 0;
  document.getElementById("page-next").disabled = pageIndex + 1 >= pages;
  showSelection();
}
// A provisional critical_alert (no id yet: announced as the bus took it in) is shown at once and
// replaced by the stored alert's event; one that came after its stored alert is not shown.
function showAlert(a) {
  const pending = `received:${a.source_id}:${a.alert_type}`;
  if (a.provisional) {
    const stored = [...alerts.values()].some(x => !x.provisional && x.source_id === a.source_id
      && x.alert_type === a.alert_type && ACTIVE.has(x.status));
    if (!stored) alerts.set(pending, {...a, severity: String(a.severity).toUpperCase(), shownAt: Date.now()});
  } else {
    alerts.delete(pending); alerts.set(a.id, a);
    if (!ACTIVE.has(a.status)) selected.delete(a.id);
  }
  noteAlarm(alerts.get(a.provisional ? pending : a.id) || a, true);
  renderAlerts();
  if (a.id != null && a.id === openAlertId) openPanel(a.id);  // its history grew
  if (view === "closed" && !ACTIVE.has(a.status) && !a.provisional) loadClosed();
}
function statusText(a) {
  if (!a.provisional) return a.status;
  return Date.now() - a.shownAt > 30000 ? "RECEIVED, not stored yet: see dead letters" : "RECEIVED";
}
// The buttons of the moves this alert's status allows; `note` reads the note to send.
function actionButtons(a, note) {
  const allowed = new Set(VOCABULARY.allowed[a.status] || []);
  return VOCABULARY.actions.filter(x => allowed.has(x.to)).map(x => el("button", {
    type: "button", className: `${x.action}_alert`, textContent: x.label,
    onclick: (event) => { event.stopPropagation(); act([a.id], x.action, note()); },
  }));
}
async function act(ids, action, note) {
  say("");
  const failures = [];
  for (const id of ids) {  // one at a time: a bulk acknowledge is a few dozen small requests
    try {
      const moved = await api(`/api/alerts/${id}/${action}/`, {note});
      showAlert(moved);  // the broadcast will say so too; this page need not wait for it
    } catch (error) { failures.push(`alert ${id}: ${error.message}`); }
  }
  if (failures.length) say(failures.join("; "));
  if (ids.includes(openAlertId)) { document.getElementById("alert-note") && (document.getElementById("alert-note").value = ""); openPanel(openAlertId); }
}
function showSelection() {
  if (!CAN_ACT) return;
  for (const id of [...selected]) if (!ACTIVE.has(alerts.get(id)?.status)) selected.delete(id);
  document.getElementById("selected-count").textContent = selected.size;
  document.getElementById("bulk-acknowledge").disabled = selected.size === 0;
  const boxes = [...document.querySelectorAll("#alerts input.select")];
  document.getElementById("select-page").checked = boxes.length > 0 && boxes.every(b => b.checked);
}
if (CAN_ACT) {
  document.getElementById("select-page").onchange = (event) => {
    for (const row of document.querySelectorAll("#alerts tbody tr[data-alert-id]")) {
      const id = Number(row.dataset.alertId);
      event.target.checked ? selected.add(id) : selected.delete(id);
    }
    renderAlerts();
  };
  document.getElementById("bulk-acknowledge").onclick = async () => {
    const ids = [...selected].filter(id => alerts.get(id)?.status === "NEW");
    const note = document.getElementById("bulk-note").value.trim();
    selected.clear(); document.getElementById("bulk-note").value = "";
    await act(ids, "acknowledge", note);
    renderAlerts();
  };
}

// The side panel: one alert, its actions with a note, and its history (from the REST detail).
async function openPanel(id) {
  openAlertId = id;
  let a;
  try { a = await api(`/api/alerts/${id}/`); } catch (error) { say(`alert ${id}: ${error.message}`); return; }
  if (openAlertId !== id) return;  // another was opened meanwhile
  const panel = document.getElementById("alert-panel");
  panel.dataset.alertId = id; panel.hidden = false;
  document.getElementById("panel-title").textContent = `${a.severity} ${a.alert_type} · ${a.source_id}`;
  const facts = [["Status", a.status], ["Device", deviceLink(a.source_id)], ["Site", a.site], ["Message", a.message],
                 ["Count", a.count], ["First seen", when(a.first_seen)], ["Last seen", when(a.last_seen)],
                 ["Closed", a.resolved_at ? when(a.resolved_at) : null]];
  document.getElementById("panel-facts").replaceChildren(...facts.filter(([, v]) => v != null && v !== "")
    .flatMap(([k, v]) => [el("dt", {textContent: k}), el("dd", {}, v)]));
  if (CAN_ACT) {
    const note = () => document.getElementById("alert-note").value.trim();
    document.getElementById("panel-actions").replaceChildren(...actionButtons(a, note));
  }
  const history = a.history.map(step => el("li", {},
    el("strong", {textContent: `${step.from_status} → ${step.to_status}`}),
    ` by ${step.by || "the system"} at `, el("time", {dateTime: step.at, textContent: when(step.at)}),
    step.note ? el("div", {className: "note", textContent: step.note}) : null));
  document.getElementById("alert-history").replaceChildren(...(history.length ? history : [el("li", {textContent: "No changes yet."})]));
  renderAlerts();
}
document.getElementById("panel-close").onclick = () => {
  openAlertId = null; document.getElementById("alert-panel").hidden = true; renderAlerts();
};

// Closed alerts: server-side filters, search and paging (/api/alerts/?active=false).
async function loadClosed() {
  const f = filterValues(), query = new URLSearchParams({active: "false", limit: PAGE_SIZE, offset: pageIndex * PAGE_SIZE});
  for (const [key, value] of Object.entries(f)) if (value) query.set(key, value);
  try { closedPage = await api(`/api/alerts/?${query}`); } catch (error) { say(`closed alerts: ${error.message}`); return; }
  if (view === "closed") renderAlerts();
}
function setView(name) {
  view = name; pageIndex = 0; selected.clear();
  document.getElementById("view-active").setAttribute("aria-pressed", String(name === "active"));
  document.getElementById("view-closed").setAttribute("aria-pressed", String(name === "closed"));
  BODY.dataset.view = name;
  if (name === "closed") { closedPage = {count: 0, results: []}; loadClosed(); }
  renderAlerts();
}
document.getElementById("view-active").onclick = () => setView("active");
document.getElementById("view-closed").onclick = () => setView("closed");
let filterTimer = null;
function filtersChanged() {
  pageIndex = 0;
  if (view === "closed") { clearTimeout(filterTimer); filterTimer = setTimeout(loadClosed, 250); } else renderAlerts();
}
document.getElementById("alert-filters").addEventListener("input", filtersChanged);
document.getElementById("alert-filters").addEventListener("submit", (event) => event.preventDefault());
function turnPage(step) { pageIndex = Math.max(0, pageIndex + step); view === "closed" ? loadClosed() : renderAlerts(); }
document.getElementById("page-prev").onclick = () => turnPage(-1);
document.getElementById("page-next").onclick = () => turnPage(1);

// --- devices and commands ----------------------------------------------------------------------
const naturally = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
const DEVICE_PANEL_ROWS = 100;
function renderDevices() {
  const body = document.querySelector("#devices tbody"); body.replaceChildren();
  // Natural order (burst-2 before burst-10), as /noc/devices/ lists them; the panel shows the
  // first DEVICE_PANEL_ROWS and links to that list for the rest.
  const sorted = [...devices.values()].sort((a, b) => naturally.compare(a.device_id, b.device_id));
  document.getElementById("devices-more").textContent =
    sorted.length > DEVICE_PANEL_ROWS ? `All ${sorted.length} devices →` : "All devices →";
  for (const d of sorted.slice(0, DEVICE_PANEL_ROWS)) {
    const tr = document.createElement("tr");
    const status = cell(d.status); status.className = "status-" + d.status;
    tr.append(el("td", {}, deviceLink(d.device_id)), cell(d.site), status,
              cell(d.battery == null ? "" : d.battery + " %"), cell(when(d.last_seen)));
    const actions = document.createElement("td");
    if (CAN_COMMAND) {  // fills the command form: typing there survives the table's re-renders
      const b = el("button", {textContent: "Command", className: "command_device"});
      b.onclick = () => { document.getElementById("command-device").value = d.device_id; document.getElementById("command-name").focus(); };
      actions.append(b);
    }
    tr.append(actions); body.append(tr);
  }
  const options = values => [...new Set(values)].filter(Boolean).sort().map(value => el("option", {value}));
  document.getElementById("known-devices").replaceChildren(...options(sorted.map(d => d.device_id)));
  document.getElementById("known-sites").replaceChildren(...options(sorted.map(d => d.site)));
}
function renderCommands() {
  const body = document.querySelector("#commands tbody"); body.replaceChildren();
  const rows = [...commands.values()].sort((a, b) => b.created_at.localeCompare(a.created_at)).slice(0, 50);
  for (const c of rows) {
    const tr = document.createElement("tr"); tr.dataset.commandId = c.command_id;
    const status = cell(c.status); status.className = "cmd-" + c.status;
    tr.append(cell(c.device_id), cell(c.command), status, cell(when(c.updated_at)), cell(c.result_detail));
    const actions = document.createElement("td");
    if (CAN_COMMAND && c.status === "QUEUED") {
      const b = el("button", {textContent: "Cancel", className: "cancel_command"});
      b.onclick = () => socket && socket.send(JSON.stringify({type: "cancel_command", command_id: c.command_id}));
      actions.append(b);
    }
    tr.append(actions); body.append(tr);
  }
}
function sendCommand(event) {
  event.preventDefault();
  const result = document.getElementById("command-result"), raw = document.getElementById("command-params").value.trim();
  let params = {};
  try { if (raw) params = JSON.parse(raw); } catch (e) { result.textContent = "params: not JSON"; return; }
  const message = {type: "send_command", device_id: document.getElementById("command-device").value.trim(),
                   command: document.getElementById("command-name").value.trim(), params};
  if (socket && socket.readyState === 1) { socket.send(JSON.stringify(message)); result.textContent = "sending…"; }
}
if (CAN_COMMAND) document.getElementById("command-form").addEventListener("submit", sendCommand);

// --- the stream --------------------------------------------------------------------------------
let everConnected = false;
function setState(state) {
  const node = document.getElementById("connection"); node.textContent = state; node.className = "state-" + state;
  document.getElementById("banner").hidden = state === "open" || !everConnected;
}
// A snapshot replaces the active alerts: on a reconnect it brings what the page missed while
// the socket was down (alerts raised, alerts closed), and rings for the new critical ones.
function takeSnapshot(msg) {
  const first = !everConnected;
  alerts.clear(); devices.clear();
  msg.alerts.forEach(a => alerts.set(a.id, a)); msg.devices.forEach(d => devices.set(d.device_id, d));
  const before = alarmed; alarmed = new Set();
  for (const a of msg.alerts) {
    if (a.severity !== "CRITICAL") continue;
    if (!first && !before.has(alarmKey(a)) && ringsAlarm(a)) soundAlarm(a);
    alarmed.add(alarmKey(a));
  }
  everConnected = true;
  renderAlerts(); renderDevices();
  if (view === "closed") loadClosed();
  if (openAlertId != null) openPanel(openAlertId);
}
function connect() {
  setState("connecting");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws/noc/dashboard/`);
  lastSeq = ackedSeq = unackedChars = 0;  // each connection numbers its messages from 1
  socket.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    unackedChars += event.data.length;
    received += msg.type === "telemetry_update" ? (msg.messages || 1) : 1;
    switch (msg.type) {
      case "connected": retry = 0; break;
      case "snapshot": takeSnapshot(msg); setState("open"); break;
      // anomaly_detected is an ANOMALY alert plus its score, threshold and model version.
      case "critical_alert": case "alert_updated": case "anomaly_detected": showAlert(msg); break;
      case "task_progress": if (msg.task) document.getElementById("training").textContent =
        `${msg.device_kind} model ${msg.done}/${msg.total} ${msg.stage}: ${msg.message}`; break;
      case "device_status": msg.devices.forEach(d => devices.set(d.device_id, d)); renderDevices(); break;
      case "telemetry_update": msg.devices.forEach(d => devices.set(d.device_id, {...devices.get(d.device_id), ...d})); renderDevices(); break;
      case "command_updated": {  // two processes may announce changes close together: keep the latest
        const known = commands.get(msg.command_id);
        if (!known || known.updated_at <= msg.updated_at) { commands.set(msg.command_id, msg); renderCommands(); }
        break;
      }
      case "action_done":
        if (msg.action === "send_command") document.getElementById("command-result").textContent = "queued";
        break;
      case "error":
        console.warn("NOC:", msg.error);
        if (msg.action === "send_command") document.getElementById("command-result").textContent = msg.error;
        break;
    }
    if (msg.seq) { lastSeq = msg.seq; ack(false); }
  };
  socket.onclose = (event) => {
    setState("closed");
    if (event.code === 4401 || event.code === 4403) { location.href = BODY.dataset.loginUrl; return; }
    const delay = Math.min(10000, 500 * 2 ** retry++) * (0.5 + Math.random() / 2);
    setTimeout(connect, delay);
  };
}
setInterval(() => {
  if ([...alerts.values()].some(a => a.provisional)) renderAlerts();  // "not stored yet" after 30 s
  rateWindow.push(received); received = 0; if (rateWindow.length > 60) rateWindow.shift();
  document.getElementById("rate").textContent = rateWindow[rateWindow.length - 1];
  const canvas = document.getElementById("chart"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const max = Math.max(1, ...rateWindow), step = canvas.width / 60;
  ctx.strokeStyle = "#38bdf8"; ctx.beginPath();
  rateWindow.forEach((v, i) => ctx.lineTo(i * step, canvas.height - (v / max) * (canvas.height - 4)));
  ctx.stroke();
}, 1000);
setInterval(() => { ack(true); socket && socket.readyState === 1 && socket.send('{"type":"heartbeat"}'); }, 30000);
connect();
