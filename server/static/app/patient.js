// The patient's home: "I need help", today's medicines (confirm a dose), blood pressure (its AHA category
// at once, the history chart and the forecast), a link code with its QR for a caregiver, the care team
// (revoke), and who looked at the data (the audit log).

import { BpChart } from "/static/bp-chart.js";
import { $, el, fmt, humanize } from "/static/dom.js";
import { generate } from "/vendor/lean-qr.mjs";
import { bpText, busy, CATEGORY, categoryChip, dayTime, time } from "/app/ui.js";

export class PatientHome {
  constructor(ctx) {
    this.ctx = ctx;
    this.live = null;
    this.chart = new BpChart($("bp-chart"));
    this.doses = new Map();
    this.names = new Map(); // care-team member id -> name, for the audit log
    $("help-btn").addEventListener("click", (e) => busy(e.currentTarget, () => this.help(), ctx.fail));
    $("code-btn").addEventListener("click", (e) => busy(e.currentTarget, () => this.showCode(), ctx.fail));
    $("pair-form").addEventListener("submit", (e) => {
      e.preventDefault();
      busy($("pair-submit"), () => this.pair(), ctx.fail);
    });
    $("bp-form").addEventListener("submit", (e) => {
      e.preventDefault();
      busy($("bp-submit"), () => this.addBp(), ctx.fail);
    });
  }

  get me() { return this.ctx.user() && this.ctx.user().id; }

  attach(live) {
    this.live = live;
    const mine = (handler) => (msg) => { if (this.isOpen()) handler(msg); }; // a patient's own events only
    live.on("links:changed", mine(() => this.loadTeam()));
    live.on("bp:new", mine((r) => { if (r.patient_id === this.me) this.chart.add(r); }));
    live.on("dose:due", mine((d) => this.dose(d, true)));
    live.on("dose:confirmed", mine((d) => this.dose(d)));
    live.on("dose:missed", mine((d) => this.dose(d)));
    live.on("med:changed", mine(() => this.loadDoses()));
    // Who is handling my alert (pushed to my devices too), and when it is closed.
    live.on("alert:acknowledged", mine(() => this.loadAlerts()));
    live.on("alert:resolved", mine(() => this.loadAlerts()));
  }

  connected() {
    if (this.isOpen()) this.load();
  }

  isOpen() { return this.ctx.user() && this.ctx.user().role === "patient"; }

  open() {
    this.ctx.show("patient-home");
    this.load();
  }

  load() {
    this.loadTeam();
    this.loadBp();
    this.loadDoses();
    this.loadAudit();
    this.loadDevices();
    this.loadAlerts();
  }

  /** Today's medicines (a tapped reminder's notification leads here). */
  showDoses() {
    $("doses-title").tabIndex = -1;
    $("doses-title").focus({ preventScroll: true });
    $("doses-title").scrollIntoView({ block: "start" });
  }

  reset() {
    this.chart.clear();
    this.doses.clear();
    for (const id of ["team", "doses", "audit", "devices"]) $(id).replaceChildren();
    $("pair-result").hidden = true;
    $("pair-credential").textContent = "";
    for (const id of ["help-status", "bp-result", "bp-forecast", "link-code", "code-expiry"]) $(id).textContent = "";
    $("code-box").hidden = true;
  }

  // --- I need help -------------------------------------------------------------------------------

  async help() {
    const alert = await this.live.call("alert:help", {});
    $("help-status").textContent = alert.status === "acknowledged" && alert.acknowledged_by
      ? `${alert.acknowledged_by.name} is handling it.` : "Your care team has been alerted. Help is on the way.";
    this.loadAlerts();
  }

