"""`LoggingContainer` and `configure_logging`: one configured logging setup.

The container owns the settings, the enricher registry, the runtime loop,
the lifecycle manager, the processor (with its delivery pipeline) and the
output. ``configure_logging`` builds one, validates everything before it
touches the previous one, installs it with ``structlog.configure`` and starts
the enrichers.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import weakref
from collections.abc import Iterable
from types import FrameType, TracebackType
from typing import Any

import anyio
import structlog
from structlog.typing import Processor

from .engine.chain import build_processor_chain
from .engine.lifecycle import EnricherLifecycleManager
from .engine.logger import make_bound_logger_class
from .engine.output import LineWriter, open_output
from .engine.pipeline import DrainReport
from .engine.processor import AsyncEnricherProcessor
from .engine.registry import EnricherRegistry
from .engine.runtime import EnrichmentRuntime
from .enricher import Enricher
from .settings import LoggingSettings, resolve_settings

__all__ = ["LoggingContainer", "configure_logging", "get_logger"]

_STARTUP_TIMEOUT = 30.0

_report = logging.getLogger("enrichlog")

# The container structlog is configured with, and every container that may
# need a fresh runtime after fork(). Both mirror structlog's own global
# configuration; nothing else in enrichlog is process-wide.
_current: LoggingContainer | None = None
_current_lock = threading.Lock()
_live: weakref.WeakSet[LoggingContainer] = weakref.WeakSet()
# The processor list and the writer handed to structlog, reused across
# reconfigurations and changed in place: structlog's cached loggers keep
# references to both, so a module-level logger used before a reconfigure
# follows the new configuration instead of a shut-down container.
_installed_chain: list[Processor] = []
_installed_writer: LineWriter | None = None


def get_logger(*args: Any, **initial_values: Any) -> Any:
    """A structlog bound logger: sync methods (``info``) and async ones
    (``ainfo``) that await enrichment without blocking the caller's loop."""
    return structlog.get_logger(*args, **initial_values)


