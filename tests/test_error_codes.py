"""One error registry (server/core/error_codes.py): every code the code can send is declared there, with the
status it is sent with. Codes seen in traffic are checked by the contract fixture (tests/contract.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from server.core.error_codes import ERRORS
from server.core.errors import ApiError, error_body

ROOT = Path(__file__).resolve().parent.parent
# Calls whose first argument is an error code, and where the status is given (position or keyword).
CODE_CALLS = {"ApiError": 2, "error_body": None, "FrameError": None, "_refuse": None}


def _literal_codes() -> list[tuple[str, str, int | None]]:
    """(where, code, status) for every literal code passed to the code-taking calls, and every literal
    ``code=`` keyword (the throttles' and ``unauthorized``'s)."""
    found = []
    for package in ("server", "devices", "media", "signaling"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            subclasses = {path.stem for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                          and any(getattr(b, "id", "") == "ApiError" for b in c.bases)}
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                if name == "unauthorized" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                    found.append((where, node.args[1].value, 401))
                for kw in node.keywords:
                    if kw.arg == "code" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                        found.append((where, kw.value.value, None))
                if name == "__init__" and path.stem in subclasses and node.args and \
                        isinstance(node.args[0], ast.Constant):  # an ApiError subclass's own code
                    found.append((where, node.args[0].value, None))
                if name not in CODE_CALLS:
                    continue
                args = node.args[3:] if name == "_refuse" else node.args
                if not args or not isinstance(args[0], ast.Constant):
                    continue
                pos = CODE_CALLS[name]
                status = node.args[pos] if pos is not None and len(node.args) > pos else None
                found.append((where, args[0].value,
                              status.value if isinstance(status, ast.Constant) else None))
    return found


def test_every_code_in_the_source_is_declared_with_its_status() -> None:
    found = _literal_codes()
    assert len(found) > 100
    undeclared = [(w, c) for w, c, _ in found if c not in ERRORS]
    assert undeclared == []
    wrong = [(w, c, s) for w, c, s in found if s is not None and s not in ERRORS[c].statuses]
    assert wrong == []


def test_every_declared_code_says_what_to_do() -> None:
    for e in ERRORS.values():
        assert e.meaning and e.action and 400 <= e.status < 600, e


def test_an_undeclared_code_or_status_is_refused() -> None:
    with pytest.raises(ValueError):
        ApiError("no_such_code", "x")
    with pytest.raises(ValueError):
        ApiError("not_found", "x", 409)
    with pytest.raises(ValueError):
        error_body("no_such_code", "x")
    assert ApiError("not_found", "x").status == 404 and ApiError("busy", "x", 409).status == 409
