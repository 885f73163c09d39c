"""Helpers for testing code that logs with enrichlog, and enrichers themselves.

* :func:`capture_events`: the final enriched event dicts logged inside a
  ``with`` (or ``async with``) block, through the real runtime.
* :func:`run_enricher`, :func:`arun_enricher` and :class:`EnricherRunner`:
  one enricher through its real guard (start-up, timeout, cache, circuit
  breaker), returning the enriched event and its recorded errors.
* :class:`FakeClock`: drives cache lifetimes and breaker recovery without
  sleeping.
* :class:`LineSink`: an ``output=`` that keeps the rendered lines.
* :func:`reset_logging`: shut down the current container and reset
  structlog, as between tests.

The pytest plugin :mod:`enrichlog.testing.pytest_plugin` (opt-in:
``pytest_plugins = ["enrichlog.testing.pytest_plugin"]``) provides the
``enrichlog_container``, ``enrichlog_output`` and ``fake_clock`` fixtures.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import sys
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, NamedTuple

from structlog.typing import EventDict, Processor, WrappedLogger

from .. import container as _container_module
from ..container import (
    LoggingContainer,
    _from_uri,
    current_container,
    report_still_starting,
    reset_logging,
)
from ..engine.lifecycle import SHUTDOWN_SLACK, EnricherLifecycleManager, report_slow_shutdown
from ..engine.plan import IN_ENRICHMENT, call_in_worker, call_sync
from ..engine.runtime import DaemonThreadPool, EnrichmentRuntime
from ..enricher import AsyncEnricher, Enricher, SyncEnricher, as_enricher
from ..exceptions import EnrichlogError
from ..options import ResolvedOptions
from ..resilience.breaker import CircuitBreaker
from ..resilience.cache import EnricherCache
from ..resilience.guard import EnricherGuard
from ..resilience.outcome import (
    FILTERED_REASON,
    INTERRUPTS,
    TIMEOUT,
    UNAVAILABLE,
    Outcome,
    fill,
    take_interrupt,
    with_reasons,
)
from ..settings import LoggingSettings

__all__ = [
    "EnricherRunner",
    "EnrichmentResult",
    "FakeClock",
    "LineSink",
    "arun_enricher",
    "capture_events",
    "reset_logging",
    "run_enricher",
]


# -- capture_events ----------------------------------------------------------------


class capture_events:  # noqa: N801 - used as a function: `with capture_events() as events`
    """Collect the final event dicts logged inside the block.

    ::

        with capture_events() as events:
            checkout(user_id=42)
        assert events[0]["user_name"] == "alice"

        async with capture_events() as events:     # in async code
            await log.ainfo("checkout", user_id=42)

    Events go through the real runtime (enrichers, timeouts, cache, breaker);
    each is recorded after enrichment, just before it is rendered, as a copy
    (``exc_info`` as a ``(type, value, traceback)`` tuple, not yet
    formatted). Events an enricher
    filtered out or a level dropped are not there. At the end of the block
    everything logged in it is flushed (at most ``timeout`` seconds), so the
    list is complete when the block ends (else the block raises
    ``EnrichlogError``); lines are still written to the container's output.

    Args:
        container: the container whose events to record; ``None``: the
            current one.
        timeout: seconds the end of the block waits for pending events.

    A container shut down in the block (``reset_logging()``,
    ``container.shutdown()``) is no error: what was logged before the
    shutdown is drained and recorded, and what is logged after it through a
    logger bound to its configuration is written, and recorded, on the
    calling thread. A logger got after ``reset_logging()`` logs through
    structlog's defaults, not enrichlog: neither written to the output nor
    recorded.

    Raises:
        EnrichlogError: no container runs, events logged in the block were
            still pending after ``timeout`` (or when a shutdown in the block
            gave up on them), or (following the current container)
            ``configure_logging()`` replaced it in the block, so later events
            went to the new one and were not recorded. In async code with
            ``runtime="loop"``, use ``async with``: a plain ``with`` cannot
            wait on the loop it runs on.
    """

    def __init__(self, container: LoggingContainer | None = None, *, timeout: float = 10.0) -> None:
        self._container = container
        self._timeout = timeout
        self._active: LoggingContainer | None = None
        # Bound once: the chain is searched for this very object.
        self._recorder: Processor = self._tap
        #: The events recorded so far, in the order their lines are written.
        self.events: list[EventDict] = []

    def _tap(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event = dict(event_dict)
        exc_info = event.get("exc_info")
        if exc_info is True:  # completed on the logging thread, inside its except
            event["exc_info"] = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            event["exc_info"] = (type(exc_info), exc_info, exc_info.__traceback__)
        self.events.append(event)
        return event_dict

    def _running(self) -> LoggingContainer:
        container = self._container or current_container()
        if container is None or not container.running:
            raise EnrichlogError(
                "capture_events(): no logging container runs; call configure_logging() "
                "first (or use the enrichlog_container fixture of "
                "enrichlog.testing.pytest_plugin)"
            )
        return container

    def _start(self, container: LoggingContainer) -> None:
        container.add_tap(self._recorder)
        self._active = container

    def _stop(self, container: LoggingContainer) -> None:
        """Stop recording. A container shut down in the block no longer
        updates the installed chain when a tap is removed, and loggers bound
        to that chain still run it (writing on the calling thread): the tap
        is taken out of it here, else it would record after the block."""
        recorder = self._recorder
        container.remove_tap(recorder)
        chain = _container_module._installed_chain
        with container._lock:  # the lock add_tap() and remove_tap() change the chain under
            if any(processor is recorder for processor in chain):
                chain[:] = [processor for processor in chain if processor is not recorder]

    def __enter__(self) -> list[EventDict]:
        container = self._running()
        # What was logged before the block is written before it starts:
        # pending events are recorded when they are written, and those are
        # not the block's.
        flushed = container.flush(self._timeout)
        if not flushed:
            _refuse_plain_with_on_the_loop(container, "before the block")
        self._check_entered(flushed)
        self._start(container)
        return self.events

    def _check_entered(self, flushed: bool) -> None:
        if not flushed:
            raise EnrichlogError(
                f"capture_events(): events logged before the block were still pending "
                f"after {self._timeout:g} s, and would be recorded as the block's; give a "
                f"larger timeout"
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        container, self._active = self._active, None
        if container is None:
            return
        try:
            flushed = container.flush(self._timeout)
        finally:
            self._stop(container)
        if not flushed and exc_type is None and not container.closed:
            _refuse_plain_with_on_the_loop(container, "in the block")
        self._check_complete(container, flushed, exc_type)

    def _check_complete(
        self, container: LoggingContainer, flushed: bool, exc_type: type[BaseException] | None
    ) -> None:
        """An incomplete list is an error, not a quiet surprise in the
        test's assertions (unless the block raised already)."""
        if exc_type is not None:
            return
        if not flushed and container.closed:
            raise EnrichlogError(
                "capture_events(): the container was shut down during the block and gave up "
                "on events logged in it: they were neither written nor recorded, so the list "
                "is incomplete"
            )
        if not flushed:
            raise EnrichlogError(
                f"capture_events(): events logged in the block were still pending after "
                f"{self._timeout:g} s, so the list is incomplete; give a larger timeout"
            )
        # Only shut down (reset_logging(), shutdown()): every event logged in
        # the block was recorded (those after the shutdown on the calling
        # thread). Replaced: those logged after went to the new container.
        current = current_container()
        if self._container is None and current is not None and current is not container:
            raise EnrichlogError(
                "capture_events(): configure_logging() replaced the container during the "
                "block, and events logged after it went to the new one and were not "
                "recorded; configure logging before the block, or capture the new container "
                "in a block of its own"
            )

    async def __aenter__(self) -> list[EventDict]:
        container = self._running()
        self._check_entered(await container.aflush(self._timeout))  # as __enter__ does
        self._start(container)
        return self.events

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        container, self._active = self._active, None
        if container is None:
            return
        try:
            flushed = await container.aflush(self._timeout)
        finally:
            self._stop(container)
        self._check_complete(container, flushed, exc_type)


