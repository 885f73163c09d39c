"""`LoggingSettings`: every knob of the container, from code or environment.

Values come, highest precedence first, from keyword arguments, environment
variables prefixed ``ENRICHLOG_`` (nested fields with ``__``, e.g.
``ENRICHLOG_ENRICHER_OPTIONS__USER__TIMEOUT=0.2``), a ``.env`` file in the
working directory, and the defaults below.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .exceptions import EnricherConfigError

__all__ = ["EnricherOptions", "LoggingSettings", "unknown_settings"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_LEVEL_ALIASES = {"warn": "warning", "fatal": "critical", "exception": "error"}

# A comma starts a new URI only when a ``scheme://`` follows it, so that
# ``env://?fields=GIT_SHA,REGION`` stays one URI in a comma-separated list.
_URI_LIST_SPLIT = re.compile(r"\s*,\s*(?=[A-Za-z][A-Za-z0-9+.\-_]*://)")

PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class EnricherOptions(BaseModel):
    """Per-enricher overrides, given by enricher name.

    Every field left ``None`` keeps what the enricher itself declares, or
    else the container default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: PositiveSeconds | None = None
    cache_ttl: PositiveSeconds | None = None
    cache_max_size: Annotated[int, Field(ge=1)] | None = None
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    retry_attempts: Annotated[int, Field(ge=1)] | None = None
    failure_threshold: Annotated[int, Field(ge=1)] | None = None
    recovery_timeout: PositiveSeconds | None = None


