"""Found by the ninth outside attack round (testers with only the README
and the docs: the ASGI integration and the stdlib bridge, the loop runtime,
metrics and multiple processes), each kept as a test. (The others of that
round are kept beside the behaviour they test: the spool, the ASGI
middleware and lifespan.)"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, configure_logging, get_logger


class Slow(AsyncEnricher):
    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.002)
        event_dict["slow"] = True
        return event_dict


def test_dropped_events_and_their_kinds_agree_in_every_snapshot() -> None:
    # dropped was read from one look at the pipeline and dropped_by_kind from
    # another (two in metrics(), and two reads in the pipeline's own), so a
    # snapshot taken while events were evicted could disagree with itself by
    # thousands; Prometheus showed it too.
    container = configure_logging(
        enrichers=[Slow()], output="/dev/null", queue_size=16, overflow="drop_old"
    )
    log = get_logger()
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            log.info("flood")

    threads = [threading.Thread(target=flood) for _ in range(2)]
    for thread in threads:
        thread.start()
    disagreeing, snapshots, deadline = [], 0, time.monotonic() + 1.5
    try:
        while time.monotonic() < deadline:
            metrics = container.metrics()
            snapshots += 1
            if metrics["dropped"] != sum(metrics["dropped_by_kind"].values()):
                disagreeing.append((metrics["dropped"], dict(metrics["dropped_by_kind"])))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        container.shutdown()

    assert container.metrics()["dropped"] > 0  # the queue did overflow
    assert [] == disagreeing, f"{len(disagreeing)} of {snapshots} snapshots"


class RaisesGeneratorExit(AsyncEnricher):
    def __init__(self, where: str) -> None:
        super().__init__(name=f"exits_in_{where}")
        self.where = where

    async def _startup(self) -> None:
        if self.where == "startup":
            raise GeneratorExit("its own")

    async def _shutdown(self) -> None:
        if self.where == "shutdown":
            raise GeneratorExit("its own")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict[self.name] = True
        return event_dict


@pytest.mark.parametrize("runtime", ["thread", "loop"])
def test_an_enricher_raising_generator_exit_in_startup_is_skipped_not_raised(
    runtime: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It was taken for the close of an abandoned coroutine and went on out:
    # configure_logging() (or astartup()) raised GeneratorExit, and no
    # container was left: later lines went to structlog's default output.
    output = tmp_path / "out.log"

    async def main() -> None:
        container = configure_logging(
            enrichers=[RaisesGeneratorExit("startup"), Slow()], runtime=runtime, output=output
        )
        await container.astartup()
        await get_logger().ainfo("hello")
        await container.ashutdown()

    asyncio.run(main())

    (line,) = [json.loads(text) for text in output.read_text().splitlines()]
    assert {"slow": True, "enrichment_errors": {"exits_in_startup": "unavailable"}}.items() <= (
        line.items()
    )
    assert "failed to start (GeneratorExit: its own)" in caplog.text


def test_an_enricher_raising_generator_exit_in_shutdown_fails_its_stop_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # shutdown() raised GeneratorExit instead of returning its report, and
    # configure_logging() replacing such a container raised it too, leaving
    # no container installed.
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    container = configure_logging(enrichers=[RaisesGeneratorExit("shutdown")], output=first)
    get_logger().info("one")

    replacement = configure_logging(enrichers=[Slow()], output=second)
    get_logger().info("two")
    report = replacement.shutdown()

    assert replacement is not container
    assert (1, 1) == (len(first.read_text().splitlines()), report["written"])
    assert json.loads(second.read_text())["slow"] is True
    assert "failed to shut down cleanly (GeneratorExit: its own)" in caplog.text


def test_a_path_object_is_a_file_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Refused until now ("a PosixPath cannot be an output"), though it names
    # a file path; Path("stdout") names a file, not standard output.
    monkeypatch.chdir(tmp_path)
    for output in (tmp_path / "app.log", Path("stdout")):
        container = configure_logging(output=output)
        get_logger().info("to a path", output=str(output))
        container.shutdown()

    assert "to a path" == json.loads((tmp_path / "app.log").read_text())["event"]
    assert "stdout" == json.loads((tmp_path / "stdout").read_text())["output"]


def test_a_loop_closed_without_asyncio_runs_ending_leaves_nothing_waiting(
    tmp_path: Path,
) -> None:
    # run_until_complete() then close(): no task was cancelled, so nothing
    # wrote the pending events; later log calls queued behind them, blocked
    # a second each once the queue was full and were then dropped (20 of
    # 120 with queue_size=100), and ainfo() on a new loop waited 7 s.
    output = tmp_path / "out.log"

    async def start() -> Any:
        container = configure_logging(
            enrichers=[Slow()], runtime="loop", output=output, queue_size=10
        )
        await container.astartup()
        await get_logger().ainfo("inside")
        return container

    loop = asyncio.new_event_loop()
    container = loop.run_until_complete(start())
    loop.close()
    started = time.monotonic()
    for index in range(30):
        get_logger().info("after the close", index=index)
    asyncio.run(get_logger().ainfo("on another loop"))
    seconds = time.monotonic() - started
    lines = [json.loads(text) for text in output.read_text().splitlines()]
    container.shutdown()

    assert seconds < 5.0
    assert 0 == container.metrics()["dropped"]
    assert ["inside", *["after the close"] * 30, "on another loop"] == [
        line["event"] for line in lines
    ]
    assert {"slow": "unavailable"} == lines[-1]["enrichment_errors"]


def test_events_queued_for_a_loop_closed_before_it_took_them_are_flushed(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.log"

    async def start() -> Any:
        container = configure_logging(enrichers=[Slow()], runtime="loop", output=output)
        await container.astartup()
        return container

    loop = asyncio.new_event_loop()
    container = loop.run_until_complete(start())
    for index in range(3):  # the loop is not running: they wait for it
        get_logger().info("queued", index=index)
    loop.close()

    flushed = container.flush(timeout=5)

    assert flushed
    assert [0, 1, 2] == [json.loads(text)["index"] for text in output.read_text().splitlines()]
    container.shutdown()


class Pooled(AsyncEnricher):
    """Holds a "pool" that its _shutdown closes, awaiting (as a real one does)."""

    def __init__(self, hang: bool = False) -> None:
        super().__init__(name="pooled")
        self.hang = hang
        self.closed_on: asyncio.AbstractEventLoop | None = None

    async def _shutdown(self) -> None:
        await asyncio.sleep(3600 if self.hang else 0.01)
        self.closed_on = asyncio.get_running_loop()

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict["pooled"] = True
        return event_dict


def test_enrichers_are_shut_down_on_the_loop_when_asyncio_run_ends_without_a_shutdown(
    tmp_path: Path,
) -> None:
    # Their _shutdown never ran (not when the loop ended, not at exit, not on
    # a later shutdown()): real PostgreSQL and Redis pools were left open
    # ("ResourceWarning: unclosed resource <TCPTransport>").
    enricher, loops = Pooled(), []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        container = configure_logging(
            enrichers=[enricher], runtime="loop", output=tmp_path / "out.log"
        )
        await container.astartup()
        await get_logger().ainfo("served")

    asyncio.run(main())

    assert loops == [enricher.closed_on]


def test_a_shutdown_hook_that_hangs_delays_asyncio_run_by_the_shutdown_timeout_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        container = configure_logging(
            enrichers=[Pooled(hang=True)],
            runtime="loop",
            output=tmp_path / "out.log",
            shutdown_timeout=0.3,
        )
        await container.astartup()
        get_logger().info("served")

    started = time.monotonic()
    asyncio.run(main())

    assert time.monotonic() - started < 5.0
    assert "did not shut down within 0.3s" in caplog.text
    assert json.loads((tmp_path / "out.log").read_text())["event"] == "served"


def test_capture_events_says_so_when_the_container_is_replaced_in_the_block() -> None:
    # Only the events logged before the configure_logging() call in the
    # block were in the list, and nothing said so.
    from enrichlog.exceptions import EnrichlogError
    from enrichlog.testing import LineSink, capture_events

    configure_logging(output=LineSink())
    capture = capture_events()
    events = capture.__enter__()
    get_logger().info("first")
    configure_logging(output=LineSink())
    get_logger().info("second")

    with pytest.raises(EnrichlogError, match="replaced the container during the block"):
        capture.__exit__(None, None, None)
    assert ["first"] == [event["event"] for event in events]


def test_an_invalid_override_of_given_settings_is_reported_once() -> None:
    # "invalid logging settings: settings: invalid logging settings: queue_size: ..."
    from enrichlog import EnricherConfigError, LoggingSettings

    with pytest.raises(EnricherConfigError) as raised:
        configure_logging(settings=LoggingSettings(), queue_size=-1)

    assert str(raised.value).startswith("invalid logging settings: queue_size: ")
    assert 1 == str(raised.value).count("invalid logging settings")


def test_a_child_forked_while_a_thread_spools_never_hangs(tmp_path: Path) -> None:
    # Found by the outside re-test: with the broker down, a child forked while
    # another thread of the parent wrote to the spool hung for good inside
    # fork() (its after-fork handler closed a buffered file whose lock that
    # thread held at the fork): 1 child in 20 to 30 with a pre-forking
    # server's traffic.
    import os
    import signal

    from enrichlog import LoggingSettings
    from enrichlog.transport import transport_for
    from enrichlog.transport.nats import NatsTransport

    # In memory where it can be (/dev/shm): a disk written this fast stalls
    # its other users (the NATS server's own storage) for seconds after.
    shm = Path("/dev/shm")
    spool_dir = (shm if shm.is_dir() else tmp_path) / f"enrichlog-test-{os.getpid()}-spool"
    transport = transport_for(
        LoggingSettings(
            transport="nats://127.0.0.1:1?stream=T&subject=t.fork",  # nobody listens
            spool_dir=str(spool_dir),
            queue_size=1,  # every event goes to the spool
            spool_max_bytes=256 << 20,  # then refused: nothing more is written
        )
    )
    assert isinstance(transport, NatsTransport)
    transport.start(wait=0.0)
    payload = b'{"big":"' + b"x" * (256 << 10) + b'"}'
    stop = threading.Event()

    def spool() -> None:
        index = 0
        while not stop.is_set():
            transport.offer(f"id{index}", payload)
            index += 1

    writer = threading.Thread(target=spool, daemon=True)
    writer.start()
    hung = 0
    try:
        for _ in range(10):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            deadline = time.monotonic() + 10
            while not os.waitpid(pid, os.WNOHANG)[0]:
                if time.monotonic() > deadline:
                    hung += 1
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.01)
    finally:
        stop.set()
        writer.join(10)
        transport.stop(1.0)
        shutil.rmtree(spool_dir, ignore_errors=True)  # up to 256 MB

    assert 0 == hung


def python(*args: object) -> subprocess.CompletedProcess[str]:
    """Run this Python with ``args`` in a process of its own (pytest's log
    capture is a stdlib handler too, and a child must end as processes do)."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


