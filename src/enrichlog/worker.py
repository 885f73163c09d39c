"""`Worker`: enriches and writes the events producers published to NATS
JetStream (``python -m enrichlog worker``).

A worker binds the stream's durable pull consumer (one per subject, shared by
every worker of it, so they split the load), fetches only as many events as it has
room for (``max_in_flight``), and feeds each decoded event to the enrichment
engine of a :class:`~enrichlog.container.LoggingContainer` built from the
same settings as an application's: the plan's levels, cache, breaker, retry,
timeouts, concurrency limits and batching all apply, and the pipeline writes
lines in the order events were fed. Each event's line is written by the
worker's :class:`OutputSink`; the pipeline's per-event ``on_written``
callback is where the worker learns the outcome, and only then does it
acknowledge the message.

* Written (degraded enrichment included: a field left out with its reason in
  ``enrichment_errors`` is a success): acknowledged, and the ``event_id``
  remembered, so a redelivery of it is acknowledged without a second line.
* Not written (the output failed): ``nak`` with an exponential delay with
  jitter; on the ``max_deliver``-th delivery the event is published to the
  dead-letter stream with the reason and terminated.
* Not acknowledged at all (the worker died): redelivered by the server after
  ``ack_wait``; an event delivered more than ``max_deliver`` times without an
  answer is dead-lettered on arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import os
import random
import re
import signal
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, TextIO

from structlog.typing import EventDict

from .container import LoggingContainer
from .engine.chain import free_key
from .engine.output import append_unbuffered, open_for_appending, reopen_files
from .exceptions import EnricherConfigError, EnrichlogError
from .metrics import WORKER_COUNTERS
from .reporting import reporting_logger
from .settings import LoggingSettings
from .transport.codec import EVENT_ID, ID_HEADER, TRANSPORT_ID, decode_event
from .transport.config import TransportConfig, subject_matches
from .transport.deadletter import dead_letter_body
from .transport.nats import (
    connect,
    ensure_stream,
    failure_text,
    import_nats,
    server_said,
    unless_stopped,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

__all__ = ["OutputSink", "Worker", "WorkerMetrics", "redelivery_delay"]

_report = reporting_logger("enrichlog.worker")

#: Event ids a worker remembers having written (the oldest are forgotten).
DEDUP_CAPACITY = 100_000
#: Events fetched per request, at most.
FETCH_BATCH = 256
#: Seconds a worker gathers completed events before answering them together.
ACK_DELAY = 0.005
#: Bytes of a message's maximum size left for a dead letter's headers.
_HEADERS_ROOM = 512
#: Seconds a worker that made the durable consumer waits before it reads
#: the consumer again: a worker of another subject that found it missing at
#: the same moment may make it too, and the server takes that second
#: creation as an update of the first one's filter.
CONSUMER_SETTLE = 0.5
#: Seconds a worker waits for its first connection before it reports the
#: broker unreachable (and keeps trying).
CONNECT_WAIT = 10.0
_METHODS = frozenset({"debug", "info", "warning", "error", "critical"})
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
_MAX_OPEN_FILES = 64


def redelivery_delay(deliveries: int, base: float, cap: float) -> float:
    """Seconds before a failed event is delivered again: ``base`` doubled
    for each delivery so far, capped at ``cap``, with jitter (between half
    and all of it), so events that failed together do not return together."""
    delay = min(cap, base * 2.0 ** max(deliveries - 1, 0))
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not secrecy


def _unreachable(exc: BaseException, waited: float, errors: list[Exception]) -> str:
    """Why the first connection failed: ``exc``; for the client's bare
    TimeoutError, how long it tried and the last error its attempts met."""
    if not isinstance(exc, TimeoutError) or str(exc):
        return failure_text(exc)
    reason = f"TimeoutError: no connection within {round(waited, 1):g}s"
    return f"{reason}; last error {failure_text(errors[-1])}" if errors else reason


@dataclass(frozen=True)
class WorkerMetrics:
    """A worker's counters at one moment.

    Attributes:
        consumed: messages fetched; ``redelivered`` of them had been
            delivered before.
        acknowledged: messages acknowledged (written, filtered on purpose,
            or already written: ``duplicates_skipped``).
        nacked: messages handed back for a later retry.
        dead_lettered: events sent to the dead-letter stream.
        write_failed: lines the output refused.
        in_flight: events fetched and not yet answered.
        consumer_lag: events in the stream not yet delivered to any worker,
            from the consumer's info (``None`` before the first reading);
            ``ack_pending``: delivered and not yet acknowledged.
    """

    consumed: int = 0
    acknowledged: int = 0
    nacked: int = 0
    dead_lettered: int = 0
    redelivered: int = 0
    duplicates_skipped: int = 0
    write_failed: int = 0
    in_flight: int = 0
    consumer_lag: int | None = None
    ack_pending: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


class OutputSink:
    """Where a worker writes lines: ``stdout``, ``stderr``, a file, or a file
    per event when the path names fields in braces
    (``/var/log/apps/{service}.log``: each value reduced to letters, digits,
    ``.``, ``-`` and ``_``; a missing one is ``unknown``).

    A write reports its failure instead of raising, and a file that failed
    is opened again on the next write, so an output that comes back is used
    again. Files are written without a buffer, so a failed line leaves no
    bytes behind for a later write to put into the file; a line the disk
    took only part of (it filled up) stays a broken line of its own: the
    next line written there starts on a new line.

    Attributes:
        written: lines written.
        write_failed: lines the output refused (a redelivered event's
            line counts once per attempt).
        closed: why the output can never be written again (a pipe whose
            reader went away, a closed standard stream), else ``None``.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.written = 0
        self.write_failed = 0
        self.closed: str | None = None
        self._template = target if _FIELD.search(target) else None
        self._files: OrderedDict[str, IO[bytes]] = OrderedDict()
        #: Targets that end in a cut line, with the identity of that file
        #: (device, inode; None for a standard stream).
        self._torn: dict[str, tuple[int, int] | None] = {}
        self._lock = threading.Lock()

    def check(self) -> None:
        """Refuse, at start, an output that cannot be written: a file that
        cannot be opened for appending, or, for a path with placeholders,
        a directory before the first placeholder that does not exist (a
        typo would otherwise send every event to the dead-letter stream).

        Raises:
            EnricherConfigError: naming the output and why.
        """
        if self.target in ("stdout", "stderr"):
            return
        if self._template is None:
            open_for_appending(self.target).close()
            return
        first = _FIELD.search(self.target)
        prefix = self.target[: first.start()] if first is not None else self.target
        fixed = os.path.dirname(os.path.expanduser(prefix))
        if fixed and not os.path.isdir(fixed):
            raise EnricherConfigError(
                f"output {self.target!r}: the directory {fixed!r} does not exist"
            )

    def target_for(self, event: dict[str, Any]) -> str:
        """The output ``event`` goes to."""
        if self._template is None:
            return self.target
        return _FIELD.sub(lambda match: _path_part(event.get(match[1])), self._template)

    def write(self, target: str, line: bytes) -> str | None:
        """Write ``line`` and a newline to ``target``; ``None`` when
        written, else why not."""
        with self._lock:
            data, done = b"", 0
            try:
                handle = self._handle(target)
            except (OSError, ValueError) as exc:
                failure: BaseException | None = exc
            else:
                # After a cut line, end it first.
                data = (b"\n" if target in self._torn else b"") + line + b"\n"
                done, failure = _write_whole(handle, data)
            if failure is None:
                self._torn.pop(target, None)
                self.written += 1
                return None
            self.write_failed += 1
            if done and data[done - 1 : done] != b"\n":
                self._torn[target] = _identity(handle)
            elif done:  # what was cut ended at a newline
                self._torn.pop(target, None)
            self._forget(target)
        detail = failure.strerror if isinstance(failure, OSError) and failure.strerror else failure
        reason = f"output {target!r} cannot be written: {type(failure).__name__}: {detail}"
        if self.closed is None and _for_good(target, failure):
            self.closed = reason
            if target in ("stdout", "stderr"):
                _quiet_standard_stream(target)
        return reason

    def _handle(self, target: str) -> IO[bytes]:
        if target in ("stdout", "stderr"):
            buffer = getattr(getattr(sys, target), "buffer", None)
            if buffer is None:  # started without it (>&-), or replaced by a text-only one
                raise OSError(errno.EBADF, f"the process has no binary {target}")
            return buffer  # type: ignore[no-any-return]
        handle = self._files.get(target)
        if handle is None:
            handle = append_unbuffered(os.path.expanduser(target))  # closed by close()
            if target in self._torn:
                status = os.fstat(handle.fileno())
                if status.st_size == 0 or self._torn[target] != (status.st_dev, status.st_ino):
                    # Another file (the cut one rotated away), or the same
                    # one emptied (copytruncate): nothing to end.
                    del self._torn[target]
            self._files[target] = handle
            while len(self._files) > _MAX_OPEN_FILES:
                _, oldest = self._files.popitem(last=False)
                with contextlib.suppress(OSError):
                    oldest.close()
        else:
            self._files.move_to_end(target)
        return handle

    def _forget(self, target: str) -> None:
        handle = self._files.pop(target, None)
        if handle is not None:
            with contextlib.suppress(OSError, ValueError):
                handle.close()

    def reopen(self) -> None:
        """Reopen the files by their path at their next write (SIGHUP: a
        log rotation moved them away)."""
        self.close()

    def close(self) -> None:
        """Close the files."""
        with self._lock:
            for target in list(self._files):
                self._forget(target)


