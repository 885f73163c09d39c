"""Enrichers the worker tests load with ``--enrichers``."""

from __future__ import annotations

import asyncio
from typing import Any

from enrichlog import AsyncEnricher


class BrokenLookup(AsyncEnricher):
    """A lookup whose backend always fails."""

    name = "lookup"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        raise RuntimeError("backend down")


def broken() -> list[Any]:
    """``--enrichers tests.scaleout.worker_enrichers:broken``."""
    return [BrokenLookup()]


class SlowLookup(AsyncEnricher):
    """A lookup that takes 20 ms, four at a time."""

    name = "slow"
    max_concurrency = 4

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0.02)
        event_dict["looked_up"] = True
        return event_dict


def slow() -> list[Any]:
    """``--enrichers tests.scaleout.worker_enrichers:slow``."""
    return [SlowLookup()]


class StuckStartup(AsyncEnricher):
    """An enricher whose ``_startup`` never ends."""

    name = "stuck"

    async def _startup(self) -> None:
        await asyncio.sleep(3600)

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict["stuck"] = True
        return event_dict


def stuck() -> list[Any]:
    """``--enrichers tests.scaleout.worker_enrichers:stuck``."""
    return [StuckStartup()]


class IdRewriter(AsyncEnricher):
    """Replaces or removes the ids the worker put on the event, by ``how``."""

    name = "ids"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        how = event_dict.get("how")
        if how == "replace":
            event_dict["event_id"] = "from-the-enricher"
        elif how == "remove":
            event_dict.pop("event_id", None)
            event_dict.pop("enrichlog_id", None)
        elif how == "own":
            event_dict["enrichlog_id"] = "enricher-own"
        return event_dict


def ids() -> list[Any]:
    """``--enrichers tests.scaleout.worker_enrichers:ids``."""
    return [IdRewriter()]
