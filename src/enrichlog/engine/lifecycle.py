"""`EnricherLifecycleManager`: start-up, health and shutdown of enrichers.

Every method runs on the caller's event loop: a container calls them on its
runtime's loop, and an application can use the manager on its own::

    manager = EnricherLifecycleManager()
    manager.register_enricher(UserEnricher())
    async with manager.managed_enrichers():
        print(await manager.health_check_all())   # {"user": True}

Start-ups run concurrently; one that fails marks its enricher unavailable,
is reported once through the stdlib logger ``enrichlog``, and the others
carry on, and it is started again later: on the next periodic health check
when those are on, else with a doubling backoff (1 s up to 60 s). Shutdown
runs in reverse dependency order. Periodic health checks (off by default) run
on the runtime loop; an enricher that failed its check is tried again on the
next round.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

from ..enricher import Enricher
from ..reporting import reporting_logger
from ..uri.factory import shortened
from ..uri.masking import mask_secrets
from .plan import IN_ENRICHMENT

__all__ = ["EnricherLifecycleManager", "retrieve_outcome"]

_report = reporting_logger("enrichlog")

#: Seconds before the first retry of a failed start-up, and the cap of its
#: doubling backoff (when periodic health checks are off).
_FIRST_RETRY = 1.0
_LAST_RETRY = 60.0
#: How long a health check may take without a health check interval.
_CHECK_TIMEOUT = 30.0
#: How long shutdown waits for a cancelled health check to end.
_CHECK_GRACE = 0.5
#: How long shutdown waits for a cancelled start-up (or restart) to end.
_START_GRACE = 0.1
#: How long shutdown gives the enrichers left when its timeout passed (those
#: a cut-off dependant depended on) to stop, together.
LAST_GRACE = 0.5
#: What shutdown_all(timeout) may take past its timeout: the health
#: checks' grace, the last grace, and slack for a loaded machine.
SHUTDOWN_SLACK = _CHECK_GRACE + LAST_GRACE + 1.0


class EnricherLifecycleManager:
    """Starts, checks and stops enrichers, on the caller's event loop.

    An enricher's state (started, available, last error) is the enricher's
    own; the manager drives it and reports failures once.

    Args:
        enrichers: enrichers to manage, dependencies first (shutdown runs in
            the reverse order); more can be added with
            :meth:`register_enricher`.
        health_check_interval: seconds between health checks; ``None`` off.
    """

    def __init__(
        self, enrichers: Iterable[Enricher] = (), *, health_check_interval: float | None = None
    ) -> None:
        self._interval = health_check_interval
        self._enrichers: list[Enricher] = []
        self._checker: asyncio.Task[None] | None = None
        self._reported: set[str] = set()  # start-up failures already reported
        self._retries: dict[str, asyncio.Task[None]] = {}
        #: The start-up of every enricher, going on past a timed-out wait.
        self._startup: asyncio.Future[Any] | None = None
        #: Enrichers whose start-up is running (never two at once).
        self._starting: set[str] = set()
        #: Health checks still running, by enricher (never two at once).
        self._checks: dict[str, asyncio.Future[bool]] = {}
        #: The shutdowns of one level's enrichers, stopped together.
        self._stopping: set[asyncio.Task[None]] = set()
        #: The names of the enrichers whose shutdown has ended.
        self._stopped: set[str] = set()
        for enricher in enrichers:
            self.register_enricher(enricher)

    def register_enricher(self, enricher: Enricher) -> None:
        """Manage ``enricher``; register in dependency order (dependencies
        first), since shutdown runs in the reverse of this order."""
        self._enrichers.append(enricher)

    @property
    def enrichers(self) -> tuple[Enricher, ...]:
        """The managed enrichers in registration order."""
        return tuple(self._enrichers)

    async def startup_all(self, timeout: float | None = None) -> dict[str, bool]:
        """Start every enricher concurrently; return which ones started.

        Raises:
            TimeoutError: some were still starting after ``timeout`` seconds.
                They go on starting in the background (skipped as
                unavailable until they are up; :meth:`shutdown_all` stops
                them): a slow start is not a failed one.
        """
        loop = asyncio.get_running_loop()
        startup = asyncio.gather(*(self._start(e) for e in self._enrichers))
        # Its outcome is read even when nobody waits for it any more (a
        # shutdown cancelled while the start-up ignored its cancellation):
        # asyncio would report an unread CancelledError.
        startup.add_done_callback(retrieve_outcome)
        self._startup = startup
        if self._interval is not None and self._checker is None:
            self._checker = loop.create_task(self._check_periodically())
        try:
            await asyncio.wait_for(asyncio.shield(startup), timeout)
        except TimeoutError:
            raise TimeoutError(f"enrichers still starting after {timeout}s") from None
        return {e.name: e.available for e in self._enrichers}

    async def _start(self, enricher: Enricher) -> None:
        if not await self._try_start(enricher):
            self._retry_later(enricher)

    def _retry_later(self, enricher: Enricher) -> None:
        """Without periodic health checks, a failed start-up is retried with
        backoff on its own, so that one failure never disables an enricher
        for good."""
        if self._interval is not None or enricher.name in self._retries:
            return  # the health checks retry it
        task = asyncio.get_running_loop().create_task(self._start_with_backoff(enricher))
        self._retries[enricher.name] = task
        task.add_done_callback(lambda _: self._retries.pop(enricher.name, None))

    async def _start_with_backoff(self, enricher: Enricher) -> None:
        delay = _FIRST_RETRY
        while not await self._try_start_after(enricher, delay):
            delay = min(delay * 2, _LAST_RETRY)

    async def _try_start_after(self, enricher: Enricher, delay: float) -> bool:
        await asyncio.sleep(delay)
        return await self._try_start(enricher)

    async def _try_start(self, enricher: Enricher) -> bool:
        if enricher.name in self._starting:
            return False  # starting already (a slow start-up a health check finds)
        self._starting.add(enricher.name)
        try:
            with _in_enricher():
                await enricher.startup()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # KeyboardInterrupt from a _startup must not kill the loop
            if _closing(exc):
                raise GeneratorExit from None
            if enricher.name in self._reported:
                return False  # reported once until it starts: retried quietly
            self._reported.add(enricher.name)
            _report.error(
                "enricher %r failed to start (%s: %s); it is skipped as "
                "'unavailable' until a later start-up attempt succeeds",
                enricher.name,
                type(exc).__name__,
                _shown(exc),
            )
            return False
        finally:
            self._starting.discard(enricher.name)
        self._reported.discard(enricher.name)
        return True

    async def shutdown_all(self, timeout: float | None = None) -> None:
        """Stop the health checks, then every enricher, dependants first:
        level by level, each level's enrichers together.

        With ``timeout``: a level still stopping when it has passed is cut
        off (cancelled) and the levels it depends on are stopped all the
        same, together, within :data:`LAST_GRACE` more seconds: a
        dependant's hung ``_shutdown`` must not leave its dependencies'
        pools open. The whole takes at most ``timeout`` plus
        :data:`SHUTDOWN_SLACK`, however its enrichers behave, and the
        enrichers not stopped (cut off, or never begun) are reported.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        own = self._own_tasks()
        for task in own:
            task.cancel()
        # Waited for, not awaited: their CancelledError is their own, and a
        # cancellation of this shutdown must not be taken for it. A
        # start-up, health check or earlier shutdown that ignores its
        # cancellation is left to end on its own (unfinished()): the
        # enrichers are stopped all the same (one still starting, once its
        # start-up lets go of it).
        if self._checker is not None:
            await asyncio.wait({self._checker})
        checks = [task for task in own if task in self._checks.values()]
        if checks:
            await asyncio.wait(checks, timeout=_CHECK_GRACE)
        starts = [task for task in own if task is not self._checker and task not in checks]
        if starts:
            # A start-up ignoring its cancellation holds only its own
            # enricher (its lock): the others are not kept waiting for it.
            await asyncio.wait(starts, timeout=_START_GRACE)
        for task in own:
            if task.done():
                retrieve_outcome(task)
        # Those that ignored their cancellation stay listed: unfinished().
        self._checker = None
        if self._startup is not None and self._startup.done():
            self._startup = None
        self._retries = {name: retry for name, retry in self._retries.items() if not retry.done()}
        self._checks = {name: check for name, check in self._checks.items() if not check.done()}
        # A start-up still running holds its enricher's lock, so that
        # enricher's stop waits for it; nothing else waits for that stop
        # (it never started: it uses nothing it depends on).
        starting = set(self._starting)
        self._stopped = set()
        waves = self._shutdown_waves()
        while waves:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            wave = waves.pop(0)
            tasks = self._start_stopping(wave)
            waited = [task for task, e in zip(tasks, wave, strict=True) if e.name not in starting]
            if waited and not await self._wait_stopping(waited, remaining):
                break
        if waves:  # cut off: what the rest depended on is stopped all the same
            tasks = self._start_stopping([e for wave in waves for e in wave])
            await self._wait_stopping(tasks, LAST_GRACE)
        not_stopped = self.not_stopped()
        if timeout is not None and not_stopped:
            report_slow_shutdown(timeout, not_stopped)

    def _start_stopping(self, enrichers: list[Enricher]) -> list[asyncio.Task[None]]:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._stop(enricher)) for enricher in enrichers]
        for task in tasks:
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
            task.add_done_callback(retrieve_outcome)
        return tasks

    async def _wait_stopping(self, tasks: list[asyncio.Task[None]], timeout: float | None) -> bool:
        """Wait for ``tasks`` at most ``timeout`` seconds; cancel those still
        running then (their hooks cut off), and those of a cancelled wait.
        Whether all ended in time."""
        try:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise
        for task in pending:
            task.cancel()
        return not pending

    def _shutdown_waves(self) -> list[list[Enricher]]:
        """The enrichers in the order they stop: by dependency level, the
        last level first, each level's enrichers together (none depends on
        another of its level)."""
        depth: dict[str, int] = {}
        for enricher in self._enrichers:  # registered dependencies first
            depth[enricher.name] = 1 + max(
                (depth.get(name, -1) for name in enricher.dependencies), default=-1
            )
        waves: dict[int, list[Enricher]] = {}
        for enricher in reversed(self._enrichers):
            waves.setdefault(depth[enricher.name], []).append(enricher)
        return [waves[level] for level in sorted(waves, reverse=True)]

    async def _stop(self, enricher: Enricher) -> None:
        try:
            with _in_enricher():
                await enricher.shutdown()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # one enricher must not stop the others
            if _closing(exc):
                raise GeneratorExit from None
            _report.warning(
                "enricher %r failed to shut down cleanly (%s: %s)",
                enricher.name,
                type(exc).__name__,
                _shown(exc),
            )
        self._stopped.add(enricher.name)

    def not_stopped(self) -> list[str]:
        """The enrichers whose shutdown has not ended (not begun, or still
        running), once :meth:`shutdown_all` began."""
        return [e.name for e in self._enrichers if e.name not in self._stopped]

    def unfinished(self) -> int:
        """How many of its own tasks (start-up, restarts, health checks)
        are still running: after :meth:`shutdown_all` was cancelled, those
        that ignored their cancellation."""
        return sum(1 for task in self._own_tasks() if not task.done())

    def _own_tasks(self) -> list[asyncio.Future[Any]]:
        """Its start-up, restarts and health checks, as far as they exist."""
        tasks = [
            self._startup,
            *self._retries.values(),
            *self._checks.values(),
            self._checker,
            *self._stopping,
        ]
        return [task for task in tasks if task is not None]

    async def health_check_all(self, timeout: float | None = None) -> dict[str, bool]:
        """Check every enricher; restart those that are not started.

        Returns the health of each enricher by name. Each check has
        ``timeout`` seconds (default: the health check interval, else 30 s):
        one that has not answered by then has failed, and the round goes on
        without it, so a check that hangs never holds up the others' later
        rounds. It is cancelled, and until it ends that enricher is not
        checked again. A start-up the check runs (the enricher was not
        started) is not cancelled: it goes on, and the enricher is not
        healthy until it ends.
        """
        if timeout is None:
            timeout = self._interval if self._interval is not None else _CHECK_TIMEOUT
        checks: dict[str, asyncio.Future[bool]] = {}
        new = []
        for enricher in self._enrichers:
            running = self._checks.get(enricher.name)
            if running is None or running.done():  # done: ended after its round gave up
                running = asyncio.ensure_future(self._check(enricher))
                running.add_done_callback(retrieve_outcome)
                self._checks[enricher.name] = running
                new.append(running)
            checks[enricher.name] = running
        if new:  # one still running from an earlier round has had its time
            await asyncio.wait(new, timeout=timeout)
        health = {}
        for enricher in self._enrichers:
            check = checks[enricher.name]
            if check.done():
                del self._checks[enricher.name]
                health[enricher.name] = (
                    not check.cancelled() and check.exception() is None and check.result()
                )
            else:
                health[enricher.name] = False
                if enricher.name in self._starting:
                    continue  # a slow start-up is not a failed one: it goes on
                check.cancel()  # it stays listed until it ends
                self._check_timed_out(enricher)
        return health

    def _check_timed_out(self, enricher: Enricher) -> None:
        was = enricher.available
        enricher.available = False
        enricher.last_error = "health check timed out"
        if was:
            _report.warning(
                "enricher %r did not answer its health check; skipping it", enricher.name
            )

    async def _check(self, enricher: Enricher) -> bool:
        if not enricher.is_started and not await self._try_start(enricher):
            return False
        was = enricher.available
        with _in_enricher():
            healthy = await enricher.health_check()
        if was and not healthy:
            _report.warning("enricher %r failed its health check; skipping it", enricher.name)
        elif healthy and not was:
            _report.info("enricher %r is healthy again", enricher.name)
        return healthy

    async def _check_periodically(self) -> None:
        interval = self._interval
        assert interval is not None
        clock = asyncio.get_running_loop().time
        due = clock() + interval
        while True:
            # Rounds are due every interval, however long the last took (a
            # round waits for a check that hangs up to the next one's due).
            await asyncio.sleep(max(0.0, due - clock()))
            due = clock() + interval
            try:
                await self.health_check_all()
            except Exception:
                _report.exception("enrichlog: health check round failed")

    @contextlib.asynccontextmanager
    async def managed_enrichers(self) -> AsyncIterator[EnricherLifecycleManager]:
        """``async with manager.managed_enrichers():`` starts all enrichers on
        entry and shuts them down on exit, on the current loop."""
        await self.startup_all()
        try:
            yield self
        finally:
            await self.shutdown_all()

    def status(self) -> dict[str, dict[str, Any]]:
        """Per enricher: started, healthy, available and the last error."""
        return {
            e.name: {
                "started": e.is_started,
                "healthy": e.is_healthy,
                "available": e.available,
                "last_error": e.last_error,
            }
            for e in self._enrichers
        }

    def after_fork_in_child(self) -> None:
        """In a forked child: every enricher starts afresh on the new loop."""
        self._checker = self._startup = None
        self._retries = {}
        self._starting = set()
        self._checks = {}
        self._stopping = set()
        self._stopped = set()
        for enricher in self._enrichers:
            enricher.after_fork_in_child()


