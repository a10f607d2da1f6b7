"""The call state machine: states, the actions that move a call between them, why a call ended,
and the two glare rules (crossing invites, crossing offers). Pure: no I/O, no clock.

    ringing --accept--> active --drop--> reconnecting --resume--> active
    ringing --reject | cancel | timeout | drop | busy | revoke--> ended
    active | reconnecting --hangup | revoke--> ended;  reconnecting --grace_expired--> ended
    active --renegotiate | resume | join | leave | consent--> active (recorded, state unchanged)

A caller's socket dropping while it rings ends the call (nobody is left to answer to); a
participant's socket dropping in a connected call starts a grace period instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CallState(StrEnum):
    RINGING = "ringing"
    ACTIVE = "active"
    RECONNECTING = "reconnecting"
    ENDED = "ended"


class Action(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    CANCEL = "cancel"
    TIMEOUT = "timeout"
    HANGUP = "hangup"
    DROP = "drop"
    RESUME = "resume"
    GRACE_EXPIRED = "grace_expired"
    RENEGOTIATE = "renegotiate"
    BUSY = "busy"
    JOIN = "join"  # a third party (a clinician) joins through the server's media relay
    LEAVE = "leave"
    CONSENT = "consent"  # a participant gives or withdraws consent to recording
    REVOKE = "revoke"  # the care-team link between the two ended


S, A = CallState, Action
TRANSITIONS: dict[tuple[CallState, Action], CallState] = {
    (S.RINGING, A.ACCEPT): S.ACTIVE,
    (S.RINGING, A.REJECT): S.ENDED,
    (S.RINGING, A.CANCEL): S.ENDED,
    (S.RINGING, A.TIMEOUT): S.ENDED,
    (S.RINGING, A.DROP): S.ENDED,
    (S.RINGING, A.BUSY): S.ENDED,
    (S.ACTIVE, A.HANGUP): S.ENDED,
    (S.ACTIVE, A.DROP): S.RECONNECTING,
    (S.ACTIVE, A.RESUME): S.ACTIVE,
    (S.ACTIVE, A.RENEGOTIATE): S.ACTIVE,
    (S.ACTIVE, A.JOIN): S.ACTIVE,
    (S.ACTIVE, A.LEAVE): S.ACTIVE,
    (S.RECONNECTING, A.LEAVE): S.RECONNECTING,
    (S.ACTIVE, A.CONSENT): S.ACTIVE,
    (S.RECONNECTING, A.CONSENT): S.RECONNECTING,
    (S.RECONNECTING, A.DROP): S.RECONNECTING,
    (S.RECONNECTING, A.RESUME): S.ACTIVE,
    (S.RECONNECTING, A.HANGUP): S.ENDED,
    (S.RECONNECTING, A.GRACE_EXPIRED): S.ENDED,
    (S.RINGING, A.REVOKE): S.ENDED,
    (S.ACTIVE, A.REVOKE): S.ENDED,
    (S.RECONNECTING, A.REVOKE): S.ENDED,
}
# Why a call ended, by the action that ended it (and the state it was in).
END_REASONS: dict[tuple[CallState, Action], str] = {
    (S.RINGING, A.REJECT): "rejected",
    (S.RINGING, A.CANCEL): "cancelled",
    (S.RINGING, A.TIMEOUT): "missed",
    (S.RINGING, A.DROP): "cancelled",
    (S.RINGING, A.BUSY): "busy",  # the callee's line was taken: recorded, never rang
    (S.ACTIVE, A.HANGUP): "hangup",
    (S.RECONNECTING, A.HANGUP): "hangup",
    (S.RECONNECTING, A.GRACE_EXPIRED): "connection_lost",
    (S.RINGING, A.REVOKE): "link_revoked",
    (S.ACTIVE, A.REVOKE): "link_revoked",
    (S.RECONNECTING, A.REVOKE): "link_revoked",
}
LIVE_STATES = frozenset({S.RINGING, S.ACTIVE, S.RECONNECTING})


class InvalidTransition(Exception):
    def __init__(self, state: CallState, action: Action) -> None:
        super().__init__(f"cannot {action} a call that is {state}")
        self.state = state
        self.action = action


def next_state(state: CallState, action: Action) -> CallState:
    """The state ``action`` leads to from ``state``; ``InvalidTransition`` if it is not allowed."""
    try:
        return TRANSITIONS[(state, action)]
    except KeyError:
        raise InvalidTransition(state, action) from None


def end_reason(state: CallState, action: Action) -> str | None:
    """Why the call ends if ``action`` is applied in ``state`` (None if it does not end it)."""
    return END_REASONS.get((state, action))


def after_resume(state: CallState, still_dropped: int) -> CallState:
    """A participant came back: the call is active again only once nobody else is still away."""
    target = next_state(state, Action.RESUME)
    return CallState.RECONNECTING if still_dropped else target


# --- glare ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveCall:
    """What the invite rule needs to know of a call one of the two users is already in."""

    caller: str
    callee: str
    state: CallState


def resolve_invite(caller: str, callee: str, blocking: LiveCall | None) -> str:
    """Decide an invite from ``caller`` to ``callee`` given the live call holding either of them.

    ``"place"``: nobody is in a call, ring the callee. ``"glare"``: the callee is at this moment
    ringing the caller, so both want the same conversation: the invite answers that call instead of
    placing a second one. ``"caller_busy"``/``"busy"``: the caller or the callee is in another call.
    """
    if blocking is None:
        return "place"
    if blocking.state == CallState.RINGING and blocking.caller == callee and blocking.callee == caller:
        return "glare"
    return "caller_busy" if caller in (blocking.caller, blocking.callee) else "busy"


def resolve_offer(pending_from: str | None, sender: str, caller: str) -> bool:
    """May ``sender``'s SDP offer go through while ``pending_from``'s offer awaits its answer?

    Crossing offers (both sides renegotiate at once) are settled as in the WebRTC "perfect
    negotiation" pattern: the caller is the impolite peer and its offer wins; the callee's is
    refused with ``glare`` and the callee rolls back and answers the caller's offer."""
    if pending_from is None or pending_from == sender:
        return True
    return sender == caller
