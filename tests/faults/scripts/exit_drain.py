"""Case 4: events still queued when the script ends, through an enricher
that needs the interpreter's thread pools.

argv: output path, how (to_thread, run_in_executor, getaddrinfo).
env: EVENTS (200).

The script logs and returns without calling shutdown or flush: the exit
drain must enrich and write every event. Summary (printed before the
script ends): logged; the test counts the lines.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

from _harness import arg, env_int, summary

from enrichlog import AsyncEnricher, configure_logging, get_logger

output, how = arg(1), arg(2, "to_thread")
events = env_int("EVENTS", 200)
#: "main": the main thread logs, then the script ends; "worker": a
#: non-daemon thread is still logging when the main thread ends.
who = arg(3, "main")


def blocking_lookup() -> str:
    time.sleep(0.001)
    return "resolved"


class NeedsThreads(AsyncEnricher):
    name = "threads"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        loop = asyncio.get_running_loop()
        if how == "to_thread":
            value = await asyncio.to_thread(blocking_lookup)
        elif how == "run_in_executor":
            value = await loop.run_in_executor(None, blocking_lookup)
        else:
            infos = await loop.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)
            value = "resolved" if infos else "empty"
        event_dict["via"] = value
        return event_dict


configure_logging(
    enrichers=[NeedsThreads(timeout=5.0)],
    output=output,
    delivery="background",
    max_in_flight=4,  # keep most events queued when the script ends
)
log = get_logger()


def produce() -> None:
    for i in range(events):
        log.info("e", i=i)
        if who == "worker":
            time.sleep(0.002)  # still logging after the main thread ended


if who == "worker":
    threading.Thread(target=produce, name="late-worker").start()
else:
    produce()
summary(logged=events)
# No shutdown, no flush: the interpreter's exit drains.
