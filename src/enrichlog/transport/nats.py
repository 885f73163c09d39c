"""The producer side of scale-out: events published to NATS JetStream.

:class:`PublishingWriter` takes the place of the container's
``TailWriter``: an event that finished its (local) enrichment is given a
message id of its own (also its ``event_id`` field, unless the application
logged one itself), its exception formatted, encoded as JSON and handed to
:class:`NatsTransport`, which publishes it in the background with the id as
``Nats-Msg-Id`` (so a re-publish after a lost acknowledgement is dropped by
the server's duplicate window) and ``Enrichlog-Event-Id`` (the workers'
id). An event larger than the stream's maximum message size is rejected:
counted, reported, and not in the way of the events after it.

The transport keeps events in a bounded memory queue; past it, and while the
broker is down, they go to a :class:`~enrichlog.transport.spool.Spool` on
disk, published again, oldest first, when the broker answers. Nothing is
lost unless the spool's cap is reached; those events are counted
(``spool_dropped``) and reported through the stdlib logger ``enrichlog``.

The publisher runs on a thread and event loop of its own, not on the
enrichment runtime: without local enrichers there is no runtime at all; the
spool's file writes and the reconnection back-off must not delay enrichment
timers; and the NATS connection must not depend on a loop the application
may own and close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from ..engine.runtime import leave_signals_to_the_main_thread
from ..exceptions import EnricherConfigError
from ..reporting import reporting_logger
from ..uri.masking import mask_secrets
from .codec import EVENT_ID, ID_HEADER, encode_event, fit_event, new_event_id
from .config import TransportConfig, subject_matches
from .spool import Record, Spool, spool_folder

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

__all__ = [
    "NatsTransport",
    "PublishingWriter",
    "TransportMetrics",
    "connect",
    "ensure_stream",
    "import_nats",
]

_report = reporting_logger("enrichlog")
_T = TypeVar("_T")

#: Events published per round trip (one batch of acknowledgements awaited).
_BATCH = 256
#: Server error codes: a stream name taken with another configuration, and
#: subjects already captured by another stream.
_STREAM_NAME_IN_USE = 10058
_SUBJECTS_OVERLAP = 10065
#: Server error codes: JetStream not enabled (on the server; for the account).
_JETSTREAM_NOT_ENABLED = (10076, 10039)
#: Seconds before a publish round that got nothing done is tried again (the
#: stream refuses events: full, discarding new messages), doubled per such
#: round up to the second figure.
_RETRY_FIRST = 0.1
_RETRY_MAX = 5.0
#: Seconds the server remembers a ``Nats-Msg-Id`` (the stream's duplicate
#: window) when enrichlog creates the stream.
DUPLICATE_WINDOW = 120.0


def import_nats() -> Any:
    """The ``nats`` package.

    Raises:
        EnricherConfigError: nats-py is not installed; names the extra.
    """
    try:
        import nats  # noqa: PLC0415 - optional dependency, imported when used
    except ImportError:
        raise EnricherConfigError(
            "the NATS transport needs nats-py: pip install 'enrichlog[nats]'"
        ) from None
    return nats


async def connect(
    config: TransportConfig,
    *,
    name: str,
    reconnect: bool,
    timeout: float = 2.0,
    errors: list[Exception] | None = None,
) -> Client:
    """A connection to the transport's server.

    Args:
        config: the transport.
        name: the connection's name, as the server's monitoring shows it.
        reconnect: let the client reconnect by itself (workers, tools);
            the producer reconnects on its own terms instead.
        timeout: seconds a connection attempt may take.
        errors: gets the client's last error (a caller waiting for a
            client that retries on its own learns why it does).
    """
    nats = import_nats()

    async def quiet(exc: Exception) -> None:
        # Every caller reports failures itself, with secrets masked.
        if errors is not None:
            errors[:] = [exc]

    options: dict[str, Any] = {
        "servers": [config.server],
        "name": name,
        "connect_timeout": timeout,
        "allow_reconnect": reconnect,
        # 1: one more try, then NoServersError (0 would mean: forever).
        "max_reconnect_attempts": -1 if reconnect else 1,
        "reconnect_time_wait": 0.5,
        "error_cb": quiet,
    }
    if config.token:
        options["token"] = config.token
    tls = config.server.startswith("tls://")
    client: Client = (_tls_required_client() if tls else nats.aio.client.Client)()
    await client.connect(**options)
    return client


@functools.cache
def _tls_required_client() -> type[Client]:
    """The client class for ``tls://``, made on first use (nats-py is an
    optional dependency)."""
    from nats.aio.client import Client  # noqa: PLC0415

    class TlsRequired(Client):
        """A client that upgrades to TLS whatever the server's greeting says.

        nats-py upgrades only when the server's INFO asks for TLS, so with
        ``tls://`` against a server without TLS, or a man in the middle
        that drops the flag, it would send the credentials and the events
        in clear. Here the TLS handshake always follows the greeting (the
        INFO dict is the one nats-py checks next): a server without TLS
        fails the handshake, and nothing is sent.
        """

        async def _process_info(
            self, info: dict[str, Any], initial_connection: bool = False
        ) -> None:
            info["tls_required"] = True
            await super()._process_info(info, initial_connection)

    return TlsRequired


async def unless_stopped(coro: Coroutine[Any, Any, _T], stop: asyncio.Event) -> _T | None:
    """``await coro``, cancelled as soon as ``stop`` is set (then ``None``)."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return None


