"""The /metrics endpoint the ``metrics_port`` setting starts, scraped over
HTTP from a running container and parsed as Prometheus parses it."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from enrichlog import EnricherConfigError, LoggingContainer, configure_logging, get_logger
from enrichlog.metrics import BUCKETS, FAILURE_REASONS
from enrichlog.settings import LoggingSettings

from .conftest import EVENTS
from .scrape import scrape
from .workload import configure, log_events

ENRICHERS = ("geo", "risk", "tenant", "user")


def test_the_endpoint_serves_the_prometheus_text_format(live: LoggingContainer) -> None:
    assert live.metrics_port is not None

    exposition = scrape(live.metrics_port)

    assert exposition.content_type.startswith("text/plain")
    assert "counter" == exposition.types["enrichlog_enricher_calls"]
    assert "histogram" == exposition.types["enrichlog_enricher_duration_seconds"]
    assert "gauge" == exposition.types["enrichlog_circuit_state"]


def test_events_and_queue_match_the_snapshot(live: LoggingContainer) -> None:
    assert live.metrics_port is not None
    exposition = scrape(live.metrics_port)
    snapshot = live.metrics()

    assert EVENTS == exposition.value("enrichlog_events_total", result="written")
    for result in ("dropped", "write_failed", "filtered"):
        assert 0 == exposition.value("enrichlog_events_total", result=result)
    assert snapshot.handed_off == exposition.value("enrichlog_events_handed_off_total")
    assert 10_000 == exposition.value("enrichlog_queue_size")
    assert snapshot.queue_high_water == exposition.value("enrichlog_queue_high_water")
    assert 0 == exposition.value("enrichlog_queue_depth")
    assert 0 == exposition.value("enrichlog_in_flight")
    assert 1 == exposition.value("enrichlog_containers_running")
    assert {"overflow", "evicted"} == {
        labels["kind"] for labels in exposition.series("enrichlog_events_dropped_total")
    }


def test_every_outcome_of_every_enricher_is_exposed(live: LoggingContainer) -> None:
    assert live.metrics_port is not None

    exposition = scrape(live.metrics_port)

    outcomes = {
        (labels["enricher"], labels["outcome"])
        for labels in exposition.series("enrichlog_enricher_calls_total")
    }
    assert {(e, o) for e in ENRICHERS for o in ("success", *FAILURE_REASONS)} == outcomes


def test_outcomes_say_which_enricher_succeeded_failed_and_timed_out(
    live: LoggingContainer,
) -> None:
    assert live.metrics_port is not None

    exposition = scrape(live.metrics_port)

    def calls(enricher: str, outcome: str) -> float:
        return exposition.value(
            "enrichlog_enricher_calls_total", enricher=enricher, outcome=outcome
        )

    assert EVENTS == calls("tenant", "success")
    assert calls("user", "success") > 0
    # risk outlasts its 20 ms timeout; a timer the loaded loop fires late is
    # the runtime's fault, not risk's: counted as overloaded.
    assert calls("risk", "timeout") > 0
    assert EVENTS == calls("risk", "timeout") + calls("risk", "overloaded")
    assert calls("geo", "error") >= 3
    assert calls("geo", "circuit_open") > 0
    assert EVENTS == calls("geo", "error") + calls("geo", "circuit_open")
    assert 0 == calls("tenant", "error") + calls("risk", "success")
    for enricher, metrics in live.metrics().enrichers.items():
        assert metrics.successes == calls(enricher, "success")
        for reason, count in metrics.failures_by_reason.items():
            assert count == calls(enricher, reason)


def test_duration_histograms_have_cumulative_buckets_sum_and_count(
    live: LoggingContainer,
) -> None:
    assert live.metrics_port is not None
    exposition = scrape(live.metrics_port)
    snapshot = live.metrics()

    for enricher in ENRICHERS:
        latency = snapshot.enrichers[enricher].latency
        buckets = [
            (labels["le"], sample.value)
            for sample in exposition.samples
            if sample.name == "enrichlog_enricher_duration_seconds_bucket"
            and (labels := sample.labels)["enricher"] == enricher
        ]
        assert [*(float(b) for b in BUCKETS), float("inf")] == [float(le) for le, _ in buckets]
        counts = [count for _, count in buckets]
        assert counts == sorted(counts)  # cumulative
        assert latency.count == counts[-1] > 0
        assert latency.count == exposition.value(
            "enrichlog_enricher_duration_seconds_count", enricher=enricher
        )
        assert latency.sum == pytest.approx(
            exposition.value("enrichlog_enricher_duration_seconds_sum", enricher=enricher)
        )
    # risk times out at 20 ms: no call of its is in a bucket below 10 ms.
    assert 0 == exposition.value(
        "enrichlog_enricher_duration_seconds_bucket", enricher="risk", le="0.01"
    )


def test_per_event_histograms(live: LoggingContainer) -> None:
    assert live.metrics_port is not None
    exposition = scrape(live.metrics_port)
    snapshot = live.metrics()

    assert snapshot.enrichment_latency.count == exposition.value(
        "enrichlog_event_enrichment_seconds_count"
    )
    assert snapshot.enricher_time.count == exposition.value(
        "enrichlog_event_enricher_seconds_bucket", le="+Inf"
    )
    assert exposition.value("enrichlog_event_enricher_seconds_sum") > 0


def test_cache_breaker_timeout_and_the_other_counters(live: LoggingContainer) -> None:
    assert live.metrics_port is not None

    exposition = scrape(live.metrics_port)

    user = live.metrics().enrichers["user"]
    assert user.cache_hits == exposition.value(
        "enrichlog_cache_requests_total", enricher="user", result="hit"
    )
    assert user.cache_hits > 0
    assert user.cache_misses == exposition.value(
        "enrichlog_cache_requests_total", enricher="user", result="miss"
    )
    assert {"user"} == {
        labels["enricher"] for labels in exposition.series("enrichlog_cache_entries")
    }
    assert {"user"} == {
        labels["enricher"] for labels in exposition.series("enrichlog_cache_requests_total")
    }
    assert 2 == exposition.value("enrichlog_circuit_state", enricher="geo")
    for enricher in ("risk", "tenant", "user"):
        assert 0 == exposition.value("enrichlog_circuit_state", enricher=enricher)
    assert exposition.value("enrichlog_circuit_state_seconds", enricher="geo") >= 0
    timeouts = {"geo": 0.25, "risk": 0.02, "tenant": 0.25, "user": 0.5}
    for enricher, timeout in timeouts.items():
        assert timeout == exposition.value("enrichlog_enricher_timeout_seconds", enricher=enricher)
    for name in (
        "enrichlog_enricher_retries_total",
        "enrichlog_enricher_abandoned_total",
        "enrichlog_batch_calls_total",
        "enrichlog_batch_keys_total",
    ):
        assert {(e,) for e in ENRICHERS} == {(s["enricher"],) for s in exposition.series(name)}
    assert 0 == exposition.value("enrichlog_render_fallbacks_total")


def test_a_per_enricher_timeout_override_is_the_exposed_timeout(tmp_path: Path) -> None:
    container = configure(
        str(tmp_path / "out.log"), metrics_port=0, enricher_options={"user": {"timeout": 0.3}}
    )
    assert container.metrics_port is not None

    exposition = scrape(container.metrics_port)

    assert 0.3 == exposition.value("enrichlog_enricher_timeout_seconds", enricher="user")


def test_shutdown_releases_the_port(tmp_path: Path) -> None:
    container = configure(str(tmp_path / "out.log"), metrics_port=0)
    port = container.metrics_port
    assert port is not None

    container.shutdown()

    assert container.metrics_port is None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # free again
    with pytest.raises(urllib.error.URLError, match="refused"):
        scrape(port)


def test_a_fixed_port_is_served_again_after_a_reconfiguration(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = configure(str(tmp_path / "a.log"), metrics_port=port)
    log_events(3)
    assert first.flush(10)

    second = configure(str(tmp_path / "b.log"), metrics_port=port)

    assert (port, None) == (second.metrics_port, first.metrics_port)
    assert 3 == scrape(port).value("enrichlog_events_total", result="written")


def test_counters_never_go_back_across_reconfigurations(tmp_path: Path) -> None:
    first = configure(str(tmp_path / "a.log"), metrics_port=0)
    log_events(6)
    assert first.flush(10)
    assert first.metrics_port is not None
    before = scrape(first.metrics_port)

    second = configure(str(tmp_path / "b.log"), metrics_port=0)
    assert second.metrics_port is not None
    between = scrape(second.metrics_port)
    log_events(4)
    assert second.flush(10)
    after = scrape(second.metrics_port)

    for exposition in (before, between):
        assert 6 == exposition.value("enrichlog_events_total", result="written")
    assert 10 == after.value("enrichlog_events_total", result="written")
    assert 10 == after.value("enrichlog_enricher_calls_total", enricher="tenant", outcome="success")
    assert 10 == after.value("enrichlog_enricher_duration_seconds_count", enricher="risk")
    assert 10 == after.value("enrichlog_event_enrichment_seconds_count")
    assert 1 == after.value("enrichlog_containers_running")
    # Gauges describe the running container: the new circuit of geo is open
    # again, only because the new container's geo failed three times too.
    assert 2 == after.value("enrichlog_circuit_state", enricher="geo")


def test_the_port_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENRICHLOG_METRICS_PORT", "0")
    monkeypatch.setenv("ENRICHLOG_OUTPUT", str(tmp_path / "out.log"))

    container = configure_logging()

    assert container.metrics_port is not None
    get_logger().info("hello")
    exposition = scrape(container.metrics_port)
    assert 1 == exposition.value("enrichlog_events_total", result="written")


@pytest.mark.parametrize("value", ["", "none", "NULL"])
def test_an_empty_or_none_port_from_the_environment_is_off(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ENRICHLOG_METRICS_PORT", value)

    assert LoggingSettings().metrics_port is None


@pytest.mark.parametrize("port", [-1, 65536])
def test_a_port_out_of_range_is_a_configuration_error(port: int) -> None:
    with pytest.raises(EnricherConfigError, match="metrics_port"):
        configure_logging(metrics_port=port)


def test_no_endpoint_without_metrics_port(tmp_path: Path) -> None:
    container = configure(str(tmp_path / "out.log"))

    assert container.metrics_port is None


def test_the_missing_extra_is_named_at_configure_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = configure(str(tmp_path / "out.log"))
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed

    with pytest.raises(EnricherConfigError, match=r"metrics_port.*enrichlog\[prometheus\]"):
        configure_logging(metrics_port=9464, output=str(tmp_path / "other.log"))

    assert running.running  # the previous configuration was left as it was


def test_the_missing_extra_is_named_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setenv("ENRICHLOG_METRICS_PORT", "9464")

    with pytest.raises(EnricherConfigError, match=r"enrichlog\[prometheus\]"):
        configure_logging()


def test_a_port_in_use_is_reported_and_logging_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="enrichlog"):
            container = configure(str(tmp_path / "out.log"), metrics_port=port)
        log_events(2)

        assert container.flush(10)
    assert container.metrics_port is None
    assert f"cannot serve metrics on 127.0.0.1:{port}" in caplog.text
    assert 2 == container.metrics().written


def test_metrics_host_is_where_the_endpoint_listens(tmp_path: Path) -> None:
    container = configure(str(tmp_path / "out.log"), metrics_port=0, metrics_host="localhost")

    assert container.metrics_port is not None
    exposition = scrape(container.metrics_port, host="localhost")
    assert 1 == exposition.value("enrichlog_containers_running")


def test_other_paths_are_not_found(live: LoggingContainer) -> None:
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{live.metrics_port}/other", timeout=10)


def test_openmetrics_when_the_scraper_asks_for_it(live: LoggingContainer) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{live.metrics_port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read().decode()

    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    assert 'enrichlog_events_total{result="written"} 40.0' in body


FORK_SCRIPT = """
import os, sys, time, urllib.request
from enrichlog import configure_logging
container = configure_logging(output=os.devnull, metrics_port=0)
port = container.metrics_port
pid = os.fork()
if pid == 0:
    code = 0 if container.metrics_port is None else 3
    container.shutdown(timeout=5)
    os._exit(code)
