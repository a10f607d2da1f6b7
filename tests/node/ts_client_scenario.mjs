// The generated TypeScript client (clients/typescript, built to dist/) as a caregiver app would use it, against a
// running server: log in, connect, subscribe to the patient, hear a frame and an analysis, ack the alert.
// Prints {"frame": true} once a frame came (the test then raises the alert), and the outcome at the end.
import { HealthMateClient } from "../../clients/typescript/dist/index.js";

const [url, email, password] = process.argv.slice(2);
const client = new HealthMateClient(url, { deviceId: "ts-client-test" });
const seen = { frame: false, analysis: false, acked: null, acknowledged: null };
let finish;
const finished = new Promise((resolve) => { finish = resolve; });
const check = () => { if (seen.frame && seen.analysis && seen.acked !== null && seen.acknowledged) finish(); };

await client.login(email, password);
await client.connect();
client.on("live:frame", (frame) => {
  if (!seen.frame && frame.samples.byteLength > 0) console.log(JSON.stringify({ frame: true }));
  seen.frame = true;
  check();
});
client.on("live:analysis", (analysis) => { seen.analysis = analysis.stream_id.length > 0; check(); });
client.on("alert:new", async (alert) => {
  await client.alertReceived({ alert_id: alert.id });
  const reply = await client.alertAck({ alert_id: alert.id });
  seen.acked = reply.ok ? reply.data.acknowledged_by_you : reply.error.code;
  check();
});
client.on("alert:acknowledged", (a) => { seen.acknowledged = a.message; check(); });
const patients = await client.patientsList(null);
if (!patients.ok) throw new Error(patients.error.code);
const subscribed = await client.liveSubscribe({ patient_id: patients.data[0].id, display_rate: 125 });
if (!subscribed.ok) throw new Error(subscribed.error.code);
await finished;
console.log(JSON.stringify(seen));
client.close();
process.exit(0);
