"""Where rendered lines go: standard output, standard error, a file or a sink.

`LineWriter` is the wrapped logger structlog calls with each rendered line.
It is shared by the logging threads (events completed on the caller) and the
runtime thread (events completed there), so one lock orders their writes.
`TailWriter` finishes the events the runtime completed: it runs the rest of
the structlog chain (exception formatting, the renderer) and hands the line
to the event's logger, as structlog would have.

A file output reopens its path on SIGHUP (after logrotate moved the file);
a sink is any object with a ``write(str)`` method, which gets each line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import select
import signal
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from types import FrameType
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from ..exceptions import EnricherConfigError
from ..reporting import reporting_logger
from .chain import is_application_interrupt, last_resort_line

__all__ = [
    "LineWriter",
    "NamedWriter",
    "TailWriter",
    "append_unbuffered",
    "open_for_appending",
    "open_output",
    "reopen_files",
]

_report = reporting_logger("enrichlog")


class TailWriter:
    """Renders events the runtime finished and writes their lines.

    Args:
        tail: the processors after enrichlog's in the chain (the renderer
            last); the logger method named by the event writes the result.
    """

    __slots__ = ("tail",)

    #: The lines it writes go to the events' outputs, which may gather them
    #: (see LineWriter.gather); a writer that publishes events instead
    #: (scale-out) has no such attribute.
    writes_lines = True

    def __init__(self, tail: Iterable[Processor] = ()) -> None:
        self.tail = list(tail)

    def write(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> bool:
        """Run the tail and write the line; never raises. Returns whether a
        line was written (a processor may drop the event on purpose)."""
        event: Any = event_dict
        writing = False
        try:
            for processor in self.tail:
                event = processor(logger, method_name, event)
            writing = True
            if isinstance(event, str | bytes | bytearray):
                getattr(logger, method_name)(event)
            elif isinstance(event, tuple):
                args, kwargs = event
                getattr(logger, method_name)(*args, **kwargs)
            else:
                getattr(logger, method_name)(**event)
        except structlog.DropEvent:
            return False
        except BaseException as exc:
            if writing and not isinstance(exc, Exception):
                if threading.current_thread() is threading.main_thread():
                    # An interrupt that landed in the output's write, on the
                    # main thread (LineWriter counted the line): raised
                    # once the runtime's bookkeeping is done.
                    _raise_later(exc)
                    return True
                # The wrapped logger raised it on the runtime's thread, which
                # must go on: a line not written.
                _report_quietly(
                    _report.warning,
                    "enrichlog: the output raised %s; the line was not written",
                    type(exc).__name__,
                )
                return False
            # A processor of the tail failed: the event is still written,
            # as plainly as it can be, and counted as a fallback.
            renderer = self.tail[-1] if self.tail else None
            if renderer is not None and hasattr(renderer, "fallbacks"):
                renderer.fallbacks += 1
            _report_quietly(
                _report.exception, "enrichlog: rendering an event failed; writing it plainly"
            )
            try:
                getattr(logger, method_name)(last_resort_line(event_dict, exc))
            except Exception:
                return False
        return True


def _report_quietly(report: Callable[..., object], message: str, *args: object) -> None:
    """Report through the stdlib logger ``enrichlog``, which may lead back
    into structlog (the stdlib bridge) and fail again the same way: whatever
    the report raises is dropped, so that the writer goes on."""
    with contextlib.suppress(BaseException):  # the report is the only thing lost
        report(message, *args)


def _raise_later(interrupt: BaseException) -> None:
    """Raise ``interrupt`` from the loop running on this thread, in a
    callback of its own (the runtime on the application's loop: the pipeline
    finishes what it was doing first), or here and now on a thread that
    runs no loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise interrupt from None
    loop.call_soon(_reraise, interrupt)


def _reraise(interrupt: BaseException) -> None:
    raise interrupt


