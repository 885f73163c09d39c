"""`LoggingContainer` and `configure_logging`: one configured logging setup.

The container is the one place that builds and tears down the engine: the
enricher registry, the plan, the runtime, the lifecycle manager, the
pipeline, the processor and the output; start-up, flush, shutdown, exit,
SIGTERM and fork are handled here. ``configure_logging`` builds one,
validates everything before it touches the previous one, installs it with
``structlog.configure`` and starts the enrichers.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import functools
import logging
import logging.handlers
import math
import numbers
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from .engine.chain import LoggerLevels, post_processors, pre_processors, render_fallbacks
from .engine.lifecycle import (
    SHUTDOWN_SLACK,
    EnricherLifecycleManager,
    report_slow_shutdown,
    retrieve_outcome,
)
from .engine.logger import SharedChain, make_bound_logger_class
from .engine.output import LineWriter, TailWriter, logger_factory, open_output
from .engine.pipeline import CLOSED, EventPipeline, PendingEvent
from .engine.plan import IN_ENRICHMENT, EnrichmentPlan
from .engine.processor import AsyncEnricherProcessor
from .engine.registry import EnricherRegistry
from .engine.runtime import CANCEL_GRACE, EnrichmentRuntime, LoopRuntime, Runtime, resolver
from .enricher import AsyncEnricher, Enricher, call_site_processors
from .exceptions import EnricherConfigError, EnrichlogError, did_you_mean
from .integrations import prometheus as _observability
from .metrics import MetricsSnapshot
from .options import MAX_TIMEOUT, sync_enricher_options_error
from .reporting import reporting_logger
from .settings import LoggingSettings, require_settings, resolve_settings
from .transport import transport_for
from .uri.masking import mask_secrets

if TYPE_CHECKING:
    from .transport.nats import PublishingWriter
from .stdlib import RootBridge, install_root_handler, remove_root_handler

__all__ = [
    "DrainReport",
    "LoggingContainer",
    "build_processor_chain",
    "configure_logging",
    "current_container",
    "get_logger",
    "reset_logging",
]

_STARTUP_TIMEOUT = 30.0

#: What the shutdown report holds.
_REPORTED = ("written", "dropped", "pending", "write_failed", "abandoned", "filtered")
#: What it holds besides when they apply: ``salvaged`` when the drain timed
#: out; with a transport, what was ``published``, ``spooled`` or lost.
_DRAINED = ("salvaged", "published", "spooled", "spool_dropped", "rejected", "truncated")

_report = reporting_logger("enrichlog")

#: Seconds after a SIGTERM during which another one is taken for the same
#: signal sent twice (to the process, then to its group), not a second.
SIGTERM_REPEAT_WINDOW = 0.25

#: Seconds the drain thread gives the main thread to end the process by
#: SIGTERM, once drained, before it ends it itself (a main thread held in
#: C code never runs the Python handler that does it).
_SIGTERM_END_GRACE = 2.0

# The container structlog is configured with, and every container that may
# need a fresh runtime after fork(). Both mirror structlog's own global
# configuration; nothing else in enrichlog is process-wide.
_current: LoggingContainer | None = None
#: Held while a container is replaced or started: one runs at a time.
_current_lock = threading.RLock()
#: Set while configure_logging() replaces one container by another; the
#: stdlib bridge of the outgoing one, left on the root logger for the
#: incoming one meanwhile.
_replacing = False
_bridge_handed_over: RootBridge | None = None
_live: weakref.WeakSet[LoggingContainer] = weakref.WeakSet()
# The processor list and the writer handed to structlog, reused across
# reconfigurations and changed in place: structlog's cached loggers keep
# references to both, so a module-level logger used before a reconfigure
# follows the new configuration instead of a shut-down container.
_installed_chain = SharedChain()
_installed_writer: LineWriter | None = None


class DrainReport(dict[str, int]):
    """What :meth:`LoggingContainer.shutdown` achieved; keys are also
    attributes (``report.written``).

    ``written``: lines written while the container ran, whichever thread
    wrote them; ``dropped``: events dropped under the overflow policy;
    ``pending``: events still not written when shutdown returned;
    ``write_failed``: lines the output refused; ``abandoned``: enricher calls
    that ignored their cancellation; ``filtered``: events an enricher
    filtered out on purpose; ``salvaged`` (only when the drain timed out):
    events written with what they had.
    """

    def __getattr__(self, name: str) -> int:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


#: The code of ``logging.Handler.handle``, which holds the handler's lock
#: while the handler formats and writes a record.
_HANDLE_CODE = logging.Handler.handle.__code__


@contextlib.contextmanager
def _handler_locks_released() -> Iterator[None]:
    """Release, meanwhile, the locks of the stdlib handlers this thread is
    inside (a formatter waiting for enrichment): an enricher's own record
    (a database driver's warning) goes to the same handler from the
    runtime's thread, which would wait for the lock while this thread waits
    for it, and no timer of the loop could fire. The handler is formatting,
    not writing, so another record may be written meanwhile."""
    released: list[tuple[Any, Any]] = []
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        if frame.f_code is _HANDLE_CODE:
            # The innermost handler only: the one formatting. One further
            # out (a MemoryHandler flushing its buffer into this one) is in
            # the middle of its own work, as is a rotating file handler
            # (which formats to decide whether to roll over).
            handler = frame.f_locals.get("self")
            lock = getattr(handler, "lock", None)
            # An RLock of this thread (the one Handler.createLock makes):
            # released whatever its depth, as threading.Condition does.
            if (
                lock is not None
                and not isinstance(handler, logging.handlers.BaseRotatingHandler)
                and getattr(lock, "_is_owned", lambda: False)()
            ):
                released.append((lock, lock._release_save()))
            break
        frame = frame.f_back
    try:
        yield
    finally:
        for lock, state in reversed(released):
            lock._acquire_restore(state)


def get_logger(*args: Any, **initial_values: Any) -> Any:
    """A structlog bound logger: sync methods (``info``) and async ones
    (``ainfo``) that await enrichment without blocking the caller's loop.

    ``get_logger("api")`` names the logger: its events carry ``logger:
    "api"``, and the ``levels`` setting may give that name a level of its own.
    """
    return structlog.get_logger(*args, **initial_values)


def current_container() -> LoggingContainer | None:
    """The container :func:`configure_logging` installed last, until its
    shutdown completes, or the one started directly
    (``LoggingContainer(...).start()``) that runs; ``None`` when there is
    none."""
    current = _current
    return current if current is not None and not current.closed else _running_container()


def reset_logging() -> None:
    """Shut the current container down (if any), forget it, reset structlog
    to its defaults and clear the structlog context variables bound in the
    current context (``bind_contextvars``): a clean slate, as between tests.

    Raises:
        EnrichlogError: called from inside an enricher (nothing changed).
    """
    global _current
    _refuse_in_enricher("reset_logging()")
    with _current_lock:
        current, _current = current_container(), None
    if current is not None:
        current.shutdown()
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


class LoggingContainer:
    """A configured logging setup: enrichers, runtime, pipeline and output.

    Usable as a sync and an async context manager (shut down on exit).
    Created by :func:`configure_logging`; construct it directly only to
    validate a configuration without installing it.

    Raises:
        EnricherConfigError: an enricher, URI or setting is not usable.
        EnricherDependencyError: a cycle, missing dependency or duplicate.
    """

    #: Shut down by the interpreter's exit: the stdlib bridge stays, so a
    #: library logging later at exit (closing its pools) is written as
    #: structlog's own late calls are, on the calling thread. (A class
    #: attribute, set on the instance only then: one instance attribute
    #: more costs every attribute read of the log call's path.)
    exiting = False

    def __init__(
        self, settings: LoggingSettings | None = None, enrichers: Iterable[object] = ()
    ) -> None:
        require_settings(settings)
        self.settings = settings = settings or LoggingSettings()
        self.registry = EnricherRegistry(
            [*(_from_uri(e) for e in _enricher_list(enrichers)), *self._uri_enrichers()]
        )
        levels = self.registry.levels()
        # -- scale-out (enrichlog.transport): publish instead of writing ----
        #: The producer transport (``None`` unless ``settings.transport``);
        #: its ``metrics()`` count what was published, spooled and lost.
        self.transport = transport_for(settings)
        #: A worker's counters, reported through metrics() (report_worker_metrics).
        self._worker_metrics: Callable[[], Any] | None = None
        self._worker_lines: Any = None
        if self.transport is not None and not self.transport.enrich_locally:
            levels = ()  # the workers enrich
        else:
            _check_enricher_options(settings, self.registry)
        # -- end scale-out ---------------------------------------------------
        self._runtime: Runtime = (
            LoopRuntime(max_threads=settings.max_enricher_threads)
            if settings.runtime == "loop"
            else EnrichmentRuntime(
                max_threads=settings.max_enricher_threads,
                loop_factory=_loop_factory(settings.event_loop),
            )
        )
        self._lifecycle = EnricherLifecycleManager(
            [enricher for level in levels for enricher in level],
            health_check_interval=settings.health_check_interval,
        )
        if isinstance(self._runtime, LoopRuntime):
            # The loop ends without a shutdown (asyncio.run returns): the
            # enrichers' pools are closed while it still turns.
            self._runtime.add_closing_hook(lambda: self._stop_enrichers(settings.shutdown_timeout))
        self._plan = EnrichmentPlan(levels, settings, self._runtime.run_blocking, PendingEvent)
        if isinstance(self._runtime, EnrichmentRuntime):
            # Its loop closed: the calls that ignored shutdown's cancellation
            # to the end never finish, and are counted then.
            self._runtime.add_exit_hook(self._plan.count_left_behind)
        self._writer: TailWriter | PublishingWriter = (
            TailWriter(post_processors(settings))
            if self.transport is None
            else self.transport.writer  # scale-out: publishes each event
        )
        self._pipeline = EventPipeline(
            self._runtime,
            self._plan,
            self._writer,
            queue_size=settings.queue_size,
            overflow=settings.overflow,
            block_timeout=settings.overflow_block_timeout,
            max_in_flight=settings.max_in_flight,
            report_interval=settings.drop_report_interval,
        )
        background = (
            settings.effective_delivery(runtime_enrichers=self._plan.needs_runtime) == "background"
        )
        #: The structlog processor, ``None`` when no enricher is configured
        #: (structlog then renders and writes every event by itself).
        self.processor: AsyncEnricherProcessor | None = (
            AsyncEnricherProcessor(
                self._plan,
                self._pipeline,
                self,
                runtime=self._runtime,
                background=background,
                # Every level's slowest enricher, the time a full queue may
                # block, and a second of slack.
                inline_wait=self._plan.wait_bound() + settings.overflow_block_timeout + 1.0,
            )
            if levels
            else None
        )
        self.output: LineWriter | None = None
        self._lock = threading.RLock()
        self._running = False
        self._engine_started = False
        # runtime="loop": the enrichers' start-up, running on the loop.
        self._starting: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[Any] | None = None
        self._draining: asyncio.Task[DrainReport] | None = None
        #: An ``async with`` cancelled while starting: shut down at once.
        self._start_abandoned = False
        self._drain_report: DrainReport | None = None
        self._shutting_down = False
        self._shut_down = threading.Event()
        #: Called once shut down: the ashutdown() calls waiting on a loop.
        self._on_shut_down: list[Callable[[], None]] = []
        self._previous_sigterm: Any = None
        # The writer structlog calls while this container is installed, and
        # its counts when it was: lines written by any thread are counted
        # there.
        self._lines: LineWriter | None = None
        self._lines_before = (0, 0)
        #: The lines written and failed when the container shut down: the
        #: shared writer goes on counting for the container that follows.
        self._lines_at_shutdown: tuple[int, int] | None = None
        #: The writer's own counts when this container's were taken at
        #: shutdown, and those a container replacing another (by
        #: configure_logging) starts counting from: every line written in
        #: between, by threads still logging, counts for the new one.
        self._lines_mark: tuple[LineWriter, int, int] | None = None
        #: Seconds the flush at interpreter exit waited: the exit's shutdown
        #: has the rest of one shutdown_timeout.
        self._exit_flush_took: float | None = None
        self._handover: tuple[LineWriter, int, int] | None = None
        #: The root logger's handler with ``stdlib=True``, while installed.
        self._stdlib_bridge: RootBridge | None = None

    def _uri_enrichers(self) -> list[Enricher]:
        if not self.settings.enrichers:
            return []
        from .uri.factory import EnricherFactory  # noqa: PLC0415 - only when URIs are used

        return [EnricherFactory.build(uri) for uri in self.settings.enrichers]

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<LoggingContainer {state} enrichers={self.registry.resolve_dependencies()}>"

    def chain(self) -> list[Processor]:
        """The structlog processors this container installs."""
        enrichment = [] if self.processor is None else [self.processor]
        call_site = call_site_processors(self.registry)
        return [*pre_processors(), *call_site, *enrichment, *self._writer.tail]

    # -- start -------------------------------------------------------------

    def start(self) -> LoggingContainer:
        """Open the output, start the enrichers, install structlog config.

        With ``runtime="thread"`` the enrichers start before this returns
        (at most ``startup_timeout``). With ``runtime="loop"`` it must run in
        the application's event loop, which it never blocks: the enrichers
        start on it in the background, and events logged meanwhile wait for
        them (at most ``startup_timeout``); ``await`` :meth:`astartup` to
        wait for them.

        Raises:
            EnricherConfigError: the output cannot be opened, or
                ``runtime="loop"`` and no event loop runs here.
        """
        return self._start(signals=True)

    def _start(self, *, signals: bool) -> LoggingContainer:
        """:meth:`start`; ``signals``: install the SIGTERM handler (from
        this thread: :meth:`astartup` starts on a worker thread, and installs
        it from its own)."""
        with _current_lock, self._lock:
            if self._running:
                return self
            other = _running_container()
            if other is not None and other.loop_ended:
                # Its loop ended without a shutdown: nothing of it runs.
                other.shutdown()
                other = None
            if other is not None:
                # structlog's configuration, the writer it calls and the
                # exit hooks are the process's: two containers would write
                # each other's lines and count them twice.
                raise EnrichlogError(
                    f"another logging container is running ({other!r}); shut it down first, "
                    "or call configure_logging(), which replaces it. This one was not started"
                )
            if self.transport is not None:  # scale-out: raises on a conflicting stream
                self.transport.start()
            if self.output is None:
                self.output = open_output(self.settings.output)
            if self.processor is not None:
                if isinstance(self._runtime, LoopRuntime):
                    self._start_on_the_loop()
                else:
                    self._start_in_the_thread()
            self._lines = _install(self.chain(), self.output, self.settings, self.processor)
            handover, self._handover = self._handover, None
            if handover is None or handover[0] is not self._lines:
                handover = (self._lines, self._lines.written, self._lines.write_failed)
            self._lines_before = handover[1:]
            self._lines_at_shutdown = None
            self._running = True
            _live.add(self)
            atexit.register(self._at_exit)
            _drain_before_interpreter_exit()
            _finalize_in_multiprocessing_child(self)
            if signals:
                self._install_sigterm_handler()
            # Metrics: followed for Prometheus; /metrics served if metrics_port is set.
            self.observe()
            self._stdlib_bridge = install_root_handler(self, _take_bridge())
        return self

    async def astartup(self) -> LoggingContainer:
        """:meth:`start`, then wait until the enrichers have started (at most
        ``startup_timeout``), without blocking the caller's event loop."""
        if not isinstance(self._runtime, LoopRuntime):
            # Started on a worker thread (it blocks while the enrichers
            # start); the SIGTERM handler is installed from here, which may
            # be the main thread, where only it can be.
            await anyio.to_thread.run_sync(functools.partial(self._start, signals=False))
            self._install_sigterm_handler()
            return self
        self.start()
        starting = self._starting
        if starting is not None and not starting.done():
            if starting.get_loop() is not asyncio.get_running_loop():
                await _wait_from_another_loop(starting, self.settings.startup_timeout + 1.0)
                return self
            try:
                await asyncio.shield(starting)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the caller's own cancellation
                # A shutdown (from another task) cut the start-up short: not
                # the caller's cancellation.
        return self

    def _start_in_the_thread(self) -> None:
        try:
            self.start_enrichers(self.settings.startup_timeout)
        except TimeoutError:
            report_still_starting(self.settings.startup_timeout)

    def _start_on_the_loop(self) -> None:
        """Bind to the running loop and start the enrichers there in the
        background; events queue unsettled until they are up."""
        self._runtime.start()  # raises EnricherConfigError without a running loop
        self._engine_started = True
        assert self.processor is not None
        self.processor.defer_settling(True)
        self._pipeline.hold()
        self._starting = self._runtime.loop.create_task(
            self._startup_then_release(), name="enrichlog-startup"
        )

    async def _startup_then_release(self) -> None:
        try:
            await self._lifecycle.startup_all(self.settings.startup_timeout)
        except TimeoutError:
            _report.warning(
                "enrichlog: enrichers still starting after %ss; events go on, skipping "
                "them as 'unavailable' until they are up",
                self.settings.startup_timeout,
            )
        finally:
            if self.processor is not None:
                self.processor.defer_settling(False)
            self._pipeline.release()

    def start_enrichers(self, timeout: float | None = None) -> dict[str, bool]:
        """Start the runtime and every enricher concurrently (blocking);
        return which enrichers started.

        A failure marks that enricher unavailable and is reported once
        through the stdlib logger ``enrichlog``; the others carry on.

        Raises:
            TimeoutError: the enrichers were still starting after
                ``timeout``; they go on starting in the background.
        """
        self._runtime.start()
        self._engine_started = True
        return self._runtime.run(self._lifecycle.startup_all(timeout), timeout)

    async def astart_enrichers(self) -> dict[str, bool]:
        """:meth:`start_enrichers` for async code."""
        self._runtime.start()
        self._engine_started = True
        return await self._runtime.arun(self._lifecycle.startup_all())

    def _install_sigterm_handler(self) -> None:
        if not self.settings.handle_sigterm or (self.processor is None and self.transport is None):
            return
        if threading.current_thread() is not threading.main_thread():
            if self._plan.needs_runtime:
                _report.warning(
                    "enrichlog: configured on thread %r, not the main thread, so no SIGTERM "
                    "handler was installed and events still queued when SIGTERM arrives "
                    "would be lost; call container.install_signal_handlers() from the main "
                    "thread (or set handle_sigterm=False to silence this)",
                    threading.current_thread().name,
                )
            return
        self.install_signal_handlers()

    def install_signal_handlers(self) -> bool:
        """Drain on SIGTERM: install a handler that flushes and shuts the
        container down, then lets SIGTERM end the process as it would have.

        Called by :meth:`start` on the main thread; call it yourself from the
        main thread when the container was configured on another one. Does
        nothing when the application handles SIGTERM itself. Returns whether
        the handler is installed.

        Raises:
            EnrichlogError: not called on the main thread (only it may
                install signal handlers).
        """
        if threading.current_thread() is not threading.main_thread():
            raise EnrichlogError(
                "install_signal_handlers() must be called on the main thread "
                f"(called on {threading.current_thread().name!r})"
            )
        try:
            current = signal.getsignal(signal.SIGTERM)
            if current == self._on_sigterm:
                return True
            owner = getattr(current, "__self__", None)
            if isinstance(owner, LoggingContainer) and not owner.running:
                # A shut-down container's, left by a shutdown on another
                # thread: not the application's. Taken over, with what it
                # replaced.
                previous = owner._previous_sigterm
                owner._previous_sigterm = None
                signal.signal(signal.SIGTERM, self._on_sigterm)
                self._previous_sigterm = signal.SIG_DFL if previous is None else previous
                return True
            if current is not signal.SIG_DFL:
                return False  # the application handles SIGTERM itself
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):  # no signals here (embedded interpreter)
            return False
        return True

    def _on_sigterm(self, _signum: int, _frame: FrameType | None) -> None:
        # Runs on the main thread, possibly inside a log call holding a lock:
        # drain from another thread, then die the way SIGTERM would have.
        received = time.monotonic()
        drained = False

        def again(_signum: int, _frame: FrameType | None) -> None:
            # A second SIGTERM ends the process at once (a process manager
            # insisting), unless it is the first one sent twice: coreutils'
            # timeout signals the process, then its process group, a few
            # microseconds apart, and that used to lose the whole queue.
            if drained or time.monotonic() - received >= SIGTERM_REPEAT_WINDOW:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, again)

        def drain_then_terminate() -> None:
            nonlocal drained
            try:
                self.shutdown()
            finally:
                drained = True
                os.kill(os.getpid(), signal.SIGTERM)  # handled by again(), on the main thread
                time.sleep(_SIGTERM_END_GRACE)
                os._exit(128 + signal.SIGTERM)  # the status a shell shows for SIGTERM

        threading.Thread(target=drain_then_terminate, name="enrichlog-sigterm").start()

    def _restore_sigterm_handler(self) -> None:
        """Put SIGTERM's handler back, from the main thread (elsewhere it
        is kept for a later call from there: ashutdown()'s, or the next
        container's taking over, see :meth:`install_signal_handlers`)."""
        if self._previous_sigterm is None:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
        except (ValueError, OSError):
            pass
        self._previous_sigterm = None

    # -- flush and shutdown --------------------------------------------------

    def enriches_on_this_thread(self) -> bool:
        """Whether enrichment runs on the calling thread (the application's
        loop with ``runtime="loop"``, or an enricher's thread), where
        :meth:`flush` cannot wait for it."""
        return self._runtime.in_runtime_thread()

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything logged before the call is written (or
        dropped); return whether that happened within ``timeout``. On the
        thread enrichment runs on, it cannot wait: ``False`` at once while
        events are pending (``await`` :meth:`aflush` on the loop)."""
        return self._pipeline.flush(_wait_limit("flush()", timeout))

    async def aflush(self, timeout: float | None = None) -> bool:
        """:meth:`flush` without blocking the caller's event loop."""
        return await self._pipeline.aflush(_wait_limit("aflush()", timeout))

    def shutdown(self, timeout: float | None = None) -> DrainReport:
        """Drain pending events (up to ``timeout``, default the
        ``shutdown_timeout`` setting), stop the enrichers in reverse
        dependency order, stop the runtime and close the output.

        Idempotent, and safe from several threads at once: every caller gets
        the same report (``written``, ``dropped``, ``pending``...). With
        ``runtime="loop"``, called on the loop itself it cannot wait for
        enrichment without blocking that loop: pending events are written at
        once with what they have; ``await`` :meth:`ashutdown` to drain.

        An interrupt landing while it waits (Ctrl-C, or a signal handler's
        ``sys.exit()``) stops the wait for enrichment: the pending events are
        written at once with what they have, as when ``timeout`` runs out,
        and the interrupt is raised once the container is shut down.

        Raises:
            EnrichlogError: called from enrichlog's own runtime (an enricher).
            TypeError, ValueError: ``timeout`` is not a number of seconds
                (nothing changed).
        """
        self._refuse_on_runtime_thread("shutdown()")
        seconds = self._timeout("shutdown()", timeout)
        if not self._claim_shutdown():
            runtime = self._runtime
            if (
                isinstance(runtime, LoopRuntime)
                and runtime.in_runtime_thread()
                and not self._shut_down.is_set()
            ):
                # The drain runs on this very loop (an ashutdown() in
                # progress): waiting for it would block the loop it needs
                # (a configure_logging() here froze it for 3 x
                # shutdown_timeout + 5 s). Its pending events are written
                # now, with what they have; the drain ends on its own.
                self._pipeline.abandon_enrichment()
                self._plan.stop_counting()
                counts = self._counts()
                # Its lines end here, as at any shutdown: a line logged from
                # now on (by the application, or by the container replacing
                # this one) counts for neither report.
                self._lines_at_shutdown = (counts["written"], counts["write_failed"])
                return DrainReport({key: counts[key] for key in _REPORTED})
            return self._awaited_report()
        deadline = time.monotonic() + seconds
        drained: dict[str, int] = {}
        interrupt: BaseException | None = None
        try:
            drained, interrupt = self._drain_shielded(seconds)
        finally:
            report = self._finish_shutdown(drained, deadline)
        if interrupt is not None:
            raise interrupt
        return report

    def _drain(self, timeout: float) -> dict[str, int]:
        """Drain the engine, then the transport; the drain report."""
        drained = self._stop_engine(timeout) if self._engine_started else {}
        drained.update(self._stop_transport(timeout))
        return drained

    def _drain_shielded(self, timeout: float) -> tuple[dict[str, int], BaseException | None]:
        """:meth:`_drain`, safe from interrupts; and the interrupt, if any.

        Only the main thread runs signal handlers, so there the drain runs
        on a thread of its own: an interrupt (Ctrl-C, a handler's
        ``sys.exit()``) used to cut it short and lose every event still
        pending. Now the first one gives up waiting for enrichment (the
        pending events are written at once with what they have, as when the
        timeout runs out); the drain ends, bounded by ``timeout``, and the
        caller raises the interrupt.
        """
        if (
            threading.current_thread() is not threading.main_thread()
            or self._runtime.in_runtime_thread()  # the loop's own thread: nothing is waited for
        ):
            return self._drain(timeout), None
        outcome: list[dict[str, int] | BaseException] = []
        done = threading.Event()

        def drain() -> None:
            try:
                outcome.append(self._drain(timeout))
            except BaseException as exc:  # raised to the caller, below
                outcome.append(exc)
            finally:
                done.set()

        drainer = threading.Thread(target=drain, name="enrichlog-shutdown")
        try:
            drainer.start()
        except RuntimeError:  # no new thread (the interpreter is ending)
            return self._drain(timeout), None
        interrupt: BaseException | None = None
        # An Event, not join(): an interrupted join() takes the thread for
        # ended (CPython releases the lock the running thread holds).
        while not done.is_set():
            try:
                done.wait()
            except BaseException as exc:  # an interrupt: hurry, not abandon
                if interrupt is None:
                    interrupt = exc
                    self._hurry_drain()
        drainer.join()
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result, interrupt

    def _hurry_drain(self) -> None:
        """Stop waiting for enrichment: write the pending events with what
        they have (the drain then ends as after its timeout)."""
        runtime = self._runtime
        if self._engine_started and runtime.is_running and not runtime.in_runtime_thread():
            with contextlib.suppress(RuntimeError):  # the runtime stopped meanwhile
                runtime.call_soon(self._pipeline.abandon_enrichment)

    async def ashutdown(self, timeout: float | None = None) -> DrainReport:
        """:meth:`shutdown` without blocking the caller's event loop; with
        ``runtime="loop"``, on that loop, the drain is awaited there."""
        self._refuse_on_runtime_thread("ashutdown()")
        seconds = self._timeout("ashutdown()", timeout)
        runtime = self._runtime
        if not (isinstance(runtime, LoopRuntime) and runtime.in_runtime_thread()):
            try:
                return await anyio.to_thread.run_sync(self.shutdown, seconds)
            finally:
                # Shut down on a worker thread, which cannot touch signal
                # handlers: the awaiting thread (the main one, maybe) puts
                # SIGTERM's back.
                self._restore_sigterm_handler()
        if not self._claim_shutdown():
            return await self._await_report()
        # A task of its own, shielded: a cancelled caller (a wait_for around
        # it) stops waiting, not the drain (which used to stop half-way, its
        # report counting the events it had not written yet as pending).
        draining = asyncio.get_running_loop().create_task(self._ashutdown_on_the_loop(seconds))
        draining.add_done_callback(retrieve_outcome)
        self._draining = draining
        return await asyncio.shield(draining)

    async def _await_report(self) -> DrainReport:
        """On the loop: the report of the shutdown another caller runs,
        awaited without a thread. (Each caller that a ``wait_for`` cut used to
        leave a thread of asyncio's default executor waiting for it; seven
        took them all, and the drain's own hand-off to a thread queued behind
        them until they gave up, at 3 x ``shutdown_timeout`` + 5 s.)"""
        draining = self._draining
        loop = asyncio.get_running_loop()
        if draining is not None and draining.get_loop() is loop:
            return await asyncio.shield(draining)
        if not self._shut_down.is_set():
            # Shut down by another thread (or loop): woken by its end.
            done: asyncio.Future[None] = loop.create_future()
            wake = resolver(loop, done)
            with self._lock:
                waiting = not self._shut_down.is_set()
                if waiting:
                    self._on_shut_down.append(wake)
            if waiting:
                try:
                    await asyncio.wait({done}, timeout=self.settings.shutdown_timeout * 3 + 5)
                finally:
                    with self._lock, contextlib.suppress(ValueError):
                        self._on_shut_down.remove(wake)
        runtime = self._runtime
        closing = (
            runtime.ensure_closing()
            if isinstance(runtime, LoopRuntime) and runtime.bound_loop is loop
            else None
        )
        if closing is not None and not closing.done():
            # That shutdown found this loop blocked: the enrichers stop now.
            await asyncio.wait({closing}, timeout=self.settings.shutdown_timeout + CANCEL_GRACE)
        return self._drain_report or DrainReport(written=0, dropped=0, pending=0)

    async def _ashutdown_on_the_loop(self, seconds: float) -> DrainReport:
        deadline = time.monotonic() + seconds
        drained: dict[str, int] = {}
        try:
            if self._engine_started:
                drained = await self._astop_engine(seconds)
            if self.transport is not None:
                drained.update(await asyncio.to_thread(self._stop_transport, seconds))
        finally:
            report = self._finish_shutdown(drained, deadline)
        return report

    def _stop_transport(self, timeout: float) -> dict[str, int]:
        """Scale-out: publish what the drain handed over, spool the rest;
        what was published, spooled and lost (nothing without a transport)."""
        return {} if self.transport is None else dict(self.transport.stop(timeout))

    def _timeout(self, what: str, timeout: float | None) -> float:
        """A drain's timeout: ``timeout`` checked, or the setting."""
        seconds = _wait_limit(what, timeout)
        return self.settings.shutdown_timeout if seconds is None else seconds

    def _claim_shutdown(self) -> bool:
        """True for the one caller that shuts down; the others wait for it."""
        with self._lock:
            if self._shutting_down:
                return False
            self._shutting_down = True
            self._running = False
            return True

    def _awaited_report(self) -> DrainReport:
        self._shut_down.wait(self.settings.shutdown_timeout * 3 + 5)
        return self._drain_report or DrainReport(written=0, dropped=0, pending=0)

    def _finish_shutdown(self, drained: dict[str, int], deadline: float) -> DrainReport:
        """Close the output, forget the exit and signal hooks, and report.
        An output blocked in a write is waited for until ``deadline`` (the
        drain's own, already spent when the drain waited for it), then left
        as it is."""
        try:
            self._pipeline.report_drops_left()
            if self._stdlib_bridge is not None and not self.exiting:
                if _replacing:  # the next container takes it over
                    _hand_over_bridge(self._stdlib_bridge)
                else:
                    remove_root_handler(self._stdlib_bridge)
                self._stdlib_bridge = None
            if self.output is not None:
                released = _installed_writer is None or _installed_writer.release(
                    self.output, max(0.1, deadline - time.monotonic())
                )
                # A writer blocked in a write (a reader that stopped reading)
                # is left as it is: waiting for it once is enough.
                self.output.close(self.settings.shutdown_timeout if released else 0.0)
            if self._lines is not None and self._lines is not self.output:
                self._lines.report_failures()
            atexit.unregister(self._at_exit)
            self._restore_sigterm_handler()
            _live.discard(self)
        finally:
            self._plan.stop_counting()  # from here, events count for no container
            self._lines_mark = self._read_lines()
            counts = self._counts(self._lines_mark)
            self._lines_at_shutdown = (counts["written"], counts["write_failed"])
            report = DrainReport({key: value for key, value in counts.items() if key in _REPORTED})
            report.update({key: drained[key] for key in _DRAINED if key in drained})
            # Metrics: keep the final counters; stop /metrics, releasing its port.
            _observability.container_stopped(self)
            self._drain_report = report
            self._shut_down.set()
            with self._lock:
                waiting, self._on_shut_down = self._on_shut_down, []
            for wake in waiting:
                wake()
        return report

    def _read_lines(self) -> tuple[LineWriter, int, int] | None:
        """The installed writer and its counts of lines written and failed,
        read once; ``None`` when none is installed."""
        lines = self._lines
        return None if lines is None else (lines, lines.written, lines.write_failed)

    def _counts(
        self,
        mark: tuple[LineWriter, int, int] | None = None,
        pipeline: Mapping[str, Any] | None = None,
    ) -> dict[str, int]:
        """Lines written (by any thread) and failed, events dropped, filtered
        and still pending, calls abandoned, renderer fallbacks; the lines
        as of ``mark`` (the writer's counts, read once) when given, the
        pipeline's counts from its ``pipeline`` metrics when given."""
        if pipeline is None:
            pipeline = self._pipeline.metrics()
        if self._lines_at_shutdown is not None:
            written, write_failed = self._lines_at_shutdown
        elif (mark := mark or self._read_lines()) is not None:
            written = mark[1] - self._lines_before[0]
            write_failed = mark[2] - self._lines_before[1]
        elif self._worker_lines is not None:
            written = self._worker_lines.written
            write_failed = self._worker_lines.write_failed
        else:  # not installed: only the lines the runtime wrote are known
            written, write_failed = pipeline["written"], 0
        return {
            "written": written,
            "write_failed": write_failed,
            "dropped": pipeline["dropped"],
            "filtered": pipeline["filtered"] + (self.processor.filtered if self.processor else 0),
            "pending": pipeline["pending"],
            "abandoned": self._plan.abandoned(),
            "render_fallbacks": render_fallbacks(self._writer.tail),
        }

    def _stop_engine(self, timeout: float) -> dict[str, int]:
        """Drain the pipeline, stop the enrichers (dependants first), stop
        the runtime; the drain report."""
        runtime = self._runtime
        if isinstance(runtime, LoopRuntime) and (
            runtime.in_runtime_thread() or not runtime.is_running
        ):
            return self._stop_on_the_loop_now()
        report = self._pipeline.close(timeout)
        stuck = report.pop("unresponsive", 0)  # its thread would not answer either
        if runtime.is_running and not runtime.in_runtime_thread() and not stuck:
            try:
                runtime.run(self._lifecycle.shutdown_all(timeout), timeout + SHUTDOWN_SLACK)
            except TimeoutError:
                report_slow_shutdown(timeout, self._lifecycle.not_stopped())
            if isinstance(runtime, LoopRuntime):  # (the thread's: as its loop closes)
                with contextlib.suppress(TimeoutError, RuntimeError):  # the loop is gone
                    runtime.run(self._count_left_behind(), CANCEL_GRACE)
        # The application's loop did not answer: the exit hooks write its
        # pending events here, with what they have.
        salvaging = bool(stuck) and isinstance(runtime, LoopRuntime)
        if salvaging:
            self._stop_enrichers_when_the_loop_answers(timeout)
        # From here log calls write their own events; the runtime's exit hook
        # writes whatever raced the drain, on its own thread.
        self._pipeline.stop_accepting()
        if not runtime.in_runtime_thread():
            written = self._pipeline.report()["written"] if salvaging else 0
            # Long enough for the loop's last cancellation round: calls that
            # ignore it are counted (abandoned) as it closes, before the
            # counts are final.
            runtime.stop(0.1 if stuck else max(timeout, CANCEL_GRACE + 0.5))
            if salvaging:
                report["salvaged"] = report.get("salvaged", 0) + (
                    self._pipeline.report()["written"] - written
                )
            if runtime.lingering:
                _report.warning(
                    "enrichlog: the runtime did not stop within %.1fs (an enricher or the "
                    "output blocks its thread, or a task ignores its cancellation); %d "
                    "event(s) will be written when it does",
                    max(timeout, 1.0),
                    self._pipeline.pending,
                )
        return report

    def _stop_enrichers_when_the_loop_answers(self, timeout: float) -> None:
        """The application's loop did not answer the drain (a handler, or an
        enricher, blocking it): the pending events are written now, from
        this thread, and the enrichers are shut down once the loop gets back
        to them (their pools belong to it), which nothing else would do."""
        runtime = self._runtime
        assert isinstance(runtime, LoopRuntime)
        _report.warning(
            "enrichlog: the application's event loop did not answer within %.1fs (a call "
            "that blocks it, in the application or an enricher?); %d pending event(s) are "
            "written now with what they have, and the enrichers are shut down when the "
            "loop gets back to them",
            timeout,
            self._pipeline.pending,
        )
        runtime.close_when_free()

    async def _astop_engine(self, timeout: float) -> dict[str, int]:
        """:meth:`_stop_engine` on the application's loop: awaited."""
        report = await self._pipeline.aclose(timeout)
        await self._stop_enrichers(timeout)
        self._pipeline.stop_accepting()
        self._runtime.stop(timeout)
        self._plan.count_left_behind()
        return report

    async def _count_left_behind(self) -> None:
        """On the loop, once shutdown is over: the calls that still ignore
        its cancellation (they had the drain's turns to end) are abandoned."""
        self._plan.count_left_behind()

    async def _stop_enrichers(self, timeout: float) -> None:
        """Stop the enrichers on this loop, waiting at most ``timeout``
        seconds, then cancelling them."""
        # Not wait_for(): past the timeout it waits for the cancelled
        # shutdown to end, forever if an enricher's hook ignores it.
        closing = asyncio.get_running_loop().create_task(self._lifecycle.shutdown_all(timeout))
        done, _ = await asyncio.wait({closing}, timeout=timeout + SHUTDOWN_SLACK)
        if not done:
            report_slow_shutdown(timeout, self._lifecycle.not_stopped())
            closing.cancel()
            done, _ = await asyncio.wait({closing}, timeout=CANCEL_GRACE)
        if not done or self._lifecycle.unfinished():
            # On the application's loop, which asyncio.run() does not leave
            # before it ends: said, since nothing else would say why.
            _report.warning(
                "enrichlog: an enricher's start-up, health check or shutdown ignored its "
                "cancellation; it is left running on the loop"
            )
            self._closing = closing  # kept: a task nobody holds is collected

    def _stop_on_the_loop_now(self) -> dict[str, int]:
        """Stop without waiting: on the loop's own thread (waiting would
        block the loop enrichment needs), or once the loop is gone."""
        runtime, pipeline = self._runtime, self._pipeline
        assert isinstance(runtime, LoopRuntime)
        pipeline.take_in_waiting()  # logged before this call: written with the others
        report = pipeline.report()
        if runtime.is_running:
            if pipeline.pending:
                if not self._start_abandoned:  # else no enricher is up to wait for
                    _report.warning(
                        "enrichlog: shutdown() on the application's event loop cannot wait "
                        "for enrichment without blocking it; %d pending event(s) are written "
                        "now with what they have (await container.ashutdown() to drain them)",
                        pipeline.pending,
                    )
                written = self._pipeline.report()["written"]
                pipeline.abandon_enrichment()
                report["salvaged"] = pipeline.report()["written"] - written
            # Pools close once the loop gets back to it (or as it ends).
            runtime.close_when_free()
        pipeline.stop_accepting()
        runtime.stop()
        return report

    def _refuse_on_runtime_thread(self, what: str) -> None:
        if threading.get_ident() in self._runtime.owned_thread_ids or IN_ENRICHMENT.get():
            raise EnrichlogError(
                f"{what} was called on enrichlog's own runtime (from an enricher?): it "
                "would wait for itself. Shut the container down from the application; "
                "this call changed nothing"
            )

    def _at_exit(self) -> None:
        self.exiting = True
        took = self._exit_flush_took
        if took is None:
            self.shutdown()
            return
        # What the flush at interpreter exit waited counts: the process ends
        # within about one shutdown_timeout, not two. (Not the time the
        # application's threads logged on after it; and a tenth of it at
        # least, for the enrichers to close their connections.)
        timeout = self.settings.shutdown_timeout
        self.shutdown(max(timeout / 10, timeout - took))

    def _after_fork_in_child(self) -> None:
        if not self._running:
            if self._shutting_down and not self._shut_down.is_set():
                self._shut_down_in_child()
            return
        if isinstance(self._runtime, LoopRuntime):
            # Its runtime is the application's loop, the parent's: the
            # child's application runs its own, if any, and configures
            # logging on it again to enrich.
            self._runtime.after_fork_in_child()
            self._shut_down_in_child()
            return
        self._lock = threading.RLock()
        # Each process counts its own lines: the parent's are its business.
        if self._lines is not None:
            self._lines_before = (self._lines.written, self._lines.write_failed)
        if self.processor is not None:
            self.processor.filtered = 0
        self._runtime.after_fork_in_child()
        self._lifecycle.after_fork_in_child()
        if self.output is not None:
            self.output.after_fork_in_child()
        self._pipeline.after_fork_in_child()
        self._plan.after_fork_in_child()
        # Whether or not it enriches here: with a transport and no enricher
        # of its own, the child's events wait in the transport's queue.
        _drain_at_multiprocessing_exit(self)
        if self.processor is None:
            return
        try:
            self.start_enrichers(timeout=_STARTUP_TIMEOUT)
        except TimeoutError:
            _report.warning("enrichlog: enrichers slow to restart after fork")

    def _shut_down_in_child(self) -> None:
        """Forked while another thread of the parent was shutting this
        container down (or replacing it), or with ``runtime="loop"``: the
        thread or loop that would finish the shutdown, or run enrichment,
        is not the child's, and the child's events would wait in a queue
        nobody takes from. In the child it is shut down: the child's log
        calls write their own events (reason ``unavailable`` for its async
        enrichers), as after any shutdown; the parent's events are the
        parent's to write."""
        self._lock = threading.RLock()
        self._running, self._shutting_down = False, True
        if self.output is not None:
            self.output.after_fork_in_child()
        self._pipeline.after_fork_in_child(stopped=True)
        self._plan.after_fork_in_child()
        self._lines_mark = None
        self._lines_at_shutdown = (0, 0)
        self._drain_report = DrainReport(dict.fromkeys(_REPORTED, 0))
        self._shut_down = threading.Event()
        self._on_shut_down = []
        self._shut_down.set()
        atexit.unregister(self._at_exit)
        _live.discard(self)
        if self.transport is not None:
            # The child's log calls hand their events to its transport (a
            # publisher of its own): published or spooled when it ends.
            atexit.register(self._drain_in_child)
            _drain_at_multiprocessing_exit(self)

    def _drain_in_child(self) -> None:
        """A forked child's drain when it ends: a shutdown as at any exit;
        for a container shut down in the child (forked during a shutdown),
        its transport's: what its callers handed over is published, or
        spooled for the next process."""
        if self._running:
            self.shutdown()
        elif self.transport is not None:
            self.transport.stop(self.settings.shutdown_timeout)

    # -- taps and synchronous enrichment (enrichlog.testing, enrichlog.stdlib) --

    def add_tap(self, tap: Processor) -> None:
        """Run ``tap`` on every finished event after enrichment, before it is
        rendered (as the first post-processor), on whichever thread writes
        the line; it may look at the event and must return it.
        :func:`enrichlog.testing.capture_events` records events this way."""
        with self._lock:
            installed = self._installed()
            self._writer.tail.insert(0, tap)
            if installed:
                _installed_chain[:] = self.chain()

    def remove_tap(self, tap: Processor) -> None:
        """Stop running ``tap`` (added with :meth:`add_tap`); no error if it
        is not there."""
        with self._lock:
            if tap in self._writer.tail:
                installed = self._installed()
                self._writer.tail.remove(tap)
                if installed:
                    _installed_chain[:] = self.chain()

    def _installed(self) -> bool:
        """Whether structlog runs this container's chain (its renderer, an
        object of its own, ends the installed chain)."""
        tail = self._writer.tail
        return bool(
            self._running and tail and _installed_chain and _installed_chain[-1] is tail[-1]
        )

    def submit_event(
        self,
        logger: WrappedLogger,
        method_name: str,
        event_dict: EventDict,
        on_done: Callable[[bool], object],
    ) -> bool:
        """Enrich and write an event that already went through the
        pre-processors (an enrichment worker's decoded event), in its turn,
        through ``logger``'s ``method_name``; never waits.

        ``on_done(filtered)`` is called once, when its line is written (or
        the event dropped by the overflow policy, or filtered out on purpose
        by an enricher: ``filtered`` is then True), on the runtime thread or
        at once. Returns False when the engine is stopping and took nothing
        (``on_done`` is then not called). ``metrics()["written"]`` counts the
        lines of the container's output; lines ``logger`` writes elsewhere
        are its own to count.
        """
        try:
            record = self._plan.settle(logger, method_name, event_dict)
        except structlog.DropEvent:  # an enricher filtered it out on purpose
            on_done(True)
            return True
        if record is None:
            record = self._plan.complete_record(logger, method_name, event_dict)
        record.context = contextvars.copy_context()
        record.on_written = functools.partial(_report_done, on_done, record)
        # Dropped by the overflow policy: on_written reports it too.
        return self._pipeline.submit(record, may_block=False) != CLOSED

    def enrich_now(
        self, method_name: str, event_dict: EventDict, logger: WrappedLogger = None
    ) -> EventDict:
        """Enrich ``event_dict`` in place and return it, waiting for the
        enrichers that await (at most every level's timeout): for code that
        needs the enriched event itself rather than its line, such as a
        stdlib ``Formatter`` (:class:`enrichlog.stdlib.FormatterEnrichment`).

        Never raises and never drops the event: an enricher's ``DropEvent``
        cannot take back a line a formatter must produce. The calling thread
        waits; on the thread that runs enrichment itself (an enricher, or the
        application's loop with ``runtime="loop"``), where waiting would block
        it, enrichers that must await are skipped as ``unavailable``.
        """
        plan, runtime = self._plan, self._runtime
        if (
            self.processor is None
            or threading.get_ident() in runtime.owned_thread_ids
            or IN_ENRICHMENT.get()
        ):
            return event_dict
        try:
            record = plan.settle(logger, method_name, event_dict)
        except structlog.DropEvent:
            return event_dict
        except Exception:
            _report.exception("enrichlog: enriching an event failed; it has what it has")
            return event_dict
        if record is None:
            return event_dict
        if not self._running or not runtime.is_running or runtime.in_runtime_thread():
            plan.finish_unenriched(record)
            return event_dict
        done = threading.Event()
        record.context = contextvars.copy_context()  # this thread's, now

        def advance() -> None:
            record.on_done = lambda _record: done.set()
            if plan.advance(record):
                done.set()

        try:
            runtime.call_soon(advance)
        except RuntimeError:  # stopped meanwhile
            plan.finish_unenriched(record)
            return event_dict
        with _handler_locks_released():
            finished = done.wait(plan.wait_bound() + 1.0)
        if not finished:
            # Cannot happen while the guards keep their deadlines. A copy: a
            # merge arriving late on the loop must not change it under the
            # formatter that renders it.
            return dict(event_dict)
        return event_dict

    # -- views ---------------------------------------------------------------

    def metrics(self) -> MetricsSnapshot:
        """The container's counters at this moment: a frozen
        :class:`~enrichlog.metrics.MetricsSnapshot`, also readable as a
        mapping (``metrics["written"]``); ``as_dict()`` gives plain data.

        ``written`` counts lines whichever thread wrote them; per enricher,
        calls, failures by reason, retries, cache hits and misses, batch
        calls, latency percentiles and the breaker's state.
        """
        pipeline = self._pipeline.metrics()
        counts = self._counts(pipeline=pipeline)  # dropped and its kinds agree
        return MetricsSnapshot(
            delivery=(
                "background"
                if self.processor is not None and self.processor.background
                else "inline"
            ),
            events_in=counts["written"]
            + counts["dropped"]
            + counts["filtered"]
            + counts["pending"]
            + counts["write_failed"],
            handed_off=pipeline["handed_off"],
            written=counts["written"],
            write_failed=counts["write_failed"],
            dropped=counts["dropped"],
            dropped_by_kind=pipeline["dropped_by_kind"],
            filtered=counts["filtered"],
            pending=counts["pending"],
            abandoned=counts["abandoned"],
            render_fallbacks=counts["render_fallbacks"],
            queue_depth=pipeline["queue_depth"],
            queue_high_water=pipeline["queue_high_water"],
            queue_size=pipeline["queue_size"],
            in_flight=pipeline["in_flight"],
            enrichment_latency=self._plan.enrichment_latency.summary(),
            enricher_time=self._plan.enricher_time.summary(),
            enrichers=self._plan.enricher_metrics(),
            transport=None if self.transport is None else self.transport.metrics().as_dict(),
            worker=None if self._worker_metrics is None else self._worker_metrics().as_dict(),
        )

    def report_worker_metrics(self, source: Callable[[], Any], *, lines: Any = None) -> None:
        """Include ``source()`` (an object with ``as_dict()``: a worker's
        counters) in :meth:`metrics` as ``worker``, and so in Prometheus:
        how an enrichment worker reports through the engine it runs.
        ``lines`` (with ``written`` and ``write_failed`` counts) writes the
        worker's lines: ``written`` and ``write_failed`` are its counts."""
        self._worker_metrics = source
        self._worker_lines = lines

    def observe(self) -> None:
        """Follow this container for Prometheus and serve ``/metrics`` when
        ``metrics_port`` is set (done by :meth:`start`; a worker, which runs
        the engine without starting it as an application does, calls it)."""
        _observability.container_started(self)

    def health(self) -> dict[str, dict[str, Any]]:
        """Per enricher: started, healthy, available, breaker state and the
        last error."""
        status = self._lifecycle.status()
        breakers = self._plan.breaker_states()
        for name, view in status.items():
            view["breaker"] = breakers.get(name)
        return status

    @property
    def running(self) -> bool:
        """Whether the container is started and not shut down."""
        return self._running

    @property
    def loop_ended(self) -> bool:
        """With ``runtime="loop"``: whether the application's loop it ran
        on is closed (it ended without a shutdown)."""
        runtime = self._runtime
        return isinstance(runtime, LoopRuntime) and runtime.loop_closed

    # -- metrics endpoint (enrichlog.integrations.prometheus) -------------------

    @property
    def metrics_port(self) -> int | None:
        """The port ``/metrics`` is served on while the container runs (the
        one chosen when the ``metrics_port`` setting is 0); ``None`` when the
        setting is unset or the port could not be listened on."""
        return _observability.metrics_endpoint_port(self)

    @property
    def closed(self) -> bool:
        """Whether its shutdown completed (while it drains, it is neither
        running nor closed: events are still written)."""
        return self._shut_down.is_set()

    # -- context managers ---------------------------------------------------

    def __enter__(self) -> LoggingContainer:
        return self.start()

    def __exit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    async def __aenter__(self) -> LoggingContainer:
        try:
            return await self.astartup()
        except BaseException:
            # Cancelled (or failed) while starting: the body will not run,
            # nor __aexit__, so nothing may stay installed.
            if self.running:
                if self.enriches_on_this_thread():
                    # On its loop, at once (a second cancellation cannot
                    # cut it short): the enrichers are not up, so the events
                    # logged meanwhile have nothing to wait for.
                    self._start_abandoned = True
                    self.shutdown()
                else:
                    await self.ashutdown()
            raise

    async def __aexit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.ashutdown()


