// Organisations on the dashboard: an admin's panel (invite a clinician by email and see the link, the members and
// pending invitations, suspend or reinstate a member, revoke an invitation) and the page an invitation link opens
// (`/#invitation=<token>`: the token stays in the fragment, which the browser sends to no server).

import { $, clock, el } from "/static/dom.js";

/** The invitation token in the page's URL fragment, if any. */
export function invitationToken() {
  const token = new URLSearchParams(location.hash.slice(1)).get("invitation");
  return token && /^[A-Za-z0-9_-]{16,128}$/.test(token) ? token : null;
}

const forgetToken = () => history.replaceState(null, "", location.pathname);

export class OrgPanel {
  constructor(session) {
    this.session = session;
    this.orgs = []; // the organisations the user administers
    $("org-btn").addEventListener("click", () => this.show());
    $("invite-form").addEventListener("submit", (e) => { e.preventDefault(); this.invite(); });
    $("join-form").addEventListener("submit", (e) => { e.preventDefault(); this.signUp(); });
    $("join-accept").addEventListener("click", () => this.acceptAsMe());
    $("join-signin").addEventListener("click", () => { // signed in, the invitation is offered to accept
      $("join-view").hidden = true;
      $("login-view").hidden = false;
    });
  }

  get org() { return this.orgs.find((o) => o.id === $("org-select").value) || this.orgs[0]; }

  /** Signed in: find the organisations this user administers; a pending invitation link is offered. */
  async start() {
    try {
      const { items } = await this.session.api("GET", "/api/orgs");
      this.orgs = items.filter((m) => m.role === "admin" && m.status === "active").map((m) => m.org);
    } catch (err) {
      this.orgs = [];
    }
    $("org-select").replaceChildren(...this.orgs.map((o) => el("option", { value: o.id }, o.name)));
    $("org-select").hidden = this.orgs.length < 2;
    $("org-btn").hidden = this.orgs.length === 0;
    const token = invitationToken();
    if (token) {
      this.pending = token;
      $("join-me").textContent = this.session.user ? this.session.user.email : "";
      $("join-banner").hidden = false;
    }
  }

  reset() {
    this.orgs = [];
    this.pending = null;
    $("join-accept").hidden = false;
    $("org-btn").hidden = true;
    $("org-view").hidden = true;
    $("join-banner").hidden = true;
    $("members").replaceChildren();
    $("invitations").replaceChildren();
    $("invite-result").hidden = true;
  }

  hide() { $("org-view").hidden = true; }

  show() {
    $("placeholder").hidden = true;
    $("patient-view").hidden = true;
    $("org-view").hidden = false;
    $("org-name").textContent = this.org ? this.org.name : "";
    this.load();
  }

  async load() {
    const org = this.org;
    if (!org) return;
    try {
      const { members, invitations } = await this.session.api("GET", `/api/orgs/${org.id}/members`);
      $("members").replaceChildren(...members.map((m) => this.memberRow(org, m)));
      $("invitations").replaceChildren(...invitations.map((i) => this.invitationRow(org, i)));
      $("invitations-empty").hidden = invitations.length > 0;
    } catch (err) {
      $("org-error").textContent = err.message;
    }
  }

  memberRow(org, m) {
    const me = this.session.user && this.session.user.id === m.user_id;
    const action = m.status === "active" ? "suspend" : "reinstate";
    const button = me ? null : el("button", { class: `small-btn ${action === "suspend" ? "danger" : ""}` },
      action === "suspend" ? "Suspend" : "Reinstate");
    if (button) {
      button.addEventListener("click", () => this.act("POST", `/api/orgs/${org.id}/members/${m.user_id}/${action}`));
    }
    return el("li", { class: `member status-${m.status}`, "data-id": m.user_id },
      el("span", { class: "grow" }, el("strong", {}, m.name || "–"), " ", el("span", { class: "muted" }, m.email || "")),
      el("span", { class: "chip" }, m.role), el("span", { class: "muted small" }, m.status), button);
  }

  invitationRow(org, i) {
    const revoke = el("button", { class: "small-btn" }, "Revoke");
    revoke.addEventListener("click", () => this.act("DELETE", `/api/orgs/${org.id}/invitations/${i.id}`));
    return el("li", { class: "invitation" },
      el("span", { class: "grow" }, i.email), el("span", { class: "chip" }, i.role),
      el("span", { class: "muted small" }, `until ${clock(i.expires_at)}`), revoke);
  }

  async act(method, path) {
    $("org-error").textContent = "";
    try {
      await this.session.api(method, path);
    } catch (err) {
      $("org-error").textContent = err.message;
    }
    this.load();
  }

  async invite() {
    $("org-error").textContent = "";
    $("invite-result").hidden = true;
    try {
      const body = { email: $("invite-email").value, role: $("invite-role").value };
      const sent = await this.session.api("POST", `/api/orgs/${this.org.id}/invitations`, body);
      $("invite-link").value = sent.link;
      $("invite-mailed").textContent = sent.mailed ? `Mailed to ${sent.invitation.email}.`
        : "Not mailed: give this link to them yourself.";
      $("invite-result").hidden = false;
      $("invite-email").value = "";
      this.load();
    } catch (err) {
      $("org-error").textContent = err.message;
    }
  }

  /** Not signed in, with an invitation link: the sign-up form; `done()` once the account is made. */
  showSignUp(done) {
    this.done = done;
    $("join-view").hidden = false;
    $("join-email").focus();
  }

  async signUp() {
    $("join-error").textContent = "";
    try {
      const body = await fetch("/api/invitations/accept", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: invitationToken(), email: $("join-email").value, name: $("join-name").value,
                               password: $("join-password").value, cookie: true }),
      }).then(async (r) => ({ ok: r.ok, data: await r.json() }));
      if (!body.ok) throw new Error(body.data.error.code === "account_exists"
        ? "You have an account: sign in, then open the invitation link again." : body.data.error.message);
      $("join-password").value = "";
      $("join-view").hidden = true;
      forgetToken();
      this.session.store(body.data, body.data.user);
      this.done();
    } catch (err) {
      $("join-error").textContent = err.message;
    }
  }

  /** Signed in with an invitation link: accept it as this account (it must be the invited email). */
  async acceptAsMe() {
    $("join-accept").hidden = true;
    try {
      const joined = await this.session.api("POST", "/api/invitations/accept", { token: this.pending });
      $("join-text").textContent = `You joined ${joined.org.name}. Sign out and in again to act as a verified clinician.`;
    } catch (err) {
      $("join-text").textContent = err.message;
    }
    this.pending = null;
    forgetToken();
  }
}
