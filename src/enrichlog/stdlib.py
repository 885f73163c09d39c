"""The stdlib ``logging`` bridge: records of libraries that log with
``logging`` go through enrichlog's pipeline, enrichers and output.

* ``configure_logging(stdlib=True)`` puts an :class:`EnrichlogHandler` on the
  root logger while the container runs (removed again at shutdown), sets the
  root logger's level to the ``level`` setting and each logger named in the
  ``levels`` setting to its level (both restored at shutdown).
* ``EnrichlogHandler()`` does the same for the loggers you attach it to.
* :class:`FormatterEnrichment` enriches inside structlog's
  ``ProcessorFormatter`` (``foreign_pre_chain``), for applications that
  render stdlib records with their own handlers.

A record becomes an event with ``event`` (the formatted message), ``logger``
(the record's name), ``level``, ``exc_info`` when the record has one,
``stack`` when it has stack information, and its ``extra=`` fields at the
top level (except ``event``, ``logger``, ``level`` and ``timestamp``, which
keep their meaning). A message that cannot be formatted is kept as written,
with ``positional_args`` and ``format_error`` as enrichlog's own loggers
give them. contextvars bound with structlog are merged as for any event.
The per-logger ``levels`` apply by the record's name.

Records of enrichlog's own ``enrichlog`` logger (dropped-event and failure
reports) are written without enrichment, on the calling thread, and a record
logged while the handler is busy with another on the same thread (a
processor that logs) is written without enrichment too; one more level down
it goes to :data:`logging.lastResort` (standard error), so nothing loops.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from .engine.chain import free_key, is_application_interrupt
from .engine.plan import IN_ENRICHMENT
from .enricher import BRIDGED
from .settings import LEVELS

if TYPE_CHECKING:
    from .container import LoggingContainer

__all__ = [
    "EnrichlogHandler",
    "FormatterEnrichment",
    "RootBridge",
    "install_root_handler",
    "record_to_event",
    "remove_root_handler",
]

#: Attributes every LogRecord has; anything else came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(
    {*logging.makeLogRecord({}).__dict__, "message", "asctime", "taskName"}
)
#: Event keys an ``extra=`` field cannot replace.
_RESERVED = frozenset({"event", "logger", "level", "timestamp"})
#: Bound loggers a handler keeps, by logger name, at most.
_CACHED_LOGGERS = 1024


class _Depth(threading.local):
    """Per thread: how deep inside :meth:`EnrichlogHandler.emit` we are."""

    value = 0


_depth = _Depth()


def _method_for(levelno: int) -> str:
    """The structlog method of a stdlib level (custom levels round down)."""
    if levelno >= logging.CRITICAL:
        return "critical"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def record_to_event(record: logging.LogRecord) -> tuple[str, str, dict[str, Any]]:
    """``(method name, message, fields)`` of a stdlib record: what
    :class:`EnrichlogHandler` logs. Never raises.

    A message that cannot be formatted (``logging.info("%s paid %d",
    "alice")``, or a message object whose ``__str__`` raises) is kept as
    written (its ``repr`` when ``str`` fails), with the record's arguments
    in ``positional_args`` (when it has any) and the exception's type in
    ``format_error``: the fields enrichlog's own loggers give such a call,
    so that the arguments are not lost. An ``extra=`` field of either name
    is kept as given."""
    method, message, fields, _ = _event_of(record)
    return method, message, fields


def _event_of(
    record: logging.LogRecord,
) -> tuple[str, str, dict[str, Any], BaseException | None]:
    """:func:`record_to_event`, and the application's interrupt (Ctrl-C on
    the main thread) met while formatting the message, if one was: the
    handler writes the record first, then raises it."""
    failure: BaseException | None = None
    try:
        message = record.getMessage()
    except BaseException as exc:  # an argument's __str__ may raise anything, as in rendering
        failure = exc
        message = _printable(record.msg)
    fields: dict[str, Any] = {}
    odd: list[tuple[object, Any]] = []
    for key, value in record.__dict__.items():
        if not isinstance(key, str):
            odd.append((key, value))
        elif key not in _RECORD_ATTRIBUTES and key not in _RESERVED and not key.startswith("_"):
            fields[key] = value
    for odd_key, value in odd:
        # extra={1: "x"}: a keyword must be text, as a JSON key is; "1" (or
        # "1_2" beside an extra "1" of its own, or for a name taken).
        name = _printable(odd_key)
        taken = name in fields or name in _RESERVED or name in _RECORD_ATTRIBUTES
        fields[free_key(fields, name) if taken else name] = value
    if failure is not None:
        # As the logger methods' own (engine/logger.py): the arguments as
        # given (a tuple, or the mapping of a "%(name)s" message), and the
        # exception's type only; its text may quote an argument.
        if record.args:
            fields.setdefault("positional_args", record.args)
        fields.setdefault("format_error", type(failure).__name__)
    if record.exc_info and record.exc_info[0] is not None:
        fields["exc_info"] = record.exc_info
    if record.stack_info:
        fields["stack"] = record.stack_info
    interrupt = failure if failure is not None and is_application_interrupt(failure) else None
    return _method_for(record.levelno), message, fields, interrupt


def _printable(value: object) -> str:
    """``str(value)``, else its ``repr``, else a placeholder naming its type:
    a message object whose ``__str__`` raises still makes a line. (An
    interrupt met here is the one formatting the record met: raised once the
    record is written, see :func:`_event_of`.)"""
    for show in (str, repr):
        try:
            return show(value)
        except BaseException:  # noqa: S112 - user code: try the next way to show it
            continue
    return f"<unprintable {type(value).__name__}>"


def current_container() -> LoggingContainer | None:
    """:func:`enrichlog.container.current_container`. Looked up, not imported:
    that module installs this one's root handler, and importing enrichlog
    loads it first."""
    container_module = sys.modules.get("enrichlog.container")
    if container_module is None:
        return None
    current: LoggingContainer | None = container_module.current_container()
    return current


def _replacing() -> bool:
    """Whether ``configure_logging()`` is replacing one container by another
    (looked up as :func:`current_container` is)."""
    container_module = sys.modules.get("enrichlog.container")
    return container_module is not None and bool(container_module.replacing())


def _last_resort(record: logging.LogRecord) -> None:
    """Standard error, for warnings and above: where the stdlib sends a
    record nobody handles."""
    last = logging.lastResort
    if last is not None and record.levelno >= last.level:
        last.handle(record)


class EnrichlogHandler(logging.Handler):
    """A stdlib handler that logs each record through enrichlog: the same
    pre-processors, enrichers, per-logger levels and output as
    ``get_logger(record.name)`` would.

    Attach it to the loggers you choose (``configure_logging(stdlib=True)``
    attaches one to the root logger)::

        logging.getLogger("sqlalchemy.engine").addHandler(EnrichlogHandler())

    Args:
        level: the handler's own minimum level (stdlib semantics); the
            per-logger ``levels`` setting applies on top of it.
        container: the container to log through, only while it runs;
            ``None`` (the default): whichever container is current.

    While no container runs (before the first one starts, after the last
    one's shutdown completed), records of level ``WARNING`` and above go to
    :data:`logging.lastResort` (standard error) and the others are dropped.
    Handling a record never takes the handler's lock (the pipeline orders
    events itself), so a record logged on enrichlog's runtime while another
    thread waits for its line cannot deadlock.
    """

    def __init__(
        self, level: int = logging.NOTSET, *, container: LoggingContainer | None = None
    ) -> None:
        super().__init__(level)
        self._container = container
        self._loggers: dict[str, Any] = {}
        self._loggers_for: LoggingContainer | None = None

    def handle(self, record: logging.LogRecord) -> Any:
        """Filter, then emit without the handler's lock."""
        passed: Any = self.filter(record)
        if isinstance(passed, logging.LogRecord):  # Python 3.12: a filter may replace it
            record = passed
        if passed:
            self.emit(record)
        return passed

    def emit(self, record: logging.LogRecord) -> None:
        """Log ``record`` through the container; never raises."""
        container = self._container or current_container()
        if container is None or (container.closed and not container.exiting):
            if not _replacing():
                _last_resort(record)
                return
            # A configure_logging() switch: written as structlog's own calls
            # are meanwhile, by the chain installed (the outgoing container
            # writes its own, without its enrichers).
            container = current_container()
        depth = _depth.value
        if depth >= 2:
            _last_resort(record)
            return
        name = record.name
        own = name == "enrichlog" or name.startswith("enrichlog.")
        _depth.value = depth + 1
        token = IN_ENRICHMENT.set(True) if depth > 0 and not own else None
        interrupt: BaseException | None = None
        try:
            method, message, fields, interrupt = _event_of(record)
            log = getattr(self._logger(container, name), method)
            if own:
                # enrichlog's own report (a breaker that opened, a retry) is
                # often made while some event is enriched: not in that
                # event's context, whose request id it would carry.
                contextvars.Context().run(_unenriched, log, message, fields)
            else:
                outer, BRIDGED.record = BRIDGED.record, record  # for a call-site adder
                try:
                    log(message, **fields)
                finally:
                    BRIDGED.record = outer
        except Exception:
            self.handleError(record)
        except BaseException:
            # An interrupt can only come from the signal on the main thread;
            # elsewhere it is user code's (a value's __repr__), and the
            # thread logging (enrichlog's runtime, a worker) must go on.
            if threading.current_thread() is threading.main_thread():
                raise
            with contextlib.suppress(BaseException):  # it shows the same args again
                self.handleError(record)
        finally:
            if token is not None:
                IN_ENRICHMENT.reset(token)
            _depth.value = depth
        if interrupt is not None:  # Ctrl-C while formatting: written, then raised
            raise interrupt

    def _logger(self, container: LoggingContainer | None, name: str) -> Any:
        """The bound logger of ``name`` (its level class and its name in
        the context), kept per container (not kept between two)."""
        if container is None:
            return structlog.get_logger(name).bind()
        if self._loggers_for is not container:
            self._loggers = {}
            self._loggers_for = container
        logger = self._loggers.get(name)
        if logger is None:
            logger = structlog.get_logger(name).bind()
            if len(self._loggers) < _CACHED_LOGGERS:
                self._loggers[name] = logger
        return logger


