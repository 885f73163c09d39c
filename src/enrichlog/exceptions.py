"""Every error class enrichlog raises, in one place.

Modules import their exceptions from here so that no module has to import
another one just to raise or catch its errors; and the "did you mean" hint
their configure-time messages share.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "CachedError",
    "CircuitBreakerOpenError",
    "EnricherConfigError",
    "EnricherDependencyError",
    "EnrichlogError",
    "did_you_mean",
]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a mistyped
    ``word``, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
