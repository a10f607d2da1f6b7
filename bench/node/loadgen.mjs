// Load generator for bench/events.py: N connections of the official socket.io client, each keeping
// WINDOW acked events in flight for DURATION seconds. Prints one JSON line: round trips per second.
import { io } from "socket.io-client";

const [url, event, tokensJson, duration = "10", window = "8"] = process.argv.slice(2);
const tokens = JSON.parse(tokensJson);
const payload = { t: 0, note: "health mate round trip" };
const sockets = await Promise.all(tokens.map((token) => new Promise((resolve, reject) => {
  const s = io(url, { transports: ["websocket"], auth: token ? { token } : undefined, reconnection: false });
  s.on("connect", () => resolve(s));
  s.on("connect_error", (e) => reject(new Error(`connect failed: ${e.message} ${JSON.stringify(e.data || {})}`)));
})));

let done = 0, failed = 0, running = true;
const latencies = [];
async function lane(socket) {
  while (running) {
    const started = performance.now();
    const reply = await socket.timeout(10000).emitWithAck(event, { ...payload, t: started });
    if (reply && reply.ok === false) failed++; else done++;
    if (latencies.length < 200000) latencies.push(performance.now() - started);
  }
}
const warmup = 1000;
const lanes = [];
for (const s of sockets) for (let i = 0; i < Number(window); i++) lanes.push(lane(s));
await new Promise((r) => setTimeout(r, warmup));
const startDone = done, startFailed = failed;
latencies.length = 0;
const t0 = performance.now();
await new Promise((r) => setTimeout(r, Number(duration) * 1000));
const elapsed = (performance.now() - t0) / 1000;
const count = done - startDone;
running = false;
await Promise.allSettled(lanes);
latencies.sort((a, b) => a - b);
const pct = (p) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : null;
console.log(JSON.stringify({ rt_per_s: Math.round(count / elapsed), failed: failed - startFailed,
  p50_ms: pct(0.5), p99_ms: pct(0.99), connections: sockets.length, window: Number(window) }));
for (const s of sockets) s.disconnect();
process.exit(0);
