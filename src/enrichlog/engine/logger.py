"""The bound logger class enrichlog installs.

structlog's filtering bound logger, with ``a*`` methods that do not hop to
an executor thread: they run the cheap pre-processors on the caller and
await the event's enrichment and writing on the runtime loop, without
blocking the caller's loop. Filtered-out levels stay a bare ``return None``.

Logger names and per-logger levels cost nothing per event: a logger made
with ``get_logger("api")`` wraps a writer that carries the name, which the
class puts into the logger's context (``logger: "api"``) when it is bound;
with per-logger levels, binding picks the class of that name's level, so a
filtered-out call is still a bare ``return None``.

The level methods run the chain themselves (see :func:`_make_emit`):
structlog's ``_proxy_to_logger`` re-packs the call's keyword arguments twice
per call, and turns a field named ``method_name`` into a ``TypeError``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import structlog
from structlog._log_levels import LEVEL_TO_NAME

from .chain import LoggerLevels
from .processor import ASYNC_WAITER, AsyncEnricherProcessor, Waiter

__all__ = ["SharedChain", "make_bound_logger_class"]


def _interpolate(event: str, args: tuple[Any, ...], kw: dict[str, Any]) -> str:
    """structlog's positional interpolation (``event % args``; one non-empty
    mapping is used by name), except that a message and arguments that do not
    fit (``log.info("%s %s", 1)``) never raise into the caller and lose the
    event: it keeps the message as written, the arguments in
    ``positional_args`` and the reason in ``format_error``."""
    given: Any = args
    try:
        if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            given = args[0]  # kept as the mapping, as the stdlib bridge keeps it
            return event % args[0]
        return event % args
    except Exception as exc:  # a user's message: a field, never a raise
        kw.setdefault("positional_args", given)
        kw.setdefault("format_error", type(exc).__name__)
        return event


#: What structlog accepts from the last processor as one positional argument.
_TEXT = (str, bytes, bytearray)

Emit = Callable[[Any, str, "str | None", dict[str, Any]], Any]


class SharedChain(list[Any]):
    """The processor list that structlog's loggers share: changed in place
    on reconfiguring (cached loggers keep a reference to it), and, beside
    it, :attr:`snapshot`, a tuple of it replaced whole on every change.
    enrichlog's bound logger runs the snapshot: a loop over the list while
    ``configure_logging()`` (another thread) replaces it could run off its
    shortened end, skip the renderer and hand the writer a dict (a
    ``TypeError`` into the application, the event lost). A tuple made per
    call instead costs an allocation per event, and with it young
    collections on the caller's thread: its p99."""

    __slots__ = ("snapshot",)

    def __init__(self, processors: Any = ()) -> None:
        super().__init__(processors)
        self.snapshot: tuple[Any, ...] = tuple(self)

    def __setitem__(self, index: Any, value: Any) -> None:
        # enrichlog changes the chain by slice assignment only (chain[:] = ...).
        super().__setitem__(index, value)
        self.snapshot = tuple(self)


def _unreachable(*_args: Any) -> None:  # pragma: no cover - no processor is the marker
    raise AssertionError("the marker is no processor")


def _make_emit(enrichment: AsyncEnricherProcessor | None) -> Emit:
    """structlog's ``_proxy_to_logger`` and ``_process_event`` in one frame
    (custom wrapper classes may replace them), the event dict built from the
    call's own keyword dict; and ``enrichment``, the processor of the
    installed container, tells the chain to stop by returning ``None`` where
    in any other chain it raises ``DropEvent``: a handed-off event costs no
    exception (its traceback, frames and unwinding) on the caller."""

    marker: object
    process: Callable[[Any, str, Any], Any]
    if enrichment is None:
        marker, process = object(), _unreachable  # a marker no processor is
    else:
        marker, process = enrichment, enrichment.process

    def emit(self: Any, method_name: str, event: str | None, event_kw: dict[str, Any]) -> Any:
        try:
            event_dict: Any = self._context.copy()
            event_dict.update(event_kw)
            if event is not None:
                event_dict["event"] = event
            logger = self._logger
            processors = self._processors
            if type(processors) is SharedChain:
                processors = processors.snapshot  # replaced whole: see SharedChain
            for proc in processors:
                if proc is marker:
                    event_dict = process(logger, method_name, event_dict)
                    if event_dict is None:
                        return None
                else:
                    event_dict = proc(logger, method_name, event_dict)
            if isinstance(event_dict, _TEXT):
                return getattr(logger, method_name)(event_dict)
            if isinstance(event_dict, tuple):
                args, kw = event_dict
                return getattr(logger, method_name)(*args, **kw)
            if isinstance(event_dict, dict):
                return getattr(logger, method_name)(**event_dict)
            raise ValueError(
                "Last processor didn't return an appropriate value.  Valid return "
                "values are a dict, a tuple of (args, kwargs), bytes, or a str."
            )
        except structlog.DropEvent:
            return None

    return emit


