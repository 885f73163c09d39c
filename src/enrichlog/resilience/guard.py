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
import contextvars
import functools
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from ..enricher import BATCH_DEADLINE, AsyncEnricher, shortly_before
from ..exceptions import CachedError
from ..metrics import FAILURE_REASONS, EnricherMetrics, LatencyHistogram
from ..options import ResolvedOptions
from ..reporting import reporting_logger
from .breaker import CircuitBreaker, CircuitState, Permit
from .cache import EnricherCache
from .outcome import (
    CIRCUIT_OPEN,
    FILTERED,
    IMMUTABLE,
    INVALID_RETURN,
    OVERLOADED,
    TIMEOUT,
    UNAVAILABLE,
    Fills,
    Outcome,
    changes_of,
    error_outcome,
    hook_failed,
    isolated_copy,
    written_copy,
)
from .retry import RetryPolicy

__all__ = [
    "ABANDON_GRACE",
    "LATE_FRACTION",
    "LATE_SECONDS",
    "NO_CHANGES",
    "REPRIEVE_AFTER",
    "EnricherGuard",
    "Sink",
]

_report = reporting_logger("enrichlog")

#: Seconds a cancelled call may take to finish before it is abandoned.
ABANDON_GRACE = 0.5

#: A deadline timer that fires later than this fraction of the timeout (or
#: :data:`LATE_SECONDS`, whichever is more) means the loop itself fell
#: behind: the timeout is the runtime's overload, not the enricher's.
LATE_FRACTION = 0.1
LATE_SECONDS = 0.05

#: A deadline timer later than this found the loop held up: before any call
#: is cancelled, the callbacks that became ready meanwhile (the calls' own
#: wake-ups among them) run, so a call that finished its work while the loop
#: was stalled completes instead of being charged with the stall.
REPRIEVE_AFTER = 0.002

#: Batches of one enricher fetching at once before new keys wait for one of
#: them to return (a full batch goes at once, within the concurrency limit).
_BATCHES_OUT = 2

#: A key the backend's answer does not mention.
_MISSING = object()

#: Outcomes that say the enricher was never asked: not remembered per key.
_NOT_CACHED = (CIRCUIT_OPEN, FILTERED, UNAVAILABLE, OVERLOADED)


#: Where a call's outcome goes: ``sink(*key, outcome, seconds)``, called
#: once per call, when it ends or when it is abandoned.
Sink = Callable[..., object]


