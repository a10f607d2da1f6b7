// The clinician dashboard: sign-in, the patient list with live status, and one patient's live view.

import { AlertBoard } from "/static/alerts.js";
import { BpChart } from "/static/bp-chart.js";
import { AudioCall } from "/static/call.js";
import { $, clock, el, fmt, humanize } from "/static/dom.js";
import { Live } from "/static/live.js";
import { invitationToken, OrgPanel } from "/static/org.js";
import { Session } from "/static/session.js";
import { WaveStrip } from "/static/strip.js";

const DISPLAY_RATE = 125;
const OVERVIEW_EVERY_MS = 10_000;
const MAX_LIST_ITEMS = 50;

const session = new Session();
const strips = {
  ecg: new WaveStrip($("ecg"), { label: "ECG II", color: "#3ddc84", units: "mV" }),
  ppg: new WaveStrip($("ppg"), { label: "PPG", color: "#4cc3ff", units: "a.u." }),
};
const bpChart = new BpChart($("bp-chart"));
// Counters the browser tests and the bench read.
const stats = (window.__dashboard = { draws: 0, frames: 0, analyses: 0, drawing: false, session });
const state = {
  live: null,
  call: null,
  overviewTimer: null,
  patients: new Map(), // id -> overview item
  current: null, // patient id on screen
  ongoing: null, // the call in progress of the patient on screen that this clinician may join
  streams: new Map(), // stream id -> kind, for the patient on screen
  latest: {}, // kind -> last analysis
};
const alerts = new AlertBoard(session);
const orgs = new OrgPanel(session);
alerts.addEventListener("change", () => loadOverview());
alerts.addEventListener("open", (e) => openPatient(e.detail));

// --- helpers -----------------------------------------------------------------------------------

const CATEGORY = { normal: "Normal", elevated: "Elevated", hypertension_stage_1: "Stage 1",
                   hypertension_stage_2: "Stage 2", hypertensive_crisis: "Crisis" };
const bpText = (r) => `${fmt(r.systolic)}/${fmt(r.diastolic)}`;
const categoryChip = (r) => el("span", { class: `chip cat-${r.category}`, title: humanize(r.category) },
  CATEGORY[r.category] || humanize(r.category));

function pushItem(list, item) {
  list.prepend(item);
  while (list.children.length > MAX_LIST_ITEMS) list.lastChild.remove();
}

// --- sign-in -----------------------------------------------------------------------------------

function showLogin(message = "") {
  stopApp();
  $("app-view").hidden = true;
  $("who").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message;
  $("email").focus();
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("login-submit").disabled = true;
  $("login-error").textContent = "";
  try {
    await session.login($("email").value, $("password").value);
    $("password").value = "";
    startApp();
  } catch (err) {
    $("login-error").textContent = err.message;
  } finally {
    $("login-submit").disabled = false;
  }
});

$("logout").addEventListener("click", () => session.logout());
session.addEventListener("ended", (e) => showLogin(e.detail));

// --- the app -----------------------------------------------------------------------------------

function startApp() {
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("who").hidden = false;
  $("user-name").textContent = session.user ? session.user.name : "";
  const live = (state.live = new Live(session));
  live.addEventListener("status", (e) => {
    $("conn").dataset.state = e.detail;
    $("conn").textContent = e.detail === "connected" ? "Live" : "Reconnecting…";
    if (e.detail === "connected" && state.current) subscribe(state.current);
  });
  state.call = new AudioCall(live, session, $("remote-audio"));
  stats.call = state.call;
  state.call.addEventListener("status", (e) => showCall(e.detail));
  live.on("live:frame", onFrame);
  live.on("live:analysis", onAnalysis);
  live.on("live:gap", onGap);
  live.on("live:stream", onStream);
  live.on("live:ended", onEnded);
  live.on("vitals:event", onVitalEvent);
  live.on("bp:new", onBp);
  live.on("bp:updated", onBp);
  live.on("bp:deleted", onBpDeleted);
  live.on("patient:call", (msg) => { if (msg.patient_id === state.current) loadOngoing(msg.patient_id); });
  alerts.attach(live);
  live.connect();
  loadOverview();
  alerts.load(null);
  orgs.start();
  state.overviewTimer = setInterval(loadOverview, OVERVIEW_EVERY_MS);
  const wanted = new URLSearchParams(location.hash.slice(1)).get("patient");
  if (wanted) openPatient(wanted);
}

