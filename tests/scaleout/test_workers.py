"""Workers against a real NATS server: every event written once, a worker
killed halfway loses nothing, poison events reach the dead-letter stream and
come back with ``dlq replay``."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from enrichlog import configure_logging, get_logger
from enrichlog.cli.dlq import run_dlq
from enrichlog.transport.config import TransportConfig
from enrichlog.transport.deadletter import read_dead_letters

from .conftest import Streams, js_call, lines_of, wait_until, worker_env

pytestmark = pytest.mark.services


def produce(streams: Streams, tmp_path: Path, count: int, **fields: Any) -> None:
    """Log ``count`` events through a producer container."""
    container = configure_logging(
        transport=streams.uri(), spool_dir=str(tmp_path / "spool"), queue_size=100_000
    )
    log = get_logger()
    for index in range(count):
        log.info("checkout", index=index, **fields)
    report = container.shutdown()
    assert count == report["published"], report


def dead_letters(streams: Streams, **query: str) -> list[Any]:
    config = TransportConfig.parse(streams.uri(**query))
    result: list[Any] = js_call(lambda js: read_dead_letters(js, config))
    return result


def test_every_event_is_written_once_by_one_worker(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    produce(streams, tmp_path, 300, user_id=7)
    output = tmp_path / "out.log"
    worker = start_worker(worker_env(streams, output, enrichers="static://?service=checkout"))

    wait_until(lambda: len(lines_of(output)) >= 300, 30, "300 lines")
    assert 0 == worker.stop()

    lines = lines_of(output)
    assert 300 == len(lines)
    assert 300 == len({line["event_id"] for line in lines})
    assert list(range(300)) == sorted(line["index"] for line in lines)
    first = lines[0]
    assert {"event": "checkout", "user_id": 7, "level": "info", "service": "checkout"}.items() <= (
        first.items()
    )
    assert {"timestamp", "event_id"} <= first.keys()
    metrics = worker.final_metrics()
    assert (300, 300, 0, 0) == (
        metrics["consumed"],
        metrics["acknowledged"],
        metrics["nacked"],
        metrics["dead_lettered"],
    )


@pytest.mark.slow
def test_a_worker_killed_halfway_loses_nothing(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    total = 20_000
    produce(streams, tmp_path, total)
    outputs = [tmp_path / "a.log", tmp_path / "b.log"]
    settings = {"ack_wait": "2", "enrichers": "static://?service=checkout"}
    victim = start_worker(worker_env(streams, outputs[0], **settings))
    survivor = start_worker(worker_env(streams, outputs[1], **settings))

    wait_until(lambda: len(lines_of(outputs[0])) >= 2_000, 60, "the first worker to get going")
    victim.kill()  # SIGKILL: no drain, no acknowledgement of what is in flight

    def union() -> set[str]:
        return {line["event_id"] for path in outputs for line in lines_of(path)}

    wait_until(lambda: len(union()) >= total, 90, "every event in the union of the outputs")
    assert 0 == survivor.stop()

    ids = union()
    assert total == len(ids)
    indices = Counter(line["index"] for path in outputs for line in lines_of(path))
    assert set(range(total)) == set(indices)
    # The survivor took over what the victim had in flight (redelivered
    # after the ack wait); a line may appear twice, never be missing.
    assert survivor.final_metrics()["redelivered"] >= 1


def test_poison_events_are_dead_lettered_then_replayed(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    logs = tmp_path / "tenants"
    logs.mkdir()
    (logs / "broken.log").mkdir()  # this tenant's file cannot be opened: every write fails
    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "spool"))
    log = get_logger()
    for index in range(10):
        log.info("order", tenant="acme", index=index)
    for index in range(3):
        log.info("order", tenant="broken", index=index)
    container.shutdown()
    env = worker_env(
        streams,
        logs / "{tenant}.log",
        max_deliver="3",
        redeliver_delay="0.1",
        redeliver_max_delay="0.5",
    )
    worker = start_worker(env)

    wait_until(lambda: len(dead_letters(streams)) >= 3, 30, "3 dead letters")
    letters = dead_letters(streams)
    assert 10 == len(lines_of(logs / "acme.log"))
    assert [3, 3, 3] == [letter.deliveries for letter in letters]
    assert all("IsADirectoryError" in letter.reason for letter in letters)
    assert all(str(logs / "broken.log") in letter.reason for letter in letters)
    assert [0, 1, 2] == sorted(letter.event["index"] for letter in letters)
    assert {"broken"} == {letter.event["tenant"] for letter in letters}

    cli_env = worker_env(streams, "stdout")
    listing = subprocess.run(
        [sys.executable, "-m", "enrichlog", "dlq", "list"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert 0 == listing.returncode, listing.stderr
    assert "3 dead-lettered event(s)" in listing.stdout
    assert all(letter.event_id in listing.stdout for letter in letters)

    (logs / "broken.log").rmdir()  # the fix
    replay = subprocess.run(
        [sys.executable, "-m", "enrichlog", "dlq", "replay", "--all"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert 0 == replay.returncode, replay.stderr
    assert "replayed 3 event(s)" in replay.stdout

    wait_until(lambda: len(lines_of(logs / "broken.log")) >= 3, 30, "the replayed events")
    assert 0 == worker.stop()
    written = lines_of(logs / "broken.log")
    assert {letter.event_id for letter in letters} == {line["event_id"] for line in written}
    assert [] == dead_letters(streams)
    metrics = worker.final_metrics()
    assert 3 == metrics["dead_lettered"]
    assert 6 == metrics["nacked"]  # two retries each before the third delivery


def one_dead_letter(streams: Streams, tmp_path: Path, start_worker: Any, **settings: str) -> Any:
    """Publish one event whose output cannot be written, let a worker (with
    ``settings``) dead-letter it at once, and return the dead letter."""
    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "spool"))
    get_logger().info("order", tenant="broken")
    container.shutdown()
    (tmp_path / "broken.log").mkdir()
    env = worker_env(streams, tmp_path / "{tenant}.log", max_deliver="1", **settings)
    worker = start_worker(env)
    wait_until(lambda: len(dead_letters(streams)) >= 1, 30, "a dead letter")
    worker.stop()
    (letter,) = dead_letters(streams)
    return letter


def test_dlq_show_prints_the_dead_letter(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    letter = one_dead_letter(streams, tmp_path, start_worker)

    shown = subprocess.run(
        [sys.executable, "-m", "enrichlog", "dlq", "show", str(letter.sequence)],
        env=worker_env(streams, "stdout"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert 0 == shown.returncode, shown.stderr
    body = json.loads(shown.stdout)
    assert (letter.event_id, 1, "order") == (
        body["event_id"],
        body["deliveries"],
        body["event"]["event"],
    )
    # "The dead letter in full" (found by an outside tester: it left this out).
    assert body["stream_sequence"] >= 1


def test_worker_keeps_running_on_an_empty_stream(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    output = tmp_path / "out.log"
    worker = start_worker(worker_env(streams, output))
    time.sleep(2.5)  # longer than a fetch waits
    assert worker.process.poll() is None

    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "spool"))
    get_logger().info("late")
    container.shutdown()

    wait_until(lambda: len(lines_of(output)) == 1, 20, "the late event")
    assert 0 == worker.stop()


def test_degraded_enrichment_is_written_and_acknowledged(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    produce(streams, tmp_path, 5)
    output = tmp_path / "out.log"
    worker = start_worker(
        worker_env(streams, output), "--enrichers", "tests.scaleout.worker_enrichers:broken"
    )

    wait_until(lambda: len(lines_of(output)) >= 5, 30, "5 lines")
    assert 0 == worker.stop()

    lines = lines_of(output)
    assert all(line["enrichment_errors"] == {"lookup": "error: RuntimeError"} for line in lines)
    metrics = worker.final_metrics()
    assert (5, 0, 0) == (metrics["acknowledged"], metrics["nacked"], metrics["dead_lettered"])


def test_copies_of_an_event_in_flight_count_as_duplicates_skipped(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Found by an outside tester: a copy that arrived while its event was in
    # flight (a replay, a redelivery) was acknowledged with no line and no
    # counter: 600 acknowledged for 300 lines and 0 duplicates_skipped.
    async def publish(js: Any) -> None:
        await js.add_stream(name=streams.stream, subjects=[streams.subject])
        for copy in ("a", "b"):
            for index in range(20):
                body = json.dumps({"event": "twice", "event_id": f"dup-{index}", "level": "info"})
                await js.publish(
                    streams.subject, body.encode(), headers={"Nats-Msg-Id": f"{copy}-{index}"}
                )

    js_call(publish)
    output = tmp_path / "out.log"
    worker = start_worker(
        worker_env(streams, output), "--enrichers", "tests.scaleout.worker_enrichers:slow"
    )

    wait_until(lambda: len(lines_of(output)) >= 20, 30, "20 lines")
    assert 0 == worker.stop()

    assert 20 == len({line["event_id"] for line in lines_of(output)}) == len(lines_of(output))
    metrics = worker.final_metrics()
    assert (40, 40, 20) == (
        metrics["consumed"],
        metrics["acknowledged"],
        metrics["duplicates_skipped"],
    )


def test_sigterm_finishes_and_acknowledges_what_is_in_flight(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    produce(streams, tmp_path, 300)
    outputs = [tmp_path / "first.log", tmp_path / "second.log"]
    slow = ("--enrichers", "tests.scaleout.worker_enrichers:slow")
    # At most 40 events in flight: the rest stays in the stream for the second.
    first = start_worker(worker_env(streams, outputs[0], max_in_flight="40"), *slow)
    wait_until(lambda: len(lines_of(outputs[0])) >= 20, 30, "the first worker to get going")

    assert 0 == first.stop()  # SIGTERM with events in flight
    stopped = first.final_metrics()
    written_first = len(lines_of(outputs[0]))
    assert 0 == stopped["in_flight"]
    assert written_first == stopped["acknowledged"]
    assert written_first < 300
    # The last line's figures are read after the acknowledgements left (they
    # were up to two seconds old).
    assert (300 - written_first, 0) == (stopped["consumer_lag"], stopped["ack_pending"])

    second = start_worker(worker_env(streams, outputs[1], max_in_flight="40"), *slow)
    wait_until(
        lambda: written_first + len(lines_of(outputs[1])) >= 300, 60, "the rest of the events"
    )
    assert 0 == second.stop()
    ids = [line["event_id"] for path in outputs for line in lines_of(path)]
    assert 300 == len(ids)  # nothing twice: the first worker acknowledged all it wrote
    assert 300 == len(set(ids))
    # What was in flight at SIGTERM was enriched, not cut short.
    assert all(line.get("looked_up") for line in lines_of(outputs[0]))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_worker_serves_its_counters_to_prometheus(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    produce(streams, tmp_path, 50)
    output = tmp_path / "out.log"
    port = _free_port()
    worker = start_worker(worker_env(streams, output, metrics_port=str(port)))
    wait_until(lambda: len(lines_of(output)) >= 50, 30, "50 lines")

    def acknowledged() -> float:
        with contextlib.suppress(OSError):
            return _scrape(port).get(
                ("enrichlog_worker_messages_total", (("result", "acknowledged"),)), 0.0
            )
        return 0.0

    wait_until(lambda: acknowledged() >= 50, 10, "50 acknowledged in the exposition")
    samples = _scrape(port)
    assert 0 == worker.stop()

    assert 50.0 == samples[("enrichlog_worker_messages_total", (("result", "consumed"),))]
    assert 50.0 == samples[("enrichlog_events_total", (("result", "written"),))]
    assert ("enrichlog_worker_in_flight", ()) in samples


def test_a_workers_lines_the_output_refused_are_write_failures_in_its_exposition(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    """Found by an outside tester: the engine counted each line handed to the
    worker's output as written, so the write-failure alert stayed silent."""
    logs = tmp_path / "tenants"
    logs.mkdir()
    (logs / "broken.log").mkdir()  # every write to this tenant's file fails
    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "spool"))
    for index in range(6):
        get_logger().info("order", tenant="acme", index=index)
    for index in range(2):
        get_logger().info("order", tenant="broken", index=index)
    container.shutdown()
    port = _free_port()
    env = worker_env(
        streams,
        logs / "{tenant}.log",
        max_deliver="2",
        redeliver_delay="0.1",
        metrics_port=str(port),
    )
    worker = start_worker(env)
    wait_until(lambda: len(dead_letters(streams)) >= 2, 30, "2 dead letters")

    def events(result: str) -> float:
        with contextlib.suppress(OSError):
            return _scrape(port).get(("enrichlog_events_total", (("result", result),)), -1.0)
        return -1.0

    wait_until(lambda: events("write_failed") >= 4, 10, "4 write failures exposed")
    written = events("written")
    assert 0 == worker.stop()

    # Two events, each refused on both of its deliveries.
    assert (6.0, 6, 4) == (
        written,
        len(lines_of(logs / "acme.log")),
        worker.final_metrics()["write_failed"],
    )


