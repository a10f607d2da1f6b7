// The caregiver's screens: the patients (live heart rate, last blood pressure, open alerts), adding one
// by a link code (typed, or scanned with the camera and jsQR), and one patient: the live waveform and
// vitals, their alerts (ack), a call, their dose adherence. A revoked link takes the patient off at once.

import { $, el, fmt, humanize } from "/static/dom.js";
import { WaveStrip } from "/static/strip.js";
import { bpText, busy, categoryChip, time } from "/app/ui.js";

const DISPLAY_RATE = 125;
const OVERVIEW_EVERY_MS = 10_000;
const REASONS = { no_signal: "no signal", poor_signal: "poor signal" };

export class CarerHome {
  constructor(ctx) {
    this.ctx = ctx;
    this.live = null;
    this.items = new Map(); // patient id -> overview item
    this.current = null; // the patient on screen
    this.streams = new Map(); // stream id -> kind, of the patient on screen
    this.timer = null;
    this.scanner = null;
    this.strip = new WaveStrip($("pv-ecg"), { label: "ECG", color: "#3ddc84", units: "mV" });
    $("redeem-form").addEventListener("submit", (e) => {
      e.preventDefault();
      busy($("redeem-submit"), () => this.redeem($("redeem-code").value), ctx.fail);
    });
    $("scan-btn").addEventListener("click", () => (this.scanner ? this.stopScan() : this.scan()));
    $("pv-call").addEventListener("click", () => window.__app.call.start(this.current, "audio"));
    $("pv-video").addEventListener("click", () => window.__app.call.start(this.current, "video"));
    requestAnimationFrame((t) => this.draw(t));
  }

  attach(live) {
    this.live = live;
    live.on("live:frame", (f) => this.onFrame(f));
    live.on("live:analysis", (a) => this.onAnalysis(a));
    live.on("live:stream", (m) => this.onStream(m));
    live.on("live:ended", (m) => { if (m.patient_id === this.current) this.lost(); });
    live.on("links:changed", () => { if (this.isCarer()) this.refresh(); });
    live.on("bp:new", (r) => this.onBp(r));
    for (const name of ["alert:new", "alert:acknowledged", "alert:resolved"]) {
      live.on(name, () => { this.loadOverview(); if (this.current) this.loadAlerts(this.current); });
    }
  }

  connected() {
    if (this.current) this.subscribe(this.current);
    if (this.isCarer()) this.loadOverview();
  }

  isCarer() { return this.ctx.user() && this.ctx.user().role !== "patient"; }

  reset() {
    clearInterval(this.timer);
    this.timer = null;
    this.stopScan();
    this.items.clear();
    this.current = null;
    this.streams.clear();
    this.strip.clear();
    $("patients").replaceChildren();
    $("pv-alerts").replaceChildren();
  }

