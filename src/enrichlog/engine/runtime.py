"""The one long-lived event loop enrichers run on.

Enrichers start, run and stop on the same loop, so loop-bound resources
(asyncpg pools, httpx clients) opened in ``_startup`` stay valid for every
event. Two runtimes give that loop:

* :class:`EnrichmentRuntime` (``runtime="thread"``): a loop of enrichlog's
  own in a daemon thread, for any application;
* :class:`LoopRuntime` (``runtime="loop"``): the application's own running
  loop, for asyncio applications: no thread, no hop between threads, and
  no competition for the GIL with a second busy thread.

Neither is ever created per event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from ..exceptions import EnricherConfigError
from ..reporting import reporting_logger

__all__ = [
    "DaemonThreadPool",
    "EnrichmentRuntime",
    "LoopRuntime",
    "Runtime",
    "leave_signals_to_the_main_thread",
    "resolver",
    "set_result",
]

_T = TypeVar("_T")

_report = reporting_logger("enrichlog")

#: Signals an application handles (or dies of) on its main thread.
_PROCESS_SIGNALS = frozenset(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)


def leave_signals_to_the_main_thread() -> None:
    """Block, in the calling thread (one of enrichlog's own), the signals
    an application handles, so that the kernel delivers them to its main
    thread. A signal taken by another thread only flags Python's handler for
    the main thread to run; a main thread blocked on a lock or a semaphore
    (a ``multiprocessing`` pool worker waiting for work, say) is then never
    woken to run it, and SIGTERM does nothing."""
    if hasattr(signal, "pthread_sigmask"):
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_BLOCK, _PROCESS_SIGNALS)


class DaemonThreadPool(concurrent.futures.ThreadPoolExecutor):
    """A pool of daemon threads that keeps working while the interpreter
    exits.

    The standard pool's threads are joined at exit (so a blocking enricher
    stuck on a read keeps the process alive) and refuse new work once the
    interpreter's exit began (so an enricher draining at exit could no
    longer resolve a host name or use ``asyncio.to_thread``). This one's
    threads are daemons, started as work arrives (up to ``max_workers``)
    and never refused while it is open. A ``ThreadPoolExecutor`` subclass
    only so that a loop accepts it as its default executor.

    Args:
        max_workers: threads at most.
        thread_name_prefix: names of its threads.
        initializer: called in each new thread.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "enrichlog-pool",
        initializer: Callable[[], object] | None = None,
    ) -> None:
        # The standard pool's state is not used: no super().__init__().
        self._max = max_workers or 8
        self._prefix = thread_name_prefix
        self._init = initializer
        self._work: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._pool_lock = threading.Lock()
        self._open = True

    def submit(
        self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[_T]:
        """Run ``fn(*args, **kwargs)`` in a worker thread.

        Raises:
            RuntimeError: the pool was shut down.
        """
        if not self._open:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._work.put((future, fn, args, kwargs))
        with self._pool_lock:
            if self._idle == 0 and len(self._workers) < self._max:
                worker = threading.Thread(
                    target=self._serve,
                    name=f"{self._prefix}-{len(self._workers)}",
                    daemon=True,
                )
                self._workers.append(worker)
                worker.start()
        return future

    def _serve(self) -> None:
        leave_signals_to_the_main_thread()
        if self._init is not None:
            self._init()
        while True:
            with self._pool_lock:
                self._idle += 1
            item = self._work.get()
            with self._pool_lock:
                self._idle -= 1
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            del future, fn, args, kwargs, item

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more work; with ``cancel_futures``, cancel what waits.
        ``wait`` waits at most a second per thread: they are daemons, and
        one stuck in a blocking call must not hold the caller."""
        self._open = False
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in self._workers:
            self._work.put(None)
        if wait:
            for worker in self._workers:
                if worker is not threading.current_thread():
                    worker.join(1.0)


#: ``(future, fn, args, kwargs)``: one call queued in a DaemonThreadPool.
_WorkItem = tuple[
    concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]
]


class Runtime(Protocol):
    """What the pipeline, the plan and the container need of a runtime."""

    lingering: bool

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop enrichment runs on."""
        ...

    @property
    def is_running(self) -> bool:
        """Whether the loop serves."""
        ...

    @property
    def owned_thread_ids(self) -> set[int]:
        """Threads of enrichlog's own (events logged there are not enriched)."""
        ...

    def start(self) -> None:
        """Make the loop available."""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; the exit hooks run."""

    def add_exit_hook(self, hook: Callable[[], object]) -> None:
        """Run ``hook()`` when the loop ends."""

    def in_runtime_thread(self) -> bool:
        """Whether the current thread runs the loop."""
        ...

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Schedule ``callback(*args)`` on the loop from any thread."""

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop and wait for it (not from the loop)."""
        ...

    async def arun(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Await ``coro`` on the loop from any loop."""
        ...

    async def run_blocking(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking callable in a worker thread, from the loop."""
        ...

    def after_fork_in_child(self) -> None:
        """Forget the parent's loop and threads."""


class EnrichmentRuntime:
    """An asyncio event loop in a daemon thread, plus a capped thread pool for
    blocking sync enrichers.

    Args:
        name: the thread's name (shows up in thread dumps and py-spy).
        max_threads: worker threads for blocking sync enrichers.
    """

    def __init__(
        self,
        name: str = "enrichlog-runtime",
        *,
        max_threads: int = 4,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self._name = name
        self._max_threads = max_threads
        self._loop_factory = loop_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: DaemonThreadPool | None = None
        self._start_lock = threading.Lock()
        self._owned: set[int] = set()  # idents of the loop thread and workers
        self._exit_hooks: list[Callable[[], object]] = []
        self._stopped = False
        #: stop() gave up joining the loop thread (something on it would not
        #: stop); that thread may still touch what it owned.
        self.lingering = False

    def _own_this_thread(self) -> None:
        self._owned.add(threading.get_ident())

    # -- life ------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The runtime's loop, started on first use.

        Raises:
            RuntimeError: the runtime was stopped. A stopped runtime is never
                restarted behind the caller's back: only :meth:`start` does.
        """
        loop = self._loop
        if loop is None:
            if self._stopped:
                raise RuntimeError("the enrichment runtime was stopped")
            self.start()  # first use of a runtime nobody started explicitly
            loop = self._loop
            assert loop is not None
        return loop

    def add_exit_hook(self, hook: Callable[[], object]) -> None:
        """Run ``hook()`` on the loop thread when it ends, after the loop's
        remaining tasks were cancelled and ran to completion: the last
        moment that thread owns its state, however late it stops."""
        self._exit_hooks.append(hook)

    @property
    def is_running(self) -> bool:
        """Whether the loop thread is alive and serving."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._loop is not None

    @property
    def executor(self) -> DaemonThreadPool:
        """The pool blocking sync enrichers run in (created on first use)."""
        if self._executor is None:
            self._executor = DaemonThreadPool(
                max_workers=self._max_threads,
                thread_name_prefix=f"{self._name}-blocking",
                initializer=self._own_this_thread,
            )
        return self._executor

    def start(self) -> None:
        """Start the loop thread; idempotent and thread-safe."""
        with self._start_lock:
            if self.is_running:
                return
            self._stopped = False
            ready = threading.Event()
            loop = self._loop_factory()

            # to_thread() and host-name lookups of enrichers keep working
            # while the interpreter exits, and never hold up its exit.
            loop.set_default_executor(DaemonThreadPool(thread_name_prefix=f"{self._name}-default"))

            def serve() -> None:
                leave_signals_to_the_main_thread()
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                try:
                    loop.run_forever()
                finally:
                    _close_loop(loop)
                    for hook in self._exit_hooks:
                        try:
                            hook()
                        except Exception:
                            _report.exception("enrichlog: runtime exit hook failed")

            thread = threading.Thread(target=serve, name=self._name, daemon=True)
            thread.start()
            ready.wait()
            self._owned.add(thread.ident or 0)
            self._loop, self._thread = loop, thread

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop, stop it and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            self._stopped = True
            return
        if thread is threading.current_thread():
            raise RuntimeError("the enrichment runtime cannot stop itself from its own loop")
        if thread.is_alive() and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed meanwhile
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        self.lingering = thread.is_alive()
        self._stopped = True
        self._loop = self._thread = None
        self._owned.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def after_fork_in_child(self) -> None:
        """Drop the parent's loop and thread in a forked child.

        The thread does not exist in the child and the loop's selector is
        shared with the parent, so neither may be touched; a fresh runtime
        starts on next use.
        """
        self._loop = None
        self._thread = None
        self._executor = None
        self._owned.clear()
        self._start_lock = threading.Lock()

    # -- calling in ------------------------------------------------------

    def in_runtime_thread(self) -> bool:
        """Whether the current thread is the runtime's loop thread."""
        return self._thread is threading.current_thread()

    @property
    def owned_thread_ids(self) -> set[int]:
        """Idents of the loop thread and of the worker threads blocking sync
        enrichers run in; the set object stays the same for the runtime's
        life, so hot paths keep a reference to it."""
        return self._owned

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Schedule ``callback(*args)`` on the loop from any thread."""
        self.loop.call_soon_threadsafe(callback, *args)

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Run ``coro`` on the loop; return a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop and wait for its result (blocking).

        Raises:
            RuntimeError: called from the runtime's own thread, where waiting
                would deadlock.
            TimeoutError: ``timeout`` passed; the coroutine is cancelled.
        """
        if self.in_runtime_thread():
            coro.close()
            raise RuntimeError("EnrichmentRuntime.run() called on the runtime's own loop")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"runtime call did not finish within {timeout}s") from None

    async def arun(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Await ``coro`` on the runtime loop from another event loop."""
        if self.in_runtime_thread():
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    async def run_blocking(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking callable in the capped pool, from the runtime loop."""
        loop = asyncio.get_running_loop()
        result: Awaitable[_T] = loop.run_in_executor(self.executor, fn, *args)
        return await result


#: Seconds the loop thread waits, when it ends, for tasks to finish after
#: their cancellation; one that ignores it is left behind.
CANCEL_GRACE = 1.0
#: Rounds of cancellation at most (each may start the calls queued for a slot).
_CANCEL_ROUNDS = 100


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    # In rounds: a call cancelled frees its concurrency slot, and the call
    # queued for that slot starts as a new task, which the next round
    # cancels (left pending, each would be "destroyed but pending" at exit).
    cancelled: set[asyncio.Task[Any]] = set()
    stubborn: set[asyncio.Task[Any]] = set()
    for _ in range(_CANCEL_ROUNDS):
        tasks = {t for t in asyncio.all_tasks(loop) if not t.done()} - cancelled
        if not tasks:
            break
        cancelled |= tasks
        for task in tasks:
            task.cancel()
        _, left = loop.run_until_complete(asyncio.wait(tasks, timeout=CANCEL_GRACE))
        stubborn |= left
    if stubborn:
        _report.warning(
            "enrichlog: %d task(s) ignored their cancellation at shutdown and were left "
            "behind (enricher calls, or an enricher's start-up or shutdown)",
            len(stubborn),
        )
        for task in stubborn:
            # Reported just now: not again, as "Task was destroyed but it is
            # pending!", when the closed loop's task is collected.
            task._log_destroy_pending = False  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):
        loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


class LoopRuntime:
    """The application's own running event loop as the runtime.

    :meth:`start` must run on the loop's thread while the loop runs (an
    ``EnricherConfigError`` otherwise). Events logged on the loop's thread are
    handed off with ``call_soon``, never across threads; other threads use
    ``call_soon_threadsafe``. Blocking sync enrichers run in a capped pool of
    enrichlog's own.

    If the loop ends without the container being shut down (``asyncio.run``
    returning, say), nothing is lost: when ``asyncio.run`` cancels the
    remaining tasks, a guard task of this runtime runs the exit hooks on the
    loop (pending events are written with what they have); a loop closed
    without that (``run_until_complete()`` then ``close()``) has them run
    by the first log call, flush or shutdown that finds it closed.

    Args:
        name: the prefix of the worker threads' names.
        max_threads: worker threads for blocking sync enrichers.
    """

    def __init__(self, name: str = "enrichlog", *, max_threads: int = 4) -> None:
        self._name = name
        self._max_threads = max_threads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._executor: DaemonThreadPool | None = None
        self._owned: set[int] = set()  # the pool's worker threads
        self._exit_hooks: list[Callable[[], object]] = []
        self._closing_hooks: list[Callable[[], Coroutine[Any, Any, object]]] = []
        self._guard: asyncio.Task[None] | None = None
        self._hooks_ran = False
        self._hooks_lock = threading.Lock()
        self.lingering = False
        #: Set by :meth:`close_when_free`: the closing hooks are still due.
        self._closing_due = False
        self._closing_done = False
        #: The task running the closing hooks once the loop was free again.
        self._closing_task: asyncio.Task[None] | None = None
        self._late_guard: asyncio.Task[None] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The application's loop this runtime was started on.

        Raises:
            RuntimeError: not started, or the loop is closed.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the application's event loop is not available")
        return loop

    @property
    def is_running(self) -> bool:
        """Whether the loop is running."""
        loop = self._loop
        return loop is not None and not loop.is_closed() and loop.is_running()

    @property
    def bound_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop it was started on, closed or not (``None`` before)."""
        return self._loop

    @property
    def loop_closed(self) -> bool:
        """Whether the loop it was started on is closed."""
        loop = self._loop
        return loop is not None and loop.is_closed()

    @property
    def owned_thread_ids(self) -> set[int]:
        """The worker threads of blocking sync enrichers (the loop's thread
        is the application's)."""
        return self._owned

    @staticmethod
    def running_loop() -> asyncio.AbstractEventLoop:
        """The loop running in this thread, which :meth:`start` binds to.

        Raises:
            EnricherConfigError: no event loop is running here.
        """
        loop = asyncio._get_running_loop()
        if loop is None:
            raise EnricherConfigError(
                "runtime='loop' runs enrichment on the application's event loop, and none "
                "is running here: configure logging from inside it (an ASGI lifespan, "
                "'async with configure_logging(...)', or 'await container.astartup()'), "
                "or use runtime='thread'"
            )
        return loop

    def start(self) -> None:
        """Bind to the loop running in this thread.

        Raises:
            EnricherConfigError: no event loop is running here.
        """
        loop = self.running_loop()
        if loop is self._loop:
            return
        self._loop, self._thread_id = loop, threading.get_ident()
        self._hooks_ran = self._closing_due = self._closing_done = False
        self._guard = loop.create_task(self._watch(), name="enrichlog-loop-guard")

    async def _watch(self) -> None:
        """Wait for the loop's end: ``asyncio.run`` cancels every task left.
        Then run the exit hooks, and await the closing hooks (the enrichers'
        shutdown: their pools belong to this loop, which is about to close)
        while ``asyncio.run`` waits for the tasks it cancelled."""
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            # Not run already by a stop, or still due after one that found
            # the loop blocked (close_when_free).
            if self.run_exit_hooks() or self._closing_due:
                await self._run_closing_hooks()
            raise

    async def _run_closing_hooks(self) -> None:
        """Await the closing hooks, unless a run of them completed already
        (they are idempotent: a run the loop's end cut short is done again)."""
        if self._closing_done:
            return
        for hook in self._closing_hooks:
            try:
                await hook()
            except Exception:
                _report.exception("enrichlog: runtime closing hook failed")
        self._closing_done = True

    def close_when_free(self) -> None:
        """The loop does not answer (something blocks it) while the runtime
        stops from another thread: its closing hooks (the enrichers'
        shutdown, whose pools belong to the loop) run once the loop gets
        back to them; if ``asyncio.run`` ends it first, as it ends (the
        guard task stays for that: a task started then would be cancelled
        before its first step)."""
        self._closing_due = True
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self.call_soon(self.ensure_closing)

    def ensure_closing(self) -> asyncio.Task[None] | None:
        """On the loop: the task running the closing hooks that
        :meth:`close_when_free` left due, started now if it was not yet
        (an ``ashutdown()`` that runs before the loop got to it waits for
        it); ``None`` when none is due."""
        if not self._closing_due or self._closing_done:
            return None
        if self._closing_task is None:
            self._closing_task = asyncio.get_running_loop().create_task(self._run_closing_hooks())
        return self._closing_task

    def stop(self, timeout: float = 5.0) -> None:
        """Stop using the loop: run the exit hooks (pending events are
        written: on the loop while it runs, else here), stop the guard task
        and the worker pool."""
        if self.is_running and not self.in_runtime_thread():
            done = threading.Event()

            def on_the_loop() -> None:
                self.run_exit_hooks()
                done.set()

            with contextlib.suppress(RuntimeError):  # closed meanwhile
                self.loop.call_soon_threadsafe(on_the_loop)
                done.wait(timeout)
        self.run_exit_hooks()
        guard, self._guard = self._guard, None
        if self._closing_due:
            self._late_guard = guard  # held: it runs the closing hooks if the loop ends first
        elif guard is not None and not guard.done():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self.call_soon(guard.cancel)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def add_exit_hook(self, hook: Callable[[], object]) -> None:
        """Run ``hook()`` when the runtime stops or the loop ends."""
        self._exit_hooks.append(hook)

    def add_closing_hook(
        self, hook: Callable[[], Coroutine[Any, Any, object]], *, first: bool = False
    ) -> None:
        """Await ``hook()`` on the loop when it ends as ``asyncio.run`` ends
        it, without the runtime having been stopped, after the exit hooks
        (``first``: before the hooks added so far)."""
        if first:
            self._closing_hooks.insert(0, hook)
        else:
            self._closing_hooks.append(hook)

    def run_exit_hooks(self) -> bool:
        """Run the exit hooks once (idempotent, from any thread); whether
        this call ran them."""
        with self._hooks_lock:
            if self._hooks_ran:
                return False
            self._hooks_ran = True
        guard = self._guard
        if guard is not None and self.loop_closed:
            # Pending on a loop that closed without cancelling it: asyncio
            # would report it destroyed at exit, for a loop it was right
            # to leave.
            guard._log_destroy_pending = False  # type: ignore[attr-defined]
        for hook in self._exit_hooks:
            try:
                hook()
            except Exception:
                _report.exception("enrichlog: runtime exit hook failed")
        return True

    def in_runtime_thread(self) -> bool:
        """Whether the current thread is the loop's."""
        return self._thread_id == threading.get_ident()

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Schedule ``callback(*args)`` on the loop: ``call_soon`` from the
        loop's thread, ``call_soon_threadsafe`` from any other."""
        loop = self.loop
        if self._thread_id == threading.get_ident():
            loop.call_soon(callback, *args)
        else:
            loop.call_soon_threadsafe(callback, *args)

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the loop and wait for it, from another thread.

        Raises:
            RuntimeError: called on the loop's own thread (it would block the
                loop it waits for): use :meth:`arun`.
            TimeoutError: ``timeout`` passed; the coroutine is cancelled.
        """
        if self.in_runtime_thread():
            coro.close()
            raise RuntimeError("LoopRuntime.run() called on the loop's own thread; await arun()")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"runtime call did not finish within {timeout}s") from None

    async def arun(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Await ``coro`` on the runtime's loop from any loop."""
        if asyncio.get_running_loop() is self._loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def run_blocking(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking callable in the capped pool, from the loop."""
        if self._executor is None:
            self._executor = DaemonThreadPool(
                max_workers=self._max_threads,
                thread_name_prefix=f"{self._name}-blocking",
                initializer=lambda: self._owned.add(threading.get_ident()),
            )
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def after_fork_in_child(self) -> None:
        """The parent's loop does not run in the child: forget it (the
        child's application starts its own)."""
        self._loop = self._thread_id = self._guard = self._executor = None
        self._late_guard = self._closing_task = None
        self._owned.clear()


def set_result(future: asyncio.Future[None]) -> None:
    """Resolve ``future`` with ``None`` unless it is done (cancelled by its
    waiter's timeout, say). Call it on the future's loop."""
    if not future.done():
        # A loop closed by hand meanwhile: its waiter (an ainfo() task) will
        # never run again, and resolving it would raise (scheduling its
        # callbacks on a closed loop) into the hook writing the events.
        with contextlib.suppress(RuntimeError):
            future.set_result(None)


def resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> Callable[[], None]:
    """A callable that resolves ``future`` from any thread, on ``loop``; it
    does nothing once that loop is closed (its waiter is gone)."""

    def resolve() -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(set_result, future)

    return resolve
