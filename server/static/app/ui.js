// What the app's screens share: blood-pressure categories (AHA, with the advice the app shows at once),
// times, and a busy button.

import { el, fmt, humanize } from "/static/dom.js";

export const CATEGORY = {
  normal: ["Normal", "Your blood pressure is normal."],
  elevated: ["Elevated", "A little high: keep an eye on it."],
  hypertension_stage_1: ["High, stage 1", "High blood pressure (stage 1): mention it to your clinician."],
  hypertension_stage_2: ["High, stage 2", "High blood pressure (stage 2): contact your clinician soon."],
  hypertensive_crisis: ["Crisis", "Very high: your care team has been alerted. If you have chest pain, shortness "
                        + "of breath or trouble speaking, call your local emergency number now."],
};

export const bpText = (r) => `${fmt(r.systolic)}/${fmt(r.diastolic)}`;

export const categoryChip = (category) => el("span", { class: `chip cat-${category}` },
  (CATEGORY[category] || [humanize(category)])[0]);

export const time = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
export const dayTime = (iso) => new Date(iso).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" });

/** Runs `work` with `button` disabled; a refusal goes to `fail`. */
export async function busy(button, work, fail) {
  button.disabled = true;
  try {
    return await work();
  } catch (err) {
    fail(err);
    return undefined;
  } finally {
    button.disabled = false;
  }
}

/** Whether the person asked the system for less motion (no pulsing, no smooth scrolling). */
export const calm = () => window.matchMedia("(prefers-reduced-motion: reduce)").matches;