def _as_failure(exc: BaseException) -> BaseException:
    """What a failed write counts and reports: ``exc`` when it is a stream's
    own error (``OSError``, ``ValueError`` for a closed stream), else an
    ``OSError`` naming it (anything else the stream raised)."""
    if isinstance(exc, OSError | ValueError):
        return exc
    failure = OSError(f"the output raised {type(exc).__name__}")
    failure.__cause__ = exc
    return failure


def append_unbuffered(path: str, _open: Callable[..., Any] = open) -> IO[bytes]:
    """``path`` opened for appending without a buffer: each line is written
    by the call that writes it, so a failed write (a full disk) leaves no
    bytes behind that a later write would put into the file, and what the
    counters say was written is what the file holds.

    ``open`` is the one there was when this module was imported: the
    interpreter removes it from the builtins as it exits, and a file closed
    by the exit drain is reopened for a line logged later (an object's
    ``__del__``); the bare name then raised ``NameError``, as the standard
    library's ``FileHandler`` found (it keeps ``open`` the same way)."""
    return _open(path, "ab", buffering=0)  # type: ignore[no-any-return]


def open_for_appending(target: str) -> IO[bytes]:
    """The file ``target`` (``~`` expanded) opened for appending.

    Raises:
        EnricherConfigError: it cannot be, naming it and why.
    """
    try:
        return append_unbuffered(os.path.expanduser(target))  # the caller closes it
    except OSError as exc:
        raise EnricherConfigError(
            f"output {target!r} cannot be opened for appending: {exc.strerror or exc}"
        ) from None


def _whole_lines(lines: list[bytes], taken: int) -> int:
    """How many of ``lines`` (joined by newlines, the last one empty) are
    whole in the first ``taken`` bytes: a line may hold newlines of its own
    (a console traceback), so they are not counted."""
    whole, end = 0, 0
    for line in lines[:-1]:
        end += len(line) + 1
        if end > taken:
            break
        whole += 1
    return whole


def appending_problem(target: str) -> str | None:
    """Why the file ``target`` could not be opened for appending, as
    ``python -m enrichlog check`` must find out: by the same system call
    :func:`open_for_appending` makes, leaving nothing behind (an existing
    file is opened without being written; a new one is created and removed
    again). ``None`` when nothing stands in the way."""
    path = os.path.expanduser(target)
    if os.path.islink(path):
        # Followed, as open() follows it (O_EXCL would not): to the file it
        # names, created if missing.
        path = os.path.realpath(path)
    try:
        try:
            # Created only if nobody else did meanwhile, so that what is
            # removed is ours; with O_CREAT, as open() asks, so that the
            # system gives the same reason (a path ending in '/').
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                os.lseek(descriptor, 0, os.SEEK_END)  # as open(..., "ab") does
            finally:
                os.close(descriptor)
        else:
            os.close(descriptor)
            os.unlink(path)
    except OSError as exc:
        return f"output {target!r} cannot be opened for appending: {exc.strerror or exc}"
    return None


