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
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from structlog.typing import EventDict, WrappedLogger

from .runtime import EnrichmentRuntime

__all__ = ["DrainReport", "EventPipeline", "PendingEvent"]

_report = logging.getLogger("enrichlog")

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
        queue_size, overflow, block_timeout, max_in_flight,
        report_interval: see :class:`~enrichlog.settings.LoggingSettings`.
    """

    def __init__(
        self,
        runtime: EnrichmentRuntime,
        *,
        advance: Callable[[PendingEvent], bool],
        complete: Callable[[PendingEvent], Awaitable[None]],
        write: Callable[[PendingEvent], bool],
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
        self._closed = False
        self._blocked = 0
        self._next_seq = 0
        self._in_flight = 0
        self._high_water = 0
        self._written = 0
        self._filtered = 0
        self._dropped: dict[str, int] = {"overflow": 0, "evicted": 0}
        self._unreported_drops = 0
        self._last_report = 0.0

    # -- logging threads ----------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing queued, in flight or waiting to be written."""
        return not (self._normal or self._urgent or self._order)

    @property
    def closed(self) -> bool:
        """Whether the pipeline stopped accepting events."""
        return self._closed

    def submit(self, item: PendingEvent) -> bool:
        """Queue ``item``; return ``False`` if the overflow policy dropped it.

        Never raises. With ``overflow="block"`` a full queue makes the caller
        wait up to ``block_timeout``, then the new event is dropped and
        counted.
        """
        with self._lock:
            if self._closed:
                return False
            if len(self._normal) + len(self._urgent) >= self._queue_size and not self._make_room(
                item
            ):
                self._count_drop("overflow", item)
                return False
            item.seq = self._next_seq
            self._next_seq += 1
            (self._urgent if item.urgent else self._normal).append(item)
            depth = len(self._normal) + len(self._urgent)
            self._high_water = max(self._high_water, depth)
            wake = self._sleeping
            self._sleeping = False
        if wake:
            try:
                self._runtime.call_soon(self._pump)
            except RuntimeError:  # the loop closed under us: shutdown raced us
                self._sleeping = True
        return True

    def _make_room(self, item: PendingEvent) -> bool:
        """With the lock held and the queue full: free a slot or refuse."""
        if self._overflow == "block":
            deadline = time.monotonic() + self._block_timeout
            self._blocked += 1
            try:
                while len(self._normal) + len(self._urgent) >= self._queue_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
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
                self._count_drop("evicted", victim_lane.popleft())
                return True
            return False
        # drop_new (and block after its wait): only an urgent event may push
        # out the newest lower-level one.
        if item.urgent and self._normal:
            self._count_drop("evicted", self._normal.pop())
            return True
        return False

    def _count_drop(self, kind: str, item: PendingEvent) -> None:
        self._dropped[kind] += 1
        self._unreported_drops += 1
        if item.on_written is not None:
            item.on_written()
        now = time.monotonic()
        if now - self._last_report >= self._report_interval:
            self._last_report = now
            count, self._unreported_drops = self._unreported_drops, 0
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
        """Move queued events into flight, as many as capacity allows."""
        started: list[PendingEvent] = []
        with self._lock:
            room = self._max_in_flight - self._in_flight
            normal, urgent = self._normal, self._urgent
            while room > 0 and (normal or urgent):
                if not urgent or (normal and normal[0].seq < urgent[0].seq):
                    started.append(normal.popleft())
                else:
                    started.append(urgent.popleft())
                room -= 1
            self._in_flight += len(started)
            if not (normal or urgent):
                self._sleeping = True
            if self._blocked:
                self._space.notify_all()
        self._order.extend(started)
        loop = self._runtime.loop
        for item in started:
            try:
                complete_now = item.context.run(self._advance, item)
            except BaseException:
                _report.exception("enrichlog: an event failed to advance; writing it as is")
                complete_now = True
            if complete_now:
                item.done = True
                self._in_flight -= 1
            else:
                task = loop.create_task(self._enrich(item), context=item.context)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self._write_ready()

    async def _enrich(self, item: PendingEvent) -> None:
        try:
            await self._complete(item)
        finally:
            item.done = True
            self._in_flight -= 1
            self._write_ready()
            if not self._sleeping:
                self._pump()

    def _write_ready(self) -> None:
        order = self._order
        while order and order[0].done:
            item = order.popleft()
            if self._write(item):
                self._written += 1
            else:
                self._filtered += 1
            if item.on_written is not None:
                item.on_written()
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
            self._runtime.call_soon(self._add_flush_waiter, target, resolve)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True

    def close(self, timeout: float) -> DrainReport:
        """Stop accepting events, wait up to ``timeout`` for the pending ones
        and report what happened to them."""
        flushed = self.flush(timeout)
        with self._lock:
            self._closed = True
            self._space.notify_all()
        if not flushed:
            flushed = self.flush(0.05)  # events that raced the close
        return self.report()

    def report(self) -> DrainReport:
        """The counts a drain reports."""
        pending = len(self._normal) + len(self._urgent) + len(self._order)
        return DrainReport(
            written=self._written, dropped=sum(self._dropped.values()), pending=pending
        )

    def abandon_enrichment(self, finish: Callable[[PendingEvent], None]) -> None:
        """Give up enriching, not writing (shutdown, after the drain timed
        out). Runs on the loop.

        Enrichment still running is cancelled (those events are written with
        what they have); events still queued are completed by ``finish``
        without awaiting anything, and everything is written in order.
        """
        for task in list(self._tasks):
            task.cancel()
        with self._lock:
            queued = sorted([*self._normal, *self._urgent], key=lambda item: item.seq)
            self._normal.clear()
            self._urgent.clear()
            self._sleeping = True
        for item in queued:
            finish(item)
            item.done = True
        self._order.extend(queued)
        self._write_ready()

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
            "pending": depth + len(self._order),
        }


def _set_result(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