class _Call:
    """One call of the enricher on the loop: its task, deadline and fate,
    and where its outcome goes."""

    __slots__ = (
        "abandon_only",
        "at",
        "cancelled_at",
        "delivered",
        "finished",
        "key",
        "late",
        "permit",
        "sink",
        "state",
        "task",
    )

    #: GIVEN_UP: shutdown cancelled it while it ran; its event was written
    #: without it (``unavailable``), whatever it does now.
    RUNNING, EXPIRED, ABANDONED, GIVEN_UP = 0, 1, 2, 3

    #: When its deadline cancelled it: set then, read only after.
    cancelled_at: float

    def __init__(
        self, sink: Sink | None, key: tuple[Any, ...], *, abandon_only: bool = False
    ) -> None:
        self.sink = sink
        self.key = key
        #: The sink hears only of abandonment: whoever awaits the call gets
        #: its outcome by return.
        self.abandon_only = abandon_only
        self.task: asyncio.Task[Any] | None = None
        self.at = 0.0
        self.finished = False
        self.delivered = False
        self.late = False
        self.permit: Permit | None = None
        self.state = _Call.RUNNING

    def deliver(self, outcome: Outcome, seconds: float, *, abandoned: bool = False) -> None:
        """Hand ``outcome`` to the sink, unless it already has one."""
        if self.delivered or (self.abandon_only and not abandoned):
            return
        self.delivered = True
        if self.sink is not None:
            self.sink(*self.key, outcome, seconds)


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

    __slots__ = (
        "_calls",
        "_context",
        "_given_up",
        "_grace",
        "_handle",
        "_loop",
        "_on_abandoned",
        "_reprieved",
        "_timeout",
    )

    def __init__(
        self,
        timeout: float,
        on_abandoned: Callable[[_Call], None],
        context: contextvars.Context,
    ) -> None:
        self._timeout = timeout
        self._on_abandoned = on_abandoned
        #: What the timer runs in: not the context of whichever event armed
        #: it, which it would keep alive and hand to what it delivers.
        self._context = context
        self._calls: deque[_Call] = deque()
        self._grace: deque[_Call] = deque()
        #: The calls :meth:`cancel_all` gave up (out of the deadlines' reach).
        self._given_up: list[_Call] = []
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reprieved = False

    def clock(self) -> float:
        """The clock deadlines are read on (the loop's)."""
        loop = self._loop
        return loop.time() if loop is not None else time.monotonic()

    def begin(self, call: _Call) -> None:
        """Start ``call``'s deadline now; whoever runs it sets ``finished``
        when it returns."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new runtime (after fork or restart)
            self._loop, self._handle, self._reprieved = loop, None, False
            self._calls, self._grace, self._given_up = deque(), deque(), []
        calls = self._calls
        while calls and calls[0].finished:  # keep the FIFO short
            calls.popleft()
        call.at = at = loop.time() + self._timeout
        calls.append(call)
        handle = self._handle
        if handle is None or handle.when() > at:
            # No timer, or one for a later grace check only.
            if handle is not None:
                handle.cancel()
            self._handle = loop.call_at(at, self._fire, context=self._context)

    def _fire(self) -> None:
        loop = self._loop
        assert loop is not None
        self._handle = None
        now = loop.time()
        calls, grace = self._calls, self._grace
        if not self._reprieved and (
            (calls and now - calls[0].at > REPRIEVE_AFTER)
            or (grace and now - grace[0].cancelled_at - ABANDON_GRACE > REPRIEVE_AFTER)
        ):
            # Late (the loop was blocked): a timer due now runs after the
            # callbacks already ready, a call's answer or its handling of
            # the cancellation among them.
            self._reprieved = True
            self._handle = loop.call_at(now, self._fire, context=self._context)
            return
        self._reprieved = False
        late_after = max(self._timeout * LATE_FRACTION, LATE_SECONDS)
        while calls:
            call = calls[0]
            if not call.finished and call.state == _Call.RUNNING:
                if call.at > now:
                    break
                call.state = _Call.EXPIRED
                call.late = now - call.at > late_after
                # Its grace runs from now: a loop blocked past the deadline
                # (late) must not abandon a call that never saw its
                # cancellation.
                call.cancelled_at = now
                assert call.task is not None
                call.task.cancel()
                grace.append(call)
            calls.popleft()
        while grace:
            call = grace[0]
            if not call.finished and call.state == _Call.EXPIRED:
                due = call.cancelled_at + ABANDON_GRACE
                if due > now:
                    break
                if now - due > LATE_SECONDS:
                    # The loop was blocked through its grace: a call whose
                    # clean-up takes a few turns never had them. A grace
                    # again, from now (at the end: the latest due).
                    grace.popleft()
                    call.cancelled_at = now
                    grace.append(call)
                    continue
                call.state = _Call.ABANDONED
                self._on_abandoned(call)
            grace.popleft()
        upcoming = [calls[0].at] if calls else []
        if grace:
            upcoming.append(grace[0].cancelled_at + ABANDON_GRACE)
        if upcoming:
            self._handle = loop.call_at(min(upcoming), self._fire, context=self._context)

    def cancel_all(self) -> None:
        """Cancel every call in progress (the runtime is giving up): those
        still within their deadline are given up, out of its reach."""
        for call in (*self._calls, *self._grace):
            if not call.finished and call.task is not None:
                if call.state == _Call.RUNNING:
                    call.state = _Call.GIVEN_UP
                    self._given_up.append(call)
                elif call.state == _Call.EXPIRED and call not in self._given_up:
                    self._given_up.append(call)  # timed out, in its grace
                call.task.cancel()

    def left_behind(self) -> list[_Call]:
        """The calls given up that have not ended (yet: they ignore it)."""
        left = [call for call in self._given_up if not call.finished]
        self._given_up = []
        return left


class _Limiter:
    """An enricher's concurrency limit: slots go to waiters first come,
    first served, and a waiter given none within the timeout gives up.

    A waiter is a callable told ``grant(True)`` when it gets a slot (it
    returns whether it took it: a waiter that left passes it on) and
    ``grant(False)`` when it gave up: a call not started yet (it starts only
    once it has a slot, so a queued call costs no task), or a task awaiting
    :meth:`acquire`. Every waiter waits the same time, so they give up in
    order: one loop timer walks the FIFO.
    """

    __slots__ = ("_context", "_free", "_handle", "_loop", "_timeout", "_waiters")

    def __init__(self, size: int, timeout: float, context: contextvars.Context) -> None:
        self._free = size
        self._timeout = timeout
        #: What the timer runs in (as for :class:`_Deadlines`).
        self._context = context
        self._waiters: deque[tuple[float, Callable[[bool], bool]]] = deque()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def try_acquire(self) -> bool:
        """Take a free slot at once, if there is one and nobody waits."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    def wait(self, loop: asyncio.AbstractEventLoop, grant: Callable[[bool], bool]) -> None:
        """Queue ``grant`` for the next free slot."""
        if loop is not self._loop:
            self._loop, self._handle = loop, None
        self._waiters.append((loop.time() + self._timeout, grant))
        if self._handle is None:
            self._handle = loop.call_at(self._waiters[0][0], self._expire, context=self._context)

    async def acquire(self) -> bool:
        """Wait for a slot; False when none came within the timeout."""
        if self.try_acquire():
            return True
        loop = asyncio.get_running_loop()
        slot: asyncio.Future[bool] = loop.create_future()
        self.wait(loop, functools.partial(_resolve_slot, slot))
        try:
            return await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled() and slot.result():
                self.release()  # handed a slot, then cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a slot back: to the longest waiter, else to the pool."""
        waiters = self._waiters
        while waiters:
            _, grant = waiters.popleft()
            if grant(True):
                return
        self._free += 1

    def _expire(self) -> None:
        loop = self._loop
        assert loop is not None
        self._handle = None
        now = loop.time()
        waiters = self._waiters
        while waiters and waiters[0][0] <= now:
            _, grant = waiters.popleft()
            grant(False)
        if waiters:
            self._handle = loop.call_at(waiters[0][0], self._expire, context=self._context)


def _resolve_slot(slot: asyncio.Future[bool], granted: bool) -> bool:
    if slot.done():
        return False  # its waiter was cancelled: the slot goes on
    slot.set_result(granted)
    return True


#: The outcome of a lookup that found nothing: no change, and no error.
NO_CHANGES: Outcome = (None, (), None)

#: ``(snapshot, sink, sink key)``: one event waiting for a batched lookup.
_Waiter = tuple[EventDict, Sink, tuple[Any, ...]]