function stopApp() {
  clearInterval(state.overviewTimer);
  if (state.call) state.call.hangup();
  state.call = null;
  if (state.live) state.live.close();
  state.live = null;
  // Nothing of the previous user's stays on the page.
  state.current = null;
  state.patients.clear();
  stats.drawing = false;
  alerts.reset();
  orgs.reset();
  $("patients").replaceChildren();
  $("patient-view").hidden = true;
  $("placeholder").hidden = false;
  history.replaceState(null, "", location.pathname);
}

async function loadOverview() {
  try {
    const { items } = await session.api("GET", "/api/overview");
    state.patients = new Map(items.map((i) => [i.patient.id, i]));
    // The patient on screen: the live analysis is newer than the stored one.
    const live = state.latest.ecg || state.latest.ppg;
    const shown = state.patients.get(state.current);
    if (shown && live) shown.hr = { value: live.hr, reason: live.reason, at: live.at };
    renderPatients();
  } catch (err) {
    if (err.status !== 401) console.warn("overview", err);
  }
}

function renderPatients() {
  const list = $("patients");
  list.replaceChildren(...[...state.patients.values()].map(patientRow));
  $("patients-empty").hidden = state.patients.size > 0;
}

function patientRow(item) {
  const p = item.patient;
  const hr = item.hr ? rateText(item.hr.value, item.hr.reason) : "–";
  const row = el("li", { class: "patient-row" + (p.id === state.current ? " selected" : ""), "data-id": p.id },
    el("div", { class: "row-top" },
      el("span", { class: "dot", "data-on": String(item.streaming), title: item.streaming ? "Streaming" : "Not streaming" }),
      el("span", { class: "row-name" }, p.name),
      item.open_alerts ? el("span", { class: "badge", title: "Open alerts" }, String(item.open_alerts)) : null),
    el("div", { class: "row-meta" },
      el("span", { class: "row-hr", title: "Latest heart rate" }, "♥ ", hr),
      item.bp ? el("span", { class: "row-bp", title: `Latest blood pressure, ${clock(item.bp.measured_at)}` },
        bpText(item.bp), " ", categoryChip(item.bp)) : null,
      el("span", { class: "muted" }, item.streaming ? item.streams.map((s) => s.kind.toUpperCase()).join(" · ") : "offline")));
  row.addEventListener("click", () => openPatient(p.id));
  return row;
}

// --- one patient -------------------------------------------------------------------------------

async function openPatient(id) {
  if (state.current && state.current !== id && state.live) {
    state.live.call("live:unsubscribe", { patient_id: state.current }).catch(() => {});
  }
  state.current = id;
  history.replaceState(null, "", `#patient=${id}`);
  state.streams.clear();
  state.latest = {};
  for (const s of Object.values(strips)) s.clear();
  for (const t of ["v-hr", "v-pr", "v-rmssd", "v-sdnn", "v-quality"]) $(t).textContent = "–";
  $("v-quality-ppg").textContent = "";
  bpChart.clear();
  $("v-bp").textContent = "–";
  $("v-bp-cat").replaceChildren();
  $("events").replaceChildren();
  $("events-empty").hidden = false;
  alerts.show(id);
  orgs.hide();
  $("placeholder").hidden = true;
  $("patient-view").hidden = false;
  $("call-btn").hidden = Boolean(state.call && state.call.busy);
  state.ongoing = null;
  showJoin();
  stats.drawing = true;
  renderPatients();
  const known = state.patients.get(id);
  $("p-name").textContent = known ? known.patient.name : "";
  try {
    const profile = await session.api("GET", `/api/patients/${id}`);
    if (state.current === id) $("p-name").textContent = profile.name;
  } catch (err) {
    $("p-name").textContent = "This patient is not available to you";
    return;
  }
  if (state.live && state.live.socket.connected) subscribe(id);
  loadEvents(id);
  loadBp(id);
  loadOngoing(id);
  alerts.load(id);
}