INTERRUPTING_RECORD_SCRIPT = """
import json, logging, sys
from enrichlog import configure_logging

class Interrupting:
    def __str__(self):
        raise KeyboardInterrupt
    def __repr__(self):
        return "<Interrupting>"

container = configure_logging(stdlib=True, output=sys.argv[1])
raised = []
for message, args in ((Interrupting(), ()), ("value %s", (Interrupting(),))):
    try:
        logging.getLogger("t").warning(message, *args)
    except KeyboardInterrupt:
        raised.append(True)
container.shutdown()
print(json.dumps(raised))
"""


def test_a_stdlib_record_interrupted_while_formatting_is_written_then_raised(
    tmp_path: Path,
) -> None:
    # Found by the outside re-test: Ctrl-C (or a __str__ raising KeyboardInterrupt
    # or SystemExit) while the bridge formatted a record lost the record.
    # (In a process of its own: pytest's log capture is a stdlib handler too.)
    output = tmp_path / "out.log"
    result = python("-c", INTERRUPTING_RECORD_SCRIPT, output)

    assert 0 == result.returncode, result.stderr
    assert [True, True] == json.loads(result.stdout)
    lines = [json.loads(text) for text in output.read_text().splitlines()]
    assert [("<Interrupting>", "KeyboardInterrupt"), ("value %s", "KeyboardInterrupt")] == [
        (line["event"], line["format_error"]) for line in lines
    ]