def _for_good(target: str, failure: BaseException) -> bool:
    """Whether a write failure means the output will never take a line
    again: a pipe whose reader went away (``| head``), a standard stream
    that is closed. (A file that fails is tried again at its next write.)"""
    if isinstance(failure, BrokenPipeError):
        return True
    if target not in ("stdout", "stderr"):
        return False
    return isinstance(failure, ValueError) or (
        isinstance(failure, OSError) and failure.errno == errno.EBADF
    )


def _quiet_standard_stream(target: str) -> None:
    """Point a standard stream whose pipe broke at ``/dev/null``: what is
    left in its buffer would otherwise fail again when the interpreter
    flushes it at exit, with a traceback."""
    stream = getattr(sys, target, None)
    if stream is None:
        # Started without it (``>&-``): nothing is buffered, and its number
        # may be another file's now (the event loop's own): left alone.
        return
    try:
        descriptor = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, descriptor)
        finally:
            os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


def _identity(handle: IO[bytes]) -> tuple[int, int] | None:
    """The device and inode of the file ``handle`` writes, if it is one."""
    try:
        status = os.fstat(handle.fileno())
    except (OSError, ValueError, AttributeError):  # not a file (io.UnsupportedOperation: OSError)
        return None
    return status.st_dev, status.st_ino


