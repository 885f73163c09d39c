"""Found by the thirteenth round's outside attack on scale-out: a stream that
is full and discards new messages, a server without JetStream, subjects the
server reserves, a spool on a full disk, a dead-letter stream that refuses
dead letters, and the limit on a stream name's length."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import enrichlog
from enrichlog import configure_logging
from enrichlog.cli.check import check
from enrichlog.cli.dlq import run_dlq
from enrichlog.exceptions import EnricherConfigError
from enrichlog.transport.codec import encode_event, new_event_id
from enrichlog.transport.config import TransportConfig
from enrichlog.transport.nats import NatsTransport, ensure_stream
from tests.services import free_port

from .conftest import Streams, WorkerProcess, js_call, wait_until, worker_env

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


@pytest.fixture
def t13(nats_server: None) -> Iterator[Streams]:
    """A stream (``t13_...``) and subject of this test's own, deleted after."""
    suffix = uuid.uuid4().hex[:10]
    names = Streams(stream=f"t13_{suffix}", subject=f"t13.{suffix}.logs")
    yield names

    async def delete(js: Any) -> None:
        from nats.js.errors import NotFoundError

        for name in (names.stream, names.dlq_stream):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)

    js_call(delete)


def _full_stream(streams: Streams, max_msgs: int) -> None:
    """The stream, made beforehand with ``max_msgs`` and discard=new (used
    as it is by enrichlog)."""

    async def make(js: Any) -> None:
        from nats.js.api import DiscardPolicy, StreamConfig

        await js.add_stream(
            StreamConfig(
                name=streams.stream,
                subjects=[streams.subject],
                max_msgs=max_msgs,
                discard=DiscardPolicy.NEW,
                duplicate_window=120,
            )
        )

    js_call(make)


def _offer(transport: NatsTransport, first: int, count: int) -> None:
    for n in range(first, first + count):
        transport.offer(new_event_id(), encode_event({"event": "e", "n": n}))


# -- A: a full stream that discards new messages -----------------------------------------


