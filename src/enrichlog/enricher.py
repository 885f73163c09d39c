"""Enrichers: the components that add fields to log events.

Three shapes are first-class and end up as the same kind of object:

* subclasses of :class:`AsyncEnricher`, which await I/O in ``enrich_async``;
* subclasses of :class:`SyncEnricher`, and plain structlog processors
  (sync callables ``(logger, method_name, event_dict) -> event_dict``);
* ``async def`` functions with the processor signature.

:func:`register_enricher` gives any of them a name, dependencies and a
priority; :func:`as_enricher` turns whatever a user passed to
``configure_logging(enrichers=[...])`` into an :class:`Enricher`, or raises
:class:`~enrichlog.exceptions.EnricherConfigError` naming the culprit.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import functools
import inspect
import re
import threading
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final, TypeVar, overload

import anyio
import structlog
from structlog.typing import EventDict, WrappedLogger

from .exceptions import EnricherConfigError, did_you_mean
from .options import EnricherOptions
from .resilience.retry import is_transient_error
from .uri import schemes
from .uri.masking import mask_secrets
from .uri.params import MAX_NAME, check_params

__all__ = [
    "DEFAULT_PRIORITY",
    "AsyncEnricher",
    "AsyncProcessorFunction",
    "Enricher",
    "ProcessorFunction",
    "SyncEnricher",
    "as_enricher",
    "register_enricher",
]

#: The loop time by which the running ``enrich_many`` call must return: set
#: by the runtime in the call's own context (see AsyncEnricher.batch_deadline).
BATCH_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "enrichlog_batch_deadline", default=None
)

#: Seconds before a batch call's deadline (at most; a tenth of the time left
#: when less) by which keys still unanswered, or asked again, give up.
_DEADLINE_MARGIN = 0.05


def shortly_before(deadline: float, now: float) -> float:
    """A moment a little before ``deadline`` (both on the loop's clock): what
    is still unanswered then fails alone, and the call still returns before
    the runtime times it out as a whole."""
    return deadline - max(0.0, min(_DEADLINE_MARGIN, (deadline - now) / 10))


DEFAULT_PRIORITY = 100

_E = TypeVar("_E", bound="Enricher")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _default_name(cls: type) -> str:
    """``UserLookupEnricher`` -> ``user_lookup``."""
    base = cls.__name__.removesuffix("Enricher") or cls.__name__
    return _CAMEL_BOUNDARY.sub("_", base).lower()


def _as_names(
    value: str | Iterable[str], owner: str, what: str = "dependencies"
) -> tuple[str, ...]:
    # A bare string is one name, not a sequence of one-letter names.
    if isinstance(value, str):
        names: tuple[object, ...] = (value,)
    else:
        try:
            names = tuple(value)
        except TypeError:
            raise EnricherConfigError(
                f"enricher {owner!r}: {what} must be a name or a list of names, got {value!r}"
            ) from None
    for dep in names:
        if not isinstance(dep, str) or not dep:
            raise EnricherConfigError(
                f"enricher {owner!r}: {what} must be non-empty strings, got {dep!r}"
            )
        if mask_secrets(dep) != dep:  # (a URI pasted for a name)
            raise EnricherConfigError(
                f"enricher {owner!r}: {what} entry {mask_secrets(dep)!r} {_UNSHOWABLE}"
            )
    return names  # type: ignore[return-value]


def _checked_priority(value: object, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EnricherConfigError(f"enricher {owner!r}: priority must be an integer, got {value!r}")
    return value


def _checked_blocking(value: object, owner: str) -> bool:
    if not isinstance(value, bool):  # "yes" would read as True, "false" too
        raise EnricherConfigError(
            f"enricher {owner!r}: blocking must be True or False, got {value!r}"
        )
    return value


#: Methods the runtime calls and uses the result of: an ``async def`` there
#: returns a coroutine, never a value.
_PLAIN_METHODS = ("cache_key", "apply", "is_transient", "enrich")

#: Methods the runtime awaits.
_AWAITED_METHODS = ("enrich_async", "enrich_many", "_startup", "_shutdown", "_health_check")


def _check_methods(cls: type, name: str) -> None:
    """Refuse a method written ``async def`` where a value is expected, or
    ``def`` where it is awaited, a method replaced by a value, and a value
    put in place of one of enrichlog's read-only properties: the mistake
    would otherwise show only at run time, as a reason on every event or an
    error naming nothing."""
    for method in (*_PLAIN_METHODS, *_AWAITED_METHODS, *_LIFECYCLE_METHODS):
        value = inspect.getattr_static(cls, method, _ABSENT)
        if value is not _ABSENT and not _is_method(value):
            shown = "None" if value is None else f"a value of type {type(value).__name__}"
            raise EnricherConfigError(
                f"enricher {name!r}: {method} must be a method (def or async def in the "
                f"class), but the class sets it to {shown}"
            )
    for attribute in _library_properties(cls):
        value = inspect.getattr_static(cls, attribute)
        if not isinstance(value, property):
            raise EnricherConfigError(
                f"enricher {name!r}: {attribute} is read-only (computed by enrichlog), "
                f"but the class sets it to a {type(value).__name__}"
                + (
                    "; set each knob as a class attribute (timeout = 1.0) or a constructor keyword"
                    if attribute == "options"
                    else ""
                )
            )
    for method in _PLAIN_METHODS:
        fn = getattr(cls, method, None)
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise EnricherConfigError(
                f"enricher {name!r}: {method}() must be a plain method (def), "
                f"not async def: its result is used as it is, never awaited"
            )
    for method in _AWAITED_METHODS:
        fn = getattr(cls, method, None)
        if (
            inspect.isfunction(fn)
            and not inspect.iscoroutinefunction(fn)
            # A decorated method (functools.wraps) may return an awaitable.
            and not hasattr(fn, "__wrapped__")
        ):
            raise EnricherConfigError(
                f"enricher {name!r}: {method}() must be a coroutine function "
                f"(async def): the runtime awaits it"
            )


_ABSENT = object()

#: enrichlog's own lifecycle methods, which the runtime calls.
_LIFECYCLE_METHODS = ("startup", "shutdown", "health_check")


def _is_method(value: object) -> bool:
    """Whether a class attribute is a method the runtime can call on an
    instance: a function (a decorated one included), a static or class
    method, or a descriptor that binds like one (``functools.partialmethod``).
    A callable object is not: called on the instance it would not get
    ``self``, and an ``async def __call__`` is one the checks cannot see."""
    return (
        inspect.isfunction(value)
        or isinstance(value, staticmethod | classmethod | functools.partialmethod)
        or (callable(value) and hasattr(value, "__get__") and not isinstance(value, type))
    )


def _name_problem(name: str) -> str | None:
    """What makes ``name`` unfit to show in lines, metrics and ``plan``
    (``None``: nothing): a control character (an escape sequence would
    reach the terminal of whoever reads ``plan``), a lone surrogate, a
    comma (lists of names are comma-separated), spaces around it, or its
    length."""
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if not name.isprintable() or name != name.strip():
        return "holds a control character, or spaces around it"
    if "," in name:
        return "holds a comma (lists of enricher names are comma-separated)"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid text (a lone surrogate)"
    if mask_secrets(name) != name:
        return _UNSHOWABLE
    return None


#: Why a name that holds a secret is refused: a name is shown unmasked.
_UNSHOWABLE: Final = (
    "holds what reads as a secret (a URI's password, a value given for a key such as "
    "'password'); names are shown as they are, in lines, metrics, health() and plan"
)


@functools.cache
def _library_properties(cls: type) -> tuple[str, ...]:
    """The properties enrichlog's own classes among ``cls``'s bases define."""
    return tuple(
        sorted(
            {
                attribute
                for base in cls.__mro__
                if base.__module__ == __name__
                for attribute, value in vars(base).items()
                if isinstance(value, property)
            }
        )
    )


class Enricher:
    """What every enricher has: identity, ordering and a lifecycle.

    Attributes may be set as class attributes or passed to the constructor;
    ``None`` means "use the container's default from the settings".

    Attributes:
        name: unique within a container; defaults to the class name in snake
            case without an ``Enricher`` suffix (``UserEnricher`` -> ``user``).
        dependencies: names of enrichers whose output this one reads; it runs
            in a later level than all of them.
        priority: order within a level, lower first (default 100); ties keep
            registration order.
        provides: the event keys this enricher writes. Optional; two
            enrichers of one level that provide the same key are a
            configuration error.
        source: where the enricher came from (``code``, ``uri``, ``plugin``);
            shown by ``python -m enrichlog plan``.
        scheme: the URI scheme that builds this class (class attribute),
            registered (:mod:`enrichlog.uri.schemes`) when the class is
            defined; its ``Params`` is checked then.
    """

    name: str = ""
    dependencies: tuple[str, ...] = ()
    priority: int = DEFAULT_PRIORITY
    provides: tuple[str, ...] = ()
    source: str = "code"
    scheme: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        scheme = cls.__dict__.get("scheme")
        if scheme:
            check_params(cls)
            schemes.register(scheme, cls)

    def __init__(
        self,
        *,
        name: str | None = None,
        dependencies: str | Iterable[str] | None = None,
        priority: int | None = None,
        provides: str | Iterable[str] | None = None,
    ) -> None:
        resolved = name if name is not None else (self.name or _default_name(type(self)))
        if not isinstance(resolved, str) or not resolved:
            raise EnricherConfigError(
                f"enricher of type {type(self).__name__}: name must be a "
                f"non-empty string, got {resolved!r}"
            )
        problem = _name_problem(resolved)
        if problem is not None:
            raise EnricherConfigError(
                f"enricher of type {type(self).__name__}: name "
                f"{mask_secrets(resolved[:80])!r} {problem}"
            )
        _check_methods(type(self), resolved)
        self.name = resolved
        self.dependencies = _as_names(
            self.dependencies if dependencies is None else dependencies, resolved
        )
        if resolved in self.dependencies:
            raise EnricherConfigError(f"enricher {resolved!r} depends on itself")
        self.priority = _checked_priority(self.priority if priority is None else priority, resolved)
        self.provides = _as_names(
            self.provides if provides is None else provides, resolved, "provides"
        )
        self._started = False
        self._lock: anyio.Lock | None = None
        #: Started and healthy: the runtime calls the enricher; otherwise it
        #: is skipped as ``unavailable``. Read on every event, hence a plain
        #: attribute, kept by :meth:`startup`, :meth:`shutdown` and
        #: :meth:`health_check`.
        self.available = False
        #: The most recent failure, for ``container.health()``: while the
        #: enricher is unavailable, its start-up or health-check failure
        #: (``startup failed: ConnectionError``); otherwise the reason of its
        #: last failed call (``timeout``), kept after it recovers; ``None``
        #: if none.
        self.last_error: str | None = None
        #: The reason of the last failed call (see :meth:`record_failure`).
        self.last_call_error: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- lifecycle -------------------------------------------------------

    @property
    def is_started(self) -> bool:
        """Whether :meth:`startup` completed and :meth:`shutdown` has not run."""
        return self._started

    @property
    def is_healthy(self) -> bool:
        """Started, and the last health check (if any) passed."""
        return self.available

    def _get_lock(self) -> anyio.Lock:
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock

    async def startup(self) -> None:
        """Run :meth:`_startup` once; later and concurrent calls wait for it.

        Raises whatever ``_startup`` raises; the enricher then stays not
        started (its :attr:`last_error` says why) and a later call tries
        again.
        """
        async with self._get_lock():
            if self._started:
                return
            try:
                await self._startup()
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and _cancelled_from_outside():
                    raise
                self.last_error = f"startup failed: {type(exc).__name__}"
                if isinstance(exc, asyncio.CancelledError):
                    # Raised by _startup itself: a failure like any other,
                    # not the cancellation of whoever starts the enrichers.
                    raise RuntimeError("_startup raised CancelledError") from None  # noqa: TRY004
                raise
            self._started = True
            self.available = True
            self.last_error = self.last_call_error

    async def shutdown(self) -> None:
        """Run :meth:`_shutdown` once if the enricher was started; idempotent."""
        async with self._get_lock():
            if not self._started:
                return
            self._started = False
            self.available = False
            try:
                await self._shutdown()
            except asyncio.CancelledError:
                if _cancelled_from_outside():
                    raise
                raise RuntimeError("_shutdown raised CancelledError") from None

    async def health_check(self) -> bool:
        """Ask :meth:`_health_check`; an exception counts as unhealthy."""
        if not self._started:
            return False
        try:
            healthy = bool(await self._health_check())
        except asyncio.CancelledError:
            if _cancelled_from_outside():
                raise
            healthy = False  # raised by the check itself
        except BaseException:  # any failure means unhealthy
            healthy = False
        self.available = healthy and self._started
        self.last_error = self.last_call_error if healthy else "health check failed"
        return healthy

    def record_failure(self, reason: str) -> None:
        """A call failed for ``reason``: the most recent failure, kept after
        the enricher recovers (a passing health check or a new start-up
        does not clear it). While the enricher is unavailable, ``last_error``
        keeps saying why (a failed start-up or health check): a call that
        was in flight when it became so does not replace that."""
        self.last_call_error = reason
        if self.available:
            self.last_error = reason

    def after_fork_in_child(self) -> None:
        """Mark the enricher not started (after ``fork()``: its pools belong
        to the parent's event loop, so it starts afresh in the child)."""
        self._started = False
        self.available = False
        self.last_error = self.last_call_error = None
        self._lock = None

    async def _startup(self) -> None:
        """Open pools and clients here; runs on the enrichment runtime loop."""

    async def _shutdown(self) -> None:
        """Close what :meth:`_startup` opened; runs on the runtime loop."""

    async def _health_check(self) -> bool:
        """Return whether the backend is usable (default: always)."""
        return True


class AsyncEnricher(Enricher):
    """Base class of enrichers that await I/O to add fields to events.

    Override :meth:`enrich_async`; optionally ``_startup``, ``_shutdown`` and
    ``_health_check``. Everything runs on the container's one long-lived
    event loop, so pools opened in ``_startup`` stay valid.

    Resilience knobs: every field of :class:`~enrichlog.options.EnricherOptions`
    (``timeout``, ``cache_ttl``, ``cache_max_size``, ``cache_error_ttl``,
    ``max_concurrency``, ``retry_attempts``, ``retry_base_delay``,
    ``retry_max_delay``, ``failure_threshold``, ``recovery_timeout``,
    ``half_open_max_calls``, ``batch_size``, ``batch_window``), set as a
    class attribute or a constructor keyword (which wins); ``None`` means
    the container's default. The constructor validates them with that
    model, and :attr:`options` gives them as one. The values the enricher
    runs with also depend on the settings:
    :meth:`~enrichlog.options.ResolvedOptions.for_enricher`.
    """

    # The knobs of EnricherOptions, which defines their meaning and bounds;
    # declared here so that type checkers know the attributes (a test checks
    # that the two lists match).
    timeout: float | None = None
    cache_ttl: float | None = None
    cache_max_size: int | None = None
    cache_error_ttl: float | None = None
    max_concurrency: int | None = None
    retry_attempts: int | None = None
    retry_base_delay: float | None = None
    retry_max_delay: float | None = None
    failure_threshold: int | None = None
    recovery_timeout: float | None = None
    half_open_max_calls: int | None = None
    batch_size: int | None = None
    batch_window: float | None = None

    #: ``True``: the fields this enricher adds never replace a field the
    #: event already has (a value given at the call site, or by an earlier
    #: level, wins). A cached or batched value is computed once per key and
    #: served to every event of that key, so a ``setdefault`` in
    #: ``enrich_async`` or ``apply`` would decide for all of them by the
    #: first event's fields: set this instead, and let the runtime keep each
    #: event's own values.
    keep_existing: ClassVar[bool] = False

    def __init__(
        self,
        *,
        name: str | None = None,
        dependencies: str | Iterable[str] | None = None,
        priority: int | None = None,
        provides: str | Iterable[str] | None = None,
        **options: float | None,
    ) -> None:
        """Set the identity (see :class:`Enricher`) and the knobs.

        Args:
            options: knobs of :class:`~enrichlog.options.EnricherOptions`;
                one given as ``None`` keeps the class attribute.

        Raises:
            EnricherConfigError: a knob is unknown or its value invalid
                (the message names the enricher, the knob and the value), or
                a batching class lacks ``cache_key`` or ``apply``.
        """
        super().__init__(name=name, dependencies=dependencies, priority=priority, provides=provides)
        if getattr(self, "blocking", False) is not False:
            raise EnricherConfigError(_ASYNC_BLOCKING.format(name=self.name))
        given = {knob: getattr(self, knob, None) for knob in EnricherOptions.model_fields}
        given |= {knob: value for knob, value in options.items() if value is not None}
        validated = EnricherOptions.from_code(self.name, given)
        for knob in EnricherOptions.model_fields:
            setattr(self, knob, getattr(validated, knob))
        if self.batches and not (self.caches and type(self).apply is not AsyncEnricher.apply):
            raise EnricherConfigError(
                f"enricher {self.name!r}: a class that defines enrich_many() must also "
                "define cache_key() (the key of each event) and apply() (how a value "
                "goes into the event)"
            )

    @property
    def options(self) -> EnricherOptions:
        """The knobs this enricher sets itself (``None``: not set), read
        from its attributes; what it runs with is
        :meth:`~enrichlog.options.ResolvedOptions.for_enricher`.

        Raises:
            EnricherConfigError: an attribute was given an invalid value
                after construction.
        """
        return EnricherOptions.from_code(
            self.name, {knob: getattr(self, knob) for knob in EnricherOptions.model_fields}
        )

    @property
    def caches(self) -> bool:
        """Whether the class defines :meth:`cache_key` (so results are cached)."""
        return type(self).cache_key is not AsyncEnricher.cache_key

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        """Return the key under which this enricher's changes are cached.

        Override to enable caching; return ``None`` for events that must not
        be cached. Called on the logging thread, so keep it cheap and pure.
        """
        return None

    def is_transient(self, exc: BaseException) -> bool:
        """Whether a failure is worth retrying (default: OS and timeout errors)."""
        return is_transient_error(exc)

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict | None:
        """Add fields to ``event_dict`` and return it (or ``None``).

        The dict is this enricher's own copy of the event; return it mutated,
        return a new mapping, or return ``None`` to mean "mutated in place".

        A batching enricher (one that defines :meth:`enrich_many`) need not
        override it: by default one event is a batch of its one key.
        """
        if not self.batches:
            raise NotImplementedError(f"{type(self).__name__} must override enrich_async()")
        key = self.cache_key(event_dict)
        if key is None:
            return event_dict
        values = await self.enrich_many((key,))
        if key not in values:
            return event_dict  # a missing key adds nothing and is no error
        value = values[key]
        if isinstance(value, BaseException):
            raise value  # the key failed alone: here, the call fails
        return self.apply(event_dict, value)

    @property
    def batches(self) -> bool:
        """Whether the class defines :meth:`enrich_many` (so lookups of
        events in flight at once are made in one backend call)."""
        return type(self).enrich_many is not AsyncEnricher.enrich_many

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        """Look up many keys in one backend call: ``{key: value}``.

        Define it, with :meth:`cache_key` and :meth:`apply`, instead of
        :meth:`enrich_async`: the runtime collects the keys of the events
        waiting for this enricher, without duplicates or keys its cache holds,
        and makes one call for them. A key missing from the result adds
        nothing to its events and is not an error; an exception as a key's
        value fails that key's events alone (a ``TimeoutError`` as the
        reason ``timeout``), and is retried (when ``retry_attempts`` allows
        and :meth:`is_transient` says so) for that key alone; an exception
        raised fails every event of the batch with the same reason.
        """
        raise NotImplementedError(f"{type(self).__name__} must override enrich_many()")

    @staticmethod
    def batch_deadline() -> float | None:
        """Inside :meth:`enrich_many`: the event loop's time
        (``loop.time()``) at which the runtime times the call out, failing
        every key still unanswered; ``None`` anywhere else. An enricher that
        asks its backend key by key can give up on the keys that would miss
        it a little earlier (their value a ``TimeoutError``), so that the
        keys answered in time keep their values."""
        return BATCH_DEADLINE.get()

    def apply(self, event_dict: EventDict, value: Any) -> EventDict | None:
        """Put ``value`` (what :meth:`enrich_many` returned for this event's
        key) into ``event_dict``, this enricher's copy of the event; return it
        or ``None``."""
        raise NotImplementedError(f"{type(self).__name__} must override apply()")


class SyncEnricher(Enricher):
    """Base class of enrichers that compute fields without awaiting.

    They run inline (no thread, no hop) unless ``blocking`` is true, in which
    case they run in a worker thread, concurrently with the rest of their
    level, from a pool capped by the ``max_enricher_threads`` setting.
    """

    blocking: bool = False

    def __init__(
        self,
        *,
        name: str | None = None,
        dependencies: str | Iterable[str] | None = None,
        priority: int | None = None,
        provides: str | Iterable[str] | None = None,
        blocking: bool | None = None,
        **unknown: Any,
    ) -> None:
        """Set the identity (see :class:`Enricher`) and ``blocking``.

        Raises:
            EnricherConfigError: a keyword it does not take, named (a
                resilience knob: those apply to async enrichers only).
        """
        super().__init__(name=name, dependencies=dependencies, priority=priority, provides=provides)
        if unknown:
            raise _unknown_sync_keyword(self.name, next(iter(unknown)))
        self.blocking = _checked_blocking(
            self.blocking if blocking is None else blocking, self.name
        )

    def enrich(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict | None:
        """Add fields to ``event_dict`` (a copy) and return it or ``None``."""
        raise NotImplementedError(f"{type(self).__name__} must override enrich()")


# The keywords SyncEnricher takes, as introspection (and the URI factory's
# check of a class against its Params) sees them: ``**unknown`` is only there
# to turn a wrong keyword into an error naming the enricher.
_sync_init = inspect.signature(SyncEnricher.__init__)
SyncEnricher.__init__.__signature__ = _sync_init.replace(  # type: ignore[attr-defined]
    parameters=[p for p in _sync_init.parameters.values() if p.kind is not p.VAR_KEYWORD]
)
del _sync_init

ProcessorFunction = Callable[[WrappedLogger, str, EventDict], Any]
AsyncProcessorFunction = Callable[[WrappedLogger, str, EventDict], Awaitable[Any]]


class _FunctionEnricher(SyncEnricher):
    """A plain structlog processor used as an enricher."""

    def __init__(self, fn: ProcessorFunction, **kwargs: Any) -> None:
        self.function = fn
        super().__init__(**kwargs)

    def enrich(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict | None:
        result: EventDict | None = self.function(logger, method_name, event_dict)
        return result


class _AsyncFunctionEnricher(AsyncEnricher):
    """An ``async def`` processor used as an enricher."""

    def __init__(self, fn: AsyncProcessorFunction, **kwargs: Any) -> None:
        self.function = fn
        super().__init__(**kwargs)

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict | None:
        result: EventDict | None = await self.function(logger, method_name, event_dict)
        return result


class _BridgedRecord(threading.local):
    """The stdlib record the bridge is logging, on its thread, while it logs
    it (``record``). Thread-local, not a context variable: the event's copy
    of the caller's context must not hold it (nor lose the shared empty
    context of events logged where no variable is set)."""

    record: Any = None


BRIDGED = _BridgedRecord()


class CallSite:
    """structlog's ``CallsiteParameterAdder`` given as an enricher.

    It reads the call site from the stack, which only the log call has: an
    enricher runs later (after an async level, on the runtime's thread) or
    below enrichlog's own frames, and would record those. So the container
    runs :attr:`at_call`, a copy that also skips enrichlog's frames, with
    the pre-processors on the logging thread; in the enrichment graph the
    enricher keeps its name and place and adds nothing more, except for a
    stdlib record brought by ``ProcessorFormatter`` (``_record``), whose
    call site is the record's own wherever it is read."""

    __slots__ = ("_from_stack", "adder")

    def __init__(self, adder: structlog.processors.CallsiteParameterAdder) -> None:
        self.adder = adder
        from_stack = copy.copy(adder)
        ignores = getattr(adder, "_additional_ignores", None)
        if isinstance(ignores, list):
            from_stack._additional_ignores = [*ignores, "enrichlog"]
        self._from_stack = from_stack

    def at_call(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        """The pre-processor: the call site from the stack, or, for a record
        the stdlib bridge brings, from the record (a record handed over by a
        ``QueueListener``, or logged with ``stacklevel``, was made elsewhere
        than the handler's stack shows), as structlog reads a record."""
        record = BRIDGED.record
        if record is None:
            return self._from_stack(logger, method_name, event_dict)
        event_dict["_record"] = record
        try:
            return self.adder(logger, method_name, event_dict)
        finally:
            event_dict.pop("_record", None)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if "_record" in event_dict and not event_dict.get("_from_structlog", False):
            return self.adder(logger, method_name, event_dict)
        return event_dict  # added at the call


def call_site_processors(enrichers: Iterable[Enricher]) -> list[ProcessorFunction]:
    """What runs on the logging thread for the ``CallsiteParameterAdder``
    instances among ``enrichers`` (see :class:`CallSite`)."""
    return [
        enricher.function.at_call
        for enricher in enrichers
        if isinstance(enricher, _FunctionEnricher) and isinstance(enricher.function, CallSite)
    ]


def _callable_name(obj: Callable[..., Any]) -> str:
    name = getattr(obj, "__name__", None)
    return name if isinstance(name, str) else _default_name(type(obj))


def _is_async_callable(obj: Callable[..., Any]) -> bool:
    """An ``async def`` function or callable object. Judged by the function
    itself, not by one it wraps: a sync wrapper of an ``async def`` may run
    it to the end (``asyncio.run``, ``async_to_sync``) and return a value;
    a decorator of an ``async def`` should be an ``async def`` too."""
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(obj, "__call__", None)  # noqa: B004 - we want the method itself
    return call is not None and inspect.iscoroutinefunction(call)


def _check_processor_arity(obj: Callable[..., Any], name: str) -> None:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return  # builtins without a signature: trust them
    try:
        signature.bind(None, "info", {})
    except TypeError:
        raise EnricherConfigError(
            f"enricher {name!r}: {obj!r} must accept (logger, method_name, "
            f"event_dict) like a structlog processor; its signature is "
            f"{name}{signature}"
        ) from None


def _function_enricher(fn: Callable[..., Any], options: dict[str, Any], blocking: bool) -> Enricher:
    options.setdefault("name", _callable_name(fn))
    _check_processor_arity(fn, options["name"])
    if inspect.isasyncgenfunction(fn):
        raise EnricherConfigError(
            f"enricher {options['name']!r}: an async generator function (async def with "
            "yield) cannot enrich an event; return the event dict from an async def"
        )
    if isinstance(fn, structlog.processors.CallsiteParameterAdder):
        return _FunctionEnricher(CallSite(fn), blocking=blocking, **options)
    if _is_async_callable(fn):
        if blocking:
            raise EnricherConfigError(
                f"enricher {options['name']!r}: blocking=True is for sync "
                "functions that do blocking I/O; an async function is "
                "awaited on the runtime loop"
            )
        return _AsyncFunctionEnricher(fn, **options)
    return _FunctionEnricher(fn, blocking=blocking, **options)


_ASYNC_BLOCKING = (
    "enricher {name!r}: blocking applies to sync enrichers only (an AsyncEnricher is "
    "awaited on the runtime's loop); remove its blocking attribute"
)


_SYNC_KEEP_EXISTING = (
    "enricher {name!r}: keep_existing applies to async enrichers only (whose values may "
    "be cached or batched per key); a sync enricher sees the event itself: skip a field "
    "it already has ('if \"tier\" not in event_dict')"
)


#: What an async enricher's own code may add to it (besides the options):
#: on a sync enricher, nothing reads them.
_ASYNC_ONLY_METHODS = ("cache_key", "enrich_many", "enrich_async")


def _refuse_async_attributes(enricher: Enricher) -> None:
    """A sync enricher given a resilience option or a cache key as an
    attribute (``timeout = 0.1``, ``def cache_key``), which only async
    enrichers read: refused rather than ignored without a word.

    Raises:
        EnricherConfigError: naming the enricher and the attribute.
    """
    for attribute in (*EnricherOptions.model_fields, *_ASYNC_ONLY_METHODS):
        if getattr(enricher, attribute, None) is not None:
            raise EnricherConfigError(
                f"enricher {enricher.name!r}: {attribute!r} applies to async enrichers only, "
                "and a SyncEnricher ignores it (it runs inline, or with blocking=True in a "
                "worker thread bounded by the enricher_timeout setting); make it an "
                "AsyncEnricher, or rename the attribute if it is your own"
            )


def as_enricher(obj: object) -> Enricher:
    """Turn what a user passed as an enricher into an :class:`Enricher`.

    Accepts enricher instances, sync structlog processors and ``async def``
    processors. Raises :class:`EnricherConfigError` naming the culprit for
    anything else: a class instead of an instance, a number, a function with
    the wrong arity.
    """
    if isinstance(obj, Enricher):
        # hasattr, not obj.__dict__: reading __dict__ turns the instance's
        # inline attributes into a dict, which every event then pays for.
        if not hasattr(obj, "_started"):
            raise EnricherConfigError(
                f"enricher of type {type(obj).__name__}: its __init__ did not call "
                "super().__init__(), which sets up the enricher's name, options and state"
            )
        if isinstance(obj, AsyncEnricher) and getattr(obj, "blocking", False) is not False:
            raise EnricherConfigError(_ASYNC_BLOCKING.format(name=obj.name))
        keep_existing = getattr(obj, "keep_existing", False)
        if not isinstance(keep_existing, bool):  # "no" would read as True
            raise EnricherConfigError(
                f"enricher {obj.name!r}: keep_existing must be True or False, got {keep_existing!r}"
            )
        if not isinstance(obj, AsyncEnricher):
            if getattr(obj, "keep_existing", False):
                raise EnricherConfigError(_SYNC_KEEP_EXISTING.format(name=obj.name))
            _refuse_async_attributes(obj)
        return obj
    if isinstance(obj, type):
        if issubclass(obj, Enricher):
            raise EnricherConfigError(
                f"enricher class {obj.__name__} was passed where an instance "
                f"is expected: use {obj.__name__}()"
            )
        raise EnricherConfigError(
            f"{obj.__name__} is a class, not an enricher: pass an instance of "
            "AsyncEnricher or SyncEnricher, or a processor function"
        )
    if callable(obj):
        enricher = _function_enricher(obj, {}, blocking=False)
        if getattr(obj, "keep_existing", False):
            raise EnricherConfigError(_SYNC_KEEP_EXISTING.format(name=enricher.name))
        return enricher
    shown = mask_secrets(repr(obj))  # a URI-like string may hold a password
    raise EnricherConfigError(
        f"{shown} (of type {type(obj).__name__}) is not an enricher: expected "
        "an AsyncEnricher or SyncEnricher instance, a structlog processor "
        "function or an async def processor"
    )


@overload
def register_enricher(
    obj: _E,
    *,
    name: str | None = ...,
    dependencies: str | Iterable[str] = ...,
    priority: int | None = ...,
    blocking: bool = ...,
) -> _E: ...


@overload
def register_enricher(
    obj: Callable[..., Any],
    *,
    name: str | None = ...,
    dependencies: str | Iterable[str] = ...,
    priority: int | None = ...,
    blocking: bool = ...,
) -> Enricher: ...


@overload
def register_enricher(
    obj: None = ...,
    *,
    name: str | None = ...,
    dependencies: str | Iterable[str] = ...,
    priority: int | None = ...,
    blocking: bool = ...,
) -> Callable[[Callable[..., Any]], Enricher]: ...


def register_enricher(
    obj: object = None,
    *,
    name: str | None = None,
    dependencies: str | Iterable[str] = (),
    priority: int | None = None,
    blocking: bool = False,
) -> Enricher | Callable[[Callable[..., Any]], Enricher]:
    """Give a processor or an enricher a name, dependencies and a priority.

    Works as a function (``register_enricher(add_user, name="user")``) and as
    a decorator, with or without arguments. It registers nothing globally:
    pass the returned enricher to ``configure_logging(enrichers=[...])``.

    Args:
        obj: a sync processor, an ``async def`` processor or an enricher.
        name: defaults to the function's ``__name__`` or the enricher's name.
        dependencies: names of enrichers that must run before this one.
        priority: order within a level, lower first (default 100).
        blocking: the sync function does blocking I/O; run it in a worker
            thread instead of inline.

    Raises:
        EnricherConfigError: ``obj`` is not usable as an enricher.
    """

    def register(target: object) -> Enricher:
        shown = name if name is not None else _callable_name(target)  # type: ignore[arg-type]
        _checked_blocking(blocking, shown)
        if isinstance(target, Enricher):
            return _configure_instance(target, name, dependencies, priority, blocking)
        if callable(target) and not isinstance(target, type):
            options: dict[str, Any] = {"dependencies": dependencies}
            if name is not None:
                options["name"] = name
            if priority is not None:
                options["priority"] = priority
            return _function_enricher(target, options, blocking)
        return as_enricher(target)  # raises with the right message

    if obj is None:
        return register
    return register(obj)


def _configure_instance(
    enricher: _E,
    name: str | None,
    dependencies: str | Iterable[str],
    priority: int | None,
    blocking: bool,
) -> _E:
    if name is not None:
        enricher.name = name
    deps = _as_names(dependencies, enricher.name)
    if deps:
        enricher.dependencies = deps
    if priority is not None:
        enricher.priority = _checked_priority(priority, enricher.name)
    if blocking:
        if not isinstance(enricher, SyncEnricher):
            raise EnricherConfigError(
                f"enricher {enricher.name!r}: blocking=True applies to sync enrichers only"
            )
        enricher.blocking = True
    return enricher


def _cancelled_from_outside() -> bool:
    """Whether the task running a hook is being cancelled (a
    ``CancelledError`` the hook raised on its own is a failure of the hook)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


_SYNC_KEYWORDS = ("name", "dependencies", "priority", "provides", "blocking")


def _unknown_sync_keyword(name: str, keyword: str) -> EnricherConfigError:
    """The error for a keyword a :class:`SyncEnricher` does not take."""
    if keyword in EnricherOptions.model_fields:
        return EnricherConfigError(
            f"enricher {name!r}: {keyword!r} applies to async enrichers only (a SyncEnricher "
            "has no resilience attributes: it runs inline, or with blocking=True in a worker "
            "thread bounded by the enricher_timeout setting)"
        )
    hint = did_you_mean(keyword, _SYNC_KEYWORDS)
    return EnricherConfigError(
        f"enricher {name!r}: unknown keyword {keyword!r}{hint}; a SyncEnricher takes "
        f"{', '.join(_SYNC_KEYWORDS)}"
    )
