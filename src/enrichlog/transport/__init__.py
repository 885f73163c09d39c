"""Scale-out: events published to NATS JetStream and enriched by workers.

With ``transport`` set (``ENRICHLOG_TRANSPORT=nats://host:4222?stream=LOGS``)
a container publishes each event instead of writing it, and
``python -m enrichlog worker`` processes enrich and write them. Importing
this package does not import nats-py: building a transport does, and a
missing client is an :class:`~enrichlog.exceptions.EnricherConfigError`
naming the ``nats`` extra.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import EnricherConfigError
from .config import TransportConfig
from .spool import spool_folder

if TYPE_CHECKING:
    from ..settings import LoggingSettings
    from .nats import NatsTransport

__all__ = ["TransportConfig", "default_spool_dir", "spool_dir_problem", "transport_for"]


def default_spool_dir(stream: str) -> str:
    """Where a producer spools when ``spool_dir`` is not set:
    ``$XDG_CACHE_HOME/enrichlog/spool/<stream>`` (``~/.cache`` by default)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "enrichlog", "spool", stream)


def spool_dir_problem(spool_dir: str, subject: str | None = None) -> str | None:
    """Why the spool could never be written in ``spool_dir`` (``None``: it
    can, as far as a probe can tell): it, or the nearest folder above it
    that exists, is no directory (a file, a dangling or looping symbolic
    link), refuses a new file, or is no path at all (too long, a NUL); or
    the folder of ``subject``'s spool in it is not a directory. Probed with a file
    created and removed again; nothing else is left behind (the spool
    creates its folders when it first needs them)."""
    if "\x00" in spool_dir:
        return f"spool_dir {spool_dir!r} holds a NUL character"
    path = existing = Path(spool_dir).expanduser()
    try:
        os.lstat(path)  # a name too long, a loop...: said as the system says it
    except (FileNotFoundError, NotADirectoryError):
        pass  # (a folder above that is a file: named below)
    except OSError as exc:
        return f"spool_dir {spool_dir!r} cannot be written: {exc.strerror or exc}"
    try:
        while not os.path.lexists(existing) and existing != existing.parent:
            existing = existing.parent
        if existing.is_symlink() and not existing.exists():
            return (
                f"spool_dir {spool_dir!r}: {str(existing)!r} is a symbolic link to nothing "
                "(or a loop)"
            )
        if not existing.is_dir():
            return f"spool_dir {spool_dir!r}: {str(existing)!r} is not a directory"
        if subject is not None and existing == path:
            folder = path / spool_folder(subject)
            if os.path.lexists(folder) and not folder.is_dir():
                return f"spool_dir {spool_dir!r}: {str(folder)!r} is not a directory"
        with tempfile.TemporaryFile(dir=existing, prefix=".enrichlog-probe-"):
            pass
    except OSError as exc:
        where = "" if existing == path else f" (in {str(existing)!r}, where it would be created)"
        return f"spool_dir {spool_dir!r} cannot be written{where}: {exc.strerror or exc}"
    return None


def transport_for(settings: LoggingSettings) -> NatsTransport | None:
    """The producer transport ``settings`` configure, or ``None`` without
    ``transport``. Nothing is connected or started.

    Raises:
        EnricherConfigError: the URI is not valid, or nats-py is missing.
    """
    if not settings.transport:
        return None
    from .nats import NatsTransport, import_nats  # noqa: PLC0415 - only when configured

    config = TransportConfig.parse(settings.transport, dlq_subject=settings.dlq_subject)
    import_nats()
    if settings.spool_dir is not None:
        # Else every event past the memory buffer is lost while the broker
        # is away, counted ('spool_dropped') but found out too late. (The
        # default folder is not probed: a home that cannot be written does
        # not stop an application that never needs its spool.)
        problem = spool_dir_problem(settings.spool_dir, config.subject)
        if problem is not None:
            raise EnricherConfigError(problem)
    return NatsTransport(
        config,
        enrich_locally=(config.enrich or settings.enrich) == "local",
        memory_limit=settings.queue_size,
        spool_dir=settings.spool_dir or default_spool_dir(config.stream),
        spool_max_bytes=settings.spool_max_bytes,
        report_interval=settings.drop_report_interval,
    )
