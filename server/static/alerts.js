// Emergency alerts on the dashboard: every alert pushed to this clinician (any patient) is kept,
// confirmed with `alert:received` (so this browser is not sent it again), listed in the patient view's
// panel with an Acknowledge button (`alert:ack`; the first acknowledgement is shown to everyone as
// "… is handling it"), and the newest unacknowledged one is shown in a banner whichever patient it is about.

import { $, clock, el } from "/static/dom.js";

const MAX_ALERTS = 200;

export class AlertBoard extends EventTarget {
  constructor(session) {
    super();
    this.session = session;
    this.live = null;
    this.patientId = null; // the patient on screen
    this.alerts = new Map(); // id -> alert (not resolved), oldest first
    $("ab-open").addEventListener("click", () => this.emit("open", $("alert-banner").dataset.patient));
    $("ab-ack").addEventListener("click", (e) => this.acknowledge($("alert-banner").dataset.id, e.currentTarget));
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  attach(live) {
    this.live = live;
    live.on("alert:new", (a) => this.received(a));
    live.on("alert:escalated", (a) => this.received(a));
    live.on("alert:acknowledged", (msg) => {
      const alert = this.alerts.get(msg.alert_id);
      if (alert) this.keep({ ...alert, status: "acknowledged", acknowledged_by: msg.by, message: msg.message });
      this.changed();
    });
    live.on("alert:resolved", (msg) => {
      this.alerts.delete(msg.alert_id);
      this.changed();
    });
  }

  reset() {
    this.alerts.clear();
    this.patientId = null;
    this.render();
  }

  keep(alert) {
    const known = this.alerts.get(alert.id) || {};
    this.alerts.delete(alert.id);
    this.alerts.set(alert.id, { ...known, ...alert });
    while (this.alerts.size > MAX_ALERTS) this.alerts.delete(this.alerts.keys().next().value);
  }

  received(alert) {
    this.keep(alert);
    this.live.call("alert:received", { alert_id: alert.id }).catch(() => {});
    this.changed();
  }

  changed() {
    this.render();
    this.emit("change");
  }

  /** A patient's alerts (or, without one, every open alert of this clinician) from the history. */
  async load(patientId) {
    try {
      const path = patientId ? `/api/patients/${patientId}/alerts?limit=50` : "/api/alerts?status=open&limit=50";
      const page = await this.session.api("GET", path);
      for (const a of page.items.reverse()) {
        if (a.status === "resolved") this.alerts.delete(a.id);
        else this.keep(a);
      }
      this.render();
    } catch (err) {
      console.warn("alerts", err);
    }
  }

  show(patientId) {
    this.patientId = patientId;
    this.render();
  }

  async acknowledge(alertId, button) {
    button.disabled = true;
    try {
      this.keep(await this.live.call("alert:ack", { alert_id: alertId }));
    } catch (err) {
      button.disabled = false;
      console.warn("alert:ack", err);
    }
    this.changed();
  }

  render() {
    const mine = [...this.alerts.values()].filter((a) => a.patient.id === this.patientId).reverse();
    $("alerts").replaceChildren(...mine.map((a) => this.item(a)));
    $("alerts-empty").hidden = mine.length > 0;
    const open = mine.filter((a) => a.status === "open").length;
    $("alerts-count").hidden = open === 0;
    $("alerts-count").textContent = String(open);
    const waiting = [...this.alerts.values()].filter((a) => a.status === "open").pop();
    const banner = $("alert-banner");
    banner.hidden = !waiting;
    if (waiting) {
      if (banner.dataset.id !== waiting.id) $("ab-ack").disabled = false;
      banner.dataset.id = waiting.id;
      banner.dataset.patient = waiting.patient.id;
      $("ab-title").textContent = waiting.title;
      $("ab-patient").textContent = `· ${waiting.patient.name} · ${clock(waiting.raised_at)}`;
    }
  }

  item(a) {
    const ack = a.status === "open" ? el("button", { class: "danger small-btn" }, "Acknowledge") : null;
    if (ack) ack.addEventListener("click", () => this.acknowledge(a.id, ack));
    const by = a.acknowledged_by;
    const handled = a.message || (by ? `${by.name} is handling it` : "Acknowledged");
    return el("li", { class: `alert-item sev-${a.urgency === "critical" ? "critical" : "high"} status-${a.status}`,
                      "data-id": a.id },
      el("span", { class: "when" }, clock(a.raised_at)),
      el("span", { class: "grow" },
        el("span", { class: "what" }, a.title),
        a.body ? el("span", { class: "muted small" }, a.body) : null,
        a.status === "acknowledged" ? el("span", { class: "who" }, handled) : null),
      ack);
  }
}