class LoggingContainer:
    """A configured logging setup: enrichers, runtime, pipeline and output.

    Usable as a sync and an async context manager (shut down on exit).
    Created by :func:`configure_logging`; construct it directly only to
    validate a configuration without installing it.

    Raises:
        EnricherConfigError: an enricher, URI or setting is not usable.
        EnricherDependencyError: a cycle, missing dependency or duplicate.
    """

    def __init__(
        self, settings: LoggingSettings | None = None, enrichers: Iterable[object] = ()
    ) -> None:
        self.settings = settings or LoggingSettings()
        self.registry = EnricherRegistry([*enrichers, *self._uri_enrichers()])
        self.processor: AsyncEnricherProcessor | None = (
            AsyncEnricherProcessor.from_registry(self.registry, self.settings)
            if self.registry.levels()
            else None
        )
        self.runtime: EnrichmentRuntime = (
            self.processor.runtime if self.processor else EnrichmentRuntime()
        )
        self.lifecycle: EnricherLifecycleManager = (
            self.processor.lifecycle if self.processor else EnricherLifecycleManager(self.runtime)
        )
        self.output: LineWriter | None = None
        self._lock = threading.RLock()
        self._running = False
        self._drain_report: DrainReport | None = None
        self._previous_sigterm: Any = None

    def _uri_enrichers(self) -> list[Enricher]:
        if not self.settings.enrichers:
            return []
        from .uri.factory import EnricherFactory  # noqa: PLC0415 - only when URIs are used

        return [EnricherFactory.build(uri) for uri in self.settings.enrichers]

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<LoggingContainer {state} enrichers={self.registry.resolve_dependencies()}>"

    # -- start -------------------------------------------------------------

    def start(self) -> LoggingContainer:
        """Open the output, start the enrichers, install structlog config.

        Raises:
            EnricherConfigError: the output cannot be opened.
        """
        with self._lock:
            if self._running:
                return self
            if self.output is None:
                self.output = open_output(self.settings.output)
            chain = build_processor_chain(self.settings, processor=self.processor)
            if self.processor is not None:
                try:
                    self.processor.startup(timeout=_STARTUP_TIMEOUT)
                except TimeoutError:
                    _report.warning(
                        "enrichlog: enrichers still starting after %ss; they are "
                        "skipped as 'unavailable' until they are up",
                        _STARTUP_TIMEOUT,
                    )
            _install(chain, self.output, self.settings.level_number)
            self._running = True
            _live.add(self)
            atexit.register(self._at_exit)
            self._install_sigterm_handler()
        return self

    def _install_sigterm_handler(self) -> None:
        if not self.settings.handle_sigterm or self.processor is None:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return  # the application handles SIGTERM itself
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):  # no signals here (embedded interpreter)
            return

    def _on_sigterm(self, _signum: int, _frame: FrameType | None) -> None:
        # Runs on the main thread, possibly inside a log call holding a lock:
        # drain from another thread, then die the way SIGTERM would have.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

        def drain_then_terminate() -> None:
            self.shutdown()
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=drain_then_terminate, name="enrichlog-sigterm").start()

    def _restore_sigterm_handler(self) -> None:
        if self._previous_sigterm is None:
            return
        if threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                    signal.signal(signal.SIGTERM, self._previous_sigterm)
            except (ValueError, OSError):
                pass
        self._previous_sigterm = None

    # -- flush and shutdown --------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything logged before the call is written (or
        dropped); return whether that happened within ``timeout``."""
        if self.processor is None:
            return True
        return self.processor.pipeline.flush(timeout)

    async def aflush(self, timeout: float | None = None) -> bool:
        """:meth:`flush` without blocking the caller's event loop."""
        if self.processor is None:
            return True
        return await self.processor.pipeline.aflush(timeout)

    def shutdown(self, timeout: float | None = None) -> DrainReport:
        """Drain pending events (up to ``timeout``, default the
        ``shutdown_timeout`` setting), stop the enrichers in reverse
        dependency order, stop the runtime and close the output.

        Idempotent; returns the drain report (``written``, ``dropped``,
        ``pending``).
        """
        with self._lock:
            if not self._running:
                return self._drain_report or DrainReport(written=0, dropped=0, pending=0)
            self._running = False
            if self.processor is not None:
                self._drain_report = DrainReport(self.processor.shutdown(timeout))
            else:
                self._drain_report = DrainReport(written=0, dropped=0, pending=0)
            if self.output is not None:
                if _installed_writer is not None:
                    _installed_writer.release(self.output)
                self.output.close()
            atexit.unregister(self._at_exit)
            self._restore_sigterm_handler()
            _live.discard(self)
            return self._drain_report

    async def ashutdown(self, timeout: float | None = None) -> DrainReport:
        """:meth:`shutdown` without blocking the caller's event loop."""
        return await anyio.to_thread.run_sync(self.shutdown, timeout)

    def _at_exit(self) -> None:
        self.shutdown()

    def _after_fork_in_child(self) -> None:
        if not self._running:
            return
        self._lock = threading.RLock()
        self.runtime.forget_after_fork()
        self.lifecycle.forget_after_fork()
        if self.output is not None:
            self.output.after_fork()
        if self.processor is None:
            return
        self.processor.pipeline.forget_after_fork()
        for guard in self.processor.guards.values():
            guard.after_fork()
        try:
            self.processor.startup(timeout=_STARTUP_TIMEOUT)
        except TimeoutError:
            _report.warning("enrichlog: enrichers slow to restart after fork")
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            # multiprocessing children leave through os._exit, skipping atexit.
            mp_util.Finalize(self, self.shutdown, exitpriority=100)

    # -- views ---------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """Counters: ``written``, ``dropped``, ``queue_depth``,
        ``queue_high_water``, ``in_flight``, and per-enricher counters
        (calls, failures, retries, circuit skips, cache statistics)."""
        if self.processor is None:
            return {
                "delivery": "inline",
                "written": None,
                "dropped": 0,
                "queue_depth": 0,
                "queue_high_water": 0,
                "enrichers": {},
            }
        return self.processor.metrics()

    def health(self) -> dict[str, dict[str, Any]]:
        """Per enricher: started, healthy, available, breaker state and the
        last error."""
        status = self.lifecycle.status()
        guards = self.processor.guards if self.processor is not None else {}
        for name, view in status.items():
            guard = guards.get(name)
            view["breaker"] = guard.breaker.state.value if guard is not None else None
            if guard is not None and guard.last_error is not None:
                view["last_error"] = view["last_error"] or guard.last_error
        return status

    @property
    def running(self) -> bool:
        """Whether the container is started and not shut down."""
        return self._running

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
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self,
        _exc_type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await self.ashutdown()


def _install(chain: list[Processor], output: LineWriter, level: int) -> None:
    """``structlog.configure`` with the shared chain list and writer."""
    global _installed_writer  # noqa: PLW0603 - see the module globals above
    _installed_chain[:] = chain
    if _installed_writer is None:
        _installed_writer = output
    elif _installed_writer is not output:
        _installed_writer.retarget(output)
    writer = _installed_writer
    structlog.configure(
        processors=_installed_chain,
        wrapper_class=make_bound_logger_class(level),
        logger_factory=lambda *args: writer,
        context_class=dict,
        cache_logger_on_first_use=True,
    )


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
    resolved = resolve_settings(settings, overrides)
    container = LoggingContainer(resolved, enrichers or ())
    # The output is the last thing that can fail: open it before the
    # previous configuration is taken down.
    container.output = open_output(resolved.output)
    with _current_lock:
        previous, _current = _current, None
        if previous is not None:
            previous.shutdown()
        container.start()
        _current = container
    return container


def _after_fork_in_child() -> None:
    if _installed_writer is not None:
        _installed_writer.after_fork()
    for container in list(_live):
        container._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
