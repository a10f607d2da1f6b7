// Audio and video calls between a patient and a caregiver over the server's signaling events: `call:invite`,
// the callee's ringing screen (`call:incoming`, accept or decline), the caller's SDP offer after
// `call:accepted`, answers and ICE candidates through `call:signal` / `call:peer-signal`; mute, camera,
// hang up. When this side's socket drops mid-call, the reconnected socket sends `call:resume` and an
// ICE-restart offer (the other side hears `call:peer-resumed`), so the call goes on.

import { audioStats, release } from "/static/call.js";
import { $ } from "/static/dom.js";
import { busy } from "/app/ui.js";

export class CallScreen {
  constructor(ctx) {
    this.ctx = ctx;
    this.live = null;
    this.call = null; // as the server describes it
    this.pc = null;
    this.local = null;
    this.pending = [];
    this.dropped = false;
    this.resumes = 0;
    $("cv-accept").addEventListener("click", (e) => busy(e.currentTarget, () => this.accept(), (err) => this.failed(err)));
    $("cv-decline").addEventListener("click", () => this.send("call:reject"));
    $("cv-hangup").addEventListener("click", () => this.hangup());
    $("cv-mute").addEventListener("click", (e) => this.toggle(e.currentTarget, "audio", "Mute", "Unmute"));
    $("cv-camera").addEventListener("click", (e) => this.toggle(e.currentTarget, "video", "Camera off", "Camera on"));
  }

  get active() { return this.call !== null; }

  attach(live) {
    this.live = live;
    live.on("call:incoming", (c) => this.incoming(c));
    live.on("call:accepted", (c) => this.accepted(c));
    live.on("call:peer-signal", (m) => this.signal(m).catch((err) => console.warn("signal", err)));
    live.on("call:ended", (m) => this.ended(m));
    live.on("call:answered-elsewhere", (m) => { if (this.mine(m)) this.finish("Answered on another device."); });
    live.on("call:peer-dropped", (m) => { if (this.mine(m)) this.status("Their connection dropped; waiting for them…"); });
    live.on("call:peer-resumed", (m) => { if (this.mine(m)) this.status("Reconnecting…"); });
    live.socket.on("disconnect", () => { if (this.call && this.call.state === "active") this.dropped = true; });
  }

  /** A reconnected socket takes this device's place in the call again, and renegotiates (ICE restart). */
  async connected() {
    if (!this.call || !this.dropped) return;
    this.dropped = false;
    try {
      this.call = { ...this.call, ...(await this.live.call("call:resume", { call_id: this.call.id })) };
      this.resumes++;
      const offer = await this.pc.createOffer({ iceRestart: true });
      await this.pc.setLocalDescription(offer);
      await this.signalOut({ type: "offer", sdp: offer.sdp });
      this.status("In call");
    } catch (err) {
      this.failed(err);
    }
  }

  reset() {
    this.cleanup();
  }

  mine(m) { return this.call && m.call_id === this.call.id; }

  other() {
    if (!this.call) return "";
    const me = (this.ctx.user() || {}).id;
    return (this.call.caller.id === me ? this.call.callee : this.call.caller).name;
  }

  status(text) {
    $("cv-status").textContent = text;
  }

  /** Which buttons fit the moment: ringing in (accept, decline), in a call (mute, camera, hang up). */
  controls(mode) {
    $("cv-accept").hidden = mode !== "incoming";
    $("cv-decline").hidden = mode !== "incoming";
    $("cv-hangup").hidden = mode === "incoming";
    $("cv-hangup").textContent = mode === "outgoing" ? "Cancel" : "Hang up";
    $("cv-mute").hidden = mode === "incoming";
    $("cv-camera").hidden = mode === "incoming" || !this.call || this.call.media !== "video";
    $("call-view").dataset.media = (this.call && this.call.media) || "audio";
  }

