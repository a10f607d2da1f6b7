"""The log's format, set once at start-up (``healthmate`` commands): a record is one line, so a client
cannot forge log lines.

Messages carry strings clients chose (a path, a Socket.IO session id in a query, a device's event name, an
exception's text about their input). Every control character in a record's message, arguments included
(C0 and C1, DEL, and the Unicode line and paragraph separators), is escaped (``\\n``, ``\\x1b``,
``\\u2028``) by the records themselves (the log record factory), so whichever handler writes them; and
a traceback's lines are indented, so that only a record's first line starts at the margin. The Socket.IO
libraries, which would add a handler of their own, log through the root's.
"""

from __future__ import annotations

import logging
import re
import textwrap
from types import TracebackType

CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def escape_controls(text: str) -> str:
    return CONTROLS.sub(lambda m: NAMED.get(m.group(), m.group().encode("unicode_escape").decode()), text)


class OneLineRecord(logging.LogRecord):
    def getMessage(self) -> str:
        return escape_controls(super().getMessage())


class OneLineFormatter(logging.Formatter):
    def formatException(self, ei: ExcInfo) -> str:
        return textwrap.indent(super().formatException(ei), "    ", lambda _: True)


def setup_logging(level: str) -> None:
    """Every record's message on one line; the root logger's one handler (stderr) writes them."""
    logging.setLogRecordFactory(OneLineRecord)
    for name in ("engineio.server", "socketio.server"):  # errors only, as they set, but no handler of their own
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.basicConfig(level=level, format=FORMAT, force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(OneLineFormatter(FORMAT))
