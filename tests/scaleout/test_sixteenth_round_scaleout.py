"""Scale-out cases found by the sixteenth outside attack round (testers with
only the README and the docs), each kept as a test."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import Streams, js_call, wait_until, worker_env

pytestmark = pytest.mark.services


def test_a_worker_honours_startup_timeout(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # A worker waited a fixed 30 s for a stuck _startup, whatever
    # startup_timeout said (an application waits startup_timeout).
    env = worker_env(streams, tmp_path / "out.jsonl", startup_timeout="1")
    started = time.monotonic()
    worker = start_worker(env, "--enrichers", "tests.scaleout.worker_enrichers:stuck")
    wait_until(lambda: "started" in worker.log.read_text(), 25, "the worker to start")
    assert time.monotonic() - started < 25
    assert "enrichers still starting" in worker.log.read_text()
    assert 0 == worker.stop()


@pytest.mark.parametrize(
    ("shape", "said"),
    [
        ({"deliver_subject": "t16.inbox"}, "is a push consumer (deliver_subject 't16.inbox')"),
        ({"ack_policy": "none"}, "acknowledges with ack_policy 'none'"),
        # Found by the re-test: every event dead-lettered without its payload.
        ({"headers_only": True}, "delivers headers only (headers_only)"),
    ],
)
def test_a_worker_refuses_a_consumer_it_could_not_work_with(
    streams: Streams, tmp_path: Path, start_worker: Any, shape: dict[str, Any], said: str
) -> None:
    # Made by someone else with the workers' name: a push consumer gave the
    # worker nothing, for good and silently ("consumed: 0"); one without
    # acknowledgements lost the batch a killed worker had in flight (512 of
    # 1,000 events).
    async def make(js: Any) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig

        await js.add_stream(name=streams.stream, subjects=[streams.subject])
        config = ConsumerConfig(
            durable_name="enrichlog",
            filter_subject=streams.subject,
            deliver_subject=shape.get("deliver_subject"),
            ack_policy=AckPolicy(shape.get("ack_policy", "explicit")),
            headers_only=shape.get("headers_only"),
        )
        await js.add_consumer(streams.stream, config)

    js_call(make)
    worker = start_worker(worker_env(streams, tmp_path / "out.jsonl"))
    assert 1 == worker.process.wait(30)
    text = worker.log.read_text()
    assert f"consumer 'enrichlog' of stream {streams.stream!r} {said}" in text
    assert "?consumer=" in text


def test_a_worker_stops_at_once_on_sigterm_while_its_enrichers_start(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Found by the re-test: a worker waiting startup_timeout (60 s) for a
    # stuck _startup ignored SIGTERM until the wait ran out (56.6 s).
    env = worker_env(streams, tmp_path / "out.jsonl", startup_timeout="60")
    worker = start_worker(env, "--enrichers", "tests.scaleout.worker_enrichers:stuck")
    time.sleep(2.0)  # starting: the stuck start-up holds it
    assert "started" not in worker.log.read_text()
    stopped = time.monotonic()

    assert 0 == worker.stop(timeout=30)
    assert time.monotonic() - stopped < 20
