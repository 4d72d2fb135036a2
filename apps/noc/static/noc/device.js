// The NOC device page (apps/noc/templates/noc/device.html): charts of the device's stored
// readings (uPlot), a guard's positions and the tenant's geofences (Leaflet), its alerts and
// commands, all read from the REST API with the operator's session. Commands are polled every
// 2 s while one of them has not reached an end state.
"use strict";
// Leaflet reads a string tooltip as HTML: a name an administrator typed goes in as text.
function plain(text) { const span = document.createElement("span"); span.textContent = text; return span; }
const config = JSON.parse(document.getElementById("device-config").textContent);
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "EXPIRED", "CANCELLED"]);
const COLOURS = ["#38bdf8", "#4ade80", "#fbbf24", "#f472b6"];
const MAX_READINGS = 1000; // the API's cap on one page: the newest this many of the window
// What each kind of reading charts: [label, field].
const CHARTS = {
  telemetry: [["battery %", "battery"], ["signal", "signal"], ["temperature °C", "temperature"]],
  system_health: [["cpu %", "cpu"], ["memory %", "memory"], ["disk %", "disk"]],
};

async function api(url, options = {}) {
  const headers = {Accept: "application/json"};
  if (options.body) Object.assign(headers, {"Content-Type": "application/json", "X-CSRFToken": config.csrfToken});
  const response = await fetch(url, {credentials: "same-origin", ...options, headers});
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const reasons = body.detail ? [body.detail] : Object.entries(body).map(([k, v]) => `${k}: ${[].concat(v).join(" ")}`);
    throw new Error(reasons.join("; ") || `HTTP ${response.status}`);
  }
  return body;
}
function cell(text) { const td = document.createElement("td"); td.textContent = text ?? ""; return td; }
function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }
function sinceHours(hours) { return new Date(Date.now() - hours * 3600e3).toISOString(); }

// The newest MAX_READINGS readings of a kind in the window, oldest first.
async function readings(kind, hours) {
  const query = new URLSearchParams({kind, since: sinceHours(hours), limit: MAX_READINGS});
  const page = await api(`${config.api.readings}?${query}`);
  return {rows: page.results.reverse(), truncated: page.next !== null};
}

function drawChart(title, kind, rows, series, truncated) {
  const box = document.createElement("div");
  box.className = "chart"; box.dataset.kind = kind; box.dataset.points = rows.length;
  const heading = document.createElement("h3");
  heading.textContent = title + (truncated ? ` (the latest ${MAX_READINGS})` : "");
  box.append(heading); document.getElementById("charts").append(box);
  const shown = series.filter(([, field]) => rows.some(r => r[field] !== null));
  const data = [rows.map(r => Date.parse(r.recorded_at) / 1000), ...shown.map(([, field]) => rows.map(r => r[field]))];
  const axis = {stroke: "#94a3b8", grid: {stroke: "#334155"}, ticks: {stroke: "#334155"}};
  new uPlot({
    width: Math.max(320, box.clientWidth), height: 200,
    series: [{}, ...shown.map(([label], i) => ({label, stroke: COLOURS[i % COLOURS.length], width: 1.5, spanGaps: true}))],
    axes: [axis, axis],
  }, data, box);
}

async function drawCharts(hours) {
  const charts = document.getElementById("charts"); charts.replaceChildren();
  const [telemetry, health, sensors] = await Promise.all(
    ["telemetry", "system_health", "sensor"].map(kind => readings(kind, hours)));
  if (telemetry.rows.length) drawChart("Telemetry", "telemetry", telemetry.rows, CHARTS.telemetry, telemetry.truncated);
  if (health.rows.length) drawChart("System health", "system_health", health.rows, CHARTS.system_health, health.truncated);
  const byType = new Map();
  for (const row of sensors.rows) byType.set(row.sensor_type, [...(byType.get(row.sensor_type) || []), row]);
  for (const [type, rows] of byType) {
    if (rows.some(r => r.value !== null)) drawChart(`Sensor · ${type}`, `sensor:${type}`, rows, [[type, "value"]], sensors.truncated);
  }
  document.getElementById("charts-empty").hidden = charts.children.length > 0;
}