async def ensure_stream(
    js: JetStreamContext, name: str, subject: str, *, server: str | None = None
) -> int:
    """Create the stream ``name`` for ``subject`` unless it exists; an
    existing one must capture ``subject``. Returns the stream's maximum
    message size in bytes (headers and payload; -1: none).

    Args:
        js: the JetStream context of a connection.
        name, subject: the stream and the subject it must capture.
        server: the server's URL, secrets masked, for the messages.

    Raises:
        EnricherConfigError: the server has no JetStream; the stream exists
            without ``subject``; the subject belongs to another stream; or
            the server refuses to create the stream (its reason given).
    """
    from nats.js.api import RetentionPolicy, StorageType  # noqa: PLC0415
    from nats.js.errors import APIError, NotFoundError  # noqa: PLC0415

    try:
        info = await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(
                name=name,
                subjects=[subject],
                storage=StorageType.FILE,
                retention=RetentionPolicy.LIMITS,
                duplicate_window=DUPLICATE_WINDOW,
            )
        except APIError as exc:
            if exc.err_code == _SUBJECTS_OVERLAP:
                raise EnricherConfigError(
                    f"stream {name!r} cannot be created: subject {subject!r} is already "
                    "captured by another stream; choose another subject or stream"
                ) from None
            if no_jetstream(exc):
                raise EnricherConfigError(no_jetstream_problem(server)) from None
            if exc.err_code != _STREAM_NAME_IN_USE:
                if exc.code == 503:  # unavailable for now (a cluster electing a leader)
                    raise
                # The server refuses this stream whatever happens: its reason
                # in one line, not nats-py's repr (or a traceback).
                raise EnricherConfigError(
                    f"stream {name!r} cannot be created: the server{_at(server)} refused "
                    f"({server_said(exc)})"
                ) from None
            info = await js.stream_info(name)  # another process created it meanwhile
        else:
            return -1
    except APIError as exc:
        if no_jetstream(exc):
            raise EnricherConfigError(no_jetstream_problem(server)) from None
        raise
    subjects = list(info.config.subjects or [])
    if not any(subject_matches(pattern, subject) for pattern in subjects):
        raise EnricherConfigError(
            f"stream {name!r} exists with subjects {subjects}, which do not capture "
            f"{subject!r}; use ?stream= to name another stream, or ?subject= one of its "
            "subjects"
        )
    limit = info.config.max_msg_size
    return limit if isinstance(limit, int) and limit > 0 else -1


def no_jetstream(exc: BaseException) -> bool:
    """Whether ``exc``, from a JetStream API request, says the server has no
    JetStream: no one answered the request (nats-py raises a bare
    ``ServiceUnavailableError`` for it, ``description='None'``), or the
    server said JetStream is not enabled, for it or for the account."""
    from nats.js.errors import APIError, ServiceUnavailableError  # noqa: PLC0415

    if not isinstance(exc, APIError):
        return False
    if exc.err_code in _JETSTREAM_NOT_ENABLED:
        return True
    return isinstance(exc, ServiceUnavailableError) and exc.code is None and exc.err_code is None


def no_jetstream_problem(server: str | None) -> str:
    """The one-line reason for a server without JetStream."""
    return (
        f"the NATS server{_at(server)} has no JetStream enabled (start it with -js, or "
        "enable JetStream for the account): the transport keeps events in a JetStream stream"
    )


def server_said(exc: BaseException) -> str:
    """What the server answered, for a message: its description and error
    code, never nats-py's ``description='None'``."""
    description = getattr(exc, "description", None)
    err_code = getattr(exc, "err_code", None)
    if not description:
        return failure_text(exc)
    return mask_secrets(f"{description}, error {err_code}" if err_code else str(description))


