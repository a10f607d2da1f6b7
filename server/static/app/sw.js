// The app's service worker (scope /app/): the app shell cached at install and kept fresh (served from the
// cache when the network fails), an offline page for a page that cannot be loaded, and Web Push: a notification per push, a tap opening
// the screen it is about. The API and the socket always go to the network.

const CACHE = "healthmate-app-1";
const OFFLINE = "/app/offline.html";
const SHELL = [
  "/app/", OFFLINE, "/app/app.css", "/app/manifest.webmanifest", "/app/icon.svg", "/app/icon-192.png",
  "/app/main.js", "/app/errors.js", "/app/ui.js", "/app/patient.js", "/app/carer.js", "/app/alarm.js",
  "/app/calls.js", "/app/profile.js", "/app/push.js",
  "/static/dom.js", "/static/live.js", "/static/session.js", "/static/strip.js", "/static/bp-chart.js", "/static/call.js",
  "/vendor/socket.io.esm.min.js", "/vendor/uPlot.esm.js", "/vendor/uPlot.min.css", "/vendor/lean-qr.mjs",
];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter((n) => n !== CACHE).map((n) => caches.delete(n))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== "GET" || url.origin !== self.location.origin || url.pathname.startsWith("/api/")
      || url.pathname.startsWith("/socket.io/")) return;
  if (req.mode === "navigate") {
    // The page from the network (it is small and may have changed), else the offline page.
    event.respondWith(fetch(req).catch(() => caches.match(OFFLINE)));
    return;
  }
  // The shell's files: from the network while there is one (never a stale module beside a new page after a
  // deploy), kept in the cache for when there is none.
  event.respondWith(caches.open(CACHE).then(async (cache) => {
    try {
      const resp = await fetch(req);
      if (resp.ok) cache.put(req, resp.clone());
      return resp;
    } catch (err) {
      const cached = await cache.match(req);
      if (cached) return cached;
      throw err;
    }
  }));
});

/** Where a notification leads, from the data the server's push carries (the app's own reminders carry the
 * same): an alert's screen; a reminder, the patient's medicines today; a missed dose (to a caregiver), that
 * patient's screen; else home. */
function target(data) {
  if (data && data.alert_id) return `#alert=${data.alert_id}`;
  if (data && data.dose_id) return data.kind === "dose_missed" && data.patient_id ? `#patient=${data.patient_id}` : "#doses";
  return "#home";
}

/** A push as a notification; it keeps the push's data, read again when it is tapped. */
function shown(msg) {
  const data = msg.data || {};
  const urgent = msg.urgency === "high" || msg.urgency === "critical";
  return self.registration.showNotification(msg.title || "Health Mate", {
    body: msg.body || "", tag: data.alert_id || data.dose_id || data.call_id || undefined,
    requireInteraction: urgent, icon: "/app/icon-192.png", data,
  });
}

/** A tapped notification: the app's open window goes to its screen (else a window opens on it). */
async function opened(notification) {
  notification.close();
  const hash = target(notification.data);
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const open = windows.find((w) => new URL(w.url).pathname.startsWith("/app/"));
  if (open) {
    open.postMessage({ type: "open", hash });
    return open.focus().catch(() => open); // refused without a user's tap: the window has its screen anyway
  }
  return self.clients.openWindow(`/app/${hash}`);
}

self.addEventListener("push", (event) => {
  let msg = {};
  try {
    msg = event.data ? event.data.json() : {};
  } catch {
    msg = { title: "Health Mate", body: event.data ? event.data.text() : "" };
  }
  event.waitUntil(shown(msg));
});

self.addEventListener("notificationclick", (event) => event.waitUntil(opened(event.notification)));
