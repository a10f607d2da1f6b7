// Load generator for bench/events.py: N connections of the official socket.io client, each keeping
// WINDOW acked events in flight for DURATION seconds after WARMUP seconds (default 1). Prints "window start" and
// "window stop" around the measured window, then one JSON line: round trips per second, latencies, and
// what failed (refused replies, acks not received within 10 s; a lane whose round trip failed goes on
// with the next one and is counted in failed_lanes).
import { io } from "socket.io-client";

const [url, event, tokensJson, duration = "10", window = "8", warmup = "1"] = process.argv.slice(2);
const tokens = JSON.parse(tokensJson);
const payload = { t: 0, note: "health mate round trip" };
const sockets = await Promise.all(tokens.map((token) => new Promise((resolve, reject) => {
  const s = io(url, { transports: ["websocket"], auth: token ? { token } : undefined, reconnection: false });
  s.on("connect", () => resolve(s));
  s.on("connect_error", (e) => reject(new Error(`connect failed: ${e.message} ${JSON.stringify(e.data || {})}`)));
})));

let done = 0, refused = 0, timeouts = 0, measuring = false, running = true;
const failedLanes = new Set();
const latencies = [];
async function lane(socket, id) {
  while (running) {
    const started = performance.now();
    let reply;
    try {
      reply = await socket.timeout(10000).emitWithAck(event, { ...payload, t: started });
    } catch {
      if (measuring) { timeouts++; failedLanes.add(id); }
      continue;
    }
    if (!measuring) continue;
    if (reply && reply.ok === true) {
      done++;
      if (latencies.length < 200000) latencies.push(performance.now() - started);
    } else {
      refused++;
      failedLanes.add(id);
    }
  }
}
const lanes = [];
sockets.forEach((s, i) => { for (let j = 0; j < Number(window); j++) lanes.push(lane(s, `${i}.${j}`)); });
await new Promise((r) => setTimeout(r, Number(warmup) * 1000));
console.log("window start");
measuring = true;
const t0 = performance.now();
await new Promise((r) => setTimeout(r, Number(duration) * 1000));
measuring = false;
const elapsed = (performance.now() - t0) / 1000;
console.log("window stop");
running = false;
await Promise.allSettled(lanes);
latencies.sort((a, b) => a - b);
const pct = (p) => latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : null;
console.log(JSON.stringify({ rt: done, rt_per_s: Math.round(done / elapsed), elapsed_s: elapsed, refused, timeouts,
  failed_lanes: failedLanes.size, lanes: lanes.length, p50_ms: pct(0.5), p99_ms: pct(0.99),
  connections: sockets.length, window: Number(window) }));
for (const s of sockets) s.disconnect();
process.exit(0);
