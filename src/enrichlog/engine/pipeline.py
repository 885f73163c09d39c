"""`EventPipeline`: the ordered, bounded hand-off from logging threads to the
enrichment runtime.

Logging threads put events into a bounded queue and wake the runtime loop
only when it sleeps; the loop takes events in batches, enriches up to
``max_in_flight`` at once and writes them in the order they were logged. A
flush is a sequence number: it completes once nothing logged before it is
still pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from structlog.typing import EventDict, WrappedLogger

from .runtime import EnrichmentRuntime

__all__ = ["CLOSED", "DROPPED", "SUBMITTED", "DrainReport", "EventPipeline", "PendingEvent"]

_report = logging.getLogger("enrichlog")

#: Seconds shutdown waits for events it gave up enriching to be written.
_SALVAGE_SECONDS = 1.0

#: Events one turn of the pump handles before it yields to the loop. Small:
#: a long turn holds the GIL, and logging threads then wait for it (caller
#: p99 in benchmarks/run.py background: 28-37 us at 16, 26-87 us at 64,
#: up to ~55 us at 1024 before other changes; throughput is the same).
_PUMP_BUDGET = 16

#: What :meth:`EventPipeline.submit` did with an event.
SUBMITTED, DROPPED, CLOSED = 0, 1, 2

#: Methods whose events take the priority lane: never dropped while
#: lower-level events remain in the queue to drop instead.
URGENT_METHODS = frozenset({"error", "err", "exception", "critical", "fatal", "failure"})


class PendingEvent:
    """One event on its way through the pipeline.

    ``level_index`` and ``outcomes`` say how far the logging thread got: the
    level to continue at, and the outcomes it already has for that level.
    """

    __slots__ = (
        "context",
        "done",
        "event",
        "filtered",
        "level_index",
        "logger",
        "method_name",
        "on_written",
        "outcomes",
        "seq",
        "urgent",
    )

    def __init__(
        self,
        logger: WrappedLogger,
        method_name: str,
        event: EventDict,
        level_index: int,
        outcomes: list[Any] | None,
        context: contextvars.Context,
        on_written: Callable[[], object] | None,
    ) -> None:
        self.logger = logger
        self.method_name = method_name
        self.event = event
        self.level_index = level_index
        self.outcomes = outcomes
        self.context = context
        self.on_written = on_written
        self.urgent = method_name in URGENT_METHODS
        self.seq = 0
        self.done = False
        self.filtered = False  # an enricher raised DropEvent


class DrainReport(dict[str, int]):
    """What shutdown achieved: ``written``, ``dropped`` and ``pending``."""

    @property
    def written(self) -> int:
        """Events written since the pipeline started."""
        return self["written"]

    @property
    def dropped(self) -> int:
        """Events dropped under the overflow policy."""
        return self["dropped"]

    @property
    def pending(self) -> int:
        """Events still not written when the drain timed out."""
        return self["pending"]


class EventPipeline:
    """Bounded queue, pipelined enrichment and in-order writing.

    Args:
        runtime: the loop events are enriched on.
        advance: settles what can be settled without awaiting; returns
            whether the event is complete (runs in the event's context).
        complete: awaits the rest of the event's enrichment; never raises
            but cancellation.
        write: renders and writes a complete event; never raises.
        abandon: completes an event without awaiting (at shutdown, or when
            its enrichment task was cancelled before it ran); never raises.
        queue_size, overflow, block_timeout, max_in_flight,
        report_interval: see :class:`~enrichlog.settings.LoggingSettings`.
    """

    def __init__(
        self,
        runtime: EnrichmentRuntime,
        *,
        advance: Callable[[PendingEvent], bool],
        complete: Callable[[PendingEvent], Coroutine[Any, Any, None]],
        write: Callable[[PendingEvent], bool],
        abandon: Callable[[PendingEvent], None],
        queue_size: int,
        overflow: str,
        block_timeout: float,
        max_in_flight: int,
        report_interval: float,
    ) -> None:
        self._runtime = runtime
        self._advance = advance
        self._complete = complete
        self._write = write
        self._abandon = abandon
        runtime.add_exit_hook(self._write_leftovers)
        self._queue_size = queue_size
        self._overflow = overflow
        self._block_timeout = block_timeout
        self._max_in_flight = max_in_flight
        self._report_interval = report_interval
        self._reset_state()

    def _reset_state(self) -> None:
        # RLock: a SIGTERM handler may run on a thread that is inside submit().
        self._lock = threading.RLock()
        self._space = threading.Condition(self._lock)
        self._normal: deque[PendingEvent] = deque()
        self._urgent: deque[PendingEvent] = deque()
        self._order: deque[PendingEvent] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush_waiters: list[tuple[int, Callable[[], object]]] = []
        self._sleeping = True
        self._closing = False  # draining: events still accepted, unenriched
        self._closed = False  # drained: callers write their own events once idle
        self._stopped = False  # the runtime is gone: callers write their own events
        self._leftovers_written = threading.Event()
        self._blocked = 0
        self._next_seq = 0
        #: Events submitted and not yet written or dropped (read without the
        #: lock on the logging threads' hot path; changed under it).
        self.pending = 0
        self._in_flight = 0
        self._high_water = 0
        self._written = 0
        self._filtered = 0
        self._dropped: dict[str, int] = {"overflow": 0, "evicted": 0}
        self._unreported_drops = 0
        self._dropped_items: list[PendingEvent] = []
        self._last_report = 0.0

    # -- logging threads ----------------------------------------------------

    @property
    def idle(self) -> bool:
        """Every event submitted so far is written or dropped."""
        return self.pending == 0

    @property
    def closing(self) -> bool:
        """Whether shutdown began: events are still accepted, so that each
        thread's lines keep their order, but no longer enriched."""
        return self._closing

    def submit(self, item: PendingEvent, *, may_block: bool = True) -> int:
        """Queue ``item``; return :data:`SUBMITTED`, :data:`DROPPED` (by the
        overflow policy, counted) or :data:`CLOSED` (the caller writes it).

        Never raises. With ``overflow="block"`` a full queue makes the caller
        wait up to ``block_timeout``, then the new event is dropped and
        counted; ``may_block=False`` (a thread that runs an event loop) skips
        the wait.
        """
        with self._lock:
            result = self._enqueue(item, may_block)
            wake = result == SUBMITTED and self._sleeping
            if wake:
                self._sleeping = False
        if self._dropped_items:
            self._after_drops()
        if wake:
            try:
                self._runtime.call_soon(self._pump)
            except RuntimeError:  # stopped under us: its exit hook writes the queue
                self._sleeping = True
        return result

    def _enqueue(self, item: PendingEvent, may_block: bool) -> int:
        """With the lock held: the body of :meth:`submit`."""
        if self._refuses():
            return CLOSED
        if len(self._normal) + len(self._urgent) >= self._queue_size:
            room = self._make_room(item, may_block)
            if self._refuses():
                return CLOSED
            if not room:
                self._count_drop("overflow", item)
                return DROPPED
        item.seq = self._next_seq
        self._next_seq += 1
        self.pending += 1
        (self._urgent if item.urgent else self._normal).append(item)
        self._high_water = max(self._high_water, len(self._normal) + len(self._urgent))
        return SUBMITTED

    def _refuses(self) -> bool:
        """With the lock held: whether a caller must write its event itself.

        After the drain, only once nothing is pending: an event written by
        its caller must not overtake the same thread's queued ones.
        """
        return self._stopped or (self._closed and self.pending == 0)

    def _make_room(self, item: PendingEvent, may_block: bool) -> bool:
        """With the lock held and the queue full: free a slot or refuse."""
        if self._overflow == "block" and may_block:
            deadline = time.monotonic() + self._block_timeout
            self._blocked += 1
            try:
                while len(self._normal) + len(self._urgent) >= self._queue_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._refuses():
                        break
                    self._space.wait(remaining)
            finally:
                self._blocked -= 1
            if len(self._normal) + len(self._urgent) < self._queue_size:
                return True
            # Waited long enough: behave as drop_new from here on.
        if self._overflow == "drop_old":
            victim_lane = self._normal or (self._urgent if item.urgent else None)
            if victim_lane:
                self._evict(victim_lane.popleft())
                return True
            return False
        # drop_new (and block after its wait): only an urgent event may push
        # out the newest lower-level one.
        if item.urgent and self._normal:
            self._evict(self._normal.pop())
            return True
        return False

    def _evict(self, item: PendingEvent) -> None:
        self.pending -= 1
        self._count_drop("evicted", item)

    def _count_drop(self, kind: str, item: PendingEvent) -> None:
        """With the lock held: count a drop; its caller is released, and the
        report made, by :meth:`_after_drops` once the lock is let go (a
        report routed back into logging must not find the lock held)."""
        self._dropped[kind] += 1
        self._unreported_drops += 1
        self._dropped_items.append(item)

    def _after_drops(self) -> None:
        with self._lock:
            items, self._dropped_items = self._dropped_items, []
            now = time.monotonic()
            due = self._unreported_drops and now - self._last_report >= self._report_interval
            if due:
                self._last_report = now
                count, self._unreported_drops = self._unreported_drops, 0
        for item in items:
            if item.on_written is not None:
                item.on_written()
        if due:
            # Through the stdlib logger, never through this pipeline.
            _report.warning(
                "enrichlog dropped %d event(s): the queue of %d is full "
                "(overflow=%s); see container.metrics()",
                count,
                self._queue_size,
                self._overflow,
            )

    # -- runtime loop ----------------------------------------------------------

    def _pump(self) -> None:
        """Move queued events into flight while there is room.

        Events that complete without awaiting (cache hits, skips) take no
        slot, so a burst of them never stalls the queue.
        """
        loop = self._runtime.loop
        budget = _PUMP_BUDGET
        while self._in_flight < self._max_in_flight:
            if budget <= 0:
                # Yield to the loop: enrichment tasks, timers and stop()
                # must not starve behind a stream of complete events.
                loop.call_soon(self._pump)
                return
            batch: list[PendingEvent] = []
            with self._lock:
                room = min(self._max_in_flight - self._in_flight, budget)
                normal, urgent = self._normal, self._urgent
                while room > 0 and (normal or urgent):
                    if not urgent or (normal and normal[0].seq < urgent[0].seq):
                        batch.append(normal.popleft())
                    else:
                        batch.append(urgent.popleft())
                    room -= 1
                empty = not (normal or urgent)
                if empty:
                    self._sleeping = True
                if self._blocked:
                    self._space.notify_all()
            self._order.extend(batch)
            budget -= len(batch)
            for item in batch:
                if self._start(item, loop):
                    self._in_flight += 1
            self._write_ready()
            if empty:
                return

    def _start(self, item: PendingEvent, loop: asyncio.AbstractEventLoop) -> bool:
        """Advance ``item``; start a task for the rest. True if a task runs."""
        try:
            complete_now = item.context.run(self._advance, item)
        except BaseException:  # advance must never stall the queue
            _report.exception("enrichlog: an event failed to advance; writing it as is")
            complete_now = True
        if complete_now:
            item.done = True
            return False
        task = loop.create_task(self._complete(item), context=item.context)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._finished, item))
        return True

    def _finished(self, item: PendingEvent, task: asyncio.Task[None]) -> None:
        # A done callback, not a ``finally``: it also runs for a task that was
        # cancelled before it started, whose coroutine never ran at all.
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                _report.error(
                    "enrichlog: enriching an event failed; writing it as is",
                    exc_info=task.exception(),
                )
            self._abandon(item)
        item.done = True
        self._in_flight -= 1
        self._write_ready()
        if not self._sleeping:
            self._pump()

    def _write_ready(self) -> None:
        order = self._order
        finished = 0
        while order and order[0].done:
            item = order[0]
            if self._write(item):
                self._written += 1
            else:
                self._filtered += 1
            # Popped only once written: until then the event still counts
            # as pending, and a caller's next event must queue behind it.
            order.popleft()
            finished += 1
            if item.on_written is not None:
                item.on_written()
        if finished:
            with self._lock:
                self.pending -= finished
                if self._blocked:
                    self._space.notify_all()
        if self._flush_waiters:
            self._release_flush_waiters()

    def _oldest_pending_seq(self) -> int:
        with self._lock:
            heads = [lane[0].seq for lane in (self._order, self._normal, self._urgent) if lane]
            return min(heads) if heads else self._next_seq

    def _release_flush_waiters(self) -> None:
        oldest = self._oldest_pending_seq()
        keep: list[tuple[int, Callable[[], object]]] = []
        for target, resolve in self._flush_waiters:
            if target < oldest:
                resolve()
            else:
                keep.append((target, resolve))
        self._flush_waiters = keep

    def _add_flush_waiter(self, target: int, resolve: Callable[[], object]) -> None:
        self._flush_waiters.append((target, resolve))
        self._release_flush_waiters()

    # -- flush and drain --------------------------------------------------------

    def _flush_target(self) -> int:
        """The sequence number of the last event submitted so far."""
        with self._lock:
            return self._next_seq - 1

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event submitted before the call is written or
        dropped; return whether that happened within ``timeout``."""
        if self.idle:
            return True
        if self._runtime.in_runtime_thread():
            return False  # waiting here would deadlock the loop
        done = threading.Event()
        try:
            self._runtime.call_soon(self._add_flush_waiter, self._flush_target(), done.set)
        except RuntimeError:
            return self.idle
        return done.wait(timeout)

    async def aflush(self, timeout: float | None = None) -> bool:
        """:meth:`flush` for async code: awaits without blocking the loop."""
        if self.idle:
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            with contextlib.suppress(RuntimeError):  # caller's loop closed
                loop.call_soon_threadsafe(_set_result, future)

        target = self._flush_target()
        if self._runtime.in_runtime_thread():
            self._add_flush_waiter(target, lambda: _set_result(future))
        else:
            try:
                self._runtime.call_soon(self._add_flush_waiter, target, resolve)
            except RuntimeError:  # the runtime is stopped
                return self.idle
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True

    def close(self, timeout: float) -> DrainReport:
        """Drain: wait up to ``timeout`` for the pending events, then stop
        accepting events, and report what happened.

        While draining, events are still accepted (their callers complete
        them unenriched first), so every thread's lines keep their order.
        Events still pending when the timeout hits (``pending`` in the
        report) are not abandoned: their enrichment is given up and they are
        written with what they have (``salvaged``).
        """
        with self._lock:
            self._closing = True
        flushed = self.flush(timeout)
        report = self.report()
        if not flushed and report["pending"] and self._runtime.is_running:
            written = self._written
            self._runtime.call_soon(self.abandon_enrichment)
            self.flush(_SALVAGE_SECONDS)
            report["salvaged"] = self._written - written
        with self._lock:
            self._closed = True
            self._space.notify_all()  # blocked callers write their own events
        self.flush(_SALVAGE_SECONDS)  # events that raced the close
        if self._unreported_drops:
            _report.warning(
                "enrichlog dropped %d event(s) since its last report (overflow=%s)",
                self._unreported_drops,
                self._overflow,
            )
            self._unreported_drops = 0
        return report

    def report(self) -> DrainReport:
        """The counts a drain reports."""
        return DrainReport(
            written=self._written, dropped=sum(self._dropped.values()), pending=self.pending
        )

    def abandon_enrichment(self) -> None:
        """Give up enriching, not writing (shutdown, after the drain timed
        out). Runs on the loop.

        Enrichment still running is cancelled (those events are written with
        what they have); events still queued are completed without awaiting
        anything; everything is written in order.
        """
        for task in list(self._tasks):
            task.cancel()
        with self._lock:
            queued = sorted([*self._normal, *self._urgent], key=lambda item: item.seq)
            self._normal.clear()
            self._urgent.clear()
            self._sleeping = True
        for item in queued:
            self._abandon(item)
            item.done = True
        self._order.extend(queued)
        self._write_ready()

    def stop_accepting(self) -> None:
        """Refuse every new event (callers write their own): the runtime is
        about to stop. Called before it stops, so that no log call can find
        the runtime gone with its event queued."""
        with self._lock:
            self._stopped = True
            self._space.notify_all()

    def _write_leftovers(self) -> None:
        """Runtime exit hook, on the loop thread after its last task: write,
        in order, the events that raced the drain. However late the thread
        ends, it is the only one that touches this state."""
        with self._lock:
            self._stopped = True
            leftovers = sorted(
                [*self._order, *self._normal, *self._urgent], key=lambda item: item.seq
            )
            self._order.clear()
            self._normal.clear()
            self._urgent.clear()
            self._space.notify_all()
        for item in leftovers:
            if not item.done:
                self._abandon(item)
                item.done = True
        self._order.extend(leftovers)
        self._write_ready()
        self._leftovers_written.set()

    def wait_for_leftovers(self) -> None:
        """For a caller refused after the runtime stopped: wait (briefly)
        until the events that raced the drain are written, so that its own
        line does not overtake them."""
        if self._stopped:
            self._leftovers_written.wait(_SALVAGE_SECONDS)

    def forget_after_fork(self) -> None:
        """Start empty in a forked child: the parent writes its own events."""
        self._reset_state()

    def metrics(self) -> dict[str, Any]:
        """Counters: written, dropped (by kind), queue depth and high water."""
        with self._lock:
            depth = len(self._normal) + len(self._urgent)
        return {
            "written": self._written,
            "filtered": self._filtered,
            "dropped": sum(self._dropped.values()),
            "dropped_by_kind": dict(self._dropped),
            "queue_depth": depth,
            "queue_high_water": self._high_water,
            "queue_size": self._queue_size,
            "in_flight": self._in_flight,
            "pending": self.pending,
        }


def _set_result(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