MULTIPROCESSING_TRANSPORT_SCRIPT = """
import multiprocessing, sys
from enrichlog import configure_logging, get_logger

configure_logging(
    transport="nats://127.0.0.1:1?stream=T&subject=t.mp",  # nobody listens
    spool_dir=sys.argv[1],
    output="/dev/null",
)

def work(child):
    log = get_logger()
    for index in range(50):
        log.info("child", child=child, index=index)

if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[2])
    process = context.Process(target=work, args=(0,))
    process.start()
    process.join()
    with context.Pool(1) as pool:
        pool.map(work, [1, 2])
    sys.exit(process.exitcode)
"""


def spooled_events(spool: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line.split(b"\t", 1)[1])
        for segment in spool.glob("**/*.spool")
        for line in segment.read_bytes().splitlines()
    ]


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_children_hand_every_event_to_the_transport(
    method: str, tmp_path: Path
) -> None:
    # Found by an outside tester: a multiprocessing child of an application
    # that publishes (no enricher of its own) lost every event still in its
    # transport's queue when it ended (0 of 50 spooled with the broker down,
    # 0 to 38 of 50 published with it up): no drain was registered for it.
    script = tmp_path / "app.py"  # spawn and forkserver import the main module
    script.write_text(MULTIPROCESSING_TRANSPORT_SCRIPT)
    result = python(script, tmp_path / "spool", method)

    assert 0 == result.returncode, result.stderr
    events = spooled_events(tmp_path / "spool")
    assert 150 == len(events)
    assert {(child, index) for child in range(3) for index in range(50)} == {
        (event["child"], event["index"]) for event in events
    }