class LineWriter:
    """Writes one line per call to a binary stream, flushing each line (or,
    between :meth:`gather` and :meth:`write_gathered`, the lines of one
    thread together, with as few write calls as :attr:`gather_limit` allows).

    Every structlog level method (``info``, ``error``...) is an alias of
    :meth:`msg`, like structlog's ``BytesLogger``. A write never raises into
    the log call: a failing stream (a full disk, a closed or broken pipe)
    counts the line in :attr:`write_failed` and is reported through the
    stdlib logger ``enrichlog`` at most once per ``report_interval`` seconds;
    after a broken pipe nothing more is tried, so a dead reader costs nothing.

    Attributes:
        written: lines written since the writer was created.
        write_failed: lines that could not be written.
        report_interval: seconds between reports of failed writes.
    """

    __slots__ = (
        "__weakref__",  # the registry of files reopened on SIGHUP
        "_broken",
        "_closed",
        "_cut_in",
        "_deferred",
        "_due_report",
        "_failed_before",
        "_flush",
        "_fragmenting",
        "_gathered",
        "_gathering",
        "_last_report",
        "_lock",
        "_owns",
        "_partial",
        "_pid",
        "_reopens",
        "_stream",
        "_torn",
        "_unreported",
        "_usable",
        "_write",
        "gather_limit",
        "line_writer",
        "name",
        "report_interval",
        "target",
        "write_failed",
        "written",
    )

    def __init__(self, stream: IO[bytes], *, target: str, owns: bool) -> None:
        self._stream = stream
        self._write = stream.write
        self._flush = stream.flush
        # Re-entrant: a signal handler that logs runs on a thread that may
        # be inside msg() already (each line is still one write call).
        self._lock = threading.RLock()
        self._owns = owns
        self._closed = False
        self._broken = False
        #: A write the stream took only part of cut a line: the next line
        #: ends that fragment first (see _complete).
        self._torn = False
        #: Bytes of the current write the stream took (see _complete).
        self._partial = 0
        #: Ending a cut line's fragment (see _write_after_fragment).
        self._fragmenting = False
        #: Times :meth:`reopen` pointed the stream at a new file (shared by
        #: the writers of one stream: see :meth:`retarget`), and that count
        #: when a line was cut: a fragment left in the file before is not
        #: ended in the new one.
        self._reopens = [0]
        self._cut_in = 0
        #: Neither closed, broken, torn nor writing: the only test a line's
        #: write makes.
        self._usable = True
        self._deferred: list[bytes] = []
        self._gathered = 0
        self._gathering = False
        self._due_report: tuple[BaseException, int] | None = None
        #: Bytes one write call may carry when lines are gathered (see
        #: :meth:`gather`); 0 writes each line with a call of its own.
        self.gather_limit = 0
        #: Where the lines go (a :class:`NamedWriter` has its writer's).
        self.line_writer = self
        self._pid = os.getpid()
        self.target = target
        self.name: str | None = None
        self.written = 0
        self.write_failed = 0
        self.report_interval = 10.0
        self._unreported = 0
        self._last_report = -float("inf")
        #: Failed writes counted before its current output (retarget).
        self._failed_before = 0

    def __repr__(self) -> str:
        return f"<LineWriter {self.target}>"

    def msg(self, message: bytes | str) -> None:  # noqa: PLR0912 - once per line: one frame
        """Write ``message`` and a newline, then flush. Never raises, but for
        an interrupt landing in the write on the main thread (see
        :meth:`_interrupted`)."""
        # Once per line, on every thread: the common case (bytes, a stream
        # that works) is one test, one lock, two calls and a count.
        if message.__class__ is not bytes:
            message = message.encode("utf-8", "backslashreplace")  # type: ignore[union-attr]
        with self._lock:
            if self._usable:
                # Unusable while it writes: a signal handler that logs on this
                # thread meanwhile has its line written after this one.
                self._usable = False
                line = message + b"\n"
                try:
                    done = self._write(line)
                    if done is not None and done < len(line):  # a full disk...
                        self._complete(line, done)
                except (OSError, ValueError) as exc:  # ValueError: a closed stream
                    failure: BaseException = exc
                except BaseException as exc:  # see _interrupted()
                    failure = self._interrupted(exc, written=False)
                else:
                    try:
                        self._flush()
                    except (OSError, ValueError) as exc:
                        failure = exc
                    except BaseException as exc:
                        failure = self._interrupted(exc, written=True)
                    else:
                        self.written += 1
                        self._usable = True
                        if self._deferred:
                            self._write_deferred()
                        return
                self._refresh_usable()
            elif self._gathering:
                # Kept with the lines gathered (see gather()); first written
                # are those kept, if one call could not carry them all.
                if self._gathered + len(message) >= self.gather_limit and self._deferred:
                    self._write_lines()
                self._deferred.append(message)
                self._gathered += len(message) + 1
                return
            else:
                unusual = self._write_unusual(message)
                if unusual is None:
                    self.written += 1
                    return
                if unusual is _DEFERRED:
                    return
                failure = unusual
            due, count = self._count_failure(failure)
        if due:
            # Outside the lock: a handler may route this back into logging.
            self._report_failure(failure, count)

    def _report_failure(self, failure: BaseException, count: int) -> None:
        _report.warning(
            "enrichlog could not write %d line(s) to %s (%s)%s",
            count,
            self.target,
            _describe(failure),
            "; it stops trying" if self._broken else "",
        )

    def _interrupted(self, exc: BaseException, *, written: bool) -> BaseException:
        """With the lock held: the stream's write (or, ``written``, its
        flush) raised ``exc``, which is not an ``OSError``: a signal
        handler's ``KeyboardInterrupt`` or ``SystemExit`` landing in it, or
        a sink's own ``BaseException``. The writer stays usable either way
        (left marked as writing, it would keep every later line for good).

        An interrupt on the main thread, where signal handlers run, is the
        application's: the line counts as written if the write call
        returned, the lines logged meanwhile are written, and the interrupt
        is raised again. Anything else, and anything on another thread
        (where no signal handler runs: the stream raised it itself), is a
        failed write, returned as such."""
        self._refresh_usable()
        if is_application_interrupt(exc):
            if written:
                self.written += 1
            else:
                self.write_failed += 1
            if self._usable and self._deferred:
                self._write_deferred()
            raise exc
        return _as_failure(exc)

    def _write_unusual(self, line: bytes) -> BaseException | None:
        """With the lock held, for a closed or broken writer: a broken one
        writes nothing; a closed file is reopened (loggers cached before a
        reconfiguration still hold this writer: appending beats losing their
        lines). ``None`` once written, else the failure."""
        if self._torn and not (self._closed or self._broken or self._fragmenting):
            return self._write_after_fragment(line)
        if not (self._closed or self._broken):  # writing already, on this thread
            self._deferred.append(line)
            return _DEFERRED
        if self._broken:
            return _BROKEN
        try:
            self._reopen()
            self._write(line + b"\n")
            self._flush()
        except (OSError, ValueError) as exc:
            return exc
        except BaseException as exc:  # see _interrupted()
            return self._interrupted(exc, written=False)
        return None

    def _refresh_usable(self) -> None:
        """With the lock held: usable unless closed, broken or torn (each
        line then takes the slower way, _write_unusual)."""
        self._usable = not (self._closed or self._broken or self._torn)

    def _write_all(self, data: bytes) -> None:
        """With the lock held: write ``data``, finishing a write the stream
        took only part of (see _complete). (msg() does the same inline.)"""
        done = self._write(data)
        if done is not None and done < len(data):
            self._complete(data, done)

    def _complete(self, data: bytes, done: int) -> None:
        """With the lock held: write the rest of ``data``, of which the
        stream took only ``done`` bytes (a disk that filled up). Raises what
        the stream raises; a line then cut stays cut in the file, so the next
        line starts on a line of its own (_write_after_fragment)."""
        self._partial = done
        while done < len(data):
            try:
                more = self._write(data[done:])
            except BaseException:
                self._cut(data, done)
                raise
            if not more:  # nothing taken, and no error: the same as one
                self._cut(data, done)
                raise OSError(errno.EIO, "the output took only part of a line")
            done += more
            self._partial = done

    def _cut(self, data: bytes, done: int) -> None:
        self._torn = data[done - 1 : done] != b"\n"
        self._cut_in = self._reopens[0]

    def _ends_fragment(self) -> bool:
        """A cut line was left in the file this stream writes to now."""
        return self._torn and self._cut_in == self._reopens[0]

    def _write_after_fragment(self, line: bytes) -> BaseException | None:
        """With the lock held, after a cut line: end the fragment (unless
        the file was reopened since), then write ``line``. ``None`` once
        written, else the failure."""
        data = (b"\n" if self._ends_fragment() else b"") + line + b"\n"
        self._fragmenting = True  # a signal handler's line waits (see _write_unusual)
        try:
            self._write_all(data)
        except (OSError, ValueError) as exc:
            return exc
        except BaseException as exc:  # see _interrupted()
            return self._interrupted(exc, written=False)
        else:
            self._torn = False
        finally:
            self._fragmenting = False
            self._refresh_usable()
        if self._deferred:
            self._write_deferred()
        return None

    def gather(self) -> bool:
        """Keep the lines this thread writes until :meth:`write_gathered`
        and write them with as few calls as :attr:`gather_limit` allows: the
        runtime's loop writes the lines that are ready together this way
        (one write call, and the GIL released and taken back once, per batch
        rather than per line). Other threads' lines wait on the lock
        meanwhile, so lines keep the order they were written in.

        False (nothing is gathered) when the writer does not gather (a sink
        gets each line in a call of its own), is not usable, or is writing
        already on this thread. After True, :meth:`write_gathered` must
        follow (``try``/``finally``): the lock is held until then."""
        if not self.gather_limit:
            return False
        self._lock.acquire()
        if not self._usable:
            self._lock.release()
            return False
        self._usable = False  # msg() adds to the gathered lines
        self._gathering = True
        return True

    def write_gathered(self) -> None:
        """Write the lines gathered since :meth:`gather`, then let other
        threads write again; never raises."""
        try:
            self._gathering = False
            self._write_lines()
            self._refresh_usable()
        finally:
            self._lock.release()
        report, self._due_report = self._due_report, None
        if report is not None:
            self._report_failure(*report)

    def _write_lines(self) -> None:
        """With the lock held: the kept lines, with one write call."""
        lines, self._deferred, self._gathered = self._deferred, [], 0
        if not lines:
            return
        lines.append(b"")
        # A signal handler that logs meanwhile has its line kept behind these.
        gathering, self._gathering = self._gathering, False
        prefixed = False
        data = b""
        self._partial = 0
        try:
            if self._closed:  # by a signal handler's shutdown meanwhile: as msg() would
                self._reopen()
            data = b"\n".join(lines)
            prefixed = self._ends_fragment()
            if prefixed:
                data = b"\n" + data  # ends the fragment a cut line left
            self._write_all(data)
            self._flush()
        except BaseException as exc:
            # Gathered lines are written by the runtime: never raised (see
            # _interrupted() for the caller's own line). Those the stream
            # took whole before it failed are written.
            whole = _whole_lines(lines, self._partial - prefixed)
            self.written += whole
            failure = _as_failure(exc)
            due, count = self._count_failure(failure, len(lines) - 1 - whole)
            if due:
                self._due_report = (failure, count)
        else:
            self._torn = False
            self.written += len(lines) - 1
        finally:
            self._gathering = gathering and not self._broken

    def _write_deferred(self) -> None:
        """With the lock held: the lines logged from a signal handler while
        this thread was writing."""
        while self._deferred:
            line = self._deferred.pop(0)
            try:
                self._write(line + b"\n")
                self._flush()
            except BaseException:  # a signal handler's line: never raised
                self.write_failed += 1
            else:
                self.written += 1

    def _count_failure(self, failure: BaseException, lines: int = 1) -> tuple[bool, int]:
        """With the lock held: count lines not written; whether to report."""
        if isinstance(failure, BrokenPipeError | ValueError):
            self._broken = True
            self._usable = False
        self.write_failed += lines
        self._unreported += lines
        now = time.monotonic()
        if now - self._last_report < self.report_interval:
            return False, 0
        self._last_report = now
        count, self._unreported = self._unreported, 0
        return True, count

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg
    failure = msg

    def close(self, timeout: float = 5.0) -> None:
        """Flush; close the file if this writer opened it. Never raises, and
        never waits more than ``timeout`` for a write in progress (a stdout
        pipe whose reader stopped reading blocks its writer for good)."""
        if not self._lock.acquire(timeout=timeout):
            _report.warning(
                "enrichlog: the output %s is blocked in a write that does not return (its "
                "reader is not reading?); it is left as it is",
                self.target,
            )
            return
        try:
            if self._closed:
                return
            try:
                self._flush()
            except (OSError, ValueError):
                pass  # counted when the lines were written
            finally:
                if self._owns:
                    with contextlib.suppress(OSError, ValueError):
                        self._stream.close()
                    self._closed = True
                    self._usable = False
        finally:
            self._lock.release()
        self.report_failures()

    def report_failures(self) -> None:
        """Report the lines that could not be written since the last report
        (at shutdown: the reports during the run are rate-limited)."""
        count, self._unreported = self._unreported, 0
        if count:
            _report.warning(
                "enrichlog could not write %d line(s) to %s since its last report (%d in all)",
                count,
                self.target,
                self.write_failed - self._failed_before,
            )

    def retarget(self, other: LineWriter) -> None:
        """Write where ``other`` writes from now on.

        The writer structlog's cached loggers hold is retargeted on every
        reconfiguration, so loggers bound before it follow the new output.
        """
        with self._lock:
            self._stream, self._write, self._flush = other._stream, other._write, other._flush
            self._reopens = other._reopens
            self._owns, self.target, self._closed = other._owns, other.target, False
            self.gather_limit = other.gather_limit
            self._broken = self._torn = False
            self._usable = True
            # Another output: its first failure is reported at once, not
            # held back by the previous output's last report, and its count
            # is its own.
            self._last_report = other._last_report
            self._failed_before = self.write_failed

    def release(self, other: LineWriter, timeout: float = 5.0) -> bool:
        """Stop writing to ``other``'s stream (it is being closed); a later
        line reopens the file by path. False when a write in progress kept
        the writer busy for ``timeout`` (see :meth:`close`)."""
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            if self._stream is other._stream and self is not other:
                self._closed = self._owns
                self._refresh_usable()
        finally:
            self._lock.release()
        return True

    def _reopen(self) -> None:
        # Loggers cached by the application before a reconfiguration still
        # hold this writer: appending beats losing their lines.
        stream = append_unbuffered(self.target)
        self._stream, self._write, self._flush = stream, stream.write, stream.flush
        self._reopens = [0]
        self._closed = self._torn = False
        self._usable = not self._broken

    def after_fork_in_child(self) -> None:
        """Start afresh in a forked child: a new lock and a new stream.

        A lock held by another of the parent's threads at fork time (ours,
        or the buffered file's own) stays held forever in the child, so
        neither is used again: files are reopened by path, standard output
        and error through a duplicate of their descriptor.
        """
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        # Re-entrant: a signal handler that logs runs on a thread that may
        # be inside msg() already (each line is still one write call).
        self._lock = threading.RLock()
        if self._owns:
            stream: IO[bytes] = append_unbuffered(self.target)
        else:
            try:
                descriptor = self._stream.fileno()
            except (AttributeError, OSError, ValueError):
                return  # a sink without a descriptor: it is the application's to mind
            stream = open(os.dup(descriptor), "wb", buffering=0)  # noqa: SIM115
            self._owns = True  # the duplicate is ours to close
        self._stream, self._write, self._flush = stream, stream.write, stream.flush
        self._reopens = [0]
        self._closed = self._broken = self._torn = False
        self._usable = True
        # Lines another of the parent's threads was gathering are the
        # parent's to write.
        self._deferred, self._gathered, self._gathering = [], 0, False

    def __getstate__(self) -> Any:
        raise TypeError("LineWriter cannot be pickled")

    # -- logrotate -------------------------------------------------------------

    def reopen(self) -> bool:
        """Point a file output at its path again (after logrotate moved the
        file away): later lines go to a file at the original path, created if
        needed. Returns whether it reopened; never raises.

        The stream object stays the same (its descriptor is replaced in
        place), so every writer that shares it follows, and no lock is taken:
        safe to call from a signal handler.
        """
        if not self._owns or self._closed:
            return False
        try:
            descriptor = self._stream.fileno()
            # Without waiting: a named pipe whose reader is gone would hold
            # the signal handler, and the application's main thread, until
            # another reader came. Only a regular file is rotated.
            fresh = os.open(
                self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o666
            )
        except (AttributeError, OSError, ValueError):
            return False
        try:
            if not stat.S_ISREG(os.fstat(fresh).st_mode):
                return False  # a pipe, a socket, a device: nothing to rotate
            os.set_blocking(fresh, True)
            os.dup2(fresh, descriptor)
        except OSError:
            return False
        finally:
            os.close(fresh)
        self._reopens[0] += 1
        return True