def _refuse_plain_with_on_the_loop(container: LoggingContainer, when: str) -> None:
    """A plain ``with`` on the loop a ``runtime="loop"`` container enriches
    on cannot wait for the events (it would block that loop): say so, rather
    than that they were still pending after a wait that did not happen."""
    if container.enriches_on_this_thread():
        raise EnrichlogError(
            f"capture_events(): events logged {when} were still pending, and a plain 'with' "
            "on the event loop that enriches them (runtime='loop') cannot wait for them "
            "without blocking it; use 'async with capture_events() as events:'"
        )


# -- one enricher --------------------------------------------------------------------


class EnrichmentResult(NamedTuple):
    """What one enricher did to one event."""

    #: The event as the pipeline would write it: the enricher's fields, and
    #: the error field (``enrichment_errors``) when it failed.
    event: EventDict
    #: ``{enricher name: reason}`` (``timeout``, ``error: KeyError``,
    #: ``circuit_open``...); empty when it succeeded.
    errors: dict[str, str]
    #: The enricher filtered the event out (raised ``DropEvent``).
    filtered: bool = False


class FakeClock:
    """A monotonic clock that moves only when told to.

    Give it as ``clock=`` to :class:`EnricherRunner` (or :func:`run_enricher`),
    :class:`~enrichlog.resilience.cache.EnricherCache` or
    :class:`~enrichlog.resilience.breaker.CircuitBreaker`, then
    :meth:`advance` it past a cache entry's lifetime or a breaker's
    recovery timeout instead of sleeping. Enricher timeouts are measured on
    the event loop's clock and are not driven by it.

    Args:
        start: the time it shows at first, in seconds.
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """The current time, in seconds."""
        return self._now

    def __repr__(self) -> str:
        return f"<FakeClock {self._now:.3f}>"

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0); returns the new time.

        Raises:
            ValueError: ``seconds`` is negative (a monotonic clock never goes back).
        """
        if not seconds >= 0:
            raise ValueError(f"a monotonic clock only moves forward; got {seconds!r}")
        with self._lock:
            self._now += seconds
            return self._now


