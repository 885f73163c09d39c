"""Found by the fourth attack round: a shutdown that gives up on enrichment
while calls wait for a concurrency slot left "Task was destroyed but it is
pending!" on standard error. Cancelling a running call freed its slot, and the
call queued for it started as a new task after the loop had collected the
tasks to cancel. argv: output path.

One enricher with two calls in flight at most, 40 events queued behind them,
a shutdown that waits 0.1 s. Summary: written and logged.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from _harness import arg, count_lines, summary

from enrichlog import AsyncEnricher, configure_logging, get_logger


class Slow(AsyncEnricher):
    name = "slow"
    timeout = 5.0
    max_concurrency = 2

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(2)
        return event_dict


output = arg(1)
container = configure_logging(enrichers=[Slow()], output=output, shutdown_timeout=0.1)
for i in range(40):
    get_logger().info("e", i=i)
container.shutdown()
gc.collect()  # a destroyed pending task says so when it is collected
summary(written=count_lines(output), logged=40)
