"""`AsyncEnricherProcessor`: the structlog processor that runs the plan.

For each event, level by level, every enricher gets a copy of the event as
it was when its level started; their changes are merged in level order once
the level completes. What can be settled without awaiting (sync enrichers,
cache hits, enrichers skipped for an open circuit) is settled on the logging
thread; when all of an event is settled there, it completes with no hop to
the runtime loop. Otherwise the event is handed to the :class:`EventPipeline`
and structlog is told to drop its copy (``DropEvent``): the runtime writes
the line, in order, once enriched.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import contextvars
import functools
import logging
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from threading import get_ident
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from ..enricher import AsyncEnricher, Enricher, SyncEnricher, changes_of
from ..resilience.guard import (
    DROP_REASON,
    DROPPED,
    INVALID_RETURN,
    TIMEOUT,
    UNAVAILABLE,
    EnricherGuard,
    GuardOptions,
    Outcome,
    error_outcome,
)
from ..settings import LoggingSettings
from .lifecycle import EnricherLifecycleManager
from .pipeline import CLOSED, SUBMITTED, EventPipeline, PendingEvent
from .registry import EnricherRegistry
from .runtime import EnrichmentRuntime

__all__ = ["AsyncEnricherProcessor"]

_report = logging.getLogger("enrichlog")

#: Set by the ``a*`` logger methods: a list the processor appends the
#: event's completion future (and how long to wait for it) to, so the caller
#: can await it.
ASYNC_WAITER: contextvars.ContextVar[list[tuple[asyncio.Future[None], float]] | None] = (
    contextvars.ContextVar("enrichlog_async_waiter", default=None)
)

_SYNC, _BLOCKING, _ASYNC = 0, 1, 2


class _Submitting(threading.local):
    """Per thread: inside a hand-off to the pipeline."""

    active = False


_submitting = _Submitting()


class _Step:
    """One enricher of a compiled plan.

    ``settle(logger, method_name, snapshot)`` settles it without awaiting
    when it can: a sync enricher runs, a cached one answers from its cache;
    ``None`` means it must run on the runtime loop.
    """

    __slots__ = ("enricher", "guard", "kind", "name", "settle")

    def __init__(self, enricher: Enricher, guard: EnricherGuard | None) -> None:
        self.enricher = enricher
        self.name = enricher.name
        self.guard = guard
        self.settle: Callable[[WrappedLogger, str, EventDict], Outcome | None]
        if guard is not None:
            self.kind = _ASYNC
            self.settle = guard.lookup
        elif isinstance(enricher, SyncEnricher) and enricher.blocking:
            self.kind = _BLOCKING
            self.settle = _not_settled
        else:
            self.kind = _SYNC
            self.settle = functools.partial(_call_sync, enricher)  # type: ignore[arg-type]


def _not_settled(logger: WrappedLogger, method_name: str, snapshot: EventDict) -> None:
    """Blocking sync enrichers always run in a worker thread."""


class AsyncEnricherProcessor:
    """Runs a container's enrichers for each event, as a structlog processor.

    Build it with :meth:`from_enrichers` (or let ``configure_logging`` do
    it); call :meth:`startup` before logging and :meth:`shutdown` after.

    Args:
        registry: the enrichers and their levels.
        settings: timeouts, delivery, queue and resilience defaults.
        runtime: the loop async enrichers run on.
        lifecycle: starts, checks and stops the enrichers.
    """

    def __init__(
        self,
        registry: EnricherRegistry,
        settings: LoggingSettings,
        runtime: EnrichmentRuntime,
        lifecycle: EnricherLifecycleManager,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.runtime = runtime
        self.lifecycle = lifecycle
        self.guards: dict[str, EnricherGuard] = {}
        levels: list[tuple[_Step, ...]] = []
        for level in registry.levels():
            steps = []
            for enricher in level:
                guard = None
                if isinstance(enricher, AsyncEnricher):
                    guard = EnricherGuard(enricher, GuardOptions.for_enricher(enricher, settings))
                    self.guards[enricher.name] = guard
                steps.append(_Step(enricher, guard))
            levels.append(tuple(steps))
        self._levels = tuple(levels)
        self._settlers = tuple(tuple(step.settle for step in level) for level in self._levels)
        self._owned_threads = runtime.owned_thread_ids
        self._error_field = settings.error_field
        self._level_timeout = settings.level_timeout
        self._sync_timeout = settings.enricher_timeout
        self._tail: list[Processor] = []
        self._filtered_here = 0  # DropEvent from an enricher on a logging thread
        has_async = bool(self.guards) or any(
            step.kind == _BLOCKING for level in self._levels for step in level
        )
        self.background = settings.effective_delivery(runtime_enrichers=has_async) == "background"
        self._inline_wait = self._wait_bound()
        self.pipeline = EventPipeline(
            runtime,
            advance=self._advance,
            complete=self._complete,
            write=self._write,
            abandon=self._finish_unenriched,
            queue_size=settings.queue_size,
            overflow=settings.overflow,
            block_timeout=settings.overflow_block_timeout,
            max_in_flight=settings.max_in_flight,
            report_interval=settings.drop_report_interval,
        )
        lifecycle.on_availability = self._set_available

    @classmethod
    def from_enrichers(
        cls, enrichers: Iterable[object], settings: LoggingSettings | None = None
    ) -> AsyncEnricherProcessor:
        """A processor with its own registry, runtime and lifecycle manager.

        Raises:
            EnricherConfigError: an enricher is not usable.
            EnricherDependencyError: a cycle, a missing dependency or a
                duplicate name.
        """
        return cls.from_registry(EnricherRegistry(enrichers), settings or LoggingSettings())

    @classmethod
    def from_registry(
        cls, registry: EnricherRegistry, settings: LoggingSettings
    ) -> AsyncEnricherProcessor:
        """A processor for ``registry``'s enrichers, with its own runtime and
        lifecycle manager (which registers the enrichers in level order, so
        that shutdown runs in reverse dependency order).

        Raises:
            EnricherDependencyError: a cycle or a missing dependency.
        """
        registry.levels()  # resolve now: configuration errors belong here
        runtime = EnrichmentRuntime(max_threads=settings.max_enricher_threads)
        lifecycle = EnricherLifecycleManager(
            runtime, health_check_interval=settings.health_check_interval
        )
        for level in registry.levels():
            for enricher in level:
                lifecycle.register_enricher(enricher)
        return cls(registry, settings, runtime, lifecycle)

    def set_tail(self, tail: Sequence[Processor]) -> None:
        """The processors after this one (renderer...), which the runtime
        runs for the events it completes."""
        self._tail = list(tail)

    @property
    def levels(self) -> tuple[tuple[Enricher, ...], ...]:
        """The enrichers of each level, in execution order."""
        return tuple(tuple(step.enricher for step in level) for level in self._levels)

    # -- lifecycle ---------------------------------------------------------

    def startup(self, timeout: float | None = None) -> dict[str, bool]:
        """Start the runtime and every enricher concurrently (blocking).

        Returns which enrichers started. A failure marks that enricher
        unavailable and is reported once through the stdlib logger
        ``enrichlog``; the others carry on.
        """
        self.runtime.start()
        return self.runtime.run(self.lifecycle.startup_all(), timeout)

    async def astartup(self) -> dict[str, bool]:
        """:meth:`startup` for async code."""
        self.runtime.start()
        return await self.runtime.arun(self.lifecycle.startup_all())

    def shutdown(self, timeout: float | None = None) -> dict[str, int]:
        """Drain pending events, stop the enrichers in reverse dependency
        order and stop the runtime. Returns the drain report."""
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        report = self.pipeline.close(timeout)
        if self.runtime.is_running and not self.runtime.in_runtime_thread():
            try:
                self.runtime.run(self.lifecycle.shutdown_all(), timeout)
            except TimeoutError:
                _report.warning("enrichlog: enrichers did not shut down within %ss", timeout)
        # From here log calls write their own events; the runtime's exit hook
        # writes whatever raced the drain, on its own thread.
        self.pipeline.stop_accepting()
        if not self.runtime.in_runtime_thread():
            self.runtime.stop(max(timeout, 1.0))
            if self.runtime.lingering:
                _report.warning(
                    "enrichlog: the runtime did not stop within %.1fs (an enricher blocks "
                    "its loop); %d event(s) will be written when it does",
                    max(timeout, 1.0),
                    self.pipeline.pending,
                )
        return report

    # -- structlog processor: the logging thread ----------------------------

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        # The logging thread's hot path: locals and prepared tuples over
        # attribute lookups and helper calls (each is ~2% of a cache-hit
        # event under callgrind).
        if get_ident() in self._owned_threads:
            # An event logged by an enricher (on the loop or in a worker
            # thread), or by enrichlog's own reports routed back here:
            # enriching it could recurse without end, or wait on itself.
            return event_dict
        levels = self._levels
        index = 0
        outcomes: list[Outcome | None] = []
        try:
            for index, settlers in enumerate(self._settlers):
                outcomes = []
                for settle in settlers:  # a loop: cheaper than a comprehension's frame
                    outcomes.append(settle(logger, method_name, event_dict))
                if None in outcomes:
                    break
                self._merge(event_dict, levels[index], outcomes)  # type: ignore[arg-type]
            else:
                index = len(levels)
        except structlog.DropEvent:
            self._filtered_here += 1  # an enricher filtered it out on purpose
            raise
        pipeline = self.pipeline
        if pipeline.closing and index < len(levels):
            # Shutting down: no more enrichment, but the event still queues
            # behind this thread's earlier ones, to keep their order.
            self._settle_rest_as_unavailable(event_dict, index, outcomes)
            index = len(levels)
        if index == len(levels) and pipeline.pending == 0:
            # Everything settled here and nothing of ours is waiting to be
            # written before it: a cache hit costs no hop.
            return event_dict
        if not self._hand_off(logger, method_name, event_dict, index, outcomes):
            # Shut down and drained: written here and now.
            self._settle_rest_as_unavailable(event_dict, index, outcomes)
            pipeline.wait_for_leftovers()
            return event_dict
        raise structlog.DropEvent

    @staticmethod
    def _settle(
        settlers: tuple[Callable[[WrappedLogger, str, EventDict], Outcome | None], ...],
        logger: WrappedLogger,
        method_name: str,
        snapshot: EventDict,
    ) -> list[Outcome | None]:
        """Settle one level without awaiting; ``None`` where a step must
        run on the runtime loop. (``__call__`` inlines this loop.)"""
        return [settle(logger, method_name, snapshot) for settle in settlers]

    def _merge(
        self, event_dict: EventDict, level: tuple[_Step, ...], outcomes: Sequence[Outcome]
    ) -> None:
        # Once per level of every event: the common case (no failure) is one
        # tight loop; the names of failed enrichers are looked up only when
        # there are some (half the cost of a zip over steps and outcomes).
        failed = False
        for updated, removed, reason in outcomes:
            if reason is None:
                if removed:
                    for key in removed:
                        event_dict.pop(key, None)
                if updated:
                    event_dict.update(updated)
            else:
                failed = True
        if failed:
            self._record_failures(event_dict, level, outcomes)

    def _record_failures(
        self, event_dict: EventDict, level: tuple[_Step, ...], outcomes: Sequence[Outcome]
    ) -> None:
        errors = {}
        for step, (_, _, reason) in zip(level, outcomes, strict=True):
            if reason is DROP_REASON:
                raise structlog.DropEvent
            if reason is not None:
                errors[step.name] = reason
        if self._error_field is not None:
            existing = event_dict.get(self._error_field)
            if isinstance(existing, dict):
                existing.update(errors)
            else:
                event_dict[self._error_field] = errors

    def _settle_rest_as_unavailable(
        self, event_dict: EventDict, index: int, outcomes: list[Outcome | None] | None
    ) -> None:
        """After shutdown: write the event with what the logging thread
        could settle, the rest marked unavailable."""
        levels = self._levels
        for position in range(index, len(levels)):
            level = levels[position]
            current = outcomes if position == index and outcomes else [None] * len(level)
            self._merge(event_dict, level, [o or UNAVAILABLE for o in current])

    def _finish_unenriched(self, item: PendingEvent) -> None:
        """Complete an event without awaiting: what it has, the rest marked
        unavailable (shutdown gave up on it, or its task never ran)."""
        try:
            self._settle_rest_as_unavailable(item.event, item.level_index, item.outcomes)
        except structlog.DropEvent:
            item.filtered = True
        item.level_index = len(self._levels)

    def _hand_off(
        self,
        logger: WrappedLogger,
        method_name: str,
        event_dict: EventDict,
        index: int,
        outcomes: list[Outcome | None],
    ) -> bool:
        """Queue the event for the runtime and wait as the caller must;
        False if the pipeline closed (the caller writes the event itself)."""
        exc_info = event_dict.get("exc_info")
        if exc_info is True or (exc_info and not isinstance(exc_info, tuple | BaseException)):
            # The exception is only current on this thread, now.
            event_dict["exc_info"] = sys.exc_info()
        if _submitting.active:
            # Logged from inside a hand-off (a report routed back into
            # structlog by a logging handler): written as is, never queued.
            return False
        waiters = ASYNC_WAITER.get()
        future: asyncio.Future[None] | None = None
        written: _thread.LockType | None = None
        on_written: Callable[[], object] | None = None
        # A thread that runs an event loop must not block on a full queue.
        on_loop = asyncio._get_running_loop() is not None  # the C fast path, 30 ns
        if waiters is not None:
            # ainfo() and friends: the caller awaits this future on its loop.
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            waiters.append((future, self._inline_wait))
            on_written = _resolver(loop, future)
        elif not self.background and not on_loop:
            # Inline delivery on a thread without a loop: wait for the line.
            # (A thread that runs a loop never waits: it hands off and goes.)
            written = _thread.allocate_lock()
            written.acquire()
            on_written = written.release
        item = PendingEvent(
            logger,
            method_name,
            event_dict,
            index,
            outcomes if index < len(self._levels) else None,
            contextvars.copy_context(),
            on_written,
        )
        _submitting.active = True
        try:
            result = self.pipeline.submit(item, may_block=not on_loop)
            if result != SUBMITTED:
                if future is not None and not future.done():
                    future.set_result(None)
                return result != CLOSED
            if written is not None and not written.acquire(timeout=self._inline_wait):
                _report.warning(
                    "enrichlog: an event was not written within %.1fs; it stays queued",
                    self._inline_wait,
                )
            return True
        finally:
            _submitting.active = False

    def _wait_bound(self) -> float:
        """How long an inline caller waits for its event before moving on
        (the event stays queued): every level's timeout, plus slack."""
        total = 1.0
        for level in self._levels:
            slowest = max(
                (step.guard.timeout if step.guard else self._sync_timeout for step in level),
                default=0.0,
            )
            if self._level_timeout is not None:
                slowest = min(slowest, self._level_timeout)
            total += slowest
        return total + self.settings.overflow_block_timeout

    # -- the runtime loop ---------------------------------------------------

    def _advance(self, item: PendingEvent) -> bool:
        """Settle without awaiting as far as possible; True when complete."""
        try:
            return self._settle_item(item)
        except structlog.DropEvent:
            item.filtered = True
            return True

    def _settle_item(self, item: PendingEvent) -> bool:
        levels = self._levels
        index = item.level_index
        while index < len(levels):
            level = levels[index]
            outcomes = item.outcomes
            if outcomes is None:
                outcomes = self._settle(
                    self._settlers[index], item.logger, item.method_name, item.event
                )
            if None in outcomes:
                item.level_index, item.outcomes = index, outcomes
                return False
            self._merge(item.event, level, outcomes)  # type: ignore[arg-type]
            item.outcomes = None
            index += 1
        item.level_index = index
        return True

    async def _complete(self, item: PendingEvent) -> None:
        """Await the rest of an event's enrichment (in the event's context)."""
        try:
            while True:
                level = self._levels[item.level_index]
                outcomes = item.outcomes
                assert outcomes is not None
                await self._run_pending(level, item, outcomes)
                self._merge(item.event, level, outcomes)
                item.level_index += 1
                item.outcomes = None
                if self._settle_item(item):
                    return
        except structlog.DropEvent:
            item.filtered = True
        except asyncio.CancelledError:
            # Shutdown gave up waiting: write the event with what it has.
            self._finish_unenriched(item)

    async def _run_pending(
        self, level: tuple[_Step, ...], item: PendingEvent, outcomes: list[Outcome | None]
    ) -> None:
        pending = [i for i, outcome in enumerate(outcomes) if outcome is None]
        logger, method_name, snapshot = item.logger, item.method_name, item.event
        if len(pending) == 1:
            step = level[pending[0]]
            own = step.guard.timeout if step.guard is not None else self._sync_timeout
            if self._level_timeout is None or own <= self._level_timeout:
                # Its own timeout bounds it: a task group would cost ~14 us
                # for nothing.
                outcomes[pending[0]] = await self._run_step(step, logger, method_name, snapshot)
                return

        async def run_into(position: int) -> None:
            outcomes[position] = await self._run_step(
                level[position], logger, method_name, snapshot
            )

        level_timeout = self._level_timeout
        if level_timeout is not None and level_timeout < max(
            level[p].guard.timeout if level[p].guard else self._sync_timeout  # type: ignore[union-attr]
            for p in pending
        ):
            try:
                async with asyncio.timeout(level_timeout):
                    await _run_concurrently(run_into, pending)
            except TimeoutError:
                for position in pending:
                    if outcomes[position] is None:
                        outcomes[position] = TIMEOUT
        else:
            # Each enricher's own timeout already bounds the level.
            await _run_concurrently(run_into, pending)

    async def _run_step(
        self, step: _Step, logger: WrappedLogger, method_name: str, snapshot: EventDict
    ) -> Outcome:
        if step.guard is not None:
            return await step.guard.run(logger, method_name, snapshot)
        # A blocking sync enricher: a worker thread, bounded by the default
        # timeout (the thread itself cannot be cancelled; we stop waiting).
        context = contextvars.copy_context()
        try:
            async with asyncio.timeout(self._sync_timeout):
                return await self.runtime.run_blocking(
                    context.run, _call_sync, step.enricher, logger, method_name, snapshot
                )
        except TimeoutError:
            return TIMEOUT

    def _write(self, item: PendingEvent) -> bool:
        """Run the tail of the chain and write the line; never raises.

        Returns whether a line was written (an enricher may have dropped the
        event on purpose)."""
        if item.filtered:
            return False
        event: Any = item.event
        logger, method_name = item.logger, item.method_name
        try:
            for processor in self._tail:
                event = processor(logger, method_name, event)
            if isinstance(event, str | bytes | bytearray):
                getattr(logger, method_name)(event)
            elif isinstance(event, tuple):
                args, kwargs = event
                getattr(logger, method_name)(*args, **kwargs)
            else:
                getattr(logger, method_name)(**event)
        except structlog.DropEvent:
            return False
        except Exception:
            _report.exception("enrichlog: writing an event failed")
            return False
        return True

    def _set_available(self, name: str, available: bool) -> None:
        guard = self.guards.get(name)
        if guard is not None:
            guard.available = available

    # -- views -----------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """Pipeline counters and per-enricher counters."""
        metrics = self.pipeline.metrics()
        metrics["filtered"] += self._filtered_here
        return {
            **metrics,
            "delivery": "background" if self.background else "inline",
            "enrichers": {name: guard.stats() for name, guard in self.guards.items()},
        }


