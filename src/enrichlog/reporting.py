"""enrichlog's own reports (``WARNING by enrichlog``), which never raise.

enrichlog reports through the standard library's ``logging`` (the loggers
``enrichlog`` and ``enrichlog.worker``), so an application routes and
silences them as it does any library's. A report must not raise into a log
call, ``flush()`` or ``shutdown()`` whatever the handlers do, though: with no
handler configured, ``logging`` writes to ``sys.stderr`` through its last
resort, and when ``sys.stderr`` is closed (a daemonised process) the
handler's own error path raises ``ValueError``.
"""

from __future__ import annotations

import contextlib
import logging

__all__ = ["reporting_logger"]


def reporting_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, whose records never raise into their
    caller: a report that cannot be written is dropped."""
    logger = logging.getLogger(name)
    if "handle" not in vars(logger):
        handle = logger.handle

        def handle_quietly(record: logging.LogRecord) -> None:
            with contextlib.suppress(Exception):  # a report that cannot be written is dropped
                handle(record)

        logger.handle = handle_quietly  # type: ignore[method-assign]
    return logger