class NamedWriter:
    """The writer of a named logger (``get_logger("api")``): writes through
    the shared :class:`LineWriter` (its level methods are that writer's own,
    so no call is added per line) and carries the logger's ``name``."""

    __slots__ = (
        "critical",
        "debug",
        "err",
        "error",
        "exception",
        "failure",
        "fatal",
        "info",
        "line_writer",
        "log",
        "msg",
        "name",
        "warn",
        "warning",
        "writer",
    )

    def __init__(self, writer: LineWriter, name: str) -> None:
        self.writer = writer
        self.line_writer = writer
        self.name = name
        self.msg = self.log = self.debug = self.info = self.warn = self.warning = writer.msg
        self.error = self.err = self.critical = self.fatal = writer.msg
        self.exception = self.failure = writer.msg

    def __repr__(self) -> str:
        return f"<NamedWriter {self.name!r} {self.writer.target}>"

    def __getstate__(self) -> Any:
        raise TypeError("NamedWriter cannot be pickled")


def logger_factory(writer: LineWriter) -> Callable[..., LineWriter | NamedWriter]:
    """structlog's logger factory: ``get_logger()`` writes with ``writer``,
    ``get_logger(name)`` with a :class:`NamedWriter` of it."""

    def factory(*args: Any) -> LineWriter | NamedWriter:
        if args and args[0] is not None:
            return NamedWriter(writer, args[0] if isinstance(args[0], str) else str(args[0]))
        return writer

    return factory


