"""`EnricherOptions`: the resilience knobs of an async enricher, declared once.

Every per-enricher knob (timeout, cache, circuit breaker, retry, concurrency
limit, batching) is a field of :class:`EnricherOptions`, with its type and
bounds. The same model validates the knobs wherever they are given:

* an :class:`~enrichlog.enricher.AsyncEnricher`'s class attributes and
  constructor keywords (:meth:`EnricherOptions.from_code`);
* the query keys of an enricher URI (``?timeout=0.5&ttl=60``), through
  :class:`~enrichlog.uri.params.CommonParams`, its subclass;
* the per-enricher overrides of the settings,
  ``LoggingSettings.enricher_options[name]``.

:meth:`ResolvedOptions.for_enricher` combines them with the container
defaults of :class:`~enrichlog.settings.LoggingSettings` into the values an
enricher runs with; the runtime and ``python -m enrichlog plan`` both read
them there. The constrained types below are also the types of those
settings, so a default and an override accept the same values.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from .exceptions import EnricherConfigError, did_you_mean

if TYPE_CHECKING:
    from .enricher import AsyncEnricher
    from .settings import LoggingSettings

__all__ = [
    "DEFAULT_SETTING",
    "MAX_COUNT",
    "MAX_PERIOD",
    "MAX_RETRY_ATTEMPTS",
    "MAX_TIMEOUT",
    "Attempts",
    "Count",
    "EnricherOptions",
    "NonNegativeSeconds",
    "NotABool",
    "Period",
    "PositiveSeconds",
    "ResolvedOptions",
]

# Upper bounds: a value beyond them is a mistake (a unit error, a missing
# decimal point), and some would only fail later, at run time: threading
# waits refuse timeouts above threading.TIMEOUT_MAX (about 49 days on
# Windows), and a shutdown timeout of 1e12 s overflows the platform's time_t.
MAX_TIMEOUT: Final = min(86_400.0, threading.TIMEOUT_MAX)
"""Seconds: the most a timeout, a wait or a retry delay may be (one day)."""

MAX_PERIOD: Final = 365 * 86_400.0
"""Seconds: the most a lifetime or an interval may be (one year). These are
compared with a clock or slept on the event loop, never waited on by a
thread."""

MAX_COUNT: Final = 1_000_000
"""The most a size, a count or a concurrency limit may be."""

MAX_RETRY_ATTEMPTS: Final = 100
"""The most attempts per event: retries all happen within one timeout."""


def _refuse_bool(value: Any) -> Any:
    """A number setting's value as given, unless it is a bool: Python counts
    ``True`` as 1, so ``timeout=True`` would be one second, silently."""
    # numpy's bool (np.bool_, or np.bool in numpy 2) is no bool subclass.
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):
        raise ValueError(f"a number is expected, not {value!r}")
    return value


NotABool: Final = BeforeValidator(_refuse_bool)
"""Refuses ``True``/``False`` where a number is expected (in code, or JSON)."""

PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT, allow_inf_nan=False), NotABool]
"""Seconds > 0 and at most :data:`MAX_TIMEOUT`: timeouts, waits, delays."""

NonNegativeSeconds = Annotated[float, Field(ge=0, le=MAX_TIMEOUT, allow_inf_nan=False), NotABool]
"""Seconds >= 0 and at most :data:`MAX_TIMEOUT` (0 = do not wait)."""

Period = Annotated[float, Field(gt=0, le=MAX_PERIOD, allow_inf_nan=False), NotABool]
"""Seconds > 0 and at most :data:`MAX_PERIOD`: lifetimes and intervals."""

Count = Annotated[int, Field(ge=1, le=MAX_COUNT), NotABool]
"""An integer from 1 to :data:`MAX_COUNT`: sizes, counts, limits."""

Attempts = Annotated[int, Field(ge=1, le=MAX_RETRY_ATTEMPTS), NotABool]
"""An integer from 1 to :data:`MAX_RETRY_ATTEMPTS`."""


class EnricherOptions(BaseModel):
    """The resilience knobs of one async enricher; ``None`` = not set.

    Given by an enricher itself (class attributes, constructor keywords, URI
    query keys) or by the settings (``LoggingSettings.enricher_options``, by
    enricher name). A knob left ``None`` falls back, in this order, to the
    enricher's own value and to the container default named in
    :data:`DEFAULT_SETTING`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: PositiveSeconds | None = None
    """Seconds per event before the call is cancelled."""
    cache_ttl: Period | None = None
    """Seconds a cached result stays valid (caching is on when the enricher
    defines ``cache_key``)."""
    cache_max_size: Count | None = None
    """Entries kept in the enricher's cache."""
    cache_error_ttl: Period | None = None
    """Seconds a failed lookup is remembered, so a broken backend is not
    asked again for every event."""
    max_concurrency: Count | None = None
    """Calls in flight at once against the backend."""
    retry_attempts: Attempts | None = None
    """Attempts per event for transient errors (1 = no retry)."""
    retry_base_delay: PositiveSeconds | None = None
    """First retry backoff in seconds, doubled each attempt."""
    retry_max_delay: PositiveSeconds | None = None
    """Cap of the retry backoff in seconds."""
    failure_threshold: Count | None = None
    """Consecutive failures that open the circuit."""
    recovery_timeout: Period | None = None
    """Seconds an open circuit waits before letting one probe through."""
    half_open_max_calls: Count | None = None
    """Probes allowed at once in the half-open state."""
    batch_size: Count | None = None
    """Keys per ``enrich_many`` call, at most (batching enrichers)."""
    batch_window: NonNegativeSeconds | None = None
    """Seconds a batch waits for more keys before it is sent; 0 sends what
    is already queued (batching enrichers)."""

    @classmethod
    def from_code(cls, owner: str, values: Mapping[str, Any]) -> EnricherOptions:
        """``values`` (knob -> value, as written in code) as options.

        Validation is strict, as for typed code: ``True`` or ``"1"`` is no
        number of seconds.

        Raises:
            EnricherConfigError: a knob is unknown or its value invalid; the
                message names ``owner`` (the enricher), the knob and the value.
        """
        try:
            return cls.model_validate(values, strict=True)
        except ValidationError as exc:
            raise EnricherConfigError(_describe_errors(owner, exc)) from None