async def _wait_from_another_loop(task: asyncio.Task[Any], timeout: float) -> None:
    """Wait, on this loop, for ``task`` of another loop to end (at most
    ``timeout`` seconds: that loop may be blocked, or closed meanwhile)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    wake = resolver(loop, done)
    try:
        task.get_loop().call_soon_threadsafe(task.add_done_callback, lambda _task: wake())
    except RuntimeError:  # that loop is closed: nothing to wait for
        return
    await asyncio.wait({done}, timeout=timeout)


def _report_done(on_done: Callable[[bool], object], record: PendingEvent) -> None:
    on_done(record.filtered)


def _loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the thread runtime's loop (the ``event_loop`` setting)."""
    if event_loop == "uvloop":
        import uvloop  # noqa: PLC0415 - optional extra, checked by the settings

        new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return new_loop
    return asyncio.new_event_loop


def _from_uri(enricher: object) -> object:
    """An enricher given in code as a URI string is built like one in the
    settings (its errors mask the URI's secrets)."""
    if isinstance(enricher, str):
        from .uri.factory import EnricherFactory  # noqa: PLC0415 - only when URIs are used

        return EnricherFactory.build(enricher)
    return enricher


def report_still_starting(timeout: float) -> None:
    """Say that enrichers outlasted ``startup_timeout`` (a start-up that goes
    on in the background: they are skipped until they are up)."""
    _report.warning(
        "enrichlog: enrichers still starting after %ss; they are skipped as "
        "'unavailable' until they are up",
        timeout,
    )