async function subscribe(id) {
  try {
    const reply = await state.live.call("live:subscribe", { patient_id: id, display_rate: DISPLAY_RATE });
    if (state.current !== id) return;
    for (const s of reply.streams) state.streams.set(s.id, s.kind);
    setStreaming();
  } catch (err) {
    console.warn("live:subscribe", err);
  }
}

function setStreaming() {
  const kinds = [...new Set(state.streams.values())].map((k) => k.toUpperCase());
  const pill = $("p-stream");
  pill.dataset.state = kinds.length ? "on" : "off";
  pill.textContent = kinds.length ? `Streaming ${kinds.join(" + ")}` : "Not streaming";
}

function onFrame(frame) {
  const kind = state.streams.get(frame.stream_id);
  const strip = strips[kind];
  if (!strip) return;
  stats.frames++;
  strip.push(frame.stream_id, frame.seq, new Float32Array(frame.samples), frame.rate, performance.now(),
             frame.dropped || 0);
}

function onAnalysis(a) {
  const kind = state.streams.get(a.stream_id);
  if (!kind) return;
  stats.analyses++;
  state.latest[kind] = a;
  const hrv = a.hrv || {};
  if (kind === "ecg") {
    showRate("v-hr", a);
    $("v-quality").textContent = fmt(a.quality, 2);
  } else if (kind === "ppg") {
    showRate("v-pr", a);
    if (!state.latest.ecg) $("v-quality").textContent = fmt(a.quality, 2);
    $("v-quality-ppg").textContent = state.latest.ecg ? `PPG ${fmt(a.quality, 2)}` : "PPG";
  }
  // HRV from the ECG when there is one (it times beats more precisely than the pulse wave).
  if (kind === "ecg" || !state.latest.ecg) {
    $("v-rmssd").textContent = fmt(hrv.rmssd);
    $("v-sdnn").textContent = fmt(hrv.sdnn);
  }
  const item = state.patients.get(state.current);
  if (item && (kind === "ecg" || !state.latest.ecg)) {
    item.hr = { value: a.hr, reason: a.reason, at: a.at, quality: a.quality };
    const hrCell = document.querySelector(`.patient-row[data-id="${state.current}"] .row-hr`);
    if (hrCell) hrCell.textContent = `♥ ${rateText(a.hr, a.reason)}`;
  }
}

const REASONS = { no_signal: "no signal", poor_signal: "poor signal" };

// No pulse, no number: "—" and why, never the last rate nor a made-up one.
function rateText(hr, reason) {
  if (hr !== null && hr !== undefined) return `${fmt(hr)}/min`;
  return reason ? `— ${REASONS[reason] || humanize(reason)}` : "—";
}

function showRate(id, a) {
  const none = a.hr === null || a.hr === undefined;
  const value = $(id);
  value.textContent = none ? "—" : fmt(a.hr);
  value.nextElementSibling.textContent = none && a.reason ? REASONS[a.reason] || humanize(a.reason) : "/min";
}

function onGap(gap) {
  const kind = state.streams.get(gap.stream_id);
  if (!kind) return;
  const strip = strips[kind];
  if (strip) strip.mark(performance.now(), "gap", "#8a9aa1");
  addEvent({ type: "signal_gap", signal: kind, at: gap.at, severity: "info",
             text: `${gap.missing_frames} frame${gap.missing_frames === 1 ? "" : "s"} missing` });
}

function onStream(msg) {
  const s = msg.stream;
  if (!s || s.patient_id !== state.current) return;
  if (msg.change === "opened") state.streams.set(s.id, s.kind);
  else {
    state.streams.delete(s.id);
    if (strips[s.kind]) strips[s.kind].mark(performance.now(), "stream ended", "#8a9aa1");
  }
  setStreaming();
}

function onEnded(msg) {
  if (msg.patient_id !== state.current) return;
  state.streams.clear();
  setStreaming();
  $("p-stream").textContent = "Access ended";
}

function onVitalEvent(ev) {
  if (ev.patient_id !== state.current) return;
  const strip = strips[ev.signal] || strips.ecg;
  if (ev.phase !== "ended") strip.mark(performance.now(), humanize(ev.type), ev.severity === "critical" ? "#ff5d5d" : "#f5a524");
  addEvent(ev);
}