deadline = time.monotonic() + 20
while not (done := os.waitpid(pid, os.WNOHANG))[0]:
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        sys.exit("the child hung at shutdown")
    time.sleep(0.05)
print("child", os.waitstatus_to_exitcode(done[1]))
with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
    print("parent serves", b"enrichlog_containers_running 1.0" in answer.read())
container.shutdown()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_leaves_the_endpoint_to_its_parent(tmp_path: Path) -> None:
    # The child has no server thread: its shutdown must not wait for one.
    assert "child 0\nparent serves True\n" == _run_python(FORK_SCRIPT, tmp_path)


def _run_python(script: str, cwd: Path) -> str:
    """What ``script`` prints, run by a Python of its own (which must end well)."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    return result.stdout


FORK_TOTALS_SCRIPT = """
import os
from prometheus_client import CollectorRegistry, generate_latest
from enrichlog import configure_logging, get_logger
from enrichlog.integrations.prometheus import register

def written(registry):
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith('enrichlog_events_total{result="written"}'):
            return int(float(line.split()[-1]))

registry = CollectorRegistry()
register(registry=registry)
log = get_logger()
configure_logging(output=os.devnull, delivery="background")
for _ in range(50):
    log.info("first")
container = configure_logging(output=os.devnull, delivery="background")
for _ in range(100):
    log.info("second")
container.flush(10)
print("parent", written(registry))
read, write = os.pipe()
if os.fork() == 0:
    for _ in range(10):
        log.info("child")
    container.flush(10)
    os.write(write, f"child {written(registry)} {container.metrics()['written']}".encode())
    os._exit(0)
os.wait()
print(os.read(read, 100).decode())
container.shutdown()
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_s_totals_count_its_own_events_only(tmp_path: Path) -> None:
    # Found by an outside tester: the child's totals held the 50 lines of the
    # parent's replaced container besides its own 10 (its running container
    # already counted its own only).
    assert "parent 150\nchild 10 10\n" == _run_python(FORK_TOTALS_SCRIPT, tmp_path)