def build_processor_chain(
    settings: LoggingSettings | None = None, enrichers: Iterable[object] = ()
) -> list[Processor]:
    """The structlog processors for ``settings`` and ``enrichers``.

    The enrichment processor in it belongs to a container of its own; call
    its ``startup()`` before logging and its ``shutdown()`` after (or use
    :func:`configure_logging`, which does all of this).

    Raises:
        EnricherConfigError: an enricher or setting is not usable.
        EnricherDependencyError: a cycle, a missing dependency or a
            duplicate name.
    """
    return LoggingContainer(settings, enrichers).chain()


def _install(
    chain: list[Processor],
    output: LineWriter,
    settings: LoggingSettings,
    enrichment: AsyncEnricherProcessor | None,
) -> LineWriter:
    """``structlog.configure`` with the shared chain list and writer; returns
    the writer structlog calls. ``enrichment``, the chain's enrichment
    processor, hands events off to the bound logger class without raising
    ``DropEvent``."""
    global _installed_writer  # noqa: PLW0603 - see the module globals above
    _installed_chain[:] = chain
    if _installed_writer is None:
        _installed_writer = output
    elif _installed_writer is not output:
        _installed_writer.retarget(output)
    writer = _installed_writer
    writer.report_interval = settings.drop_report_interval
    structlog.configure(
        processors=_installed_chain,
        wrapper_class=make_bound_logger_class(
            settings.level_number,
            LoggerLevels(settings.level_number, settings.levels),
            enrichment,
        ),
        logger_factory=logger_factory(writer),
        context_class=dict,
        cache_logger_on_first_use=True,
    )
    return writer


