"""`EventPipeline`: the ordered, bounded hand-off from logging threads to the
enrichment runtime.

Logging threads put events into a bounded queue and wake the runtime loop
only when it sleeps; the loop takes events in batches, has the
:class:`~enrichlog.engine.plan.EnrichmentPlan` advance up to
``max_in_flight`` of them at once, and hands them to the writer in the order
they were logged. A flush is a sequence number: it completes once nothing
logged before it is still pending.

The pipeline owns an event's place in line (sequence number, urgency, who
waits for its line); the plan owns how far its enrichment got.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import functools
import inspect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from structlog.typing import EventDict, WrappedLogger

from ..reporting import reporting_logger
from ..resilience.guard import ABANDON_GRACE
from .plan import Enrichment, EnrichmentPlan, is_enrichment_call
from .runtime import LoopRuntime, Runtime, resolver, set_result

__all__ = [
    "CLOSED",
    "DROPPED",
    "FULL",
    "QUEUED",
    "REPORTING",
    "EventPipeline",
    "EventWriter",
    "PendingEvent",
    "PipelineState",
]

_report = reporting_logger("enrichlog")

#: Seconds shutdown waits for events it gave up enriching to be written.
_SALVAGE_SECONDS = 1.0

#: Events one turn of the pump handles before it yields to the loop. Small:
#: a long turn holds the GIL, and logging threads then wait for it (the
#: caller's p99 in docs/benchmarks.md, "Hot-path choices").
_PUMP_BUDGET = 16

#: Tries to wake the loop while interrupts keep landing (each try takes
#: microseconds; signals do not come that fast).
_WAKE_ATTEMPTS = 100

#: Lines gathered at most before they are written (see
#: ``EventPipeline._write_together``).
_GATHER_MAX = 256


class _Reporting:
    """Which threads are inside a report of dropped events.

    Each event reads :attr:`anywhere`, a plain attribute (a thread-local's
    costs three times as much); only while some thread reports is the
    thread's own flag read.
    """

    def __init__(self) -> None:
        #: Threads reporting now (changed under the lock, read without).
        self.anywhere = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    @property
    def active(self) -> bool:
        """This thread is reporting."""
        return bool(self.anywhere) and getattr(self._local, "active", False)

    @contextlib.contextmanager
    def reporting(self) -> Iterator[None]:
        """Mark this thread as reporting meanwhile."""
        with self._lock:
            self.anywhere += 1
        self._local.active = True
        try:
            yield
        finally:
            self._local.active = False
            with self._lock:
                self.anywhere -= 1


#: Set while a thread reports dropped events: an event logged meanwhile (the
#: report routed back into structlog by a handler) is written as it is.
REPORTING = _Reporting()

#: What :meth:`EventPipeline.submit` did with an event: queued it, dropped it
#: under the overflow policy, or refused it (closed: the caller writes it).
QUEUED, DROPPED, CLOSED = 0, 1, 2
#: submit()'s own: the application's loop was found closed; see _ended_with_the_loop.
_LOOP_CLOSED = 3
#: submit(..., await_room=True) found the queue full with overflow="block":
#: nothing was done; the caller awaits room (see submit_when_room).
FULL = 4


class _Waiting:
    """An event whose caller awaits room in the full queue (``ainfo()`` and
    friends, ``overflow="block"``): the pipeline holds it, and queues it
    itself when room is made, or when the pipeline stops accepting."""

    __slots__ = ("future", "item", "loop", "state")

    WAITING, QUEUED, WITHDRAWN = 0, 1, 2

    def __init__(
        self, item: PendingEvent, loop: asyncio.AbstractEventLoop, future: asyncio.Future[int]
    ) -> None:
        self.item, self.loop, self.future = item, loop, future
        self.state = _Waiting.WAITING


def _resolve(future: asyncio.Future[int], result: int) -> None:
    """On an awaiting caller's loop: what became of its event."""
    if not future.done():
        future.set_result(result)


class PipelineState(enum.Enum):
    """Where a pipeline stands in its drain."""

    #: Events are queued and enriched.
    ACCEPTING = "accepting"
    #: Shutdown began: events are still queued, so that each thread's lines
    #: keep their order, but no longer enriched.
    CLOSING = "closing"
    #: Drained: a caller writes its own event once nothing is pending.
    CLOSED = "closed"
    #: The runtime is gone: callers write their own events.
    STOPPED = "stopped"


