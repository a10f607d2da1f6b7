// The profile: name, time zone, language and picture (an upload, then `PATCH /api/me`), the password,
// notifications on this device (Web Push), and signing out.

import { $, el } from "/static/dom.js";
import { enablePush } from "/app/push.js";
import { busy } from "/app/ui.js";

export class Profile {
  constructor(ctx) {
    this.ctx = ctx;
    this.avatarUrl = null;
    $("profile-form").addEventListener("submit", (e) => {
      e.preventDefault();
      busy($("pf-save"), () => this.save(), ctx.fail);
    });
    $("password-form").addEventListener("submit", (e) => {
      e.preventDefault();
      busy($("pw-save"), () => this.password(), ctx.fail);
    });
    $("pf-avatar-file").addEventListener("change", (e) => {
      const file = e.target.files[0];
      if (file) busy(e.target, () => this.avatar(file), ctx.fail);
    });
    $("push-btn").addEventListener("click", (e) => busy(e.currentTarget, async () => {
      $("push-status").textContent = await enablePush(ctx);
    }, ctx.fail));
    const zones = Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : [];
    $("pf-tz-list").replaceChildren(...zones.map((z) => el("option", { value: z })));
  }

  async open() {
    delete $("profile-form").dataset.loaded;
    this.ctx.show("profile-view");
    try {
      this.fill(await this.ctx.session.api("GET", "/api/me"));
    } catch (err) {
      this.ctx.fail(err);
    }
  }

  fill(me) {
    $("pf-name").value = me.name || "";
    $("pf-tz").value = me.timezone || Intl.DateTimeFormat().resolvedOptions().timeZone;
    $("pf-lang").value = me.language || "en";
    this.showAvatar(me.avatar_id);
    $("profile-form").dataset.loaded = "true";
  }

  async save() {
    const me = await this.ctx.session.api("PATCH", "/api/me", {
      name: $("pf-name").value.trim(), timezone: $("pf-tz").value.trim() || null, language: $("pf-lang").value });
    this.fill(me);
    for (const n of document.querySelectorAll(".me-name")) n.textContent = me.name;
    this.ctx.toast("Your profile is saved.");
  }

  async password() {
    await this.ctx.session.api("POST", "/api/me/password", {
      current_password: $("pw-current").value, new_password: $("pw-new").value });
    $("password-form").reset();
    this.ctx.toast("Your password is changed.");
  }

  async avatar(file) {
    const form = new FormData();
    form.append("purpose", "avatar");
    form.append("file", file);
    const upload = await this.ctx.session.upload("/api/uploads", form);
    this.fill(await this.ctx.session.api("PATCH", "/api/me", { avatar_id: upload.id }));
    $("pf-avatar-file").value = "";
  }

  async showAvatar(id) {
    if (this.avatarUrl) URL.revokeObjectURL(this.avatarUrl);
    this.avatarUrl = null;
    $("pf-avatar").hidden = !id;
    if (!id) return;
    try {
      this.avatarUrl = URL.createObjectURL(await this.ctx.session.blob(`/api/uploads/${id}`));
      $("pf-avatar").src = this.avatarUrl;
    } catch {
      $("pf-avatar").hidden = true;
    }
  }

  reset() {
    $("profile-form").reset();
    $("push-status").textContent = "";
    this.showAvatar(null);
  }
}