def report_slow_shutdown(timeout: float, not_stopped: Sequence[str]) -> None:
    """Say that enrichers outlasted ``shutdown_timeout`` (cut off), and
    which: their ``_shutdown`` was cut off or never ran (a pool they hold
    may be left open)."""
    _report.warning(
        "enrichlog: enrichers did not shut down within %.3gs; not stopped: %s",
        timeout,
        ", ".join(map(repr, not_stopped)),
    )


@contextlib.contextmanager
def _in_enricher() -> Iterator[None]:
    """Mark an enricher's ``_startup``, ``_shutdown`` or ``_health_check``
    (and the tasks it starts) as enricher code, as its calls are: an event
    it logs is written as it is (an ``ainfo`` there used to wait for the
    very start-up it ran in), and ``configure_logging()`` or ``shutdown()``
    from there is refused (one in a ``_startup`` used to block the start-up
    for ``startup_timeout``, or replace the container being started)."""
    previous = IN_ENRICHMENT.get()
    IN_ENRICHMENT.set(True)
    try:
        yield
    finally:
        # Not reset(token): a start-up left running at exit ends in another
        # context than the one it began in.
        IN_ENRICHMENT.set(previous)


def retrieve_outcome(task: asyncio.Future[Any]) -> None:
    """Read the outcome of a finished task nobody awaits (any more): a
    cancelled gather() ends with CancelledError as its exception, and a
    failed task with its own, which asyncio reports if nobody reads it."""
    if not task.cancelled():
        task.exception()


def _closing(exc: BaseException) -> bool:
    """Whether ``exc`` comes from closing the coroutine (a start-up or
    shutdown abandoned on a loop that stopped, finalised at interpreter
    exit), possibly replaced by the enricher's lock, which needs the loop
    that is gone: nothing failed, nothing to report, and the GeneratorExit
    must go on out for the close to succeed quietly.

    A close comes from outside any task's step; a GeneratorExit while a
    task runs this coroutine is the enricher's own (``raise
    GeneratorExit``): a failure like any other, which must not escape into
    ``shutdown()`` or ``configure_logging()``."""
    if not (isinstance(exc, GeneratorExit) or isinstance(exc.__context__, GeneratorExit)):
        return False
    try:
        return asyncio.current_task() is None
    except RuntimeError:  # no loop runs here: finalised after it ended
        return True


#: The most of an exception's text a report shows (masking a text costs in
#: proportion to it: a 100 KB message held configure_logging for seconds).
_SHOWN_CHARACTERS = 1_000


def _shown(exc: BaseException) -> str:
    """An enricher's exception's text for a report: cut short, masked."""
    return mask_secrets(shortened(str(exc), _SHOWN_CHARACTERS))
