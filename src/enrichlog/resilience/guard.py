"""`EnricherGuard`: one async enricher behind its timeout, cache, circuit
breaker, retry policy and concurrency limit.

The guard turns everything an enricher can do into an
:data:`~enrichlog.resilience.outcome.Outcome`: the changes it made to its
copy of the event, or the reason it made none. It never raises, except for
the cancellation of its caller.

A call that ignores its cancellation (an ``enrich_async`` that catches
``CancelledError`` and goes on awaiting) is *abandoned* a short grace after
its deadline: whoever waits for it is handed a ``timeout`` at once, the
breaker counts a failure, and the coroutine is left to finish on its own,
tracked and counted, holding neither a concurrency slot nor a cache
computation that later events would wait for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from ..enricher import AsyncEnricher
from ..exceptions import CachedError
from ..metrics import FAILURE_REASONS, EnricherMetrics, LatencyHistogram
from ..options import ResolvedOptions
from .breaker import CircuitBreaker, CircuitState, Permit
from .cache import EnricherCache
from .outcome import (
    CIRCUIT_OPEN,
    FILTERED,
    INVALID_RETURN,
    OVERLOADED,
    TIMEOUT,
    UNAVAILABLE,
    Outcome,
    changes_of,
    error_outcome,
    isolated_copy,
)
from .retry import RetryPolicy

__all__ = ["ABANDON_GRACE", "EnricherGuard"]

_report = logging.getLogger("enrichlog")

#: Seconds a cancelled call may take to finish before it is abandoned.
ABANDON_GRACE = 0.5

#: A deadline timer that fires later than this fraction of the timeout (or
#: :data:`_LATE_SECONDS`, whichever is more) means the loop itself fell
#: behind: the timeout is the runtime's overload, not the enricher's.
_LATE_FRACTION = 0.1
_LATE_SECONDS = 0.05

#: Outcomes that say the enricher was never asked: not remembered per key.
_NOT_CACHED = (CIRCUIT_OPEN, FILTERED, UNAVAILABLE, OVERLOADED)


class _Call:
    """One call of the enricher on the loop: its deadline and its fate."""

    __slots__ = ("abandon", "at", "finished", "late", "permit", "state", "task")

    RUNNING, EXPIRED, ABANDONED = 0, 1, 2

    def __init__(
        self, at: float, task: asyncio.Task[Any], abandon: Callable[[Outcome], object] | None
    ) -> None:
        self.at = at
        self.task: asyncio.Task[Any] | None = task
        self.abandon = abandon
        self.finished = False
        self.late = False
        self.permit: Permit | None = None
        self.state = _Call.RUNNING


class _Deadlines:
    """The deadlines of one enricher's calls, kept with a single loop timer.

    Every call of an enricher has the same timeout, so deadlines arrive in
    order: a FIFO and one timer replace an ``asyncio.timeout`` (a timer in
    the loop's heap, created and cancelled) per call. Semantics are
    ``asyncio.timeout``'s: the task is cancelled at the deadline and the
    caller turns that cancellation back into a timeout. A call still running
    :data:`ABANDON_GRACE` seconds after its cancellation is handed to
    ``on_abandoned``.
    """

    __slots__ = ("_calls", "_grace", "_handle", "_loop", "_on_abandoned", "_timeout")

    def __init__(self, timeout: float, on_abandoned: Callable[[_Call], None]) -> None:
        self._timeout = timeout
        self._on_abandoned = on_abandoned
        self._calls: deque[_Call] = deque()
        self._grace: deque[_Call] = deque()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def clock(self) -> float:
        """The clock deadlines are read on (the loop's)."""
        loop = self._loop
        return loop.time() if loop is not None else time.monotonic()

    def start(self, task: asyncio.Task[Any], abandon: Callable[[Outcome], object] | None) -> _Call:
        """Register a call of ``task``; the caller sets ``finished`` when it
        returns. ``abandon(outcome)`` is called if it is abandoned."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new runtime (after fork or restart)
            self._loop, self._handle = loop, None
            self._calls, self._grace = deque(), deque()
        calls = self._calls
        while calls and calls[0].finished:  # keep the FIFO short
            calls.popleft()
        call = _Call(loop.time() + self._timeout, task, abandon)
        calls.append(call)
        handle = self._handle
        if handle is None or handle.when() > call.at:
            # No timer, or one for a later grace check only.
            if handle is not None:
                handle.cancel()
            self._handle = loop.call_at(call.at, self._fire)
        return call

    def _fire(self) -> None:
        loop = self._loop
        assert loop is not None
        self._handle = None
        now = loop.time()
        late_after = max(self._timeout * _LATE_FRACTION, _LATE_SECONDS)
        calls, grace = self._calls, self._grace
        while calls:
            call = calls[0]
            if not call.finished:
                if call.at > now:
                    break
                call.state = _Call.EXPIRED
                call.late = now - call.at > late_after
                assert call.task is not None
                call.task.cancel()
                grace.append(call)
            calls.popleft()
        while grace:
            call = grace[0]
            if not call.finished:
                if call.at + ABANDON_GRACE > now:
                    break
                call.state = _Call.ABANDONED
                self._on_abandoned(call)
            grace.popleft()
        upcoming = [
            queue[0].at + extra for queue, extra in ((calls, 0.0), (grace, ABANDON_GRACE)) if queue
        ]
        if upcoming:
            self._handle = loop.call_at(min(upcoming), self._fire)

    def cancel_all(self) -> None:
        """Cancel every call in progress (the runtime is giving up)."""
        for call in (*self._calls, *self._grace):
            if not call.finished and call.task is not None:
                call.task.cancel()


class _EnrichmentFailedError(Exception):
    """Carries a failure outcome out of a shared (single-flight) computation."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome[2])
        self.outcome = outcome


class EnricherGuard:
    """Runs one :class:`AsyncEnricher` for events, guarded.

    Availability (started and healthy) and the last failure are the
    enricher's own (:attr:`AsyncEnricher.available`,
    :attr:`AsyncEnricher.last_error`); the guard reads and records them
    there.
    """

    def __init__(self, enricher: AsyncEnricher, options: ResolvedOptions) -> None:
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
        self._deadlines = _Deadlines(options.timeout, self._abandoned)
        self._limiter: asyncio.Semaphore | None = None
        #: Abandoned calls still running (they ignored their cancellation).
        self.lingering: set[asyncio.Task[Any]] = set()
        self.latency = LatencyHistogram()
        self.calls = 0
        self.successes = 0
        self.failures = 0
        self._reasons: dict[str, int] = {}
        self.retries = 0
        self.skipped_open = 0
        self.skipped_unavailable = 0
        self.abandoned = 0
        self.overloaded = 0
        self.batch_calls = 0
        self.batch_keys = 0

    # -- on the logging thread --------------------------------------------

    def lookup(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> Outcome | None:
        """Settle the enricher for this event without awaiting, if possible.

        Returns the cached outcome on a cache hit, a skip outcome when the
        enricher is unavailable or its circuit is open, and ``None`` when the
        enricher has to run on the runtime loop.
        """
        if not self.enricher.available:
            self.skipped_unavailable += 1
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

    async def run(
        self,
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
        abandon: Callable[[Outcome], object] | None = None,
    ) -> Outcome:
        """Run the enricher for one event; never raises but cancellation.

        ``abandon(outcome)`` is called, from the loop, if the call ignores
        its cancellation past the grace: the caller should then stop waiting
        for this coroutine, which may never return.
        """
        if not self.enricher.available:
            self.skipped_unavailable += 1
            return UNAVAILABLE
        cache = self.cache
        if cache is None:
            return await self._guarded(logger, method_name, snapshot, abandon)
        try:
            key = self.enricher.cache_key(snapshot)
        except Exception as exc:
            return self._failed(error_outcome(exc))
        if key is None:
            return await self._guarded(logger, method_name, snapshot, abandon)
        return await self._shared(cache, key, logger, method_name, snapshot, abandon)

    async def _shared(
        self,
        cache: EnricherCache,
        key: Hashable,
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
        abandon: Callable[[Outcome], object] | None,
    ) -> Outcome:
        def abandon_key(outcome: Outcome) -> None:
            # Later events must not join a computation that never ends.
            cache.delete(key)
            if abandon is not None:
                abandon(outcome)

        async def compute() -> Outcome:
            outcome = await self._guarded(logger, method_name, snapshot, abandon_key)
            if outcome[2] is not None:
                raise _EnrichmentFailedError(outcome)
            return outcome

        # Events with one key share one lookup (single flight); this
        # event's wait is bounded by its own timeout (plus the grace of an
        # abandoned call), which does not cancel the lookup the others wait
        # for.
        try:
            async with asyncio.timeout(self.timeout + ABANDON_GRACE):
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
        self,
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
        abandon: Callable[[Outcome], object] | None,
    ) -> Outcome:
        limiter = self._limiter_for_loop()
        if limiter is not None and not await self._slot(limiter):
            self.overloaded += 1
            return OVERLOADED
        breaker = self.breaker
        permit = breaker.acquire()
        if permit is None:
            if limiter is not None:
                limiter.release()
            self.skipped_open += 1
            return CIRCUIT_OPEN
        self.calls += 1
        task = asyncio.current_task()
        assert task is not None
        call = self._deadlines.start(task, abandon)
        call.permit = permit
        try:
            outcome = await self._called(call, permit, logger, method_name, snapshot)
            # The call started when its deadline was set: no second clock read.
            self.latency.observe(self._deadlines.clock() - call.at + self.timeout)
            if outcome[2] is None:
                self.successes += 1
            return outcome
        finally:
            call.finished = True
            call.task = None  # a finished call must not keep its task alive
            if limiter is not None and call.state != _Call.ABANDONED:
                limiter.release()

    async def _called(
        self,
        call: _Call,
        permit: Permit,
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
    ) -> Outcome:
        breaker = self.breaker
        task = call.task
        assert task is not None
        cancelling = task.cancelling()
        try:
            result = await self._attempts(call, logger, method_name, snapshot)
            if call.state == _Call.ABANDONED:
                return TIMEOUT  # already reported and counted
            if call.state == _Call.EXPIRED:
                # The enricher swallowed our cancellation and finished late
                # (within the grace): its answer is still a timeout.
                task.uncancel()
                return self._timed_out(call, permit)
            if not isinstance(result, Mapping):
                breaker.record_failure(permit)
                return self._failed(INVALID_RETURN)
            updated, removed = changes_of(snapshot, result)
        except asyncio.CancelledError:
            if call.state == _Call.ABANDONED:
                raise  # already reported and counted
            if call.state == _Call.EXPIRED and task.uncancel() <= cancelling:
                return self._timed_out(call, permit)  # our own timeout
            breaker.record_cancelled(permit)
            if task.cancelling():
                raise
            # The enricher raised CancelledError of its own accord.
            return self._failed(error_outcome(asyncio.CancelledError()))
        except structlog.DropEvent:
            breaker.record_success(permit)
            return FILTERED
        except BaseException as exc:
            if call.state == _Call.ABANDONED:
                return TIMEOUT
            breaker.record_failure(permit)
            return self._failed(error_outcome(exc))
        breaker.record_success(permit)
        return (updated, removed, None)

    async def _attempts(
        self, call: _Call, logger: WrappedLogger, method_name: str, snapshot: EventDict
    ) -> object:
        if self.retry is None:
            return await self._attempt(logger, method_name, snapshot)
        return await self.retry.run(
            lambda: self._attempt(logger, method_name, snapshot),
            deadline=call.at,
            clock=self._deadlines.clock,
            on_retry=self._on_retry,
        )

    async def _attempt(
        self, logger: WrappedLogger, method_name: str, snapshot: EventDict
    ) -> object:
        # A fresh copy per attempt: a failed attempt may have half-mutated it.
        copy = isolated_copy(snapshot)
        result = await self.enricher.enrich_async(logger, method_name, copy)
        return copy if result is None else result

    def _timed_out(self, call: _Call, permit: Permit) -> Outcome:
        if call.late:
            # The loop fell behind: the enricher never had its time.
            self.breaker.record_cancelled(permit)
            self.overloaded += 1
            return OVERLOADED
        self.breaker.record_failure(permit)
        return self._failed(TIMEOUT)

    async def _slot(self, limiter: asyncio.Semaphore) -> bool:
        """Wait for a concurrency slot, at most the timeout: the wait is our
        own burst queueing, not the enricher's time."""
        if not limiter.locked():
            await limiter.acquire()  # free: no suspension, no timer
            return True
        try:
            async with asyncio.timeout(self.timeout):
                await limiter.acquire()
        except TimeoutError:
            return False
        return True

    def _limiter_for_loop(self) -> asyncio.Semaphore | None:
        size = self.options.max_concurrency
        if size is None:
            return None
        if self._limiter is None:
            self._limiter = asyncio.Semaphore(size)
        return self._limiter

    def _abandoned(self, call: _Call) -> None:
        """A call ignored its cancellation past the grace: count it as a
        failure, give its slot back, and tell its caller to stop waiting."""
        self.abandoned += 1
        self.failures += 1
        self.enricher.last_error = "timeout (abandoned: ignored cancellation)"
        if call.permit is not None:
            self.breaker.record_failure(call.permit)
        if self._limiter is not None:
            self._limiter.release()
        task = call.task
        if task is not None:
            self.lingering.add(task)
            task.add_done_callback(self.lingering.discard)
        _report.warning(
            "enricher %r ignored its cancellation for %.1fs past its timeout; "
            "its event is written without it and the call is abandoned",
            self.name,
            ABANDON_GRACE,
        )
        if call.abandon is not None:
            call.abandon(TIMEOUT)

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
        reason = outcome[2]
        assert reason is not None
        kind = reason.partition(":")[0]
        self._reasons[kind] = self._reasons.get(kind, 0) + 1
        self.enricher.last_error = reason
        return outcome

    def cancel_calls(self) -> None:
        """Cancel every call in progress (shutdown gave up waiting)."""
        self._deadlines.cancel_all()

    def after_fork_in_child(self) -> None:
        """In a forked child: fresh locks, timers and concurrency slots; the
        parent's belonged to its threads and its event loop."""
        self.breaker.after_fork_in_child()
        if self.cache is not None:
            self.cache.after_fork_in_child()
        self._deadlines = _Deadlines(self.timeout, self._abandoned)
        self._limiter = None
        self.lingering = set()

    def metrics(self) -> EnricherMetrics:
        """This enricher's counters, latency and breaker state."""
        reasons = dict.fromkeys(FAILURE_REASONS, 0)
        reasons.update(self._reasons)
        reasons["overloaded"] += self.overloaded
        reasons["circuit_open"] += self.skipped_open
        reasons["unavailable"] += self.skipped_unavailable
        cache = None if self.cache is None else self.cache.stats()
        return EnricherMetrics(
            name=self.name,
            calls=self.calls,
            successes=self.successes,
            failures=self.failures,
            failures_by_reason=reasons,
            retries=self.retries,
            abandoned=self.abandoned,
            cache_hits=0 if cache is None else cache["hits"],
            cache_misses=0 if cache is None else cache["misses"],
            batch_calls=self.batch_calls,
            batch_keys=self.batch_keys,
            latency=self.latency.summary(),
            breaker=self.breaker.state.value,
            breaker_seconds=self.breaker.seconds_in_state(),
            cache=cache,
        )


def _report_state_change(breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
    level = logging.WARNING if new is CircuitState.OPEN else logging.INFO
    _report.log(level, "enricher %r: circuit %s -> %s", breaker.name, old.value, new.value)