async def _run_concurrently(
    run: Callable[[int], Coroutine[Any, Any, None]], positions: list[int]
) -> None:
    """Run ``run(p)`` for every position concurrently; cancel them all if
    this task is cancelled.

    Plain asyncio tasks, not an anyio task group: on the loop enrichlog owns,
    a task group with its cancel scopes cost about four times as much per
    event (docs/architecture.md). The first position runs in the current
    task, which saves a task per level.
    """
    loop = asyncio.get_running_loop()
    others = [loop.create_task(run(p)) for p in positions[1:]]
    try:
        await run(positions[0])
        for task in others:
            await task
    except BaseException:
        for task in others:
            task.cancel()
        raise


def _call_sync(
    enricher: SyncEnricher, logger: WrappedLogger, method_name: str, snapshot: EventDict
) -> Outcome:
    copy = dict(snapshot)
    try:
        result = enricher.enrich(logger, method_name, copy)
    except structlog.DropEvent:
        return DROPPED
    except BaseException as exc:
        return error_outcome(exc)
    if result is None:
        result = copy
    try:
        updated, removed = changes_of(snapshot, result)
    except Exception:  # not a mapping, or one that fails when read
        return INVALID_RETURN
    return (updated, removed, None)


def _resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> Any:
    def resolve() -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop is gone
            loop.call_soon_threadsafe(_set_done, future)

    return resolve


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
