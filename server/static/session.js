// The login session: tokens in memory and sessionStorage (this tab only), refreshed before they
// expire and whenever the server says `token_expired`; refresh tokens rotate, so a refresh is
// single-flight (two concurrent ones would look like a stolen token and end the session).

const KEY = "healthmate.session";
const EARLY_MS = 60_000; // refresh this long before the access token expires

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

export class Session extends EventTarget {
  constructor() {
    super();
    this.state = null; // {user, access_token, refresh_token, expires_at}
    this.refreshing = null;
    this.timer = null;
    const saved = sessionStorage.getItem(KEY);
    if (saved) {
      try {
        this.state = JSON.parse(saved);
        this.schedule();
      } catch {
        sessionStorage.removeItem(KEY);
      }
    }
  }

  get user() { return this.state && this.state.user; }
  get active() { return this.state !== null; }

  store(tokens, user) {
    this.state = { user: user || this.user, access_token: tokens.access_token, refresh_token: tokens.refresh_token,
                   ...refreshAt(tokens.access_token) };
    sessionStorage.setItem(KEY, JSON.stringify(this.state));
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
    const body = await request("POST", "/api/auth/login", { email, password });
    this.store(body, body.user);
    return body.user;
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
          const body = await request("POST", "/api/auth/refresh", { refresh_token: this.state.refresh_token });
          this.store(body);
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
    sessionStorage.removeItem(KEY);
    this.dispatchEvent(new CustomEvent("ended", { detail: reason }));
  }
}

async function request(method, path, body, token) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}
