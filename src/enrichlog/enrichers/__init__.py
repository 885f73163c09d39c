"""Enrichers that ship with enrichlog, each also reachable by its URI scheme.

The lookup enrichers (``postgres-lookup``, ``redis-lookup``,
``http-lookup``) and ``otel`` import their client library only when one is
built, so importing this package needs none of them; building one without
its library raises ``EnricherConfigError`` naming the extra to install.
"""

from __future__ import annotations

from .builtin import EnvEnricher, HostnameEnricher, ProcessEnricher, StaticEnricher
from .http import HttpLookupEnricher
from .otel import OtelEnricher
from .postgres import PostgresLookupEnricher
from .redis import RedisLookupEnricher

__all__ = [
    "EnvEnricher",
    "HostnameEnricher",
    "HttpLookupEnricher",
    "OtelEnricher",
    "PostgresLookupEnricher",
    "ProcessEnricher",
    "RedisLookupEnricher",
    "StaticEnricher",
]
