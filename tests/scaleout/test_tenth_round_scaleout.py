"""Tenth round of outside testing, scale-out: an event above the stream's
maximum message size, applications' own ``event_id`` fields, dead letters
near the maximum payload, workers of two subjects, replays to the recorded
subject and malformed dead letters, SIGHUP, a stream recreated under a
running worker, and a broken output pipe."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from enrichlog import configure_logging, get_logger

from .conftest import (
    Streams,
    js_call,
    lines_of,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.services


def _messages(stream: str) -> list[Any]:
    async def read(js: Any) -> list[Any]:
        from nats.js.errors import NotFoundError

        info = await js.stream_info(stream)
        found = []
        for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
            try:
                found.append(await js.get_msg(stream, seq=seq))
            except NotFoundError:
                continue
        return found

    result: list[Any] = js_call(read)
    return result


def test_an_event_above_the_streams_max_msg_size_is_rejected_and_publishing_goes_on(
    streams: Streams, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by an outside tester: the server's refusal (10054) never reached
    # the publisher, which took it for a broker that does not answer
    # ("unreachable (TimeoutError)"); the event stayed at the spool's head
    # for good and nothing after it was published.
    async def make(js: Any) -> None:
        await js.add_stream(name=streams.stream, subjects=[streams.subject], max_msg_size=2000)

    js_call(make)
    caplog.set_level(logging.WARNING, "enrichlog")
    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "s"))
    log = get_logger()
    log.info("before")
    log.info("big", x="a" * 3000)
    log.info("after")
    started = time.monotonic()
    report = container.shutdown()
    assert time.monotonic() - started < 4.0
    assert (2, 1, 0) == (report["published"], report["rejected"], report["spooled"])
    assert ["before", "after"] == [json.loads(m.data)["event"] for m in _messages(streams.stream)]
    assert "maximum message size" in caplog.text
    assert "unreachable" not in caplog.text

    # The next process sharing the spool has nothing left to trip on.
    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "s"))
    get_logger().info("later")
    report = container.shutdown()
    assert (1, 0) == (report["published"], report["rejected"])
    assert 3 == len(_messages(streams.stream))


def test_an_applications_own_event_id_field_is_kept_and_never_dedups_events(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Found by an outside tester: the producer took an application's
    # event_id field as the message id, so a second event logged with
    # event_id="order-123" was dropped by the duplicate window, and an int
    # event_id was replaced by a random hex id.
    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "s"))
    log = get_logger()
    log.info("order created", seq=0, event_id="order-123")
    log.info("order shipped", seq=1, event_id="order-123")
    log.info("int id", seq=2, event_id=7)
    log.info("int id again", seq=3, event_id=7)
    log.info("no id", seq=4)
    report = container.shutdown()
    assert (5, 0) == (report["published"], report["rejected"])
    messages = _messages(streams.stream)
    assert 5 == len(messages)
    assert 5 == len({m.headers["Nats-Msg-Id"] for m in messages})

    output = tmp_path / "out.jsonl"
    worker = start_worker(worker_env(streams, output))
    wait_until(lambda: len(lines_of(output)) >= 5, 30, "5 lines")
    assert 0 == worker.stop()
    lines = sorted(lines_of(output), key=lambda line: line["seq"])
    assert ["order-123", "order-123", 7, 7] == [line["event_id"] for line in lines[:4]]
    # The transport's id, for readers that deduplicate: beside the field.
    ids = [line.get("enrichlog_id", line["event_id"]) for line in lines]
    assert 5 == len(set(ids))
    assert lines[4]["event_id"] == messages[4].headers["Nats-Msg-Id"]
    assert "enrichlog_id" not in lines[4]


def test_events_near_the_maximum_payload_are_dead_lettered_once_cut_to_fit(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Found by an outside tester: a dead letter adds ~600 bytes to the event;
    # near max_payload it could not be published (MaxPayloadError), so the
    # event was nacked and retried for good, dead_lettered staying 0.
    (tmp_path / "broken.log").mkdir()  # every write of tenant "broken" fails

    async def publish(js: Any) -> int:
        from enrichlog.transport.nats import ensure_stream

        await ensure_stream(js, streams.stream, streams.subject)
        room: int = js._nc.max_payload - 100
        await js.publish(streams.subject, b"x" * room)
        event = {"event": "big", "tenant": "broken", "blob": "y" * (room - 100)}
        await js.publish(streams.subject, json.dumps(event).encode()[:room])
        return room

    room = js_call(publish)
    env = worker_env(streams, tmp_path / "{tenant}.log", max_deliver="1")
    worker = start_worker(env)
    wait_until(
        lambda: (
            len(_messages(streams.dlq_stream)) >= 2 if _has_stream(streams.dlq_stream) else False
        ),
        30,
        "2 dead letters",
    )
    time.sleep(1.5)
    assert 0 == worker.stop()
    metrics = worker.final_metrics()
    assert (2, 0) == (metrics["dead_lettered"], metrics["nacked"])
    raw, big = [json.loads(m.data) for m in _messages(streams.dlq_stream)]
    assert raw["truncated"] is True
    assert raw["original_size"] == room
    assert raw["payload"].startswith("xxxx")
    assert big["truncated"] is True
    assert "big" == big["event"]["event"]
    assert big["event"]["blob"].startswith("yyy")
    assert "blob" in big["event"]["truncated_fields"]
    assert "retrying later" not in worker.log.read_text()


def _has_stream(name: str) -> bool:
    async def find(js: Any) -> bool:
        from nats.js.errors import NotFoundError

        try:
            await js.stream_info(name)
        except NotFoundError:
            return False
        return True

    result: bool = js_call(find)
    return result


def two_subjects(streams: Streams) -> str:
    """Make the test's stream with a second subject beside its own; that
    subject."""
    other = f"{streams.subject}.b"

    async def make(js: Any) -> None:
        await js.add_stream(name=streams.stream, subjects=[streams.subject, other])

    js_call(make)
    return other


def test_a_worker_refuses_a_shared_consumer_filtered_on_another_subject(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Found by an outside tester: workers of two subjects of one stream
    # shared the default consumer, filtered on the first one's subject; the
    # second worker consumed nothing, silently.
    other = two_subjects(streams)
    first = start_worker(worker_env(streams, tmp_path / "a.jsonl"))
    wait_until(lambda: "started" in first.log.read_text(), 30, "the first worker")
    env = worker_env(streams, tmp_path / "b.jsonl")
    env["ENRICHLOG_TRANSPORT"] = streams.uri().replace(streams.subject, other)
    second = start_worker(env)
    assert 1 == second.process.wait(30)
    text = second.log.read_text()
    assert "error: consumer 'enrichlog'" in text
    assert repr(streams.subject) in text
    assert repr(other) in text
    assert "?consumer=" in text
    assert 0 == first.stop()

    # With a consumer of its own, it works.
    env["ENRICHLOG_TRANSPORT"] = streams.uri(consumer="second").replace(streams.subject, other)
    third = start_worker(env)
    wait_until(lambda: "started" in third.log.read_text(), 30, "the third worker")
    assert 0 == third.stop()


def _dlq(streams: Streams, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enrichlog", "dlq", *args],
        env=worker_env(streams, "stdout"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_dlq_reads_each_dead_letter_on_its_own_and_replays_to_the_recorded_subject(
    streams: Streams,
) -> None:
    # Found by outside testers: replay published every event on the
    # configured subject, not the one it came from; one dead letter with a
    # wrongly typed field made list, show and replay --all fail for all of
    # them; malformed ones were "replayed" as junk; a reason's escape
    # sequences reached the terminal raw.
    other = f"{streams.subject}.b"
    dlq_subject = f"enrichlog.dlq.{streams.stream}"

    def letter(**fields: Any) -> bytes:
        body = {
            "reason": "r",
            "deliveries": 3,
            "event_id": "id",
            "subject": streams.subject,
            "stream_sequence": 1,
            "failed_at": "2026-05-04T10:12:03+00:00",
            "worker": "h:1",
            "event": {"event": "e"},
        }
        body.update(fields)
        return json.dumps(body).encode()

    bodies = [
        letter(event_id="a", subject=other, event={"event": "from b"}),
        letter(event_id="b", subject="elsewhere.x", event={"event": "from elsewhere"}),
        letter(event_id="c", deliveries="many"),
        b"{}",
        letter(event_id="e", event="just a string"),
        letter(event_id="f", event=None),
        b'{"event": {"x": NaN}, "deliveries": 1, "event_id": "g"}',
        letter(event_id="h\r", reason="\x1b[31mred\x1b[0m", event={"event": "escaped"}),
    ]

    async def fill(js: Any) -> None:
        from enrichlog.transport.nats import ensure_stream

        await js.add_stream(name=streams.stream, subjects=[streams.subject, other])
        await ensure_stream(js, streams.dlq_stream, dlq_subject)
        for body in bodies:
            await js.publish(dlq_subject, body)

    js_call(fill)

    listing = _dlq(streams, "list")
    assert 0 == listing.returncode, listing.stderr
    assert "8 dead-lettered event(s)" in listing.stdout
    assert 5 == listing.stdout.count("malformed dead letter")
    assert "'deliveries' is not a count" in listing.stdout
    assert "\x1b" not in listing.stdout
    assert "\r" not in listing.stdout
    assert "\\x1b[31mred" in listing.stdout
    shown = _dlq(streams, "show", "3")
    assert 0 == shown.returncode, shown.stderr
    assert "is not a count" in json.loads(shown.stdout)["malformed"]

    replay = _dlq(streams, "replay", "--all")
    assert 1 == replay.returncode, replay.stdout + replay.stderr
    assert f"replayed 3 event(s) to {other} (1), {streams.subject} (2)" in replay.stdout
    assert "5 malformed dead letter(s) not replayed (kept)" in replay.stderr
    for sequence in (3, 4, 5, 6, 7):
        assert f"dead letter {sequence}:" in replay.stderr
    published = {json.loads(m.data)["event"]: m.subject for m in _messages(streams.stream)}
    assert {
        "from b": other,
        "from elsewhere": streams.subject,
        "escaped": streams.subject,
    } == published
    assert 5 == len(_messages(streams.dlq_stream))


def _produce(streams: Streams, tmp_path: Path, count: int, **fields: Any) -> None:
    container = configure_logging(
        transport=streams.uri(), spool_dir=str(tmp_path / "spool"), queue_size=100_000
    )
    log = get_logger()
    for index in range(count):
        log.info("order", index=index, **fields)
    assert count == container.shutdown()["published"]


def test_sighup_reopens_the_workers_output_instead_of_killing_it(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Found by an outside tester: SIGHUP (logrotate's postrotate) killed a
    # worker, status 129, though a file output reopens its path on SIGHUP.
    output = tmp_path / "out.jsonl"
    _produce(streams, tmp_path, 10)
    worker = start_worker(worker_env(streams, output))
    wait_until(lambda: len(lines_of(output)) >= 10, 30, "10 lines")
    output.rename(tmp_path / "out.jsonl.1")
    worker.process.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert worker.process.poll() is None, worker.log.read_text()
    _produce(streams, tmp_path, 5, after=True)
    wait_until(lambda: len(lines_of(output)) >= 5, 30, "5 lines in the new file")
    assert 0 == worker.stop()
    assert 10 == len(lines_of(tmp_path / "out.jsonl.1"))
    assert 5 == len([line for line in lines_of(output) if line.get("after")])


def test_a_worker_recreates_its_consumer_when_the_stream_is_recreated(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Found by an outside tester: the stream deleted and made again (by a
    # producer that started meanwhile), a running worker consumed nothing
    # more, silently, its figures frozen.
    output = tmp_path / "out.jsonl"
    _produce(streams, tmp_path, 3)
    worker = start_worker(worker_env(streams, output))
    wait_until(lambda: len(lines_of(output)) >= 3, 30, "3 lines")

    async def delete(js: Any) -> None:
        await js.delete_stream(streams.stream)

    js_call(delete)
    time.sleep(1.0)
    _produce(streams, tmp_path, 4, after=True)  # makes the stream again
    wait_until(
        lambda: len([line for line in lines_of(output) if line.get("after")]) >= 4,
        30,
        "the events published after the stream was made again",
    )
    assert 0 == worker.stop()
    assert "consumer" in worker.log.read_text()


def test_a_broken_output_pipe_stops_the_worker_without_dead_letters(
    streams: Streams, tmp_path: Path
) -> None:
    # Found by an outside tester: a worker writing to stdout behind
    # `| head -1` dead-lettered the whole stream and kept fetching.
    _produce(streams, tmp_path, 300)
    env = worker_env(
        streams, "stdout", redeliver_delay="0.1", redeliver_max_delay="0.2", max_deliver="2"
    )
    command = f"{sys.executable} -m enrichlog worker --stats-interval 0 2>worker.err | head -1"
    started = time.monotonic()
    shell = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}; echo status=${{PIPESTATUS[0]}} >&2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 30
    assert 1 == len(shell.stdout.splitlines())
    assert "status=1" in shell.stderr
    err = (tmp_path / "worker.err").read_text()
    assert "BrokenPipeError" in err
    assert "Traceback" not in err
    metrics = [json.loads(line) for line in err.splitlines() if line.startswith('{"enrichlog')]
    final = metrics[-1]["enrichlog_worker"]
    assert 0 == final["dead_lettered"]
    assert final["nacked"] > 0
    assert not _has_stream(streams.dlq_stream) or [] == _messages(streams.dlq_stream)

    # What it held is back in the stream: another worker writes it all
    # (the lines the pipe took before its reader left are acknowledged).
    rest_count = 300 - final["acknowledged"]
    assert rest_count > 0
    output = tmp_path / "out.jsonl"
    rest = subprocess.Popen(
        [sys.executable, "-m", "enrichlog", "worker", "--stats-interval", "0"],
        env=worker_env(streams, output),
        stderr=subprocess.DEVNULL,
    )
    try:
        # Within seconds: handed back, not left for the ack wait (30 s).
        wait_until(lambda: len(lines_of(output)) >= rest_count, 10, "the rest of the events")
    finally:
        rest.send_signal(signal.SIGTERM)
        rest.wait(20)


def test_sighup_while_the_worker_starts_does_not_end_it(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # SIGHUP was handled once the worker ran: one while it imported its
    # modules (a rotation at the wrong moment) still ended it, status 129.
    marker = tmp_path / "importing"
    (tmp_path / "slow_import.py").write_text(
        f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(1.0)\n"
    )
    output = tmp_path / "out.jsonl"
    _produce(streams, tmp_path, 3)
    env = worker_env(streams, output)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    worker = start_worker(env, "--import", "slow_import")
    wait_until(marker.exists, 30, "the worker importing its module")
    worker.process.send_signal(signal.SIGHUP)
    wait_until(lambda: len(lines_of(output)) >= 3, 30, "3 lines")
    assert 0 == worker.stop(), worker.log.read_text()


# -- the re-test of the tenth round's scale-out fixes ------------------------------


def _max_payload() -> int:
    async def read(js: Any) -> int:
        size: int = js._nc.max_payload
        return size

    result: int = js_call(read)
    return result


def _near_max_payload(event: str, size: int) -> bytes:
    """A JSON event of exactly ``size`` bytes."""
    payload = json.dumps({"event": event, "blob": ""}).encode()
    return json.dumps({"event": event, "blob": "w" * (size - len(payload))}).encode()


def test_an_event_just_under_max_payload_is_cut_to_fit_with_its_headers(
    streams: Streams, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by an outside tester: the cut-to-fit counted the body, not the
    # ~110 bytes of headers; nats-py took the message, the server answered
    # "maximum payload exceeded" and closed the connection, the producer
    # said "unreachable (TimeoutError: )" and every later event was stuck
    # behind this one, from memory as from the spool.
    from enrichlog.transport.codec import new_event_id
    from enrichlog.transport.config import TransportConfig
    from enrichlog.transport.nats import NatsTransport

    caplog.set_level(logging.WARNING, "enrichlog")
    limit = _max_payload()
    config = TransportConfig.parse(streams.uri())
    spool = tmp_path / "s"

    transport = NatsTransport(config, spool_dir=spool, publish_timeout=3.0)
    transport.start()
    transport.offer(new_event_id(), _near_max_payload("from memory", limit - 40))
    transport.offer(new_event_id(), b'{"event": "small after"}')
    report = transport.stop(5.0)
    assert (2, 1, 0, 0) == (
        report["published"],
        report["truncated"],
        report["rejected"],
        report["spooled"],
    )

    # Spooled (offered before the publisher starts), then published from there.
    transport = NatsTransport(config, spool_dir=spool, publish_timeout=3.0)
    transport.offer(new_event_id(), _near_max_payload("from the spool", limit - 1))
    transport.offer(new_event_id(), b'{"event": "small after the spooled"}')
    transport.start()
    report = transport.stop(5.0)
    metrics = transport.metrics()
    assert (2, 1, 0, 0) == (
        report["published"],
        report["truncated"],
        report["rejected"],
        report["spooled"],
    )
    assert 2 == metrics.replayed

    events = [json.loads(m.data) for m in _messages(streams.stream)]
    assert ["from memory", "small after", "from the spool", "small after the spooled"] == [
        event["event"] for event in events
    ]
    for cut in (events[0], events[2]):
        assert cut["blob"].endswith("…")
        assert "blob" in cut["truncated_fields"]
    assert "unreachable" not in caplog.text
    assert "maximum payload" in caplog.text


def test_a_broker_unreachable_report_never_has_an_empty_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A round that timed out reported "unreachable (TimeoutError: )".
    from enrichlog.transport.config import TransportConfig
    from enrichlog.transport.nats import NatsTransport

    caplog.set_level(logging.WARNING, "enrichlog")
    transport = NatsTransport(
        TransportConfig.parse("nats://127.0.0.1:1?stream=S&subject=s.x"), publish_timeout=4.0
    )
    transport._failed_round(TimeoutError())
    assert "unreachable" in caplog.text
    assert "TimeoutError: )" not in caplog.text
    assert "TimeoutError: no acknowledgement within 4s" in caplog.text


def _publish_on(subject: str, count: int, tag: str) -> None:
    async def publish(js: Any) -> None:
        for index in range(count):
            await js.publish(subject, json.dumps({"event": tag, "index": index}).encode())

    js_call(publish)


def test_a_consumer_changed_to_another_subject_under_a_worker_is_refused(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Found by an outside tester: two workers of two subjects started at one
    # moment both found the default consumer missing and both made it; the
    # server took the second creation as an update of the first's filter,
    # and the first worker read (and wrote) the other subject's events.
    # Here the second creation is made by hand, after the first worker bound.
    other = two_subjects(streams)
    output_a = tmp_path / "a.jsonl"
    first = start_worker(worker_env(streams, output_a))
    wait_until(lambda: "started" in first.log.read_text(), 30, "the first worker")

    async def second_creation(js: Any) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        await js.add_consumer(
            streams.stream,
            config=ConsumerConfig(
                durable_name="enrichlog",
                name="enrichlog",
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                max_deliver=-1,
                max_ack_pending=-1,
                filter_subject=other,
            ),
        )

    js_call(second_creation)
    _publish_on(other, 5, "of b")
    assert 1 == first.process.wait(30), first.log.read_text()
    text = first.log.read_text()
    assert "error: consumer 'enrichlog'" in text
    assert f"exists for {other!r}" in text
    assert "?consumer=" in text
    assert [] == [line for line in lines_of(output_a) if line["event"] == "of b"]

    # Handed back unwritten: the worker of that subject writes them all.
    env = worker_env(streams, tmp_path / "b.jsonl")
    env["ENRICHLOG_TRANSPORT"] = streams.uri().replace(streams.subject, other)
    second = start_worker(env)
    wait_until(lambda: len(lines_of(tmp_path / "b.jsonl")) >= 5, 30, "the 5 events of b")
    assert 0 == second.stop()
    assert 5 == len({line["index"] for line in lines_of(tmp_path / "b.jsonl")})


def test_workers_of_two_subjects_started_at_once_never_share_the_consumer(
    nats_server: None, tmp_path: Path, start_worker: Any
) -> None:
    # The race itself: in each try exactly one of the two runs, and neither
    # writes the other subject's events.
    import uuid

    from tests.services import run_async

    from .conftest import _delete

    for attempt in range(4):
        suffix = uuid.uuid4().hex[:10]
        streams = Streams(stream=f"T{suffix}", subject=f"test.{suffix}.a")
        other = f"test.{suffix}.b"
        try:

            async def make(js: Any, streams: Streams = streams, other: str = other) -> None:
                await js.add_stream(name=streams.stream, subjects=[streams.subject, other])

            js_call(make)
            _publish_on(streams.subject, 5, "a")
            _publish_on(other, 5, "b")
            outputs = {"a": tmp_path / f"{attempt}-a.jsonl", "b": tmp_path / f"{attempt}-b.jsonl"}
            env_a = worker_env(streams, outputs["a"])
            env_b = worker_env(streams, outputs["b"])
            env_b["ENRICHLOG_TRANSPORT"] = streams.uri().replace(streams.subject, other)
            workers = {"a": start_worker(env_a), "b": start_worker(env_b)}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                done = [name for name, w in workers.items() if w.process.poll() is not None]
                running = [name for name in workers if name not in done]
                if done and all(len(lines_of(outputs[name])) >= 5 for name in running):
                    break
                time.sleep(0.1)
            time.sleep(2.5)  # a consumer changed late is found within two seconds
            codes = {name: worker.stop() for name, worker in workers.items()}
            assert sorted(codes.values()) == [0, 1], (codes, attempt)
            for name, output in outputs.items():
                assert {name} >= {line["event"] for line in lines_of(output)}, (name, attempt)
            winner = next(name for name, code in codes.items() if code == 0)
            assert 5 == len(lines_of(outputs[winner]))
        finally:
            run_async(_delete([streams.stream, streams.dlq_stream]))


def test_an_applications_enrichlog_id_field_never_replaces_the_transport_id(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Found by an outside tester: an application's own enrichlog_id field
    # stood where the worker puts the transport's id, so readers that
    # deduplicate by it (as the docs advise) merged different events.
    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "s"))
    log = get_logger()
    log.info("a", seq=0, event_id="order-1", enrichlog_id="app-own")
    log.info("b", seq=1, event_id="order-1", enrichlog_id="app-own")
    log.info("c", seq=2, enrichlog_id="app-own")
    log.info("d", seq=3, event_id=7, enrichlog_id="x", enrichlog_id_2="y")
    assert 4 == container.shutdown()["published"]
    ids = {json.loads(m.data)["seq"]: m.headers["Nats-Msg-Id"] for m in _messages(streams.stream)}

    output = tmp_path / "out.jsonl"
    worker = start_worker(worker_env(streams, output))
    wait_until(lambda: len(lines_of(output)) >= 4, 30, "4 lines")
    assert 0 == worker.stop()
    lines = sorted(lines_of(output), key=lambda line: line["seq"])
    assert [ids[0], ids[1]] == [lines[0]["enrichlog_id"], lines[1]["enrichlog_id"]]
    assert ["app-own", "app-own"] == [lines[0]["enrichlog_id_2"], lines[1]["enrichlog_id_2"]]
    assert ["order-1", "order-1"] == [lines[0]["event_id"], lines[1]["event_id"]]
    # Its event_id is the transport's: no enrichlog_id, the application's kept.
    assert ids[2] == lines[2]["event_id"]
    assert "enrichlog_id" not in lines[2]
    assert "app-own" == lines[2]["enrichlog_id_2"]
    assert (ids[3], "y", "x") == (
        lines[3]["enrichlog_id"],
        lines[3]["enrichlog_id_2"],
        lines[3]["enrichlog_id_3"],
    )
    assert 4 == len({line.get("enrichlog_id", line["event_id"]) for line in lines})


def test_sighup_while_the_worker_stops_does_not_end_it(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Found by an outside tester: SIGHUPs every 10 ms after SIGTERM ended
    # the worker, status 129 (-1 here): its run put the default SIGHUP
    # handler back before the command took the signal again, and the
    # command gave the default back before the process ended.
    output = tmp_path / "out.jsonl"
    _produce(streams, tmp_path, 3)
    for attempt in range(3):
        worker = start_worker(worker_env(streams, output))
        wait_until(lambda w=worker: "started" in w.log.read_text(), 30, "the worker")
        worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while worker.process.poll() is None and time.monotonic() < deadline:
            try:
                worker.process.send_signal(signal.SIGHUP)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        assert 0 == worker.stop(), (attempt, worker.log.read_text())
    assert 3 == len(lines_of(output))


def test_a_non_json_message_is_dead_lettered_under_its_headers_id(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # A message that is not JSON, with the id header of an enrichlog
    # producer, was dead-lettered as seq-<n>, not by its id.
    from enrichlog.transport.codec import ID_HEADER

    async def publish(js: Any) -> None:
        from enrichlog.transport.nats import ensure_stream

        await ensure_stream(js, streams.stream, streams.subject)
        await js.publish(streams.subject, b"not json", headers={ID_HEADER: "hdr-id-1"})
        await js.publish(streams.subject, b"[1]")

    js_call(publish)
    worker = start_worker(worker_env(streams, tmp_path / "out.jsonl"))
    wait_until(
        lambda: _has_stream(streams.dlq_stream) and len(_messages(streams.dlq_stream)) >= 2,
        30,
        "2 dead letters",
    )
    assert 0 == worker.stop()
    letters = [json.loads(m.data) for m in _messages(streams.dlq_stream)]
    assert ["hdr-id-1", "seq-2"] == [letter["event_id"] for letter in letters]


def test_a_dead_letter_without_event_id_is_replayed_with_an_id(streams: Streams) -> None:
    # A dead letter without event_id was replayed with an empty
    # Enrichlog-Event-Id and the message id ":replay:<n>".
    dlq_subject = f"enrichlog.dlq.{streams.stream}"

    async def fill(js: Any) -> None:
        from enrichlog.transport.nats import ensure_stream

        await ensure_stream(js, streams.stream, streams.subject)
        await ensure_stream(js, streams.dlq_stream, dlq_subject)
        for event in ({"event": "no id"}, {"event": "own id", "event_id": "own-7"}):
            body = {"reason": "r", "deliveries": 1, "subject": streams.subject, "event": event}
            await js.publish(dlq_subject, json.dumps(body).encode())

    js_call(fill)
    replay = _dlq(streams, "replay", "--all")
    assert 0 == replay.returncode, replay.stdout + replay.stderr
    assert "replayed 2 event(s)" in replay.stdout
    headers = [m.headers for m in _messages(streams.stream)]
    expected = f"{streams.dlq_stream}-1"
    assert (expected, f"{expected}:replay:1") == (
        headers[0]["Enrichlog-Event-Id"],
        headers[0]["Nats-Msg-Id"],
    )
    assert ("own-7", "own-7:replay:2") == (
        headers[1]["Enrichlog-Event-Id"],
        headers[1]["Nats-Msg-Id"],
    )
    assert 2 == len(_messages(streams.stream))


def test_a_cancellation_swallowed_while_reading_the_consumers_figures_does_not_hang_the_stop(
    streams: Streams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found while fixing the above: nats-py may swallow a cancellation that
    # comes during a request; the helper reading the consumer's figures then
    # went on for good, and the worker's stop waited for it (SIGTERM left
    # the worker running, its loop idle).
    import asyncio
    import contextlib
    import io
    import threading

    from enrichlog.settings import LoggingSettings
    from enrichlog.worker import Worker

    async def swallowing(self: Worker, subscription: Any) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as a request in nats-py may
            await asyncio.sleep(0.5)

    monkeypatch.setattr(Worker, "_read_lag", swallowing)
    worker = Worker(
        LoggingSettings(transport=streams.uri(), output=str(tmp_path / "out.jsonl")),
        stats_interval=0.01,  # nearly always reading the figures when stopped
        stats_out=io.StringIO(),
    )
    thread = threading.Thread(target=asyncio.run, args=(worker.run(),), daemon=True)
    thread.start()
    wait_until(lambda: worker._subscription is not None, 30, "the worker bound")
    time.sleep(0.35)
    worker.request_stop()
    thread.join(15)
    assert not thread.is_alive()