  async open(media) {
    const [{ ice_servers: iceServers }, local] = await Promise.all([
      this.ctx.session.api("GET", "/api/calls/ice-servers"),
      navigator.mediaDevices.getUserMedia({ audio: true, video: media === "video" }),
    ]);
    this.local = local;
    $("cv-local").srcObject = media === "video" ? local : null;
    const pc = (this.pc = new RTCPeerConnection({ iceServers }));
    for (const track of local.getTracks()) pc.addTrack(track, local);
    pc.ontrack = (e) => { $("cv-remote").srcObject = e.streams[0]; };
    pc.onicecandidate = (e) => {
      if (this.call) this.signalOut({ type: "candidate", candidate: e.candidate ? e.candidate.toJSON() : null });
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "connected") this.status(`In call with ${this.other()}`);
    };
  }

  // --- calling -----------------------------------------------------------------------------------

  async start(calleeId, media) {
    if (this.call) return;
    try {
      await this.open(media);
      this.call = await this.live.call("call:invite", { callee: calleeId, media });
      this.controls("outgoing");
      this.status(`Calling ${this.other()}…`);
      this.ctx.go("#call");
    } catch (err) {
      this.failed(err);
    }
  }

  async accepted(call) {
    if (!this.mine({ call_id: call.id })) return;
    this.call = call;
    this.controls("active");
    this.status("Connecting…");
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    await this.signalOut({ type: "offer", sdp: offer.sdp });
  }

  // --- being called ------------------------------------------------------------------------------

  incoming(call) {
    if (this.call) return; // the server answers `busy` to the caller when we are in another call
    this.call = call;
    this.controls("incoming");
    this.status(`${call.caller.name} is calling${call.media === "video" ? " (video)" : ""}…`);
    this.ctx.go("#call");
  }

  async accept() {
    await this.open(this.call.media);
    this.call = await this.live.call("call:accept", { call_id: this.call.id });
    this.controls("active");
    this.status("Connecting…");
  }

  // --- both sides --------------------------------------------------------------------------------

  signalOut(body) {
    return this.live.call("call:signal", { call_id: this.call.id, ...body }).catch((err) => console.warn(err));
  }

  async signal(m) {
    if (!this.mine(m) || !this.pc) return;
    if (m.type === "offer") {
      await this.pc.setRemoteDescription({ type: "offer", sdp: m.sdp });
      await this.flush();
      const answer = await this.pc.createAnswer();
      await this.pc.setLocalDescription(answer);
      await this.signalOut({ type: "answer", sdp: answer.sdp });
    } else if (m.type === "answer") {
      await this.pc.setRemoteDescription({ type: "answer", sdp: m.sdp });
      await this.flush();
    } else if (m.type === "candidate") {
      if (this.pc.remoteDescription) await this.pc.addIceCandidate(m.candidate || null);
      else this.pending.push(m.candidate || null);
    }
  }

  async flush() {
    for (const c of this.pending.splice(0)) await this.pc.addIceCandidate(c);
  }

  toggle(button, kind, on, off) {
    if (!this.local) return;
    const tracks = kind === "audio" ? this.local.getAudioTracks() : this.local.getVideoTracks();
    const muted = button.getAttribute("aria-pressed") !== "true";
    for (const t of tracks) t.enabled = !muted;
    button.setAttribute("aria-pressed", String(muted));
    button.textContent = muted ? off : on;
  }

  send(event) {
    if (!this.call) return Promise.resolve();
    return this.live.call(event, { call_id: this.call.id }).catch((err) => this.failed(err));
  }

  hangup() {
    return this.send(this.call && this.call.state === "ringing" ? "call:cancel" : "call:hangup");
  }

  ended(m) {
    if (!this.mine(m)) return;
    const callee = this.call.callee.id === (this.ctx.user() || {}).id;
    const why = { rejected: callee ? "You declined the call." : "They declined.", cancelled: "Call cancelled.",
                  missed: callee ? "Missed call." : "No answer.",
                  connection_lost: "The connection was lost.", link_revoked: "You are no longer on the care team." };
    this.finish(why[m.reason] || "Call ended.");
  }

  failed(err) {
    this.ctx.fail(err);
    if (this.call && this.call.state === "ringing" && this.call.callee.id === (this.ctx.user() || {}).id) return;
    this.finish("");
  }

  finish(text) {
    this.cleanup();
    if (text) this.ctx.toast(text);
    if (window.__app.screen === "call-view") history.back();
  }

  /** Packets and the audio level heard and sent (what the browser tests read). */
  stats() {
    return audioStats(this.pc);
  }

  cleanup() {
    release(this);
    this.dropped = false;
    $("cv-remote").srcObject = null;
    $("cv-local").srcObject = null;
    for (const [id, text] of [["cv-mute", "Mute"], ["cv-camera", "Camera off"]]) {
      $(id).setAttribute("aria-pressed", "false");
      $(id).textContent = text;
    }
  }
}
