"""The producer against a real NATS server: the stream is created once,
a conflicting one is a configuration error, and a broker cut off while the
application logs loses nothing (the spool is replayed)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from enrichlog import LoggingSettings, configure_logging, get_logger
from enrichlog.exceptions import EnricherConfigError
from enrichlog.transport import transport_for
from tests.services import tcp_proxy

from .conftest import NATS_HOST, NATS_PORT, Streams, js_call, stream_event_ids, wait_until

pytestmark = pytest.mark.services


def test_the_stream_is_created_once_and_events_carry_their_id(
    streams: Streams, tmp_path: Path
) -> None:
    for _ in range(2):  # the second start finds the stream and keeps it
        container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "s"))
        get_logger().info("hello", odd=object())
        container.shutdown()

    ids = stream_event_ids(streams.stream)
    assert 2 == len(set(ids))

    async def message(js: Any) -> Any:
        return await js.get_msg(streams.stream, seq=1)

    first = js_call(message)
    assert ids[0] == first.headers["Nats-Msg-Id"]
    assert b'"odd":"<object object at' in first.data


def test_an_event_larger_than_the_servers_maximum_payload_is_cut_to_fit_not_lost(
    streams: Streams, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by an outside tester: an event above the server's max_payload
    # (1 MB by default) never reached the stream; counted only as rejected,
    # reported as "the spool is full ... or the server refused them".
    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "s"))
    log = get_logger()
    log.info("before")
    log.info("huge", blob="x" * 2_000_000, small=7)
    log.info("after")
    report = container.shutdown()

    async def messages(js: Any) -> list[dict[str, Any]]:
        return [json.loads((await js.get_msg(streams.stream, seq=n)).data) for n in (1, 2, 3)]

    before, huge, after = js_call(messages)
    assert (3, 1, 0) == (report["published"], report["truncated"], report["rejected"])
    assert ("before", "huge", "after") == (before["event"], huge["event"], after["event"])
    assert {"blob": 2_000_002} == huge["truncated_fields"]
    assert huge["blob"].startswith("xxx")
    assert huge["blob"].endswith("…")
    assert 7 == huge["small"]
    assert "largest values cut" in caplog.text
    assert "spool is full" not in caplog.text


def test_a_conflicting_stream_is_a_configuration_error(streams: Streams, tmp_path: Path) -> None:
    async def make(js: Any) -> None:
        await js.add_stream(name=streams.stream, subjects=[f"{streams.subject}.other"])

    js_call(make)

    with pytest.raises(EnricherConfigError, match="do not capture") as caught:
        configure_logging(
            transport=streams.uri().replace("nats://", "nats://app:s3cret@"),
            spool_dir=str(tmp_path / "s"),
        )
    assert "s3cret" not in str(caught.value)


def test_a_refused_transport_leaves_the_running_container_as_it_was(
    streams: Streams, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by an outside tester: the conflicting stream was found after the
    # running container had been shut down (its enrichers stopped, later
    # events unenriched), with a report that events were being spooled.
    async def make(js: Any) -> None:
        await js.add_stream(name=streams.stream, subjects=[f"{streams.subject}.other"])

    js_call(make)

    def stamp(logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict["stamped"] = True
        return event_dict

    log_file = tmp_path / "app.log"
    running = configure_logging(enrichers=[stamp], output=str(log_file))
    with pytest.raises(EnricherConfigError, match="do not capture"):
        configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "s"))

    assert not running.closed
    get_logger().info("after")
    running.shutdown()
    assert [True] == [json.loads(line)["stamped"] for line in log_file.read_text().splitlines()]
    assert "spooled until it is fixed" not in caplog.text


def test_a_refused_transport_leaves_a_running_transport_of_the_same_spool_as_it_was(
    streams: Streams, tmp_path: Path
) -> None:
    # Found by a review of the fix above: with the spool directory of the
    # running container's transport (by default, one per stream), the check
    # was skipped, and the refusal came after the running one was shut down.
    spool = str(tmp_path / "spool")
    running = configure_logging(transport=streams.uri(), spool_dir=spool)
    other = streams.uri().replace(f"subject={streams.subject}", f"subject={streams.subject}x")
    with pytest.raises(EnricherConfigError, match="do not capture"):
        configure_logging(transport=other, spool_dir=spool)

    assert not running.closed
    get_logger().info("after")
    report = running.shutdown()
    assert 1 == report["published"]


def test_a_conflict_met_after_start_stopped_waiting_is_reported(
    streams: Streams, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by a review: a conflict met by a publisher that no start() waits
    # for (a forked child's, or one slower than start's wait) went unreported.
    async def make(js: Any) -> None:
        await js.add_stream(name=streams.stream, subjects=[f"{streams.subject}.other"])

    js_call(make)
    transport = transport_for(
        LoggingSettings(transport=streams.uri(), spool_dir=str(tmp_path / "s"))
    )
    assert transport is not None
    transport.start(wait=0.0)
    try:
        wait_until(lambda: "spooled until it is fixed" in caplog.text, 30, "the report")
    finally:
        transport.stop(1.0)


@pytest.mark.slow
def test_a_broker_cut_off_while_logging_loses_nothing(streams: Streams, tmp_path: Path) -> None:
    with tcp_proxy(NATS_HOST, NATS_PORT) as proxy:
        container = configure_logging(
            transport=streams.uri(port=proxy.port),
            spool_dir=str(tmp_path / "spool"),
            queue_size=100,  # the memory queue: past it events spill to disk
        )
        transport = container.transport
        assert transport is not None
        log = get_logger()
        for index in range(500):
            log.info("before", index=index)
        wait_until(lambda: transport.metrics().published == 500, 20, "the first 500")

        proxy.stop()
        wait_until(lambda: not transport.metrics().connected, 20, "the cut to be noticed")
        started = time.perf_counter()
        for index in range(2_000):
            log.info("during", index=index)
        assert time.perf_counter() - started < 5.0  # logging never waited on the broker
        cut = transport.metrics()
        assert cut.spooled > 1_000
        assert 0 < cut.spool_bytes
        assert 0 == cut.spool_dropped

        proxy.start()
        wait_until(lambda: transport.metrics().published >= 2_500, 40, "the spool's replay")
        for index in range(100):
            log.info("after", index=index)
        report = container.shutdown()

    assert 0 == report["spool_dropped"]
    assert 0 == report["spooled"]
    events = Counter(stream_event_ids(streams.stream))
    assert 2_600 == len(events)
    assert transport.metrics().replayed >= cut.spooled


def test_what_is_left_at_shutdown_is_spooled_and_published_by_the_next_start(
    streams: Streams, tmp_path: Path
) -> None:
    with tcp_proxy(NATS_HOST, NATS_PORT) as proxy:
        proxy.stop()  # the broker is unreachable from the start
        container = configure_logging(
            transport=streams.uri(port=proxy.port), spool_dir=str(tmp_path / "spool")
        )
        for index in range(50):
            get_logger().info("offline", index=index)
        started = time.perf_counter()
        report = container.shutdown()
        assert time.perf_counter() - started < 5.0  # no wait for a broker that is down
        assert (0, 50) == (report["published"], report["spooled"])

    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "spool"))
    report = container.shutdown()

    assert 50 == report["published"]
    assert 50 == len(set(stream_event_ids(streams.stream)))


def test_what_forked_children_spooled_is_published_by_the_one_process_started_next(
    streams: Streams, tmp_path: Path
) -> None:
    # Found by an outside tester: a pre-forking server's workers each spooled
    # into a slot of their own during an outage; the one process started after
    # them published the first slot only (100 of 400 events).
    import os

    spool = str(tmp_path / "spool")
    with tcp_proxy(NATS_HOST, NATS_PORT) as proxy:
        proxy.stop()
        container = configure_logging(transport=streams.uri(port=proxy.port), spool_dir=spool)
        log = get_logger()
        children = []
        for child in range(3):
            pid = os.fork()
            if pid == 0:
                status = 1
                try:
                    for index in range(20):
                        log.info("child", child=child, index=index)
                    status = 0 if container.shutdown()["spooled"] == 20 else 2
                finally:
                    os._exit(status)
            children.append(pid)
        for index in range(20):
            log.info("parent", index=index)
        statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
        assert 20 == container.shutdown()["spooled"]
    assert [0, 0, 0] == statuses

    container = configure_logging(transport=streams.uri(), spool_dir=spool)
    report = container.shutdown()

    assert 80 == report["published"]
    assert 80 == len(set(stream_event_ids(streams.stream)))


def test_a_spool_shared_by_two_applications_is_published_by_each_on_its_own_subject(
    streams: Streams, other_streams: Streams, tmp_path: Path
) -> None:
    # Found by an outside tester: an application that started with the spool
    # directory another had spooled into published that one's events on its
    # own subject (into its own stream, to its own workers).
    spool = str(tmp_path / "spool")
    with tcp_proxy(NATS_HOST, NATS_PORT) as proxy:
        proxy.stop()  # the broker is unreachable: everything is spooled
        container = configure_logging(transport=streams.uri(port=proxy.port), spool_dir=spool)
        for index in range(10):
            get_logger().info("checkout", index=index)
        assert 10 == container.shutdown()["spooled"]

    other = configure_logging(transport=other_streams.uri(), spool_dir=spool)
    get_logger().info("billing")
    other_report = other.shutdown()
    container = configure_logging(transport=streams.uri(), spool_dir=spool)
    report = container.shutdown()

    assert (1, 10) == (other_report["published"], report["published"])
    assert (1, 10) == (
        len(stream_event_ids(other_streams.stream)),
        len(stream_event_ids(streams.stream)),
    )


def test_a_forked_child_publishes_its_own_events(streams: Streams, tmp_path: Path) -> None:
    import os

    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "spool"))
    log = get_logger()
    log.info("parent", index=-1)
    pid = os.fork()
    if pid == 0:  # the child: its own publisher and spool slot
        status = 1
        try:
            for index in range(10):
                log.info("child", index=index)
            status = 0 if container.shutdown()["published"] == 10 else 2
        finally:
            os._exit(status)
    for index in range(10):
        log.info("parent", index=index)
    _, status = os.waitpid(pid, 0)
    report = container.shutdown()

    assert 0 == os.waitstatus_to_exitcode(status)
    assert 11 == report["published"]
    assert 21 == len(set(stream_event_ids(streams.stream)))
