"""`LoggingSettings`: every knob of the container, from code or environment.

Values come, highest precedence first, from keyword arguments, environment
variables prefixed ``ENRICHLOG_`` (nested fields with ``__``, e.g.
``ENRICHLOG_ENRICHER_OPTIONS__USER__TIMEOUT=0.2``), a ``.env`` file in the
working directory, and the defaults below.

The per-enricher knobs and their types are defined in :mod:`enrichlog.options`;
:class:`~enrichlog.options.EnricherOptions` is importable from here too.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import (
    Field,
    PlainSerializer,
    PlainValidator,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from .exceptions import EnricherConfigError, did_you_mean
from .options import (
    Attempts,
    Count,
    EnricherOptions,
    NonNegativeSeconds,
    NotABool,
    Period,
    PositiveSeconds,
)
from .uri.masking import mask_mapping, mask_secrets, mask_uri

__all__ = [
    "LEVELS",
    "EnricherOptions",  # defined in enrichlog.options; importable from here as before
    "LoggingSettings",
    "TextSink",
    "level_number",
    "resolve_settings",
    "unknown_settings",
]

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

# Keys every event has: an error_field with one of these names would
# overwrite them (or be overwritten) in every line.
_EVENT_KEYS = frozenset({"event", "level", "timestamp"})


# -- output sinks and per-logger levels (the integrations) ----------------------


@runtime_checkable
class TextSink(Protocol):
    """What ``output=`` accepts besides ``stdout``, ``stderr`` and a path: an
    object whose ``write(str)`` gets each rendered line, newline included
    (a text file, ``io.StringIO``, a custom sink); ``flush()`` is called
    after each line when it has one."""

    def write(self, text: str, /) -> object:
        """Take one line."""
        ...


def _output_target(value: Any) -> str | TextSink:
    if isinstance(value, os.PathLike):
        # A path object is a file path, always: Path("stdout") is the file
        # of that name, not standard output.
        path = os.fsdecode(value)
        if "\x00" in path:
            raise ValueError("a file path cannot hold a NUL character ('\\x00')")
        if not path or path in ("stdout", "stderr"):
            return os.path.join(".", path)
        return path
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("output is empty; expected 'stdout', 'stderr' or a file path")
        if "\x00" in value:
            raise ValueError("a file path cannot hold a NUL character ('\\x00')")
        # Spaces around it are a slip of a .env file or a shell (as for the
        # level), not part of a path: "stdout " means standard output.
        return value.strip()
    if callable(getattr(value, "write", None)):
        return value  # type: ignore[no-any-return]
    raise ValueError(
        f"a {type(value).__name__} cannot be an output; expected 'stdout', 'stderr', a "
        "file path or an object with a write(str) method"
    )


def _output_name(value: str | TextSink) -> str:
    """A sink object in JSON: its type."""
    return value if isinstance(value, str) else f"<{type(value).__name__}>"


def level_number(value: object) -> int:
    """The stdlib number of a level name (any case, ``warn``/``fatal``/
    ``exception`` as aliases) or of a stdlib level number.

    Raises:
        ValueError: not a known level; the message names it.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value in LEVELS.values():
        return value
    if isinstance(value, str):
        name = value.strip().lower()
        name = _LEVEL_ALIASES.get(name, name)
        if name in LEVELS:
            return LEVELS[name]
    raise ValueError(f"unknown level {value!r}; expected one of {', '.join(LEVELS)}")