class _Batch:
    """Keys looked up in one ``enrich_many`` call, and the events waiting for
    each (several events with one key share its lookup)."""

    __slots__ = ("waiters",)

    def __init__(self, waiters: dict[Hashable, list[_Waiter]]) -> None:
        self.waiters = waiters

    def events(self) -> int:
        """How many events wait for the batch."""
        return sum(map(len, self.waiters.values()))


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

    def __init__(
        self,
        enricher: AsyncEnricher,
        options: ResolvedOptions,
        *,
        timer_context: contextvars.Context | None = None,
        error_field: str | None = None,
        still_wanted: Callable[..., bool] | None = None,
    ) -> None:
        self.enricher = enricher
        #: The key of the runtime's reasons, which the enricher's changes
        #: never set (see changes_of).
        self._error_field = error_field
        #: What the guard's own timers (deadlines, waits for a slot, a batch
        #: window) run in: none of the events' contexts.
        self._timer_context = timer_context if timer_context is not None else contextvars.Context()
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
        self._cache_key = enricher.cache_key
        self.use_cache(self.cache)
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
        self._deadlines = _Deadlines(options.timeout, self._abandoned, self._timer_context)
        #: Batching (an enricher with ``enrich_many``): keys waiting for the
        #: next batch, keys a dispatched batch is fetching, batches out.
        self.batches = enricher.batches
        #: keep_existing: this enricher's changes are Fills, merged without
        #: replacing a field the event has.
        self.keeps = bool(getattr(enricher, "keep_existing", False))
        self._batch_size = options.batch_size
        #: What the plan calls to start one event's call: :meth:`start`, or
        #: for a batching enricher the collecting of its key (a frame less
        #: per event).
        self.starter = self._collect if self.batches else self.start
        self._waiting: dict[Hashable, list[_Waiter]] = {}
        #: The context of the first event waiting for each key: a batch
        #: runs in its first key's (contextvars reach enrich_many as they
        #: reach enrich_async).
        self._contexts: dict[Hashable, contextvars.Context] = {}
        self._fetching: dict[Hashable, _Batch] = {}
        self._batches_out = 0
        self._flush_scheduled = False
        self._limiter = (
            None
            if options.max_concurrency is None
            else _Limiter(options.max_concurrency, options.timeout, self._timer_context)
        )
        #: Abandoned calls still running (they ignored their cancellation).
        self.lingering: set[asyncio.Task[Any]] = set()
        #: ``still_wanted(*key)``: whether the event of a call queued for a
        #: concurrency slot still waits for it (the plan's rule: an event a
        #: ``level_timeout`` cut off does not, and its call is not made).
        self.still_wanted = still_wanted
        #: Whether events skipped as ``unavailable`` are counted: not once its
        #: container is shut down (its counts are final; later events, written
        #: by their callers, count for none).
        self.counting = True
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.latency = LatencyHistogram()
        self.calls = 0
        self.successes = 0
        self._reasons: dict[str, int] = {}
        self.retries = 0
        self.skipped_open = 0
        self.skipped_unavailable = 0
        self.abandoned = 0
        self.overloaded = 0
        #: Events a ``level_timeout`` cut off from a call still running:
        #: each went without this enricher's fields, reason ``timeout``.
        self.cut_off = 0
        self.batch_calls = 0
        self.batch_keys = 0

    def use_cache(self, cache: EnricherCache | None) -> None:
        """Make ``cache`` this enricher's cache (a test's, reading a fake
        clock, say)."""
        self.cache = cache
        # What lookup() reads on a cache hit, bound once: the cache's own
        # entries and clock.
        entries: OrderedDict[Hashable, Any] = cache._entries if cache is not None else OrderedDict()
        self._entry_of = entries.get
        self._clock = cache._clock if cache is not None else time.monotonic

    @property
    def longest(self) -> float:
        """The longest an event can wait for this enricher, in seconds: a
        batch window, a wait for a concurrency slot (as long as the timeout
        at most), the call's timeout and the grace of an abandoned call."""
        slot = self.timeout if self._limiter is not None else 0.0
        window = self.options.batch_window if self.batches else 0.0
        return window + slot + self.timeout + ABANDON_GRACE

    # -- on the logging thread --------------------------------------------

    def lookup(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> Outcome | None:
        """Settle the enricher for this event without awaiting, if possible.

        Returns the cached outcome on a cache hit, a skip outcome when the
        enricher is unavailable or its circuit is open, and ``None`` when the
        enricher has to run on the runtime loop. (:func:`lookup_all` for the
        guards of a level at once.)
        """
        return lookup_all((self,), logger, method_name, event_dict)[0]

    # -- on the runtime loop ----------------------------------------------

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
        sink: Sink,
        key: tuple[Any, ...],
    ) -> None:
        """Run the (non-batching) enricher for one event in a task of its
        own (on ``loop``, in the current context); ``sink(*key, outcome,
        seconds)`` gets its outcome exactly once: when the call ends, or at
        once when it is abandoned. A call cancelled by shutdown delivers
        nothing. (:attr:`starter` is this, or a batching enricher's
        collecting of the event's key.)"""
        call = _Call(sink, key)
        limiter = self._limiter
        if self.cache is not None:
            call.task = loop.create_task(self._cached(call, logger, method_name, snapshot))
        elif limiter is None or limiter.try_acquire():
            call.task = loop.create_task(self._called(call, logger, method_name, snapshot))
        else:
            # No free slot: the call starts once it has one, so a queued call
            # costs no task; it runs in this event's context all the same.
            limiter.wait(
                loop,
                functools.partial(
                    self._granted,
                    call,
                    loop,
                    logger,
                    method_name,
                    snapshot,
                    contextvars.copy_context(),
                ),
            )

    def _granted(
        self,
        call: _Call,
        loop: asyncio.AbstractEventLoop,
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
        context: contextvars.Context,
        granted: bool,
    ) -> bool:
        """A queued call got its slot (start it) or gave up waiting."""
        if not granted:
            # Our own burst queued past the timeout: not the enricher's fault.
            self.overloaded += 1
            call.deliver(OVERLOADED, 0.0)
            return False
        wanted = self.still_wanted
        if wanted is not None and call.key and not wanted(*call.key):
            # Its event went on without it (and counted why): no call for
            # nobody, and the slot goes to the next waiter.
            return False
        call.task = loop.create_task(
            self._called(call, logger, method_name, snapshot), context=context
        )
        return True

    async def run(
        self,
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
        abandon: Callable[[Outcome], object] | None = None,
    ) -> Outcome:
        """Run the enricher for one event and return its outcome; never
        raises but cancellation.

        ``abandon(outcome)`` is called, from the loop, if the call ignores
        its cancellation past the grace: the caller should then stop waiting
        for this coroutine, which may never return.
        """
        sink = None if abandon is None else _abandon_sink(abandon)
        call = _Call(sink, (), abandon_only=True)
        call.task = asyncio.current_task()
        if self.cache is None:
            return await self._guarded(call, logger, method_name, snapshot)
        return await self._cached(call, logger, method_name, snapshot)

    async def _cached(
        self, call: _Call, logger: WrappedLogger, method_name: str, snapshot: EventDict
    ) -> Outcome:
        """Through the cache: events with one key share one lookup."""
        cache = self.cache
        assert cache is not None
        started = self._deadlines.clock()
        if not self.enricher.available:
            cache.count_miss()  # handed over as one (lookup_all)
            self.skipped_unavailable += 1
            outcome = UNAVAILABLE
        else:
            try:
                key = self.enricher.cache_key(snapshot)
                if key is not None:
                    _compares(key)
            except Exception as exc:
                cache.count_miss()
                outcome = self._failed(error_outcome(exc))
            else:
                if key is None:
                    return await self._guarded(call, logger, method_name, snapshot)
                outcome = await self._shared(cache, key, call, logger, method_name, snapshot)
        # The event's time with this enricher: its key's call, or the part
        # of it the event waited for.
        call.deliver(outcome, self._deadlines.clock() - started)
        return outcome

    async def _shared(
        self,
        cache: EnricherCache,
        key: Hashable,
        waiter: _Call,
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
    ) -> Outcome:
        def abandoned(outcome: Outcome, seconds: float) -> None:
            # Later events must not join a computation that never ends; this
            # event stops waiting for it.
            cache.delete(key)
            waiter.deliver(outcome, seconds)

        async def compute() -> Outcome:
            call = _Call(abandoned, (), abandon_only=True)
            call.task = asyncio.current_task()
            outcome = await self._guarded(call, logger, method_name, snapshot)
            if outcome[2] is not None:
                raise _EnrichmentFailedError(outcome)
            return outcome

        # This event's wait is bounded by its own timeout (plus the grace of
        # an abandoned call), which does not cancel the lookup the other
        # events wait for.
        try:
            async with asyncio.timeout(self.timeout + ABANDON_GRACE):
                # Counts this event's lookup: lookup_all() handed it over uncounted.
                shared: Outcome = await cache.get_or_compute(key, compute)
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
        self, call: _Call, logger: WrappedLogger, method_name: str, snapshot: EventDict
    ) -> Outcome:
        """One guarded call of the enricher, run by ``call.task``, once it
        has a concurrency slot; delivers and returns its outcome."""
        limiter = self._limiter
        if limiter is not None and not await limiter.acquire():
            # Our own burst queued past the timeout: not the enricher's fault.
            self.overloaded += 1
            call.deliver(OVERLOADED, 0.0)
            return OVERLOADED
        return await self._called(call, logger, method_name, snapshot)

    async def _called(  # noqa: PLR0912 - the hot path, in one frame on purpose
        self, call: _Call, logger: WrappedLogger, method_name: str, snapshot: EventDict
    ) -> Outcome:
        """The call proper, with its slot (if limited) already taken: the
        hot path of every call, one coroutine frame between the task and
        ``enrich_async`` (each frame is walked on every wake-up)."""
        limiter = self._limiter
        if not self.enricher.available:
            if limiter is not None:
                limiter.release()
            self.skipped_unavailable += 1
            outcome = UNAVAILABLE
        elif (permit := self.breaker.acquire()) is None:
            if limiter is not None:
                limiter.release()
            self.skipped_open += 1
            outcome = CIRCUIT_OPEN
        else:
            self.calls += 1
            call.permit = permit
            task = call.task
            assert task is not None
            self._deadlines.begin(call)
            cancelling = task.cancelling()
            result: object
            try:
                if self.retry is None:
                    if self.cache is not None:  # its outcome is served to its key's events
                        copy: dict[str, Any] = written_copy(snapshot)
                    else:
                        copy = dict(snapshot)  # a flat event's copy, without a frame
                        if not IMMUTABLE.issuperset(map(type, copy.values())):
                            copy = isolated_copy(snapshot)
                    result = await self.enricher.enrich_async(logger, method_name, copy)
                    if result is None:
                        result = copy
                else:
                    result = await self.retry.run(
                        lambda: self._attempt(logger, method_name, snapshot),
                        deadline=call.at,
                        clock=self._deadlines.clock,
                        on_retry=self._on_retry,
                    )
            except BaseException as exc:
                outcome = self._failure(call, permit, exc, task, cancelling)
            else:
                outcome = self._success(call, permit, result, snapshot, task)
            finally:
                call.finished = True
                call.task = None  # a finished call must not keep its task alive
                if limiter is not None and call.state != _Call.ABANDONED:
                    limiter.release()
            # The call started when its deadline was set: no second clock read.
            seconds = self._deadlines.clock() - call.at + self.timeout
            if call.state != _Call.ABANDONED:  # observed when abandoned
                self.latency.observe(seconds)
            call.deliver(outcome, seconds)
            return outcome
        call.deliver(outcome, 0.0)
        return outcome

    # -- batching ----------------------------------------------------------

    def _collect(  # noqa: PLR0912, PLR0915 - one frame per event and enricher, on purpose
        self,
        loop: asyncio.AbstractEventLoop,
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
        sink: Sink,
        key: tuple[Any, ...],
    ) -> None:
        """Add this event's key to the next batch (or to the batch already
        fetching it: single flight per key)."""
        del logger, method_name  # enrich_many sees keys, apply sees the event
        # With a cache, this event's lookup is counted here (lookup_all()
        # handed it over uncounted): a hit, or a miss.
        cache = self.cache
        if not self.enricher.available:
            if cache is not None:
                cache.count_miss()
            self.skipped_unavailable += 1
            sink(*key, UNAVAILABLE, 0.0)
            return
        try:
            lookup = self._cache_key(snapshot)
            if lookup is not None:
                _compares(lookup)
            # Without a cache, _entry_of reads an empty mapping.
            entry = None if lookup is None else self._entry_of(lookup)
        except BaseException as exc:  # a failing, unhashable or incomparable key: a reason only
            if cache is not None:
                cache.count_miss()
            sink(*key, self._failed(error_outcome(exc)), 0.0)
            return
        if lookup is None:
            sink(*key, NO_CHANGES, 0.0)
            return
        if entry is not None and self._clock() < entry.expires_at:
            # Cached or failed since the logging thread looked: one read of
            # the entry, a hit after all.
            error = entry.error
            if error is None:
                entry.used = True
                if cache is not None:
                    cache.count_hit()
                sink(*key, entry.value, 0.0)
                return
            if isinstance(error, _EnrichmentFailedError):
                if cache is not None:
                    cache.count_hit()
                sink(*key, error.outcome, 0.0)
                return
        waiter = (snapshot, sink, key)
        # An event whose key is asked already causes no call: a hit, as
        # for the cache's single flight.
        try:
            fetching = self._fetching.get(lookup)
            waiting = (
                fetching.waiters[lookup] if fetching is not None else self._waiting.get(lookup)
            )
        except BaseException as exc:  # a key that cannot be compared with one in flight
            if cache is not None:
                cache.count_miss()
            sink(*key, self._failed(error_outcome(exc)), 0.0)
            return
        if waiting is not None:
            waiting.append(waiter)
            if cache is not None:
                cache.count_hit()
            return
        if cache is not None:
            cache.count_miss()
        size = self._batch_size
        queued = len(self._waiting)
        if not queued % size:
            # The first key of a batch to be (batches are cut from the front,
            # ``size`` keys each): the call runs in this event's context.
            self._contexts[lookup] = contextvars.copy_context()
        self._waiting[lookup] = [waiter]
        if queued + 1 >= size:
            self._dispatch(loop)
        elif not self._flush_scheduled:
            window = self.options.batch_window
            if window:
                loop.call_later(window, self._flush, loop, context=self._timer_context)
            else:
                # At the end of this turn of the loop: the events handed in
                # together share a batch.
                loop.call_soon(self._flush, loop, context=self._timer_context)
            # Flagged once scheduled: an interrupt in between (runtime="loop"
            # on the main thread) costs a second flush, not a lost one.
            self._flush_scheduled = True

    def _remember_failure(self, keys: Iterable[Hashable], outcome: Outcome) -> None:
        """Remember a failed lookup of ``keys`` for the cache's ``error_ttl``
        (not a skip: the backend was not asked)."""
        cache = self.cache
        if cache is not None and outcome not in _NOT_CACHED:
            error = _EnrichmentFailedError(outcome)
            for key in keys:
                cache.remember_failure(key, error)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Dispatch what is waiting, unless two batches are out already:
        then keys gather until one comes back (or a batch is full), so that
        a busy enricher makes few, large calls and an idle one waits for
        nothing."""
        self._flush_scheduled = False
        if self._waiting and self._batches_out < _BATCHES_OUT:
            self._dispatch(loop)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        size = self.options.batch_size
        while self._waiting:
            keys = list(itertools.islice(self._waiting, size))
            batch = _Batch({lookup: self._waiting.pop(lookup) for lookup in keys})
            context = self._contexts.pop(keys[0], None)
            if context is None:  # not expected: batches are cut as above
                context = contextvars.copy_context()
            for lookup in keys:
                self._fetching[lookup] = batch
            self._batches_out += 1
            call = _Call(self._fail_batch, (batch,))
            limiter = self._limiter
            if limiter is None or limiter.try_acquire():
                call.task = loop.create_task(self._run_batch(call, batch), context=context)
            else:
                limiter.wait(
                    loop, functools.partial(self._batch_granted, call, batch, loop, context)
                )
            if len(self._waiting) < size:
                break

    def _batch_granted(
        self,
        call: _Call,
        batch: _Batch,
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context,
        granted: bool,
    ) -> bool:
        if not granted:
            self.overloaded += batch.events()
            self._batch_done(batch, loop)
            call.deliver(OVERLOADED, 0.0)
            return False
        call.task = loop.create_task(self._run_batch(call, batch), context=context)
        return True

    async def _run_batch(self, call: _Call, batch: _Batch) -> None:
        """One ``enrich_many`` call for the batch's keys, guarded like any
        call (slot taken already): breaker, timeout, retry."""
        loop = asyncio.get_running_loop()
        limiter = self._limiter
        permit = self.breaker.acquire() if self.enricher.available else None
        if permit is None:
            if limiter is not None:
                limiter.release()
            self._batch_done(batch, loop)
            self._skip_batch(call, batch)
            return
        keys = list(batch.waiters)
        self.calls += 1
        call.permit = permit
        task = call.task
        assert task is not None
        self._deadlines.begin(call)
        BATCH_DEADLINE.set(call.at)  # in this batch's own context
        cancelling = task.cancelling()
        values: object
        try:
            if self.retry is None:
                values = await self._ask(keys)
            else:
                values = await self._many_with_retries(keys, call.at)
        except BaseException as exc:
            failure: Outcome | None = self._failure(call, permit, exc, task, cancelling)
        else:
            failure = self._batch_failure(call, permit, values, task, keys)
        finally:
            call.finished = True
            call.task = None
            if limiter is not None and call.state != _Call.ABANDONED:
                limiter.release()
            self._batch_done(batch, loop)
        seconds = self._deadlines.clock() - call.at + self.timeout
        if call.state != _Call.ABANDONED:  # observed when abandoned
            self.latency.observe(seconds)
        if failure is not None:
            if failure is OVERLOADED:  # a skip (the loop fell behind): per event
                self.overloaded += batch.events() - 1
            call.deliver(failure, seconds)
        elif not call.delivered:
            call.delivered = True
            self._apply_batch(batch, values, seconds)  # type: ignore[arg-type]

    def _ask(self, keys: list[Hashable]) -> Awaitable[Mapping[Hashable, Any]]:
        """``enrich_many(keys)``, counted: every call the backend sees, the
        calls that retry a batch or its failed keys included."""
        self.batch_calls += 1
        self.batch_keys += len(keys)
        return self.enricher.enrich_many(keys)

    async def _many_with_retries(self, keys: list[Hashable], deadline: float) -> object:
        """``enrich_many(keys)``, retried as a whole while it raises a
        transient failure; then, with the attempts left, again for the keys
        whose value is a transient failure (each key has at most
        ``retry_attempts`` attempts), never sleeping past ``deadline``."""
        retry = self.retry
        assert retry is not None
        clock = self._deadlines.clock
        attempt = 1

        def on_retry(failed: int, exc: BaseException, delay: float) -> None:
            nonlocal attempt
            attempt = failed + 1
            self._on_retry(failed, exc, delay)

        values = await retry.run(
            lambda: self._ask(keys),
            deadline=deadline,
            clock=clock,
            on_retry=on_retry,
        )
        while attempt < retry.attempts and isinstance(values, Mapping):
            try:
                failed = [
                    key
                    for key in keys
                    if isinstance(value := values.get(key), Exception)
                    and retry.worth_retrying(value)
                ]
            except Exception:  # a mapping that fails when read: _apply_batch says so
                break
            if not failed:
                break
            delay = retry.backoff(attempt)
            # The keys asked again must be done a little before the call's
            # deadline: past it, the runtime would time out the whole call,
            # the keys answered already with it.
            ends = shortly_before(deadline, clock())
            if clock() + delay >= ends:
                break
            self._on_retry(attempt, values[failed[0]], delay)
            await asyncio.sleep(delay)
            attempt += 1
            scope = asyncio.timeout_at(ends)
            try:
                async with scope:
                    again = await self._ask(failed)
            except Exception as exc:
                if scope.expired() or not retry.worth_retrying(exc):
                    break  # out of time, or not worth it: the first answers stand
                again = dict.fromkeys(failed, exc)
            if not isinstance(again, Mapping):
                break
            values = dict(values)
            for key in failed:
                value = again.get(key, _MISSING)
                if value is _MISSING:
                    del values[key]  # not there now: adds nothing
                else:
                    values[key] = value
        return values

    def _skip_batch(self, call: _Call, batch: _Batch) -> None:
        """The batch is not called (unavailable, or the circuit is open):
        counted per event, as for events looked up alone."""
        if not self.enricher.available:
            self.skipped_unavailable += batch.events()
            call.deliver(UNAVAILABLE, 0.0)
        else:
            self.skipped_open += batch.events()
            call.deliver(CIRCUIT_OPEN, 0.0)

    def _batch_failure(
        self,
        call: _Call,
        permit: Permit,
        values: object,
        task: asyncio.Task[Any],
        keys: list[Hashable],
    ) -> Outcome | None:
        """The outcome every event of the batch gets, or ``None`` when the
        call returned a mapping in time (each key's value is then applied,
        an exception failing its key alone). A mapping that holds an
        exception for every key asked is a failure for the breaker all the
        same: the backend answered nothing (an HTTP service that is down
        fails each request)."""
        if call.state == _Call.ABANDONED:
            return TIMEOUT
        if call.state == _Call.GIVEN_UP:
            return self._given_up(permit)
        if call.state == _Call.EXPIRED:
            task.uncancel()
            return self._timed_out(call, permit)
        if not isinstance(values, Mapping):
            self.breaker.record_failure(permit)
            return self._failed(INVALID_RETURN)
        if _every_key_failed(values, keys):
            self.breaker.record_failure(permit)
        else:
            self.breaker.record_success(permit)
            self.successes += 1
        return None

    def _apply_batch(self, batch: _Batch, values: Mapping[Hashable, Any], seconds: float) -> None:
        """Give each event its key's value: applied once per key (the
        changes depend on the key alone, as cached ones do). Every key is
        cached before any event hears of it: an event it completes may let
        new events in, which must find the keys answered, not fetch them
        again."""
        cache = self.cache
        waiters_of = batch.waiters
        outcomes: list[Outcome] = []
        failed = False
        applied = self._applied
        for lookup, waiters in waiters_of.items():
            try:
                value = values.get(lookup, _MISSING)
            except BaseException as exc:  # a mapping that fails when read
                outcome = self._failed(error_outcome(exc))
            else:
                outcome = applied(waiters[0][0], value)
            if outcome[2] is not None:
                # The key's value was an exception, could not be read or
                # could not be applied: remembered as failed (error_ttl),
                # as a failed call is, not asked again for the next event.
                failed = True
                if cache is not None:
                    self._remember_failure((lookup,), outcome)
            outcomes.append(outcome)
        if cache is not None:
            answered = zip(waiters_of, outcomes, strict=True)
            cache.set_many(answered if not failed else [a for a in answered if a[1][2] is None])
        for outcome, waiters in zip(outcomes, waiters_of.values(), strict=True):
            for _, sink, key in waiters:
                sink(*key, outcome, seconds)

    def _applied(self, snapshot: EventDict, value: Any) -> Outcome:
        if value is _MISSING:
            return NO_CHANGES  # a key the backend does not have adds nothing
        if isinstance(value, BaseException):
            return self._failed(error_outcome(value))  # this key failed alone
        copy = written_copy(snapshot)  # its changes go to every event of its key
        try:
            result = self.enricher.apply(copy, value)
            if result is None:
                result = copy
            elif result is not copy and not isinstance(result, Mapping):  # no ABC check for it
                return self._failed(INVALID_RETURN)
            updated, removed = changes_of(snapshot, result, self._error_field)
            return (Fills(updated) if self.keeps and updated else updated, removed, None)
        except structlog.DropEvent:
            return FILTERED
        except BaseException as exc:  # user code on the loop: a reason, nothing more
            return self._failed(error_outcome(exc))

    def _fail_batch(self, batch: _Batch, outcome: Outcome, seconds: float) -> None:
        """Every event of the batch gets ``outcome`` (the call failed, timed
        out, was abandoned or never ran). On the loop: keys that gathered
        while the batch was out are dispatched now, not when the next event
        arrives (after an abandoned call, that may be never)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # shutdown cancelling what is left
            loop = None
        self._batch_done(batch, loop)
        self._remember_failure(batch.waiters, outcome)
        for waiters in batch.waiters.values():
            for _, sink, key in waiters:
                sink(*key, outcome, seconds)

    def _batch_done(self, batch: _Batch, loop: asyncio.AbstractEventLoop | None) -> None:
        """The batch no longer fetches its keys: later events start another."""
        fetching = self._fetching
        released = False
        for lookup in batch.waiters:
            if fetching.get(lookup) is batch:
                del fetching[lookup]
                released = True
        if released:
            self._batches_out -= 1
            if self._waiting and loop is not None and not self._flush_scheduled:
                loop.call_soon(self._flush, loop, context=self._timer_context)
                self._flush_scheduled = True

    def _success(
        self,
        call: _Call,
        permit: Permit,
        result: object,
        snapshot: EventDict,
        task: asyncio.Task[Any],
    ) -> Outcome:
        """The outcome of a call that returned ``result``."""
        if call.state == _Call.ABANDONED:
            return TIMEOUT  # already reported and counted
        if call.state == _Call.GIVEN_UP:
            return self._given_up(permit)
        if call.state == _Call.EXPIRED:
            # The enricher swallowed our cancellation and finished late
            # (within the grace): its answer is still a timeout.
            task.uncancel()
            return self._timed_out(call, permit)
        if type(result) is not dict and not isinstance(result, Mapping):  # dict: no ABC check
            self.breaker.record_failure(permit)
            return self._failed(INVALID_RETURN)
        try:
            updated, removed = changes_of(snapshot, result, self._error_field)
        except Exception:  # a mapping that fails when read
            self.breaker.record_failure(permit)
            return self._failed(INVALID_RETURN)
        self.breaker.record_success(permit)
        self.successes += 1
        if self.keeps and updated:
            return (Fills(updated), removed, None)
        return (updated, removed, None)

    def _failure(
        self,
        call: _Call,
        permit: Permit,
        exc: BaseException,
        task: asyncio.Task[Any],
        cancelling: int,
    ) -> Outcome:
        """The outcome of a call that raised ``exc``; re-raises a real
        cancellation of the caller."""
        if isinstance(exc, asyncio.CancelledError):
            if call.state == _Call.ABANDONED:
                raise exc  # already reported and counted
            if call.state == _Call.EXPIRED and task.uncancel() <= cancelling:
                return self._timed_out(call, permit)  # our own timeout
            if task.cancelling():
                # Shutdown gave up on it: no outcome (its event is written
                # ``unavailable``, counted there), but a call made is timed.
                self.breaker.record_cancelled(permit)
                self.latency.observe(self._deadlines.clock() - call.at + self.timeout)
                raise exc
            # The enricher raised CancelledError of its own accord (a
            # client's inner task cancelled): a failure like any other.
            self.breaker.record_failure(permit)
            return self._failed(error_outcome(exc))
        if call.state == _Call.ABANDONED:
            return TIMEOUT
        if call.state == _Call.GIVEN_UP:
            return self._given_up(permit)
        if isinstance(exc, structlog.DropEvent):
            # The enricher decided, on purpose: a successful call.
            self.breaker.record_success(permit)
            self.successes += 1
            return FILTERED
        self.breaker.record_failure(permit)
        return self._failed(error_outcome(exc))

    async def _attempt(
        self, logger: WrappedLogger, method_name: str, snapshot: EventDict
    ) -> EventDict | None:
        # A fresh copy per attempt: a failed attempt may have half-mutated it.
        copy = written_copy(snapshot) if self.cache is not None else isolated_copy(snapshot)
        result = await self.enricher.enrich_async(logger, method_name, copy)
        return copy if result is None else result

    def _given_up(self, permit: Permit) -> Outcome:
        """A call shutdown cancelled ended anyway (it ignored the
        cancellation): abandoned, neither a success nor a failure (its events
        were written without it, counted ``unavailable``)."""
        self.breaker.record_cancelled(permit)
        self.abandoned += 1
        return UNAVAILABLE

    def count_left_behind(self) -> None:
        """Once shutdown is over: the calls it gave up that still ignore
        it, counted abandoned and timed until now (not again if they end
        later: they are abandoned)."""
        now = self._deadlines.clock()
        for call in self._deadlines.left_behind():
            if call.state == _Call.ABANDONED:  # its grace ran out meanwhile: counted
                continue
            expired, call.state = call.state == _Call.EXPIRED, _Call.ABANDONED
            if expired:  # timed out, in its grace: abandoned now, as the grace would
                self._abandoned(call)
            else:
                self.latency.observe(now - call.at + self.timeout)
                self.abandoned += 1

    def _timed_out(self, call: _Call, permit: Permit) -> Outcome:
        if call.late:
            # The loop fell behind: the enricher never had its time.
            self.breaker.record_cancelled(permit)
            self.overloaded += 1
            return OVERLOADED
        self.breaker.record_failure(permit)
        return self._failed(TIMEOUT)

    def _abandoned(self, call: _Call) -> None:
        """A call ignored its cancellation past the grace: count it as a
        failure, give its slot back, and tell its caller to stop waiting.

        The latency is observed before ``abandoned`` is counted: a reader of
        metrics() on another thread that sees the abandonment then also sees
        the call among the calls timed."""
        # Its duration so far, now: one that never ends must still count
        # among the calls made (the histogram's count is the calls).
        self.latency.observe(ABANDON_GRACE + self.timeout)
        self._reasons["timeout"] = self._reasons.get("timeout", 0) + 1
        self.abandoned += 1
        self.enricher.record_failure("timeout (abandoned: ignored cancellation)")
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
        call.deliver(TIMEOUT, ABANDON_GRACE + self.timeout, abandoned=True)

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
        reason = outcome[2]
        assert reason is not None
        kind = reason.partition(":")[0]
        self._reasons[kind] = self._reasons.get(kind, 0) + 1
        self.enricher.record_failure(reason)
        return outcome

    def cancel_calls(self) -> None:
        """Cancel every call in progress (shutdown gave up waiting)."""
        self._deadlines.cancel_all()

    def after_fork_in_child(self) -> None:
        """In a forked child: fresh locks, timers and concurrency slots; the
        parent's belonged to its threads and its event loop. The counters
        start at zero: each process counts its own."""
        self._reset_counters()
        self.breaker.after_fork_in_child()
        if self.cache is not None:
            self.cache.after_fork_in_child()
        self._deadlines = _Deadlines(self.timeout, self._abandoned, self._timer_context)
        if self.options.max_concurrency is not None:
            self._limiter = _Limiter(
                self.options.max_concurrency, self.timeout, self._timer_context
            )
        self.lingering = set()
        # The parent's batches: their calls ran on its loop and never come
        # back here. A key left "fetching" would keep every child event with
        # it waiting for nothing.
        self._waiting, self._contexts, self._fetching = {}, {}, {}
        self._batches_out = 0
        self._flush_scheduled = False

    def metrics(self) -> EnricherMetrics:
        """This enricher's counters, latency and breaker state."""
        reasons = dict.fromkeys(FAILURE_REASONS, 0)
        reasons.update(self._reasons)
        reasons["overloaded"] += self.overloaded
        reasons["timeout"] += self.cut_off
        reasons["circuit_open"] += self.skipped_open
        reasons["unavailable"] += self.skipped_unavailable
        cache = None if self.cache is None else self.cache.stats()
        return EnricherMetrics(
            name=self.name,
            calls=self.calls,
            successes=self.successes,
            failures=sum(reasons.values()),
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


def _compares(key: Hashable) -> None:
    """Raise if ``key`` cannot be compared, before the cache or a batch
    holds it: there it would fail every later event whose key hashes the
    same (``"1"`` beside a ``str`` subclass whose ``__eq__`` raises), for
    as long as it stayed. Compared to itself, it fails its own event only."""
    key == key  # noqa: B015, PLR0124 - the comparison is the check


def _abandon_sink(abandon: Callable[[Outcome], object]) -> Sink:
    def sink(outcome: Outcome, _seconds: float) -> None:
        abandon(outcome)

    return sink


def _every_key_failed(values: Mapping[Hashable, Any], keys: list[Hashable]) -> bool:
    """Whether ``values`` holds an exception for each of ``keys``."""
    try:
        return all(isinstance(values.get(key), BaseException) for key in keys)
    except Exception:  # a mapping that fails when read: _apply_batch says so
        return False


def _report_state_change(breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
    level = logging.WARNING if new is CircuitState.OPEN else logging.INFO
    _report.log(level, "enricher %r: circuit %s -> %s", breaker.name, old.value, new.value)


def lookup_all(  # noqa: PLR0912 - once per level of every event: one frame on purpose
    guards: Sequence[EnricherGuard],
    logger: WrappedLogger,
    method_name: str,
    event_dict: EventDict,
) -> list[Outcome | None]:
    """:meth:`EnricherGuard.lookup` for each of ``guards``, in one frame.

    Once per level of every event, on the logging thread: the guards of a
    level are looked up in one loop rather than a frame each, and a cache
    hit is read here rather than through EnricherCache.get()
    (docs/benchmarks.md, "Hot-path choices"); misses, expiry and eviction
    stay the cache's business.
    """
    del logger, method_name  # a cache key is the event's business
    outcomes: list[Outcome | None] = []
    # The clock is read once for the level (guards share the monotonic one).
    clock: Callable[[], float] | None = None
    now = 0.0
    for guard in guards:
        if not guard.enricher.available:
            if guard.counting:  # not once its container is shut down
                guard.skipped_unavailable += 1
            outcomes.append(UNAVAILABLE)
            continue
        cache = guard.cache
        # A miss handed to the loop is counted there, once it is known: a
        # miss, or a hit after all (its key fetched meanwhile), never one
        # then the other (counters only go up).
        missed = False
        if cache is not None:
            try:
                key = guard._cache_key(event_dict)
                # Inside the try: an unhashable key raises here.
                entry = None if key is None else guard._entry_of(key)
                if entry is not None:
                    if guard._clock is not clock:
                        clock = guard._clock
                        now = clock()
                    if now < entry.expires_at:
                        error = entry.error
                        if error is None:
                            entry.used = True  # spared by the next eviction that reaches it
                            cache._hits += 1  # the hit EnricherCache.get() would count
                            outcomes.append(entry.value)
                            continue
                        if isinstance(error, _EnrichmentFailedError):
                            # A remembered failure: its reason again, here, at once.
                            cache._hits += 1
                            outcomes.append(error.outcome)
                            continue
                    # Expired (or an error the cache keeps for itself).
                    value: Outcome | None = cache.fresh(key)  # expires, or races a set
                    if value is not None:
                        outcomes.append(value)
                        continue
                missed = key is not None
            except BaseException as exc:  # cache_key() raised, or its key is unhashable
                outcomes.append(guard._failed(hook_failed(exc)))
                continue
        breaker = guard.breaker
        if breaker.state is _OPEN and breaker.retry_in() > 0:
            guard.skipped_open += 1
            if missed and cache is not None:
                cache._misses += 1  # settled here
            outcomes.append(CIRCUIT_OPEN)
        else:
            outcomes.append(None)
    return outcomes


#: Bound once: read for every enricher of every event that is not a hit.
_OPEN = CircuitState.OPEN
