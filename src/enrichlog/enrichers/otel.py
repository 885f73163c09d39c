"""``otel://``: the current OpenTelemetry trace and span ids on each event.

A :class:`~enrichlog.enricher.SyncEnricher`: it reads the span of the
calling context, so it runs inline on the thread that logs, where that span
is current. Needs ``opentelemetry-api`` (the ``otel`` extra). See
``docs/integrations/otel.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from structlog.typing import EventDict, WrappedLogger

from ..enricher import SyncEnricher
from ._lookup import require_module

__all__ = ["OtelEnricher"]


class OtelEnricher(SyncEnricher):
    """Adds ``trace_id`` (32 lowercase hex digits) and ``span_id`` (16) of
    the current OpenTelemetry span: ``otel://``.

    Outside a valid span (none started, or a non-recording placeholder
    without ids) nothing is added. Keys the event already has are kept.
    """

    scheme = "otel"
    name = "otel"
    provides = ("trace_id", "span_id")

    def __init__(
        self,
        *,
        name: str | None = None,
        dependencies: str | Iterable[str] | None = None,
        priority: int | None = None,
    ) -> None:
        super().__init__(name=name, dependencies=dependencies, priority=priority)
        self._trace: Any = require_module("opentelemetry.trace", "otel", self.name)

    def enrich(self, _logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
        """Add the ids of the current span, if there is a valid one."""
        context = self._trace.get_current_span().get_span_context()
        if context.is_valid:
            event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
            event_dict.setdefault("span_id", format(context.span_id, "016x"))
        return event_dict