async function loadEvents(id) {
  try {
    const page = await session.api("GET", `/api/patients/${id}/vital-events?limit=20`);
    if (state.current !== id) return;
    for (const ev of [...page.items].reverse()) addEvent(ev);
  } catch (err) {
    console.warn("vital events", err);
  }
}

function addEvent(ev) {
  const detail = ev.detail || {};
  const text = ev.text || (ev.phase === "ended" ? "ended" : detail.hr ? `${fmt(detail.hr)}/min`
    : detail.ectopic_per_min ? `${fmt(detail.ectopic_per_min)} extra beats/min` : "");
  pushItem($("events"), el("li", { class: `event sev-${ev.severity || "warning"}` },
    el("span", { class: "when" }, clock(ev.at)),
    el("span", { class: "what" }, humanize(ev.type)),
    el("span", { class: "muted" }, [ev.signal ? ev.signal.toUpperCase() : "", text].filter(Boolean).join(" · "))));
  $("events-empty").hidden = true;
}

// --- calls -------------------------------------------------------------------------------------

$("call-btn").addEventListener("click", () => state.call && state.call.start(state.current));
$("join-btn").addEventListener("click", () => state.call && state.ongoing && state.call.join(state.ongoing));

/** The patient's connected call that this clinician is not in, if any: it can be joined. */
async function loadOngoing(id) {
  let calls = [];
  try {
    calls = await state.live.call("calls:ongoing", { patient_id: id });
  } catch (err) {
    console.warn("calls:ongoing", err);
  }
  if (state.current !== id) return;
  const me = session.user && session.user.id;
  state.ongoing = calls.find((c) => c.state === "active" && c.caller.id !== me && c.callee.id !== me
                                    && !c.joined.includes(me)) || null;
  showJoin();
}

function showJoin() {
  const idle = !(state.call && state.call.busy);
  $("join-btn").hidden = !(idle && state.ongoing && session.user && session.user.acting_role === "clinician");
  $("call-btn").hidden = !idle || !$("join-btn").hidden; // one call at a time: join the one in progress
}
$("hangup-btn").addEventListener("click", () => state.call && state.call.hangup());

function showCall({ text, state: callState }) {
  $("call-status").textContent = text;
  $("call-status").dataset.state = callState;
  const idle = callState === "idle";
  $("call-btn").hidden = !idle;
  $("hangup-btn").hidden = idle;
  $("hangup-btn").textContent = callState === "ringing" ? "Cancel" : state.call && state.call.call && state.call.call.joined
    ? "Leave call" : "Hang up";
  if (idle && state.current) loadOngoing(state.current);
  else $("join-btn").hidden = true;
}

// --- blood pressure ----------------------------------------------------------------------------

async function loadBp(id) {
  try {
    const page = await session.api("GET", `/api/patients/${id}/bp?limit=200`);
    if (state.current !== id) return;
    bpChart.set(page.items);
    showLatestBp();
  } catch (err) {
    console.warn("bp history", err);
  }
}

function showLatestBp() {
  const r = bpChart.readings[bpChart.readings.length - 1];
  stats.bpPoints = bpChart.readings.length;
  $("bp-empty").hidden = Boolean(r);
  $("v-bp").textContent = r ? bpText(r) : "–";
  $("v-bp-cat").replaceChildren(...(r ? [categoryChip(r)] : []));
}

function onBp(reading) {
  const item = state.patients.get(reading.patient_id);
  if (item && (!item.bp || Date.parse(reading.measured_at) >= Date.parse(item.bp.measured_at))) {
    item.bp = reading;
    renderPatients();
  }
  if (reading.patient_id !== state.current) return;
  bpChart.add(reading);
  showLatestBp();
}

function onBpDeleted(msg) {
  if (msg.patient_id === state.current) {
    bpChart.remove(msg.id);
    showLatestBp();
  }
  loadOverview();
}

// --- drawing -----------------------------------------------------------------------------------

function frame(now) {
  if (stats.drawing && !$("patient-view").hidden) {
    strips.ecg.draw(now);
    strips.ppg.draw(now);
    stats.draws++;
  }
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);

session.resume().then((signedIn) => {
  if (signedIn) startApp();
  else if (invitationToken()) orgs.showSignUp(startApp);
  else showLogin();
});