def open_output(target: Any) -> LineWriter:
    """A writer for ``stdout``, ``stderr``, a file path (appended to, and
    reopened on SIGHUP) or a sink (an object with a ``write(str)`` method,
    or a binary stream, which gets bytes).

    Raises:
        EnricherConfigError: the file cannot be opened for appending; the
            message names the path and the reason.
    """
    if not isinstance(target, str):
        return LineWriter(_sink_stream(target), target=_sink_name(target), owns=False)
    if target in ("stdout", "stderr"):
        writer = LineWriter(_binary(getattr(sys, target)), target=target, owns=False)
        # Often a pipe other processes write to as well: a write up to
        # PIPE_BUF bytes is never interleaved with theirs.
        writer.gather_limit = _PIPE_BUF
        return writer
    stream = open_for_appending(target)  # closed by LineWriter.close
    # The absolute path: reopened after a rotation, a relative one would
    # follow the process's working directory wherever it has moved since.
    writer = LineWriter(stream, target=os.path.abspath(os.path.expanduser(target)), owns=True)
    writer.gather_limit = _FILE_GATHER_LIMIT
    _files.add(writer)
    _reopen_on_sighup()
    return writer


def _sink_stream(sink: Any) -> IO[bytes]:
    if isinstance(sink, io.RawIOBase | io.BufferedIOBase):
        return sink  # type: ignore[return-value]  # a binary stream takes the bytes
    return _TextAsBinary(sink, sink=True)  # type: ignore[return-value]


