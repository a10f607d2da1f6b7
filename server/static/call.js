// An audio call from the clinician to the patient over the project's call protocol: `call:invite`,
// the callee's `call:accepted`, then the caller's SDP offer and both sides' ICE candidates relayed by
// `call:signal` / `call:peer-signal`; `call:cancel` while ringing, `call:hangup` once connected.
// Or joining the patient's ongoing call: `call:join`, then one peer connection to the server's relay
// (`call:media-offer`, candidates gathered into the offer) that brings the other two members' audio;
// `call:leave` leaves the two talking.

export class AudioCall extends EventTarget {
  constructor(live, session, audioElement) {
    super();
    this.live = live;
    this.session = session;
    this.audio = audioElement;
    this.call = null; // the call as the server describes it
    this.pc = null;
    this.local = null;
    this.pending = []; // candidates that arrived before the answer
    live.on("call:accepted", (c) => this.onAccepted(c));
    live.on("call:peer-signal", (m) => this.onSignal(m));
    live.on("call:ended", (m) => this.onEnded(m));
  }

  get busy() { return this.call !== null; }

  status(text, state) {
    this.dispatchEvent(new CustomEvent("status", { detail: { text, state } }));
  }

  /** The microphone, and a peer connection (with the server's ICE servers) sending it. */
  async open() {
    const [{ ice_servers: iceServers }, local] = await Promise.all([
      this.session.api("GET", "/api/calls/ice-servers"),
      navigator.mediaDevices.getUserMedia({ audio: true, video: false }),
    ]);
    this.local = local;
    this.pc = new RTCPeerConnection({ iceServers });
    for (const track of local.getAudioTracks()) this.pc.addTrack(track, local);
  }

  async start(patientId) {
    if (this.call) return;
    this.status("Starting…", "starting");
    try {
      await this.open();
      this.pc.ontrack = (e) => { this.audio.srcObject = e.streams[0]; };
      this.pc.onicecandidate = (e) => {
        if (this.call) this.send({ type: "candidate", candidate: e.candidate ? e.candidate.toJSON() : null });
      };
      this.pc.onconnectionstatechange = () => {
        if (this.pc && this.pc.connectionState === "connected") this.status("In call", "connected");
      };
      this.call = await this.live.call("call:invite", { callee: patientId, media: "audio" });
      this.status("Ringing…", "ringing");
    } catch (err) {
      this.cleanup();
      this.status(`Call failed: ${err.message}`, "idle");
    }
  }

  async join(ongoing) {
    if (this.call) return;
    this.status("Joining…", "starting");
    try {
      await this.open();
      const joined = await this.live.call("call:join", { call_id: ongoing.id });
      this.call = { ...joined, joined: true };
      for (let i = 1; i < joined.slots; i++) this.pc.addTransceiver("audio", { direction: "recvonly" });
      const heard = new MediaStream(); // the other members' tracks, played together
      this.audio.srcObject = heard;
      this.pc.ontrack = (e) => heard.addTrack(e.track);
      this.pc.onconnectionstatechange = () => {
        if (this.pc && this.pc.connectionState === "connected") this.status("In call (joined)", "connected");
      };
      await this.pc.setLocalDescription(await this.pc.createOffer());
      await gathered(this.pc);
      const answer = await this.live.call("call:media-offer", { call_id: joined.id, sdp: this.pc.localDescription.sdp });
      await this.pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      this.status("Connecting…", "connecting");
    } catch (err) {
      if (this.call) this.live.call("call:leave", { call_id: this.call.id }).catch(() => {});
      this.cleanup();
      this.status(`Could not join: ${err.message}`, "idle");
    }
  }

  send(body) {
    return this.live.call("call:signal", { call_id: this.call.id, ...body }).catch((err) => console.warn(err));
  }

  async onAccepted(call) {
    if (!this.call || call.id !== this.call.id) return;
    this.call = call;
    this.status("Connecting…", "connecting");
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    await this.send({ type: "offer", sdp: offer.sdp });
  }

  async onSignal(msg) {
    if (!this.call || msg.call_id !== this.call.id || !this.pc) return;
    if (msg.type === "answer") {
      await this.pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
      for (const c of this.pending.splice(0)) await this.pc.addIceCandidate(c);
    } else if (msg.type === "candidate") {
      const c = msg.candidate || null;
      if (this.pc.remoteDescription) await this.pc.addIceCandidate(c);
      else this.pending.push(c);
    } else if (msg.type === "offer") { // the patient renegotiates
      await this.pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
      const answer = await this.pc.createAnswer();
      await this.pc.setLocalDescription(answer);
      await this.send({ type: "answer", sdp: answer.sdp });
    }
  }

  onEnded(msg) {
    if (!this.call || msg.call_id !== this.call.id) return;
    this.cleanup();
    this.status(`Call ended (${String(msg.reason || "").replace(/_/g, " ")})`, "idle");
  }

  async hangup() {
    if (!this.call) return;
    if (this.call.joined) { // leave; the others go on talking
      await this.live.call("call:leave", { call_id: this.call.id }).catch((err) => console.warn(err));
      this.cleanup();
      this.status("", "idle");
      return;
    }
    const event = this.call.state === "ringing" ? "call:cancel" : "call:hangup";
    try {
      await this.live.call(event, { call_id: this.call.id });
    } catch (err) {
      this.cleanup();
      this.status("", "idle");
    }
  }

  /** The calls stats: packets received and sent on the audio track (for the page's tests). */
  async packets() {
    return audioStats(this.pc);
  }

  cleanup() {
    release(this);
    this.audio.srcObject = null;
  }
}

/** A call's media let go: its peer connection closed, the microphone (and camera) off, the call forgotten. */
export function release(holder) {
  if (holder.pc) holder.pc.close();
  if (holder.local) for (const t of holder.local.getTracks()) t.stop();
  Object.assign(holder, { pc: null, local: null, call: null, pending: [] });
}

/** A peer connection's audio: packets received and sent, the level heard (0–1) and its energy so far. */
export async function audioStats(pc) {
  const out = { state: pc ? pc.connectionState : "none", received: 0, sent: 0, level: 0, energy: 0 };
  if (!pc) return out;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      out.received += s.packetsReceived || 0;
      out.level = Math.max(out.level, s.audioLevel || 0);
      out.energy += s.totalAudioEnergy || 0;
    }
    if (s.type === "outbound-rtp" && s.kind === "audio") out.sent += s.packetsSent || 0;
  });
  return out;
}

/** Resolves once the peer connection has gathered its candidates (the relay takes them in the offer). */
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 5000); // enough host and server-reflexive candidates by then
  });
}