async def _log_and_wait(
    self: Any, name: str, event: str | None, kw: dict[str, Any], emit: Emit
) -> None:
    waiters: list[Waiter] = []
    token = ASYNC_WAITER.set(waiters)
    try:
        emit(self, name, event, kw)
    finally:
        ASYNC_WAITER.reset(token)
    if waiters and waiters[0][2] is not None:
        # The queue was full (overflow="block"): await room first, on this
        # loop, where a sync call would have blocked.
        await waiters[0][2]()
    if waiters and not waiters[0][0].done():
        future, bound, _ = waiters[0]
        # Bounded like an inline caller's wait; past it the event stays
        # queued and is written later, and the caller moves on. Not
        # wait_for(): in Python 3.11 it returns, swallowing the caller's
        # cancellation, when the event is written as the cancel arrives.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound):
                await asyncio.shield(future)
    else:
        # Written already (no enricher to await, cache hits, a container
        # shut down): still a point where the loop runs its other tasks and
        # a cancellation reaches the caller, as for structlog's own a*
        # methods. A loop of ``await log.ainfo()`` must not starve it.
        await asyncio.sleep(0)


def _make_method(name: str, emit: Emit) -> Callable[..., Any]:
    def meth(self: Any, /, event: str, *args: Any, **kw: Any) -> Any:
        if args:
            event = _interpolate(event, args, kw)
        return emit(self, name, event, kw)

    meth.__name__ = name
    meth.__doc__ = f"Log at {name} level."
    return meth


def _make_async_method(name: str, emit: Emit) -> Callable[..., Coroutine[Any, Any, None]]:
    async def ameth(self: Any, /, event: str, *args: Any, **kw: Any) -> None:
        if args:
            event = _interpolate(event, args, kw)
        await _log_and_wait(self, name, event, kw, emit)

    ameth.__name__ = f"a{name}"
    ameth.__doc__ = f"Log at {name} level; await enrichment without blocking the loop."
    return ameth


def make_bound_logger_class(
    min_level: int,
    levels: LoggerLevels | None = None,
    enrichment: AsyncEnricherProcessor | None = None,
) -> type[Any]:
    """A ``FilteringBoundLogger`` class for ``min_level`` with runtime-aware
    async methods.

    A logger whose wrapped writer has a ``name`` (``get_logger("api")``) gets
    ``logger: <name>`` in its context when it is bound. With ``levels`` (per
    logger levels), the class returned picks, when a logger is bound, the
    class of that logger name's level.
    """
    emit = _make_emit(enrichment)
    if levels:
        return _per_logger_class(levels, emit)
    return _level_class(min_level, emit)


def _per_logger_class(levels: LoggerLevels, emit: Emit) -> type[Any]:
    """A class whose instances are of the level class of their logger's name."""
    classes: dict[int, type[Any]] = {}

    class EnrichlogPerLoggerLevels:
        """Dispatches to the bound logger class of the logger name's level."""

        def __new__(cls, logger: Any, processors: Any = None, context: Any = None) -> Any:
            level = levels.level_of(getattr(logger, "name", None))
            target = classes.get(level)
            if target is None:
                target = classes[level] = _level_class(level, emit)
            return target(logger, processors, context)

    return EnrichlogPerLoggerLevels


def _level_class(min_level: int, emit: Emit) -> type[Any]:
    base: type[Any] = structlog.make_filtering_bound_logger(min_level)
    methods: dict[str, Any] = {}
    for level, name in LEVEL_TO_NAME.items():
        if level >= min_level:  # below it, structlog's bare ``return None``s stay
            methods[name] = _make_method(name, emit)
            methods[f"a{name}"] = _make_async_method(name, emit)

    def log(self: Any, /, level: int, event: str, *args: Any, **kw: Any) -> Any:
        if level < min_level:
            return None
        if args:
            event = _interpolate(event, args, kw)
        return emit(self, LEVEL_TO_NAME[level], event, kw)

    async def alog(self: Any, /, level: int, event: str, *args: Any, **kw: Any) -> None:
        if level < min_level:
            return
        if args:
            event = _interpolate(event, args, kw)
        await _log_and_wait(self, LEVEL_TO_NAME[level], event, kw, emit)

    def exception(self: Any, /, event: str, *args: Any, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        if methods.get("error") is not None:
            return methods["error"](self, event, *args, **kw)
        return None

    async def aexception(self: Any, /, event: str, *args: Any, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        if methods.get("aerror") is not None:
            await methods["aerror"](self, event, *args, **kw)

    def init(self: Any, logger: Any, processors: Any, context: Any) -> None:
        # Once per bind, not per event: a named logger's events carry its name.
        name = getattr(logger, "name", None)
        if name is not None and "logger" not in context:
            context["logger"] = name
        base.__init__(self, logger, processors, context)

    methods["__init__"] = init
    methods["log"] = log
    methods["alog"] = alog
    methods["exception"] = exception
    methods["aexception"] = aexception
    for alias, target in (("fatal", "critical"), ("warn", "warning"), ("msg", "info")):
        for prefix in ("", "a"):
            if prefix + target in methods:
                methods[prefix + alias] = methods[prefix + target]
    return type("EnrichlogBoundLogger", (base,), methods)
