"""Case 7: KeyboardInterrupt, SystemExit and other BaseExceptions raised in
enrichers.

argv: output path, scenario, delivery (inline, background).
Scenarios:
  sigint     a real SIGINT (os.kill from a timer thread) while the main
             thread's log call runs a slow sync enricher;
  sysexit    a sync enricher raises SystemExit;
  kbint      a sync enricher raises KeyboardInterrupt;
  base       a sync enricher raises a BaseException subclass of our own;
  async-kbint, async-sysexit    an async enricher raises them;
  blocking-kbint, blocking-sysexit    a blocking=True sync enricher does.
The main thread logs "before", the event that raises ("boom"), then
"after"; what reached the application is recorded. Summary: logged,
caught, lines, the boom line's fields, runtime still working.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

from _harness import arg, count_lines, read_json_lines, summary

from enrichlog import AsyncEnricher, SyncEnricher, configure_logging, get_logger

output, scenario, delivery = arg(1), arg(2, "sigint"), arg(3, "inline")


class OwnBaseError(BaseException):
    """Neither Exception, KeyboardInterrupt nor SystemExit."""


def to_raise() -> BaseException:
    if scenario.endswith("sysexit"):
        return SystemExit(3)
    if scenario.endswith("kbint"):
        return KeyboardInterrupt()
    return OwnBaseError("own")


class SlowSync(SyncEnricher):
    name = "slow"

    def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        if event_dict["event"] == "boom":
            if scenario == "sigint":
                time.sleep(2.0)  # SIGINT arrives meanwhile
            else:
                raise to_raise()
        event_dict["slow"] = True
        return event_dict


class RaisingAsync(AsyncEnricher):
    name = "slow"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        if event_dict["event"] == "boom":
            raise to_raise()
        event_dict["slow"] = True
        return event_dict


class Tag(AsyncEnricher):
    name = "tag"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        event_dict["tag"] = True
        return event_dict


if scenario.startswith("async-"):
    enrichers: list[Any] = [RaisingAsync(failure_threshold=1000)]
elif scenario.startswith("blocking-"):
    enrichers = [SlowSync(blocking=True), Tag()]
else:
    enrichers = [SlowSync(), Tag()]
container = configure_logging(
    enrichers=enrichers, output=output, delivery=delivery, enricher_timeout=5.0
)
log = get_logger()

caught: list[str] = []
lines_when_caught: list[int] = []
log.info("before")
if scenario == "sigint":
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
started = time.monotonic()
if os.environ.get("UNHANDLED") == "1":
    # The interrupt ends the script: the exit drain must write both events.
    summary(logged=2)
    log.info("boom")
    raise SystemExit("not reached: the enricher's interrupt should have ended the script")
try:
    log.info("boom")
except BaseException as exc:
    caught.append(type(exc).__name__)
    lines_when_caught.append(count_lines(output))
boom_seconds = time.monotonic() - started
log.info("after")
flushed = container.flush(10)
report = container.shutdown()

lines = read_json_lines(output)
boom = [line for line in lines if line["event"] == "boom"]
summary(
    logged=3,
    caught=caught,
    lines_when_caught=lines_when_caught,
    boom_seconds=boom_seconds,
    lines=count_lines(output),
    events=[line["event"] for line in lines],
    boom_slow=[line.get("slow") for line in boom],
    boom_errors=[line.get("enrichment_errors") for line in boom],
    after_tagged=[line.get("tag") for line in lines if line["event"] == "after"],
    flushed=flushed,
    report=dict(report),
)
