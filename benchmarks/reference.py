"""The reference pipeline: what a minimal hand-written asyncio logging pipeline costs.

It is what enrichlog's background delivery is measured against. It does the same work
per event and nothing more:

* on the caller, structlog runs the same pre-processors as enrichlog (contextvars, level,
  ISO timestamp), then the event goes into a ``queue.SimpleQueue``; the one loop thread
  is woken (``call_soon_threadsafe``) only when it is idle, not once per event;
* on the loop, at most ``max_in_flight`` (512) events are enriched at once, one task per
  event; each dependency level is awaited with ``asyncio.gather``;
* each line is rendered with orjson and written (and flushed) as soon as its event
  completes, so lines leave in completion order, not logging order.

No cache, no circuit breaker, no timeout, no retry, no ordering, no overflow policy:
enrichlog's guarantees are exactly what the ratio to this pipeline prices.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import structlog
from common import pre_processors

Lookup = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

#: Events enriched at once (enrichlog is given as many calls in flight per enricher).
MAX_IN_FLIGHT = 512


class _Submitter:
    """The wrapped logger structlog hands each pre-processed event to."""

    def __init__(self, submit: Callable[[dict[str, Any]], None]) -> None:
        self.msg = self.debug = self.info = self.warning = self.error = self.critical = submit


def _as_argument(_logger: Any, _method_name: str, event_dict: Any) -> Any:
    """Last processor: pass the event dict itself to the submitter, not as keywords."""
    return (event_dict,), {}


class ReferencePipeline:
    """A bare asyncio pipeline: queue hand-off, levels gathered, lines in completion order.

    Args:
        levels: the lookups of each dependency level; a lookup returns the fields it adds.
        output: where lines go (a path; ``/dev/null`` by default).
        max_in_flight: events enriched at once.
    """

    def __init__(
        self,
        levels: Sequence[Sequence[Lookup]],
        output: str = "/dev/null",
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._levels = [tuple(level) for level in levels]
        self._max_in_flight = max_in_flight
        self._queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._stream = open(output, "ab")  # noqa: SIM115 - closed by stop()
        self._sleeping = True
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.submitted = 0
        self.written = 0
        self._flush_waiters: list[tuple[int, threading.Event]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="reference-loop", daemon=True)

    # -- life -------------------------------------------------------------------------------

    def start(self) -> ReferencePipeline:
        """Start the loop thread."""
        ready = threading.Event()
        self._loop.call_soon(ready.set)
        self._thread.start()
        ready.wait()
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def stop(self) -> None:
        """Write what is pending, stop the loop and close the output."""
        self.flush()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._stream.close()

    def get_logger(self) -> Any:
        """A structlog bound logger whose events go into this pipeline."""
        return structlog.wrap_logger(
            _Submitter(self.submit),
            processors=[*pre_processors(), _as_argument],
            wrapper_class=structlog.make_filtering_bound_logger(20),
            cache_logger_on_first_use=True,
        ).bind()

    # -- the logging thread -----------------------------------------------------------------

    def submit(self, event: dict[str, Any]) -> None:
        """Queue an event; wake the loop only if it sleeps."""
        self.submitted += 1
        self._queue.put(event)
        if self._sleeping:
            self._sleeping = False
            self._loop.call_soon_threadsafe(self._pump)

    def flush(self) -> None:
        """Wait until every event submitted so far is written."""
        done = threading.Event()
        self._loop.call_soon_threadsafe(self._add_flush_waiter, self.submitted, done)
        done.wait()

    # -- the loop ---------------------------------------------------------------------------

    def _pump(self) -> None:
        """Start events while there is room. Lock-free under the GIL: the loop says it
        sleeps, then looks at the queue once more, so a producer that found it awake
        and did not wake it cannot leave an event behind."""
        get = self._queue.get_nowait
        create_task = self._loop.create_task
        while self._in_flight < self._max_in_flight:
            try:
                event = get()
            except queue.Empty:
                self._sleeping = True
                if self._queue.empty():
                    return
                self._sleeping = False
                continue
            self._in_flight += 1
            task = create_task(self._enrich(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _enrich(self, event: dict[str, Any]) -> None:
        for level in self._levels:
            for fields in await asyncio.gather(*(lookup(event) for lookup in level)):
                event.update(fields)
        self._stream.write(orjson.dumps(event) + b"\n")
        self._stream.flush()
        self.written += 1
        self._in_flight -= 1
        if self._flush_waiters:
            self._release_flush_waiters()
        if not self._sleeping:
            self._pump()

    def _add_flush_waiter(self, target: int, done: threading.Event) -> None:
        self._flush_waiters.append((target, done))
        self._release_flush_waiters()

    def _release_flush_waiters(self) -> None:
        keep = []
        for target, done in self._flush_waiters:
            if self.written >= target:
                done.set()
            else:
                keep.append((target, done))
        self._flush_waiters = keep