def _check_enricher_options(settings: LoggingSettings, registry: EnricherRegistry) -> None:
    """Every name in ``enricher_options`` is an async enricher's: a typo in
    a name, or options for a sync enricher (which has none), would be
    ignored without a word.

    Raises:
        EnricherConfigError: naming the entry.
    """
    for name in settings.enricher_options:
        if name not in registry:
            known = sorted(enricher.name for enricher in registry)
            raise EnricherConfigError(
                f"enricher_options names {mask_secrets(name)!r}, which no configured enricher is "
                f"called{did_you_mean(name, known)}; the enrichers: {', '.join(known) or 'none'}"
            )
        if not isinstance(registry.get(name), AsyncEnricher):
            raise sync_enricher_options_error(name)


def _enricher_list(enrichers: object) -> Iterable[object]:
    """``enrichers`` if it is a collection of enrichers; else a
    configuration error naming what was given (a lone URI string would
    otherwise be read as one URI per character)."""
    if isinstance(enrichers, str | bytes) or not isinstance(enrichers, Iterable):
        raise EnricherConfigError(
            f"enrichers: expected a list of enrichers (instances, processors, async "
            f"functions or URIs), got {type(enrichers).__name__!r}; wrap a single one in a "
            "list"
        )
    return enrichers


def configure_logging(
    enrichers: Iterable[object] | None = None,
    settings: LoggingSettings | None = None,
    **overrides: Any,
) -> LoggingContainer:
    """Configure structlog with enrichlog's chain and start the enrichers.

    Args:
        enrichers: enrichers in code (instances, processors, ``async def``
            processors); combined with the URIs in ``settings.enrichers``.
        settings: defaults to ``LoggingSettings()``, read from ``ENRICHLOG_*``
            environment variables and ``.env``.
        overrides: ``LoggingSettings`` fields to override.

    Everything is validated before the previous configuration is touched;
    then the previous container is shut down cleanly and the new one started.

    Raises:
        EnricherConfigError: an enricher, URI or setting is not usable; the
            message names it.
        EnricherDependencyError: a cycle, missing dependency or duplicate.
    """
    global _current  # noqa: PLW0603 - mirrors structlog.configure's global
    _refuse_in_enricher("configure_logging()")
    resolved = resolve_settings(settings, overrides)
    container = LoggingContainer(resolved, enrichers or ())
    # The output is the last thing that can fail: open it before the
    # previous configuration is taken down.
    container.output = open_output(resolved.output)
    try:
        # What can still refuse the configuration, before anything of the
        # previous one is taken down: no loop for runtime="loop"; a stream
        # that conflicts with the transport's subject.
        if container.processor is not None and isinstance(container._runtime, LoopRuntime):
            LoopRuntime.running_loop()
        if container.transport is not None:
            # Not started here: the running container's transport may hold
            # the spool this one takes over once that one stops.
            container.transport.check_stream()
    except EnricherConfigError:
        container.output.close()
        raise
    with _current_lock:
        # The last one configured, or one started by LoggingContainer.start().
        previous = current_container() or _current
        try:
            _replace(previous, container)
        finally:
            leftover = _take_bridge()  # the new one did not start: nobody takes it
            if leftover is not None:
                remove_root_handler(leftover)
        _current = container
    return container


