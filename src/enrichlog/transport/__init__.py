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
from typing import TYPE_CHECKING

from .config import TransportConfig

if TYPE_CHECKING:
    from ..settings import LoggingSettings
    from .nats import NatsTransport

__all__ = ["TransportConfig", "default_spool_dir", "transport_for"]


def default_spool_dir(stream: str) -> str:
    """Where a producer spools when ``spool_dir`` is not set:
    ``$XDG_CACHE_HOME/enrichlog/spool/<stream>`` (``~/.cache`` by default)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "enrichlog", "spool", stream)


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
    return NatsTransport(
        config,
        enrich_locally=(config.enrich or settings.enrich) == "local",
        memory_limit=settings.queue_size,
        spool_dir=settings.spool_dir or default_spool_dir(config.stream),
        spool_max_bytes=settings.spool_max_bytes,
        report_interval=settings.drop_report_interval,
    )
