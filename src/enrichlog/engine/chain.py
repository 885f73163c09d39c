"""The structlog processors around enrichment, and the renderers.

A container installs::

    merge_contextvars -> add_log_level -> TimeStamper(iso)     (pre_processors)
      -> AsyncEnricherProcessor (when enrichers are configured)
      -> format_exc_info -> renderer (json / console / logfmt)  (post_processors)

The renderer never raises: an event an enricher made unserialisable is
written with its odd values shown by ``repr`` and a ``render_error`` field.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from ..settings import LoggingSettings

__all__ = ["SafeRenderer", "make_renderer", "post_processors", "pre_processors"]

try:  # optional extra: about twice as fast as the stdlib encoder here
    import orjson
except ImportError:  # pragma: no cover - exercised without the extra
    orjson = None  # type: ignore[assignment]


class SafeRenderer:
    """Wraps a renderer so that no event can make it raise.

    Args:
        renderer: the structlog renderer to call.
    """

    __slots__ = ("_render",)

    def __init__(self, renderer: Callable[[WrappedLogger, str, EventDict], Any]) -> None:
        self._render = renderer

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> Any:
        try:
            return self._render(logger, method_name, event_dict)
        except Exception as exc:
            return self._render(logger, method_name, _printable(event_dict, exc))


class _SafeJSONRenderer(structlog.processors.JSONRenderer):
    """structlog's ``JSONRenderer`` that falls back instead of raising.

    A subclass rather than a :class:`SafeRenderer` around it: one Python
    frame less per event, which is most of what separates enrichlog without
    enrichers from plain structlog (docs/benchmarks.md, "Hot-path choices").
    """

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str | bytes:
        try:
            return self._dumps(event_dict, **self._dumps_kw)
        except Exception as exc:
            return self._dumps(_printable(event_dict, exc), **self._dumps_kw)


def _printable(event_dict: EventDict, exc: Exception) -> dict[str, Any]:
    safe: dict[str, Any] = {}
    for key, value in event_dict.items():
        name = key if isinstance(key, str) else _repr(key)
        safe[name] = (
            value
            if isinstance(value, str | bool | float | type(None))
            or (type(value) is int and -(2**63) <= value < 2**64)
            else _repr(value)
        )
    safe["render_error"] = f"{type(exc).__name__}: {exc}"
    return safe


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"


def make_renderer(fmt: str, *, colors: bool = False) -> Processor:
    """The renderer for ``json``, ``console`` or ``logfmt``, made safe."""
    renderer: Callable[[WrappedLogger, str, EventDict], Any]
    if fmt == "json":
        return _SafeJSONRenderer(serializer=orjson.dumps if orjson is not None else json.dumps)
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    elif fmt == "logfmt":
        renderer = structlog.processors.LogfmtRenderer()
    else:
        raise ValueError(f"unknown format {fmt!r}; expected json, console or logfmt")
    return SafeRenderer(renderer)


def _stdout_is_tty() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def pre_processors() -> list[Processor]:
    """What runs on the logging thread before enrichment."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def post_processors(settings: LoggingSettings) -> list[Processor]:
    """What runs after enrichment: exception formatting and the renderer."""
    exceptions: Processor = (
        # Structured tracebacks without local variables: locals are where
        # passwords and tokens live.
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        if settings.format == "json"
        else structlog.processors.format_exc_info
    )
    if settings.format == "console":
        # ConsoleRenderer formats exceptions itself, prettier than a string.
        colors = settings.output == "stdout" and _stdout_is_tty()
        return [make_renderer(settings.format, colors=colors)]
    return [exceptions, make_renderer(settings.format)]
