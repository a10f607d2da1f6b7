// An alert for a caregiver: the screen rings (a tone, vibration, a pulsing background unless the person asked
// for reduced motion) until someone acknowledges it. "I'm handling it" is `alert:ack` (everyone is told who),
// Resolve is `alert:resolve`. Each alert is confirmed with `alert:received` as soon as it is on screen, so
// this device is not sent it again; missed ones come again on reconnecting.

import { $ } from "/static/dom.js";
import { busy, calm, time } from "/app/ui.js";

const BEEP_EVERY_MS = 1200;

export class AlarmScreen {
  constructor(ctx) {
    this.ctx = ctx;
    this.live = null;
    this.alert = null; // the alert on screen
    this.ringing = false;
    this.timer = null;
    this.audio = null;
    $("av-ack").addEventListener("click", (e) => busy(e.currentTarget, () => this.ack(), ctx.fail));
    $("av-resolve").addEventListener("click", (e) => busy(e.currentTarget, () => this.resolve(), ctx.fail));
    $("av-open").addEventListener("click", () => this.alert && ctx.go(`#patient=${this.alert.patient.id}`));
  }

  attach(live) {
    this.live = live;
    live.on("alert:new", (a) => this.incoming(a));
    live.on("alert:escalated", (a) => this.incoming(a));
    live.on("alert:acknowledged", (m) => this.changed(m.alert_id, { status: "acknowledged", acknowledged_by: m.by }));
    live.on("alert:resolved", (m) => this.changed(m.alert_id, { status: "resolved", resolved_by: m.by }));
  }

  connected() {}

  reset() {
    this.stopRinging();
    this.alert = null;
  }

  incoming(alert) {
    this.live.call("alert:received", { alert_id: alert.id }).catch(() => {});
    if (alert.status && alert.status !== "open") return;
    this.alert = alert;
    this.ring();
    notify(alert);
    this.ctx.go(`#alert=${alert.id}`);
  }

  async open(id) {
    if (!this.alert || this.alert.id !== id) {
      try {
        this.alert = await this.live.call("alert:get", { alert_id: id });
      } catch (err) {
        this.ctx.fail(err);
        this.ctx.go("#home");
        return;
      }
    }
    this.render();
    this.ctx.show("alert-view");
  }

  changed(id, fields) {
    if (!this.alert || this.alert.id !== id) return;
    this.alert = { ...this.alert, ...fields };
    this.stopRinging();
    this.render();
  }

  render() {
    const a = this.alert;
    $("av-title").textContent = a.title;
    $("av-patient").textContent = `${a.patient.name} · ${time(a.raised_at)}`;
    $("av-body").textContent = a.body || "";
    const by = a.acknowledged_by;
    $("av-status").textContent = a.status === "resolved" ? `Resolved${a.resolved_by ? ` by ${a.resolved_by.name}` : ""}.`
      : by ? `${by.user_id === (this.ctx.user() || {}).id ? "You are" : `${by.name} is`} handling it.`
        : "Nobody has answered yet.";
    $("av-ack").hidden = a.status !== "open";
    $("av-resolve").hidden = a.status === "resolved";
    $("alert-view").classList.toggle("ringing", this.ringing);
  }

  async ack() {
    const a = await this.live.call("alert:ack", { alert_id: this.alert.id });
    this.changed(a.id, a);
  }

  async resolve() {
    await this.live.call("alert:resolve", { alert_id: this.alert.id });
    this.changed(this.alert.id, { status: "resolved", resolved_by: { name: "you" } });
  }

  ring() {
    this.ringing = true;
    $("alert-view").classList.toggle("ringing", true);
    $("alert-view").classList.toggle("calm", calm());
    if (navigator.vibrate) navigator.vibrate([400, 200, 400]);
    try {
      this.audio = this.audio || new AudioContext();
      clearInterval(this.timer);
      this.timer = setInterval(() => this.beep(), BEEP_EVERY_MS);
      this.beep();
    } catch { /* no sound without a user gesture in some browsers: the screen still shows it */ }
  }

  beep() {
    if (!this.audio || this.audio.state !== "running") return;
    const osc = this.audio.createOscillator();
    const gain = this.audio.createGain();
    gain.gain.value = 0.2;
    osc.frequency.value = 880;
    osc.connect(gain).connect(this.audio.destination);
    osc.start();
    osc.stop(this.audio.currentTime + 0.35);
  }

  stopRinging() {
    this.ringing = false;
    clearInterval(this.timer);
    $("alert-view").classList.remove("ringing");
    if (navigator.vibrate) navigator.vibrate(0);
  }
}

/** A system notification while the app is in the background; a tap opens this alert. */
async function notify(alert) {
  if (document.visibilityState === "visible" || !("Notification" in window) || Notification.permission !== "granted"
      || !navigator.serviceWorker) return;
  const reg = await navigator.serviceWorker.ready;
  reg.showNotification(alert.title, { body: `${alert.patient.name}: ${alert.body || ""}`, tag: `alert-${alert.id}`,
                                      requireInteraction: true, data: { url: `/app/#alert=${alert.id}` } });
}
