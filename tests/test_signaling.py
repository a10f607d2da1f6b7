"""The call state machine on its own: every allowed move, every refused one, end reasons, glare."""

from __future__ import annotations

import itertools

import pytest

from signaling.call_state import (
    END_REASONS,
    TRANSITIONS,
    Action,
    CallState,
    InvalidTransition,
    LiveCall,
    after_resume,
    end_reason,
    next_state,
    resolve_invite,
    resolve_offer,
)
from signaling.route_cache import RouteCache


def test_a_call_rings_connects_drops_resumes_and_ends() -> None:
    state = CallState.RINGING
    for action, expected in [(Action.ACCEPT, CallState.ACTIVE), (Action.RENEGOTIATE, CallState.ACTIVE),
                             (Action.JOIN, CallState.ACTIVE), (Action.LEAVE, CallState.ACTIVE),
                             (Action.DROP, CallState.RECONNECTING), (Action.RESUME, CallState.ACTIVE),
                             (Action.HANGUP, CallState.ENDED)]:
        state = next_state(state, action)
        assert state == expected
    assert end_reason(CallState.ACTIVE, Action.HANGUP) == "hangup"


@pytest.mark.parametrize(("action", "reason"), [(Action.REJECT, "rejected"), (Action.CANCEL, "cancelled"),
                                                (Action.TIMEOUT, "missed"), (Action.DROP, "cancelled"),
                                                (Action.BUSY, "busy")])
def test_a_ringing_call_ends_with_its_reason(action: Action, reason: str) -> None:
    assert next_state(CallState.RINGING, action) == CallState.ENDED
    assert end_reason(CallState.RINGING, action) == reason


def test_every_move_not_in_the_table_is_refused() -> None:
    for state, action in itertools.product(CallState, Action):
        if (state, action) in TRANSITIONS:
            continue
        with pytest.raises(InvalidTransition) as info:
            next_state(state, action)
        assert info.value.state == state and info.value.action == action
    # An ended call stays ended; ringing cannot be hung up or resumed; a grace period needs a drop first.
    for action in Action:
        assert (CallState.ENDED, action) not in TRANSITIONS
    assert (CallState.RINGING, Action.HANGUP) not in TRANSITIONS
    assert (CallState.ACTIVE, Action.GRACE_EXPIRED) not in TRANSITIONS
    assert (CallState.RINGING, Action.JOIN) not in TRANSITIONS  # nobody joins a call before it is answered


def test_every_move_into_ended_has_a_reason_and_no_other_does() -> None:
    ending = {key for key, target in TRANSITIONS.items() if target == CallState.ENDED}
    assert ending == set(END_REASONS)


def test_resume_waits_for_everyone_who_dropped() -> None:
    assert after_resume(CallState.RECONNECTING, still_dropped=1) == CallState.RECONNECTING
    assert after_resume(CallState.RECONNECTING, still_dropped=0) == CallState.ACTIVE
    assert after_resume(CallState.ACTIVE, still_dropped=0) == CallState.ACTIVE
    with pytest.raises(InvalidTransition):
        after_resume(CallState.RINGING, still_dropped=0)


def test_crossing_invites_become_one_call() -> None:
    assert resolve_invite("a", "b", None) == "place"
    assert resolve_invite("a", "b", LiveCall("b", "a", CallState.RINGING)) == "glare"
    # The same two people already talking, or the callee busy with someone else: busy.
    assert resolve_invite("a", "b", LiveCall("b", "a", CallState.ACTIVE)) == "caller_busy"
    assert resolve_invite("a", "b", LiveCall("b", "c", CallState.RINGING)) == "busy"
    assert resolve_invite("a", "b", LiveCall("c", "b", CallState.ACTIVE)) == "busy"
    assert resolve_invite("a", "b", LiveCall("a", "c", CallState.RINGING)) == "caller_busy"


def test_crossing_offers_the_caller_wins() -> None:
    assert resolve_offer(None, "callee", caller="caller")
    assert resolve_offer("callee", "callee", caller="caller")  # a re-offer of one's own
    assert resolve_offer("callee", "caller", caller="caller")
    assert not resolve_offer("caller", "callee", caller="caller")


def test_route_cache_never_keeps_a_route_older_than_a_change_it_heard_of() -> None:
    cache = RouteCache(ttl_s=5, max_calls=2)
    cache.put("a", {"rev": 3, "callee_sid": "old"}, now=0)
    assert cache.get("a", now=1) == {"rev": 3, "callee_sid": "old"}
    cache.forget("a", 4)
    assert cache.get("a", now=1) is None
    cache.put("a", {"rev": 3, "callee_sid": "old"}, now=1)  # a read that raced with the change
    assert cache.get("a", now=1) is None
    cache.put("a", {"rev": 4, "callee_sid": "new"}, now=1)
    assert cache.get("a", now=2) == {"rev": 4, "callee_sid": "new"}
    assert cache.get("a", now=6.5) is None  # expired: read again
    cache.put("b", {"rev": 0}, now=7)
    cache.put("c", {"rev": 0}, now=7)  # bounded: the least recently used goes
    assert cache.get("a", now=7) is None and cache.get("c", now=7) == {"rev": 0}
