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


def test_a_worker_refuses_a_shared_consumer_filtered_on_another_subject(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Found by an outside tester: workers of two subjects of one stream
    # shared the default consumer, filtered on the first one's subject; the
    # second worker consumed nothing, silently.
    other = f"{streams.subject}.b"

    async def make(js: Any) -> None:
        await js.add_stream(name=streams.stream, subjects=[streams.subject, other])

    js_call(make)
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