def _replace(previous: LoggingContainer | None, container: LoggingContainer) -> None:
    """Shut ``previous`` down and start ``container`` (under the lock)."""
    global _current, _replacing  # noqa: PLW0603 - see the module globals above
    output = container.output
    assert output is not None  # opened by configure_logging
    # Only a running container is replaced: with none (the first call, or
    # after reset_logging()), structlog has no chain of ours to write through.
    _replacing = previous is not None and not previous.closed
    try:
        if previous is not None:
            # Lines written while this call hands over count for the new
            # container; those written after a shutdown of the application's
            # own, when no container ran, for none.
            handing_over = not previous.closed
            try:
                # Refused from its own runtime: nothing changed yet. An
                # interrupt is raised once it is drained, this one not
                # installed.
                previous.shutdown()
            except BaseException:
                output.close()
                raise
            if handing_over:
                container._handover = previous._lines_mark
        _current = None
        try:
            container.start()
        except BaseException:
            output.close()  # (a conflict the probe could not see)
            raise
    finally:
        _replacing = False


def replacing() -> bool:
    """Whether :func:`configure_logging` is replacing one container by
    another right now (the stdlib bridge writes as structlog does then)."""
    return _replacing


def _hand_over_bridge(bridge: RootBridge) -> None:
    global _bridge_handed_over  # noqa: PLW0603 - see the module globals above
    _bridge_handed_over = bridge


