"""An enricher whose ``_startup`` ignores its cancellation, outliving the
shutdown that gave up on it (the container was replaced).

argv: output path. env: STEPS (_startup sleeps STEP seconds STEPS times,
catching each cancellation), STEP (1), AFTER (seconds the script sleeps
after the shutdown before it exits; 0).

The start-up ends after the shutdown when STEPS * STEP is past its grace,
and while the script sleeps when AFTER is long enough; otherwise it is
still running at interpreter exit. Summary: logged, lines written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from _harness import arg, count_lines, env_float, env_int, summary

from enrichlog import AsyncEnricher, configure_logging, get_logger

output = arg(1)
steps = env_int("STEPS", 4)
step = env_float("STEP", 1.0)
after = env_float("AFTER", 0.0)


class SlowToStart(AsyncEnricher):
    name = "slow_to_start"

    async def _startup(self) -> None:
        for _ in range(steps):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(step)

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict["started"] = True
        return event_dict


configure_logging(
    enrichers=[SlowToStart()],
    output=output,
    delivery="background",
    startup_timeout=0.1,
    shutdown_timeout=0.2,
)
get_logger().info("one")
# Replaced: the first container's shutdown gives up on the start-up.
replacement = configure_logging(output=output, delivery="background")
get_logger().info("two")
time.sleep(after)
replacement.shutdown()
summary(logged=2, lines=count_lines(output))
