"""Extra: a blocking sync enricher stuck in its worker thread (a lookup
without a timeout) when the application ends.

argv: output path, ending (``shutdown``: calls container.shutdown(timeout=1)
then returns; ``return``: just returns). env: STUCK (6 s: how long the
enricher's call blocks), EVENTS (10).

Summary (printed before the script returns): logged, report, and the
monotonic time the main thread finished, so the test can see how long the
interpreter took to exit after it.
"""

from __future__ import annotations

import time
from typing import Any

from _harness import arg, env_float, env_int, summary

from enrichlog import SyncEnricher, configure_logging, get_logger

output, ending = arg(1), arg(2, "shutdown")
stuck = env_float("STUCK", 6.0)
events = env_int("EVENTS", 10)


class Stuck(SyncEnricher):
    name = "stuck"
    blocking = True

    def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        time.sleep(stuck)  # a socket read with no timeout, say
        event_dict["stuck"] = True
        return event_dict


container = configure_logging(
    enrichers=[Stuck()], output=output, delivery="background", enricher_timeout=0.2
)
log = get_logger()
for i in range(events):
    log.info("e", i=i)
report: dict[str, int] = {}
if ending == "shutdown":
    report = dict(container.shutdown(timeout=1.0))
summary(logged=events, report=report, main_done=time.time())
