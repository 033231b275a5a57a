"""``GET /api/v1/metrics``: this process's counters, in Prometheus's text format.

Each server process counts for itself (a scraper sums the replicas). Only counts
and reasons are exposed, never an id or content.
"""

from __future__ import annotations

from typing import get_args

from litestar import get

from api.http.auth import needs
from api.http.deps import IntegrityAlarmDep
from archiver.identity.services import Permission
from archiver.records.services import Reason

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@get(
    "/api/v1/metrics",
    opt=needs(Permission.METRICS_READ),
    media_type=PROMETHEUS_TEXT,
    tags=["health"],
    sync_to_thread=False,
)
def metrics(integrity_alarm: IntegrityAlarmDep) -> str:
    """Counters for alerting: records and media files that failed their integrity
    check when read, by reason, since this process started."""
    counts = integrity_alarm.counts
    lines = [
        "# HELP strongroom_integrity_failures_total Records and media files that failed"
        " their integrity check when read, by reason.",
        "# TYPE strongroom_integrity_failures_total counter",
        *(
            f'strongroom_integrity_failures_total{{reason="{reason}"}} {counts[reason]}'
            for reason in get_args(Reason)
        ),
    ]
    return "\n".join(lines) + "\n"