def _sink_name(sink: Any) -> str:
    name = getattr(sink, "name", None)
    return name if isinstance(name, str) else f"<{type(sink).__name__}>"


# -- SIGHUP: reopen file outputs (logrotate) -------------------------------------

#: Every file output that is open.
_files: weakref.WeakSet[LineWriter] = weakref.WeakSet()
#: The SIGHUP handler that was there before ours, chained to when callable.
_previous_sighup: Any = None


def reopen_files() -> int:
    """Reopen every file output by its path (what SIGHUP does): call it
    from an application's own SIGHUP handler, or after rotating the files
    some other way. Returns how many were reopened; never raises."""
    return sum(writer.reopen() for writer in list(_files))


def _on_sighup(signum: int, frame: FrameType | None) -> None:
    reopen_files()
    previous = _previous_sighup
    if callable(previous):
        previous(signum, frame)


def _reopen_on_sighup() -> None:
    """Install the SIGHUP handler, once, from the main thread; a handler the
    application installed before is chained to (it runs after the reopen)."""
    global _previous_sighup  # noqa: PLW0603 - one handler per process
    hup = getattr(signal, "SIGHUP", None)
    if hup is None or threading.current_thread() is not threading.main_thread():
        return
    try:
        current = signal.getsignal(hup)
        if current is _on_sighup:
            return
        signal.signal(hup, _on_sighup)
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        return
    # SIG_DFL (end the process) and SIG_IGN are not chained to: the point of
    # the handler is that SIGHUP reopens the files and nothing else.
    _previous_sighup = current if callable(current) else None


