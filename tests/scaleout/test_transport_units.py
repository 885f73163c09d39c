"""The parts of scale-out that need no server: the transport URI, the
settings, the encoding of events, the spool, the redelivery delay, the
worker's output, and a producer whose broker is unreachable."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import io
import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enrichlog import LoggingSettings, configure_logging, get_logger
from enrichlog.exceptions import EnricherConfigError
from enrichlog.transport import transport_for
from enrichlog.transport.codec import decode_event, encode_event, fit_event
from enrichlog.transport.config import TransportConfig, subject_matches
from enrichlog.transport.nats import connect
from enrichlog.transport.spool import Spool
from enrichlog.worker import OutputSink, redelivery_delay
from tests.services import free_port

# -- the URI ---------------------------------------------------------------------------


def test_uri_defaults() -> None:
    config = TransportConfig.parse("nats://")

    assert ("nats://127.0.0.1:4222", "LOGS", "logs.app", "enrichlog") == (
        config.server,
        config.stream,
        config.subject,
        config.consumer,
    )
    assert ("LOGS_DLQ", "enrichlog.dlq.LOGS", None) == (
        config.dlq_stream,
        config.dlq_subject,
        config.enrich,
    )


def test_uri_keys_and_credentials() -> None:
    config = TransportConfig.parse(
        "nats://app:p%40ss@broker:4333?stream=ORDERS&subject=logs.orders&consumer=w1"
        "&enrich=local&token=t0k"
    )

    assert "nats://app:p%40ss@broker:4333" == config.server
    assert ("ORDERS", "logs.orders", "w1", "local", "t0k") == (
        config.stream,
        config.subject,
        config.consumer,
        config.enrich,
        config.token,
    )
    assert "p%40ss" not in config.masked
    assert "t0k" not in config.masked


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("http://broker", "unknown scheme 'http'"),
        ("nats://broker?strem=LOGS", "unknown query key 'strem'"),
        ("nats://broker?stream=A.B", "query key 'stream'"),
        ("nats://broker?subject=logs.*", "query key 'subject'"),
        ("nats://broker?enrich=maybe", "query key 'enrich'"),
        ("nats://broker?stream=A&stream=B", "given twice"),
        ("nats://broker/LOGS", "a path is not accepted"),
        ("nats://broker:99999", "host or port"),
    ],
)
def test_uri_errors_name_the_problem(uri: str, problem: str) -> None:
    with pytest.raises(EnricherConfigError, match="transport URI") as caught:
        TransportConfig.parse(uri)
    assert problem in str(caught.value)


def test_uri_errors_mask_secrets() -> None:
    with pytest.raises(EnricherConfigError) as caught:
        configure_logging(transport="nats://app:s3cret@broker?colour=blue&token=t0ps3cret")

    assert "colour" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert "t0ps3cret" not in str(caught.value)


def test_an_unknown_key_right_after_the_token_is_not_named() -> None:
    # It may be the rest of a token holding a raw '&' ('t0ps&3cret=x').
    with pytest.raises(EnricherConfigError, match="follows the token") as caught:
        configure_logging(transport="nats://broker?token=t0ps&3cret=x")

    assert "3cret" not in str(caught.value)


def test_settings_mask_the_transport() -> None:
    settings = LoggingSettings(transport="nats://app:s3cret@broker?token=t0k")

    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "s3cret" not in shown
        assert "t0k" not in shown


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"transport": "nats://app:s3cret@broker?colour=blue"}, "transport"),
        ({"transport": "nats://broker", "dlq_subject": "dead letters"}, "dlq_subject"),
    ],
)
def test_a_settings_error_names_the_transport_field_at_fault(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], field: str
) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"ENRICHLOG_{name.upper()}", value)

    with pytest.raises(EnricherConfigError, match=f"settings: {field}: transport URI") as caught:
        LoggingSettings()

    assert "s3cret" not in str(caught.value)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICHLOG_TRANSPORT", "nats://broker?stream=X")
    monkeypatch.setenv("ENRICHLOG_ENRICH", "local")
    monkeypatch.setenv("ENRICHLOG_ACK_WAIT", "2")
    monkeypatch.setenv("ENRICHLOG_MAX_DELIVER", "3")

    settings = LoggingSettings()

    assert ("nats://broker?stream=X", "local", 2.0, 3) == (
        settings.transport,
        settings.enrich,
        settings.ack_wait,
        settings.max_deliver,
    )


def test_subject_matching() -> None:
    assert subject_matches("logs.>", "logs.app.web")
    assert subject_matches("logs.*", "logs.app")
    assert not subject_matches("logs.*", "logs.app.web")
    assert not subject_matches("logs.app", "logs.app2")
    assert not subject_matches("logs.>", "logs")


def test_a_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def refuse_nats(name: str, *args: Any, **kwargs: Any) -> Any:
        absolute = (args[3] if len(args) > 3 else kwargs.get("level", 0)) == 0
        if absolute and (name == "nats" or name.startswith("nats.")):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse_nats)
    with pytest.raises(EnricherConfigError, match=r"enrichlog\[nats\]"):
        transport_for(LoggingSettings(transport="nats://"))


# -- events on the wire ------------------------------------------------------------------


def test_encoding_never_raises_and_keeps_what_it_can() -> None:
    class Weird:
        def __repr__(self) -> str:
            return "<weird>"

    event = {
        "event": "x",
        "obj": Weird(),
        "nan": math.nan,
        "big": 2**80,
        "surrogate": "\udcff",
        7: "int key",
        "nested": {"set": {1}},
    }

    decoded = decode_event(encode_event(event))

    assert ("x", "<weird>", "int key") == (decoded["event"], decoded["obj"], decoded["7"])
    assert str(2**80) == str(decoded["big"])
    assert b"\n" not in encode_event({"event": "two\nlines"})


def test_decoding_refuses_what_is_not_an_object() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        decode_event(b"[1, 2]")
    with pytest.raises(ValueError):  # noqa: PT011 - the decoder's own message
        decode_event(b"{not json")


# -- the spool -----------------------------------------------------------------------------


def records(count: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [(f"id{i}", json.dumps({"i": i}).encode()) for i in range(start, start + count)]


def test_spool_gives_records_back_in_order_and_forgets_published_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, segment_bytes=1024)
    assert 100 == spool.append(records(100))

    seen: list[str] = []
    while not spool.empty:
        batch = spool.peek(7)
        seen.extend(event_id for event_id, _ in batch)
        spool.consume(batch)

    assert [f"id{i}" for i in range(100)] == seen
    assert [] == list(spool.path.glob("*.spool"))


def test_spool_survives_a_restart_and_a_torn_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(records(10))
    spool.consume(spool.peek(4))
    spool.close()
    (segment,) = spool.path.glob("*.spool")
    with segment.open("ab") as handle:
        handle.write(b'id99\t{"i": 9')  # the process died mid-write

    again = Spool(tmp_path, 1 << 20)

    assert 6 == again.count_records()
    assert [f"id{i}" for i in range(4, 10)] == [event_id for event_id, _ in again.peek(100)]


def test_spool_refuses_past_its_cap(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1024)

    stored = spool.append(records(200))

    assert 0 < stored < 200
    assert spool.size <= 1024


def test_spool_prepend_puts_records_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(records(5, start=10))
    spool.consume(spool.peek(2))

    spool.prepend(records(3))

    seen: list[str] = []
    while not spool.empty:
        batch = spool.peek(100)
        seen.extend(event_id for event_id, _ in batch)
        spool.consume(batch)
    assert ["id0", "id1", "id2", "id12", "id13", "id14"] == seen


def test_two_processes_never_share_a_slot(tmp_path: Path) -> None:
    first = Spool(tmp_path, 1 << 20)
    second = Spool(tmp_path, 1 << 20)

    assert first.path != second.path
    first.close()
    assert first.path == Spool(tmp_path, 1 << 20).path  # free again


def drain(spool: Spool) -> list[str]:
    seen: list[str] = []
    while not spool.empty:
        batch = spool.peek(100)
        seen.extend(event_id for event_id, _ in batch)
        spool.consume(batch)
    return seen


def test_a_spool_takes_over_what_ended_processes_left_in_other_slots(tmp_path: Path) -> None:
    # Found by an outside tester: a parent and three forked children spooled
    # into slot-0..3 while the broker was down; the one process started next
    # published slot-0 only, and the rest stayed on disk for good.
    ended = [Spool(tmp_path, 1 << 20, segment_bytes=1024) for _ in range(3)]
    for index, spool in enumerate(ended):
        spool.append(records(40, start=100 * index))
    ended[1].consume(ended[1].peek(15))  # part published before it ended
    with (ended[2].path / f"{10**12:020d}.spool").open("ab") as torn:
        torn.write(b'id999\t{"i": 9')  # died mid-write
    for spool in ended:
        spool.close()

    spool = Spool(tmp_path, 1 << 20)

    assert ended[0].path == spool.path
    assert 105 == spool.count_records() == len(drain(spool))
    assert [] == list(tmp_path.glob("slot-*/*.spool"))


def test_a_spool_leaves_the_slots_of_running_processes_alone(tmp_path: Path) -> None:
    running = Spool(tmp_path, 1 << 20)
    running.append(records(5))
    ended = Spool(tmp_path, 1 << 20)
    ended.append(records(7, start=10))
    ended.close()

    spool = Spool(tmp_path, 1 << 20)

    assert [f"id{i}" for i in range(10, 17)] == drain(spool)
    assert [f"id{i}" for i in range(5)] == drain(running)


# -- the worker's pieces ---------------------------------------------------------------------


def test_redelivery_delay_doubles_with_jitter_up_to_its_cap() -> None:
    for deliveries, full in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)]:
        delays = [redelivery_delay(deliveries, 1.0, 30.0) for _ in range(200)]
        assert all(full / 2 <= delay <= full for delay in delays)
        assert len(set(delays)) > 1


def test_output_sink_routes_by_field_and_reports_failures(tmp_path: Path) -> None:
    sink = OutputSink(str(tmp_path / "{tenant}.log"))
    (tmp_path / "broken.log").mkdir()

    assert str(tmp_path / "acme.log") == sink.target_for({"tenant": "acme"})
    assert str(tmp_path / "unknown.log") == sink.target_for({})
    assert str(tmp_path / "_etc_passwd.log") == sink.target_for({"tenant": "../etc/passwd"})
    assert sink.write(sink.target_for({"tenant": "acme"}), b"{}") is None
    reason = sink.write(sink.target_for({"tenant": "broken"}), b"{}")
    sink.close()

    assert reason is not None
    assert "IsADirectoryError" in reason
    assert "{}\n" == (tmp_path / "acme.log").read_text()


class _FillingDisk(io.RawIOBase):
    """A file on a disk that fills up: takes ``room`` bytes in all, then
    refuses with ENOSPC until ``room`` is raised again."""

    def __init__(self, path: Path, room: int) -> None:
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed by close()
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = self._file.write(bytes(data)[: self.room])
        assert taken is not None
        self.room -= taken
        return taken

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()
        super().close()


def test_output_sink_writes_unbuffered_and_starts_after_a_cut_line_anew(tmp_path: Path) -> None:
    target = str(tmp_path / "worker.log")
    sink = OutputSink(target)
    assert sink.write(target, b'{"n":1}') is None
    assert isinstance(sink._files[target], io.RawIOBase)  # no buffer to keep failed bytes
    disk = _FillingDisk(tmp_path / "worker.log", room=4)
    sink._files[target] = disk

    cut = sink.write(target, b'{"n":2}')  # 4 bytes taken, then the disk is full
    assert cut is not None
    assert "OSError: No space left on device" in cut
    assert disk.closed  # forgotten: opened again on the next write
    sink._files[target] = _FillingDisk(tmp_path / "worker.log", room=0)
    assert sink.write(target, b'{"n":2}') is not None  # nothing taken: still cut
    assert sink.write(target, b'{"n":2}') is None  # the redelivery, on a new line
    assert sink.write(target, b'{"n":3}') is None
    sink.close()

    assert (tmp_path / "worker.log").read_bytes() == b'{"n":1}\n{"n"\n{"n":2}\n{"n":3}\n'


def test_output_sink_forgets_a_cut_line_when_the_file_was_rotated_away(tmp_path: Path) -> None:
    target = str(tmp_path / "worker.log")
    sink = OutputSink(target)
    sink._files[target] = _FillingDisk(tmp_path / "worker.log", room=3)
    assert sink.write(target, b'{"n":1}') is not None
    (tmp_path / "worker.log").rename(tmp_path / "worker.log.1")

    assert sink.write(target, b'{"n":1}') is None
    sink.close()

    assert (tmp_path / "worker.log").read_bytes() == b'{"n":1}\n'
    assert (tmp_path / "worker.log.1").read_bytes() == b'{"n'


def test_output_sink_leaves_no_blank_line_after_ending_a_cut_line(tmp_path: Path) -> None:
    # Found by a review: a write that ended the cut line (its newline taken)
    # and then failed left the target "cut", so the next line began with a
    # second newline: a blank line.
    target = str(tmp_path / "worker.log")
    sink = OutputSink(target)
    sink._files[target] = _FillingDisk(tmp_path / "worker.log", room=4)
    assert sink.write(target, b'{"n":1}') is not None  # cut after 4 bytes
    sink._files[target] = _FillingDisk(tmp_path / "worker.log", room=1)
    assert sink.write(target, b'{"n":1}') is not None  # only the newline that ends it
    assert sink.write(target, b'{"n":1}') is None
    sink.close()

    assert b'{"n"\n{"n":1}\n' == (tmp_path / "worker.log").read_bytes()


def test_output_sink_starts_a_file_emptied_in_place_without_a_blank_line(
    tmp_path: Path,
) -> None:
    # Found by a review: after a cut line, a file truncated in place
    # (logrotate's copytruncate) kept its inode, and began with a newline.
    target = str(tmp_path / "worker.log")
    sink = OutputSink(target)
    sink._files[target] = _FillingDisk(tmp_path / "worker.log", room=3)
    assert sink.write(target, b'{"n":1}') is not None
    os.truncate(target, 0)

    assert sink.write(target, b'{"n":2}') is None
    sink.close()

    assert b'{"n":2}\n' == (tmp_path / "worker.log").read_bytes()


def test_output_sink_reports_a_missing_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by a review: with sys.stdout None (a worker started with >&-) the
    # write raised AttributeError instead of reporting a failure.
    monkeypatch.setattr("sys.stdout", None)
    reason = OutputSink("stdout").write("stdout", b"{}")

    assert reason is not None
    assert "the process has no binary stdout" in reason


def test_output_sink_writes_where_its_check_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sink = OutputSink("~/worker.log")
    sink.check()

    assert sink.write(sink.target_for({}), b"{}") is None
    sink.close()

    assert (tmp_path / "worker.log").read_bytes() == b"{}\n"
    assert not (tmp_path / "~").exists()


# -- a producer whose broker is unreachable ---------------------------------------------------


def test_unreachable_broker_spools_and_counts_what_the_cap_drops(tmp_path: Path) -> None:
    container = configure_logging(
        transport=f"nats://127.0.0.1:{free_port()}?stream=OFF",
        spool_dir=str(tmp_path),
        spool_max_bytes=4096,
        queue_size=10,
    )
    log = get_logger()
    for index in range(200):
        log.info("offline", index=index, padding="x" * 40)
    transport = container.transport
    assert transport is not None
    during = transport.metrics()

    report = container.shutdown()

    assert not during.connected
    assert 0 < during.spooled < 200
    assert 0 < report["spool_dropped"]
    assert 200 == report["spooled"] + report["spool_dropped"]
    assert 0 == report["published"]
    # Still on disk after shutdown (it read 0 once the spool was closed).
    on_disk = sum(path.stat().st_size for path in tmp_path.rglob("*.spool"))
    assert 0 < transport.metrics().spool_bytes <= on_disk


def test_enrichers_run_in_the_workers_unless_asked_to_run_here() -> None:
    remote = LoggingSettings(transport="nats://?stream=A", enrichers=["static://?svc=x"])
    local = LoggingSettings(
        transport="nats://?stream=A&enrich=local", enrichers=["static://?svc=x"]
    )

    from enrichlog import LoggingContainer

    assert 0 == LoggingContainer(remote)._plan.depth
    assert 1 == LoggingContainer(local)._plan.depth


async def test_tls_is_required_even_when_the_server_does_not_offer_it() -> None:
    # Found by an outside tester: nats-py upgrades to TLS only when the
    # server's greeting asks for it, so tls:// against a server without TLS
    # (or a man in the middle dropping the flag) sent the password in clear.
    received = bytearray()

    async def plaintext_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {"server_id": "fake", "version": "2.10.0", "max_payload": 1048576, "proto": 1}
        writer.write(b"INFO " + json.dumps(info).encode() + b"\r\n")
        await writer.drain()
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                received.extend(chunk)
        writer.close()

    server = await asyncio.start_server(plaintext_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = TransportConfig.parse(f"tls://app:s3cret@127.0.0.1:{port}?token=t0k3n")
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever nats-py raises
            await connect(config, name="tls-test", reconnect=False, timeout=1.0)
    finally:
        server.close()
        await server.wait_closed()

    assert received.startswith(b"\x16\x03")  # a TLS ClientHello
    assert b"CONNECT" not in received
    assert b"s3cret" not in received
    assert b"t0k3n" not in received


NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A nats-server with TLS on a free port, and its self-signed certificate."""
    if not (os.access(NATS_SERVER, os.X_OK) and shutil.which("openssl")):
        pytest.skip("needs the nats-server and openssl binaries")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        ["openssl", *request, *subject, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    port = free_port()
    tls = ["--tls", "--tlscert", str(cert), "--tlskey", str(key)]
    server = subprocess.Popen(
        [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), *tls],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, cert
    finally:
        server.terminate()
        server.wait(10)


async def test_tls_connects_to_a_server_with_tls(
    tls_server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, cert = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the documented way to trust a private CA
    config = TransportConfig.parse(f"tls://127.0.0.1:{port}")
    for _ in range(100):  # until the server listens
        try:
            client = await connect(config, name="tls-test", reconnect=False, timeout=1.0)
            break
        except Exception:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("could not connect to the TLS server")
    try:
        subscription = await client.subscribe("tls.test")
        await client.publish("tls.test", b"over tls")
        message = await subscription.next_msg(timeout=2)
    finally:
        await client.close()

    assert b"over tls" == message.data


@pytest.mark.parametrize(
    ("event", "cut"),
    [
        ({"event": "e", "blob": "x" * 300_000, "n": 1}, {"blob"}),
        ({"event": "e", "a": "é" * 90_000, "b": list(range(40_000))}, {"a", "b"}),
        ({"event": "é" * 200_000, "level": "info"}, {"event"}),
        # Found by the re-test: escaped characters (2 to 6 bytes of JSON
        # each) made the cut fall short, and the event lost every field.
        ({"event": "e", "v": '"' * 60_000, "keep": "small"}, {"v"}),
        ({"event": "e", "v": "a" * 50_000 + "\x01" * 10_000, "keep": "small"}, {"v"}),
    ],
    ids=["one-large-value", "multibyte-and-a-list", "the-message-itself", "quotes", "controls"],
)
def test_fit_event_cuts_the_largest_values_and_lists_them(
    event: dict[str, Any], cut: set[str]
) -> None:
    payload = encode_event({**event, "event_id": "abc"})
    fitted = fit_event(payload, 100_000)
    fields = decode_event(fitted)

    assert len(fitted) <= 100_000
    assert "abc" == fields["event_id"]
    assert cut == set(fields["truncated_fields"])
    for name in cut:
        assert fields[name].endswith("…")
        assert fields["truncated_fields"][name] > 100_000
    for name in set(event) - cut:
        assert event[name] == fields[name]


class _SurrogateRepr:
    def __repr__(self) -> str:
        return "x\ud800y"


def test_values_json_cannot_hold_keep_every_other_field_on_the_wire() -> None:
    # Found by the second re-test: an object whose repr holds a lone
    # surrogate, or an int past 4,300 digits, turned the whole event into
    # one string (every field, event_id included, lost as a field).
    event = {"event": "ev", "keep": "small", "obj": _SurrogateRepr(), "n": 10**5000}

    fields = decode_event(encode_event(event))

    assert ("ev", "small", "x\\ud800y") == (fields["event"], fields["keep"], fields["obj"])
    assert fields["n"].startswith("0x")


def test_fit_event_keeps_the_essentials_of_an_event_of_many_small_fields() -> None:
    event = {"event": "many", "level": "warning", "event_id": "abc"}
    payload = encode_event({**event, **{f"k{i}": i for i in range(50_000)}})
    fitted = fit_event(payload, 10_000)

    assert {**event, "truncated_fields": {"*": len(payload)}} == decode_event(fitted)
    assert fit_event(b'{"event":"small"}', 10_000) == b'{"event":"small"}'