def _write_whole(handle: IO[bytes], data: bytes) -> tuple[int, BaseException | None]:
    """Write all of ``data``, again for what a write left over (a disk that
    filled up takes only part); how many bytes were written, and the
    failure, if any."""
    done = 0
    try:
        while done < len(data):
            taken = handle.write(data[done:] if done else data)
            if not taken:  # nothing taken, and no error: the same as one
                return done, OSError(errno.EIO, "the output took only part of a line")
            done += taken
        handle.flush()
    except (OSError, ValueError) as exc:
        return done, exc
    return done, None


async def _poll(condition: Callable[[], bool], deadline: float) -> None:
    """Wait until ``condition()`` holds or the monotonic ``deadline`` passes
    (polled: what it reads changes on this loop and on the runtime's thread)."""
    while not condition():
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.02)


def _event_id(message: Msg, event: dict[str, Any]) -> str:
    """What identifies the event a message carries: the id enrichlog gave
    it (:data:`ID_HEADER`: a producer's message id, kept by a replay),
    whatever the event's own ``event_id`` field holds; for a message from
    another publisher, its ``event_id`` field when that is a non-empty
    string, else its ``Nats-Msg-Id``, else ``seq-<stream sequence>``."""
    headers = message.headers or {}
    found = headers.get(ID_HEADER)
    if found:
        return str(found)
    field = event.get(EVENT_ID)
    if isinstance(field, str) and field:
        return field
    found = headers.get("Nats-Msg-Id")
    if found:
        return str(found)
    return f"seq-{message.metadata.sequence.stream}"


def _place_ids(event: dict[str, Any], event_id: str) -> None:
    """Put the transport's id ``event_id`` in ``event``: as its
    ``event_id`` when it has none; beside the application's own
    ``event_id`` (its data, written unchanged) as ``enrichlog_id``
    otherwise. ``enrichlog_id`` is the worker's: an application's field of
    that name is kept as ``enrichlog_id_2`` (the first free suffix), as an
    application's ``render_error`` becomes ``render_error_2``, so readers
    that deduplicate by it never merge two events."""
    if TRANSPORT_ID in event:
        event[free_key(event, TRANSPORT_ID)] = event.pop(TRANSPORT_ID)
    if EVENT_ID not in event:
        event[EVENT_ID] = event_id
    elif event[EVENT_ID] != event_id:
        event[TRANSPORT_ID] = event_id


