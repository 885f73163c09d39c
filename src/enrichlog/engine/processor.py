"""`AsyncEnricherProcessor`: the structlog adapter of the enrichment engine.

For each event it asks the :class:`~enrichlog.engine.plan.EnrichmentPlan`
to settle, on the calling thread, what needs no await. When that completes
the event and nothing logged earlier is still pending, structlog renders and
writes it here and now: no hop. Otherwise the event is handed to the
:class:`~enrichlog.engine.pipeline.EventPipeline` and structlog's chain
ends here (``process()`` returns ``None`` to enrichlog's bound logger; in any
other chain ``__call__`` raises ``DropEvent``): the runtime writes the line,
in order, once enriched. How the caller waits depends on where it runs: not at all
(background delivery, or a thread that runs an event loop), until its line
is written (inline delivery), or by awaiting a future (``ainfo()``).
"""

from __future__ import annotations

import _thread
import asyncio
import contextvars
import functools
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from ..enricher import Enricher
from ..reporting import reporting_logger
from .pipeline import CLOSED, DROPPED, FULL, QUEUED, REPORTING, EventPipeline, PendingEvent
from .plan import IN_ENRICHMENT, INTERRUPTS, EnrichmentPlan, take_interrupt
from .runtime import Runtime, resolver, set_result

__all__ = ["ASYNC_WAITER", "AsyncEnricherProcessor", "Waiter"]

_report = reporting_logger("enrichlog")

#: What the processor hands an ``a*`` logger method to await: the event's
#: completion future, how long to wait for it, and, when the queue was full
#: under ``overflow="block"``, what queues the event once there is room.
Waiter = tuple["asyncio.Future[None]", float, "Callable[[], Coroutine[Any, Any, None]] | None"]

#: Set by the ``a*`` logger methods: a list the processor appends the
#: event's :data:`Waiter` to, so the caller can await it.
ASYNC_WAITER: contextvars.ContextVar[list[Waiter] | None] = contextvars.ContextVar(
    "enrichlog_async_waiter", default=None
)


class _Owner(Protocol):
    """What built the processor and starts and stops what it runs on."""

    def start_enrichers(self, timeout: float | None = None) -> dict[str, bool]: ...

    async def astart_enrichers(self) -> dict[str, bool]: ...

    def shutdown(self, timeout: float | None = None) -> Any: ...

    def metrics(self) -> Mapping[str, Any]: ...


#: Bound once: read on every event (a global and an attribute lookup less each).
_in_enrichment = IN_ENRICHMENT.get
_async_waiters = ASYNC_WAITER.get
_running_loop = asyncio._get_running_loop
_copy_context = contextvars.copy_context
#: The context of every event logged where no context variable is set: one
#: object for them all (see _hand_off).
_EMPTY_CONTEXT = contextvars.Context()