class RootBridge:
    """What :func:`install_root_handler` changed, to undo it."""

    __slots__ = ("handler", "levels", "root_level")

    def __init__(self, handler: EnrichlogHandler, root_level: int) -> None:
        self.handler = handler
        self.root_level = root_level
        #: Logger name -> (its level before, the level set).
        self.levels: dict[str, tuple[int, int]] = {}


def install_root_handler(
    container: LoggingContainer, handed_over: RootBridge | None = None
) -> RootBridge | None:
    """With ``stdlib=True``: an :class:`EnrichlogHandler` for ``container``
    on the root logger, the root logger's level set to the ``level``
    setting and each logger of ``levels`` to its level. ``None`` (and
    nothing changed) otherwise.

    ``handed_over``: the bridge of the container this one replaces, left on
    the root logger through the switch (so that no record logged meanwhile
    found no handler): its handler is this container's now, or removed."""
    settings = container.settings
    root = logging.getLogger()
    if not settings.stdlib:
        if handed_over is not None:
            remove_root_handler(handed_over)
        return None
    # The levels the application had before enrichlog set any (the outgoing
    # container's "before" where it still holds its level): restored at the
    # end. Never restored in between, where a record would meet them.
    before: dict[str | None, int] = {None: root.level}
    if handed_over is not None:
        before = _levels_before(handed_over)
        handler = handed_over.handler
        handler._container = container  # on the root logger all along
    else:
        handler = EnrichlogHandler(container=container)
    bridge = RootBridge(handler, before[None])
    root.setLevel(settings.level_number)
    for name, level in settings.levels.items():
        logger = logging.getLogger(name)
        bridge.levels[name] = (before.pop(name, logger.level), LEVELS[level])
        logger.setLevel(LEVELS[level])
    for other, level_before in before.items():  # the outgoing container's, not this one's
        if other is not None:
            logging.getLogger(other).setLevel(level_before)
    if handler not in root.handlers:  # new, or the application removed it (dictConfig...)
        root.addHandler(handler)
    return bridge