def test_a_producer_reports_its_transport_in_metrics_and_prometheus(
    streams: Streams, tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from enrichlog.integrations.prometheus import register

    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "spool"))
    registry = CollectorRegistry()
    register(container, registry)
    log = get_logger()
    for index in range(20):
        log.info("checkout", index=index)
    container.flush(timeout=10)
    wait_until(lambda: container.metrics().transport["published"] >= 20, 10, "20 published")
    exposition = generate_latest(registry).decode()
    container.shutdown()

    published = [
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "enrichlog_transport_events_total"
        and sample.labels == {"result": "published"}
    ]
    assert [20.0] == published


@pytest.mark.parametrize(
    ("output", "said"),
    [
        ("{tmp}/missing/out.log", "cannot be opened for appending"),
        ("{tmp}/missing/{{service}}.log", "does not exist"),
    ],
)
def test_a_worker_refuses_an_output_it_cannot_write_at_start(
    streams: Streams, tmp_path: Path, output: str, said: str
) -> None:
    # As an application's configure_logging does: a typo in the path used to
    # start a worker that sent every event to the dead-letter stream.
    target = output.format(tmp=tmp_path)
    started = subprocess.run(
        [sys.executable, "-m", "enrichlog", "worker"],
        env=worker_env(streams, target),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert 1 == started.returncode
    assert f"error: output {target!r}" in started.stderr
    assert said in started.stderr
    assert "Traceback" not in started.stderr


def test_a_dead_letter_holds_the_event_as_it_arrived_not_as_enriched(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Replayed, it is enriched afresh: a field enrichment had added would
    # otherwise be kept (a key the event already has wins).
    letter = one_dead_letter(streams, tmp_path, start_worker, enrichers="hostname://")

    assert ("order", "broken", False) == (
        letter.event["event"],
        letter.event["tenant"],
        "hostname" in letter.event,
    )


class _ReaderGone(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_dlq_list_into_a_pipe_whose_reader_stopped_is_quiet(
    streams: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `dlq list | head`: the broken pipe reaches the command line, which
    # exits 141 quietly, as every command does (it printed "error: ...").
    monkeypatch.setenv("ENRICHLOG_TRANSPORT", streams.uri())
    err = io.StringIO()

    with pytest.raises(BrokenPipeError):
        run_dlq("list", out=_ReaderGone(), err=err)

    assert "" == err.getvalue()