class AsyncEnricherProcessor:
    """Runs a container's enrichment plan for each event, as a structlog
    processor.

    A :class:`~enrichlog.container.LoggingContainer` builds it (with
    ``configure_logging`` or ``build_processor_chain``); the container owns
    the plan, the pipeline and the runtime, and :meth:`startup` and
    :meth:`shutdown` ask the container to start and stop them.

    Args:
        plan: the compiled enrichers.
        pipeline: the hand-off to the runtime.
        owner: the container that built both.
        runtime: the loop enrichment runs on; an event logged on a thread of
            its own, or inside an enricher call, is written as it is
            (enriching it could recurse without end).
        background: the caller never waits for its line.
        inline_wait: seconds an inline caller waits for its line at most.
    """

    def __init__(
        self,
        plan: EnrichmentPlan[PendingEvent],
        pipeline: EventPipeline,
        owner: _Owner,
        *,
        runtime: Runtime,
        background: bool,
        inline_wait: float,
    ) -> None:
        self._plan = plan
        self._settle: Callable[[WrappedLogger, str, EventDict], PendingEvent | None] = plan.settler
        self._pipeline = pipeline
        self._owner = owner
        self._runtime = runtime
        self.background = background
        self._inline_wait = inline_wait
        #: Events an enricher filtered out (``DropEvent``) on a logging thread.
        self.filtered = 0

    @property
    def levels(self) -> tuple[tuple[Enricher, ...], ...]:
        """The enrichers of each level, in execution order."""
        return self._plan.levels

    def set_tail(self, tail: Sequence[Processor]) -> None:
        """The processors after this one in the chain (the renderer last),
        which the runtime runs for the events it completes."""
        self._pipeline.writer.tail = list(tail)  # type: ignore[attr-defined]

    def defer_settling(self, deferred: bool) -> None:
        """While enrichers start on the application's loop: settle nothing
        on the calling thread (an enricher not started yet would be skipped
        as unavailable); events queue, and the loop settles them once the
        enrichers are up. Swaps the settling function: no cost per event."""
        self._settle = self._plan.unsettled_record if deferred else self._plan.settler

    def startup(self, timeout: float | None = None) -> dict[str, bool]:
        """Start the runtime and the enrichers (blocking); which started."""
        return self._owner.start_enrichers(timeout)

    async def astartup(self) -> dict[str, bool]:
        """:meth:`startup` for async code."""
        return await self._owner.astart_enrichers()

    def shutdown(self, timeout: float | None = None) -> Any:
        """Drain, stop the enrichers and the runtime; the drain report."""
        return self._owner.shutdown(timeout)

    def metrics(self) -> Mapping[str, Any]:
        """The counters of the container that built this processor."""
        return self._owner.metrics()

    # -- structlog processor: the logging thread ----------------------------

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        kept = self.process(logger, method_name, event_dict)
        if kept is None:
            raise structlog.DropEvent
        return kept

    def process(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict | None:
        """The processor, telling structlog's chain to stop by returning
        ``None`` rather than raising ``DropEvent``: the event was handed off
        (or filtered out). enrichlog's bound logger calls it directly."""
        if _in_enrichment():
            # An event logged by an enricher (on the loop or in a worker
            # thread): enriching it could recurse without end. (Anything
            # else logged on the runtime's own thread is handed off like any
            # event from a thread that runs a loop: it never waits there.)
            return event_dict
        try:
            enrichment = self._settle(logger, method_name, event_dict)
        except structlog.DropEvent:
            self.filtered += 1  # an enricher filtered it out on purpose
            raise
        if INTERRUPTS:
            interrupt = take_interrupt()
            if interrupt is not None:
                self._write_then_raise(
                    interrupt,
                    enrichment or self._plan.complete_record(logger, method_name, event_dict),
                )
        if enrichment is None:
            pipeline = self._pipeline
            if pipeline.queued == pipeline.finished:
                # Everything settled here and nothing of ours is waiting to
                # be written before it: a cache hit costs no hop.
                return event_dict
            enrichment = self._plan.complete_record(logger, method_name, event_dict)
        if self._hand_off(enrichment):
            return None
        # Refused (shut down and drained): written here and now.
        self._plan.finish_unenriched(enrichment)
        if enrichment.filtered:
            return None
        self._pipeline.wait_for_leftovers()
        return event_dict

    def _write_then_raise(self, interrupt: BaseException, enrichment: PendingEvent) -> None:
        """A sync enricher raised ``KeyboardInterrupt`` or ``SystemExit`` on
        this thread: write the event without its fields, then let the
        interrupt reach the application."""
        if not self._hand_off(enrichment):
            self._plan.finish_unenriched(enrichment)
            if not enrichment.filtered:
                self._pipeline.writer.write(
                    enrichment.logger, enrichment.method_name, enrichment.event
                )
        raise interrupt

    async def _queue_when_room(self, item: PendingEvent, future: asyncio.Future[None]) -> None:
        """Queue the event of an ``a*`` call that found the queue full: once
        there is room, or as ``drop_new`` once ``overflow_block_timeout``
        passed (see :meth:`EventPipeline.submit_when_room`)."""
        await self._pipeline.submit_when_room(
            item, functools.partial(self._submitted, item=item, future=future)
        )

    def _submitted(self, result: int, *, item: PendingEvent, future: asyncio.Future[None]) -> None:
        """After an awaited submit: nothing more to wait for unless queued;
        refused (shut down meanwhile), the event is written here."""
        if result == QUEUED:
            return
        if not future.done():
            future.set_result(None)
        if result == CLOSED:
            self._plan.finish_unenriched(item)
            if not item.filtered:
                self._pipeline.wait_for_leftovers()
                self._pipeline.writer.write(item.logger, item.method_name, item.event)

    def _hand_off(self, item: PendingEvent) -> bool:
        """Queue the event for the runtime and wait as the caller must;
        False if the pipeline refused it (the caller writes it)."""
        event_dict = item.event
        if "exc_info" in event_dict:
            exc_info = event_dict["exc_info"]
            if isinstance(exc_info, BaseException):
                # Its traceback as of now: it grows as the exception goes on
                # up the stack, before the line is written.
                event_dict["exc_info"] = (type(exc_info), exc_info, exc_info.__traceback__)
            elif exc_info is True or (exc_info and not isinstance(exc_info, tuple)):
                # The exception is only current on this thread, now.
                event_dict["exc_info"] = sys.exc_info()
        if REPORTING.anywhere and REPORTING.active:
            # Logged while this thread reports dropped events (the report
            # routed back into structlog by a handler): written as it is.
            return False
        waiters = _async_waiters()
        # A thread that runs an event loop must not block on a full queue.
        on_loop = _running_loop() is not None  # the C fast path
        # The caller's context; where it has no variable at all (a script, a
        # worker thread), one shared empty context: a backlog of queued
        # events then holds no context of its own each, which the garbage
        # collector would walk again and again. (A context with variables
        # is kept whole: no public API tells an unchanged one from an equal
        # one, and equal is not the same; see docs/architecture.md.)
        # Nothing changes a shared context: each level of an event starts in
        # a copy of its own.
        context = _copy_context()
        item.context = context if context else _EMPTY_CONTEXT
        if waiters is None and (on_loop or self.background):
            # Nobody waits for the line (the common case): queue and go.
            # (Positional: a keyword call misses the fast path of a call.)
            result = self._pipeline.submit(item, not on_loop)
            return result != CLOSED  # queued, or dropped by the overflow policy
        future: asyncio.Future[None] | None = None
        written: _thread.LockType | None = None
        on_written: Callable[[], object] | None = None
        if waiters is not None:
            # ainfo() and friends: the caller awaits this future on its loop.
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            waiters.append((future, self._inline_wait, None))
            on_written = (
                functools.partial(set_result, future)  # written on this very loop
                if self._runtime.in_runtime_thread()
                else resolver(loop, future)
            )
        elif not self.background and not on_loop:
            # Inline delivery on a thread without a loop: wait for the line.
            # (A thread that runs a loop never waits: it hands off and goes.)
            written = _thread.allocate_lock()
            written.acquire()
            on_written = written.release
        item.on_written = on_written
        result = self._pipeline.submit(item, not on_loop, future is not None)
        if result == FULL and waiters is not None and future is not None:
            # ainfo() at a full queue under overflow="block": the caller
            # awaits room (its loop runs on), then the event is queued.
            waiters[-1] = (
                future,
                self._inline_wait,
                functools.partial(self._queue_when_room, item, future),
            )
            return True
        if result != QUEUED:
            if future is not None and not future.done():
                future.set_result(None)
            return result == DROPPED
        if written is not None and not written.acquire(timeout=self._inline_wait):
            _report.warning(
                "enrichlog: an event was not written within %.1fs; it stays queued",
                self._inline_wait,
            )
        return True
