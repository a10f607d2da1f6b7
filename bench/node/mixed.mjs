// Load generator for bench/scale.py: the mixed workload of a home-care deployment, over the official
// socket.io client. Usage: node mixed.mjs <plan.json>; prints "window start" and "window stop" around the
// measured window (after the warm-up), then one JSON line of counts.
//
// Each household (a patient, their caregiver, the patient's ECG sensor) keeps:
//   * a live stream: the sensor sends a 200 ms ECG frame (50 float32 samples at 250 Hz) every 200 ms,
//     in real time; the caregiver watches it (live:subscribe);
//   * a call between caregiver and patient, set up once (invite, accept), over which LANES scripts
//     run back to back, each round: SIGNALS_PER_READING ICE candidates relayed (call:signal, caregiver
//     and patient alternately) and one blood-pressure reading (bp:add); every CRISIS_EVERY-th reading
//     of a household is a hypertensive crisis, which raises an alert that the caregiver acknowledges
//     (alert:ack) when it arrives.
// The rounds are sequential, so the mix is the same whatever the latencies.
// Counted: every operation acknowledged ok within the measured window (after warm-up).
import { io } from "socket.io-client";
import { readFileSync } from "node:fs";

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const { url, households, duration_s: duration, warmup_s: warmup, lanes: LANES, crisis_every: CRISIS_EVERY,
  signals_per_reading: SIGNALS_PER_READING } = plan;
const FS = 250, FRAME = 50, FRAME_MS = (1000 * FRAME) / FS;
const CANDIDATE = { type: "candidate", candidate: { candidate: "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
  sdpMid: "0", sdpMLineIndex: 0 } };

let measuring = false, running = true;
const ok = { frame: 0, signal: 0, bp: 0, alert_ack: 0 };
const seen = { live_frame: 0, peer_signal: 0, alert: 0 };
const errors = {};
const latencies = { signal: [], bp: [] };

function connect(auth) {
  return new Promise((resolve, reject) => {
    const s = io(url, { transports: ["websocket"], auth, reconnection: false, timeout: 60000 });
    s.once("connect", () => resolve(s));
    s.once("connect_error", (e) => reject(new Error(`connect failed: ${e.message} ${JSON.stringify(e.data || {})}`)));
  });
}

async function call(socket, event, data) {
  const reply = await socket.timeout(30000).emitWithAck(event, data);
  if (!reply || reply.ok !== true) throw new Error(`${event}: ${JSON.stringify(reply)}`);
  return reply.data;
}

function tally(kind, reply, started) {
  if (!measuring) return;
  if (reply && reply.ok === true) {
    ok[kind]++;
    if (latencies[kind] && latencies[kind].length < 100000) latencies[kind].push(performance.now() - started);
  } else {
    const code = `${kind}:${reply?.error?.code ?? "no_reply"}`;
    errors[code] = (errors[code] || 0) + 1;
  }
}

async function emitCounted(socket, kind, event, data) {
  const started = performance.now();
  let reply;
  try {
    reply = await socket.timeout(30000).emitWithAck(event, data);
  } catch {
    reply = null;
  }
  tally(kind, reply, started);
  return reply;
}

// One second of a synthetic ECG at 72/min: a narrow QRS spike and a broad T wave on a flat baseline.
function ecg(t) {
  const phase = (t % (60 / 72)) / (60 / 72);
  return 1.2 * Math.exp(-(((phase - 0.2) / 0.012) ** 2)) - 0.15 * Math.exp(-(((phase - 0.23) / 0.01) ** 2))
    + 0.3 * Math.exp(-(((phase - 0.5) / 0.05) ** 2)) + 0.02 * Math.sin(2 * Math.PI * 0.3 * t);
}

