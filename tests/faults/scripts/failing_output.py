"""Case 9: an output that refuses lines.

argv: output (``/dev/full``, ``stdout``...), delivery (inline, background,
plain: no enricher, structlog writes on the calling thread).
env: EVENTS (1000), DROP_REPORT_INTERVAL (10), SHUTDOWN_TIMEOUT (10),
CLOSE_STDOUT (``1``: close
``sys.stdout`` before configuring; ``after``: close it after configuring).

The summary goes to stderr (stdout may be the failing output): logged, what
raised, report, metrics, seconds spent logging and shutting down.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from _harness import arg, env_float, env_int, plain, summary

from enrichlog import AsyncEnricher, configure_logging, get_logger

output, delivery = arg(1), arg(2, "background")
events = env_int("EVENTS", 1000)

if os.environ.get("CLOSE_STDOUT") == "1":
    sys.stdout.close()


class Tag(AsyncEnricher):
    name = "tag"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        event_dict["tag"] = True
        return event_dict


raised: list[str] = []
container = configure_logging(
    enrichers=[] if delivery == "plain" else [Tag()],
    output=output,
    delivery="inline" if delivery == "plain" else delivery,
    drop_report_interval=env_float("DROP_REPORT_INTERVAL", 10.0),
    shutdown_timeout=env_float("SHUTDOWN_TIMEOUT", 10.0),
)
log = get_logger()
if os.environ.get("CLOSE_STDOUT") == "after":
    sys.stdout.close()
started = time.monotonic()
for i in range(events):
    try:
        log.info("e", i=i)
    except Exception as exc:
        raised.append(type(exc).__name__)
try:
    container.flush(env_float("FLUSH_TIMEOUT", 30.0))
except Exception as exc:
    raised.append(f"flush: {type(exc).__name__}")
logging_seconds = time.monotonic() - started
metrics = plain(container.metrics())
report: dict[str, Any] = {}
shutdown_started = time.monotonic()
try:
    report = dict(container.shutdown())
except Exception as exc:
    raised.append(f"shutdown: {type(exc).__name__}")
shutdown_seconds = time.monotonic() - shutdown_started
seconds = time.monotonic() - started
summary(
    to_stderr=True,
    logged=events,
    raised=raised,
    report=report,
    metrics_written=metrics["written"],
    metrics_write_failed=metrics["write_failed"],
    logging_seconds=logging_seconds,
    shutdown_seconds=shutdown_seconds,
    seconds=seconds,
)
