// The service worker (the app shell offline, notifications) and Web Push: the browser's subscription made
// with the server's VAPID key (`GET /api/push/vapid-key`) and registered with `push:register`. A tapped
// notification opens the screen it is about (the worker posts its URL here, or opens a window on it).

export async function startWorker(ctx) {
  if (!("serviceWorker" in navigator)) return null;
  navigator.serviceWorker.addEventListener("message", (e) => {
    if (e.data && e.data.type === "open" && typeof e.data.hash === "string") ctx.go(e.data.hash);
  });
  try {
    return await navigator.serviceWorker.register("/app/sw.js", { scope: "/app/" });
  } catch (err) {
    console.warn("service worker", err);
    return null;
  }
}

const fromBase64Url = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));

/** Notifications on this device: permission, a push subscription, its registration. Returns what to tell. */
export async function enablePush(ctx) {
  if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
    return "This browser cannot receive notifications. On an iPhone, add the app to the home screen first.";
  }
  if (await Notification.requestPermission() !== "granted") {
    return "Notifications are blocked. Allow them in the browser's site settings to be told of alerts and reminders.";
  }
  const { public_key: key } = await ctx.session.api("GET", "/api/push/vapid-key");
  const reg = await navigator.serviceWorker.ready;
  const subscription = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: fromBase64Url(key) });
  const json = subscription.toJSON();
  const reply = await ctx.live.call("push:register", {
    provider: "webpush", subscription: { endpoint: json.endpoint, keys: json.keys, expirationTime: json.expirationTime || null } });
  return reply.enabled ? "Notifications are on for this device." : "Saved, but this server does not send notifications yet.";
}