def _levels_before(bridge: RootBridge) -> dict[str | None, int]:
    """The levels the loggers ``bridge`` set had before it (``None``: the
    root's), for those the application did not change since."""
    root = logging.getLogger()
    container = bridge.handler._container
    levels: dict[str | None, int] = {
        None: bridge.root_level
        if container is not None and root.level == container.settings.level_number
        else root.level
    }
    for name, (level_before, ours) in bridge.levels.items():
        if logging.getLogger(name).level == ours:
            levels[name] = level_before
    return levels


def remove_root_handler(bridge: RootBridge) -> None:
    """Undo :func:`install_root_handler`: remove the handler and give the
    loggers their levels back (those the application did not change since)."""
    logging.getLogger().removeHandler(bridge.handler)
    for name, level in _levels_before(bridge).items():
        logging.getLogger(name).setLevel(level)


class FormatterEnrichment:
    """A processor for structlog's ``ProcessorFormatter.foreign_pre_chain``
    that enriches stdlib records synchronously and never raises.

    A formatter must return the rendered record at once, so the enrichers
    that await are waited for here, on the logging thread (at most every
    level's timeout), instead of in the background; on the thread that runs
    enrichment itself they are skipped as ``unavailable``. An enricher's
    ``DropEvent`` cannot drop the line (use a ``logging.Filter`` for that).
    Put the container's own processor (``container.processor``) there
    instead and a record that needs an await raises ``DropEvent`` into the
    library's log call: use this one.

    Args:
        container: the container whose enrichers run; ``None`` (the
            default): whichever container is current (events pass unchanged
            while none runs).
    """

    __slots__ = ("_container",)

    def __init__(self, container: LoggingContainer | None = None) -> None:
        self._container = container

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        container = self._container or current_container()
        if container is None or not container.running:
            return event_dict
        return container.enrich_now(method_name, event_dict, logger)


def _unenriched(log: Callable[..., Any], message: Any, fields: dict[str, Any]) -> None:
    """``log(message, **fields)``, marked as enrichment: written as it is."""
    IN_ENRICHMENT.set(True)
    log(message, **fields)
