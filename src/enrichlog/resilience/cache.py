"""Caches for enricher results: TTL plus LRU (second chance), with single-flight computation.

:class:`EnricherCache` is the building block: a bounded mapping whose entries
expire after a time to live, read on the logging thread for every event and
filled on the runtime loop by :meth:`EnricherCache.get_or_compute`, which
runs one computation per key however many events ask for it at once.
:class:`AsyncSmartCache` is the same cache configured to remember failures
for a retry interval, and :func:`cached_enricher` caches what an ``async def``
enricher adds to an event.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Mapping
from datetime import timedelta
from typing import Any, NamedTuple, ParamSpec, TypeVar, cast, overload

from ..exceptions import CachedError
from .outcome import changes_of

__all__ = ["AsyncSmartCache", "EnricherCache", "cached_enricher"]

_T = TypeVar("_T")
_P = ParamSpec("_P")


def _positive(name: str, value: float) -> float:
    # ``not value > 0`` also rejects NaN, which every comparison lets through.
    if isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _seconds(name: str, value: timedelta | float) -> float:
    if isinstance(value, timedelta):
        return _positive(name, value.total_seconds())
    return _positive(name, value)


class _Entry:
    """One cached value (or remembered failure) and when it expires."""

    __slots__ = ("error", "expires_at", "used", "value")

    def __init__(self, value: Any, expires_at: float, error: Exception | None) -> None:
        self.value = value
        self.expires_at = expires_at
        #: Set for a remembered failure; ``value`` is then ``None``.
        self.error = error
        #: Read since it last reached the old end: spared once by eviction.
        self.used = False


class _Flight:
    """One computation in progress; its identity tells whose result to keep."""

    __slots__ = ("task",)

    task: asyncio.Task[Any]


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    # Every waiter may have left (cancelled by its own timeout); reading the
    # exception here keeps asyncio from warning that it was never retrieved.
    if not task.cancelled():
        task.exception()


class EnricherCache:
    """A bounded cache whose entries expire: TTL plus least-recently-used,
    kept by second chance (the CLOCK approximation of LRU).

    Entries are kept in the order they were stored. A hit only marks its
    entry as used (one attribute store, no reordering: the cheapest thing a
    hit on the logging thread can do); eviction takes the oldest entry, and
    one marked used since it was stored or last spared is spared once more
    (unmarked and moved to the new end) instead. So an entry read since the
    others were last considered outlives them, as under LRU, and every
    operation is O(1) amortised. Entries expire lazily, when read (or when
    they reach the old end and make room), never on a timer, so ``len()``
    may count expired entries that nobody has read since. The cache never
    holds more than ``max_size`` entries: adding one to a full cache first
    drops one.

    :meth:`get` takes no lock, so a cache hit on the logging thread costs a
    dictionary lookup; writers (:meth:`set`, :meth:`delete`, :meth:`clear`,
    expiry and eviction) serialise on a lock held only for the dictionary
    operations. :meth:`get_or_compute` must be awaited on one event loop at
    a time (the enrichment runtime's).

    Args:
        max_size: the most entries held, at least 1.
        ttl: seconds an entry stays valid, unless :meth:`set` says otherwise.
        error_ttl: seconds a failed :meth:`get_or_compute` is remembered (its
            callers then get :class:`~enrichlog.exceptions.CachedError`);
            ``None`` (the default) remembers no failures.
        clock: monotonic seconds; replaceable in tests.

    Raises:
        ValueError: ``max_size``, ``ttl`` or ``error_ttl`` is not positive.
    """

    def __init__(
        self,
        max_size: int = 1000,
        ttl: float = 300.0,
        *,
        error_ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive integer, got {max_size!r}")
        self._max_size = max_size
        self._ttl = _positive("ttl", ttl)
        self._error_ttl = None if error_ttl is None else _positive("error_ttl", error_ttl)
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._in_flight: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._expirations = 0
        self._errors = 0

    def __repr__(self) -> str:
        return f"<EnricherCache size={len(self._entries)}/{self._max_size} ttl={self._ttl}s>"

    def __len__(self) -> int:
        """Entries held, remembered failures and not-yet-read expired ones included."""
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether :meth:`get` would hit; changes neither stats nor recency."""
        entry = self._entries.get(key)
        return entry is not None and entry.error is None and self._clock() < entry.expires_at

    def get(self, key: Hashable, default: Any = None) -> Any:
        """Return the value cached for ``key``, or ``default``.

        A missing or expired key, or a remembered failure, is a miss. A hit
        marks the entry used (spared by the next eviction that reaches it).

        Safe to call from any thread without a lock: under the GIL the
        lookup is one C call, and marking the entry used one attribute store;
        an entry removed by another thread meanwhile was valid when it was
        read. The counters are bumped without a lock and may miss an
        increment under heavy contention between threads; they are never
        wrong by more than that.
        """
        # No ``with lock:``: it would nearly double the cost of a hit
        # (docs/benchmarks.md, "Hot-path choices").
        entry = self._hit(key)
        if entry is None:
            self._misses += 1
            return default
        return entry.value

    def fresh(self, key: Hashable) -> Any:
        """The value of ``key``'s live entry (a hit), else ``None`` without
        counting a miss: the caller counts the lookup when it settles it
        (:meth:`count_miss`, or :meth:`get_or_compute`)."""
        entry = self._hit(key)
        return None if entry is None else entry.value

    def count_hit(self) -> None:
        """Count a lookup served without a call, made other than through
        :meth:`get` (a batching enricher's key found cached, or being
        fetched already)."""
        self._hits += 1

    def count_miss(self) -> None:
        """Count a lookup that was not served (as :meth:`count_hit`)."""
        self._misses += 1

    def _hit(self, key: Hashable) -> _Entry | None:
        """``key``'s live entry holding a value, marked used and counted as
        a hit; ``None`` otherwise (an expired entry is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry.expires_at:
            self._drop_expired(key, entry)
            return None
        if entry.error is not None:
            return None
        entry.used = True
        self._hits += 1
        return entry

    def set(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        """Cache ``value`` for ``key`` for ``ttl`` seconds (default: the cache's).

        Replaces whatever ``key`` held, a remembered failure included, and
        makes it the most recently used entry.

        Raises:
            ValueError: ``ttl`` is not positive.
        """
        lifetime = self._ttl if ttl is None else _positive("ttl", ttl)
        now = self._clock()
        self._store(key, _Entry(value, now + lifetime, None), now)

    def remember_failure(self, key: Hashable, error: Exception) -> None:
        """Remember that looking ``key`` up failed with ``error``, for
        ``error_ttl`` seconds (nothing, when the cache remembers no failures).
        """
        if self._error_ttl is not None:
            now = self._clock()
            self._store(key, _Entry(None, now + self._error_ttl, error), now)

    def delete(self, key: Hashable) -> None:
        """Forget ``key``, and any computation of it in progress.

        Callers already waiting for that computation still get its result,
        but the result is not cached.
        """
        with self._lock:
            self._in_flight.pop(key, None)
            entry = self._entries.pop(key, None)
            if entry is not None and entry.error is not None:
                self._errors -= 1

    def clear(self) -> None:
        """Forget every entry and every computation in progress.

        The counters of :meth:`stats` keep counting; they describe the
        cache's lifetime, not its contents.
        """
        with self._lock:
            self._in_flight.clear()
            self._entries.clear()
            self._errors = 0

    def after_fork_in_child(self) -> None:
        """In a forked child: a new lock, and no computations in flight (their
        tasks belonged to the parent's event loop). The entries stay; the
        counters start at zero, each process counting its own lookups."""
        self._lock = threading.Lock()
        self._in_flight.clear()
        self._hits = self._misses = self._evictions = self._expirations = 0

    def stats(self) -> dict[str, Any]:
        """Counters and sizes, for metrics.

        ``hits`` and ``misses`` count :meth:`get` and :meth:`get_or_compute`
        calls (see there for what counts as which); ``hit_rate`` is
        ``hits / (hits + misses)``, 0.0 before any; ``evictions`` counts
        live entries dropped to make room, ``expirations`` entries dropped
        because their time to live had passed; ``size`` is ``len()``;
        ``in_flight`` counts computations in progress and ``errors`` the
        remembered failures held.
        """
        hits, misses = self._hits, self._misses
        looked_up = hits + misses
        return {
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / looked_up if looked_up else 0.0,
            "evictions": self._evictions,
            "expirations": self._expirations,
            "size": len(self._entries),
            "in_flight": len(self._in_flight),
            "errors": self._errors,
        }

    # Two overloads so that an ``async def`` function gives its awaited type
    # and a plain one its return type.
    @overload
    async def get_or_compute(self, key: Hashable, fn: Callable[[], Awaitable[_T]]) -> _T: ...
    @overload
    async def get_or_compute(self, key: Hashable, fn: Callable[[], _T]) -> _T: ...
    async def get_or_compute(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        """Return the cached value for ``key``, computing it with ``fn`` on a miss.

        ``fn`` takes no arguments and returns the value or an awaitable of
        it. Concurrent callers for one key share one call of ``fn`` (single
        flight), which runs in its own task: a caller that is cancelled (by
        its own timeout, say) leaves it running for the others, and no lock
        is held while it runs, so a slow key never holds up another.

        Counting: a caller served from the cache (a value or a remembered
        failure) is a hit, and so is one that joins a computation already in
        progress, since it causes no extra call of ``fn``; only the caller
        that starts the computation is a miss.

        Raises:
            Exception: whatever ``fn`` raised, to the callers that shared
                that computation.
            CachedError: while a failure is remembered (``error_ttl``); its
                ``__cause__`` is the original exception.
        """
        entry = self._entries.get(key)
        if entry is not None:
            if self._clock() < entry.expires_at:
                self._hits += 1
                entry.used = True
                if entry.error is not None:
                    raise CachedError(
                        f"Cached error for key {_key_text(key)}: {_key_text(entry.error)}"
                    ) from entry.error
                return entry.value
            self._drop_expired(key, entry)
        flight = self._in_flight.get(key)
        if flight is None:
            self._misses += 1
            name = f"enrichlog-cache-{_key_text(key)}"  # before anything is registered
            # Registered before the task exists, so that even an eagerly
            # started task finds itself in charge of the key.
            flight = self._in_flight[key] = _Flight()
            flight.task = asyncio.get_running_loop().create_task(
                self._compute(key, fn, flight), name=name
            )
            flight.task.add_done_callback(_retrieve_exception)
        else:
            self._hits += 1
        # The shield keeps this caller's cancellation from reaching the task.
        return await asyncio.shield(flight.task)

    async def _compute(self, key: Hashable, fn: Callable[[], Any], flight: _Flight) -> Any:
        try:
            value = fn()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            # A flight that was deleted or cleared meanwhile is no longer the
            # cache's business: its callers get the outcome, the cache not.
            if self._error_ttl is not None and self._in_flight.get(key) is flight:
                now = self._clock()
                self._store(key, _Entry(None, now + self._error_ttl, exc), now)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Cancelled (shutdown, or asyncio.run ending) and ended with a
                # failure anyway: cancelled it is, or asyncio.run would report
                # the failure as unhandled.
                raise asyncio.CancelledError from exc
            raise
        else:
            if self._in_flight.get(key) is flight:
                self.set(key, value)
            return value
        finally:
            if self._in_flight.get(key) is flight:
                del self._in_flight[key]

    def set_many(self, items: Iterable[tuple[Hashable, Any]]) -> None:
        """:meth:`set` for several keys, with the cache's ttl: one clock
        read and one lock for them all (a batch's values)."""
        now = self._clock()
        expires_at = now + self._ttl
        with self._lock:
            for key, value in items:
                self._store_locked(key, _Entry(value, expires_at, None), now)

    def _store(self, key: Hashable, entry: _Entry, now: float) -> None:
        with self._lock:
            self._store_locked(key, entry, now)

    def _store_locked(self, key: Hashable, entry: _Entry, now: float) -> None:
        entries = self._entries
        old = entries.pop(key, None)  # a new value starts at the new end
        if old is None:
            # Make room first, so the size never exceeds max_size, even
            # for a reader that looks in the middle of this.
            if len(entries) >= self._max_size:
                self._drop_oldest_locked(now)
        elif old.error is not None:
            self._errors -= 1
        entries[key] = entry
        if entry.error is not None:
            self._errors += 1

    def _drop_oldest_locked(self, now: float) -> None:
        entries = self._entries
        key, oldest = entries.popitem(last=False)
        if oldest.used and now < oldest.expires_at:
            # Read since it was stored or last spared: a second chance. Each
            # entry is spared once at most: then one goes.
            spares = len(entries) + 1
            while oldest.used and now < oldest.expires_at and spares > 0:
                spares -= 1
                oldest.used = False
                entries[key] = oldest
                key, oldest = entries.popitem(last=False)
        if oldest.error is not None:
            self._errors -= 1
        if now < oldest.expires_at:
            self._evictions += 1
        else:
            self._expirations += 1

    def _drop_expired(self, key: Hashable, entry: _Entry) -> None:
        with self._lock:
            # Another thread may have replaced the entry since it was read.
            if self._entries.get(key) is not entry:
                return
            del self._entries[key]
            self._expirations += 1
            if entry.error is not None:
                self._errors -= 1


class AsyncSmartCache:
    """An :class:`EnricherCache` that remembers failures for a retry interval.

    A key whose computation failed is not computed again until
    ``retry_interval`` has passed; meanwhile its callers get
    :class:`~enrichlog.exceptions.CachedError` at once, so a broken backend
    is not asked once per event.

    Args:
        max_size: the most entries held, successes and failures together.
        ttl: how long a computed value stays valid (seconds or a timedelta).
        retry_interval: how long a failure is remembered.
        clock: monotonic seconds; replaceable in tests.

    Raises:
        ValueError: a size or duration is not positive.
    """

    def __init__(
        self,
        max_size: int = 1000,
        ttl: timedelta | float = timedelta(seconds=300),
        retry_interval: timedelta | float = timedelta(seconds=30),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = EnricherCache(
            max_size,
            _seconds("ttl", ttl),
            error_ttl=_seconds("retry_interval", retry_interval),
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"<AsyncSmartCache {self._cache!r}>"

    @overload
    async def get_or_compute(self, key: Hashable, fn: Callable[[], Awaitable[_T]]) -> _T: ...
    @overload
    async def get_or_compute(self, key: Hashable, fn: Callable[[], _T]) -> _T: ...
    async def get_or_compute(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        """Return the value for ``key``, computing it once on a miss.

        See :meth:`EnricherCache.get_or_compute`.

        Raises:
            Exception: whatever ``fn`` raised, to the callers that shared
                that computation.
            CachedError: for ``retry_interval`` after a failure.
        """
        return await self._cache.get_or_compute(key, fn)

    def clear(self) -> None:
        """Forget every value and every remembered failure."""
        self._cache.clear()

    def get_cache_stats(self) -> dict[str, Any]:
        """Entries held and hit rate.

        Keys: ``total_entries``, ``success_entries``, ``error_entries``,
        ``cache_hit_rate`` (a fraction 0..1, 0.0 before any lookup),
        ``hits`` and ``misses``.
        """
        stats = self._cache.stats()
        return {
            "total_entries": stats["size"],
            "success_entries": stats["size"] - stats["errors"],
            "error_entries": stats["errors"],
            "cache_hit_rate": stats["hit_rate"],
            "hits": stats["hits"],
            "misses": stats["misses"],
        }


class _EventChanges(NamedTuple):
    """What an enricher did to an event: keys set and keys removed."""

    updated: dict[str, Any]
    removed: tuple[str, ...]

    def applied_to(self, event_dict: Mapping[str, Any]) -> dict[str, Any]:
        result = dict(event_dict)
        result.update(self.updated)
        for key in self.removed:
            result.pop(key, None)
        return result


def cached_enricher(
    cache: EnricherCache | AsyncSmartCache,
    key_func: Callable[[Mapping[str, Any]], Hashable | None] | None = None,
) -> Callable[
    [Callable[_P, Awaitable[Mapping[str, Any] | None]]],
    Callable[_P, Coroutine[Any, Any, dict[str, Any]]],
]:
    """Cache what an ``async def`` enricher does to events, per key.

    Decorates ``async def enrich(logger, method_name, event_dict)``, or a
    method taking ``self`` first. On a miss the enricher runs on a copy of
    the event and the cache stores its *changes*: the keys it added or
    replaced, and the keys it removed. Every event with the same key then
    gets those changes applied to a copy of itself, without the enricher
    running; concurrent misses for one key share one run. The decorated
    function always returns a new event dict and never mutates the one
    passed in.

    Args:
        cache: where the changes are kept. Give each enricher its own: keys
            are not namespaced per function, and a method shares the cache
            across all instances of its class.
        key_func: ``key_func(event_dict)`` returns the key, or ``None`` to
            run the enricher uncached for that event. The default key is
            ``(method_name, event_dict.get("event"))``.

    The decorated function raises :class:`TypeError` when called with
    other than three (or, for a method, four) positional arguments, and
    when the enricher returns something that is neither a mapping nor
    ``None`` (``None`` means it mutated the event in place).
    """

    def decorate(
        enrich: Callable[_P, Awaitable[Mapping[str, Any] | None]],
    ) -> Callable[_P, Coroutine[Any, Any, dict[str, Any]]]:
        run = cast("Callable[..., Awaitable[Mapping[str, Any] | None]]", enrich)
        name = getattr(enrich, "__qualname__", repr(enrich))

        async def run_on_copy(
            head: tuple[Any, ...], event_dict: Mapping[str, Any]
        ) -> Mapping[str, Any]:
            work = dict(event_dict)
            result = await run(*head, work)
            if result is None:
                return work
            if not isinstance(result, Mapping):
                raise TypeError(
                    f"enricher {name} returned {type(result).__name__}; "
                    "expected the event dict (a mapping) or None"
                )
            return result

        async def changes_made(
            head: tuple[Any, ...], event_dict: Mapping[str, Any]
        ) -> _EventChanges:
            after = await run_on_copy(head, event_dict)
            return _EventChanges(*changes_of(event_dict, after))

        @functools.wraps(enrich)
        async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> dict[str, Any]:
            # (logger, method_name, event_dict), or (self, logger, ...): the
            # processor signature is positional, as structlog calls it.
            if kwargs or len(args) not in (3, 4):
                raise TypeError(
                    f"{name}() takes (logger, method_name, event_dict) "
                    f"positionally, got {len(args)} positional and "
                    f"{len(kwargs)} keyword arguments"
                )
            positional: tuple[Any, ...] = args
            *head, method_name, event_dict = positional
            key = (
                (method_name, event_dict.get("event")) if key_func is None else key_func(event_dict)
            )
            head_args = (*head, method_name)
            if key is None:
                return dict(await run_on_copy(head_args, event_dict))
            changes: _EventChanges = await cache.get_or_compute(
                key, lambda: changes_made(head_args, event_dict)
            )
            return changes.applied_to(event_dict)

        return wrapper

    return decorate


def _key_text(key: object, limit: int = 200) -> str:
    """``repr(key)`` cut to ``limit`` characters, for names and messages: a
    key whose ``repr`` fails (a tuple nested past the recursion limit, an
    object whose ``__repr__`` raises) is named by its type instead."""
    try:
        text = repr(key)
    except BaseException as exc:  # anything a user's __repr__ raises
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return f"<{type(key).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
