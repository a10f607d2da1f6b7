// The Socket.IO connection: authenticated through a callback, so every (re)connect presents the
// freshest access token; a refusal for an expired token refreshes and connects again, without a reload.

import { io } from "/vendor/socket.io.esm.min.js";

/** This browser's stable id, so the server delivers each alert to it once (and again only if unconfirmed). */
function deviceId() {
  let id = localStorage.getItem("healthmate.device");
  if (!id) {
    id = `web-${crypto.getRandomValues(new Uint32Array(2)).join("-")}`;
    localStorage.setItem("healthmate.device", id);
  }
  return id;
}

export class Live extends EventTarget {
  constructor(session) {
    super();
    this.session = session;
    this.socket = io({
      transports: ["websocket"],
      autoConnect: false,
      auth: (cb) => {
        session.token().then((token) => cb({ token, device_id: deviceId() }), () => cb({}));
      },
    });
    this.socket.on("connect", () => this.status("connected"));
    this.socket.on("disconnect", (reason) => {
      this.status("reconnecting");
      if (reason === "io server disconnect" && this.session.active) {
        // The server closed us (e.g. a revoked session): try once more with fresh credentials.
        setTimeout(() => this.connect(), 1000);
      }
    });
    this.socket.io.on("reconnect_attempt", () => this.status("reconnecting"));
    this.socket.on("connect_error", (err) => this.refused(err));
  }

  status(state) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("status", { detail: state }));
  }

  async refused(err) {
    const code = err && err.data && err.data.error && err.data.error.code;
    if (!code) return; // a network failure: the client retries by itself
    this.status("reconnecting");
    if (code === "token_expired" || code === "token_missing") {
      try {
        await this.session.refresh();
        this.connect();
      } catch { /* the session ended; the page shows the login */ }
    } else if (code === "session_revoked") {
      this.session.end("Your session was ended; please sign in again.");
    } else {
      setTimeout(() => this.connect(), 3000);
    }
  }

  connect() {
    if (this.session.active && !this.socket.connected) this.socket.connect();
  }

  close() {
    this.socket.disconnect();
  }

  on(event, handler) {
    this.socket.on(event, handler);
  }

  off(event, handler) {
    this.socket.off(event, handler);
  }

  /** Emit with acknowledgement; resolves to the data of `{ok: true, data}` or rejects with the error. */
  call(event, payload, timeoutMs = 10_000) {
    return new Promise((resolve, reject) => {
      const args = payload === undefined ? [] : [payload];
      this.socket.timeout(timeoutMs).emit(event, ...args, (err, reply) => {
        if (err) reject(new Error(`${event}: no answer`));
        else if (reply && reply.ok) resolve(reply.data);
        else {
          const error = (reply && reply.error) || {};
          reject(Object.assign(new Error(error.message || event), { code: error.code, details: error.details }));
        }
      });
    });
  }
}
