// The patients' and caregivers' app: sign-in and sign-up, the screens by hash (#home, #doses, #profile,
// #patient=ID, #alert=ID, #call), the live connection, and every refusal shown as a sentence.
// The login session and the socket are the dashboard's (/static/session.js, /static/live.js): the access
// token in memory, the refresh token in the server's HttpOnly cookie, refreshed before it expires.

import { $ } from "/static/dom.js";
import { Live } from "/static/live.js";
import { Session } from "/static/session.js";
import { AlarmScreen } from "/app/alarm.js";
import { CallScreen } from "/app/calls.js";
import { CarerHome } from "/app/carer.js";
import { explain } from "/app/errors.js";
import { PatientHome } from "/app/patient.js";
import { Profile } from "/app/profile.js";
import { startWorker } from "/app/push.js";

const SCREENS = ["auth-view", "register-view", "patient-home", "carer-home", "patient-view", "alert-view",
                 "call-view", "profile-view"];

const session = new Session();
const ctx = {
  session,
  live: null,
  user: () => session.user,
  /** Show one screen, move the focus to its heading (screen readers announce the change). */
  show(id) {
    for (const s of SCREENS) $(s).hidden = s !== id;
    $("tabs").hidden = !session.active || id === "alert-view" || id === "call-view";
    for (const tab of $("tabs").querySelectorAll("a")) {
      const current = (tab.id === "tab-profile") === (id === "profile-view");
      if (current) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    const heading = $(id).querySelector("h2");
    if (heading) {
      heading.tabIndex = -1;
      heading.focus({ preventScroll: true });
    }
    window.scrollTo(0, 0);
    app.screen = id;
  },
  go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  },
  /** A refusal or failure, as a sentence (never the code). */
  fail(err) {
    toast(explain(err));
  },
  toast,
  banner(text) {
    $("banner").textContent = text;
    $("banner").hidden = !text;
  },
};
// What the browser tests read.
const app = (window.__app = { session, ctx, screen: null, frames: 0, analyses: 0 });

let toastTimer = null;
function toast(text) {
  $("toast").textContent = text;
  $("toast").hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { $("toast").hidden = true; }, 8000);
}

const patient = new PatientHome(ctx);
const carer = new CarerHome(ctx);
const alarm = new AlarmScreen(ctx);
const call = new CallScreen(ctx);
const profile = new Profile(ctx);
Object.assign(app, { patient, carer, alarm, call, profile });

// --- routing -------------------------------------------------------------------------------------

function route() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const key = [...hash.keys()][0] || "home";
  if (!session.active) {
    ctx.show(key === "register" ? "register-view" : "auth-view");
    return;
  }
  if (key === "profile") {
    profile.open();
  } else if (key === "alert" && hash.get("alert")) {
    alarm.open(hash.get("alert"));
  } else if (key === "doses" && isPatient()) {
    patient.open();
    patient.showDoses();
  } else if (key === "call" && call.active) {
    ctx.show("call-view");
  } else if (key === "patient" && hash.get("patient") && !isPatient()) {
    carer.openPatient(hash.get("patient"));
  } else if (isPatient()) {
    patient.open();
  } else {
    carer.open();
  }
}
window.addEventListener("hashchange", () => {
  if (app.screen === "patient-view" && !location.hash.startsWith("#patient=")) carer.closePatient();
  route();
});

const isPatient = () => session.user && session.user.role === "patient";

// --- signing in ----------------------------------------------------------------------------------

async function submitting(form, button, work) {
  button.disabled = true;
  try {
    await work();
    form.reset();
  } catch (err) {
    ctx.fail(err);
  } finally {
    button.disabled = false;
  }
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  submitting(e.target, $("login-submit"), async () => {
    await session.login($("login-email").value.trim(), $("login-password").value);
    start();
  });
});

$("register-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const role = e.target.querySelector("input[name=role]:checked").value;
  submitting(e.target, $("register-submit"), async () => {
    await session.register({ email: $("reg-email").value.trim(), password: $("reg-password").value,
                             name: $("reg-name").value.trim(), role });
    start();
  });
});

$("logout-btn").addEventListener("click", () => session.logout());
session.addEventListener("ended", (e) => {
  stop();
  if (e.detail) toast(e.detail);
  ctx.go("#login");
});

// --- the signed-in app ---------------------------------------------------------------------------

function start() {
  for (const n of document.querySelectorAll(".me-name")) n.textContent = session.user.name;
  const live = (ctx.live = new Live(session));
  app.live = live;
  live.addEventListener("status", (e) => {
    const on = e.detail === "connected";
    $("conn").hidden = false;
    $("conn").dataset.state = e.detail;
    $("conn").textContent = on ? "Online" : "Reconnecting…";
    if (on) for (const part of [patient, carer, alarm, call]) part.connected();
  });
  for (const part of [patient, carer, alarm, call]) part.attach(live);
  live.connect();
  if (location.hash === "#login" || location.hash === "#register") history.replaceState(null, "", "#home");
  route();
}

function stop() {
  for (const part of [patient, carer, alarm, call, profile]) part.reset();
  if (ctx.live) ctx.live.close();
  ctx.live = null;
  app.live = null;
  $("conn").hidden = true;
  ctx.banner("");
}

// Back from sleep or a lost network: the socket reconnects by itself; a stale token is refreshed first.
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && session.active) {
    session.token().then(() => ctx.live && ctx.live.connect(), () => {});
  }
});

startWorker(ctx);
session.resume().then((signedIn) => {
  if (signedIn) start();
  else route();
});
