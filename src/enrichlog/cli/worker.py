"""``python -m enrichlog worker``: enrich and write the events producers
publish to the transport (``ENRICHLOG_TRANSPORT``), configured from the
environment like an application."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Iterable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from ..exceptions import EnricherConfigError, EnrichlogError
from ..settings import resolve_settings
from ..uri.masking import mask_secrets

if TYPE_CHECKING:
    from ..worker import Worker

__all__ = ["load_enrichers", "run_worker"]


def load_enrichers(reference: str) -> list[object]:
    """The enrichers ``module:attribute`` names: an iterable of enrichers,
    or a callable returning one.

    Raises:
        EnricherConfigError: the module or attribute cannot be loaded.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise EnricherConfigError(f"--enrichers {reference!r}: expected module:attribute")
    try:
        value: object = getattr(importlib.import_module(module_name), attribute)
    except Exception as exc:  # the module's own code may raise anything
        raise EnricherConfigError(
            f"--enrichers {reference!r} cannot be loaded: {mask_secrets(str(exc))}"
        ) from None
    if callable(value):
        try:
            value = value()
        except Exception as exc:
            raise EnricherConfigError(
                f"--enrichers {reference!r} failed: {type(exc).__name__}: {mask_secrets(str(exc))}"
            ) from None
    if not isinstance(value, Iterable):
        raise EnricherConfigError(f"--enrichers {reference!r}: expected a list of enrichers")
    return list(value)


def run_worker(
    imports: Sequence[str] = (), enrichers: str | None = None, stats_interval: float = 30.0
) -> int:
    """Run a worker until SIGTERM or SIGINT; 0 after a clean stop, 1 on a
    configuration problem (printed on stderr).

    The signals are taken from the first moment on: one that arrives while
    the worker is still starting (importing nats-py, building its engine,
    connecting) stops it as one arriving later does, with exit status 0 and
    the final metrics line, instead of killing it.
    """
    signals = _StopSignals()
    try:
        return _run(signals, imports, enrichers, stats_interval)
    finally:
        signals.restore()


def _run(
    signals: _StopSignals, imports: Sequence[str], enrichers: str | None, stats_interval: float
) -> int:
    from ..worker import Worker  # noqa: PLC0415 - imports the engine and nats-py

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        for module in imports:
            try:
                importlib.import_module(module)
            except Exception as exc:  # the module's own code may raise anything
                raise EnricherConfigError(
                    f"--import {module!r}: {mask_secrets(str(exc))}"
                ) from None
        in_code = load_enrichers(enrichers) if enrichers else []
        settings = resolve_settings(None, {})
        _check_output(settings.output_name)
        worker = Worker(settings, in_code, stats_interval=stats_interval)
    except EnrichlogError as exc:
        _error(f"error: {exc}")
        return 1
    signals.stop(worker)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # The loop's own handlers from here on: they run request_stop on the
        # loop, between its callbacks, not in the middle of one.
        for signum in _SIGNALS:
            loop.add_signal_handler(signum, worker.request_stop)
        await worker.run()

    try:
        asyncio.run(main())
    except EnrichlogError as exc:
        _error(f"error: {exc}")
        return 1
    finally:
        # Closing the loop put the default handlers back (SIGTERM would kill
        # again); until the command returns, a signal finds a stopping worker.
        signals.install()
    return 0


#: The signals that stop a worker.
_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: The signal that reopens its output files (logrotate), where there is one.
_HANGUP: signal.Signals | None = getattr(signal, "SIGHUP", None)


class _StopSignals:
    """SIGTERM and SIGINT for a worker command that has no event loop yet,
    or no longer has one.

    Installed first thing: by default SIGTERM kills the process (status
    -15, no metrics line) and SIGINT raises ``KeyboardInterrupt`` wherever
    the start happens to be. Here a signal is remembered until there is a
    worker, then asks it to stop; :meth:`Worker.request_stop
    <enrichlog.worker.Worker.request_stop>` before its run makes the run
    return at once.
    """

    def __init__(self) -> None:
        self._worker: Worker | None = None
        self._received = False
        taken = (*_SIGNALS, _HANGUP) if _HANGUP is not None else _SIGNALS
        self._previous = {signum: signal.getsignal(signum) for signum in taken}
        self.install()

    def install(self) -> None:
        """Take the signals (again). SIGHUP too: it would end the process
        while the worker starts or stops; the running worker reopens its
        output files on it."""
        for signum in _SIGNALS:
            signal.signal(signum, self._handle)
        if _HANGUP is not None:
            signal.signal(_HANGUP, self._hang_up)

    def _hang_up(self, _signum: int, _frame: FrameType | None) -> None:
        if self._worker is not None:
            self._worker.reopen_outputs()

    def restore(self) -> None:
        """Give the signals back to the handlers they had before; all but a
        default SIGHUP, which is ignored from here on: the worker is gone,
        but the process still ends (the interpreter's exit, which puts the
        default back for every handler set from Python), and a rotation's
        SIGHUP meanwhile would end it with status 129 instead of 0. (The
        command's process exits next; a program that calls this function
        and goes on keeps SIGHUP ignored.)"""
        self._worker = None
        for signum, previous in self._previous.items():
            if signum == _HANGUP and previous is signal.SIG_DFL:
                signal.signal(signum, signal.SIG_IGN)
            elif previous is not None:  # None: not set from Python, left as it is
                signal.signal(signum, previous)

    def stop(self, worker: Worker) -> None:
        """The worker a signal stops from now on; stopped at once when a
        signal came before it existed."""
        self._worker = worker
        if self._received:
            worker.request_stop()

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self._received = True
        if self._worker is not None:
            self._worker.request_stop()


def _error(message: str) -> None:
    """``message`` on stderr, if the worker has one (``print`` to a missing
    stderr would write it to stdout, among the events)."""
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            print(message, file=sys.stderr)


def _check_output(output: str) -> None:
    """Refuse a standard stream the worker was started without (``>&-``)
    as its output, before it takes any event: each event taken would be
    handed back unwritten, a delivery used up towards dead-lettering it.

    Raises:
        EnricherConfigError: naming the stream.
    """
    if output in ("stdout", "stderr") and getattr(sys, output) is None:
        raise EnricherConfigError(
            f"the output is {output}, and the worker was started without it (closed): "
            "nothing could be written; no event was taken from the stream"
        )
