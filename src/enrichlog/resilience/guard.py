"""`EnricherGuard`: one async enricher behind its timeout, cache, circuit
breaker, retry policy and concurrency limit.

The guard turns everything an enricher can do into an :data:`Outcome`: the
changes it made to its copy of the event, or the reason it made none. It
never raises, except for the cancellation of its caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Hashable, Mapping
from typing import Any

import anyio
import structlog
from structlog.typing import EventDict, WrappedLogger

from ..enricher import AsyncEnricher, changes_of
from ..exceptions import CachedError
from ..options import ResolvedOptions
from .breaker import CircuitBreaker, CircuitState
from .cache import EnricherCache
from .retry import RetryPolicy

__all__ = ["EnricherGuard", "GuardOptions", "Outcome"]

#: ``(updated keys, removed keys, None)`` on success, ``(None, (), reason)``
#: on failure. A tuple, not a class: it is built for every enricher of every
#: event, and cached outcomes are shared between events.
Outcome = tuple[dict[str, Any] | None, tuple[str, ...], str | None]

_report = logging.getLogger("enrichlog")

UNAVAILABLE: Outcome = (None, (), "unavailable")
CIRCUIT_OPEN: Outcome = (None, (), "circuit_open")
TIMEOUT: Outcome = (None, (), "timeout")
INVALID_RETURN: Outcome = (None, (), "invalid_return")
#: The enricher raised structlog's ``DropEvent``: the event is filtered out
#: on purpose. Compared by identity, never written to the error field.
DROP_REASON = "dropped by enricher"
DROPPED: Outcome = (None, (), DROP_REASON)
_NOT_CACHED = (CIRCUIT_OPEN, DROPPED, UNAVAILABLE)
_ERROR_OUTCOMES: dict[type[BaseException], Outcome] = {}


def error_outcome(exc: BaseException) -> Outcome:
    """The outcome for an enricher that raised ``exc`` (``error: Type``)."""
    kind = type(exc)
    outcome = _ERROR_OUTCOMES.get(kind)
    if outcome is None:
        outcome = (None, (), f"error: {kind.__name__}")
        if len(_ERROR_OUTCOMES) < 1024:  # bounded: exception types are few
            _ERROR_OUTCOMES[kind] = outcome
    return outcome


_AT, _TASK, _FINISHED, _EXPIRED = 0, 1, 2, 3


class _Deadlines:
    """The timeouts of one enricher's calls, kept with a single loop timer.

    Every call of an enricher has the same timeout, so deadlines arrive in
    order: a FIFO and one timer replace an ``asyncio.timeout`` (a timer in
    the loop's heap, created and cancelled) per call. On the runtime loop
    that was about a fifth of the per-event cost with three enrichers.
    Semantics are ``asyncio.timeout``'s: the task is cancelled at the
    deadline and the caller turns that cancellation back into a timeout.
    """

    __slots__ = ("_entries", "_handle", "_loop", "_timeout")

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._entries: deque[list[Any]] = deque()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def clock(self) -> float:
        """The clock deadlines are read on (the loop's)."""
        loop = self._loop
        return loop.time() if loop is not None else time.monotonic()

    def start(self, task: asyncio.Task[Any]) -> list[Any]:
        """Register a call; returns ``[deadline, task, finished, expired]``,
        whose ``finished`` the caller sets when the call returns."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new runtime (after fork or restart)
            self._loop, self._handle, self._entries = loop, None, deque()
        entries = self._entries
        while entries and entries[0][_FINISHED]:  # keep the FIFO short
            entries.popleft()
        entry: list[Any] = [loop.time() + self._timeout, task, False, False]
        entries.append(entry)
        if self._handle is None:
            self._handle = loop.call_at(entry[_AT], self._expire)
        return entry

    def _expire(self) -> None:
        loop = self._loop
        assert loop is not None
        self._handle = None
        now = loop.time()
        entries = self._entries
        while entries:
            entry = entries[0]
            if not entry[_FINISHED]:
                if entry[_AT] > now:
                    self._handle = loop.call_at(entry[_AT], self._expire)
                    return
                entry[_EXPIRED] = True
                entry[_TASK].cancel()
            entries.popleft()


class _EnrichmentFailedError(Exception):
    """Carries a failure outcome out of a shared (single-flight) computation."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome[2])
        self.outcome = outcome


GuardOptions = ResolvedOptions
"""The effective resilience settings of one async enricher:
:class:`~enrichlog.options.ResolvedOptions`, built by
``GuardOptions.for_enricher(enricher, settings)``."""


class EnricherGuard:
    """Runs one :class:`AsyncEnricher` for events, guarded.

    Attributes:
        available: false while the enricher failed to start or its last
            health check failed; it is then skipped as ``unavailable``.
        last_error: the most recent failure reason, for ``health()``.
    """

    def __init__(self, enricher: AsyncEnricher, options: GuardOptions) -> None:
        self.enricher = enricher
        self.name = enricher.name
        self.options = options
        self.timeout = options.timeout
        self.cache: EnricherCache | None = (
            EnricherCache(
                options.cache_max_size, options.cache_ttl, error_ttl=options.cache_error_ttl
            )
            if enricher.caches
            else None
        )
        self.breaker = CircuitBreaker(
            options.failure_threshold,
            options.recovery_timeout,
            half_open_max_calls=options.half_open_max_calls,
            name=enricher.name,
        )
        self.breaker.add_listener(_report_state_change)
        self.retry: RetryPolicy | None = (
            RetryPolicy(
                options.retry_attempts,
                options.retry_base_delay,
                options.retry_max_delay,
                is_transient=enricher.is_transient,
            )
            if options.retry_attempts > 1
            else None
        )
        self._deadlines = _Deadlines(options.timeout)
        self._limiter = (
            anyio.Semaphore(options.max_concurrency, fast_acquire=True)
            if options.max_concurrency
            else None
        )
        self.available = False
        self.last_error: str | None = None
        self.calls = 0
        self.failures = 0
        self.retries = 0
        self.skipped_open = 0

    # -- on the logging thread --------------------------------------------

    def lookup(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> Outcome | None:
        """Settle the enricher for this event without awaiting, if possible.

        Returns the cached outcome on a cache hit, a skip outcome when the
        enricher is unavailable or its circuit is open, and ``None`` when the
        enricher has to run on the runtime loop.
        """
        if not self.available:
            return UNAVAILABLE
        cache = self.cache
        if cache is not None:
            try:
                key = self.enricher.cache_key(event_dict)
                # Inside the try: an unhashable key raises here.
                hit: Outcome | None = None if key is None else cache.get(key)
            except Exception as exc:
                return error_outcome(exc)
            if hit is not None:
                return hit
        if self.breaker.state is CircuitState.OPEN and self.breaker.retry_in() > 0:
            self.skipped_open += 1
            return CIRCUIT_OPEN
        return None

    # -- on the runtime loop ----------------------------------------------

    async def run(self, logger: WrappedLogger, method_name: str, snapshot: EventDict) -> Outcome:
        """Run the enricher for one event; never raises but cancellation."""
        if not self.available:
            return UNAVAILABLE
        cache = self.cache
        if cache is None:
            return await self._guarded(logger, method_name, snapshot)
        try:
            key = self.enricher.cache_key(snapshot)
        except Exception as exc:
            return self._failed(error_outcome(exc))
        if key is None:
            return await self._guarded(logger, method_name, snapshot)
        return await self._shared(cache, key, logger, method_name, snapshot)

    async def _shared(
        self,
        cache: EnricherCache,
        key: Hashable,
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
    ) -> Outcome:
        async def compute() -> Outcome:
            outcome = await self._guarded(logger, method_name, snapshot)
            if outcome[2] is not None:
                raise _EnrichmentFailedError(outcome)
            return outcome

        # Events with one key share one lookup (single flight); this
        # event's wait is bounded by its own timeout, which does not cancel
        # the lookup the other events are waiting for.
        try:
            async with asyncio.timeout(self.timeout):
                # count=False: lookup() already counted this event's hit or miss.
                shared: Outcome = await cache.get_or_compute(key, compute, count=False)
        except _EnrichmentFailedError as failed:
            if failed.outcome in _NOT_CACHED:
                # Skipped, not failed: the backend was not asked, so there is
                # no failure to remember for this key.
                cache.delete(key)
            return failed.outcome
        except CachedError as cached:
            cause = cached.__cause__
            if isinstance(cause, _EnrichmentFailedError):
                return cause.outcome
            return error_outcome(cached)
        except TimeoutError:
            # This event stopped waiting; the shared call counts its own
            # failure if it overruns too.
            return TIMEOUT
        except Exception as exc:
            return self._failed(error_outcome(exc))
        return shared

    async def _guarded(
        self, logger: WrappedLogger, method_name: str, snapshot: EventDict
    ) -> Outcome:
        breaker = self.breaker
        permit = breaker.acquire()
        if permit is None:
            self.skipped_open += 1
            return CIRCUIT_OPEN
        self.calls += 1
        called = [False]  # set once an attempt got past the concurrency limit
        task = asyncio.current_task()
        assert task is not None
        try:
            result = await self._call_in_time(task, logger, method_name, snapshot, called)
            if not isinstance(result, Mapping):
                breaker.record_failure(permit)
                return self._failed(INVALID_RETURN)
            updated, removed = changes_of(snapshot, result)
        except TimeoutError:
            if called[0]:
                breaker.record_failure(permit)
            else:
                # Timed out queueing for a max_concurrency slot: a burst of
                # our own events, not a failing backend.
                breaker.record_cancelled(permit)
            return self._failed(TIMEOUT)
        except asyncio.CancelledError:
            breaker.record_cancelled(permit)
            if task.cancelling():
                raise
            # The enricher raised CancelledError of its own accord.
            return self._failed(error_outcome(asyncio.CancelledError()))
        except structlog.DropEvent:
            breaker.record_success(permit)
            return DROPPED
        except BaseException as exc:
            breaker.record_failure(permit)
            return self._failed(error_outcome(exc))
        breaker.record_success(permit)
        return (updated, removed, None)

    async def _call_in_time(
        self,
        task: asyncio.Task[Any],
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
        called: list[bool],
    ) -> object:
        """The attempts (with retries) within the timeout; ``TimeoutError``
        when it expires, as ``asyncio.timeout`` would raise."""
        cancelling = task.cancelling()
        deadline = self._deadlines.start(task)
        try:
            if self.retry is None:
                result = await self._attempt(logger, method_name, snapshot, called)
            else:
                result = await self.retry.run(
                    lambda: self._attempt(logger, method_name, snapshot, called),
                    deadline=deadline[_AT],
                    clock=self._deadlines.clock,
                    on_retry=self._on_retry,
                )
        except asyncio.CancelledError:
            if deadline[_EXPIRED] and task.uncancel() <= cancelling:
                raise TimeoutError from None  # our own timeout, not the caller's
            raise
        finally:
            deadline[_FINISHED] = True
            deadline[_TASK] = None  # a finished call must not keep its task alive
        if deadline[_EXPIRED]:
            # The enricher swallowed our cancellation and finished late: its
            # answer is still a timeout.
            task.uncancel()
            raise TimeoutError
        return result

    async def _attempt(
        self, logger: WrappedLogger, method_name: str, snapshot: EventDict, called: list[bool]
    ) -> object:
        # A fresh copy per attempt: a failed attempt may have half-mutated it.
        copy = dict(snapshot)
        if self._limiter is None:
            called[0] = True
            result = await self.enricher.enrich_async(logger, method_name, copy)
        else:
            async with self._limiter:
                called[0] = True
                result = await self.enricher.enrich_async(logger, method_name, copy)
        return copy if result is None else result

    def _on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.retries += 1
        _report.info(
            "enricher %r: attempt %d failed with %s; retrying in %.3fs",
            self.name,
            attempt,
            type(exc).__name__,
            delay,
        )

    def _failed(self, outcome: Outcome) -> Outcome:
        self.failures += 1
        self.last_error = outcome[2]
        return outcome

    def after_fork(self) -> None:
        """In a forked child: fresh locks, timers and concurrency slots; the
        parent's belonged to its threads and its event loop."""
        self.breaker.after_fork()
        if self.cache is not None:
            self.cache.after_fork()
        self._deadlines = _Deadlines(self.timeout)
        if self._limiter is not None:
            self._limiter = anyio.Semaphore(self.options.max_concurrency or 1, fast_acquire=True)

    def stats(self) -> dict[str, Any]:
        """Counters and state of this guard, for ``container.metrics()``."""
        return {
            "calls": self.calls,
            "failures": self.failures,
            "retries": self.retries,
            "skipped_circuit_open": self.skipped_open,
            "breaker": self.breaker.state.value,
            "cache": None if self.cache is None else self.cache.stats(),
        }


def _report_state_change(breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
    level = logging.WARNING if new is CircuitState.OPEN else logging.INFO
    _report.log(
        level,
        "enricher %r: circuit %s -> %s",
        breaker.name,
        old.value,
        new.value,
    )