def _keep_ids(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """After enrichment, before rendering: the line still carries the id
    the worker deduplicates by, whatever a worker-side enricher did to
    ``event_id`` or ``enrichlog_id`` (replaced or removed them). An
    enricher's own ``event_id`` is kept, as an application's is, with the id
    in ``enrichlog_id`` beside it; its ``enrichlog_id`` becomes
    ``enrichlog_id_2``."""
    del method_name
    if logger.__class__ is not _Delivery:
        return event_dict
    event_id = logger.event_id
    carried = event_dict[TRANSPORT_ID] if TRANSPORT_ID in event_dict else event_dict.get(EVENT_ID)
    if carried.__class__ is str and carried == event_id:
        return event_dict
    if TRANSPORT_ID in event_dict:
        event_dict[free_key(event_dict, TRANSPORT_ID)] = event_dict.pop(TRANSPORT_ID)
    if EVENT_ID in event_dict:
        event_dict[TRANSPORT_ID] = event_id
    else:
        event_dict[EVENT_ID] = event_id
    return event_dict


def _nothing() -> None:
    """Nothing to give back."""


def _path_part(value: object) -> str:
    text = _UNSAFE.sub("_", str(value)).lstrip(".")[:100] if value is not None else ""
    return text or "unknown"


class _Delivery:
    """One event in a worker: the wrapped logger its line is written to (so
    the worker learns whether it was), and the messages to answer."""

    __slots__ = (
        "deliveries",
        "event",
        "event_id",
        "filtered",
        "messages",
        "reason",
        "sink",
        "target",
        "written",
    )

    def __init__(
        self,
        sink: OutputSink,
        target: str,
        message: Msg,
        event: dict[str, Any],
        event_id: str,
        deliveries: int,
    ) -> None:
        self.sink = sink
        self.target = target
        self.messages = [message]
        self.event = event
        self.event_id = event_id
        self.deliveries = deliveries
        self.written = False
        self.filtered = False
        self.reason: str | None = None

    def msg(self, message: str | bytes) -> None:
        """Write the rendered line (the pipeline's writer calls this)."""
        line = message.encode("utf-8", "backslashreplace") if isinstance(message, str) else message
        self.reason = self.sink.write(self.target, line)
        self.written = self.reason is None

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg
    failure = msg


class Worker:
    """Consumes a transport's stream, enriches and writes each event, and
    acknowledges it once its line is written.

    Args:
        settings: as for an application (``transport`` is required); the
            output, enrichers, resilience defaults, ``max_in_flight``,
            ``max_deliver``, ``ack_wait``, ``redeliver_delay``...
        enrichers: enrichers in code, as for ``configure_logging``.
        stats_interval: seconds between metrics lines on ``stats_out``
            (0: only at exit).
        stats_out: where metrics lines go (standard error by default).
        fetch_timeout: seconds a fetch waits on an empty stream.

    Raises:
        EnricherConfigError: the settings, an enricher or the transport URI
            is not usable, or nats-py is missing.
    """

    def __init__(
        self,
        settings: LoggingSettings,
        enrichers: Iterable[object] = (),
        *,
        stats_interval: float = 30.0,
        stats_out: TextIO | None = None,
        fetch_timeout: float = 1.0,
    ) -> None:
        if not settings.transport:
            raise EnricherConfigError(
                "the worker needs a transport: set ENRICHLOG_TRANSPORT "
                "(nats://host:4222?stream=LOGS&subject=logs.app)"
            )
        self.settings = settings
        self.config = TransportConfig.parse(settings.transport, dlq_subject=settings.dlq_subject)
        import_nats()
        # The engine of an application that writes locally: the same plan,
        # pipeline and renderer; lines go to this worker's sink.
        self.container = LoggingContainer(
            settings.model_copy(update={"transport": None}), enrichers
        )
        self.container.add_tap(_keep_ids)
        if not isinstance(settings.output, str):
            raise EnricherConfigError(
                "a worker writes to 'stdout', 'stderr' or a path (with {field} "
                f"placeholders), not to {type(settings.output).__name__}"
            )
        self._sink = OutputSink(settings.output)
        self._sink.check()
        # Its lines are the sink's: the engine hands each to it, and cannot
        # tell a line the output refused.
        self.container.report_worker_metrics(self.metrics, lines=self._sink)
        self._max_in_flight = min(settings.max_in_flight, settings.queue_size)
        self._stats_interval = stats_interval
        self._stats_out = stats_out
        self._fetch_timeout = fetch_timeout
        self._min_fetch = max(1, min(FETCH_BATCH, self._max_in_flight // 4))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        #: Set by every request_stop: run() reads it once it has a loop, for
        #: a stop asked for before (there was no loop to set ``_stop`` on).
        self._stop_requested = False
        self._room = asyncio.Event()
        self._done: deque[_Delivery] = deque()
        self._done_lock = threading.Lock()
        self._done_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._written_ids: OrderedDict[str, None] = OrderedDict()
        self._in_flight: dict[str, _Delivery] = {}
        self._js: JetStreamContext | None = None
        self._dead_letter_limit: int | None = None  # bytes a dead letter may take
        self._subscription: Any = None
        self._consumer_gone = False  # found deleted: made again by _consume
        self._failed: str | None = None  # why the run ends with an error
        self._refused: EnricherConfigError | None = None  # the consumer is another's
        self._closing = False  # the run's helpers stop
        self._counts = dict.fromkeys(WORKER_COUNTERS, 0)
        self._lag: int | None = None
        self._ack_pending: int | None = None
        # Failed dead-letters: reported at most once per drop_report_interval.
        self._dlq_failing = False
        self._dlq_failures = 0
        self._dlq_reported_at = -float("inf")

    # -- views and control -------------------------------------------------------

    def metrics(self) -> WorkerMetrics:
        """The worker's counters now."""
        return WorkerMetrics(
            **self._counts,
            in_flight=len(self._in_flight),
            consumer_lag=self._lag,
            ack_pending=self._ack_pending,
        )

    def request_stop(self) -> None:
        """Stop fetching; finish and acknowledge the events in flight, then
        :meth:`run` returns. Safe from a signal handler on the worker's
        loop, or from another thread; before :meth:`run`, it makes the run
        return at once (a stop signal during the command's start)."""
        # The flag first, the loop next: run() sets the loop before reading
        # the flag, so one of the two sees the other.
        self._stop_requested = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._stop.set()
            self._room.set()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._stop.set)
                loop.call_soon_threadsafe(self._room.set)

    # -- the run -------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until :meth:`request_stop`; then drain and return.
        SIGHUP meanwhile reopens the output files (:meth:`reopen_outputs`).

        Raises:
            EnricherConfigError: the stream exists without the subject, the
                subject belongs to another stream, or the durable consumer
                exists for another subject (found at the start, or later: a
                worker of another subject made it at the same moment).
            EnrichlogError: the output closed for good (a pipe whose reader
                went away): the worker handed back what it held and stopped.
        """
        self._loop = asyncio.get_running_loop()
        give_back = self._take_sighup(self._loop)
        try:
            await self._run()
        finally:
            give_back()
        if self._refused is not None:
            raise self._refused
        if self._failed is not None:
            raise EnrichlogError(f"{self._failed}; the worker stopped")

    def reopen_outputs(self) -> None:
        """Reopen the output files by their path (what SIGHUP does, after
        logrotate moved them away): the worker's own and the engine's."""
        self._sink.reopen()
        reopen_files()

    def _take_sighup(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """SIGHUP reopens the output files while the worker runs, as in an
        application, instead of ending the process; from the main thread
        only. Returns what gives SIGHUP back to the handler it had before.

        The handler is swapped in and out in one step each way, never
        through the default one: ``loop.remove_signal_handler`` would put
        the default back (SIGHUP ends the process) until the caller's own
        handler returned, a moment in which a rotation's SIGHUP ended a
        stopping worker (status 129). It runs :meth:`reopen_outputs` on the
        loop, between its callbacks.
        """
        hup = getattr(signal, "SIGHUP", None)
        if hup is None or threading.current_thread() is not threading.main_thread():
            return _nothing

        def hang_up(_signum: int, _frame: FrameType | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.reopen_outputs)

        try:
            previous = signal.signal(hup, hang_up)
        except (ValueError, OSError, RuntimeError):  # no signals here
            return _nothing

        def give_back() -> None:
            # None: a handler not set from Python, which cannot be put back.
            with contextlib.suppress(ValueError, OSError, TypeError):
                if signal.getsignal(hup) is hang_up:
                    signal.signal(hup, signal.SIG_DFL if previous is None else previous)

        return give_back

    async def _run(self) -> None:
        if self._stop_requested:
            self._stop.set()
        else:
            # Followed for Prometheus; /metrics served when metrics_port is set.
            self.container.observe()
            try:
                # The startup_timeout setting, as for an application (a fixed
                # 30 s held every worker's start behind a stuck _startup); a
                # stop (SIGTERM) cuts the wait short, as it cuts connecting.
                starting = asyncio.to_thread(
                    self.container.start_enrichers, self.container.settings.startup_timeout
                )
                await unless_stopped(starting, self._stop)
            except TimeoutError:
                _report.warning(
                    "enrichlog worker: enrichers still starting; skipped until they are up"
                )
        client = await self._connect()
        if client is None:  # stopped before the broker answered
            await asyncio.to_thread(self.container.shutdown)
            self._sink.close()
            # The line every stop ends with, stopped early or not.
            self._print_line({"enrichlog_worker": self.metrics().as_dict()})
            return
        helpers: list[asyncio.Task[Any]] = []
        try:
            js = self._js = client.jetstream()
            server = self.config.masked_server
            await ensure_stream(js, self.config.stream, self.config.subject, server=server)
            dlq_limit = await ensure_stream(
                js, self.config.dlq_stream, self.config.dlq_subject, server=server
            )
            # Room for the dead letters' headers (their Nats-Msg-Id).
            limits = [client.max_payload - _HEADERS_ROOM]
            if dlq_limit > 0:
                limits.append(dlq_limit - _HEADERS_ROOM)
            self._dead_letter_limit = max(min(limits), 1024)
            self._subscription = await self._bind(js)
            self._print_line(
                {
                    "enrichlog_worker": "started",
                    "transport": self.config.masked,
                    "stream": self.config.stream,
                    "consumer": self.config.consumer,
                }
            )
            helpers = [
                asyncio.create_task(self._watch_lag()),
                asyncio.create_task(self._print_stats()),
            ]
            await self._consume(client, js)
            await self._drain()
        finally:
            # The helpers end on the flag too, and are not waited for long:
            # nats-py may swallow a cancellation that comes during a request
            # (the consumer's figures), and the helper would then go on for
            # good, and the stop with it.
            self._closing = True
            for helper in helpers:
                helper.cancel()
            if helpers:
                await asyncio.wait(helpers, timeout=3.0)
            with contextlib.suppress(Exception):  # the acknowledgements leave first
                await client.flush(timeout=2)
            if self._subscription is not None:  # the last line's lag: after them
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._read_lag(self._subscription), 2.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2.0)
            self._sink.close()
            self._print_line({"enrichlog_worker": self.metrics().as_dict()})

    async def _connect(self) -> Client | None:
        backoff = 0.2
        reported = False
        while not self._stop.is_set():
            started = time.monotonic()
            errors: list[Exception] = []
            try:
                # Reconnection once connected is the client's; the first
                # connection is retried here, so a stop can cut it short.
                first = connect(self.config, name="enrichlog-worker", reconnect=True, errors=errors)
                return await unless_stopped(asyncio.wait_for(first, CONNECT_WAIT), self._stop)
            except Exception as exc:
                if not reported:
                    reported = True
                    # The client retries on its own until the wait runs out,
                    # then says nothing more than TimeoutError: say how long,
                    # and what its attempts met (a refused connection, TLS).
                    _report.warning(
                        "enrichlog worker: the broker at %s is unreachable (%s); retrying",
                        self.config.masked,
                        _unreachable(exc, time.monotonic() - started, errors),
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, 5.0)
        return None

    async def _bind(self, js: JetStreamContext) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy  # noqa: PLC0415

        config = self.config
        wanted = ConsumerConfig(
            durable_name=config.consumer,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait,
            max_deliver=-1,  # the worker counts deliveries and dead-letters
            max_ack_pending=-1,  # each worker bounds itself (max_in_flight)
            filter_subject=config.subject,
        )
        missing = await self._check_consumer(js)
        subscription = await js.pull_subscribe(
            config.subject, durable=config.consumer, stream=config.stream, config=wanted
        )
        if missing:
            # Made here, or by another worker at the same moment: one of
            # another subject that found it missing too made it as well (the
            # server takes the second creation as an update of the filter).
            # Read once the other creation, if any, is done.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), CONSUMER_SETTLE)
        info = await subscription.consumer_info()
        refusal = self._filter_refusal(info)
        if refusal is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            raise refusal
        existing = info.config.ack_wait
        if existing is not None and abs(existing - self.settings.ack_wait) > 1e-3:
            _report.warning(
                "enrichlog worker: consumer %r already exists with ack_wait=%ss (not %ss); "
                "it keeps its own",
                config.consumer,
                existing,
                self.settings.ack_wait,
            )
        return subscription

    async def _check_consumer(self, js: JetStreamContext) -> bool:
        """Refuse a durable consumer of the stream that exists for another
        subject: bound as it is, it would give this worker the other
        subject's events, or none of its own. Whether it is missing (the
        subscription makes it).

        Raises:
            EnricherConfigError: naming both subjects and the way out.
        """
        from nats.js.errors import NotFoundError  # noqa: PLC0415

        config = self.config
        try:
            info = await js.consumer_info(config.stream, config.consumer)
        except NotFoundError:
            return True  # created with this subject's filter (checked after)
        refusal = self._filter_refusal(info)
        if refusal is not None:
            raise refusal
        return False

    def _filter_refusal(self, info: Any) -> EnricherConfigError | None:
        """The error that refuses the consumer ``info`` describes, unless it
        is a pull consumer with explicit acknowledgements filtered on this
        worker's subject (``None`` then)."""
        config = self.config
        # Made by someone else: bound as it is, a push consumer gave the
        # worker nothing, for good and silently; one without explicit
        # acknowledgements lost what a killed worker had in flight. (The
        # policy reads as the server's text, or nats-py's enum of it.)
        policy = getattr(info.config.ack_policy, "value", info.config.ack_policy)
        if info.config.deliver_subject:
            shape = f"is a push consumer (deliver_subject {info.config.deliver_subject!r})"
        elif policy not in (None, "explicit"):
            shape = f"acknowledges with ack_policy {policy!r}"
        elif info.config.headers_only:
            # Every event read as an empty payload, dead-lettered without it.
            shape = "delivers headers only (headers_only)"
        else:
            shape = None
        if shape is not None:
            return EnricherConfigError(
                f"consumer {config.consumer!r} of stream {config.stream!r} {shape}; a worker "
                "needs a durable pull consumer with explicit acknowledgements and whole "
                "messages (it would otherwise consume nothing, dead-letter every event, or "
                "lose the events of a worker killed mid-batch): delete it, or give the "
                "workers another one with ?consumer=<name> in ENRICHLOG_TRANSPORT"
            )
        filters = [info.config.filter_subject] if info.config.filter_subject else []
        filters += list(getattr(info.config, "filter_subjects", None) or [])
        if filters == [config.subject]:
            return None
        return self._conflict(filters)

    def _conflict(self, filters: list[str]) -> EnricherConfigError:
        config = self.config
        theirs = " and ".join(repr(subject) for subject in filters) or "every subject"
        return EnricherConfigError(
            f"consumer {config.consumer!r} of stream {config.stream!r} exists for {theirs}, "
            f"not for this worker's subject {config.subject!r} (workers of one stream share "
            "the consumer named by ?consumer=, enrichlog by default); give the workers of "
            f"each subject a consumer of their own: ?consumer=<name> in ENRICHLOG_TRANSPORT"
        )

    def _refuse(self, refusal: EnricherConfigError) -> None:
        """The consumer turned out to be another subject's (changed by a
        worker of that subject started at the same moment): stop, and end
        the run with ``refusal``."""
        if self._refused is None:
            self._refused = refusal
            _report.error("enrichlog worker: %s; stopping", refusal)
            self.request_stop()

    async def _foreign(self, message: Msg) -> None:
        """A message of another subject: the consumer's filter is not this
        worker's (any more). Handed back at once, unwritten, for the
        workers of its subject; this worker stops with the refusal."""
        self._counts["nacked"] += 1
        await message.nak()
        refusal: EnricherConfigError | None = None
        subscription = self._subscription
        if subscription is not None:
            with contextlib.suppress(Exception):
                refusal = self._filter_refusal(await subscription.consumer_info())
        self._refuse(refusal or self._conflict([message.subject]))

    async def _rebind(self, js: JetStreamContext) -> None:
        """The consumer is gone (deleted, or its stream was, and a producer
        made the stream again): make it again, said loudly, so the worker
        takes up the stream as it is now instead of waiting for good on a
        consumer that no longer exists.

        Raises:
            EnricherConfigError: the stream made again no longer fits.
        """
        config = self.config
        _report.warning(
            "enrichlog worker: consumer %r of stream %r is gone (deleted, or its stream "
            "was); making it again",
            config.consumer,
            config.stream,
        )
        old = self._subscription
        try:
            await ensure_stream(js, config.stream, config.subject, server=config.masked_server)
            self._subscription = await self._bind(js)
        except EnricherConfigError:
            raise
        except Exception as exc:
            _report.warning(
                "enrichlog worker: making consumer %r again failed (%s); retrying",
                config.consumer,
                failure_text(exc),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)
            return
        self._consumer_gone = False
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        _report.warning("enrichlog worker: consumer %r made again", config.consumer)

    async def _consume(self, client: Client, js: JetStreamContext) -> None:
        import nats.errors  # noqa: PLC0415

        while not self._stop.is_set():
            if self._consumer_gone and client.is_connected:
                await self._rebind(js)
                continue
            subscription = self._subscription
            if not (client.is_connected or client.is_closed):
                # While the connection is down the client keeps what it is
                # asked to send, fetch requests too, and sends it all once
                # reconnected: each request, one per fetch timeout, would
                # then bring up to `room` events, max_in_flight per second
                # of the outage at once. Fetch again once connected.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.1)
                continue
            room = self._max_in_flight - len(self._in_flight)
            # Fetch in batches: a round trip per few freed slots costs more
            # than the events it brings.
            if room <= 0 or (room < self._min_fetch and self._in_flight):
                self._room.clear()
                await self._room.wait()
                continue
            try:
                messages = await subscription.fetch(
                    batch=min(room, FETCH_BATCH), timeout=self._fetch_timeout
                )
            except (TimeoutError, nats.errors.TimeoutError):
                continue  # an empty stream: keep waiting
            except Exception as exc:
                _report.warning(
                    "enrichlog worker: fetch failed (%s); retrying",
                    failure_text(exc),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.5)
                continue
            for message in messages:
                self._receive(message)

    async def _drain(self) -> None:
        """Finish the events in flight (up to the shutdown timeout), stop
        the engine, answer what it wrote."""
        deadline = time.monotonic() + self.settings.shutdown_timeout
        await _poll(lambda: not (self._in_flight or self._tasks), deadline)
        remaining = max(deadline - time.monotonic(), 0.5)
        await asyncio.to_thread(self.container.shutdown, remaining)
        end = time.monotonic() + 2.0
        await _poll(lambda: not (self._tasks or self._done), end)

    # -- one message ------------------------------------------------------------------

    def _receive(self, message: Msg) -> None:
        counts = self._counts
        counts["consumed"] += 1
        if not subject_matches(self.config.subject, message.subject):
            self._spawn(self._foreign(message))
            return
        deliveries = message.metadata.num_delivered
        if deliveries > 1:
            counts["redelivered"] += 1
        try:
            event = decode_event(message.data)
        except ValueError as exc:
            # Its id as for any message: the header's (an enrichlog
            # producer's, or a replay's), else Nats-Msg-Id, else seq-<n>.
            self._spawn(
                self._dead_letter(
                    [message],
                    None,
                    _event_id(message, {}),
                    deliveries,
                    f"not a JSON object: {exc}",
                )
            )
            return
        event_id = _event_id(message, event)
        _place_ids(event, event_id)
        if self._sink.closed is not None:  # fetched as the output closed
            self._spawn(self._hand_back([message]))
            return
        if event_id in self._written_ids:
            counts["duplicates_skipped"] += 1
            self._spawn(self._ack([message]))
            return
        current = self._in_flight.get(event_id)
        if current is not None:  # delivered again while still in flight here
            current.messages.append(message)
            return
        if deliveries > self.settings.max_deliver:
            self._spawn(
                self._dead_letter(
                    [message],
                    event,
                    event_id,
                    deliveries,
                    f"not acknowledged after {deliveries - 1} deliveries "
                    "(a worker stopped or the ack wait expired)",
                )
            )
            return
        delivery = _Delivery(
            self._sink, self._sink.target_for(event), message, event, event_id, deliveries
        )
        self._in_flight[event_id] = delivery
        self._feed(delivery)

    def _feed(self, delivery: _Delivery) -> None:
        """Hand the event to the engine; its line is written in its turn."""
        event = delivery.event
        level = event.get("level")
        method = level if isinstance(level, str) and level in _METHODS else "info"
        done = functools.partial(self._done_with, delivery)
        if not self.container.submit_event(delivery, method, event, done):
            # The engine is stopping and will not write it: handed back.
            self._finished(delivery)

    def _done_with(self, delivery: _Delivery, filtered: bool) -> None:
        """The engine is done with the event (on the runtime thread, or at
        once for one an enricher filtered out)."""
        delivery.filtered = filtered
        with self._done_lock:
            self._done.append(delivery)
            schedule = not self._done_scheduled
            self._done_scheduled = True
        if schedule and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._answer_soon)

    def _answer_soon(self) -> None:
        """Answer what completed within the next few milliseconds together:
        one write of acknowledgements to the server instead of one each."""
        assert self._loop is not None
        self._loop.call_later(ACK_DELAY, self._answer_done)

    def _finished(self, delivery: _Delivery) -> None:
        """On the worker's loop: an event that never reached the pipeline."""
        with self._done_lock:
            self._done.append(delivery)
        self._answer_done()

    def _answer_done(self) -> None:
        with self._done_lock:
            done = list(self._done)
            self._done.clear()
            self._done_scheduled = False
        if done:
            self._spawn(self._answer(done))

    async def _answer(self, done: list[_Delivery]) -> None:
        for delivery in done:
            try:
                if delivery.written or delivery.filtered:
                    self._remember(delivery.event_id)
                    # Copies that arrived while it was in flight (a replay,
                    # a redelivery) get no line of their own: skipped, as
                    # those arriving after it was written.
                    self._counts["duplicates_skipped"] += len(delivery.messages) - 1
                    await self._ack(delivery.messages)
                else:
                    if delivery.reason is not None:
                        self._counts["write_failed"] += 1
                    if self._sink.closed is not None:
                        # Not the event's fault: handed back at once for
                        # another worker, never dead-lettered.
                        await self._hand_back(delivery.messages)
                    else:
                        await self._retry_or_dead_letter(delivery)
            except Exception as exc:  # the answer is lost: the server redelivers
                _report.warning(
                    "enrichlog worker: answering an event failed (%s)",
                    failure_text(exc),
                )
            finally:
                self._in_flight.pop(delivery.event_id, None)
        self._room.set()

    async def _hand_back(self, messages: list[Msg]) -> None:
        """The output is closed for good: ``nak`` without a delay (another
        worker takes the events) and stop this worker."""
        self._output_closed()
        for message in messages:
            await message.nak()
        self._counts["nacked"] += len(messages)

    def _output_closed(self) -> None:
        """Stop, once, because the output can never be written again; the
        run then ends with an error (a non-zero exit status)."""
        if self._failed is None and self._sink.closed is not None:
            self._failed = self._sink.closed
            _report.error(
                "enrichlog worker: %s, for good; stopping: the events it holds are handed "
                "back to the stream for another worker",
                self._failed,
            )
            self.request_stop()

    def _remember(self, event_id: str) -> None:
        written = self._written_ids
        written[event_id] = None
        if len(written) > DEDUP_CAPACITY:
            written.popitem(last=False)

    async def _ack(self, messages: list[Msg]) -> None:
        for message in messages:
            await message.ack()
        self._counts["acknowledged"] += len(messages)

    async def _retry_or_dead_letter(self, delivery: _Delivery) -> None:
        reason = delivery.reason or "not written (dropped by the worker's queue)"
        if delivery.deliveries >= self.settings.max_deliver:
            # The event as it arrived, not as enrichment left it: a replay
            # enriches it afresh (a field it already had would win).
            original = decode_event(delivery.messages[0].data)
            original.setdefault(EVENT_ID, delivery.event_id)
            await self._dead_letter(
                delivery.messages, original, delivery.event_id, delivery.deliveries, reason
            )
            return
        delay = redelivery_delay(
            delivery.deliveries, self.settings.redeliver_delay, self.settings.redeliver_max_delay
        )
        for message in delivery.messages:
            await message.nak(delay=delay)
        self._counts["nacked"] += len(delivery.messages)

    async def _dead_letter(
        self,
        messages: list[Msg],
        event: dict[str, Any] | None,
        event_id: str,
        deliveries: int,
        reason: str,
    ) -> None:
        js = self._js
        assert js is not None
        first = messages[0]
        sequence = first.metadata.sequence.stream
        body = dead_letter_body(
            data=first.data,
            event=event,
            event_id=event_id or f"seq-{sequence}",
            reason=reason,
            deliveries=deliveries,
            subject=first.subject,
            stream_sequence=sequence,
            limit=self._dead_letter_limit,
        )
        try:
            await js.publish(
                self.config.dlq_subject,
                body,
                # (An id of any length from another publisher: its beginning.)
                headers={"Nats-Msg-Id": f"{(event_id or str(sequence))[:200]}:dlq:{sequence}"},
            )
        except Exception as exc:  # cannot dead-letter now: try again later
            self._dead_letter_failed(exc)
            # Delivered again later, as a failed write is: the delay doubles
            # per delivery up to redeliver_max_delay, so a dead-letter stream
            # that refuses for long (full, discarding new messages) is not
            # asked again every redeliver_delay.
            delay = redelivery_delay(
                deliveries, self.settings.redeliver_delay, self.settings.redeliver_max_delay
            )
            for message in messages:
                await message.nak(delay=delay)
            self._counts["nacked"] += len(messages)
            return
        for message in messages:
            await message.term()
        self._counts["dead_lettered"] += 1
        if self._dlq_failing:
            self._dlq_failing = False
            # The failures since the last report are in no other line.
            count, self._dlq_failures = self._dlq_failures, 0
            _report.warning(
                "enrichlog worker: dead-lettering works again (stream %r)%s",
                self.config.dlq_stream,
                f"; it failed {count} more time(s) since the last report" if count else "",
            )

    def _dead_letter_failed(self, exc: BaseException) -> None:
        """Report a failed dead-letter: the first at once, then at most once
        per ``drop_report_interval`` with how many failed meanwhile (one
        line per failed event would flood the log while the dead-letter
        stream refuses)."""
        self._dlq_failures += 1
        now = time.monotonic()
        if self._dlq_failing and now - self._dlq_reported_at < self.settings.drop_report_interval:
            return
        count, self._dlq_failures = self._dlq_failures, 0
        self._dlq_failing = True
        self._dlq_reported_at = now
        _report.warning(
            "enrichlog worker: dead-lettering failed%s (%s); the events stay in stream %r and "
            "are delivered again later, the delay doubling per delivery up to "
            "redeliver_max_delay (%gs)",
            "" if count == 1 else f" {count} times since the last report",
            server_said(exc),  # the server's answer, not nats-py's repr
            self.config.stream,
            self.settings.redeliver_max_delay,
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- metrics ---------------------------------------------------------------------------

    async def _watch_lag(self) -> None:
        """Read the consumer's figures every two seconds; a consumer that
        is gone (the server answers not found) is made again by the
        consuming loop (a fetch from it would only time out, silently)."""
        from nats.js.errors import NotFoundError  # noqa: PLC0415

        period = min(self._stats_interval, 2.0) if self._stats_interval > 0 else 2.0
        while not self._closing:
            subscription = self._subscription
            if subscription is not None and not self._consumer_gone:
                try:
                    await self._read_lag(subscription)
                except NotFoundError:
                    self._consumer_gone = True
                    self._room.set()
                except Exception:  # noqa: S110 - the figures wait for the next reading
                    pass
            await asyncio.sleep(period)

    async def _read_lag(self, subscription: Any) -> None:
        info = await subscription.consumer_info()
        self._lag, self._ack_pending = info.num_pending, info.num_ack_pending
        refusal = self._filter_refusal(info)
        if refusal is not None:  # changed under the worker: no longer its own
            self._refuse(refusal)

    async def _print_stats(self) -> None:
        if self._stats_interval <= 0:
            return
        while True:
            await asyncio.sleep(self._stats_interval)
            if self._closing:
                return
            self._print_line({"enrichlog_worker": self.metrics().as_dict()})

    def _print_line(self, data: dict[str, Any]) -> None:
        out = self._stats_out or sys.stderr
        if out is None:  # started without stderr (``2>&-``): nowhere to print
            return
        with contextlib.suppress(OSError, ValueError):
            out.write(json.dumps(data) + "\n")
            out.flush()
