"""Every error code a client can be told, declared once: its HTTP status (REST; a Socket.IO ack carries the
code alone), what it means and what the client should do. ``ApiError`` refuses a code that is not here, the
documents (``healthmate docs``) and the client guide's table are rendered from this table, and the tests
check every refusal they see against it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int  # the HTTP status REST answers with (and the one an ack's code stands for)
    meaning: str
    action: str  # what the client should do
    also: tuple[int, ...] = ()  # other statuses a few paths answer with (said in ``meaning``)

    @property
    def statuses(self) -> tuple[int, ...]:
        return (self.status, *self.also)


_RETRY = "Wait `details.retry_after_s` (REST: the `Retry-After` header) and retry."
_FIX = "Fix the request (see `message` and `details`); retrying it unchanged fails again."
_LOGIN = "Refresh the access token (`POST /api/auth/refresh`); if that fails too, log in again."

CODES: tuple[ErrorCode, ...] = (
    # --- requests and payloads
    ErrorCode("invalid_payload", 422, "The body or event payload is not valid; `details.problems` lists each "
              "`{field, problem}` (at most 20); nothing changed.", _FIX),
    ErrorCode("invalid_query", 422, "A query parameter is not valid (`details.field` when one is to blame).", _FIX),
    ErrorCode("invalid_json", 400, "The body (or an MQTT message) is not valid JSON.", "Send valid JSON."),
    ErrorCode("invalid_id", 422, "An id is not a valid id (`details.field` names it).", _FIX),
    ErrorCode("invalid_message", 422, "A data-channel message is not one this channel takes.", _FIX),
    ErrorCode("bad_request", 400, "The HTTP request is malformed.", _FIX),
    ErrorCode("unsupported_media_type", 415, "The body's Content-Type is not the one the route takes.",
              "Send `application/json` (uploads: `multipart/form-data`)."),
    ErrorCode("payload_too_large", 413, "The request body is larger than the server accepts.",
              "Send less; the limit is `HEALTHMATE_MAX_BODY_BYTES`."),
    ErrorCode("too_large", 413, "A data-channel message is larger than the channel takes.", "Send smaller messages."),
    ErrorCode("method_not_allowed", 405, "The route does not take this HTTP method (`Allow` lists those it does).",
              "Use a method of the `Allow` header."),
    ErrorCode("not_found", 404, "No such resource, or none the caller may see (`message` names what).",
              "Do not retry; refresh what the client shows."),
    ErrorCode("http_error", 400, "An HTTP-level refusal with no more specific code.", _FIX),
    ErrorCode("unknown_event", 404, "The server has no such Socket.IO event (`details.event`).",
              "Check the event name against the AsyncAPI document."),
    ErrorCode("range_not_satisfiable", 416, "The requested byte range is outside the file (`details.length`).",
              "Ask for a range within `details.length` bytes."),
    # --- authentication and sessions
    ErrorCode("unauthorized", 401, "No access token was sent, or the socket is not authenticated.",
              "Send `Authorization: Bearer <access token>` (Socket.IO: connect with `auth.token`)."),
    ErrorCode("token_missing", 401, "A token is required and none was given.", "Log in, then send the token."),
    ErrorCode("token_invalid", 401, "The token or device credential is not valid (forged, malformed, or for "
              "another purpose).", "Log in again (a device: pair again)."),
    ErrorCode("token_expired", 401, "The token has expired.", _LOGIN),
    ErrorCode("session_revoked", 401, "The session was logged out, its password changed, or the account "
              "removed.", "Log in again."),
    ErrorCode("refresh_token_reused", 401, "A refresh token was used twice: the session is revoked, as the token "
              "may have been stolen.", "Log in again; keep only the newest refresh token."),
    ErrorCode("invalid_credentials", 401, "Email or password is wrong (changing a password: the current password "
              "is wrong, 403).", "Ask the user again; attempts are throttled.", also=(403,)),
    ErrorCode("account_suspended", 403, "The clinician's organisation suspended this account.",
              "Tell the user to ask the organisation's administrator."),
    ErrorCode("device_revoked", 401, "This device's credential was revoked (or the device is not paired).",
              "Stop; the device must be paired again."),
    ErrorCode("invalid_device_id", 422, "The handshake's `device_id` is not 1-64 letters, digits, `_`, `-` or `:`.",
              "Connect with a valid `device_id` (or none)."),
    # --- accounts
    ErrorCode("email_taken", 409, "An account with that email already exists.", "Log in, or use another email."),
    ErrorCode("account_exists", 409, "An account with the invited email exists.",
              "Log in as it, then accept the invitation with its access token."),
    ErrorCode("invalid_email", 422, "Not a valid email address.", "Ask the user for a valid email."),
    ErrorCode("weak_password", 422, "The password is too short, common, or close to the email (`message` says "
              "why).", "Ask the user for another password."),
    ErrorCode("clinician_invite_required", 403, "Clinicians cannot register themselves.",
              "Join through an organisation's invitation (`/api/invitations/accept`)."),
    ErrorCode("role_conflict", 409, "A patient account cannot join an organisation.", "Use another email."),
    # --- organisations
    ErrorCode("invitation_invalid", 410, "The invitation is unknown, used, revoked or expired.",
              "Ask the organisation for a new invitation."),
    ErrorCode("invitation_email_mismatch", 403, "The invitation is for another email address.",
              "Accept it with the invited email."),
    ErrorCode("already_member", 409, "That account is already an active member.", "Nothing to do."),
    ErrorCode("cannot_suspend_self", 409, "An administrator cannot suspend themselves.", "Ask another administrator."),
    ErrorCode("invalid_name", 422, "An organisation's name is 1 to 100 printable characters.", _FIX),
    # --- access and throttles
    ErrorCode("forbidden", 403, "The caller may not do this (not linked to the patient, wrong role, or the event "
              "is not for this kind of client).", "Do not retry; check the user's links and role."),
    ErrorCode("rate_limited", 429, "Too many Socket.IO events on this connection or from this user.", _RETRY),
    ErrorCode("too_many_attempts", 429, "Too many failed logins, password changes, registrations or wrong link "
              "codes in the window.", _RETRY),
    ErrorCode("too_many_requests", 429, "A heavy read of the caller's is still running, or too many began this "
              "minute.", _RETRY),
    ErrorCode("too_many_connections", 429, "Too many Socket.IO connects from this address.", _RETRY),
    ErrorCode("busy", 503, "The server is busy (password hashing queue full, or an MQTT device's queue); for a "
              "call (409) the callee is in another call (`details.call_id`).",
              "Retry after `details.retry_after_s`; for a call, try later.", also=(409,)),
    ErrorCode("store_unavailable", 503, "The data store did not answer; nothing was saved.", _RETRY),
    ErrorCode("not_ready", 503, "A dependency is unavailable (`details.checks`).", "Wait; the operator is told."),
    ErrorCode("internal", 500, "Something went wrong on the server (logged).", "Retry later; report if it persists."),
    ErrorCode("unavailable", 503, "This server process takes no more data-channel devices.",
              "Send frames over Socket.IO (`stream:frame`) instead."),
    # --- care-team links and contacts
    ErrorCode("invalid_code", 404, "The link code is not valid, was already used, or has expired.",
              "Ask the patient for a new code."),
    ErrorCode("too_many_codes", 429, "The patient has too many unused link codes.", "Wait for them to expire."),
    ErrorCode("too_many_contacts", 409, "The patient has as many contacts as allowed.", "Remove one first."),
    ErrorCode("too_many_emergency_contacts", 409, "The patient has as many emergency contacts as allowed "
              "(`details.max`).", "Unmark one first."),
    # --- uploads
    ErrorCode("upload_too_large", 413, "The file is larger than allowed (`details.max_bytes`).",
              "Send a smaller file."),
    ErrorCode("unsupported_image", 415, "Only JPEG, PNG and WebP images are accepted.", "Send one of those."),
    ErrorCode("image_too_large", 422, "The image is larger than allowed on a side (`details.max_dimension`).",
              "Scale it down."),
    ErrorCode("invalid_upload", 422, "That is not one of the caller's uploads of that purpose.", _FIX),
    ErrorCode("not_installed", 503, "The dashboard's npm packages are not installed on the server.",
              "The operator runs `npm ci`."),
    # --- devices and streams
    ErrorCode("already_paired", 409, "The device is already paired (`details.device_id`).", "Revoke it first."),
    ErrorCode("too_many_devices", 409, "The patient has as many paired devices as allowed (`details.max`).",
              "Revoke one first."),
    ErrorCode("wrong_kind", 422, "The device is paired as another kind.", "Send the events of its kind."),
    ErrorCode("unknown_stream", 404, "No open stream with that id for this device.", "Open a stream, then send."),
    ErrorCode("too_many_streams", 409, "The device has as many open streams as allowed (`details.open_streams`).",
              "Close one first."),
    ErrorCode("bad_samples", 422, "A frame's samples do not decode (wrong length for its dtype, or dtype with a "
              "JSON list).", _FIX),
    ErrorCode("empty_frame", 422, "A frame carries no sample.", "Send at least one sample."),
    ErrorCode("frame_too_long", 422, "A frame carries more samples than allowed.", "Split it."),
    ErrorCode("non_finite_samples", 422, "Samples must be finite float32 numbers.", _FIX),
    ErrorCode("invalid_drawer", 422, "The medicine box has no such drawer (`details.drawer`).", _FIX),
    # --- vitals
    ErrorCode("implausible_reading", 422, "The reading's values or time are outside what is plausible "
              "(`details.field`).", "Ask the user to check the reading."),
    ErrorCode("invalid_thresholds", 422, "The alert thresholds contradict each other.", _FIX),
    ErrorCode("not_enough_data", 409, "Too few readings for a forecast (`details.readings`).",
              "Try again once more readings are in."),
    ErrorCode("model_unavailable", 503, "No model of that name is active.", "The operator trains one."),
    ErrorCode("unknown_model", 404, "No model of that name.", _FIX),
    ErrorCode("model_corrupt", 500, "A stored model's bytes do not match its checksum.", "The operator retrains."),
    ErrorCode("no_previous_version", 409, "No earlier active version to roll back to.", "Nothing to do."),
    # --- alerts
    ErrorCode("already_resolved", 409, "The alert is already resolved.", "Refresh the alert."),
    ErrorCode("too_many_alerts", 429, "The patient's on-demand alerts for today are used up (`details."
              "retry_after_s`); no alert was sent.", "In an emergency call the local emergency number now."),
    ErrorCode("unsafe_url", 422, "A URL given (a Web Push endpoint) is not `https` or its host does not resolve, "
              "from the server, only to public internet addresses; `details.reason` is `not_https`, `not_public` or "
              "`malformed`, `details.field` names it.", "Use the endpoint the browser's push service gave; nothing "
              "was stored."),
    ErrorCode("too_many_tokens", 409, "The user has as many push registrations as allowed.",
              "Unregister an old device first."),
    ErrorCode("push_unavailable", 404, "Web Push is not configured on this server (no VAPID key).",
              "Do not offer browser notifications; the app works without them."),
    ErrorCode("conflict", 409, "Someone else changed the same thing at the same moment.", "Reload and retry."),
    # --- medications
    ErrorCode("too_many_medications", 409, "The patient has as many active medications as allowed.",
              "Archive one first."),
    ErrorCode("archived", 409, "The medication is archived.", "Refresh the medication list."),
    ErrorCode("dose_missed", 409, "The dose was already marked missed.", "Refresh the dose list."),
    ErrorCode("not_due_yet", 409, "The dose is not due within the hour (`details.due_at`).", "Wait until it is due."),
    # --- calls
    ErrorCode("already_in_call", 409, "The caller is already in a call (`details.call_id`).", "End it first."),
    ErrorCode("call_full", 409, "The call has as many people as allowed.", "Do not join."),
    ErrorCode("invalid_transition", 409, "The call is not in a state that allows this.", "Refresh the call."),
    ErrorCode("glare", 409, "The other side's offer crossed this one and wins.", "Roll back and answer theirs."),
    ErrorCode("peer_away", 409, "The other side is reconnecting.", "Send it again once `call:peer-resumed` arrives."),
    ErrorCode("not_relayed", 409, "The call's media does not go through the server (any more).", "Do not retry."),
    ErrorCode("media_elsewhere", 409, "The server process holding the call's media is gone or elsewhere.",
              "Retry; if it persists, end the call."),
    ErrorCode("media_timeout", 504, "The server process holding the call's media did not answer.", "Retry."),
    ErrorCode("invalid_sdp", 422, "The SDP offer could not be used.", "Send a valid offer."),
    ErrorCode("recording_in_progress", 409, "The recording is still going on.", "Retry after the call ends."),
    ErrorCode("recording_lost", 410, "The recording was lost: the process making it stopped first.",
              "Nothing to fetch."),
)

ERRORS: dict[str, ErrorCode] = {e.code: e for e in CODES}
assert len(ERRORS) == len(CODES), "an error code is declared twice"
