"""The collector, register() and the ASGI app, without the HTTP endpoint."""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from enrichlog import EnricherConfigError, LoggingContainer
from enrichlog.integrations.prometheus import EnrichlogCollector, metrics_app, register

from .conftest import EVENTS
from .scrape import Exposition
from .workload import configure, log_events


def expose(registry: CollectorRegistry) -> Exposition:
    return Exposition(generate_latest(registry).decode())


def test_register_is_idempotent(live: LoggingContainer) -> None:
    registry = CollectorRegistry()

    first = register(registry=registry)
    again = register(registry=registry)

    assert first is again
    assert EVENTS == expose(registry).value("enrichlog_events_total", result="written")


def test_register_goes_to_the_default_registry() -> None:
    collector = register()

    assert collector is register()
    assert "enrichlog_events_total" in generate_latest(REGISTRY).decode()


def test_registering_another_container_replaces_the_collector(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    process_wide = register(registry=registry)
    container = configure(str(tmp_path / "out.log"))

    own = register(container, registry)

    assert own is not process_wide
    assert own is register(container, registry)
    assert container is own.container
    expose(registry)  # one enrichlog collector: no duplicate series


def test_a_collector_of_one_container_keeps_its_counts_after_shutdown(tmp_path: Path) -> None:
    container = configure(str(tmp_path / "out.log"))
    registry = CollectorRegistry()
    register(container, registry)
    log_events(5)
    assert container.flush(10)

    container.shutdown()
    other = configure(str(tmp_path / "other.log"))
    log_events(7)
    assert other.flush(10)
    exposition = expose(registry)

    assert 5 == exposition.value("enrichlog_events_total", result="written")
    assert 5 == exposition.value("enrichlog_event_enrichment_seconds_count")
    assert 0 == exposition.value("enrichlog_containers_running")
    assert 0 == exposition.value("enrichlog_queue_size")  # gauges: nothing runs
    assert [] == exposition.series("enrichlog_circuit_state")


def test_the_process_wide_collector_follows_every_container(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    register(registry=registry)
    first = configure(str(tmp_path / "a.log"))
    log_events(3)
    assert first.flush(10)

    second = configure(str(tmp_path / "b.log"))
    log_events(2)
    assert second.flush(10)
    exposition = expose(registry)

    assert 5 == exposition.value("enrichlog_events_total", result="written")
    assert 5 == exposition.value(
        "enrichlog_enricher_calls_total", enricher="tenant", outcome="success"
    )
    assert 1 == exposition.value("enrichlog_containers_running")
    assert 10_000 == exposition.value("enrichlog_queue_size")


def test_collect_does_nothing_per_event(tmp_path: Path) -> None:
    # No state of the collector changes while events are logged: it reads
    # container.metrics() when asked.
    collector = EnrichlogCollector()
    container = configure(str(tmp_path / "out.log"))
    log_events(4)
    assert container.flush(10)

    families = {family.name: family for family in collector.collect()}

    assert 4 == next(
        s.value for s in families["enrichlog_events"].samples if s.labels == {"result": "written"}
    )


def test_describe_names_every_family_without_reading_a_container() -> None:
    names = {family.name for family in EnrichlogCollector().describe()}

    assert {
        "enrichlog_events",
        "enrichlog_enricher_calls",
        "enrichlog_enricher_duration_seconds",
        "enrichlog_circuit_state",
        "enrichlog_queue_depth",
        "enrichlog_event_enrichment_seconds",
    } <= names


def test_the_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)

    with pytest.raises(EnricherConfigError, match=r"pip install 'enrichlog\[prometheus\]'"):
        register()
    with pytest.raises(EnricherConfigError, match=r"enrichlog\[prometheus\]"):
        metrics_app()


# -- the ASGI app ---------------------------------------------------------------------


async def call(
    app: Any, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Call ``app`` with a synthetic HTTP scope; status, headers, body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/metrics",
        "raw_path": b"/metrics",
        "query_string": b"",
        "root_path": "",
        "headers": headers or [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, *bodies = sent
    assert "http.response.start" == start["type"]
    return start["status"], dict(start["headers"]), b"".join(m["body"] for m in bodies)


async def test_the_asgi_app_serves_the_exposition(live: LoggingContainer) -> None:
    app = metrics_app()

    status, headers, body = await call(app)

    assert 200 == status
    assert headers[b"content-type"].startswith(b"text/plain")
    assert str(len(body)).encode() == headers[b"content-length"]
    exposition = Exposition(body.decode())
    assert EVENTS == exposition.value("enrichlog_events_total", result="written")
    assert 2 == exposition.value("enrichlog_circuit_state", enricher="geo")
    # A registry of its own: only enrichlog's metrics.
    assert all(name.startswith("enrichlog_") for name in exposition.families)


async def test_the_asgi_app_of_one_container(live: LoggingContainer) -> None:
    status, _, body = await call(metrics_app(live))

    assert 200 == status
    assert EVENTS == Exposition(body.decode()).value("enrichlog_events_total", result="written")


async def test_the_asgi_app_serves_a_registry_given(live: LoggingContainer) -> None:
    registry = CollectorRegistry()

    _, _, body = await call(metrics_app(registry=registry))

    assert b"enrichlog_events_total" in body
    assert register(registry=registry) is register(registry=registry)


async def test_the_asgi_app_answers_head_without_a_body(live: LoggingContainer) -> None:
    status, headers, body = await call(metrics_app(), method="HEAD")

    assert (200, b"") == (status, body)
    assert int(headers[b"content-length"]) > 0


async def test_the_asgi_app_refuses_other_methods() -> None:
    status, headers, _ = await call(metrics_app(), method="POST")

    assert 405 == status
    assert b"GET, HEAD" == headers[b"allow"]


async def test_the_asgi_app_speaks_openmetrics_when_asked(live: LoggingContainer) -> None:
    status, headers, body = await call(
        metrics_app(), headers=[(b"accept", b"application/openmetrics-text; version=1.0.0")]
    )

    assert 200 == status
    assert headers[b"content-type"].startswith(b"application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_the_asgi_app_answers_lifespan_events() -> None:
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await metrics_app()({"type": "lifespan"}, receive, send)

    assert ["lifespan.startup.complete", "lifespan.shutdown.complete"] == [m["type"] for m in sent]


async def test_the_asgi_app_refuses_a_websocket() -> None:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await metrics_app()({"type": "websocket", "path": "/metrics"}, receive, send)

    assert "websocket.close" == sent[0]["type"]
