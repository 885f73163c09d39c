"""Case 5: logging configured on a thread other than the main thread.

argv: output path, then what the main thread does next:
``install`` (calls container.install_signal_handlers(), then logs and sends
itself SIGTERM), ``off-main`` (calls install_signal_handlers() on another
thread and reports what it raised), ``none`` (logs, then SIGTERM with no
handler installed). env: EVENTS (500).

The summary is printed before the SIGTERM; the test counts the lines and
reads the warnings on stderr.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

from _harness import arg, env_int, summary

from enrichlog import AsyncEnricher, EnrichlogError, configure_logging, get_logger

output, what = arg(1), arg(2, "install")
events = env_int("EVENTS", 500)


class Slowish(AsyncEnricher):
    name = "slowish"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0.01)
        event_dict["slowish"] = True
        return event_dict


made: list[Any] = []
configurer = threading.Thread(
    target=lambda: made.append(
        configure_logging(
            enrichers=[Slowish()], output=output, delivery="background", max_in_flight=16
        )
    ),
    name="configurer",
)
configurer.start()
configurer.join()
container = made[0]

if what == "off-main":
    raised: list[str] = []

    def try_install() -> None:
        try:
            container.install_signal_handlers()
        except EnrichlogError as exc:
            raised.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=try_install, name="not-main")
    thread.start()
    thread.join()
    summary(raised=raised, handler=repr(signal.getsignal(signal.SIGTERM)))
    container.shutdown()
    raise SystemExit(0)

installed = container.install_signal_handlers() if what == "install" else False
log = get_logger()
for i in range(events):
    log.info("e", i=i)
summary(
    logged=events,
    installed=installed,
    pending_before_signal=container.metrics()["pending"],
)
os.kill(os.getpid(), signal.SIGTERM)
signal.pause()  # SIGTERM ends the process
