"""Quickstart: enrichers configured in code.

An async enricher that "looks up" a user (a simulated 50 ms database query,
cached per user id), an async enricher that depends on it, and a plain
structlog processor. Run it::

    python examples/quickstart.py

Every line carries the looked-up fields; the second event for user 42 is
served from the cache, so it does not wait for the lookup again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, configure_logging, get_logger, register_enricher

# What a database would hold.
USERS = {42: {"name": "alice", "plan": "pro"}, 7: {"name": "bob", "plan": "free"}}


class UserEnricher(AsyncEnricher):
    """Adds ``user_name`` and ``plan`` for the event's ``user_id``."""

    name = "user"
    timeout = 0.5  # seconds per event; a slower lookup is cancelled
    cache_ttl = 60.0  # results are cached per cache_key() for a minute
    provides = ("user_name", "plan")

    async def _startup(self) -> None:
        # Open pools and clients here: this runs once, on enrichlog's own
        # event loop, where enrich_async runs too.
        self.lookups = 0

    async def _shutdown(self) -> None:
        print(f"user enricher: {self.lookups} lookups, the rest came from the cache")

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict.get("user_id")  # None: no user, nothing to cache

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        user_id = event_dict.get("user_id")
        if user_id is None:
            return event_dict
        self.lookups += 1
        await asyncio.sleep(0.05)  # the simulated query
        row = USERS.get(user_id, {"name": "unknown", "plan": "none"})
        event_dict["user_name"] = row["name"]
        event_dict["plan"] = row["plan"]
        return event_dict


@register_enricher(name="quota", dependencies="user")
async def add_quota(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Runs after ``user``, so it sees the ``plan`` that enricher added."""
    plan = event_dict.get("plan")
    if plan is not None:
        await asyncio.sleep(0.01)  # another simulated lookup
        event_dict["quota"] = 1000 if plan == "pro" else 10
    return event_dict


def add_service(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """A plain structlog processor: runs inline, no thread, no hop."""
    event_dict["service"] = "checkout"
    return event_dict


def main() -> None:
    container = configure_logging(
        enrichers=[UserEnricher(), add_quota, add_service],
        delivery="inline",  # each call returns once its line is written
    )
    log = get_logger()
    log.info("checkout started", user_id=42, amount=9.99)
    log.info("checkout finished", user_id=42, amount=9.99)  # cache hit
    log.warning("card declined", user_id=7)
    log.info("health probe")  # no user_id: the enrichers add nothing
    report = container.shutdown()  # also runs at exit; explicit here to print it
    print(f"shutdown report: {dict(report)}")


if __name__ == "__main__":
    main()
