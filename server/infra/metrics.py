"""The server's Prometheus metrics (prometheus-client), defined once, in its default registry, for every layer
above to count into; ``server/metrics.py`` serves them at ``/metrics``. docs/operations.md (Metrics) lists them.

Every label takes values from a fixed vocabulary (event names registered in the pipeline, error codes written in
the code, route patterns, roles), never from what a client sends: an unknown event counts as ``other``, a URL no
route matches as ``unmatched``, so no client can grow the number of series.

Under ``healthmate serve --workers N`` the values live in files under ``PROMETHEUS_MULTIPROC_DIR`` and a scrape
of any worker adds up all of them; each gauge says how (``multiprocess_mode``: ``livesum`` sums the live workers,
``livemin`` takes the lowest)."""

from __future__ import annotations

import functools
import re
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase

disable_created_metrics()  # no `*_created` series beside each counter and histogram: half the output, unused
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set: every process counts into files there (multiprocess mode)
OTHER = "other"  # the label value of an event name the pipeline does not know
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

CONNECTIONS = Gauge("healthmate_connections", "Socket.IO connections open, by the principal's role", ["role"],
                    multiprocess_mode="livesum")
EVENTS = Counter("healthmate_events", "Events run through the event pipeline (Socket.IO, MQTT, data channel), by "
                 "event name (unknown names: other) and outcome (ok, or the error code acked)", ["event", "outcome"])
HTTP_REQUESTS = Counter("healthmate_http_requests", "HTTP requests answered, by method, route pattern "
                        "(unmatched: no route) and status", ["method", "route", "status"])
STORE_COMMANDS = Counter("healthmate_store_commands", "Store commands sent (PyMongo command monitoring), by command",
                         ["command"])
STORE_UP = Gauge("healthmate_store_up", "1 while the store is reachable as the driver sees it, 0 while not",
                 multiprocess_mode="livemin")
STORE_OUTAGES = Counter("healthmate_store_outages", "Times the store became unreachable (a known server "
                        "turned unknown to the driver)")
STORE_UNAVAILABLE_SECONDS = Counter("healthmate_store_unavailable_seconds", "Seconds the store was unreachable "
                                    "(added at each failed heartbeat and at recovery)")
EMBEDDED_STORE_RESTARTS = Counter(
    "healthmate_embedded_store_restarts", "Times the supervisor restarted an embedded store process, by store (main, "
    "bulk) and why: exited (it crashed or was killed) or hung (running, it stopped answering, and the watchdog ended "
    "it)", ["store", "reason"])
ANALYSIS_LAG = Histogram("healthmate_analysis_lag_seconds", "Streaming analysis: from receiving a frame's samples "
                         "to their analysis being back on the event loop",
                         buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
ANALYSIS_BACKLOG = Gauge("healthmate_analysis_backlog", "Streaming analysis operations queued for the workers "
                         "(sampled each second)", multiprocess_mode="livesum")
STREAMS_OPEN = Gauge("healthmate_streams_open", "Device streams open (sampled each second)",
                     multiprocess_mode="livesum")


@functools.cache
def child(metric: MetricWrapperBase, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once (``labels`` validates and locks on each call, a few µs on a
    path every event takes); the cache is as bounded as the label values."""
    return metric.labels(*labels)


def outcome(ack: dict[str, Any]) -> str:
    """An ack's outcome label: ``ok``, or the error code (codes are written in the code; one that is not
    code-shaped counts as ``other``)."""
    if ack.get("ok"):
        return "ok"
    code = (ack.get("error") or {}).get("code")
    return code if isinstance(code, str) and _CODE.match(code) else OTHER