async function household(h, index) {
  const [patient, carer, sensor] = await Promise.all([
    connect({ token: h.patient_token, device_id: `patient-${index}` }),
    connect({ token: h.carer_token, device_id: `carer-${index}` }),
    connect({ device_token: h.device_token }),
  ]);
  carer.on("live:frame", () => { seen.live_frame++; });
  for (const s of [patient, carer]) s.on("call:peer-signal", () => { seen.peer_signal++; });
  carer.on("alert:new", (alert) => {
    seen.alert++;
    emitCounted(carer, "alert_ack", "alert:ack", { alert_id: alert.id });
  });
  await call(carer, "live:subscribe", { patient_id: h.patient_id, display_rate: 125 });
  const stream = await call(sensor, "stream:open", { kind: "ecg", sampling_rate: FS, units: "mV" });
  const incoming = new Promise((resolve) => patient.once("call:incoming", resolve));
  const accepted = new Promise((resolve) => carer.once("call:accepted", resolve));
  const invited = await call(carer, "call:invite", { callee: h.patient_id });
  await incoming;
  await call(patient, "call:accept", { call_id: invited.id });
  await accepted;
  return { patient, carer, sensor, streamId: stream.stream_id, callId: invited.id };
}

async function streamLoop(hh, index) {
  const start = performance.now() + (index * 37) % FRAME_MS;
  for (let seq = 0; running; seq++) {
    const due = start + seq * FRAME_MS;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const samples = new Float32Array(FRAME);
    for (let i = 0; i < FRAME; i++) samples[i] = ecg((seq * FRAME + i) / FS);
    // Fire and count: a real sensor does not wait for the previous frame's ack.
    emitCounted(hh.sensor, "frame", "stream:frame", { stream_id: hh.streamId, seq, t0: Date.now() - FRAME_MS,
      dtype: "float32", samples: Buffer.from(samples.buffer) });
  }
}

async function script(hh, lane) {
  let readings = 0;
  while (running) {
    for (let i = 0; i < SIGNALS_PER_READING && running; i++) {
      await emitCounted(i % 2 ? hh.patient : hh.carer, "signal", "call:signal", { call_id: hh.callId, ...CANDIDATE });
    }
    if (!running) break;
    readings++;
    const crisis = (readings * LANES + lane) % CRISIS_EVERY === 0;
    await emitCounted(hh.patient, "bp", "bp:add", {
      systolic: crisis ? 192 : 118 + (readings % 20), diastolic: crisis ? 124 : 76, pulse: 70,
      measured_at: new Date().toISOString() });
  }
}

const t0 = performance.now();
const homes = await Promise.all(households.map(household));
const setup_s = (performance.now() - t0) / 1000;
const loops = [];
homes.forEach((hh, i) => {
  loops.push(streamLoop(hh, i));
  for (let lane = 0; lane < LANES; lane++) loops.push(script(hh, lane));
});
await new Promise((r) => setTimeout(r, warmup * 1000));
console.log("window start");
measuring = true;
const started = performance.now();
await new Promise((r) => setTimeout(r, duration * 1000));
measuring = false;
const elapsed = (performance.now() - started) / 1000;
console.log("window stop");
running = false;
await Promise.allSettled(loops);
for (const hh of homes) {
  try { await call(hh.carer, "call:hangup", { call_id: hh.callId }); } catch { /* counted nowhere: after the window */ }
}
const pct = (xs, p) => { xs.sort((a, b) => a - b); return xs.length ? xs[Math.min(xs.length - 1, Math.floor(p * xs.length))] : null; };
const total = Object.values(ok).reduce((a, b) => a + b, 0);
console.log(JSON.stringify({ ops_per_s: Math.round(total / elapsed), ok, seen, errors, elapsed_s: elapsed, setup_s,
  signal_p50_ms: pct(latencies.signal, 0.5), signal_p99_ms: pct(latencies.signal, 0.99),
  bp_p50_ms: pct(latencies.bp, 0.5), bp_p99_ms: pct(latencies.bp, 0.99) }));
for (const hh of homes) for (const s of [hh.patient, hh.carer, hh.sensor]) s.disconnect();
process.exit(0);