def failure_text(exc: BaseException) -> str:
    """``Type: text`` for a report, secrets masked; the type alone when
    the text is empty (a bare ``TimeoutError``), never ``Type: ``."""
    text = str(exc)
    return mask_secrets(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _at(server: str | None) -> str:
    return f" at {server}" if server else ""


def _outcome(future: asyncio.Future[Any], failure: BaseException | None) -> Any:
    """A publish's acknowledgement, or its error; ``failure`` (the round's)
    for one not answered in time (cancelled then)."""
    if not future.done():
        future.cancel()
        return failure
    if future.cancelled():
        return failure
    return future.exception() or future.result()


def message_size(payload: bytes, headers: dict[str, str]) -> int:
    """The bytes a JetStream stream counts against its maximum message size
    (``max_msg_size``): the payload and the headers as they are sent."""
    if not headers:
        return len(payload)
    head = len(b"NATS/1.0\r\n\r\n")
    for key, value in headers.items():
        head += len(key.encode()) + len(value.encode()) + 4  # "key: value\r\n"
    return head + len(payload)


def settle_publish_errors(js: JetStreamContext) -> None:
    """Make ``js`` fail a ``publish_async`` future the server refused.

    nats-py (2.x) turns the server's error answer into an exception raised
    inside its reply handler instead of setting it on the future: the
    future then never completes and a refusal (``message size exceeds
    maximum allowed``) looks like a broker that does not answer. The
    handler is wrapped to set that exception on the future; a client
    without that handler is left as it is.
    """
    from nats.js.errors import Error as JsError  # noqa: PLC0415

    original = getattr(js, "_handle_async_reply", None)
    if original is None or getattr(original, "_enrichlog_settled", False):
        return

    async def handle(msg: Any) -> None:
        try:
            await original(msg)
        except JsError as exc:
            futures = getattr(js, "_publish_async_futures", None) or {}
            for token, future in list(futures.items()):
                if msg.subject.endswith("." + token) and not future.done():
                    future.set_exception(exc)

    handle._enrichlog_settled = True  # type: ignore[attr-defined]
    js._handle_async_reply = handle  # type: ignore[method-assign]


@dataclass(frozen=True)
class TransportMetrics:
    """The producer transport's counters at one moment.

    Attributes:
        published: events the server acknowledged (``duplicates`` of them
            were re-publishes it had already stored).
        queued: events in memory, waiting to be published.
        spooled: events written to the spool so far; ``replayed``: events
            published from it; ``spool_bytes``: bytes still on disk.
        spool_dropped: events lost because the spool was full (or could not
            be written); ``rejected``: events the server refused for good
            (larger than the stream's maximum message size, say): dropped,
            and reported with the reason. A stream that refuses events for
            now (full, discarding new messages) rejects none: they are kept
            and published once it takes them again.
        truncated: events larger than the server's maximum payload,
            published with their largest values cut (``truncated_fields``
            in the event lists them); counted in ``published`` too.
        publish_errors: failed publish rounds (retried), refused ones
            included.
        connected: whether the publisher is connected now.
    """

    published: int = 0
    duplicates: int = 0
    queued: int = 0
    spooled: int = 0
    replayed: int = 0
    spool_bytes: int = 0
    spool_dropped: int = 0
    rejected: int = 0
    truncated: int = 0
    publish_errors: int = 0
    connected: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


class _ExceptionFormatter:
    """Formats ``exc_info`` into the event before it leaves the process (a
    traceback cannot travel); never raises."""

    def __init__(self) -> None:
        self._render = structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        if "exc_info" not in event_dict:
            return event_dict
        try:
            return self._render(logger, name, event_dict)
        except Exception as exc:
            event_dict.pop("exc_info", None)
            event_dict["exception"] = f"<exception not formattable: {type(exc).__name__}>"
            return event_dict


class PublishingWriter:
    """The pipeline's writer in transport mode: publishes instead of
    rendering and writing.

    ``tail`` is what the structlog chain runs after enrichment on the logging
    thread (for events that need no hop): it formats the exception, hands
    the event to the transport and drops structlog's copy. :meth:`write` is
    the same for events the runtime finished. Neither blocks nor raises.
    """

    __slots__ = ("_format", "_transport", "tail")

    def __init__(self, transport: NatsTransport) -> None:
        self._transport = transport
        self._format = _ExceptionFormatter()
        self.tail: list[Processor] = [self._format, self._publish]

    def write(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> bool:
        """Hand the finished event to the transport; always True."""
        self._hand(self._format(logger, method_name, event_dict))
        return True

    def _publish(self, _logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> Any:
        self._hand(event_dict)
        raise structlog.DropEvent

    def _hand(self, event_dict: EventDict) -> None:
        # The message id is the transport's own, new for every log call: an
        # application's field of the same name (two events about one order
        # logged with event_id="order-123") is its data, written unchanged,
        # never an id the duplicate window would drop a second event by.
        message_id = new_event_id()
        if EVENT_ID not in event_dict:
            event_dict[EVENT_ID] = message_id
        self._transport.offer(message_id, encode_event(event_dict))


_live: weakref.WeakSet[NatsTransport] = weakref.WeakSet()


class NatsTransport:
    """Publishes events to a JetStream stream from a thread of its own,
    with a bounded memory queue and an on-disk spool behind it.

    Args:
        config: the parsed transport URI.
        enrich_locally: the application's enrichers run before publishing.
        memory_limit: events kept in memory before spilling to the spool.
        spool_dir: the spool's directory (``None``: no spool; events past the
            memory limit are dropped and counted).
        spool_max_bytes: the spool's cap.
        report_interval: seconds between reports of dropped events.
        connect_timeout: seconds one connection attempt may take.
        publish_timeout: seconds to wait for a batch's acknowledgements.
    """

    def __init__(
        self,
        config: TransportConfig,
        *,
        enrich_locally: bool = False,
        memory_limit: int = 10_000,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 256 << 20,
        report_interval: float = 10.0,
        connect_timeout: float = 2.0,
        publish_timeout: float = 5.0,
    ) -> None:
        self.config = config
        self.enrich_locally = enrich_locally
        self.writer = PublishingWriter(self)
        self._memory_limit = memory_limit
        self._spool_dir = spool_dir
        self._spool_max_bytes = spool_max_bytes
        self._report_interval = report_interval
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._memory: deque[Record] = deque()
        self._held: list[Record] = []  # being published: older than anything else
        self._held_from_spool = False
        # Indices of held records already published (or refused for good)
        # while an older one is not yet: never sent again.
        self._held_done: set[int] = set()
        # Why the stream refuses events for now (full, discarding new
        # messages), else None; reported once per such period.
        self._full: str | None = None
        self._full_reported = False
        self._last_full_report = -float("inf")
        self._spool: Spool | None = None
        self._spool_left = 0  # bytes on disk when the spool was closed
        self._starting = False  # start() waits for the first attempt
        self._spool_problem: str | None = None
        self._spool_records = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._sleeping = False
        self._active = False  # started and not stopped
        self._stopping = False
        self._deadline = 0.0
        self._first_attempt = threading.Event()
        self._config_error: EnricherConfigError | None = None
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._streams_ready = False
        self._outage_reported = False
        self._last_report = -float("inf")
        self._unreported_drops = self._unreported_rejected = self._unreported_truncated = 0
        self._max_msg_size = -1  # the stream's, in bytes (-1: none)
        self._rejection: str | None = None  # why the last event was refused
        self._published = self._duplicates = self._spooled = self._replayed = 0
        self._spool_dropped = self._rejected = self._publish_errors = self._truncated = 0

    # -- the logging side ------------------------------------------------------

    def offer(self, event_id: str, payload: bytes) -> None:
        """Queue one encoded event for publishing; any thread, never blocks
        on the network (past the memory limit the oldest events are written
        to the spool)."""
        record = (event_id, payload)
        with self._lock:
            if not self._active:
                # Before start or after stop: straight to disk, published by
                # the next start (or the next process).
                self._spill([record])
                return
            self._memory.append(record)
            if len(self._memory) > self._memory_limit:
                chunk = max(1, self._memory_limit // 4)
                self._spill([self._memory.popleft() for _ in range(chunk)])
            if self._thread is None:  # a forked child: a publisher (and slot) of its own
                self._open_spool()
                self._start_thread()
                return
            wake = self._sleeping
            if wake:
                self._sleeping = False
        if wake:
            self._wake_up()

    def _wake_up(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(self._wake.set)

    def _spill(self, records: list[Record]) -> None:
        """With the lock held: append ``records`` to the spool, counting
        those that do not fit."""
        spool = self._open_spool()
        stored = 0
        if spool is not None:
            try:
                stored = spool.append(records)
            except OSError as exc:
                # The disk filled up midway: those written whole are in the
                # spool (and will be published), only the rest is lost.
                stored = getattr(exc, "stored", 0)
                self._spool_problem = f"{spool.path}: {exc.strerror or exc}"
        self._spooled += stored
        self._spool_records += stored
        lost = len(records) - stored
        if lost:
            self._spool_dropped += lost
            self._unreported_drops += lost

    def _open_spool(self) -> Spool | None:
        if self._spool is None and self._spool_dir is not None and self._spool_problem is None:
            try:
                # One directory per subject: a process publishes only the
                # events spooled for its own subject (applications sharing
                # a directory, or a stream, never publish each other's).
                directory = Path(self._spool_dir).expanduser() / spool_folder(self.config.subject)
                self._spool = Spool(directory, self._spool_max_bytes)
            except OSError as exc:
                self._spool_problem = f"{self._spool_dir}: {exc.strerror or exc}"
                return None
            self._spool_records = self._spool.count_records()
        return self._spool

    # -- start and stop ----------------------------------------------------------

    def check_stream(self) -> None:
        """Find what :meth:`start` would refuse, without starting: connect
        once and make sure the stream captures the subject (creating it if
        missing, as start does). A broker that does not answer is no error:
        the publisher checks the stream when it does.

        Raises:
            EnricherConfigError: the stream exists and does not capture the
                subject, or the subject belongs to another stream.
        """
        refused: list[EnricherConfigError] = []

        async def probe() -> None:
            try:
                client = await connect(
                    self.config,
                    name="enrichlog-check",
                    reconnect=False,
                    timeout=self._connect_timeout,
                )
            except Exception:
                return  # unreachable: checked once it answers
            try:
                js = client.jetstream(timeout=self._publish_timeout)
                await ensure_stream(
                    js, self.config.stream, self.config.subject, server=self.config.masked_server
                )
            except EnricherConfigError as exc:
                refused.append(exc)
            except Exception:  # noqa: S110 - the publisher meets it again, and reports it
                pass
            finally:
                with contextlib.suppress(Exception):
                    await client.close()

        # On a thread of its own: the caller may be inside a running loop.
        thread = threading.Thread(
            target=asyncio.run, args=(probe(),), name="enrichlog-stream-check", daemon=True
        )
        thread.start()
        thread.join(2 * self._connect_timeout + self._publish_timeout + 1.0)
        if refused:
            raise refused[0]

    def start(self, wait: float | None = None) -> None:
        """Start the publisher; wait up to ``wait`` seconds (default: the
        connect timeout and a second) for its first connection, so that a
        conflicting stream is reported here. An unreachable broker is not an
        error: events are kept and spooled until it answers.

        Raises:
            EnricherConfigError: the stream exists and does not capture the
                subject, or the subject belongs to another stream.
        """
        with self._lock:
            if self._active:
                return
            self._active = True
            self._stopping = False
            self._open_spool()
            self._starting = True  # a refusal meanwhile is raised here, not reported
            self._start_thread()
        try:
            self._first_attempt.wait(self._connect_timeout + 1.0 if wait is None else wait)
        finally:
            self._starting = False
        if self._config_error is not None:
            error = self._config_error
            self.stop(0.0)
            raise error

    def _start_thread(self) -> None:
        """With the lock held: a new publisher thread and loop."""
        loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._loop = loop
        thread = threading.Thread(
            target=self._serve, args=(loop,), name="enrichlog-publisher", daemon=True
        )
        self._thread = thread
        _live.add(self)
        thread.start()

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        leave_signals_to_the_main_thread()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._run())
        except Exception:
            _report.exception("enrichlog: the event publisher failed; events go to the spool")
        finally:
            self._keep_leftovers()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self, timeout: float) -> dict[str, int]:
        """Publish what is pending for up to ``timeout`` seconds (no wait
        when the broker is unreachable), spool the rest, stop the publisher.

        Returns ``published``, ``spooled`` (events left in the spool, to be
        published by the next start) and ``spool_dropped``.
        """
        with self._lock:
            self._stopping = True
            self._deadline = time.monotonic() + max(timeout, 0.0)
            thread = self._thread
        self._wake_up()
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._stop_event.set)
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(timeout, 0.0) + self._publish_timeout + 1.0)
            if thread.is_alive():
                _report.warning("enrichlog: the event publisher did not stop; spooling")
                with self._lock:
                    self._keep_leftovers_locked()
        with self._lock:
            self._active = False
            self._thread = None
            if self._spool is not None:
                self._spool_left = max(self._spool.size, 0)
                self._spool.close()
                self._spool = None
            left = self._spool_records
        self._report_problems(force=True)
        return {
            "published": self._published,
            "spooled": left,
            "spool_dropped": self._spool_dropped,
            "rejected": self._rejected,
            "truncated": self._truncated,
        }

    def _keep_leftovers(self) -> None:
        with self._lock:
            self._keep_leftovers_locked()

    def _keep_leftovers_locked(self) -> None:
        """Everything not published goes to the spool, in order: the batch
        being published, then (after what is spooled) the memory queue."""
        spool = self._open_spool()
        # (Those published already, past one that is not, are left out.)
        done = self._held_done
        held = [r for i, r in enumerate(self._held) if i not in done]
        if self._held_from_spool:
            held = []  # in the spool still
        self._held, self._held_from_spool, self._held_done = [], False, set()
        if held:
            stored = 0
            if spool is not None:
                try:
                    spool.prepend(held)
                    stored = len(held)
                except OSError as exc:
                    stored = getattr(exc, "stored", 0)  # into an empty spool: the first ones
                    self._spool_problem = f"{spool.path}: {exc.strerror or exc}"
            self._spooled += stored
            self._spool_records += stored
            self._spool_dropped += len(held) - stored
            self._unreported_drops += len(held) - stored
        if self._memory:
            records = list(self._memory)
            self._memory.clear()
            self._spill(records)
        self._active = False

    def after_fork_in_child(self) -> None:
        """In a forked child: start afresh (the parent publishes its own
        events); a new publisher starts with the child's first event."""
        active = self._active
        spool = self._spool
        self._reset()
        if spool is not None:
            spool.forget_after_fork()
        self._active = active

    # -- the publisher thread ------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        retry = _RETRY_FIRST  # after a round that got nothing done
        while True:
            if self._stopping and (
                time.monotonic() >= self._deadline
                or not self._work()
                # Known to be unreachable, or the stream refuses events: no
                # waiting, the spool keeps the rest.
                or (self._outage_reported and not self._connected())
                or self._full is not None
            ):
                break
            if not self._connected():
                if not await self._connect():
                    self._first_attempt.set()
                    if self._stopping:
                        break
                    self._report_problems()
                    await self._pause(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.1
                self._first_attempt.set()
            batch = self._take()
            if not batch:
                self._report_problems()
                if self._stopping:
                    break
                await self._idle(1.0)
                continue
            if await self._publish(batch):
                retry = _RETRY_FIRST
                continue
            # Nothing done (the stream refuses events, or the round failed):
            # tried again after a pause that doubles, not at once: a full
            # stream would otherwise be asked thousands of times a second.
            self._report_problems()
            await self._pause(retry)
            retry = min(retry * 2, _RETRY_MAX)
        await self._disconnect()

    def _connected(self) -> bool:
        client = self._client
        return client is not None and client.is_connected and self._streams_ready

    def _work(self) -> bool:
        with self._lock:
            spool = self._spool
            return bool(self._held or self._memory or (spool is not None and not spool.empty))

    async def _idle(self, seconds: float) -> None:
        with self._lock:
            if self._memory and self._connected():
                return
            self._sleeping = True
            self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        with self._lock:
            self._sleeping = False

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (a back-off): new events do not cut it short,
        a stop does."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    async def _connect(self) -> bool:
        await self._disconnect()
        config = self.config
        try:
            # Bounded by the client: two attempts of connect_timeout at most.
            client = await connect(
                config, name="enrichlog-producer", reconnect=False, timeout=self._connect_timeout
            )
        except Exception as exc:
            self._note_outage(exc, f"no connection within {self._connect_timeout:g}s")
            return False
        self._client = client
        self._js = client.jetstream(timeout=self._publish_timeout)
        settle_publish_errors(self._js)
        try:
            self._max_msg_size = await ensure_stream(
                self._js, config.stream, config.subject, server=config.masked_server
            )
        except EnricherConfigError as exc:
            if self._config_error is None and not self._starting:
                # (While start() waits for this attempt, it raises the error
                # instead: nothing is spooled.)
                _report.error("enrichlog: %s; events are spooled until it is fixed", exc)
            self._config_error = exc
            await self._disconnect()
            return False
        except Exception as exc:
            self._note_outage(exc, f"no answer about stream {config.stream!r}")
            await self._disconnect()
            return False
        self._config_error = None
        self._streams_ready = True
        if self._outage_reported:
            self._outage_reported = False
            _report.warning(
                "enrichlog: connected to %s again; publishing the events kept meanwhile",
                config.masked,
            )
        return True

    def _note_outage(self, exc: BaseException, waited: str = "") -> None:
        """Report the broker unreachable, once per outage, with why: never
        an empty reason (a bare ``TimeoutError`` says what it waited for,
        ``waited``, and what the server said last, if anything)."""
        if not self._outage_reported:
            self._outage_reported = True
            where = self._spool.path if self._spool is not None else "memory only"
            _report.warning(
                "enrichlog: the broker at %s is unreachable (%s); events are kept (%s) "
                "and published when it answers",
                self.config.masked,
                self._outage_reason(exc, waited),
                where,
            )

    def _outage_reason(self, exc: BaseException, waited: str) -> str:
        text = str(exc).strip() or waited or "no detail"
        reason = f"{type(exc).__name__}: {text}"
        client = self._client
        said = client.last_error if client is not None else None
        if said is not None and said is not exc and str(said).strip():
            reason += f"; last error from the connection: {type(said).__name__}: {said}"
        return mask_secrets(reason)

    async def _disconnect(self) -> None:
        client, self._client, self._js = self._client, None, None
        self._streams_ready = False
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), self._publish_timeout)

    def _take(self) -> list[Record]:
        """The next batch, oldest first: a batch that failed before, else
        the spool's head, else the memory queue."""
        with self._lock:
            if self._held:
                return self._held
            spool = self._spool
            if spool is not None and not spool.empty:
                try:
                    self._held = spool.peek(_BATCH)
                except OSError as exc:
                    self._spool_problem = f"{spool.path}: {exc.strerror or exc}"
                    self._held = []
                self._held_from_spool = True
                return self._held
            count = min(_BATCH, len(self._memory))
            self._held = [self._memory.popleft() for _ in range(count)]
            self._held_from_spool = False
            return self._held

    async def _send(
        self, js: Any, subject: str, record: Record
    ) -> tuple[asyncio.Future[Any] | None, bool]:
        """Publish one record: its acknowledgement's future (``None`` when
        the server cannot take it: ``_rejection`` says why), and whether it
        was cut to fit.

        Its size is checked here, headers included, before it is sent:
        nats-py checks the payload alone against the server's maximum
        payload, and a message that exceeds it with its headers makes the
        server close the connection ("maximum payload exceeded"), which
        would fail the round and keep the event at the head of the queue
        for good.
        """
        from nats.errors import MaxPayloadError  # noqa: PLC0415

        event_id, payload = record
        # The id in a header of its own too: it tells a worker the message
        # comes from enrichlog, whose id this is, whatever the event's own
        # event_id field holds.
        headers = {"Nats-Msg-Id": event_id, ID_HEADER: event_id}
        size = message_size(payload, headers)
        head = size - len(payload)
        limit = self._max_msg_size
        client = self._client
        assert client is not None
        max_payload = client.max_payload
        if limit > 0 and size > limit and (max_payload <= 0 or limit < max_payload):
            # The stream refuses it whatever happens: not sent at all (the
            # server's refusal would only come back as an error).
            self._rejection = self._too_large(size, limit)
            return None, False
        cut = False
        if max_payload > 0 and size > max_payload:
            # Larger than the server takes: its largest values cut to fit
            # (listed in the event), headers included, rather than lost.
            payload = fit_event(payload, max_payload - head)
            cut = True
            fitted = message_size(payload, headers)
            if fitted > max_payload:
                self._rejection = (
                    f"{size} bytes, larger than the server's maximum payload "
                    f"({max_payload} bytes), even cut"
                )
                return None, False
            if limit > 0 and fitted > limit:
                self._rejection = self._too_large(size, limit)
                return None, False
        try:
            return await js.publish_async(subject, payload, headers=headers), cut
        except MaxPayloadError:  # pragma: no cover - checked above
            self._rejection = (
                f"{size} bytes, larger than the server's maximum payload ({max_payload} bytes)"
            )
            return None, False

    def _too_large(self, size: int, limit: int) -> str:
        return (
            f"{size} bytes, larger than the maximum message size of stream "
            f"{self.config.stream!r} ({limit} bytes)"
        )

    async def _publish(self, batch: list[Record]) -> bool:
        """Publish what ``batch`` (the held records) still needs; whether
        any of it is done now (published, or refused for good).

        Each record's outcome counts on its own: one the server
        acknowledged is published (counted once, never sent again) even
        when others of the round failed, so a stream that takes some and
        refuses the rest (full, discarding new messages) leaves exact
        counts. While the stream refuses events for now, a round sends only
        the oldest one: it tells whether there is room again.
        """
        from nats.js.errors import APIError  # noqa: PLC0415

        js = self._js
        assert js is not None
        subject = self.config.subject
        todo = [index for index in range(len(batch)) if index not in self._held_done]
        if self._full is not None:
            todo = todo[:1]
        sent: list[tuple[int, asyncio.Future[Any], bool]] = []
        rejected: set[int] = set()
        failure: BaseException | None = None
        try:
            for index in todo:
                future, cut = await self._send(js, subject, batch[index])
                if future is None:
                    rejected.add(index)
                else:
                    sent.append((index, future, cut))
            await asyncio.wait_for(
                asyncio.gather(*(future for _, future, _ in sent), return_exceptions=True),
                self._publish_timeout,
            )
        except Exception as exc:
            failure = exc  # those acknowledged before it are published all the same
        published: set[int] = set()
        truncated = duplicates = 0
        refusal: BaseException | None = None
        transient = failure
        for index, future, cut in sent:
            result = _outcome(future, failure)
            if isinstance(result, APIError) and result.code is not None and result.code < 500:
                rejected.add(index)  # refused for good: retrying cannot help
                self._rejection = mask_secrets(
                    f"the server refused it: {result.description or result}"
                )
            elif isinstance(result, APIError) and result.err_code is not None:
                # Refused for now (a full stream that discards new messages,
                # its storage exhausted): kept, and tried again with back-off.
                refusal = result
            elif isinstance(result, BaseException):
                transient = result
            else:
                published.add(index)
                truncated += cut
                duplicates += bool(getattr(result, "duplicate", False))
        self._settle(batch, published, rejected, truncated, duplicates)
        self._after_round(transient, refusal, bool(published))
        return bool(published or rejected)

    def _after_round(
        self, transient: BaseException | None, refusal: BaseException | None, published: bool
    ) -> None:
        """What a round says of the broker: a failure (retried), a stream
        that refuses events for now, or one that takes them again."""
        if transient is not None:
            self._failed_round(transient)
        elif refusal is not None:
            self._publish_errors += 1
            self._refused_for_now(refusal)
        elif self._full is not None and published:
            self._room_again()

    def _settle(
        self,
        batch: list[Record],
        published: set[int],
        rejected: set[int],
        truncated: int,
        duplicates: int,
    ) -> None:
        """Count the records of ``batch`` (by index) that are done, and let go
        of the oldest ones that are: the rest stay held, in order, and those
        of them already published are not sent again."""
        with self._lock:
            from_spool = self._held_from_spool
            self._published += len(published)
            if from_spool:
                self._replayed += len(published)
            self._truncated += truncated
            self._duplicates += duplicates
            self._rejected += len(rejected)
            self._unreported_rejected += len(rejected)
            self._unreported_truncated += truncated
            done = self._held_done | published | rejected
            finished = 0
            while finished < len(batch) and finished in done:
                finished += 1
            if from_spool and finished and self._spool is not None:
                try:
                    self._spool.consume(batch[:finished])
                except OSError as exc:
                    self._spool_problem = f"{self._spool.path}: {exc.strerror or exc}"
                self._spool_records -= finished
            self._held_done = {index - finished for index in done if index >= finished}
            if finished == len(batch):
                self._held, self._held_from_spool = [], False
            elif finished:
                self._held = batch[finished:]

    def _refused_for_now(self, exc: BaseException) -> None:
        """The stream refuses events for now: remember why (the next rounds
        send one event until it takes it) and say so, at most once per
        report interval."""
        self._full = server_said(exc)
        self._report_full()

    def _report_full(self) -> None:
        if self._full is None or self._full_reported:
            return
        now = time.monotonic()
        if now - self._last_full_report < self._report_interval:
            return  # it came back a moment ago: said again if it lasts
        self._full_reported = True
        self._last_full_report = now
        spool = self._spool
        kept = "in memory" if spool is None else f"in memory, then in the spool {spool.path}"
        _report.warning(
            "enrichlog: stream %r refuses new events (the server said: %s); they are kept "
            "(%s) and published once it takes them again, tried every few seconds. A full "
            "stream that discards new messages needs room: raise its limits (max_msgs, "
            "max_bytes) or let max_age remove old events",
            self.config.stream,
            self._full,
            kept,
        )

    def _room_again(self) -> None:
        """The stream took an event again after refusing them."""
        self._full = None
        if self._full_reported:
            self._full_reported = False
            _report.warning(
                "enrichlog: stream %r takes events again; publishing the events kept meanwhile",
                self.config.stream,
            )

    def _failed_round(self, exc: BaseException) -> None:
        from nats.errors import NoRespondersError  # noqa: PLC0415
        from nats.js.errors import NoStreamResponseError  # noqa: PLC0415

        self._publish_errors += 1
        if isinstance(exc, NoRespondersError | NoStreamResponseError):
            self._streams_ready = False  # the stream is gone: make it again
        client = self._client
        if client is None or not client.is_connected or isinstance(exc, TimeoutError):
            self._streams_ready = False
            self._note_outage(exc, f"no acknowledgement within {self._publish_timeout:g}s")

    def _report_problems(self, *, force: bool = False) -> None:
        self._report_full()
        now = time.monotonic()
        if not force and now - self._last_report < self._report_interval:
            return
        with self._lock:
            drops, self._unreported_drops = self._unreported_drops, 0
            rejected, self._unreported_rejected = self._unreported_rejected, 0
            truncated, self._unreported_truncated = self._unreported_truncated, 0
            problem = self._spool_problem
            rejection = self._rejection
        if not (drops or rejected or truncated):
            return
        self._last_report = now
        if drops:
            _report.warning(
                "enrichlog transport lost %d event(s): %s; see container.transport.metrics()",
                drops,
                f"the spool cannot be written ({problem})"
                if problem
                else f"the spool is full ({self._spool_max_bytes} bytes)",
            )
        if rejected:
            _report.warning(
                "enrichlog transport lost %d event(s): the server cannot take them (%s); "
                "dropped, counted as rejected in container.transport.metrics()",
                rejected,
                rejection or "refused",
            )
        if truncated:
            _report.warning(
                "enrichlog transport published %d event(s) larger than the server's maximum "
                "payload with their largest values cut (listed in their 'truncated_fields')",
                truncated,
            )

    # -- views ------------------------------------------------------------------------

    def metrics(self) -> TransportMetrics:
        """The transport's counters now."""
        with self._lock:
            spool = self._spool
            return TransportMetrics(
                published=self._published,
                duplicates=self._duplicates,
                queued=len(self._memory)
                + (0 if self._held_from_spool else len(self._held) - len(self._held_done)),
                spooled=self._spooled,
                replayed=self._replayed,
                spool_bytes=spool.size if spool is not None else self._spool_left,
                spool_dropped=self._spool_dropped,
                rejected=self._rejected,
                truncated=self._truncated,
                publish_errors=self._publish_errors,
                connected=self._connected(),
            )

    def flush(self, timeout: float) -> bool:
        """Wait until everything offered so far is published (or the
        timeout passes); whether it was."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._work():
                return True
            self._wake_up()
            time.sleep(0.01)
        return not self._work()


#: The transports whose lock the forking thread holds across ``fork()``.
_held_across_fork: list[NatsTransport] = []


def _before_fork() -> None:
    """Hold every transport's lock across ``fork()``: no other thread of
    the parent is then inside the spool's files, whose buffered objects
    carry a lock of their own that the child would find held for good (its
    after-fork close hung, and so did ``fork()``). The lock is held only
    around short spool and queue operations, never around the network."""
    transports = list(_live)
    for transport in transports:
        transport._lock.acquire()
    _held_across_fork[:] = transports


def _release_held_across_fork() -> None:
    transports = list(_held_across_fork)
    _held_across_fork.clear()
    for transport in transports:
        transport._lock.release()


def _after_fork_in_child() -> None:
    _release_held_across_fork()
    for transport in list(_live):
        transport.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_release_held_across_fork,
        after_in_child=_after_fork_in_child,
    )