def _binary(stream: Any) -> IO[bytes]:
    if stream is None:  # a process started without it (``python app.py >&-``)
        return _Missing()  # type: ignore[return-value]
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        return buffer  # type: ignore[no-any-return]
    return _TextAsBinary(stream)  # type: ignore[return-value]


class _Missing:
    """The standard stream of a process that has none (``sys.stdout`` is
    ``None``): every line is a failed write, as to a closed stream."""

    def write(self, data: bytes) -> int:
        raise ValueError("the process has no such stream (it is None)")

    def flush(self) -> None:
        pass


class _TextAsBinary:
    """Adapts a text-only stream (``io.StringIO`` in tests) or a sink (an
    object with ``write(str)``) to bytes writes. Whatever a sink raises is an
    ``OSError`` here: counted and reported as a failed write, never raised
    into a log call."""

    def __init__(self, stream: Any, *, sink: bool = False) -> None:
        self._stream = stream
        self._sink = sink
        self._flush = getattr(stream, "flush", None) if sink else stream.flush

    def write(self, data: bytes) -> int:
        # The bytes taken, all of them: a text stream answers in characters,
        # which LineWriter would read as a write cut short.
        if not self._sink:
            self._stream.write(data.decode("utf-8", "replace"))
            return len(data)
        try:
            self._stream.write(data.decode("utf-8", "replace"))
        except Exception as exc:
            raise OSError(f"the sink raised {type(exc).__name__}") from exc
        return len(data)

    def flush(self) -> None:
        flush = self._flush
        if flush is None:
            return
        if not self._sink:
            flush()
            return
        try:
            flush()
        except Exception as exc:
            raise OSError(f"the sink's flush raised {type(exc).__name__}") from exc

    def close(self) -> None:
        if not self._sink:
            self._stream.close()
        # A sink is the application's to close.

    def fileno(self) -> int:
        return self._stream.fileno()  # type: ignore[no-any-return]


#: Bytes one write call may carry to standard output or error (an atomic
#: write to a pipe).
_PIPE_BUF = getattr(select, "PIPE_BUF", 512)

#: Bytes one write call may carry to a file (appended to: one write call
#: is never interleaved with another process's).
_FILE_GATHER_LIMIT = 65536

#: What a broken writer "fails" with: it tries nothing more.
_BROKEN = BrokenPipeError("the output is broken or closed")

#: What a line logged during a write on the same thread (a signal handler)
#: "fails" with: it is written right after.
_DEFERRED = InterruptedError("deferred")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        if exc.strerror:
            return f"{type(exc).__name__}: {exc.strerror}"
        cause = exc.__cause__
        if cause is not None:  # the output's own exception, carried as a failed write
            return f"{type(cause).__name__}, raised by the output"
    return type(exc).__name__
