"""Case 6: ``container.shutdown()`` called from inside an enricher.

argv: output path, kind (async, ashutdown, blocking, sync).
env: EVENTS (200).

The enricher calls shutdown on the event marked ``trigger``; afterwards the
application logs more and shuts down itself. Summary: logged, the trigger
line's reasons, whether the container still ran after the trigger, report.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from _harness import arg, count_lines, env_int, read_json_lines, summary

from enrichlog import AsyncEnricher, SyncEnricher, configure_logging, get_logger

output, kind = arg(1), arg(2, "async")
events = env_int("EVENTS", 200)
holder: dict[str, Any] = {}
outcome: list[str] = []


def attempt_shutdown() -> None:
    try:
        holder["container"].shutdown()
        outcome.append("returned")
    except Exception as exc:
        outcome.append(f"{type(exc).__name__}: {exc}")
        raise


class AsyncShutter(AsyncEnricher):
    name = "shutter"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        if event_dict.get("trigger"):
            if kind == "ashutdown":
                try:
                    await holder["container"].ashutdown()
                except Exception as exc:
                    outcome.append(f"{type(exc).__name__}: {exc}")
                    raise
            else:
                attempt_shutdown()
        event_dict["shutter"] = True
        return event_dict


class SyncShutter(SyncEnricher):
    name = "shutter"

    def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        if event_dict.get("trigger"):
            attempt_shutdown()
        event_dict["shutter"] = True
        return event_dict


class Tag(AsyncEnricher):
    name = "tag"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        event_dict["tag"] = True
        return event_dict


if kind in {"async", "ashutdown"}:
    enrichers: list[Any] = [AsyncShutter()]
elif kind == "blocking":
    enrichers = [SyncShutter(blocking=True), Tag()]
else:
    enrichers = [SyncShutter(), Tag()]
container = configure_logging(enrichers=enrichers, output=output, delivery="background")
holder["container"] = container
log = get_logger()

started = time.monotonic()
for i in range(events):
    log.info("e", i=i, trigger=i == events // 2)
container.flush(10)
running_after_trigger = container.running
for i in range(events, 2 * events):
    log.info("e", i=i, trigger=False)
report = container.shutdown(timeout=10)
seconds = time.monotonic() - started

lines = read_json_lines(output)
trigger = [line for line in lines if line.get("trigger")]
summary(
    logged=2 * events,
    lines=count_lines(output),
    distinct=len({line["i"] for line in lines}),
    outcome=outcome,
    trigger_errors=[line.get("enrichment_errors") for line in trigger],
    running_after_trigger=running_after_trigger,
    report=dict(report),
    seconds=seconds,
    threads=[t.name for t in threading.enumerate()],
)
