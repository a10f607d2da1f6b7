// The login session. The access token lives in memory only; the refresh token in an HttpOnly cookie the
// server sets (scoped to /api/auth, SameSite=Strict) that no script here can read. After a reload, `resume()`
// gets a new access token with that cookie. Tokens are refreshed before they expire and whenever the server
// says `token_expired`; refresh tokens rotate, so a refresh is single-flight, across this browser's tabs too
// (they share the cookie): two at once would look like a stolen token and end the session.

const EARLY_MS = 60_000; // refresh this long before the access token expires
const REFRESH_LOCK = "healthmate.refresh";

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "http_error";
    this.details = err.details;
  }
}

/** When to refresh: a minute before expiry, or after two thirds of a shorter lifetime. */
function refreshAt(token) {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    const lifetime = (claims.exp - claims.iat) * 1000;
    return { expires_at: claims.exp * 1000, refresh_at: claims.exp * 1000 - Math.min(EARLY_MS, lifetime / 3) };
  } catch {
    return { expires_at: Date.now() + 60_000, refresh_at: Date.now() + 30_000 };
  }
}

/** A new access token for the refresh cookie (which the server rotates), one tab at a time. */
function exchange() {
  const call = () => request("POST", "/api/auth/refresh", { cookie: true });
  return navigator.locks ? navigator.locks.request(REFRESH_LOCK, call) : call();
}

export class Session extends EventTarget {
  constructor() {
    super();
    this.state = null; // {user, access_token, expires_at, refresh_at}
    this.refreshing = null;
    this.timer = null;
  }

  get user() { return this.state && this.state.user; }
  get active() { return this.state !== null; }

  store(tokens, user) {
    this.state = { user: user || this.user, access_token: tokens.access_token, ...refreshAt(tokens.access_token) };
    this.schedule();
    this.dispatchEvent(new Event("tokens"));
  }

  schedule() {
    clearTimeout(this.timer);
    if (!this.state) return;
    const wait = Math.max(1000, this.state.refresh_at - Date.now());
    this.timer = setTimeout(() => this.refresh().catch(() => {}), wait);
  }

  async login(email, password) {
    const body = await request("POST", "/api/auth/login", { email, password, cookie: true });
    this.store(body, body.user);
    return body.user;
  }

  /** A new patient's or caregiver's account (the app's sign-up), signed in as for a login. */
  async register(fields) {
    const body = await request("POST", "/api/auth/register", { ...fields, cookie: true });
    this.store(body, body.user);
    return body.user;
  }

  /** After a reload: signed in again if the refresh cookie is still good. */
  async resume() {
    try {
      const tokens = await exchange();
      this.store(tokens, await request("GET", "/api/me", undefined, tokens.access_token));
      return true;
    } catch {
      clearTimeout(this.timer);
      this.state = null;
      return false;
    }
  }

  /** A valid access token, refreshed first if it is about to expire. */
  async token() {
    if (!this.state) throw new ApiError(401, { error: { code: "token_missing", message: "Not signed in" } });
    if (this.state.expires_at - Date.now() < 5000) await this.refresh();
    return this.state.access_token;
  }

  refresh() {
    if (!this.refreshing) {
      this.refreshing = (async () => {
        try {
          this.store(await exchange());
        } catch (err) {
          if (err.status === 401) this.end("Your session has ended; please sign in again.");
          throw err;
        } finally {
          this.refreshing = null;
        }
      })();
    }
    return this.refreshing;
  }

  /** A REST call as the signed-in user; a `token_expired` refusal refreshes once and retries. */
  async api(method, path, body) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await request(method, path, body, await this.token());
      } catch (err) {
        if (err.code === "token_expired" && attempt === 0) {
          await this.refresh();
          continue;
        }
        throw err;
      }
    }
  }

  async logout() {
    try { await this.api("POST", "/api/auth/logout"); } catch { /* ending anyway */ }
    this.end("");
  }

  end(reason) {
    clearTimeout(this.timer);
    this.state = null;
    this.dispatchEvent(new CustomEvent("ended", { detail: reason }));
  }

  /** A multipart upload (``FormData``) as the signed-in user. */
  async upload(path, form) {
    return request("POST", path, form, await this.token());
  }

  /** A file the signed-in user may read (an avatar), as a Blob. */
  async blob(path) {
    const resp = await fetch(path, { headers: { Authorization: `Bearer ${await this.token()}` } });
    if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
    return resp.blob();
  }
}

async function request(method, path, body, token) {
  const headers = {};
  const form = body instanceof FormData;
  if (body !== undefined && !form) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(path, { method, headers, body: body === undefined || form ? body : JSON.stringify(body) });
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}
