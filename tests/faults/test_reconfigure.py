"""Held before, and its adversarial twin: reconfiguring while other threads
log, and many threads reconfiguring at once. Every configuration writes to
the same file, so every event logged must be in it exactly once."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import enrichlog.container as container_module
from enrichlog import AsyncEnricher, LoggingContainer, SyncEnricher, configure_logging, get_logger
from tests.helpers import read_lines

PRODUCERS = 4


class Tag(AsyncEnricher):
    name = "tag"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        event_dict["tag"] = True
        return event_dict


class Stamp(SyncEnricher):
    name = "stamp"

    def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict["stamp"] = True
        return event_dict


def _configure(log_file: Path, round_: int) -> LoggingContainer:
    return configure_logging(
        enrichers=[Tag(), Stamp()] if round_ % 3 else [Tag()],
        output=str(log_file),
        delivery=("background", "inline")[round_ % 2],
        handle_sigterm=False,  # configured off the main thread: no warning wanted
    )


class Producers:
    """Threads that log until stopped, through a logger bound before any
    reconfiguration, counting what they logged."""

    def __init__(self) -> None:
        self.log = get_logger()
        self.stop = threading.Event()
        self.logged = [0] * PRODUCERS
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(PRODUCERS)]

    def _run(self, number: int) -> None:
        while not self.stop.is_set():
            try:
                self.log.info("e", t=number, i=self.logged[number])
            except Exception as exc:
                self.errors.append(repr(exc))
            self.logged[number] += 1
            if self.logged[number] % 4 == 0:
                # A steady stream the runtime keeps up with (a flood makes each
                # reconfiguration drain thousands of queued events first).
                time.sleep(0.002)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> int:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        return sum(self.logged)


def _events(log_file: Path) -> Counter[tuple[int, int]]:
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    return Counter((line["t"], line["i"]) for line in lines)


def test_reconfiguring_while_threads_log_writes_every_event_exactly_once(log_file: Path) -> None:
    _configure(log_file, 0)
    producers = Producers()

    producers.start()
    for round_ in range(1, 31):
        _configure(log_file, round_)
    logged = producers.finish()
    assert container_module._current is not None
    container_module._current.shutdown()

    events = _events(log_file)
    assert [] == producers.errors
    assert logged > 0
    assert (logged, logged) == (len(events), sum(events.values()))


def test_reconfiguring_while_threads_log_counts_every_line_in_some_container(
    log_file: Path,
) -> None:
    # Lines written while one container hands over to the next (threads
    # still logging between the first one's last count and the next one's
    # first) count for the next one: they used to count for neither.
    containers = [_configure(log_file, 0)]
    producers = Producers()

    producers.start()
    for round_ in range(1, 11):
        time.sleep(0.02)
        containers.append(_configure(log_file, round_))
    logged = producers.finish()
    containers[-1].shutdown()

    metrics = [container.metrics() for container in containers]
    assert (logged, logged, logged) == (
        sum(_events(log_file).values()),
        sum(m["written"] for m in metrics),
        sum(m["events_in"] for m in metrics),
    )


def test_lines_written_after_a_shutdown_count_for_no_later_container(tmp_path: Path) -> None:
    # Found by an outside tester: a line logged after the application shut a
    # container down (no container running) counted for the next one, to
    # another output (written 3 for the 2 lines it wrote).
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    shut = configure_logging(output=str(first))
    get_logger().info("a1")
    shut.shutdown()
    get_logger().info("between")  # no container runs
    replacing = configure_logging(output=str(second))
    get_logger().info("b1")
    get_logger().info("b2")
    report = replacing.shutdown()

    assert (1, 2) == (shut.metrics()["written"], report["written"])
    assert (2, 2) == (len(read_lines(second)), replacing.metrics()["events_in"])


def test_many_threads_reconfiguring_at_once_leave_one_running_container(log_file: Path) -> None:
    _configure(log_file, 0)
    producers = Producers()
    made: list[LoggingContainer] = []
    errors: list[str] = []

    def reconfigure(offset: int) -> None:
        for round_ in range(5):
            try:
                made.append(_configure(log_file, offset + round_))
            except Exception as exc:
                errors.append(repr(exc))

    reconfigurers = [threading.Thread(target=reconfigure, args=(n,)) for n in range(8)]
    producers.start()
    for thread in reconfigurers:
        thread.start()
    for thread in reconfigurers:
        thread.join(timeout=60)
    logged = producers.finish()
    running = [container for container in made if container.running]
    current = container_module._current
    assert current is not None
    current.shutdown()

    events = _events(log_file)
    runtimes = [t.name for t in threading.enumerate() if t.name.startswith("enrichlog")]
    assert ([], []) == (errors, producers.errors)
    assert [current] == running
    assert logged > 0
    assert (logged, logged) == (len(events), sum(events.values()))
    assert [] == runtimes