FORK_DURING_SHUTDOWN_SCRIPT = """
import os, sys, threading, time
from enrichlog import configure_logging, get_logger

container = configure_logging(
    transport="nats://127.0.0.1:1?stream=T&subject=t.down",  # nobody listens
    spool_dir=sys.argv[1],
    output="/dev/null",
)
get_logger().info("parent")
shutting_down = threading.Thread(target=container.shutdown)
shutting_down.start()
while not container._shutting_down:  # the window lasts about a second
    time.sleep(0.001)
pid = os.fork()
if pid == 0:
    for index in range(50):
        get_logger().info("child", index=index)
    sys.exit(0)
shutting_down.join()
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_child_forked_while_the_parent_shuts_down_hands_its_events_to_the_transport(
    tmp_path: Path,
) -> None:
    # Found by an outside tester: with a transport, a child forked while the
    # parent was in shutdown() handed its events to a transport nothing
    # drained when it ended: 0 of 50 spooled.
    result = python("-c", FORK_DURING_SHUTDOWN_SCRIPT, tmp_path / "spool")

    assert 0 == result.returncode, result.stderr
    events = spooled_events(tmp_path / "spool")
    children = [event for event in events if event["event"] == "child"]
    assert list(range(50)) == [event["index"] for event in children]
    assert 1 == sum(event["event"] == "parent" for event in events)


def test_a_sync_enricher_names_a_keyword_it_does_not_take() -> None:
    # Found by an outside tester: a bare TypeError, with no enricher name.
    from enrichlog import EnricherConfigError, SyncEnricher

    class Redact(SyncEnricher):
        def enrich(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            return event_dict

    with pytest.raises(EnricherConfigError, match="'timeout' applies to async enrichers only"):
        Redact(timeout=1.0)
    with pytest.raises(EnricherConfigError, match="did you mean 'priority'"):
        Redact(priorty=5)


def test_enricher_metrics_read_as_a_mapping() -> None:
    # resilience.md: "EnricherMetrics, also readable as a mapping"; it was not.
    container = configure_logging(enrichers=[Slow()], output="/dev/null")
    get_logger().info("one")
    container.shutdown()

    metrics = container.metrics().enrichers["slow"]

    assert (1, 1) == (metrics["calls"], metrics["successes"])
    assert metrics.as_dict() == dict(metrics)
