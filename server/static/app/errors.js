// Every server refusal as a sentence a person understands, from its error code (never the raw code or a
// stack). A code not listed here gets a general sentence; the server's own message is not shown, as it is
// written for developers.

const MESSAGES = {
  // signing in and accounts
  invalid_credentials: "That email and password don't match. Check them and try again.",
  email_taken: "There is already an account with this email. Sign in instead.",
  account_exists: "There is already an account with this email. Sign in instead.",
  weak_password: "Choose a longer password that is harder to guess: at least 10 characters, not your email.",
  invalid_email: "That email address doesn't look right.",
  invalid_name: "Please enter your name.",
  account_suspended: "This account is suspended. Contact your care organisation.",
  clinician_invite_required: "Clinicians join through their organisation's invitation.",
  too_many_attempts: "Too many tries. Please wait a few minutes and try again.",
  token_missing: "Please sign in.",
  token_invalid: "Your session has ended. Please sign in again.",
  token_expired: "Your session has ended. Please sign in again.",
  session_revoked: "You were signed out. Please sign in again.",
  unauthorized: "Please sign in.",
  // care team
  invalid_code: "That code is not valid or has expired. Ask for a new one.",
  too_many_codes: "Too many codes were made. Please wait a little and try again.",
  already_member: "You are already on this person's care team.",
  role_conflict: "This account cannot be added that way.",
  forbidden: "You don't have access to this.",
  not_found: "That is no longer available.",
  // readings, alerts, medicines
  implausible_reading: "Those numbers don't look like a real reading. Please measure again.",
  invalid_payload: "Some of what you entered isn't valid. Please check it.",
  too_many_alerts: "No more help requests can be sent today. In an emergency, call your local emergency number now.",
  already_resolved: "This alert was already resolved.",
  dose_missed: "This dose was already marked as missed.",
  not_due_yet: "This dose isn't due yet.",
  archived: "This medicine was stopped.",
  // calls
  busy: "They are on another call. Try again later.",
  already_in_call: "You are already in a call.",
  peer_away: "The other person's connection dropped; waiting for them to come back.",
  invalid_transition: "That call has already been answered or ended.",
  glare: "You both called at the same moment. Please try again.",
  // uploads and push
  image_too_large: "That picture is too large. Choose a smaller one.",
  upload_too_large: "That file is too large. Choose a smaller one.",
  unsupported_image: "That picture type isn't supported. Use a JPEG or PNG.",
  invalid_upload: "That file couldn't be used. Try another one.",
  unsafe_url: "This browser's notification service can't be used.",
  push_unavailable: "This server doesn't send notifications to browsers.",
  too_many_tokens: "Notifications are turned on on too many devices. Turn them off on one first.",
  // the service
  rate_limited: "You're going a little fast. Please wait a moment.",
  too_many_requests: "You're going a little fast. Please wait a moment.",
  too_many_connections: "Too many open windows. Close one and try again.",
  store_unavailable: "The service is briefly unavailable. Nothing was saved; please try again in a moment.",
  unavailable: "The service is briefly unavailable. Please try again in a moment.",
  internal: "Something went wrong on our side. Please try again later.",
};

const FIELDS = { systolic: "the upper number", diastolic: "the lower number", pulse: "the pulse",
                 password: "the password", new_password: "the new password", email: "the email",
                 name: "the name", timezone: "the time zone", language: "the language", code: "the code" };

/** The sentence for an error (an ApiError from REST, an ack's error, or a network failure). */
export function explain(err) {
  if (!err) return MESSAGES.internal;
  if (err instanceof TypeError) return "You seem to be offline. Check your connection and try again.";
  const code = err.code || (err.error && err.error.code);
  if (code === "invalid_payload") {
    const problems = (err.details && err.details.problems) || [];
    const fields = [...new Set(problems.map((p) => FIELDS[String(p.field).split(".").pop()]).filter(Boolean))];
    if (fields.length) return `Please check ${fields.join(" and ")}.`;
  }
  if (code && MESSAGES[code]) return MESSAGES[code];
  if (err.message && err.message.endsWith(": no answer")) return "The server didn't answer. Check your connection.";
  return "Something went wrong. Please try again.";
}
