"""`EnrichmentPlan`: everything about enriching one event.

The plan is compiled once from the registry's levels: a :class:`Step` per
enricher, each async one behind its :class:`~enrichlog.resilience.guard.EnricherGuard`.
For each event it settles, on the calling thread, what needs no await (sync
enrichers, cache hits, open circuits, unavailable enrichers); on the loop it
advances the event level by level, starting one task per enricher call that
must await, and merges each level's changes once all of its outcomes are in,
in the level's order (priority, then registration).

An event is driven by its outcomes, not by a task of its own: the last
outcome of a level to arrive merges the level and starts the next one. So a
call that never returns (it ignored its cancellation) holds up nothing once
its guard abandons it: the event gets ``timeout`` for it and moves on.

The plan knows nothing of queues or threads: it is told to advance an event
and calls the event's ``on_done`` when the event completed later.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import structlog
from structlog.typing import EventDict, WrappedLogger

from ..enricher import AsyncEnricher, Enricher, SyncEnricher, _FunctionEnricher
from ..exceptions import EnricherConfigError
from ..metrics import EnricherMetrics, LatencyHistogram
from ..options import ResolvedOptions
from ..reporting import reporting_logger
from ..resilience.cache import EnricherCache
from ..resilience.guard import (
    LATE_FRACTION,
    LATE_SECONDS,
    REPRIEVE_AFTER,
    EnricherGuard,
    lookup_all,
)
from ..resilience.outcome import (
    FILTERED,
    FILTERED_REASON,
    IMMUTABLE,
    INTERRUPTS,
    INVALID_RETURN,
    OVERLOADED,
    TIMEOUT,
    UNAVAILABLE,
    Fills,
    Outcome,
    changes_of,
    fill,
    hook_failed,
    isolated_copy,
    take_interrupt,
    with_reasons,
)
from ..settings import LoggingSettings

__all__ = [
    "INTERRUPTS",
    "IN_ENRICHMENT",
    "Enrichment",
    "EnrichmentPlan",
    "Step",
    "call_in_worker",
    "call_sync",
    "take_interrupt",
]

_report = reporting_logger("enrichlog")

#: The clock of an event's enrichment latency (bound once: read twice per
#: event that awaits).
_monotonic = time.monotonic

#: True in the context every enricher call runs in: an event logged there
#: (by an enricher, or by a library it calls) is written as it is, never
#: enriched again, which could loop without end.
IN_ENRICHMENT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "enrichlog_in_enrichment", default=False
)

#: What the guards' own timers run in: no event's context (a timer an
#: enricher shares would keep the context of the event that armed it alive,
#: and deliver in it), marked as enrichment like every enricher call.
_TIMER_CONTEXT = contextvars.Context()
_TIMER_CONTEXT.run(IN_ENRICHMENT.set, True)

#: Runs a blocking callable in a worker thread: ``await run(fn, *args)``.
RunBlocking = Callable[..., Awaitable[Any]]

#: ``settle(logger, method_name, snapshot)``: an outcome, or ``None`` when
#: the step must run on the loop.
Settle = Callable[[WrappedLogger, str, EventDict], Outcome | None]


class Enrichment:
    """One event on its way through the plan: how far it got.

    Attributes:
        level: the level being enriched; the plan's depth once complete.
        outcomes: the current level's outcomes, ``None`` where still awaited.
        waiting: how many outcomes of the current level are still awaited.
        filtered: an enricher filtered the event out (``DropEvent``).
        on_done: called with the record, on the loop, when an event that
            could not complete at once has completed (set by whoever advances
            it).
        context: the caller's contextvars, which each level of the event
            starts in (a copy of them); ``None``: the current context.

    Whoever queues events may subclass it with fields of its own (the
    pipeline's :class:`~enrichlog.engine.pipeline.PendingEvent` does), so that
    an event waiting for the loop is one object, not two.
    """

    __slots__ = (
        "context",
        "enricher_time",
        "event",
        "filtered",
        "level",
        "level_timer",
        "logger",
        "method_name",
        "on_done",
        "outcomes",
        "started",
        "starting",
        "waiting",
    )

    def __init__(
        self,
        logger: WrappedLogger,
        method_name: str,
        event: EventDict,
        level: int = 0,
        outcomes: list[Outcome | None] | None = None,
    ) -> None:
        self.logger = logger
        self.method_name = method_name
        self.event = event
        self.level = level
        self.outcomes = outcomes
        self.waiting = 0
        #: True while a level's calls are being started: an outcome a call
        #: delivers at once (a batch's cache hit, a skip) is only recorded,
        #: and the level is merged by whoever started it, not from inside
        #: the call that delivered (which would nest one event's completion
        #: inside another's start, without bound).
        self.starting = False
        self.filtered = False
        self.on_done: Callable[[Any], object] | None = None
        #: Loop time the first call started (0.0: none awaited yet), and the
        #: sum of its calls' durations: the metrics of events that await.
        self.started = 0.0
        self.enricher_time = 0.0
        self.context: contextvars.Context | None = None
        #: The level timeout's timer while the level runs (cancelled when it
        #: completes: a timer left to fire would keep the event alive).
        self.level_timer: asyncio.TimerHandle | None = None


class Step:
    """One enricher of a compiled plan.

    Attributes:
        settle: settles the step without awaiting when it can (a sync
            enricher runs, a cached one answers from its cache); ``None``
            means it must run on the loop.
        start: ``start(loop, logger, method_name, snapshot, sink, key)``
            runs the step on the loop in a task of its own and calls
            ``sink(*key, outcome, seconds)`` once; ``None`` for a step that
            always settles inline.
        timeout: the longest the step may take on the loop.
        guard: the async enricher's guard (``None`` for sync enrichers).
    """

    __slots__ = ("enricher", "guard", "name", "settle", "start", "timeout")

    def __init__(
        self,
        enricher: Enricher,
        guard: EnricherGuard | None,
        settle: Settle,
        start: Callable[..., None] | None,
        timeout: float,
    ) -> None:
        self.enricher = enricher
        self.name = enricher.name
        self.guard = guard
        self.settle = settle
        self.start = start
        self.timeout = timeout


_R = TypeVar("_R", bound=Enrichment)

#: Settles a level's steps for one event: an outcome per step, ``None`` for
#: each that must await.
LevelSettler = Callable[[WrappedLogger, str, EventDict], list[Outcome | None]]


def _level_settler(level: Sequence[Step]) -> LevelSettler:
    guards = tuple(step.guard for step in level if step.guard is not None)
    settler: LevelSettler
    if len(guards) == len(level):  # every step an async enricher's guard.lookup
        settler = functools.partial(lookup_all, guards)
    else:
        settler = functools.partial(_settle_each, tuple(step.settle for step in level))
    if any(guard.keeps for guard in guards):
        return functools.partial(_filling, settler)
    return settler


def _filling(
    settler: LevelSettler, logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> list[Outcome | None]:
    """``settler``'s outcomes, with the fields of keep_existing enrichers
    (:class:`Fills`) already merged into a level that settled: the merge of
    :meth:`EnrichmentPlan.settle` stays a plain ``update``, free of a check
    per enricher for the levels without them. (Fills never replace, updates
    always do: merged first, they end as if merged in their order.)"""
    outcomes = settler(logger, method_name, event_dict)
    if None in outcomes:
        return outcomes  # the loop merges them (_merge)
    filled: list[Outcome | None] = []
    for outcome in outcomes:
        assert outcome is not None
        updated, removed, reason = outcome
        if reason is None and updated.__class__ is Fills:
            fill(event_dict, updated)
            filled.append((None, removed, None))
        else:
            filled.append(outcome)
    return filled


def _settle_each(
    settlers: Sequence[Settle], logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> list[Outcome | None]:
    return [settle(logger, method_name, event_dict) for settle in settlers]


class EnrichmentPlan(Generic[_R]):
    """The compiled levels of a container's enrichers, and how to run them.

    Args:
        levels: the enrichers by dependency level, each level in run order.
        settings: timeouts, the error field and the resilience defaults.
        run_blocking: runs a blocking sync enricher in a worker thread.
        record: the class of the record :meth:`settle` makes for an event
            that must go on to the loop (:class:`Enrichment` or a subclass).
    """

    def __init__(
        self,
        levels: Sequence[Sequence[Enricher]],
        settings: LoggingSettings,
        run_blocking: RunBlocking,
        record: type[_R],
    ) -> None:
        self._record = record
        self._run_blocking_fn = run_blocking
        self._sync_timeout = settings.enricher_timeout
        self._level_timeout = settings.level_timeout
        self._error_field = settings.error_field
        self._guards: dict[str, EnricherGuard] = {}
        #: Calls of blocking sync enrichers waiting for their worker thread.
        self._blocking: set[asyncio.Task[None]] = set()
        self._levels = tuple(tuple(self._compile(e, settings) for e in level) for level in levels)
        #: Per level: what settles its steps on the calling thread, in one
        #: call (the guards of an all-async level are looked up in one frame).
        self._settlers = tuple(_level_settler(level) for level in self._levels)
        #: How many levels an event goes through.
        self.depth = len(self._levels)
        # Every step of the first level runs on the loop whatever happens
        # (uncached async or blocking enrichers): settle nothing on the
        # caller. (Skips for unavailable enrichers or open circuits cost the
        # loop no more than the caller.)
        self._first_level_awaits = bool(self._levels) and all(
            step.start is not None and (step.guard is None or step.guard.cache is None)
            for step in self._levels[0]
        )
        # Levels whose slowest step outlasts the level timeout need a timer.
        self._level_timers = tuple(
            self._level_timeout is not None
            and self._level_timeout < max(step.timeout for step in level)
            for level in self._levels
        )
        self._deliver = self._deliver_outcome
        #: Per event that awaited: its enrichment time, and the sum of its
        #: enrichers' call times (what parallel levels saved is the gap).
        self.enrichment_latency = LatencyHistogram()
        self.enricher_time = LatencyHistogram()

    def _compile(self, enricher: Enricher, settings: LoggingSettings) -> Step:
        check_provides(enricher, settings.error_field)
        if isinstance(enricher, AsyncEnricher):
            guard = EnricherGuard(
                enricher,
                ResolvedOptions.for_enricher(enricher, settings),
                timer_context=_TIMER_CONTEXT,
                error_field=settings.error_field,
                still_wanted=_still_waiting,
            )
            self._guards[enricher.name] = guard
            return Step(enricher, guard, guard.lookup, guard.starter, guard.longest)
        assert isinstance(enricher, SyncEnricher)
        if enricher.blocking:
            return Step(
                enricher,
                None,
                _not_settled,
                functools.partial(self._start_blocking, enricher),
                self._sync_timeout,
            )
        settle: Settle = functools.partial(
            call_sync, _enrich_function(enricher), settings.error_field
        )
        if has_lifecycle(enricher):
            # One that can be unavailable (its start-up or health check
            # failed) is skipped then, as an async one is: not called.
            settle = functools.partial(_when_available, enricher, settle)
        return Step(enricher, None, settle, None, 0.0)

    # -- views -----------------------------------------------------------------

    @property
    def levels(self) -> tuple[tuple[Enricher, ...], ...]:
        """The enrichers of each level, in execution order."""
        return tuple(tuple(step.enricher for step in level) for level in self._levels)

    @property
    def needs_runtime(self) -> bool:
        """Whether any enricher runs on the loop or in a worker thread."""
        return any(step.start is not None for level in self._levels for step in level)

    def wait_bound(self) -> float:
        """The longest an event can take to enrich, in seconds: every
        level's slowest step (capped by the level timeout)."""
        total = 0.0
        for level in self._levels:
            slowest = max((step.timeout for step in level), default=0.0)
            if self._level_timeout is not None:
                slowest = min(slowest, self._level_timeout)
            total += slowest
        return total

    def enricher_metrics(self) -> dict[str, EnricherMetrics]:
        """Counters of each async enricher, by name."""
        return {name: guard.metrics() for name, guard in self._guards.items()}

    def breaker_states(self) -> dict[str, str]:
        """The circuit state of each async enricher, by name."""
        return {name: guard.breaker.state.value for name, guard in self._guards.items()}

    def abandoned(self) -> int:
        """Calls abandoned so far because they ignored their cancellation."""
        return sum(guard.abandoned for guard in self._guards.values())

    # -- the calling thread ------------------------------------------------

    @property
    def settler(self) -> Callable[[WrappedLogger, str, EventDict], _R | None]:
        """What the calling thread runs for each event: :meth:`settle`, or,
        when nothing of the first level can settle there, the record class
        itself (a record of an event with nothing settled yet; a frame less
        per event)."""
        return self._record if self._first_level_awaits else self.settle

    def settle(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> _R | None:
        """Enrich ``event_dict`` in place as far as possible without awaiting.

        Returns ``None`` when the event is complete, else the
        :class:`Enrichment` to :meth:`advance` on the loop.

        Raises:
            structlog.DropEvent: an enricher filtered the event out.
        """
        # Once per event on the logging thread: locals, plain loops and the
        # merge of a level without failures inlined (each Python frame saved
        # here shows in docs/benchmarks.md, "Hot-path choices").
        if self._first_level_awaits:
            # Nothing of the first level can finish here (no sync enricher,
            # no cache): the loop settles it, the caller only hands off.
            # (The processor calls the record class directly: see settler.)
            return self._record(logger, method_name, event_dict)
        index = -1
        for settle_level in self._settlers:
            index += 1
            outcomes = settle_level(logger, method_name, event_dict)
            if None in outcomes:
                return self._record(logger, method_name, event_dict, index, outcomes)
            failed = False
            for updated, removed, reason in outcomes:  # type: ignore[misc]
                if reason is None:
                    if removed:
                        for key in removed:
                            event_dict.pop(key, None)
                    if updated:
                        event_dict.update(updated)  # Fills were merged by _filling
                else:
                    failed = True
            if failed:
                self._record_failures(event_dict, index, outcomes)  # type: ignore[arg-type]
        return None

    def unsettled_record(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> _R:
        """The record of an event nothing was settled for yet (the enrichers
        are still starting): all of it is settled on the loop."""
        return self._record(logger, method_name, event_dict)

    def complete_record(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> _R:
        """The record of an event that needs no more enrichment (it settled
        on the calling thread, but must queue behind earlier events)."""
        return self._record(logger, method_name, event_dict, self.depth, None)

    def finish_unenriched(self, enrichment: Enrichment) -> None:
        """Complete ``enrichment`` without awaiting: what it has, every
        outcome still missing ``unavailable`` (counted, as the loop counts
        the events it skips, until the container's counts are final). Never
        raises: an enricher's ``DropEvent`` sets ``filtered``."""
        try:
            while enrichment.level < self.depth:
                index = enrichment.level
                steps = self._levels[index]
                outcomes = enrichment.outcomes or [None] * len(steps)
                enrichment.outcomes = None
                enrichment.level = index + 1
                self._merge(enrichment.event, index, [o or UNAVAILABLE for o in outcomes])
                # Counted once merged: an event a sibling filtered out
                # (DropEvent) is not written, and skipped by nobody.
                for step, given in zip(steps, outcomes, strict=True):
                    if given is None and step.guard is not None and step.guard.counting:
                        step.guard.skipped_unavailable += 1
        except structlog.DropEvent:
            enrichment.filtered = True
        enrichment.level = self.depth
        enrichment.outcomes = None

    # -- the loop ----------------------------------------------------------------

    def advance(self, enrichment: Enrichment) -> bool:
        """Settle what needs no await and start the calls of the first level
        that needs them. True if the event is complete now; otherwise its
        ``on_done`` is called once it is. Never raises.

        Runs in a copy of the event's own context (see :meth:`_own_context`),
        marked :data:`IN_ENRICHMENT` for the calls it starts."""
        return self._own_context(enrichment).run(self._advance_marked, enrichment)

    @staticmethod
    def _own_context(enrichment: Enrichment) -> contextvars.Context:
        """A fresh copy of the event's context (the caller's, captured when
        it was logged; the current one if none was), which each level of the
        event starts in: the outcome that completed the level before may
        have arrived in another event's (a batch's call runs in its first
        event's), and events may share one context (see the processor's
        hand-off), which nothing done for one of them may change."""
        context = enrichment.context
        return context.copy() if context is not None else contextvars.copy_context()

    def _advance_marked(self, enrichment: Enrichment) -> bool:
        IN_ENRICHMENT.set(True)
        try:
            return self._settle_from(enrichment)
        except structlog.DropEvent:
            enrichment.filtered = True
        except Exception:  # a bug of ours must not lose the event
            _report_failure()
        finally:
            if INTERRUPTS:  # raised on the loop: a reason, nothing more
                take_interrupt()
        self.finish_unenriched(enrichment)
        return True

    def cancel_calls(self) -> None:
        """Cancel every enricher call in progress (shutdown gave up)."""
        for guard in self._guards.values():
            guard.cancel_calls()
        for task in list(self._blocking):
            task.cancel()

    def stop_counting(self) -> None:
        """The container's counts are final (it is shut down): events
        logged from now on, written by their callers, count for none."""
        for guard in self._guards.values():
            guard.counting = False

    def count_left_behind(self) -> None:
        """Once shutdown is over: the calls that still ignore its
        cancellation are counted abandoned."""
        for guard in self._guards.values():
            guard.count_left_behind()

    def after_fork_in_child(self) -> None:
        """In a forked child: fresh locks, timers and slots for every guard."""
        for guard in self._guards.values():
            guard.after_fork_in_child()
        self._blocking = set()  # the parent's loop's
        self.enrichment_latency = LatencyHistogram()
        self.enricher_time = LatencyHistogram()

    def _settle_from(self, enrichment: Enrichment) -> bool:
        settlers, depth = self._settlers, self.depth
        while enrichment.level < depth:
            index = enrichment.level
            outcomes = enrichment.outcomes
            if outcomes is None:
                logger, method_name, event = (
                    enrichment.logger,
                    enrichment.method_name,
                    enrichment.event,
                )
                outcomes = settlers[index](logger, method_name, event)
            if None in outcomes:
                enrichment.outcomes = outcomes
                self._start_calls(enrichment, index, outcomes)
                if enrichment.waiting:
                    return False
                # Every call of the level answered while it was started.
            enrichment.outcomes = None
            enrichment.level = index + 1
            self._merge(enrichment.event, index, outcomes)  # type: ignore[arg-type]
        return True

    def _settle_marked(self, enrichment: Enrichment) -> bool:
        IN_ENRICHMENT.set(True)
        return self._settle_from(enrichment)

    def _start_calls(
        self, enrichment: Enrichment, index: int, outcomes: list[Outcome | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        if not enrichment.started:
            enrichment.started = _monotonic()
        steps = self._levels[index]
        logger, method_name, event = enrichment.logger, enrichment.method_name, enrichment.event
        deliver = self._deliver
        enrichment.waiting = outcomes.count(None)
        enrichment.starting = True
        try:
            for position, outcome in enumerate(outcomes):
                if outcome is None:
                    start = steps[position].start
                    assert start is not None
                    start(loop, logger, method_name, event, deliver, (enrichment, index, position))
        finally:
            enrichment.starting = False
        if enrichment.waiting and self._level_timers[index]:
            assert self._level_timeout is not None
            enrichment.level_timer = loop.call_later(
                self._level_timeout,
                self._level_expired,
                enrichment,
                index,
                context=_TIMER_CONTEXT,
            )

    def _deliver_outcome(
        self,
        enrichment: Enrichment,
        index: int,
        position: int,
        outcome: Outcome,
        seconds: float = 0.0,
    ) -> None:
        """One outcome of ``enrichment``'s level ``index`` arrived (after
        ``seconds`` of its call); the last one merges the level and advances
        the event. Late outcomes (the event moved on without them) are
        ignored."""
        outcomes = enrichment.outcomes
        if enrichment.level != index or outcomes is None or outcomes[position] is not None:
            return
        outcomes[position] = outcome
        enrichment.enricher_time += seconds
        enrichment.waiting -= 1
        if enrichment.waiting or enrichment.starting:
            return  # the rest of the level, or its starter, merges it
        timer = enrichment.level_timer
        if timer is not None:
            enrichment.level_timer = None
            timer.cancel()  # the level is complete: let go of the event now
        complete = True
        try:
            enrichment.outcomes = None
            enrichment.level = index + 1
            self._merge(enrichment.event, index, outcomes)  # type: ignore[arg-type]
            if enrichment.level < self.depth:
                complete = self._own_context(enrichment).run(self._settle_marked, enrichment)
        except structlog.DropEvent:
            enrichment.filtered = True
            self.finish_unenriched(enrichment)
        except Exception:  # a bug of ours must not lose the event
            _report_failure()
            self.finish_unenriched(enrichment)
        if INTERRUPTS:  # raised on the loop: a reason, nothing more
            take_interrupt()
        if complete:
            self.enrichment_latency.observe(_monotonic() - enrichment.started)
            self.enricher_time.observe(enrichment.enricher_time)
            if enrichment.on_done is not None:
                enrichment.on_done(enrichment)

    def _level_expired(self, enrichment: Enrichment, index: int, due: float | None = None) -> None:
        timer, enrichment.level_timer = enrichment.level_timer, None
        if enrichment.level != index or enrichment.outcomes is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if due is None:
            due = now if timer is None else timer.when()
            if now - due > REPRIEVE_AFTER:
                # Late (the loop was held up): judged after the callbacks
                # that became ready meanwhile, a call's answer among them,
                # as a call's own deadline is.
                enrichment.level_timer = loop.call_at(
                    now, self._level_expired, enrichment, index, due, context=_TIMER_CONTEXT
                )
                return
        assert self._level_timeout is not None
        # Far later than due, the loop fell behind: the runtime's overload,
        # not the enrichers' (as for a call's own late deadline).
        late = now - due > max(self._level_timeout * LATE_FRACTION, LATE_SECONDS)
        cut = OVERLOADED if late else TIMEOUT
        steps = self._levels[index]
        for position, outcome in enumerate(enrichment.outcomes):
            if outcome is None:
                guard = steps[position].guard
                if guard is not None:
                    # Counted for the event (its call counts its own outcome
                    # when it ends): the fields it went without show in the
                    # enricher's failures, as in the line.
                    if late:
                        guard.overloaded += 1
                    else:
                        guard.cut_off += 1
                self._deliver(enrichment, index, position, cut)

    def _merge(self, event_dict: EventDict, index: int, outcomes: Sequence[Outcome]) -> None:
        # Once per level of every event: the common case (no failure) is one
        # tight loop; the names of failed enrichers are looked up only when
        # there are some.
        failed = False
        for updated, removed, reason in outcomes:
            if reason is None:
                if removed:
                    for key in removed:
                        event_dict.pop(key, None)
                if updated:
                    if updated.__class__ is dict:
                        event_dict.update(updated)
                    else:
                        fill(event_dict, updated)  # keep_existing
            else:
                failed = True
        if failed:
            self._record_failures(event_dict, index, outcomes)

    def _record_failures(
        self, event_dict: EventDict, index: int, outcomes: Sequence[Outcome]
    ) -> None:
        errors = {}
        for step, (_, _, reason) in zip(self._levels[index], outcomes, strict=True):
            if reason is FILTERED_REASON:
                raise structlog.DropEvent
            if reason is not None:
                errors[step.name] = reason
                if step.guard is None:
                    # A sync enricher has no guard to keep its last failure
                    # for health(); an async one's guard keeps it already.
                    step.enricher.record_failure(reason)
        if self._error_field is not None:
            event_dict[self._error_field] = with_reasons(event_dict.get(self._error_field), errors)

    def _start_blocking(
        self,
        enricher: SyncEnricher,
        loop: asyncio.AbstractEventLoop,
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
        sink: Callable[..., object],
        key: tuple[Any, ...],
    ) -> None:
        task = loop.create_task(
            self._run_blocking(enricher, logger, method_name, snapshot, sink, key)
        )
        self._blocking.add(task)
        task.add_done_callback(self._blocking.discard)

    async def _run_blocking(
        self,
        enricher: SyncEnricher,
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
        sink: Callable[..., object],
        key: tuple[Any, ...],
    ) -> None:
        if not enricher.available:  # its start-up or health check failed
            sink(*key, UNAVAILABLE, 0.0)
            return
        # A worker thread, bounded by the default timeout (the thread itself
        # cannot be cancelled; we stop waiting).
        context = contextvars.copy_context()
        clock = asyncio.get_running_loop().time
        started = clock()
        try:
            async with asyncio.timeout(self._sync_timeout):
                outcome: Outcome = await self._run_blocking_fn(
                    context.run,
                    call_in_worker,
                    enricher,
                    self._error_field,
                    logger,
                    method_name,
                    snapshot,
                )
        except TimeoutError:
            outcome = TIMEOUT
        except asyncio.CancelledError:
            return  # shutdown gave up on the event: written without this call
        sink(*key, outcome, clock() - started)


def check_provides(enricher: Enricher, error_field: str | None) -> None:
    """Refuse an enricher that declares the error field among its keys.

    Raises:
        EnricherConfigError: naming the enricher and the key.
    """
    if error_field is not None and error_field in enricher.provides:
        raise EnricherConfigError(
            f"enricher {enricher.name!r} provides {error_field!r}, the key of the error_field "
            "setting, where enrichlog records which enrichers failed (an enricher's fields "
            "there are left out); give its fields another key (for a lookup, into=), or the "
            "error_field setting another name"
        )


def _still_waiting(enrichment: Enrichment, index: int, position: int) -> bool:
    """Whether level ``index`` of ``enrichment`` still waits for the step
    at ``position`` (the key its call delivers to): not once a
    ``level_timeout`` cut it off."""
    outcomes = enrichment.outcomes
    return enrichment.level == index and outcomes is not None and outcomes[position] is None


def _not_settled(logger: WrappedLogger, method_name: str, snapshot: EventDict) -> None:
    """Blocking sync enrichers always run in a worker thread."""


def call_sync(
    enrich: Callable[[WrappedLogger, str, EventDict], Any],
    error_field: str | None,
    logger: WrappedLogger,
    method_name: str,
    snapshot: EventDict,
) -> Outcome:
    """Run a sync enricher (its ``enrich``, or a plain processor itself) on
    a copy of the event; its outcome."""
    # Once per sync enricher of every event, often on the logging thread:
    # the flat copy of a flat event is made here rather than in
    # isolated_copy(), one frame less.
    copy = dict(snapshot)
    if not IMMUTABLE.issuperset(map(type, copy.values())):
        copy = isolated_copy(snapshot)
    # Marked as enrichment, also on the logging thread: an event the
    # enricher logs is written as it is (not enriched again, without end),
    # and shutdown() from it is refused.
    marked = IN_ENRICHMENT.set(True)
    try:
        result = enrich(logger, method_name, copy)
    except structlog.DropEvent:
        return FILTERED
    except BaseException as exc:
        return hook_failed(exc)
    finally:
        IN_ENRICHMENT.reset(marked)
    if result is None:
        result = copy
    try:
        updated, removed = changes_of(snapshot, result, error_field)
    except Exception:  # not a mapping, or one that fails when read
        if inspect.iscoroutine(result):
            # A plain function that returned a coroutine: closed, so that
            # it does not warn "never awaited" once per event.
            result.close()
        return INVALID_RETURN
    return (updated, removed, None)


def has_lifecycle(enricher: SyncEnricher) -> bool:
    """Whether a sync enricher has a start-up or health check of its own,
    and so can be unavailable (a plain processor never is)."""
    kind = type(enricher)
    return kind._startup is not SyncEnricher._startup or (
        kind._health_check is not SyncEnricher._health_check
    )


def _when_available(
    enricher: SyncEnricher,
    settle: Settle,
    logger: WrappedLogger,
    method_name: str,
    snapshot: EventDict,
) -> Outcome | None:
    if not enricher.available:
        return UNAVAILABLE
    return settle(logger, method_name, snapshot)


def _enrich_function(enricher: SyncEnricher) -> Callable[[WrappedLogger, str, EventDict], Any]:
    """What to call for a sync enricher: a plain processor is called itself,
    without the frame of its wrapper's ``enrich``."""
    function = getattr(enricher, "function", None)
    if type(enricher) is _FunctionEnricher and callable(function):
        return function  # type: ignore[no-any-return]
    return enricher.enrich


def call_in_worker(
    enricher: SyncEnricher,
    error_field: str | None,
    logger: WrappedLogger,
    method_name: str,
    snapshot: EventDict,
) -> Outcome:
    """:func:`call_sync` in a worker thread: an interrupt stays a reason."""
    outcome = call_sync(enricher.enrich, error_field, logger, method_name, snapshot)
    if INTERRUPTS:
        take_interrupt()
    return outcome


def _report_failure() -> None:
    _report.exception("enrichlog: enriching an event failed; writing it with what it has")


def is_enrichment_call(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` runs an enricher call of enrichlog's (a guarded
    call, a batch, a shared cache lookup, a blocking enricher's), found by
    its coroutine's code."""
    return not task.done() and getattr(task.get_coro(), "cr_code", None) in _CALL_CODES


_CALL_CODES = frozenset(
    {
        EnricherGuard._called.__code__,
        EnricherGuard._cached.__code__,
        EnricherGuard._run_batch.__code__,
        EnricherCache._compute.__code__,
        EnrichmentPlan._run_blocking.__code__,
    }
)
