"""Scale-out tests: a real NATS server with JetStream (skipped when it is not
reachable, failed instead under ``ENRICHLOG_REQUIRE_SERVICES=1``), worker
processes started as a user would, and a stream per test."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.services import require_service, run_async

NATS_HOST = os.environ.get("ENRICHLOG_TEST_NATS_HOST", "127.0.0.1")
NATS_PORT = int(os.environ.get("ENRICHLOG_TEST_NATS_PORT", "4222"))
ROOT = Path(__file__).parent.parent.parent


@dataclass
class Streams:
    """One test's stream, subject and dead-letter stream."""

    stream: str
    subject: str
    port: int = NATS_PORT

    def uri(self, port: int | None = None, **query: str) -> str:
        extra = "".join(f"&{key}={value}" for key, value in query.items())
        return (
            f"nats://{NATS_HOST}:{port or self.port}?stream={self.stream}"
            f"&subject={self.subject}{extra}"
        )

    @property
    def dlq_stream(self) -> str:
        return f"{self.stream}_DLQ"


@pytest.fixture
def nats_server() -> None:
    """Skip (or fail in CI) when NATS is not reachable."""
    require_service("NATS", NATS_HOST, NATS_PORT)


async def _delete(names: list[str]) -> None:
    import nats
    from nats.js.errors import NotFoundError

    client = await nats.connect(f"nats://{NATS_HOST}:{NATS_PORT}")
    try:
        js = client.jetstream()
        for name in names:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
    finally:
        await client.close()


#: Every stream name the fixtures handed out in this run.
_HANDED_OUT: set[str] = set()


@pytest.fixture(scope="session", autouse=True)
def _no_stream_left() -> Iterator[None]:
    """At the end of the run, delete every stream handed out once more: a
    producer a test left running (its publisher re-creates its stream when
    it reconnects) must not leave one behind on the shared server."""
    yield
    if _HANDED_OUT:
        with contextlib.suppress(Exception):  # the server is gone: nothing to clean
            run_async(_delete(sorted(_HANDED_OUT)))


@pytest.fixture
def streams(nats_server: None) -> Iterator[Streams]:
    """A stream and subject of this test's own, deleted afterwards."""
    suffix = uuid.uuid4().hex[:10]
    names = Streams(stream=f"T{suffix}", subject=f"test.{suffix}.logs")
    _HANDED_OUT.update((names.stream, names.dlq_stream))
    yield names
    run_async(_delete([names.stream, names.dlq_stream]))


@pytest.fixture
def other_streams(nats_server: None) -> Iterator[Streams]:
    """A second stream and subject of this test's own (another application)."""
    suffix = uuid.uuid4().hex[:10]
    names = Streams(stream=f"U{suffix}", subject=f"test.{suffix}.other")
    _HANDED_OUT.update((names.stream, names.dlq_stream))
    yield names
    run_async(_delete([names.stream, names.dlq_stream]))


def js_call(fn: Callable[[Any], Any]) -> Any:
    """``await fn(js)`` on a connection of its own; its result."""

    async def call() -> Any:
        import nats

        client = await nats.connect(f"nats://{NATS_HOST}:{NATS_PORT}")
        try:
            return await fn(client.jetstream())
        finally:
            await client.close()

    return run_async(call())


def stream_event_ids(stream: str) -> list[str]:
    """The ``event_id`` of every message in ``stream``, in order."""

    async def read(js: Any) -> list[str]:
        from nats.js.errors import NotFoundError

        info = await js.stream_info(stream)
        ids = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                message = await js.get_msg(stream, seq=seq)
            except NotFoundError:
                continue
            ids.append(json.loads(message.data)["event_id"])
        return ids

    result: list[str] = js_call(read)
    return result


def worker_env(streams: Streams, output: Path | str, **settings: str) -> dict[str, str]:
    """The environment of a worker process: this one's, less ENRICHLOG_*,
    plus the transport, output and ``settings`` (ENRICHLOG_<NAME>)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICHLOG_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["ENRICHLOG_TRANSPORT"] = streams.uri()
    env["ENRICHLOG_OUTPUT"] = str(output)
    env.update({f"ENRICHLOG_{key.upper()}": value for key, value in settings.items()})
    return env


class WorkerProcess:
    """``python -m enrichlog worker`` as a user starts it."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._stderr = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "enrichlog", "worker", "--stats-interval", "1", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._stderr.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self._stderr.close()

    def final_metrics(self) -> dict[str, Any]:
        """The last metrics line the worker printed."""
        lines = [
            json.loads(line)["enrichlog_worker"]
            for line in self.log.read_text().splitlines()
            if line.startswith('{"enrichlog_worker": {')
        ]
        assert lines, self.log.read_text()
        metrics: dict[str, Any] = lines[-1]
        return metrics


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes; any still running at the end are killed."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str], *args: str) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.stderr", *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.kill()


def lines_of(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (none when it does not exist yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