def _parse_levels(value: Any) -> Any:
    """``uvicorn.access=warning,app=debug`` (or JSON, or a mapping) as a
    mapping of logger names to level names; each level is checked."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            value = json.loads(text)
        else:
            pairs: dict[str, str] = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                name, sep, level = part.partition("=")
                if not sep:
                    raise ValueError(
                        f"{part!r} is not 'logger=level' (expected e.g. "
                        "'uvicorn.access=warning,app=debug')"
                    )
                pairs[name.strip()] = level.strip()
            value = pairs
    if not isinstance(value, Mapping):
        return value  # pydantic says what it expected
    levels: dict[str, str] = {}
    for name, level in value.items():
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(
                f"logger name {name!r} is not a dotted logger name (the level of every "
                "other logger is the 'level' setting)"
            )
        try:
            number = level_number(level)
        except ValueError as exc:
            raise ValueError(f"logger {name!r}: {exc}") from None
        levels[name] = logging.getLevelName(number).lower()
    return levels


class LoggingSettings(BaseSettings):
    """Configuration of a :class:`~enrichlog.container.LoggingContainer`.

    Environment variables use the prefix ``ENRICHLOG_`` (``ENRICHLOG_LEVEL``,
    ``ENRICHLOG_ENRICHERS``...). An invalid value, an unknown keyword or a
    variable that cannot be read at all (``ENRICHLOG_ENRICHER_OPTIONS``
    holding invalid JSON, an unreadable ``.env``) raises
    :class:`~enrichlog.exceptions.EnricherConfigError` naming each field or
    variable at fault (secrets masked). (``model_validate()``, pydantic's
    own, raises pydantic's ``ValidationError``.)

    ``repr()``, ``str()`` and ``model_dump_json()`` show secrets (URI
    passwords, secret query keys) as ``***``; ``model_dump()`` and the
    attributes hold the real values.
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
        # A ValidationError would echo the input, which may hold a URI with
        # its password: the messages name the field and the problem.
        hide_input_in_errors=True,
    )

    # -- output --------------------------------------------------------------
    level: str = Field("info", description="minimum level written")
    format: Literal["json", "console", "logfmt"] = Field(
        "json", description="renderer of each line"
    )
    output: Annotated[
        str | TextSink,
        PlainValidator(_output_target),
        PlainSerializer(_output_name, when_used="json"),
    ] = Field(
        "stdout",
        description="'stdout', 'stderr', a file path, or (in code) an object with a "
        "write(str) method",
    )
    levels: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="per-logger minimum levels by dotted name prefix: "
        "uvicorn.access=warning,app=debug",
    )
    stdlib: bool = Field(
        False,
        description="route the stdlib root logger's records through enrichlog",
    )

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
    enricher_max_concurrency: Count = Field(
        64, description="default calls in flight at once per async enricher"
    )
    level_timeout: PositiveSeconds | None = Field(
        5.0, description="seconds a whole dependency level may take per event"
    )
    error_field: str | None = Field(
        "enrichment_errors",
        description="event key for {enricher: reason}; None disables",
    )
    max_enricher_threads: Annotated[int, Field(ge=1, le=256), NotABool] = Field(
        4, description="worker threads for blocking sync enrichers"
    )

    # -- runtime -------------------------------------------------------------
    runtime: Literal["thread", "loop"] = Field(
        "thread",
        description="thread: enrichers run on a loop in a thread of enrichlog's own; "
        "loop: on the application's running event loop (no thread, no hop)",
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="the event loop of runtime='thread': asyncio's, or uvloop's (extra "
        "enrichlog[uvloop]); with runtime='loop' the application chooses its loop",
    )
    startup_timeout: PositiveSeconds = Field(
        30.0,
        description="seconds enrichers may take to start before events go on without "
        "the ones still starting",
    )

    # -- delivery ------------------------------------------------------------
    delivery: Literal["auto", "inline", "background"] = Field(
        "auto",
        description="inline: the call waits; background: queue and return; "
        "auto: background when an async enricher is configured",
    )
    queue_size: Count = Field(10_000, description="events waiting for enrichment, at most")
    overflow: Literal["block", "drop_new", "drop_old"] = Field(
        "block", description="what a full queue does to a new event"
    )
    overflow_block_timeout: PositiveSeconds = Field(
        1.0, description="seconds 'block' waits before dropping the new event"
    )
    max_in_flight: Count = Field(
        512, description="events enriched concurrently in background delivery"
    )
    drop_report_interval: Period = Field(
        10.0, description="seconds between reports of dropped events"
    )
    shutdown_timeout: PositiveSeconds = Field(
        10.0, description="seconds shutdown waits for pending events"
    )
    handle_sigterm: bool = Field(
        True,
        description="drain on SIGTERM when the process installed no handler",
    )

    # -- resilience defaults (enrichlog.options.DEFAULT_SETTING) ---------------
    cache_ttl: Period = Field(300.0, description="cache entry lifetime")
    cache_max_size: Count = Field(1000, description="entries per enricher cache")
    cache_error_ttl: Period = Field(5.0, description="seconds a failed lookup is remembered")
    breaker_failure_threshold: Count = Field(
        5, description="consecutive failures that open a circuit"
    )
    breaker_recovery_timeout: Period = Field(
        60.0, description="seconds an open circuit waits before one probe"
    )
    breaker_half_open_max_calls: Count = Field(
        1, description="probes allowed at once in the half-open state"
    )
    retry_attempts: Attempts = Field(
        1, description="attempts per event for transient errors (1 = no retry)"
    )
    retry_base_delay: PositiveSeconds = Field(
        0.05, description="first retry backoff, doubled each attempt"
    )
    retry_max_delay: PositiveSeconds = Field(1.0, description="backoff cap")
    batch_size: Count = Field(100, description="keys per enrich_many() call, at most")
    batch_window: NonNegativeSeconds = Field(
        0.0, description="seconds a batch waits for more keys; 0 = what is queued"
    )
    health_check_interval: Period | None = Field(
        None, description="seconds between enricher health checks; None = off"
    )

    # -- metrics endpoint (enrichlog.integrations.prometheus) -----------------
    metrics_port: Annotated[int, Field(ge=0, le=65535), NotABool] | None = Field(
        None,
        description="port serving Prometheus metrics at /metrics; 0 = a free port; None = off",
    )
    metrics_host: str = Field(
        "127.0.0.1", min_length=1, description="address the metrics endpoint listens on"
    )

    @field_validator("event_loop")
    @classmethod
    def _uvloop_installed(cls, value: str) -> str:
        """uvloop needs the ``uvloop`` extra: say so at configure time."""
        if value == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError("event_loop='uvloop' needs uvloop: pip install 'enrichlog[uvloop]'")
        return value

    @model_validator(mode="after")
    def _event_loop_of_the_thread_runtime(self) -> LoggingSettings:
        if self.event_loop != "asyncio" and self.runtime == "loop":
            raise ValueError(
                f"event_loop={self.event_loop!r} applies to runtime='thread' only: with "
                "runtime='loop' enrichment runs on the application's own loop"
            )
        return self

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_port_off(cls, value: Any) -> Any:
        """``none``, ``null`` or an empty value turns the endpoint off."""
        if isinstance(value, str) and value.strip().lower() in {"", "none", "null"}:
            return None
        return value

    @field_validator("metrics_port")
    @classmethod
    def _metrics_extra_installed(cls, value: int | None) -> int | None:
        """The endpoint needs the ``prometheus`` extra: say so at configure time."""
        if value is not None:
            from .integrations.prometheus import require_client  # noqa: PLC0415 - only if set

            require_client()
        return value

    # -- end of the metrics endpoint -------------------------------------------
    # -- scale-out: transport and workers (enrichlog.transport, docs/scale-out.md)
    transport: str | None = Field(
        None,
        description="publish events to NATS JetStream instead of writing them: "
        "nats://host:4222?stream=LOGS&subject=logs.app; None = write locally",
    )
    enrich: Literal["local", "remote"] = Field(
        "remote",
        description="with a transport: run the enrichers before publishing (local) "
        "or in the workers (remote); the URI's ?enrich= wins",
    )
    spool_dir: str | None = Field(
        None,
        description="directory of the producer's on-disk spool; None = "
        "~/.cache/enrichlog/spool/<stream>",
    )
    spool_max_bytes: Annotated[int, Field(ge=1024, le=1 << 40), NotABool] = Field(
        256 << 20, description="bytes the spool may hold; events past it are dropped and counted"
    )
    max_deliver: Annotated[int, Field(ge=1, le=1000), NotABool] = Field(
        5, description="deliveries of an event before a worker dead-letters it"
    )
    ack_wait: PositiveSeconds = Field(
        30.0, description="seconds before an unacknowledged event is delivered again"
    )
    redeliver_delay: PositiveSeconds = Field(
        1.0, description="first delay before a failed event is delivered again, doubled each time"
    )
    redeliver_max_delay: PositiveSeconds = Field(60.0, description="cap of that delay")
    dlq_subject: str | None = Field(
        None, description="subject of dead-lettered events; None = enrichlog.dlq.<stream>"
    )

    @field_validator("transport", "spool_dir", "dlq_subject", mode="before")
    @classmethod
    def _transport_none_from_text(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"", "none", "null"}:
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("transport")
    @classmethod
    def _valid_transport(cls, value: str | None) -> str | None:
        if value is not None:
            from .transport.config import TransportConfig  # noqa: PLC0415

            # EnricherConfigError is a ValueError: pydantic locates it here.
            TransportConfig.parse(value)
        return value

    @field_validator("dlq_subject")
    @classmethod
    def _valid_dlq_subject(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked with the transport, as the producer and the worker will
        # use the two (a transport that failed its own check is absent).
        transport = info.data.get("transport")
        if value is not None and transport is not None:
            from .transport.config import TransportConfig  # noqa: PLC0415

            TransportConfig.parse(transport, dlq_subject=value)
        return value

    # -- end of scale-out settings ---------------------------------------------

    @field_validator("level", mode="before")
    @classmethod
    def _known_level(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value in LEVELS.values():
                return logging.getLevelName(value).lower()
            numbers = ", ".join(str(number) for number in sorted(set(LEVELS.values())))
            raise ValueError(f"unknown level number {value}; expected one of {numbers}")
        if not isinstance(value, str):
            return value
        name = value.strip().lower()
        name = _LEVEL_ALIASES.get(name, name)
        if name not in LEVELS:
            raise ValueError(f"unknown level {value!r}; expected one of {', '.join(LEVELS)}")
        return name

    @field_validator("levels", mode="before")
    @classmethod
    def _logger_levels(cls, value: Any) -> Any:
        return _parse_levels(value)

    @field_validator("enrichers", mode="before")
    @classmethod
    def split_uri_list(cls, value: Any) -> Any:
        """A JSON list or a comma-separated string of URIs, as a list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError as exc:
                    raise ValueError(
                        f"a value starting with '[' (ENRICHLOG_ENRICHERS or enrichers=) must be "
                        f"a JSON list of URIs: {exc}"
                    ) from None
            return [part for part in _URI_LIST_SPLIT.split(text) if part]
        return value

    @field_validator("error_field")
    @classmethod
    def _not_an_event_key(cls, value: str | None) -> str | None:
        if value in _EVENT_KEYS:
            raise ValueError(
                f"{value!r} is a key of every event ({', '.join(sorted(_EVENT_KEYS))}); "
                "the errors would overwrite it"
            )
        return value

    def __init__(self, **values: Any) -> None:
        # Underscored keywords are pydantic-settings' own (``_env_file``...).
        unknown_settings({k: v for k, v in values.items() if not k.startswith("_")})
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise invalid_settings(exc) from None
        except SettingsError as exc:
            raise EnricherConfigError(_unreadable_source(exc)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise EnricherConfigError(
                f"invalid logging settings: cannot read the .env file: {exc}"
            ) from None

    def __repr_args__(self) -> Any:
        # repr() and str(): the real values may hold passwords.
        shown = mask_mapping({str(name): value for name, value in super().__repr_args__()})
        shown["enrichers"] = [mask_uri(uri) for uri in self.enrichers]
        if self.transport:
            shown["transport"] = mask_uri(self.transport)
        return list(shown.items())

    @model_serializer(mode="wrap", when_used="json")
    def _masked_json(self, handler: SerializerFunctionWrapHandler) -> Any:
        # model_dump() keeps the real values (the runtime rebuilds settings
        # from them); JSON is written to be read by people and tools.
        dumped = handler(self)
        if isinstance(dumped, dict) and isinstance(dumped.get("enrichers"), list):
            dumped["enrichers"] = [
                mask_uri(uri) if isinstance(uri, str) else uri for uri in dumped["enrichers"]
            ]
        if isinstance(dumped, dict) and isinstance(dumped.get("transport"), str):
            # As a URI, not as text: a password may hold a space.
            dumped["transport"] = mask_uri(dumped["transport"])
        return mask_mapping(dumped) if isinstance(dumped, dict) else dumped

    @field_validator("error_field", "level_timeout", "health_check_interval", mode="before")
    @classmethod
    def _none_from_text(cls, value: Any) -> Any:
        """``none``, ``null`` or an empty value turns these off (environment)."""
        if isinstance(value, str) and value.strip().lower() in {"", "none", "null"}:
            return None
        return value

    @property
    def output_name(self) -> str:
        """:attr:`output` as text: the target, or a sink object's type."""
        return _output_name(self.output)

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


def _unreadable_source(exc: SettingsError) -> str:
    """A message for a variable pydantic-settings could not parse: which
    one, and why (the JSON decoder's message, which does not echo the value)."""
    found = re.search(r'field "(?P<field>[^"]+)" from source "(?P<source>[^"]+)"', str(exc))
    field = found["field"] if found else None
    where = f"ENRICHLOG_{field.upper()}" if field else "an ENRICHLOG_* variable"
    if found and found["source"].startswith("DotEnv"):
        where += " (in .env)"
    cause = exc.__cause__
    if isinstance(cause, json.JSONDecodeError):
        problem = f"is not valid JSON: {cause}"
    else:
        problem = "cannot be read" + (f": {mask_secrets(str(cause))}" if cause else "")
    expected = (
        'a JSON object such as {"user": {"timeout": 0.2}}'
        if field == "enricher_options"
        else "JSON"
    )
    return f"invalid logging settings: {where} {problem}; expected {expected}"


def resolve_settings(
    settings: LoggingSettings | None, overrides: Mapping[str, Any]
) -> LoggingSettings:
    """``settings`` (or the environment, if ``None``) with ``overrides`` applied.

    Raises:
        EnricherConfigError: a setting is unknown, invalid or unreadable; the
            message names each field at fault (secrets masked).
    """
    require_settings(settings)
    try:
        if settings is None:
            return LoggingSettings(**overrides)
        if not overrides:
            return settings
        unknown_settings(overrides)
        # The output as it is: model_dump() would turn a sink that is an
        # iterator (a file, io.StringIO) into an iterator of its lines.
        # Built as a call, not model_validate(): that runs __init__ too, whose
        # error pydantic wrapped in one more "invalid logging settings".
        return LoggingSettings(
            **{**settings.model_dump(exclude={"output"}), "output": settings.output, **overrides}
        )
    except ValidationError as exc:
        raise invalid_settings(exc) from None


def invalid_settings(exc: ValidationError) -> EnricherConfigError:
    """The error for settings that failed validation: each field at fault
    and its problem, secrets masked."""
    problems = "; ".join(
        validation_problem(error) for error in exc.errors(include_url=False, include_input=False)
    )
    return EnricherConfigError(f"invalid logging settings: {problems}")


def validation_problem(error: Mapping[str, Any]) -> str:
    """One pydantic error as ``location: message``, each masked on its own:
    masked together, a secret-like name ("api_key: Extra inputs...") lost
    the message's first word; and a location may hold a user's key (an
    ``enricher_options`` name that is a URI with its password)."""
    location = ".".join(str(part) for part in error["loc"]) or "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    loc = error["loc"]
    if error["type"] == "extra_forbidden" and len(loc) == 3 and loc[0] == "enricher_options":
        # A mistyped knob ('tiemout'): the closest knob, as everywhere else.
        message += did_you_mean(str(loc[2]), EnricherOptions.model_fields)
    return f"{mask_secrets(location)}: {mask_secrets(message)}"


def require_settings(settings: object) -> None:
    """Raise :class:`EnricherConfigError` unless ``settings`` is ``None`` or
    a :class:`LoggingSettings` (a dict of settings is a common slip)."""
    if settings is None or isinstance(settings, LoggingSettings):
        return
    raise EnricherConfigError(
        f"settings: expected a LoggingSettings, got {type(settings).__name__!r}; pass "
        "settings as keyword arguments (configure_logging(level='info')) or build "
        "LoggingSettings(...) from them"
    )


def unknown_settings(values: Mapping[str, Any]) -> None:
    """Raise :class:`EnricherConfigError` naming keys that are not settings."""
    unknown = sorted(set(values) - set(LoggingSettings.model_fields))
    if unknown:
        hints = ", ".join(
            f"{name!r}{did_you_mean(name, LoggingSettings.model_fields)}" for name in unknown
        )
        raise EnricherConfigError(f"unknown logging setting(s): {hints}")