def _take_bridge() -> RootBridge | None:
    """The bridge the outgoing container left for this one, if any."""
    global _bridge_handed_over
    bridge, _bridge_handed_over = _bridge_handed_over, None
    return bridge


def _refuse_in_enricher(what: str) -> None:
    """Refuse ``what`` in enricher code (a call, or its ``_startup``,
    ``_shutdown`` or ``_health_check``): it would shut down the container
    running it."""
    if IN_ENRICHMENT.get():
        raise EnrichlogError(
            f"{what} was called from inside an enricher: it would shut down the container "
            "running it. Configure logging from the application; this call changed nothing"
        )


def _wait_limit(what: str, timeout: object) -> float | None:
    """The ``timeout`` argument of :meth:`LoggingContainer.flush` or
    :meth:`~LoggingContainer.shutdown` (and their async forms), checked
    before anything changes: ``None``, or seconds from 0 (do not wait) to
    :data:`~enrichlog.options.MAX_TIMEOUT` (one day; more, infinity
    included, waits that long: the platform's clocks refuse longer waits,
    which used to fail the drain half-way and lose its events).

    Raises:
        TypeError: not a number; ValueError: NaN.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real | Decimal):
        raise TypeError(
            f"{what}: timeout must be a number of seconds or None, not "
            f"{type(timeout).__name__}; nothing was changed"
        )
    try:
        seconds = float(timeout)
    except OverflowError:  # an int past a float's range: longer than any wait
        seconds = math.inf
    if math.isnan(seconds):
        raise ValueError(
            f"{what}: timeout must be a number of seconds or None, not NaN; nothing was changed"
        )
    return min(max(seconds, 0.0), MAX_TIMEOUT)


def _drain_at_multiprocessing_exit(container: LoggingContainer) -> None:
    """In a forked child, if it is a multiprocessing one: have ``container``
    drained when it ends. A multiprocessing child clears its finalizers
    right after the fork (so one registered now would be lost), then runs
    its after-fork callbacks: the exit drain is registered from there."""
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        mp_util.register_after_fork(container, _finalize_in_multiprocessing_child)


def _finalize_in_multiprocessing_child(container: LoggingContainer) -> None:
    """In a multiprocessing child, drain ``container`` when the child ends:
    such children leave through ``os._exit``, which skips ``atexit``, after
    running multiprocessing's own finalizers."""
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return
    if mp.parent_process() is None:
        if getattr(mp.current_process(), "_inheriting", False):
            # Configured while a forkserver or spawn child imports the main
            # module, before it knows its parent and clears its finalizers:
            # registered once it has.
            _drain_at_multiprocessing_exit(container)
        return
    import multiprocessing.util  # noqa: PLC0415 - loaded with multiprocessing

    multiprocessing.util.Finalize(container, container._drain_in_child, exitpriority=100)