  /** My open alerts (a help request, a crisis reading): shown with who is handling each. */
  async loadAlerts() {
    if (!this.live || !this.me) return;
    let open = [];
    try {
      const page = await this.live.call("alerts:list", { patient_id: this.me, limit: 10 });
      open = page.items.filter((a) => a.status !== "resolved");
    } catch { /* offline: loaded again on reconnect */ }
    const handled = open.filter((a) => a.acknowledged_by);
    const waiting = open.filter((a) => !a.acknowledged_by);
    this.ctx.banner(handled.length ? `${handled[0].acknowledged_by.name} is handling it (${handled[0].title}).`
      : waiting.length ? `${waiting[0].title}: your care team has been alerted.` : "");
  }

  // --- link code ---------------------------------------------------------------------------------

  async showCode() {
    const code = await this.live.call("links:create-code");
    $("link-code").textContent = code.code;
    generate(code.code).toCanvas($("link-qr"));
    $("code-expiry").textContent = `Valid until ${time(code.expires_at)}.`;
    $("code-box").hidden = false;
  }

  // --- care team ---------------------------------------------------------------------------------

  async loadTeam() {
    try {
      const links = await this.live.call("links:list");
      for (const l of links) this.names.set(l.member.id, l.member.name);
      $("team").replaceChildren(...links.map((l) => this.member(l)));
      $("team-empty").hidden = links.length > 0;
    } catch (err) {
      this.ctx.fail(err);
    }
  }

  member(link) {
    const revoke = el("button", { class: "small-btn", "aria-label": `Remove ${link.member.name}` }, "Remove");
    revoke.addEventListener("click", () => busy(revoke, async () => {
      await this.live.call("links:revoke", { link_id: link.id });
      await this.loadTeam();
    }, this.ctx.fail));
    const call = el("button", { class: "small-btn", "aria-label": `Call ${link.member.name}` }, "Call");
    call.addEventListener("click", () => window.__app.call.start(link.member.id, "audio"));
    const video = el("button", { class: "small-btn", "aria-label": `Video call ${link.member.name}` }, "Video");
    video.addEventListener("click", () => window.__app.call.start(link.member.id, "video"));
    return el("li", { class: "row", "data-id": link.id },
      el("span", { class: "grow" }, el("span", { class: "strong" }, link.member.name), " ",
         el("span", { class: "muted" }, humanize(link.member.role))),
      call, video, revoke);
  }

  // --- devices ----------------------------------------------------------------------------------

  async loadDevices() {
    try {
      const { items } = await this.ctx.session.api("GET", `/api/patients/${this.me}/devices`);
      $("devices").replaceChildren(...items.filter((d) => !d.revoked_at).map((d) => el("li", { class: "row" },
        el("span", { class: "grow" }, `${d.model} · ${d.serial}`), el("span", { class: "muted" }, `${humanize(d.kind)}, ${d.online ? "online" : "offline"}`))));
    } catch { /* shown again on the next visit */ }
  }

  /** Pair a device by its serial: its credential is shown once, to be typed into the device. */
  async pair() {
    const device = await this.ctx.session.api("POST", `/api/patients/${this.me}/devices`, {
      kind: $("pair-kind").value, serial: $("pair-serial").value.trim(), model: $("pair-model").value.trim() });
    $("pair-form").reset();
    $("pair-credential").textContent = device.credential;
    $("pair-result").hidden = false;
    this.loadDevices();
  }

  // --- blood pressure ----------------------------------------------------------------------------

  async addBp() {
    const pulse = $("bp-pulse").value;
    const reading = await this.live.call("bp:add", {
      systolic: Number($("bp-sys").value), diastolic: Number($("bp-dia").value), measured_at: new Date().toISOString(),
      ...(pulse ? { pulse: Number(pulse) } : {}) });
    $("bp-form").reset();
    const [, advice] = CATEGORY[reading.category] || ["", ""];
    $("bp-result").replaceChildren(el("span", { class: "strong" }, bpText(reading)), " ",
                                   categoryChip(reading.category), el("span", { class: "advice" }, advice));
    $("bp-result").dataset.category = reading.category;
    this.chart.add(reading);
    this.loadForecast();
    if (reading.category === "hypertensive_crisis") this.loadAlerts();
  }