  open() {
    this.ctx.show("carer-home");
    this.loadOverview();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.loadOverview(), OVERVIEW_EVERY_MS);
  }

  // --- the list ----------------------------------------------------------------------------------

  async loadOverview() {
    try {
      const { items } = await this.ctx.session.api("GET", "/api/overview");
      this.items = new Map(items.map((i) => [i.patient.id, i]));
      const shown = this.items.get(this.current);
      if (shown && this.latest) shown.hr = { value: this.latest.hr, reason: this.latest.reason };
      this.render();
    } catch (err) {
      if (err.status !== 401) console.warn("overview", err);
    }
  }

  async refresh() {
    await this.loadOverview();
    if (this.current && !this.items.has(this.current)) this.lost();
  }

  render() {
    $("patients").replaceChildren(...[...this.items.values()].map((i) => this.row(i)));
    $("patients-empty").hidden = this.items.size > 0;
  }

  row(item) {
    const p = item.patient;
    const link = el("a", { href: `#patient=${p.id}`, class: "row patient-row", "data-id": p.id },
      el("span", { class: "grow" },
        el("span", { class: "strong" }, p.name),
        el("span", { class: "muted small" }, item.streaming ? " · live" : " · offline")),
      el("span", { class: "row-hr", title: "Heart rate" }, "♥ ", rateText(item.hr && item.hr.value, item.hr && item.hr.reason)),
      item.bp ? el("span", { class: "row-bp" }, bpText(item.bp), " ", categoryChip(item.bp.category)) : null,
      item.open_alerts ? el("span", { class: "badge", "aria-label": `${item.open_alerts} open alerts` },
                            String(item.open_alerts)) : null);
    return el("li", {}, link);
  }

  // --- adding a patient --------------------------------------------------------------------------

  async redeem(code) {
    const link = await this.live.call("links:redeem", { code: code.trim().toUpperCase() });
    $("redeem-form").reset();
    this.stopScan();
    this.ctx.toast(`${link.patient.name} is now in your patients.`);
    await this.loadOverview();
  }

  async scan() {
    try {
      await loadScript("/vendor/jsQR.js");
      const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
      const video = $("scan-video");
      video.srcObject = stream;
      video.hidden = false;
      await video.play();
      $("scan-btn").textContent = "Stop scanning";
      const canvas = document.createElement("canvas");
      const tick = () => {
        if (!this.scanner) return;
        if (video.videoWidth) {
          canvas.width = video.videoWidth;
          canvas.height = video.videoHeight;
          const g = canvas.getContext("2d", { willReadFrequently: true });
          g.drawImage(video, 0, 0);
          const found = window.jsQR(g.getImageData(0, 0, canvas.width, canvas.height).data, canvas.width, canvas.height);
          if (found && found.data) {
            $("redeem-code").value = found.data;
            busy($("redeem-submit"), () => this.redeem(found.data), this.ctx.fail);
            return;
          }
        }
        this.scanner = setTimeout(tick, 250);
      };
      this.scanner = setTimeout(tick, 250);
    } catch (err) {
      this.stopScan();
      this.ctx.toast(err.name === "NotAllowedError" ? "The camera is not allowed: type the code instead."
        : "The camera could not be used: type the code instead.");
    }
  }

  stopScan() {
    clearTimeout(this.scanner);
    this.scanner = null;
    const video = $("scan-video");
    if (video.srcObject) for (const t of video.srcObject.getTracks()) t.stop();
    video.srcObject = null;
    video.hidden = true;
    $("scan-btn").textContent = "Scan a QR code";
  }

  // --- one patient -------------------------------------------------------------------------------

  async openPatient(id) {
    clearInterval(this.timer);
    if (this.current && this.current !== id) this.closePatient();
    this.current = id;
    this.latest = null;
    this.streams.clear();
    this.strip.clear();
    this.ctx.show("patient-view");
    const known = this.items.get(id);
    $("pv-name").textContent = known ? known.patient.name : "";
    $("pv-access").textContent = "";
    $("pv-hr").textContent = "–";
    $("pv-bp").textContent = known && known.bp ? bpText(known.bp) : "–";
    $("pv-bp-cat").replaceChildren(...(known && known.bp ? [categoryChip(known.bp.category)] : []));
    try {
      const profile = await this.ctx.session.api("GET", `/api/patients/${id}`);
      if (this.current === id) $("pv-name").textContent = profile.name;
    } catch (err) {
      this.lost();
      return;
    }
    if (this.live.socket.connected) this.subscribe(id);
    this.loadAlerts(id);
    this.loadAdherence(id);
  }

  closePatient() {
    if (this.current && this.live) this.live.call("live:unsubscribe", { patient_id: this.current }).catch(() => {});
    this.current = null;
  }

  /** This patient is no longer ours (the link was revoked): off the screen at once. */
  lost() {
    const name = $("pv-name").textContent || "This patient";
    this.current = null;
    this.streams.clear();
    this.strip.clear();
    this.items.clear();
    this.render();
    this.ctx.toast(`${name} is no longer in your patients.`);
    if (window.__app.screen === "patient-view") this.ctx.go("#home");
    this.loadOverview();
  }

  async subscribe(id) {
    try {
      const reply = await this.live.call("live:subscribe", { patient_id: id, display_rate: DISPLAY_RATE });
      if (this.current !== id) return;
      for (const s of reply.streams) this.streams.set(s.id, s.kind);
      $("pv-access").textContent = reply.streams.length ? "Live" : "No device is streaming now.";
    } catch (err) {
      if (err.code === "forbidden" || err.code === "not_found") this.lost();
    }
  }

  onStream(msg) {
    const s = msg.stream;
    if (!s || s.patient_id !== this.current) return;
    if (msg.change === "opened") this.streams.set(s.id, s.kind);
    else this.streams.delete(s.id);
    $("pv-access").textContent = this.streams.size ? "Live" : "No device is streaming now.";
  }

  onFrame(f) {
    if (this.streams.get(f.stream_id) !== "ecg") return;
    window.__app.frames++;
    this.strip.push(f.stream_id, f.seq, new Float32Array(f.samples), f.rate, performance.now(), f.dropped || 0);
  }

  onAnalysis(a) {
    const kind = this.streams.get(a.stream_id);
    if (!kind || (kind !== "ecg" && [...this.streams.values()].includes("ecg"))) return;
    window.__app.analyses++;
    this.latest = a;
    const none = a.hr === null || a.hr === undefined;
    $("pv-hr").textContent = none ? "—" : fmt(a.hr);
    $("pv-hr-unit").textContent = none ? REASONS[a.reason] || "" : "/min";
  }

  onBp(r) {
    const item = this.items.get(r.patient_id);
    if (item) {
      item.bp = r;
      this.render();
    }
    if (r.patient_id === this.current) {
      $("pv-bp").textContent = bpText(r);
      $("pv-bp-cat").replaceChildren(categoryChip(r.category));
    }
  }

  async loadAlerts(id) {
    try {
      const page = await this.live.call("alerts:list", { patient_id: id, limit: 20 });
      if (this.current !== id) return;
      const open = page.items.filter((a) => a.status !== "resolved");
      $("pv-alerts").replaceChildren(...open.map((a) => el("li", { class: `row alert-row status-${a.status}` },
        el("span", { class: "when" }, time(a.raised_at)),
        el("a", { href: `#alert=${a.id}`, class: "grow" }, a.title),
        el("span", { class: "muted small" }, a.acknowledged_by ? `${a.acknowledged_by.name} is handling it`
                                                                : humanize(a.status)))));
      $("pv-alerts-empty").hidden = open.length > 0;
    } catch { /* shown again on the next change */ }
  }

  async loadAdherence(id) {
    try {
      const a = await this.ctx.session.api("GET", `/api/patients/${id}/adherence?weeks=1`);
      const week = a.weeks[a.weeks.length - 1];
      $("pv-adherence").textContent = week && week.adherence !== null
        ? `${fmt(week.adherence * 100)}% of doses taken (${week.confirmed} taken, ${week.missed} missed).`
        : "No doses recorded this week.";
    } catch {
      $("pv-adherence").textContent = "–";
    }
  }

  draw(now) {
    if (window.__app && window.__app.screen === "patient-view") this.strip.draw(now);
    requestAnimationFrame((t) => this.draw(t));
  }
}

function rateText(hr, reason) {
  if (hr !== null && hr !== undefined) return `${fmt(hr)}/min`;
  return reason ? `— ${REASONS[reason] || humanize(reason)}` : "—";
}

/** A classic script (jsQR is not an ES module), loaded once. */
function loadScript(src) {
  if (document.querySelector(`script[src="${src}"]`)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = src;
    s.onload = resolve;
    s.onerror = reject;
    document.head.append(s);
  });
}