class LoggingSettings(BaseSettings):
    """Configuration of a :class:`~enrichlog.container.LoggingContainer`.

    Environment variables use the prefix ``ENRICHLOG_`` (``ENRICHLOG_LEVEL``,
    ``ENRICHLOG_ENRICHERS``...). Invalid values raise pydantic's
    ``ValidationError``, which names the field and the value at fault.
    """

    model_config = SettingsConfigDict(
        env_prefix="ENRICHLOG_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        # "ignore", not "forbid": an application's .env holds its own
        # variables too. Unknown keyword arguments are rejected in __init__.
        extra="ignore",
        validate_default=True,
    )

    # -- output --------------------------------------------------------------
    level: str = Field("info", description="minimum level written")
    format: Literal["json", "console", "logfmt"] = Field(
        "json", description="renderer of each line"
    )
    output: str = Field("stdout", min_length=1, description="'stdout', 'stderr' or a file path")

    # -- enrichers -----------------------------------------------------------
    enrichers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="enricher URIs: a JSON list or a comma-separated string",
    )
    enricher_options: dict[str, EnricherOptions] = Field(
        default_factory=dict, description="per-enricher overrides by name"
    )
    enricher_timeout: PositiveSeconds = Field(
        1.0, description="default seconds an async enricher may take per event"
    )
    level_timeout: PositiveSeconds | None = Field(
        5.0, description="seconds a whole dependency level may take per event"
    )
    error_field: str | None = Field(
        "enrichment_errors",
        description="event key for {enricher: reason}; None disables",
    )
    max_enricher_threads: Annotated[int, Field(ge=1, le=256)] = Field(
        4, description="worker threads for blocking sync enrichers"
    )

    # -- delivery ------------------------------------------------------------
    delivery: Literal["auto", "inline", "background"] = Field(
        "auto",
        description="inline: the call waits; background: queue and return; "
        "auto: background when an async enricher is configured",
    )
    queue_size: Annotated[int, Field(ge=1)] = Field(
        10_000, description="events waiting for enrichment, at most"
    )
    overflow: Literal["block", "drop_new", "drop_old"] = Field(
        "block", description="what a full queue does to a new event"
    )
    overflow_block_timeout: PositiveSeconds = Field(
        1.0, description="seconds 'block' waits before dropping the new event"
    )
    max_in_flight: Annotated[int, Field(ge=1)] = Field(
        512, description="events enriched concurrently in background delivery"
    )
    drop_report_interval: PositiveSeconds = Field(
        10.0, description="seconds between reports of dropped events"
    )
    shutdown_timeout: PositiveSeconds = Field(
        10.0, description="seconds shutdown waits for pending events"
    )
    handle_sigterm: bool = Field(
        True,
        description="drain on SIGTERM when the process installed no handler",
    )

    # -- resilience defaults -------------------------------------------------
    cache_ttl: PositiveSeconds = Field(300.0, description="cache entry lifetime")
    cache_max_size: Annotated[int, Field(ge=1)] = Field(
        1000, description="entries per enricher cache"
    )
    cache_error_ttl: PositiveSeconds = Field(
        5.0, description="seconds a failed lookup is remembered"
    )
    breaker_failure_threshold: Annotated[int, Field(ge=1)] = Field(
        5, description="consecutive failures that open a circuit"
    )
    breaker_recovery_timeout: PositiveSeconds = Field(
        60.0, description="seconds an open circuit waits before one probe"
    )
    breaker_half_open_max_calls: Annotated[int, Field(ge=1)] = Field(
        1, description="probes allowed at once in the half-open state"
    )
    retry_attempts: Annotated[int, Field(ge=1)] = Field(
        1, description="attempts per event for transient errors (1 = no retry)"
    )
    retry_base_delay: PositiveSeconds = Field(
        0.05, description="first retry backoff, doubled each attempt"
    )
    retry_max_delay: PositiveSeconds = Field(1.0, description="backoff cap")
    health_check_interval: PositiveSeconds | None = Field(
        None, description="seconds between enricher health checks; None = off"
    )

    @field_validator("level", mode="before")
    @classmethod
    def _known_level(cls, value: Any) -> Any:
        if isinstance(value, int) and value in LEVELS.values():
            return logging.getLevelName(value).lower()
        if not isinstance(value, str):
            return value
        name = value.strip().lower()
        name = _LEVEL_ALIASES.get(name, name)
        if name not in LEVELS:
            raise ValueError(f"unknown level {value!r}; expected one of {', '.join(LEVELS)}")
        return name

    @field_validator("enrichers", mode="before")
    @classmethod
    def split_uri_list(cls, value: Any) -> Any:
        """A JSON list or a comma-separated string of URIs, as a list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json  # noqa: PLC0415 - only for this input form

                return json.loads(text)
            return [part for part in _URI_LIST_SPLIT.split(text) if part]
        return value

    def __init__(self, **values: Any) -> None:
        # Underscored keywords are pydantic-settings' own (``_env_file``...).
        unknown_settings({k: v for k, v in values.items() if not k.startswith("_")})
        super().__init__(**values)

    @field_validator("error_field", "level_timeout", "health_check_interval", mode="before")
    @classmethod
    def _none_from_text(cls, value: Any) -> Any:
        """``none``, ``null`` or an empty value turns these off (environment)."""
        if isinstance(value, str) and value.strip().lower() in {"", "none", "null"}:
            return None
        return value

    @property
    def level_number(self) -> int:
        """The stdlib number of :attr:`level`."""
        return LEVELS[self.level]

    def effective_delivery(self, *, runtime_enrichers: bool) -> str:
        """``inline`` or ``background``: what ``auto`` means for a plan that
        does (or does not) have enrichers that run on the runtime loop
        (async or blocking ones)."""
        if self.delivery == "auto":
            return "background" if runtime_enrichers else "inline"
        return self.delivery

    def options_for(self, name: str) -> EnricherOptions:
        """The overrides configured for the enricher ``name`` (maybe empty)."""
        return self.enricher_options.get(name) or _NO_OPTIONS


_NO_OPTIONS = EnricherOptions()


def unknown_settings(values: Mapping[str, Any]) -> None:
    """Raise :class:`EnricherConfigError` naming keys that are not settings."""
    unknown = sorted(set(values) - set(LoggingSettings.model_fields))
    if unknown:
        close = {
            name: difflib.get_close_matches(name, LoggingSettings.model_fields, n=1)
            for name in unknown
        }
        hints = ", ".join(
            f"{name!r}" + (f" (did you mean {close[name][0]!r}?)" if close[name] else "")
            for name in unknown
        )
        raise EnricherConfigError(f"unknown logging setting(s): {hints}")