_exit_hook_registered = False


def _drain_before_interpreter_exit() -> None:
    """Once per process: at interpreter exit, flush every running container
    while threads can still be started.

    ``atexit`` runs after ``concurrent.futures`` stopped its executors, so an
    enricher draining there could not resolve a host name, use
    ``to_thread`` or run in a worker thread. Threading's own exit hooks run
    before that, in reverse order of registration: registered after the
    executors' (imported first, below), ours runs first. The shutdown proper
    stays an ``atexit`` handler, after the application's non-daemon threads
    have finished logging.
    """
    global _exit_hook_registered  # noqa: PLW0603 - once per process
    if _exit_hook_registered:
        return
    import concurrent.futures.thread  # noqa: F401, PLC0415 - registers its hook first

    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - CPython has it since 3.9
        return
    try:
        register(_flush_live_containers)
    except RuntimeError:  # the interpreter is already shutting down
        return
    _exit_hook_registered = True


def _running_container() -> LoggingContainer | None:
    """The container running in this process, if any (at most one does)."""
    return next((container for container in list(_live) if container.running), None)


def _flush_live_containers() -> None:
    for container in list(_live):
        if container.running:
            started = time.monotonic()
            container.flush(container.settings.shutdown_timeout)
            container._exit_flush_took = time.monotonic() - started


def _after_fork_in_child() -> None:
    global _current_lock  # noqa: PLW0603 - a lock another thread held is not the child's
    _current_lock = threading.RLock()
    if _installed_writer is not None:
        _installed_writer.after_fork_in_child()
    for container in list(_live):
        container._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