  async loadBp() {
    try {
      const page = await this.ctx.session.api("GET", `/api/patients/${this.me}/bp?limit=100`);
      this.chart.set(page.items);
      this.loadForecast();
    } catch (err) {
      this.ctx.fail(err);
    }
  }

  async loadForecast() {
    try {
      const f = await this.live.call("ml:bp-forecast", { patient_id: this.me });
      $("bp-forecast").textContent = f.available
        ? `Next 7 days: about ${fmt(f.next_7d_mean.systolic)}/${fmt(f.next_7d_mean.diastolic)} on average`
          + ` (${fmt(f.p_stage2_week * 100)}% chance of stage 2). ${f.disclaimer}`
        : "A forecast needs a few more readings.";
    } catch {
      $("bp-forecast").textContent = "";
    }
  }

  // --- medicines ---------------------------------------------------------------------------------

  async loadDoses() {
    try {
      const { items } = await this.ctx.session.api("GET", `/api/patients/${this.me}/doses`);
      const today = new Date().toDateString();
      this.doses = new Map(items.filter((d) => new Date(d.due_at).toDateString() === today
                                              || d.state === "reminded").map((d) => [d.id, d]));
      this.renderDoses();
    } catch (err) {
      this.ctx.fail(err);
    }
  }

  dose(d, due = false) {
    if (d.patient_id !== this.me) return;
    this.doses.set(d.id, { ...(this.doses.get(d.id) || {}), ...d });
    this.renderDoses();
    if (due) remind(d);
  }

  renderDoses() {
    const doses = [...this.doses.values()].sort((a, b) => Date.parse(a.due_at) - Date.parse(b.due_at));
    $("doses").replaceChildren(...doses.map((d) => this.doseRow(d)));
    $("doses-empty").hidden = doses.length > 0;
  }

  doseRow(d) {
    const name = `${d.medication_name}${d.dose ? `, ${d.dose}` : ""}`;
    let action;
    if (d.state === "reminded") {
      action = el("button", { class: "primary small-btn", "aria-label": `I took ${name}` }, "I took it");
      action.addEventListener("click", () => busy(action, async () => {
        this.dose(await this.live.call("dose:confirm", { patient_id: this.me, dose_id: d.id }));
      }, this.ctx.fail));
    } else {
      action = el("span", { class: `chip dose-${d.state}` },
                  { confirmed: "Taken", missed: "Missed", scheduled: "Later" }[d.state] || humanize(d.state));
    }
    return el("li", { class: `row dose state-${d.state}`, "data-id": d.id },
      el("span", { class: "when" }, time(d.due_at)), el("span", { class: "grow" }, name), action);
  }

  // --- audit -------------------------------------------------------------------------------------

  async loadAudit() {
    try {
      const page = await this.ctx.session.api("GET", "/api/audit?limit=10");
      const who = (a) => (a.actor_id === this.me ? "You" : this.names.get(a.actor_id) || humanize(a.actor_role || "someone"));
      $("audit").replaceChildren(...page.items.map((a) => el("li", { class: "row" },
        el("span", { class: "when" }, dayTime(a.at)),
        el("span", { class: "grow" }, `${who(a)}: ${humanize(a.action.replace(/\./g, " "))}`))));
    } catch { /* the log is a courtesy: a failure here is not worth a message */ }
  }
}

/** A reminder as a system notification (when allowed), through the service worker so a tap opens the app. */
async function remind(d) {
  if (!("Notification" in window) || Notification.permission !== "granted" || !navigator.serviceWorker) return;
  const reg = await navigator.serviceWorker.ready;
  reg.showNotification(`Time for ${d.medication_name}`, { body: d.dose || "", tag: `dose-${d.id}`,
                                                          data: { kind: "reminder", dose_id: d.id } });
}
