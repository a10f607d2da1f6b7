"""Nobody writes lines into the operator's log: a string a client chose that reaches the log (here the
Engine.IO session id of an unauthenticated request, which the Socket.IO library logs as an error) is
written with its control characters escaped, so a newline and a forged record stay inside one line."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from urllib.parse import quote

import aiohttp

from server.core.logs import FORMAT, OneLineFormatter, OneLineRecord
from server.infra.embedded_store import EmbeddedStore
from tests.helpers import process_env, server_processes

FORGED = "2026-01-01 00:00:00,000 INFO server.care.auth: password of admin@clinic.example reset by operator"


async def test_a_forged_line_in_a_client_string_stays_inside_one_line(store: EmbeddedStore, tmp_path: Path) -> None:
    injected = f"nosuchsession\r\n{FORGED}\x1b[2K\u2028"
    async with server_processes(process_env(store.url, tmp_path)) as (server,):
        async with aiohttp.ClientSession() as http:
            url = f"{server.url}/socket.io/?EIO=4&transport=polling&sid={quote(injected)}"
            async with http.get(url) as resp:
                assert resp.status == 400
        for _ in range(100):
            if any("Invalid session" in line for line in server.output):
                break
            await asyncio.sleep(0.05)
    lines = "".join(server.output).splitlines()
    (logged,) = [line for line in lines if "Invalid session" in line]
    assert "nosuchsession\\r\\n" + FORGED + "\\x1b[2K\\u2028" in logged  # all of it, escaped, on the one line
    assert not any(line.startswith(FORGED) for line in lines), lines


def test_a_forged_line_in_an_exception_message_stays_indented_under_its_record() -> None:
    """An exception about a client's input may quote it; its traceback's lines are indented, so the quoted
    line cannot pass for a record of its own."""
    formatter = OneLineFormatter(FORMAT)
    try:
        raise ValueError(f"no such device {'d1' + chr(10) + FORGED}")
    except ValueError:
        record = OneLineRecord("server.x", logging.ERROR, __file__, 1, "event %s failed", ("a\nb",),
                                   sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert lines[0].endswith("ERROR server.x: event a\\nb failed")
    assert all(line.startswith("    ") for line in lines[1:]) and lines[-1] == "    " + FORGED