# The container default of each knob: the LoggingSettings field it falls back
# to. The only place where a knob and its setting are paired.
DEFAULT_SETTING: Final[Mapping[str, str]] = MappingProxyType(
    {
        "timeout": "enricher_timeout",
        "cache_ttl": "cache_ttl",
        "cache_max_size": "cache_max_size",
        "cache_error_ttl": "cache_error_ttl",
        "max_concurrency": "enricher_max_concurrency",
        "retry_attempts": "retry_attempts",
        "retry_base_delay": "retry_base_delay",
        "retry_max_delay": "retry_max_delay",
        "failure_threshold": "breaker_failure_threshold",
        "recovery_timeout": "breaker_recovery_timeout",
        "half_open_max_calls": "breaker_half_open_max_calls",
        "batch_size": "batch_size",
        "batch_window": "batch_window",
    }
)
"""Knob name -> the :class:`~enrichlog.settings.LoggingSettings` field that
holds its container default."""


class ResolvedOptions(EnricherOptions):
    """The values one async enricher runs with: every knob set.

    Built by :meth:`for_enricher`; the fields are those of
    :class:`EnricherOptions`, narrowed to "set" (a type checker sees
    ``timeout: float``, not ``float | None``).
    """

    # Narrowed from EnricherOptions: same knobs and bounds, but required.
    timeout: PositiveSeconds
    cache_ttl: Period
    cache_max_size: Count
    cache_error_ttl: Period
    max_concurrency: Count
    retry_attempts: Attempts
    retry_base_delay: PositiveSeconds
    retry_max_delay: PositiveSeconds
    failure_threshold: Count
    recovery_timeout: Period
    half_open_max_calls: Count
    batch_size: Count
    batch_window: NonNegativeSeconds

    @classmethod
    def for_enricher(cls, enricher: AsyncEnricher, settings: LoggingSettings) -> ResolvedOptions:
        """The values ``enricher`` runs with under ``settings``.

        Each knob is, in order of precedence: the per-enricher override in
        ``settings.enricher_options[enricher.name]``, the enricher's own value
        (its class attribute, constructor keyword or URI query key), the
        container default (:data:`DEFAULT_SETTING`).

        Raises:
            EnricherConfigError: the enricher's own values are invalid (set
                after construction), or the combination cannot work: a
                batching enricher whose ``batch_window`` is not shorter than
                its ``timeout`` would time out every event of a batch that
                waits for the whole window; a ``retry_base_delay`` longer
                than the ``retry_max_delay`` that caps it.
        """
        layers = (settings.options_for(enricher.name), enricher.options)
        values: dict[str, Any] = {}
        for knob, setting in DEFAULT_SETTING.items():
            chosen = next(
                (value for layer in layers if (value := getattr(layer, knob)) is not None),
                None,
            )
            values[knob] = getattr(settings, setting) if chosen is None else chosen
        try:
            resolved = cls.model_validate(values)
        except ValidationError as exc:  # only if a settings object was built unvalidated
            raise EnricherConfigError(_describe_errors(enricher.name, exc)) from None
        if enricher.batches and resolved.batch_window >= resolved.timeout:
            raise EnricherConfigError(
                f"enricher {enricher.name!r}: batch_window ({resolved.batch_window:g}s) "
                f"must be shorter than timeout ({resolved.timeout:g}s); a batch that "
                "waits for its whole window would time out every event in it"
            )
        if resolved.retry_attempts > 1 and resolved.retry_base_delay > resolved.retry_max_delay:
            raise EnricherConfigError(
                f"enricher {enricher.name!r}: retry_base_delay ({resolved.retry_base_delay:g}s) "
                f"is longer than retry_max_delay ({resolved.retry_max_delay:g}s), which caps "
                "every backoff: the base delay would never be waited; lower it, or raise "
                "retry_max_delay"
            )
        return resolved


def _describe_errors(owner: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_context=False):
        knob = str(error["loc"][0]) if error["loc"] else "options"
        if error["type"] == "extra_forbidden":
            knobs = EnricherOptions.model_fields
            problems.append(
                f"unknown option {knob!r}{did_you_mean(knob, knobs)}; the options are "
                f"{', '.join(knobs)}"
            )
        else:
            problems.append(f"{knob}={error['input']!r} is not valid: {error['msg']}")
    return f"enricher {owner!r}: " + "; ".join(problems)


def sync_enricher_options_error(name: str) -> EnricherConfigError:
    """The error for an ``enricher_options`` entry naming a sync enricher."""
    return EnricherConfigError(
        f"enricher_options[{name!r}]: {name!r} is a sync enricher, and the options "
        "(timeout, cache, retries, circuit breaker...) apply to async enrichers only"
    )
