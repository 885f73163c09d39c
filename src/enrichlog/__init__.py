"""enrichlog: structlog-compatible logging with asynchronous enrichers.

Enrichers await a database row, an HTTP answer or a Redis key to add fields
to each log event; enrichlog runs them in parallel dependency levels on one
long-lived event loop, each guarded by a timeout, a cache, a circuit breaker,
retries and a concurrency limit, and never loses an event.
"""

from __future__ import annotations

from .container import (
    LoggingContainer,
    build_processor_chain,
    configure_logging,
    current_container,
    get_logger,
)
from .engine.lifecycle import EnricherLifecycleManager
from .engine.processor import AsyncEnricherProcessor
from .engine.registry import EnricherRegistry
from .engine.runtime import EnrichmentRuntime
from .enricher import AsyncEnricher, Enricher, SyncEnricher, register_enricher
from .exceptions import (
    CachedError,
    CircuitBreakerOpenError,
    EnricherConfigError,
    EnricherDependencyError,
    EnrichlogError,
)
from .options import EnricherOptions, ResolvedOptions
from .resilience.breaker import CircuitBreaker, CircuitState
from .resilience.cache import AsyncSmartCache, EnricherCache, cached_enricher
from .resilience.retry import RetryPolicy
from .settings import LoggingSettings
from .uri import EnricherFactory

__all__ = [
    "AsyncEnricher",
    "AsyncEnricherProcessor",
    "AsyncSmartCache",
    "CachedError",
    "CircuitBreaker",
    "CircuitBreakerOpenError",
    "CircuitState",
    "Enricher",
    "EnricherCache",
    "EnricherConfigError",
    "EnricherDependencyError",
    "EnricherFactory",
    "EnricherLifecycleManager",
    "EnricherOptions",
    "EnricherRegistry",
    "EnrichlogError",
    "EnrichmentRuntime",
    "LoggingContainer",
    "LoggingSettings",
    "ResolvedOptions",
    "RetryPolicy",
    "SyncEnricher",
    "build_processor_chain",
    "cached_enricher",
    "configure_logging",
    "current_container",
    "get_logger",
    "register_enricher",
]