let map = null;
async function drawMap(hours) {
  const [positions, fences] = await Promise.all([
    readings("gps", hours), api(`${config.api.geofences}?active=true&limit=1000`)]);
  const element = document.getElementById("map");
  if (map) map.remove();
  // No tile server set: no tiles, so the page loads nothing from another host.
  map = L.map(element, {attributionControl: Boolean(config.tileUrl)});
  const shapes = [], bounds = L.latLngBounds([]);
  for (const fence of fences.results) {
    const style = {color: "#a78bfa", weight: 2, fillOpacity: 0.12, className: "geofence"};
    if (fence.shape === "circle") {
      const centre = L.latLng(fence.center_lat, fence.center_lon);
      shapes.push(L.circle(centre, {...style, radius: fence.radius_m}));
      bounds.extend(centre.toBounds(2 * fence.radius_m));
    } else {
      shapes.push(L.polygon(fence.polygon, style)); bounds.extend(fence.polygon);
    }
    shapes.at(-1).bindTooltip(plain(fence.name));  // a string would be read as HTML
  }
  const points = positions.rows.map(r => [r.lat, r.lon]);
  if (points.length > 1) shapes.push(L.polyline(points, {color: "#38bdf8", weight: 1.5, className: "track"}));
  positions.rows.forEach((row, i) => {
    const last = i === points.length - 1, outside = row.inside_geofence === false;
    shapes.push(L.circleMarker([row.lat, row.lon], {
      radius: last ? 7 : 4, weight: 1, color: "#0f172a", fillOpacity: 1,
      fillColor: outside ? "#f87171" : (last ? "#fbbf24" : "#38bdf8"), className: "position",
    }).bindTooltip(plain(`${when(row.recorded_at)}${outside ? " · outside" : ""}`)));
    bounds.extend([row.lat, row.lon]);
  });
  if (bounds.isValid()) map.fitBounds(bounds, {padding: [24, 24], maxZoom: 18}); else map.setView([0, 0], 2);
  if (config.tileUrl) L.tileLayer(config.tileUrl, {attribution: config.tileAttribution, maxZoom: 19}).addTo(map);
  shapes.forEach(shape => shape.addTo(map));
  element.dataset.positions = positions.rows.length; element.dataset.geofences = fences.results.length;
}

async function showAlerts() {
  const query = new URLSearchParams({device: config.deviceId, limit: 20});
  const page = await api(`${config.api.alerts}?${query}`);
  const body = document.querySelector("#device-alerts tbody"); body.replaceChildren();
  for (const a of page.results) {
    const tr = document.createElement("tr"); tr.className = `sev-${a.severity}`; tr.dataset.alertId = a.id;
    tr.append(cell(a.severity), cell(a.alert_type), cell(a.status), cell(a.count), cell(when(a.last_seen)), cell(a.message));
    body.append(tr);
  }
}

let commandTimer = null;
async function showCommands() {
  clearTimeout(commandTimer);
  const page = await api(`${config.api.commands}?limit=20`);
  const body = document.querySelector("#device-commands tbody"); body.replaceChildren();
  for (const c of page.results) {
    const tr = document.createElement("tr"); tr.dataset.commandId = c.command_id;
    const state = cell(c.status); state.className = `cmd-${c.status}`;
    tr.append(cell(c.command), state, cell(c.created_by), cell(when(c.updated_at)), cell(c.result_detail));
    body.append(tr);
  }
  if (page.results.some(c => !TERMINAL.has(c.status))) commandTimer = setTimeout(showCommands, 2000);
}

const form = document.getElementById("command-form");
if (form) form.addEventListener("submit", async event => {
  event.preventDefault();
  const result = document.getElementById("command-result");
  try {
    const raw = document.getElementById("command-params").value.trim();
    const params = raw ? JSON.parse(raw) : {};
    const command = document.getElementById("command-name").value.trim();
    await api(config.api.commands, {method: "POST", body: JSON.stringify({command, params})});
    result.textContent = "queued";
  } catch (error) {
    result.textContent = error.message;
  }
  await showCommands();
});

async function load() {
  const hours = Number(document.getElementById("window").value);
  const parts = [drawCharts(hours), showAlerts(), showCommands()];
  if (config.isGuard) parts.push(drawMap(hours));
  const outcomes = await Promise.allSettled(parts);
  outcomes.filter(o => o.status === "rejected").forEach(o => console.error(o.reason));
  document.body.dataset.loaded = outcomes.every(o => o.status === "fulfilled") ? "true" : "failed";
}
document.getElementById("window").addEventListener("change", () => { delete document.body.dataset.loaded; load(); });
load();