@pytest.mark.services
def test_a_full_stream_keeps_the_events_backs_off_reports_once_and_counts_exactly(
    t13: Streams, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The server answers "maximum messages exceeded" (503, error 10077): the
    # producer retried the whole batch thousands of times a second (82% of a
    # core), said nothing, and counted 0, 1 or 85 published of the 10 or 100
    # the stream held (a round that failed in part counted nothing).
    caplog.set_level(logging.WARNING, logger="enrichlog")
    _full_stream(t13, 10)
    spool = tmp_path / "spool"
    config = TransportConfig.parse(t13.uri())
    transport = NatsTransport(config, spool_dir=spool, report_interval=3600)
    transport.start()
    _offer(transport, 0, 50)
    wait_until(lambda: "refuses new events" in caplog.text, 30, "the report of the full stream")
    wait_until(lambda: transport.metrics().published >= 10, 30, "the 10 the stream takes")
    errors = transport.metrics().publish_errors
    time.sleep(4)
    metrics = transport.metrics()
    assert not transport.flush(0.5)
    started = time.monotonic()
    report = transport.stop(30)  # the stream refuses: no waiting for it

    assert time.monotonic() - started < 15
    assert (10, 0, 40, 0) == (
        metrics.published,
        metrics.rejected,
        metrics.queued,
        metrics.duplicates,
    )
    # A pause that doubles up to 5 s between refused rounds: a handful in
    # 4 s, where there were thousands.
    assert metrics.publish_errors - errors <= 15
    assert 1 == caplog.text.count("refuses new events")
    assert "maximum messages exceeded, error 10077" in caplog.text
    assert (10, 40, 0, 0) == (
        report["published"],
        report["spooled"],
        report["rejected"],
        report["spool_dropped"],
    )

    # Room again (a limit raised): a new start publishes the 40 kept, once each.
    again = NatsTransport(config, spool_dir=spool, report_interval=3600)
    again.start()
    wait_until(lambda: caplog.text.count("refuses new events") == 2, 30, "the second report")

    async def grow(js: Any) -> None:
        info = await js.stream_info(t13.stream)
        info.config.max_msgs = 1000
        await js.update_stream(info.config)

    js_call(grow)
    assert again.flush(60)
    final = again.stop(10)

    assert "takes events again" in caplog.text
    assert (40, 40, 0) == (final["published"], again.metrics().replayed, final["spooled"])
    assert 0 == again.metrics().duplicates
    numbers = [json.loads(line)["n"] for line in _stream_payloads(t13.stream)]
    assert list(range(50)) == numbers


def _stream_payloads(stream: str) -> list[bytes]:
    async def read(js: Any) -> list[bytes]:
        info = await js.stream_info(stream)
        return [
            (await js.get_msg(stream, seq=seq)).data
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]

    result: list[bytes] = js_call(read)
    return result


# -- B: a server without JetStream; subjects the server reserves ---------------------------


@pytest.fixture
def server_without_jetstream() -> Iterator[int]:
    """A nats-server without JetStream on a free port."""
    if not os.access(NATS_SERVER, os.X_OK):
        pytest.skip("needs the nats-server binary")
    port = free_port()
    server = subprocess.Popen(
        [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _listening(port), 20, "the nats-server without JetStream")
        yield port
    finally:
        server.terminate()
        server.wait(10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.services
def test_a_server_without_jetstream_is_named_as_such_by_producer_worker_and_dlq(
    server_without_jetstream: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker exited 1 with a traceback (ServiceUnavailableError ...
    # description='None'), the producer called the broker unreachable with
    # that reason, and dlq list printed it.
    port = server_without_jetstream
    uri = f"nats://app:s3cret@127.0.0.1:{port}?stream=t13_nojs&subject=t13.nojs.logs"
    expected = f"the NATS server at nats://app:***@127.0.0.1:{port} has no JetStream enabled"

    with pytest.raises(EnricherConfigError) as caught:
        configure_logging(transport=uri, spool_dir=str(tmp_path / "spool"))
    assert expected in str(caught.value)
    assert "start it with -js" in str(caught.value)

    env = worker_env(Streams("t13_nojs", "t13.nojs.logs", port), tmp_path / "out.jsonl")
    env["ENRICHLOG_TRANSPORT"] = uri
    worker = subprocess.run(
        [sys.executable, "-m", "enrichlog", "worker", "--stats-interval", "0"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 1 == worker.returncode
    assert "Traceback" not in worker.stderr
    assert f"error: {expected}" in worker.stderr

    monkeypatch.setenv("ENRICHLOG_TRANSPORT", uri)
    out, err = io.StringIO(), io.StringIO()
    assert 1 == run_dlq("list", out=out, err=err)
    assert err.getvalue().startswith(f"error: {expected}")
    for text in (str(caught.value), worker.stderr, err.getvalue()):
        assert "s3cret" not in text
        assert "description='None'" not in text


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("subject=$JS.API.t13", "subject"),
        ("subject=$SYS.t13", "subject"),
        ("subject=_INBOX.t13", "subject"),
    ],
)
def test_a_subject_the_server_reserves_is_refused_when_the_settings_are_read(
    query: str, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # check said ok for $JS.API.x; the worker then failed with a traceback
    # (err_code=10052 'subjects overlap with jetstream api').
    uri = f"nats://127.0.0.1:4222?stream=t13_reserved&{query}"
    with pytest.raises(EnricherConfigError, match=f"query key '{key}': subjects that start"):
        TransportConfig.parse(uri)
    with pytest.raises(EnricherConfigError, match=r"dead-letter subject .* reserved"):
        TransportConfig.parse("nats://127.0.0.1:4222", dlq_subject="$JS.API.dlq")

    monkeypatch.setenv("ENRICHLOG_TRANSPORT", uri)
    out, err = io.StringIO(), io.StringIO()
    assert 1 == check(out=out, err=err)
    assert "reserved for the NATS server" in err.getvalue()
    assert "" == out.getvalue()


@pytest.mark.services
def test_a_stream_the_server_refuses_to_create_is_a_configuration_error_with_its_reason(
    nats_server: None,
) -> None:
    # A refusal at creation (here a name longer than the server's 255) came
    # out as nats-py's ServerError, a traceback in the worker.
    name = "t13_" + "x" * 300

    async def make(js: Any) -> None:
        await ensure_stream(js, name, "t13.toolong.logs", server="nats://127.0.0.1:4222")

    with pytest.raises(EnricherConfigError) as caught:
        js_call(make)
    assert "the server at nats://127.0.0.1:4222 refused (stream name is too long" in str(
        caught.value
    )


# -- C: a spool on a full disk -----------------------------------------------------------

_FILL_SPOOL = textwrap.dedent(
    """
    import json, resource, signal, sys
    from enrichlog.transport.codec import encode_event, new_event_id
    from enrichlog.transport.config import TransportConfig
    from enrichlog.transport.nats import NatsTransport
    # A file cannot grow past 40,000 bytes: a write that crosses the limit
    # takes what fits, then fails (EFBIG), as one on a disk filling up does.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
    transport = NatsTransport(
        TransportConfig.parse(sys.argv[1]), spool_dir=sys.argv[2], memory_limit=400
    )
    transport.start(wait=5)
    for n in range(int(sys.argv[3])):
        transport.offer(new_event_id(), encode_event({"event": "e", "n": n, "pad": "p" * 97}))
    print(json.dumps(transport.stop(0)))
    """
)


@pytest.mark.services
def test_a_spool_on_a_full_disk_counts_lost_only_what_is_never_published(
    t13: Streams, tmp_path: Path
) -> None:
    # The disk took part of a write: the events written whole before it
    # filled up were counted lost (spool_dropped, "lost N") and published by
    # the next start all the same (975 spooled + 4,025 dropped, 978 published).
    spool = tmp_path / "spool"
    logged = 2000
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICHLOG_")}
    # The enrichlog this test imports, wherever it is.
    package = str(Path(enrichlog.__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package, env.get("PYTHONPATH")]))
    unreachable = t13.uri(port=free_port())
    filled = subprocess.run(
        [sys.executable, "-c", _FILL_SPOOL, unreachable, str(spool), str(logged)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 0 == filled.returncode, filled.stderr
    report = json.loads(filled.stdout.strip().splitlines()[-1])
    assert 0 < report["spool_dropped"] < logged
    assert logged == report["spooled"] + report["spool_dropped"]

    transport = NatsTransport(TransportConfig.parse(t13.uri()), spool_dir=spool)
    transport.start()
    assert transport.flush(60)
    published = transport.stop(10)["published"]

    numbers = [json.loads(payload)["n"] for payload in _stream_payloads(t13.stream)]
    assert report["spooled"] == published
    assert list(range(published)) == numbers


# -- D: a dead-letter stream that refuses ------------------------------------------------


@pytest.mark.services
def test_a_refused_dead_letter_is_retried_with_back_off_and_reported_once(
    t13: Streams, tmp_path: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    # The dead-letter stream full (discard=new): each event was handed back
    # with the fixed redeliver_delay, for good, with one stderr line per try.
    async def make(js: Any) -> None:
        from nats.js.api import DiscardPolicy, StreamConfig

        await js.add_stream(name=t13.stream, subjects=[t13.subject])
        await js.add_stream(
            StreamConfig(
                name=t13.dlq_stream,
                subjects=[f"enrichlog.dlq.{t13.stream}"],
                max_msgs=1,
                discard=DiscardPolicy.NEW,
            )
        )
        await js.publish(f"enrichlog.dlq.{t13.stream}", b"{}")  # full
        for n in range(3):
            await js.publish(t13.subject, f"not json {n}".encode())

    js_call(make)
    env = worker_env(
        t13,
        tmp_path / "out.jsonl",
        redeliver_delay="0.2",
        redeliver_max_delay="2",
        drop_report_interval="3600",
    )
    worker = start_worker(env)
    wait_until(lambda: "dead-lettering failed" in worker.log.read_text(), 60, "the report")
    time.sleep(8)

    async def grow(js: Any) -> None:
        info = await js.stream_info(t13.dlq_stream)
        info.config.max_msgs = 100
        await js.update_stream(info.config)

    js_call(grow)

    async def dead_letters(js: Any) -> int:
        return int((await js.stream_info(t13.dlq_stream)).state.messages)

    wait_until(lambda: js_call(dead_letters) >= 4, 60, "the dead letters once there is room")
    assert 0 == worker.stop()
    log = worker.log.read_text()
    metrics = worker.final_metrics()

    assert 1 == log.count("dead-lettering failed")
    assert "maximum messages exceeded, error 10077" in log
    assert "dead-lettering works again" in log
    # The failures after the last report are in the "works again" line (the
    # re-test found them in no line).
    again = re.search(r"works again \(stream '[^']+'\); it failed (\d+) more time", log)
    assert again is not None, log
    assert int(again.group(1)) >= 1
    assert 3 == metrics["dead_lettered"]
    # Delays of 0.1-0.2 s, doubling up to 2 s: about ten deliveries each in
    # those 8 s, where a fixed 0.2 s made forty.
    assert metrics["consumed"] <= 3 * 20


# -- E: the limit on a stream name's length ---------------------------------------------


def test_a_stream_name_too_long_is_refused_with_the_real_limit() -> None:
    # Refused as "letters, digits, '-' and '_'", which it was.
    name = "t13_" + "x" * 202
    with pytest.raises(EnricherConfigError) as caught:
        TransportConfig.parse(f"nats://127.0.0.1:4222?stream={name}&subject=t13.a")
    assert "a stream name is at most 200 characters (this one has 206)" in str(caught.value)
    assert "letters" not in str(caught.value)
    assert name not in str(caught.value)
    assert TransportConfig.parse(f"nats://127.0.0.1?stream={'x' * 200}").stream == "x" * 200


@pytest.mark.services
def test_dlq_replay_into_a_full_stream_says_what_it_replayed_and_what_it_kept(
    t13: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the re-test: it printed only "error: ServiceUnavailableError:
    # ... err_code=10077 ..." (having replayed 2 and kept 3).
    _full_stream(t13, max_msgs=3)
    config = TransportConfig.parse(t13.uri())

    async def fill(js: Any) -> None:
        await ensure_stream(js, config.dlq_stream, config.dlq_subject)
        await js.publish(t13.subject, b'{"event": "there before"}')
        for index in range(5):
            letter = {
                "reason": "error: OSError",
                "deliveries": 5,
                "event_id": f"t13-{index}",
                "subject": t13.subject,
                "stream_sequence": 100 + index,
                "failed_at": "2026-12-07T00:00:00+00:00",
                "worker": "host:1",
                "event": {"event": "dead", "n": index, "event_id": f"t13-{index}"},
            }
            await js.publish(config.dlq_subject, json.dumps(letter).encode())

    js_call(fill)
    monkeypatch.setenv("ENRICHLOG_TRANSPORT", t13.uri())
    out, err = io.StringIO(), io.StringIO()

    status = run_dlq("replay", replay_all=True, out=out, err=err)

    assert 1 == status
    assert f"replayed 2 event(s) to {t13.subject}" == out.getvalue().strip()
    assert err.getvalue().startswith(
        f"error: stream {t13.stream!r} refused the replay (maximum messages exceeded, error "
        f"10077): 3 dead letter(s) not replayed (kept in {t13.dlq_stream})"
    )
    assert "Traceback" not in err.getvalue()
    assert 3 == len(_stream_payloads(t13.dlq_stream))
