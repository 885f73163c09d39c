"""Enrichers the worker tests load with ``--enrichers``."""

from __future__ import annotations

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
