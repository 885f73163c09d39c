"""Every error class enrichlog raises, in one place.

Modules import their exceptions from here so that no module has to import
another one just to raise or catch its errors.
"""

from __future__ import annotations

__all__ = [
    "CachedError",
    "CircuitBreakerOpenError",
    "EnricherConfigError",
    "EnricherDependencyError",
    "EnrichlogError",
]


class EnrichlogError(Exception):
    """Base class of every error enrichlog raises on purpose."""


class EnricherConfigError(EnrichlogError, ValueError):
    """An enricher, a setting or an enricher URI is not usable.

    Raised at configure time; the message names the enricher, the setting or
    the URI (with its password masked) at fault and what was expected.
    """


class EnricherDependencyError(EnricherConfigError):
    """The enrichers' dependencies cannot be arranged into levels.

    Raised for a cycle (the message spells it out, ``a -> b -> a``), a
    dependency on an enricher that is not configured, or a duplicate name.
    """


class CircuitBreakerOpenError(EnrichlogError):
    """A call was rejected because its circuit breaker is open.

    Also raised in the half-open state when every probe permit is taken:
    extra calls are rejected, never queued.
    """

    def __init__(self, name: str, retry_in: float) -> None:
        self.name = name
        self.retry_in = retry_in
        who = f"circuit breaker {name!r}" if name else "circuit breaker"
        super().__init__(f"{who} is open; next probe in {retry_in:.3f}s")


class CachedError(EnrichlogError, RuntimeError):
    """A cached failure: the computation for this key failed recently.

    The message begins with ``"Cached error"`` and the original exception is
    kept as ``__cause__``, so a broken backend is not asked again until the
    error's time to live has passed.
    """
