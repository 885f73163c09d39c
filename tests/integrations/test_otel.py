"""``otel://``: trace and span ids of the current OpenTelemetry span."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from enrichlog.container import configure_logging, get_logger
from enrichlog.enricher import SyncEnricher
from enrichlog.enrichers import OtelEnricher
from enrichlog.exceptions import EnricherConfigError
from enrichlog.settings import LoggingSettings
from enrichlog.uri.factory import EnricherFactory
from tests.helpers import read_lines

# A provider of our own, not the global one: tests must not configure
# OpenTelemetry for the whole process.
TRACER = TracerProvider().get_tracer("enrichlog-tests")


def test_ids_of_the_current_span_as_lowercase_hex() -> None:
    enricher = OtelEnricher()

    with TRACER.start_as_current_span("work") as span:
        event = enricher.enrich(None, "info", {})
        context = span.get_span_context()

    assert {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
    } == event
    assert 32 == len(event["trace_id"])
    assert 16 == len(event["span_id"])
    assert event["trace_id"] == event["trace_id"].lower()


def test_small_ids_keep_their_leading_zeros() -> None:
    context = SpanContext(trace_id=0xAB, span_id=0x1, is_remote=False, trace_flags=TraceFlags(1))

    with trace.use_span(NonRecordingSpan(context)):
        event = OtelEnricher().enrich(None, "info", {})

    assert {"trace_id": "0" * 30 + "ab", "span_id": "0" * 15 + "1"} == event


def test_nothing_outside_a_valid_span() -> None:
    enricher = OtelEnricher()

    outside = enricher.enrich(None, "info", {"event": "x"})
    with trace.use_span(trace.INVALID_SPAN):
        invalid = enricher.enrich(None, "info", {"event": "y"})

    assert {"event": "x"} == outside
    assert {"event": "y"} == invalid


def test_call_site_ids_win() -> None:
    with TRACER.start_as_current_span("work"):
        event = OtelEnricher().enrich(None, "info", {"trace_id": "given"})

    assert "given" == event["trace_id"]
    assert 16 == len(event["span_id"])


def test_end_to_end_from_a_uri_on_the_logging_thread(log_file: Path) -> None:
    container = configure_logging(
        settings=LoggingSettings(enrichers=["otel://"]), output=str(log_file)
    )
    log = get_logger()
    seen: dict[str, str] = {}

    def in_another_thread() -> None:
        with TRACER.start_as_current_span("worker") as span:
            seen["trace_id"] = f"{span.get_span_context().trace_id:032x}"
            log.info("in a span")

    log.info("outside")
    worker = threading.Thread(target=in_another_thread)
    worker.start()
    worker.join()
    container.shutdown()

    outside, inside = read_lines(log_file)
    assert "trace_id" not in outside
    assert seen["trace_id"] == inside["trace_id"]
    assert 16 == len(inside["span_id"])


def test_is_a_sync_enricher_without_parameters() -> None:
    enricher = EnricherFactory.build("otel://?name=tracing&priority=5")

    assert isinstance(enricher, SyncEnricher)
    assert ("tracing", 5, ("trace_id", "span_id")) == (
        enricher.name,
        enricher.priority,
        enricher.provides,
    )
    with pytest.raises(EnricherConfigError, match="async enrichers only"):
        EnricherFactory.build("otel://?timeout=1")


def test_a_missing_api_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)  # as if not installed

    with pytest.raises(EnricherConfigError, match=r"pip install 'enrichlog\[otel\]'"):
        EnricherFactory.build("otel://")
