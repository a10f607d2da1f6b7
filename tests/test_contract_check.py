"""The traffic check itself (tests/contract.py): it refuses what the contract does not say."""

from __future__ import annotations

from tests.contract import CONTRACT

REFUSAL = {"ok": False, "error": {"code": "not_found", "message": "No such alert", "details": {}}}
PING = {"ok": True, "data": {"t": 1.5, "server_time_ms": 1700000000000.0}}


def _violations(check: object) -> list[str]:
    CONTRACT.take_violations()
    check()  # type: ignore[operator]
    return CONTRACT.take_violations()


def test_what_the_contract_says_passes() -> None:
    assert _violations(lambda: CONTRACT.ack("sys:ping", PING)) == []
    assert _violations(lambda: CONTRACT.ack("alert:get", REFUSAL)) == []
    assert _violations(lambda: CONTRACT.response("GET", "/api/alerts/x", 404, "application/json",
                                                 {"error": REFUSAL["error"]})) == []


def test_an_unknown_field_a_wrong_type_or_an_undeclared_code_fails() -> None:
    extra = {"ok": True, "data": {**PING["data"], "debug": 1}}
    wrong = {"ok": True, "data": {"t": "1.5", "server_time_ms": 1.0}}
    code = {"ok": False, "error": {**REFUSAL["error"], "code": "no_such_code"}}
    for reply in (extra, wrong, code, {"ok": True}):
        assert len(_violations(lambda r=reply: CONTRACT.ack("sys:ping", r))) == 1, reply
    assert _violations(lambda: CONTRACT.push("sys:surprise", {}))  # not a documented pushed event
    assert _violations(lambda: CONTRACT.push("bp:deleted", {"id": "x"}))  # patient_id missing
    assert _violations(lambda: CONTRACT.response("GET", "/healthz", 200, "application/json", {"status": "ok"}))
    assert _violations(lambda: CONTRACT.response("GET", "/healthz", 302, "text/html", b""))  # undocumented status
