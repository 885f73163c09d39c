"""Enrichers that succeed, fail, time out and hit a cache, and a workload
that logs through them: what the observability tests scrape.

Run as a module, it serves ``/metrics`` and logs until stopped, for trying
``python -m enrichlog stats`` by hand::

    python -m tests.observability.workload --port 9464 &
    python -m enrichlog stats --url http://127.0.0.1:9464/metrics
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Hashable
from typing import Any

from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, LoggingContainer, configure_logging, get_logger


class UserLookup(AsyncEnricher):
    """Succeeds in about 2 ms; cached per ``user_id``."""

    name = "user"
    timeout = 0.5
    cache_ttl = 60.0

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict.get("user_id")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.002)
        event_dict["user_name"] = f"user-{event_dict.get('user_id')}"
        return event_dict


class TenantLookup(AsyncEnricher):
    """Succeeds in about 1 ms, not cached."""

    name = "tenant"
    timeout = 0.25

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.001)
        event_dict["tenant"] = "acme"
        return event_dict


class GeoLookup(AsyncEnricher):
    """Always fails: its circuit opens after three failures."""

    name = "geo"
    timeout = 0.25
    failure_threshold = 3
    recovery_timeout = 3600.0

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0)
        raise ConnectionError("geo backend refused the connection")


class RiskScore(AsyncEnricher):
    """Always outlasts its 20 ms timeout; the breaker never opens."""

    name = "risk"
    timeout = 0.02
    failure_threshold = 1_000_000

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.2)
        event_dict["risk"] = 0.5
        return event_dict


def enrichers() -> list[AsyncEnricher]:
    """One of each: success with a cache, success, failure, timeout."""
    return [UserLookup(), TenantLookup(), GeoLookup(), RiskScore()]


def log_events(count: int, users: int = 5) -> None:
    """Log ``count`` events over ``users`` distinct user ids."""
    log = get_logger()
    for index in range(count):
        log.info("checkout", user_id=index % users)


def configure(output: str, **settings: Any) -> LoggingContainer:
    """Configure logging with :func:`enrichers`, background delivery."""
    return configure_logging(enrichers=enrichers(), output=output, **settings)


def main() -> None:
    """Serve /metrics on ``--port`` and log ``--rate`` events a second."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9464)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()
    container = configure(os.devnull, metrics_port=args.port)
    print(f"serving http://127.0.0.1:{container.metrics_port}/metrics", flush=True)
    log = get_logger()
    end = time.monotonic() + args.seconds
    index = 0
    while time.monotonic() < end:
        log.info("checkout", user_id=index % 50)
        index += 1
        time.sleep(1.0 / args.rate)
    container.shutdown()


if __name__ == "__main__":
    main()