class EnricherRunner:
    """Runs one enricher for single events, the way a container would:
    started by the lifecycle manager, an async enricher behind its real
    :class:`~enrichlog.resilience.guard.EnricherGuard` (timeout, cache,
    circuit breaker, retries, concurrency limit), a sync one inline (a
    blocking one in a worker thread, bounded by ``enricher_timeout``).
    Cache and breaker state carry over from one event to the next.

    ``with EnricherRunner(enricher) as runner:`` runs the enricher on a loop
    of its own in a thread (call :meth:`run`); ``async with`` runs it on the
    caller's loop (await :meth:`arun`). Leaving the block shuts the enricher
    down.

    Args:
        enricher: an enricher instance, a structlog processor, an ``async
            def`` processor or an enricher URI (``"static://?service=x"``),
            built as ``configure_logging(enrichers=[...])`` builds one.
        settings: the defaults its options resolve against (timeouts, cache,
            breaker); default ``LoggingSettings()``.
        clock: the clock of its cache and breaker (a :class:`FakeClock`).
    """

    def __init__(
        self,
        enricher: object,
        *,
        settings: LoggingSettings | None = None,
        clock: FakeClock | None = None,
    ) -> None:
        # A URI string is built as the container builds one (its errors
        # mask the URI's secrets).
        self.enricher: Enricher = as_enricher(_from_uri(enricher))
        self.settings = settings or LoggingSettings()
        #: The async enricher's guard (its ``cache``, ``breaker`` and
        #: ``metrics()``); ``None`` for a sync enricher.
        self.guard: EnricherGuard | None = None
        if isinstance(self.enricher, AsyncEnricher):
            options = ResolvedOptions.for_enricher(self.enricher, self.settings)
            self.guard = EnricherGuard(self.enricher, options)
            if clock is not None:
                _use_clock(self.guard, options, clock)
        self._lifecycle = EnricherLifecycleManager(
            [self.enricher], health_check_interval=self.settings.health_check_interval
        )
        self._runtime: EnrichmentRuntime | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The worker threads of a blocking sync enricher on the caller's
        #: loop (``async with``): daemon threads, as a container's, so that a
        #: call stuck past its timeout does not hold up the loop's end.
        self._pool: DaemonThreadPool | None = None
        #: Calls given up as abandoned (they ignored their cancellation): kept
        #: while they run, as a container keeps them.
        self._abandoned: set[asyncio.Task[Any]] = set()

    # -- life ------------------------------------------------------------------------

    def start(self) -> EnricherRunner:
        """Start the enricher on a loop in a thread of its own (blocking)."""
        if self._runtime is None and self._loop is None:
            runtime = EnrichmentRuntime(
                "enrichlog-test-runner", max_threads=self.settings.max_enricher_threads
            )
            runtime.start()
            self._runtime = runtime
            timeout = self.settings.startup_timeout
            try:
                runtime.run(self._lifecycle.startup_all(timeout), timeout)
            except TimeoutError:
                report_still_starting(timeout)
        return self

    async def astart(self) -> EnricherRunner:
        """Start the enricher on the running loop."""
        if self._runtime is None and self._loop is None:
            self._loop = asyncio.get_running_loop()
            try:
                await self._lifecycle.startup_all(self.settings.startup_timeout)
            except TimeoutError:
                report_still_starting(self.settings.startup_timeout)
        return self

    def close(self) -> None:
        """Shut the enricher down and stop the runner's loop (from ``with``)."""
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            timeout = self.settings.shutdown_timeout
            try:
                try:
                    runtime.run(self._lifecycle.shutdown_all(timeout), timeout + SHUTDOWN_SLACK)
                except TimeoutError:
                    report_slow_shutdown(timeout, self._lifecycle.not_stopped())
            finally:
                runtime.stop(max(timeout, 1.0))
        self._close_pool()

    def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)  # daemon threads: one stuck ends with the process

    async def aclose(self) -> None:
        """Shut the enricher down (from ``async with``, or after :meth:`start`)."""
        if self._runtime is not None:
            await asyncio.to_thread(self.close)
            return
        if self._loop is not None:
            self._loop = None
            # Not wait_for(): past the timeout it would wait for the
            # cancelled shutdown, forever if a _shutdown ignores it.
            timeout = self.settings.shutdown_timeout
            closing = asyncio.get_running_loop().create_task(self._lifecycle.shutdown_all(timeout))
            if not (await asyncio.wait({closing}, timeout=timeout + SHUTDOWN_SLACK))[0]:
                report_slow_shutdown(timeout, self._lifecycle.not_stopped())
                closing.cancel()
            self._close_pool()

    def __enter__(self) -> EnricherRunner:
        return self.start()

    def __exit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> EnricherRunner:
        return await self.astart()

    async def __aexit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- events --------------------------------------------------------------------

    def run(
        self, event: Mapping[str, Any], method_name: str = "info", logger: WrappedLogger = None
    ) -> EnrichmentResult:
        """Enrich a copy of ``event`` (blocking).

        Raises:
            EnrichlogError: the runner is not started with :meth:`start`
                (``with``); an ``async with`` runner is used with :meth:`arun`.
        """
        if self._runtime is None:
            raise EnrichlogError(
                "EnricherRunner.run() needs a runner started with 'with' (or start()); "
                "one started with 'async with' takes 'await runner.arun(...)'"
            )
        return _delivered(self._runtime.run(self._enrich(dict(event), method_name, logger)))

    async def arun(
        self, event: Mapping[str, Any], method_name: str = "info", logger: WrappedLogger = None
    ) -> EnrichmentResult:
        """Enrich a copy of ``event`` without blocking the caller's loop.

        Raises:
            EnrichlogError: the runner is not started.
        """
        coro = self._enrich(dict(event), method_name, logger)
        if self._runtime is not None:
            return _delivered(await self._runtime.arun(coro))
        if self._loop is None:
            coro.close()
            raise EnrichlogError("EnricherRunner.arun() needs a started runner ('async with')")
        # A task of its own: the guard's deadline cancels the task it runs in.
        return _delivered(await asyncio.get_running_loop().create_task(coro))

    async def _unless_abandoned(
        self, guard: EnricherGuard, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> Outcome:
        return await _abandonable(guard, logger, method_name, event_dict, self._abandoned)

    async def _enrich(
        self, event_dict: EventDict, method_name: str, logger: WrappedLogger
    ) -> tuple[EnrichmentResult, BaseException | None]:
        """The result, and the interrupt a sync enricher raised (taken here,
        on the loop, which it would stop: raised by :func:`_delivered` in
        the caller)."""
        IN_ENRICHMENT.set(True)  # as the plan marks its calls: a log call inside is not enriched
        enricher, guard = self.enricher, self.guard
        error_field = self.settings.error_field
        interrupt = None
        if guard is not None:
            outcome = guard.lookup(logger, method_name, event_dict)
            if outcome is None:
                outcome = await self._unless_abandoned(guard, logger, method_name, event_dict)
        else:
            assert isinstance(enricher, SyncEnricher)
            # As the plan runs it: every exception a reason; an interrupt
            # from a blocking one (in a worker thread) a reason only.
            if not enricher.available:
                outcome = UNAVAILABLE
            elif enricher.blocking:
                loop = asyncio.get_running_loop()
                if self._pool is None:
                    self._pool = DaemonThreadPool(
                        self.settings.max_enricher_threads, "enrichlog-test-runner-blocking"
                    )
                context = contextvars.copy_context()
                try:
                    outcome = await asyncio.wait_for(
                        loop.run_in_executor(
                            self._pool,
                            functools.partial(
                                context.run,
                                call_in_worker,
                                enricher,
                                error_field,
                                logger,
                                method_name,
                                event_dict,
                            ),
                        ),
                        self.settings.enricher_timeout,
                    )
                except TimeoutError:
                    outcome = TIMEOUT
            else:
                outcome = call_sync(enricher.enrich, error_field, logger, method_name, event_dict)
                interrupt = take_interrupt() if INTERRUPTS else None
        return _merged(event_dict, enricher.name, outcome, error_field), interrupt


async def _abandonable(
    guard: EnricherGuard,
    logger: WrappedLogger,
    method_name: str,
    event_dict: EventDict,
    abandoned: set[asyncio.Task[Any]],
) -> Outcome:
    """``guard.run()`` in a task of its own (the guard's deadline cancels
    the task it runs in), waited for until it ends or is abandoned (it
    ignored its cancellation past the grace): then its outcome is the
    abandonment's, as in a container, which does not wait for it either."""
    loop = asyncio.get_running_loop()
    given_up: asyncio.Future[Outcome] = loop.create_future()

    def abandon(outcome: Outcome) -> None:
        if not given_up.done():
            given_up.set_result(outcome)

    call = loop.create_task(guard.run(logger, method_name, event_dict, abandon))
    try:
        await asyncio.wait({call, given_up}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        call.cancel()
        raise
    if call.done():
        return call.result()
    abandoned.add(call)
    call.add_done_callback(abandoned.discard)
    return given_up.result()


def _use_clock(guard: EnricherGuard, options: ResolvedOptions, clock: FakeClock) -> None:
    """Give the guard a cache and a breaker that read ``clock``, configured as
    the guard's own (which read the real clock)."""
    if guard.cache is not None:
        guard.use_cache(
            EnricherCache(
                options.cache_max_size,
                options.cache_ttl,
                error_ttl=options.cache_error_ttl,
                clock=clock,
            )
        )
    guard.breaker = CircuitBreaker(
        options.failure_threshold,
        options.recovery_timeout,
        half_open_max_calls=options.half_open_max_calls,
        name=guard.name,
        clock=clock,
    )


def _delivered(enriched: tuple[EnrichmentResult, BaseException | None]) -> EnrichmentResult:
    """The result; or, as a log call raises it once its line is written,
    the interrupt a sync enricher raised."""
    result, interrupt = enriched
    if interrupt is not None:
        raise interrupt
    return result


def _merged(
    event_dict: EventDict, name: str, outcome: Outcome, error_field: str | None
) -> EnrichmentResult:
    updated, removed, reason = outcome
    if reason is FILTERED_REASON:
        return EnrichmentResult(event_dict, {}, filtered=True)
    if reason is not None:
        errors = {name: reason}
        if error_field is not None:
            event_dict[error_field] = with_reasons(event_dict.get(error_field), errors)
        return EnrichmentResult(event_dict, errors)
    for key in removed:
        event_dict.pop(key, None)
    if updated:
        fill(event_dict, updated)
    return EnrichmentResult(event_dict, {})


def run_enricher(
    enricher: object,
    event: Mapping[str, Any],
    *,
    method_name: str = "info",
    settings: LoggingSettings | None = None,
    clock: FakeClock | None = None,
) -> EnrichmentResult:
    """Start ``enricher``, enrich a copy of ``event`` through its real guard,
    shut it down; return the enriched event and its recorded errors.

    ::

        event, errors = run_enricher(UserEnricher(), {"event": "checkout", "user_id": 42})
        assert event["user_name"] == "alice" and errors == {}

    Blocking: call it from sync code (an async test uses
    :func:`arun_enricher`). For several events sharing one cache and
    breaker, use ``with EnricherRunner(enricher) as runner: runner.run(...)``.
    """
    with EnricherRunner(enricher, settings=settings, clock=clock) as runner:
        return runner.run(event, method_name)


async def arun_enricher(
    enricher: object,
    event: Mapping[str, Any],
    *,
    method_name: str = "info",
    settings: LoggingSettings | None = None,
    clock: FakeClock | None = None,
) -> EnrichmentResult:
    """:func:`run_enricher` on the caller's event loop (the enricher starts,
    runs and stops there)."""
    async with EnricherRunner(enricher, settings=settings, clock=clock) as runner:
        return await runner.arun(event, method_name)


# -- output -----------------------------------------------------------------------


class LineSink:
    """An ``output=`` that keeps every rendered line (thread-safe).

    ::

        sink = LineSink()
        configure_logging(output=sink)
        ...
        assert sink.events()[0]["event"] == "checkout"
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partial = ""
        #: The lines written so far, without their newlines.
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        """Take text; each complete line is kept."""
        with self._lock:
            *complete, self._partial = (self._partial + text).split("\n")
            self.lines.extend(complete)
        return len(text)

    def events(self) -> list[dict[str, Any]]:
        """The lines parsed as JSON objects (the ``json`` format).

        Raises:
            EnrichlogError: a line is not a JSON object (``logfmt`` or
                ``console`` lines); the message names the first. Read
                :attr:`lines` for those formats.
        """
        parsed = []
        for number, line in enumerate(list(self.lines), 1):
            try:
                value = json.loads(line)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                shown = line if len(line) <= 200 else line[:200] + "..."
                raise EnrichlogError(
                    f"LineSink.events() reads JSON lines, and line {number} is not a JSON "
                    f"object: {shown!r}; read .lines for the logfmt and console formats, or "
                    f"configure format='json'"
                )
            parsed.append(value)
        return parsed

    def clear(self) -> None:
        """Forget the lines kept so far."""
        with self._lock:
            self.lines.clear()
            self._partial = ""