class EventWriter(Protocol):
    """Renders a finished event and writes its line; never raises."""

    def write(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> bool:
        """Write the event; return whether a line was written."""
        ...


#: Methods whose events take the priority lane: never dropped while
#: lower-level events remain in the queue to drop instead.
URGENT_METHODS = frozenset({"error", "err", "exception", "critical", "fatal", "failure"})


_ACCEPTING = PipelineState.ACCEPTING


class PendingEvent(Enrichment):
    """One event waiting in the pipeline: the plan's record of it
    (:class:`~enrichlog.engine.plan.Enrichment`) plus the pipeline's part,
    its place in line and who waits for its line. One object per event.

    Attributes:
        context: the caller's contextvars, which enrichment runs in.
        on_written: called once the line is written (or the event dropped).
        urgent: error level and above: the priority lane.
        seq: the submission sequence number.
        done: enrichment finished: the line can be written in its turn.
    """

    __slots__ = ("done", "on_written", "seq", "urgent")

    def __init__(
        self,
        logger: WrappedLogger,
        method_name: str,
        event: EventDict,
        level: int = 0,
        outcomes: list[Any] | None = None,
    ) -> None:
        # Enrichment.__init__'s fields, set here: one frame less per event
        # handed off.
        self.logger = logger
        self.method_name = method_name
        self.event = event
        self.level = level
        self.outcomes = outcomes
        self.waiting = 0
        self.filtered = False
        self.on_done = None
        self.started = 0.0
        self.enricher_time = 0.0
        self.starting = False
        self.context: contextvars.Context | None = None
        self.level_timer: asyncio.TimerHandle | None = None
        self.on_written: Callable[[], object] | None = None
        self.urgent = method_name in URGENT_METHODS
        self.seq = 0
        self.done = False


class EventPipeline:
    """Bounded queue, pipelined enrichment and in-order writing.

    Args:
        runtime: the loop events are enriched on.
        plan: advances each event's enrichment.
        writer: renders and writes each finished event.
        queue_size, overflow, block_timeout, max_in_flight,
        report_interval: see :class:`~enrichlog.settings.LoggingSettings`.
    """

    def __init__(
        self,
        runtime: Runtime,
        plan: EnrichmentPlan[PendingEvent],
        writer: EventWriter,
        *,
        queue_size: int,
        overflow: str,
        block_timeout: float,
        max_in_flight: int,
        report_interval: float,
    ) -> None:
        self._runtime = runtime
        self._loop_runtime = runtime if isinstance(runtime, LoopRuntime) else None
        self._plan = plan
        self.writer = writer
        #: Whether lines ready together may be written together (a writer
        #: that publishes events instead writes no lines).
        self._gathers = getattr(writer, "writes_lines", False)
        runtime.add_exit_hook(self._write_leftovers)
        if isinstance(runtime, LoopRuntime):
            # The application's loop ends (asyncio.run cancels what it has):
            # calls started since are cancelled too, while it still turns,
            # not left to be "destroyed but pending" when it closes.
            runtime.add_exit_hook(self._cancel_calls_at_exit)
            runtime.add_closing_hook(self._await_cancelled_calls, first=True)
        self._queue_size = queue_size
        self._overflow = overflow
        self._block_timeout = block_timeout
        self._max_in_flight = max_in_flight
        self._report_interval = report_interval
        self._on_enriched = self._enriched  # one bound method, not one per event
        self._reset_state()

    def _reset_state(self) -> None:
        # RLock: a SIGTERM handler may run on a thread that is inside submit().
        self._lock = threading.RLock()
        self._space = threading.Condition(self._lock)
        self._normal: deque[PendingEvent] = deque()
        self._urgent: deque[PendingEvent] = deque()
        self._order: deque[PendingEvent] = deque()
        self._flush_waiters: list[tuple[int, Callable[[], object]]] = []
        self._sleeping = True
        self._held = False
        self.state = PipelineState.ACCEPTING
        self._leftovers_written = threading.Event()
        #: Threads waiting for room in a full queue (on _space).
        self._blocked = 0
        #: The events of callers awaiting room (ainfo() and friends,
        #: overflow="block"), first come first queued; queued before the
        #: blocked threads are woken (they would win every race: a woken
        #: coroutine must first be scheduled on its loop). One whose wait
        #: ended is withdrawn, and passed over.
        self._waiting: deque[_Waiting] = deque()
        self._next_seq = 0
        #: Events queued so far, less those evicted: changed by logging
        #: threads, under the lock.
        self.queued = 0
        #: Events written (or filtered) so far: changed by the loop alone,
        #: which so never takes the logging threads' lock. ``queued -
        #: finished`` is what is pending; both are read without the lock.
        self.finished = 0
        self._in_flight = 0
        self._write_due = False
        self._high_water = 0
        #: The queue was full at least once (its high water is then its
        #: size): set by logging threads, under the lock.
        self._filled = False
        self._written = 0
        self._filtered = 0
        #: The output a batch of lines is being written to, and its count of
        #: lines written before the batch (see _unwritten).
        self._batch_output: tuple[Any, int] | None = None
        self._dropped: dict[str, int] = {"overflow": 0, "evicted": 0}
        self._unreported_drops = 0
        self._dropped_items: list[PendingEvent] = []
        self._last_report = 0.0

    # -- logging threads ----------------------------------------------------

    @property
    def pending(self) -> int:
        """Events queued and not yet written or dropped."""
        return self.queued - self.finished

    def _unwritten(self) -> int:
        """:attr:`pending`, less the lines of a batch being written that
        its output has written already: what the reports call pending."""
        batch = self._batch_output
        if batch is None:
            return self.pending
        output, before = batch
        written: int = output.written
        return max(0, self.pending - max(0, written - before))

    @property
    def idle(self) -> bool:
        """Every event submitted so far is written or dropped."""
        return self.queued == self.finished

    def submit(self, item: PendingEvent, may_block: bool = True, await_room: bool = False) -> int:
        """Queue ``item``; return :data:`QUEUED`, :data:`DROPPED` (by the
        overflow policy, counted) or :data:`CLOSED` (the caller writes it).

        Never raises. With ``overflow="block"`` a full queue makes the caller
        wait up to ``block_timeout``, then the new event is dropped and
        counted; ``may_block=False`` (a thread that runs an event loop) skips
        the wait. With ``await_room`` (a caller that can await instead) a
        full queue under ``overflow="block"`` returns :data:`FULL`, the event
        not taken: see :meth:`submit_when_room`. While the pipeline is
        closing, events are still queued (to keep each thread's order) but
        completed without enrichment.
        """
        loop_runtime = self._loop_runtime
        if loop_runtime is not None and loop_runtime.loop_closed:
            # The application's loop was closed by hand (no asyncio.run end,
            # so no exit hook ran): its pending events are written now, and
            # this one by its caller. Checked on every call: with the loop
            # awake when it closed, no wake-up would ever find it out.
            self._ended_with_the_loop()
        if self.state is not _ACCEPTING:
            self._plan.finish_unenriched(item)
        normal, urgent = self._normal, self._urgent
        wake = False
        try:
            # A ``with``, not acquire()/try/release(): an interrupt raised
            # right after acquire() returns (a signal handler runs there)
            # would land before the ``try`` and leave the lock held.
            with self._lock:
                # The common case (accepting, room in the queue) decides
                # nothing more: no frame of its own. (The state is read again
                # under the lock: a drain may have begun since.)
                if self.state is _ACCEPTING and len(normal) + len(urgent) < self._queue_size:
                    result = QUEUED
                elif self.state is _ACCEPTING and self._loop_closed():
                    result = _LOOP_CLOSED  # a full queue nothing drains
                else:
                    result = self._admit(item, may_block, await_room)
                if result == QUEUED:
                    item.seq = seq = self._next_seq
                    self._next_seq = seq + 1
                    self.queued += 1
                    (urgent if item.urgent else normal).append(item)
                    # (The high water is taken by the loop: see _note_depth.)
                    if self._sleeping:
                        self._sleeping = False
                        wake = True
            if self._dropped_items:
                self._after_drops()
        finally:
            # Even when an interrupt (a signal handler's KeyboardInterrupt)
            # lands meanwhile: a loop said awake and never woken would sleep
            # with events queued until shutdown.
            if wake:
                self._wake()
        if result == _LOOP_CLOSED:
            self._ended_with_the_loop()
            return self.submit(item, may_block)  # refused now: the caller writes it
        return result

    async def submit_when_room(self, item: PendingEvent, done: Callable[[int], object]) -> None:
        """:meth:`submit` for a caller that can await (``ainfo()`` and
        friends) and found the queue full under ``overflow="block"``: the
        pipeline holds the event and queues it as soon as there is room (or
        once it stops accepting), while the caller's loop runs on; after
        ``block_timeout`` it is taken back and submitted as ``drop_new``
        would (queued if there is room by then, else dropped, counted).
        ``done`` gets what :meth:`submit` would return.

        Cancelled (or closed) while it waits, the event is submitted so
        too, then the cancellation goes on: never lost, never twice.
        """
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                waiting: _Waiting | None = None
                if self._is_full() and not self._refuses():
                    waiting = _Waiting(item, loop, loop.create_future())
                    self._waiting.append(waiting)
            if waiting is not None:
                break
            result = self.submit(item, False, True)
            if result != FULL:  # room was made meanwhile, or it stopped accepting
                done(result)
                return
        try:
            async with asyncio.timeout(self._block_timeout):
                result = await waiting.future
        except TimeoutError:
            result = self.submit(item, False) if self._withdraw(waiting) else QUEUED
        except BaseException:
            done(self.submit(item, False) if self._withdraw(waiting) else QUEUED)
            raise
        done(result)

    def _withdraw(self, waiting: _Waiting) -> bool:
        """Take back an event whose caller stopped waiting; False if it was
        queued already."""
        with self._lock:
            if waiting.state is not _Waiting.WAITING:
                return False
            waiting.state = _Waiting.WITHDRAWN
            return True

    def take_in_waiting(self) -> None:
        """Queue every event awaiting room now, however full the queue: a
        shutdown on the loop's own thread writes them with the others."""
        with self._lock:
            if self._waiting:
                self._queue_waiting(everything=True)

    def _queue_waiting(self, *, everything: bool = False) -> None:
        """With the lock held: queue the events awaiting room, as many as
        there is room for, or all of them once the pipeline stops accepting
        (completed without enrichment then, as submit() queues them), and
        tell their callers."""
        waiting, accepting = self._waiting, self.state is _ACCEPTING
        normal, urgent = self._normal, self._urgent
        queued = False
        while waiting and (everything or not (accepting and self._is_full())):
            entry = waiting.popleft()
            if entry.state is not _Waiting.WAITING:
                continue  # taken back: its caller submitted it itself
            entry.state = _Waiting.QUEUED
            item = entry.item
            if not accepting:
                self._plan.finish_unenriched(item)
            item.seq = self._next_seq
            self._next_seq += 1
            self.queued += 1
            (urgent if item.urgent else normal).append(item)
            queued = True
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody awaits it
                entry.loop.call_soon_threadsafe(_resolve, entry.future, QUEUED)
        if queued and self._sleeping:
            self._sleeping = False
            self._wake()

    def _is_full(self) -> bool:
        return len(self._normal) + len(self._urgent) >= self._queue_size

    def _notify_space(self) -> None:
        """With the lock held: room was made, or the pipeline stopped
        accepting. Queues the events awaiting room first, then wakes the
        threads waiting for what room is left."""
        if self._waiting:
            self._queue_waiting()
        self._space.notify_all()

    def _loop_closed(self) -> bool:
        """Whether enrichment ran on an application's loop that is closed."""
        runtime = self._runtime
        return isinstance(runtime, LoopRuntime) and runtime.loop_closed

    def _ended_with_the_loop(self) -> bool:
        """When the application's loop was closed without ending as
        ``asyncio.run`` ends it (``run_until_complete()`` then ``close()``:
        no task was cancelled, so the runtime's exit hooks never ran), run
        them here, on whichever thread finds it out (nothing of that loop
        runs again): the pending events are written with what they have,
        and later ones by their callers, as after ``asyncio.run``. Whether
        it was so."""
        runtime = self._runtime
        if isinstance(runtime, LoopRuntime) and runtime.loop_closed:
            runtime.run_exit_hooks()
            return True
        return False

    def _wake(self) -> None:
        """Schedule the pump on the loop, whatever interrupts the caller
        meanwhile: an interrupt is held until the loop is woken, then
        raised. (A second pump scheduled by a retry does nothing.)"""
        interrupt: BaseException | None = None
        for _ in range(_WAKE_ATTEMPTS):
            try:
                self._runtime.call_soon(self._pump)
            except RuntimeError:  # stopped under us: its exit hook writes the queue
                self._sleeping = True
                self._ended_with_the_loop()  # ... unless the loop closed without them
            except BaseException as exc:
                interrupt = exc
                continue
            break
        else:
            self._sleeping = True  # the next log call wakes it
        if interrupt is not None:
            raise interrupt

    def _admit(self, item: PendingEvent, may_block: bool, await_room: bool) -> int:
        """With the lock held, when the pipeline is not accepting or the
        queue is full: :data:`QUEUED` if ``item`` may go in now (room was
        made), else :data:`CLOSED`, :data:`DROPPED` (counted) or, for a
        caller that awaits room, :data:`FULL`."""
        if self.state is not PipelineState.ACCEPTING and self._refuses():
            return CLOSED
        if self._is_full():
            if await_room and self._overflow == "block" and self.state is _ACCEPTING:
                self._filled = True
                return FULL
            room = self._make_room(item, may_block)
            if self._refuses():
                return CLOSED
            if not room:
                self._count_drop("overflow", item)
                return DROPPED
        return QUEUED

    def _refuses(self) -> bool:
        """With the lock held: whether a caller must write its event itself.

        After the drain, only once nothing is pending: an event written by
        its caller must not overtake the same thread's queued ones.
        """
        state = self.state
        return state is PipelineState.STOPPED or (
            state is PipelineState.CLOSED and self.queued == self.finished
        )

    def _make_room(self, item: PendingEvent, may_block: bool) -> bool:
        """With the lock held and the queue full: free a slot or refuse."""
        self._filled = True
        if self._overflow == "block" and may_block:
            deadline = time.monotonic() + self._block_timeout
            self._blocked += 1
            try:
                while len(self._normal) + len(self._urgent) >= self._queue_size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._refuses():
                        break
                    self._space.wait(remaining)
            except BaseException:
                # Ctrl-C (a signal handler's exception) during the wait: it
                # reaches the application, and the event counts as dropped,
                # as after a wait that ran out (it used to vanish uncounted).
                self._count_drop("overflow", item)
                raise
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
        self.queued -= 1
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
            # Through the stdlib logger; a handler that routes it back into
            # structlog gets it written as it is, never queued here.
            with REPORTING.reporting():
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
        if self._held:
            return  # release() pumps
        loop = self._runtime.loop
        budget = _PUMP_BUDGET
        while self._in_flight < self._max_in_flight:
            if budget <= 0:
                # Yield to the loop: enrichment tasks, timers and stop()
                # must not starve behind a stream of complete events.
                loop.call_soon(self._pump)
                return
            batch, empty = self._take(min(self._max_in_flight - self._in_flight, budget))
            self._order.extend(batch)
            budget -= len(batch)
            for item in batch:
                if self._start(item):
                    self._in_flight += 1
            self._write_ready()
            if empty:
                return

    def _note_depth(self) -> None:
        """Record the queue's depth as its high water if it is the highest
        yet. Called by the loop before it takes events: between two takes
        the queue only grows (an eviction makes room for the event that
        replaces it), so its highest depth is the one found here, or the
        current one (see :meth:`metrics`). Logging threads so never pay for
        it."""
        # Without the lock: the urgent lane first. An eviction pops a lower
        # event before its urgent replacement is appended, so read in this
        # order the sum is never more than the queue held at once (it may
        # be one less, but evictions happen only in a full queue, which
        # metrics() reports as such).
        depth = len(self._urgent) + len(self._normal)
        if depth > self._high_water:  # noqa: PLR1730 - no builtin call per pass
            self._high_water = depth

    def _take(self, room: int) -> tuple[list[PendingEvent], bool]:
        """Up to ``room`` queued events, oldest first across both lanes; and
        whether the queue is empty now (the loop then says it sleeps).

        No lock: only this loop pops, logging threads append (and, to evict,
        pop under their lock); each deque call is atomic. So the loop never
        waits for a logging thread, nor one for the loop.
        """
        batch: list[PendingEvent] = []
        normal, urgent = self._normal, self._urgent
        self._note_depth()
        while room > 0:
            try:
                if urgent and (not normal or urgent[0].seq < normal[0].seq):
                    batch.append(urgent.popleft())
                else:
                    batch.append(normal.popleft())
            except IndexError:  # empty, or evicted under us
                if normal or urgent:
                    continue
                # Say we sleep, then look once more: a logging thread that
                # appended meanwhile either saw us awake or wakes us.
                self._sleeping = True
                if not (normal or urgent):
                    break
                self._sleeping = False
                continue
            room -= 1
        if self._blocked or self._waiting:
            with self._lock:
                self._notify_space()
        return batch, self._sleeping

    def _start(self, item: PendingEvent) -> bool:
        """Advance ``item``; True if it awaits (takes an in-flight slot)."""
        if item.level < self._plan.depth:
            item.on_done = self._on_enriched
            if not self._plan.advance(item):  # in a copy of the event's context
                return True
        item.done = True
        return False

    def _enriched(self, item: PendingEvent) -> None:
        """The plan completed an event that had to await."""
        if item.done:
            return  # written already (shutdown gave up on it)
        item.done = True
        self._in_flight -= 1
        if not self._write_due:
            # Once per turn of the loop: the events a batch (or the timers
            # of one turn) completed are written together. (Flagged once
            # scheduled: an interrupt in between costs a second, idle, call.)
            self._runtime.loop.call_soon(self._write_completed)
            self._write_due = True

    def _write_completed(self) -> None:
        self._write_due = False
        self._write_ready()
        if not self._sleeping:
            self._pump()

    def _write_ready(self) -> None:
        order = self._order
        write = self.writer.write
        finished = 0
        while order and order[0].done:
            if self._gathers and len(order) > 1 and order[1].done:
                together = self._write_together(order)
                if together:
                    # Counted as each batch is written: a later one may
                    # block (an output whose reader stalled), and these
                    # are no longer pending meanwhile.
                    self.finished += together
                    finished += together
                    continue
            item = order[0]
            if not item.filtered and write(item.logger, item.method_name, item.event):
                self._written += 1
            else:
                self._filtered += 1
            # Popped only once written: until then the event still counts
            # as pending, and a caller's next event must queue behind it.
            order.popleft()
            self.finished += 1
            finished += 1
            if item.on_written is not None:
                item.on_written()
        if finished and self._blocked:
            with self._lock:
                self._notify_space()
        if self._flush_waiters:
            self._release_flush_waiters()

    def _write_together(self, order: deque[PendingEvent]) -> int:
        """Several events are ready: write the lines of those that go to the
        same output with as few write calls as it allows, when it can
        (``LineWriter.gather``: a write call, and the GIL released and taken
        back, per batch rather than per line). Returns how many were
        written; 0 if the output cannot gather.

        Each is popped as it is rendered: the output's lock, held until the
        lines are written, keeps a logging thread that finds nothing pending
        (and writes its own line) behind them.
        """
        output: Any = getattr(order[0].logger, "line_writer", None)
        if output is None or not output.gather():
            return 0
        write = self.writer.write
        together: list[PendingEvent] = []
        # Lines of the batch the output wrote are no longer pending, though
        # the batch is not finished (an output that blocks mid-batch).
        self._batch_output = (output, output.written)
        try:
            while order and len(together) < _GATHER_MAX:
                item = order[0]
                if not item.done or getattr(item.logger, "line_writer", None) is not output:
                    break
                if not item.filtered and write(item.logger, item.method_name, item.event):
                    self._written += 1
                else:
                    self._filtered += 1
                order.popleft()
                together.append(item)
        finally:
            output.write_gathered()
            self._batch_output = None
        for item in together:
            if item.on_written is not None:
                item.on_written()
        return len(together)

    def hold(self) -> None:
        """Queue events without enriching them until :meth:`release` (the
        enrichers are still starting)."""
        self._held = True

    def release(self) -> None:
        """Enrich the events queued while held, and every later one."""
        self._held = False
        with self._lock:
            self._sleeping = False
        # RuntimeError: the runtime is gone; its exit hook writes the queue.
        with contextlib.suppress(RuntimeError):
            self._runtime.call_soon(self._pump)

    def _oldest_pending_seq(self) -> int:
        """The sequence number of the oldest event not yet written (the next
        one to be submitted when none is pending). On the loop, without the
        logging threads' lock: they only append (a newer event) or, to
        evict, pop a head (an older one): a stale read only makes it lower,
        and a flush waiter then waits for the next pass."""
        oldest = self._next_seq
        for lane in (self._order, self._normal, self._urgent):
            try:
                seq = lane[0].seq
            except IndexError:  # empty, or emptied under us
                continue
            oldest = min(oldest, seq)
        return oldest

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
        if self.idle or self._ended_with_the_loop():
            return self.idle
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
        if self.idle or self._ended_with_the_loop():
            return self.idle
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        target = self._flush_target()
        if self._runtime.in_runtime_thread():
            self._add_flush_waiter(target, functools.partial(set_result, future))
        else:
            try:
                self._runtime.call_soon(self._add_flush_waiter, target, resolver(loop, future))
            except RuntimeError:  # the runtime is stopped
                return self.idle
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True

    def close(self, timeout: float) -> dict[str, int]:
        """Drain: wait up to ``timeout`` for the pending events, then stop
        accepting events, and report what happened.

        While draining, events are still accepted (completed unenriched), so
        every thread's lines keep their order. Events still pending when the
        timeout hits (``pending`` in the report) are not abandoned: their
        enrichment is given up and they are written with what they have
        (``salvaged``).
        """
        with self._lock:
            self.state = PipelineState.CLOSING
            if self._waiting:  # logged before the drain: part of it
                self._queue_waiting()
        flushed = self.flush(timeout)
        report = self.report()
        responsive = True
        if not flushed and report["pending"] and self._runtime.is_running:
            written = self._written
            self._runtime.call_soon(self.abandon_enrichment)
            # Not even salvaging got through: the loop's thread is stuck (an
            # enricher blocking it, or an output nobody reads).
            responsive = self.flush(_SALVAGE_SECONDS)
            report["salvaged"] = self._written - written
        with self._lock:
            self.state = PipelineState.CLOSED
            self._notify_space()  # blocked callers write their own events
        if responsive:
            self.flush(_SALVAGE_SECONDS)  # events that raced the close
        else:
            report["unresponsive"] = 1
        return report

    def report_drops_left(self) -> None:
        """At shutdown, however it came (``shutdown()``, ``ashutdown()``,
        the loop or the interpreter ending): the drops the interval held
        back, reported now."""
        with self._lock:
            count, self._unreported_drops = self._unreported_drops, 0
        if count:
            with REPORTING.reporting():
                _report.warning(
                    "enrichlog dropped %d event(s) since its last report (overflow=%s)",
                    count,
                    self._overflow,
                )

    async def aclose(self, timeout: float) -> dict[str, int]:
        """:meth:`close` on the runtime's own loop (``runtime="loop"``):
        awaits the drain instead of blocking the loop it needs."""
        with self._lock:
            self.state = PipelineState.CLOSING
            if self._waiting:  # logged before the drain: part of it
                self._queue_waiting()
        self.release()
        flushed = await self.aflush(timeout)
        report = self.report()
        if not flushed and report["pending"]:
            written = self._written
            self.abandon_enrichment()
            await self.aflush(_SALVAGE_SECONDS)
            report["salvaged"] = self._written - written
        with self._lock:
            self.state = PipelineState.CLOSED
            self._notify_space()
        return report

    def report(self) -> dict[str, int]:
        """The counts a drain reports: written, dropped, pending."""
        return {
            "written": self._written,
            "dropped": sum(self._dropped.values()),
            "pending": self._unwritten(),
        }

    def abandon_enrichment(self) -> None:
        """Give up enriching, not writing (shutdown, after the drain timed
        out). Runs on the loop.

        Enrichment still running is cancelled (those events are written with
        what they have); events still queued are completed without awaiting
        anything; everything is written in order.
        """
        self._plan.cancel_calls()
        with self._lock:
            self._note_depth()
            queued = sorted([*self._normal, *self._urgent], key=lambda item: item.seq)
            self._normal.clear()
            self._urgent.clear()
            self._sleeping = True
        for item in self._order:
            if not item.done:
                self._finish_unenriched(item)
                self._in_flight -= 1
        for item in queued:
            self._finish_unenriched(item)
        self._order.extend(queued)
        self._write_ready()

    def _finish_unenriched(self, item: PendingEvent) -> None:
        self._plan.finish_unenriched(item)
        item.done = True

    def _cancel_calls_at_exit(self) -> None:
        """Loop runtime exit hook: cancel the enricher calls in progress, on
        the loop's thread (a stop that gave up waiting for the loop runs the
        hooks on its own), unless the loop has closed (nothing of it runs
        again)."""
        if self._loop_closed():
            self._forget_calls()
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            if self._runtime.in_runtime_thread():
                self._plan.cancel_calls()
            else:
                self._runtime.loop.call_soon_threadsafe(self._plan.cancel_calls)

    def _forget_calls(self) -> None:
        """The loop was closed by hand with enricher calls in it: none will
        run again, nor can they be cancelled. Not reported as "destroyed but
        pending" (nor, one not begun, "never awaited"): their events were
        written without their fields, with the reason."""
        runtime = self._loop_runtime
        loop = runtime.bound_loop if runtime is not None else None
        if loop is None:
            return
        for task in asyncio.all_tasks(loop):
            if is_enrichment_call(task):
                task._log_destroy_pending = False  # type: ignore[attr-defined]
                coroutine = task.get_coro()
                if inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED:  # type: ignore[arg-type]
                    coroutine.close()

    async def _await_cancelled_calls(self) -> None:
        """Loop runtime closing hook: let the calls cancelled as the loop
        ends take their cancellation (asyncio.run awaits only the tasks
        that existed when it started cancelling: calls started after, some
        not begun yet, would be reported "destroyed but pending" when it
        closes the loop). One that ignores it is abandoned, as at any
        shutdown, and not reported."""
        tasks = [task for task in asyncio.all_tasks() if is_enrichment_call(task)]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        _, ignoring = await asyncio.wait(tasks, timeout=ABANDON_GRACE)
        for task in ignoring:
            task._log_destroy_pending = False  # type: ignore[attr-defined]

    def stop_accepting(self) -> None:
        """Refuse every new event (callers write their own): the runtime is
        about to stop. Called before it stops, so that no log call can find
        the runtime gone with its event queued."""
        with self._lock:
            self.state = PipelineState.STOPPED
            self._notify_space()

    def _write_leftovers(self) -> None:
        """Runtime exit hook, on the loop thread after its last task: write,
        in order, the events that raced the drain. However late the thread
        ends, it is the only one that touches this state."""
        with self._lock:
            self.state = PipelineState.STOPPED
            self._note_depth()
            if self._waiting:  # their callers' loops may never run again
                self._queue_waiting()
            leftovers = sorted(
                [*self._order, *self._normal, *self._urgent], key=lambda item: item.seq
            )
            self._order.clear()
            self._normal.clear()
            self._urgent.clear()
            self._notify_space()
        for item in leftovers:
            if not item.done:
                self._finish_unenriched(item)
        self._order.extend(leftovers)
        self._write_ready()
        self._leftovers_written.set()
        self.report_drops_left()  # the loop may end (runtime="loop") long before shutdown

    def wait_for_leftovers(self) -> None:
        """For a caller refused after the runtime stopped: wait (briefly)
        until the events that raced the drain are written, so that its own
        line does not overtake them."""
        if self.state is PipelineState.STOPPED:
            self._leftovers_written.wait(_SALVAGE_SECONDS)

    def after_fork_in_child(self, *, stopped: bool = False) -> None:
        """Start empty in a forked child: the parent writes its own events.
        ``stopped``: the container is shut down in the child; its callers
        write their own events, with no leftovers to wait for."""
        self._reset_state()
        if stopped:
            self.state = PipelineState.STOPPED
            self._leftovers_written.set()

    def metrics(self) -> dict[str, Any]:
        """Counters: events handed off (queued) and the lines the runtime
        wrote, dropped (by kind), queue depth and high water."""
        with self._lock:  # drops are counted under it: one consistent view
            depth = len(self._normal) + len(self._urgent)
            dropped = dict(self._dropped)
        return {
            "handed_off": self._next_seq,
            "written": self._written,
            "filtered": self._filtered,
            "dropped": sum(dropped.values()),
            "dropped_by_kind": dropped,
            "queue_depth": depth,
            "queue_high_water": (
                self._queue_size if self._filled else max(self._high_water, depth)
            ),
            "queue_size": self._queue_size,
            "in_flight": self._in_flight,
            "pending": self._unwritten(),
        }
