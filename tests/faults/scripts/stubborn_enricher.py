"""Case 1: enrichers that ignore their cancellation, in background delivery.

argv: output path, mode (``swallow``: catches CancelledError and keeps
awaiting; ``finally``: its ``finally:`` awaits ``FINALLY_SECONDS``).
env: EVENTS (1000), STUBBORN_EVERY (every n-th event is stubborn; 100),
TIMEOUT (0.2), SHUTDOWN_TIMEOUT (3), FINALLY_SECONDS (3).

Logs EVENTS events; event i is stubborn when i % STUBBORN_EVERY == 0. Then
logs one stubborn event followed by one ordinary event and times the flush
(how long after its deadline the stubborn call was given up). Summary:
logged, lines written, the stubborn field seen, reasons, metrics, report,
shutdown duration.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _harness import arg, count_lines, env_float, env_int, plain, read_json_lines, summary

from enrichlog import AsyncEnricher, configure_logging, get_logger

output, mode = arg(1), arg(2, "swallow")
events = env_int("EVENTS", 1000)
every = env_int("STUBBORN_EVERY", 100)
timeout = env_float("TIMEOUT", 0.2)
shutdown_timeout = env_float("SHUTDOWN_TIMEOUT", 3.0)
finally_seconds = env_float("FINALLY_SECONDS", 3.0)
cached = env_int("CACHED", 0) == 1
drain_at_once = env_int("DRAIN_AT_ONCE", 0) == 1


class Stubborn(AsyncEnricher):
    name = "stubborn"

    if cached:

        def cache_key(self, event_dict: Any) -> Any:
            return event_dict.get("i")

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        if not event_dict.get("stubborn"):
            event_dict["stubborn_field"] = "fast"
            return event_dict
        if mode == "swallow":
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # ignores every cancellation
                try:
                    await asyncio.sleep(deadline - time.monotonic())
                except asyncio.CancelledError:
                    continue
        else:
            try:
                await asyncio.sleep(30)
            finally:
                await asyncio.sleep(finally_seconds)
        event_dict["stubborn_field"] = "late"
        return event_dict


class Quick(AsyncEnricher):
    name = "quick"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        event_dict["quick"] = True
        return event_dict


container = configure_logging(
    enrichers=[Stubborn(timeout=timeout, failure_threshold=1_000_000), Quick()],
    output=output,
    delivery="background",
    shutdown_timeout=shutdown_timeout,
)
log = get_logger()

for i in range(events):
    log.info("e", i=i, stubborn=i % every == 0)
if drain_at_once:
    # Shut down with the stubborn calls still in flight.
    logged = events
    metrics = plain(container.metrics())
    shutdown_started = time.monotonic()
    report = container.shutdown()
    shutdown_seconds = time.monotonic() - shutdown_started
    lines = read_json_lines(output)
    summary(
        logged=logged,
        lines=count_lines(output),
        distinct=len({line["i"] for line in lines}),
        stubborn_reasons=sorted(
            {
                str((line.get("enrichment_errors") or {}).get("stubborn"))
                for line in lines
                if line["stubborn"]
            }
        ),
        report=dict(report),
        shutdown_seconds=shutdown_seconds,
        shutdown_timeout=shutdown_timeout,
    )
    raise SystemExit(0)
first_flush = container.flush(60)

# One stubborn event, then an ordinary one: how late is the pair written?
started = time.monotonic()
log.info("e", i=events, stubborn=True)
log.info("e", i=events + 1, stubborn=False)
pair_flushed = container.flush(timeout + 5.0)
pair_seconds = time.monotonic() - started
logged = events + 2
stubborn_logged = sum(1 for i in range(events) if i % every == 0) + 1

# Through the cache an event stops waiting for the call it shares at the
# call's deadline plus the grace, by a timer of its own; the call is counted
# abandoned by the enricher's timer, which a loaded machine may run a moment
# later: the counts settle once it has.
settled = time.monotonic() + 3.0
while (
    container.metrics()["enrichers"]["stubborn"]["abandoned"] < stubborn_logged
    and time.monotonic() < settled
):
    time.sleep(0.01)
metrics = plain(container.metrics())
shutdown_started = time.monotonic()
report = container.shutdown()
shutdown_seconds = time.monotonic() - shutdown_started

lines = read_json_lines(output)
stubborn_lines = [line for line in lines if line["stubborn"]]
summary(
    logged=logged,
    stubborn_logged=stubborn_logged,
    lines=count_lines(output),
    distinct=len({line["i"] for line in lines}),
    first_flush=first_flush,
    pair_flushed=pair_flushed,
    pair_seconds=pair_seconds,
    late_after_deadline=pair_seconds - timeout,
    stubborn_fields=sorted({str(line.get("stubborn_field")) for line in stubborn_lines}),
    stubborn_reasons=sorted(
        {str((line.get("enrichment_errors") or {}).get("stubborn")) for line in stubborn_lines}
    ),
    quick_fields=sorted({str(line.get("quick")) for line in lines}),
    fast_fields=sorted({str(line.get("stubborn_field")) for line in lines if not line["stubborn"]}),
    metrics_abandoned=metrics["abandoned"],
    enricher_abandoned=metrics["enrichers"]["stubborn"]["abandoned"],
    enricher_calls=metrics["enrichers"]["stubborn"]["calls"],
    enricher_calls_timed=metrics["enrichers"]["stubborn"]["latency"]["count"],
    report=dict(report),
    shutdown_seconds=shutdown_seconds,
    shutdown_timeout=shutdown_timeout,
)
