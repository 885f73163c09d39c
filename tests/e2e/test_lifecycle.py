"""End to end: enricher start-up, shutdown and health through the container."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from structlog.typing import EventDict, WrappedLogger

from enrichlog.container import LoggingContainer, configure_logging, get_logger
from enrichlog.enricher import AsyncEnricher
from enrichlog.settings import LoggingSettings
from tests.helpers import read_lines

ERRORS = "enrichment_errors"


def configure(
    log_file: Path, enrichers: Iterable[object] = (), **overrides: Any
) -> LoggingContainer:
    """``configure_logging`` writing JSON lines to ``log_file``, inline."""
    overrides.setdefault("delivery", "inline")
    return configure_logging(enrichers=list(enrichers), output=str(log_file), **overrides)


class Counting(AsyncEnricher):
    """Counts its lifecycle calls; appends its name to ``stopped`` on shutdown."""

    def __init__(self, stopped: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.startups = 0
        self.shutdowns = 0
        self.stopped = stopped if stopped is not None else []

    async def _startup(self) -> None:
        await asyncio.sleep(0)
        self.startups += 1

    async def _shutdown(self) -> None:
        await asyncio.sleep(0)
        self.shutdowns += 1
        self.stopped.append(self.name)

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict[self.name] = "ok"
        return event_dict


class FailsToStart(AsyncEnricher):
    name = "broken"

    async def _startup(self) -> None:
        raise ConnectionRefusedError("database at db:5432 refused")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict["broken_ran"] = True
        return event_dict


def counts(enricher: Counting) -> tuple[int, int]:
    return (enricher.startups, enricher.shutdowns)


# -- exactly once ----------------------------------------------------------------


def test_configure_starts_each_enricher_once(log_file: Path) -> None:
    enricher = Counting(name="user")

    configure(log_file, [enricher])
    get_logger().info("one")
    get_logger().info("two")

    assert (1, 0) == counts(enricher)


def test_shutdown_stops_each_enricher_once_even_when_called_twice(
    log_file: Path,
) -> None:
    enricher = Counting(name="user")
    container = configure(log_file, [enricher])

    container.shutdown()
    container.shutdown()

    assert (1, 1) == counts(enricher)


def test_reconfigure_shuts_the_previous_enrichers_down_once(log_file: Path, tmp_path: Path) -> None:
    first = [Counting(name="a"), Counting(name="b", dependencies=["a"])]
    second = [Counting(name="a"), Counting(name="b", dependencies=["a"])]
    configure(log_file, first)

    container = configure(tmp_path / "second.log", second)
    while_second_runs = [counts(e) for e in (*first, *second)]
    container.shutdown()

    assert (
        [(1, 1), (1, 1), (1, 0), (1, 0)],
        [(1, 1), (1, 1), (1, 1), (1, 1)],
    ) == (while_second_runs, [counts(e) for e in (*first, *second)])


def test_reconfigure_with_the_same_instance_restarts_it_once_per_container(
    log_file: Path, tmp_path: Path
) -> None:
    enricher = Counting(name="user")
    configure(log_file, [enricher])
    configure(tmp_path / "second.log", [enricher])

    get_logger().info("after restart")

    assert ((2, 1), [("after restart", "ok", None)]) == (
        counts(enricher),
        [(ln["event"], ln["user"], ln.get(ERRORS)) for ln in read_lines(tmp_path / "second.log")],
    )


def test_enrichers_start_on_the_runtime_thread(log_file: Path) -> None:
    seen: list[str] = []

    class RecordsThread(Counting):
        async def _startup(self) -> None:
            seen.append(threading.current_thread().name)

    configure(log_file, [RecordsThread(name="user")])

    assert ["enrichlog-runtime"] == seen


def test_pool_opened_at_startup_is_usable_by_every_event(log_file: Path) -> None:
    class LoopBound(AsyncEnricher):
        async def _startup(self) -> None:
            self.lock = asyncio.Lock()
            self.loop = asyncio.get_running_loop()

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            async with self.lock:
                event_dict["same_loop"] = asyncio.get_running_loop() is self.loop
            return event_dict

    configure(log_file, [LoopBound()])
    log = get_logger()

    log.info("one")
    log.info("two")

    assert [True, True] == [ln["same_loop"] for ln in read_lines(log_file)]


# -- concurrency of start-up ---------------------------------------------------------


def test_startups_run_concurrently(log_file: Path) -> None:
    # Each start-up waits for the other to begin: sequential start-ups would
    # time out, and the enricher would be marked unavailable.
    a_started, b_started = asyncio.Event(), asyncio.Event()

    class WaitsForPeer(Counting):
        def __init__(self, mine: asyncio.Event, peer: asyncio.Event, **kw: Any):
            super().__init__(**kw)
            self.mine, self.peer = mine, peer

        async def _startup(self) -> None:
            self.mine.set()
            await asyncio.wait_for(self.peer.wait(), timeout=2)

    container = configure(
        log_file,
        [
            WaitsForPeer(a_started, b_started, name="a"),
            WaitsForPeer(b_started, a_started, name="b"),
        ],
    )

    assert {"a": True, "b": True} == {
        name: view["available"] for name, view in container.health().items()
    }


async def test_concurrent_startup_calls_run_startup_once() -> None:
    enricher = Counting(name="user")

    await asyncio.gather(*(enricher.startup() for _ in range(10)))

    assert (1, 0, True) == (*counts(enricher), enricher.is_started)


async def test_concurrent_shutdown_calls_run_shutdown_once() -> None:
    enricher = Counting(name="user")
    await enricher.startup()

    await asyncio.gather(*(enricher.shutdown() for _ in range(10)))

    assert (1, 1, False) == (*counts(enricher), enricher.is_started)


async def test_shutdown_before_startup_does_not_call_shutdown_hook() -> None:
    enricher = Counting(name="user")

    await enricher.shutdown()

    assert (0, 0) == counts(enricher)


async def test_failed_startup_can_be_retried() -> None:
    class FailsOnce(Counting):
        async def _startup(self) -> None:
            self.startups += 1
            if self.startups == 1:
                raise OSError("not yet")

    enricher = FailsOnce(name="user")
    with pytest.raises(OSError, match="not yet"):
        await enricher.startup()

    await enricher.startup()

    assert (2, True) == (enricher.startups, enricher.is_started)


# -- start-up failure -------------------------------------------------------------


def test_startup_failure_marks_the_enricher_unavailable_and_others_work(
    log_file: Path,
) -> None:
    configure(log_file, [FailsToStart(), Counting(name="user")])

    get_logger().info("hello")

    assert [("ok", False, {"broken": "unavailable"})] == [
        (ln["user"], "broken_ran" in ln, ln[ERRORS]) for ln in read_lines(log_file)
    ]


def test_startup_failure_is_reported_once_through_the_enrichlog_logger(
    log_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="enrichlog")
    configure(log_file, [FailsToStart(), Counting(name="user")])
    log = get_logger()

    log.info("one")
    log.info("two")
    reports = [r for r in caplog.records if r.name == "enrichlog" and "broken" in r.getMessage()]

    assert (1, logging.ERROR, True) == (
        len(reports),
        reports[0].levelno,
        "ConnectionRefusedError" in reports[0].getMessage(),
    )


def test_startup_failure_leaves_the_container_running(log_file: Path) -> None:
    container = configure(log_file, [FailsToStart()])

    get_logger().info("hello")

    assert (True, ["hello"]) == (
        container.running,
        [ln["event"] for ln in read_lines(log_file)],
    )


def test_enricher_that_is_never_started_is_not_shut_down(log_file: Path) -> None:
    class FailsThenCounts(Counting):
        async def _startup(self) -> None:
            raise RuntimeError("down")

    enricher = FailsThenCounts(name="user")
    container = configure(log_file, [enricher])

    container.shutdown()

    assert (0, 0) == counts(enricher)


def test_shutdown_failure_does_not_stop_the_others_shutting_down(
    log_file: Path,
) -> None:
    class FailsToStop(Counting):
        async def _shutdown(self) -> None:
            raise RuntimeError("cannot close")

    healthy = Counting(name="healthy")
    container = configure(log_file, [healthy, FailsToStop(name="sticky")])

    container.shutdown()

    assert (1, 1) == counts(healthy)


# -- order -------------------------------------------------------------------


def test_shutdown_runs_in_reverse_dependency_order(log_file: Path) -> None:
    stopped: list[str] = []
    # Registered dependants first, so that reverse registration order would
    # get it wrong.
    container = configure(
        log_file,
        [
            Counting(stopped, name="c", dependencies=["b"]),
            Counting(stopped, name="b", dependencies=["a"]),
            Counting(stopped, name="a"),
        ],
    )

    container.shutdown()

    assert ["c", "b", "a"] == stopped


def test_shutdown_writes_events_still_pending(log_file: Path) -> None:
    class Slow(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            await asyncio.sleep(0.05)
            event_dict["slow"] = True
            return event_dict

    container = configure(log_file, [Slow()])

    async def log_inside_loop() -> None:
        for n in range(5):
            get_logger().info("queued", n=n)

    asyncio.run(log_inside_loop())
    report = container.shutdown(timeout=10)

    assert ({"written": 5, "dropped": 0, "pending": 0}, [0, 1, 2, 3, 4]) == (
        {key: report[key] for key in ("written", "dropped", "pending")},
        [ln["n"] for ln in read_lines(log_file)],
    )


def test_shutdown_report_counts_written_events(log_file: Path) -> None:
    container = configure(log_file, [Counting(name="user")])
    for n in range(3):
        get_logger().info("event", n=n)

    report = container.shutdown()

    assert {"written": 3, "dropped": 0, "pending": 0} == {
        key: report[key] for key in ("written", "dropped", "pending")
    }


def test_container_context_manager_shuts_down_on_exit(log_file: Path) -> None:
    enricher = Counting(name="user")
    settings = LoggingSettings(output=str(log_file), delivery="inline")

    with LoggingContainer(settings, [enricher]) as container:
        get_logger().info("inside")

    assert ((1, 1), False, ["inside"]) == (
        counts(enricher),
        container.running,
        [ln["event"] for ln in read_lines(log_file)],
    )


def test_shutdown_runs_at_interpreter_exit(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from enrichlog.container import configure_logging, get_logger
        from enrichlog.enricher import AsyncEnricher

        class Marks(AsyncEnricher):
            async def _shutdown(self):
                Path({str(marker)!r}).write_text("stopped")

            async def enrich_async(self, logger, method_name, event_dict):
                return event_dict

        configure_logging(
            enrichers=[Marks()], output={str(tmp_path / "out.log")!r},
            delivery="inline",
        )
        get_logger().info("bye")
        """
    )

    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)

    assert "stopped" == marker.read_text()


def test_an_exit_that_cannot_drain_in_time_waits_one_shutdown_timeout(tmp_path: Path) -> None:
    # Found by an outside tester: the flush when the interpreter starts to
    # exit waited shutdown_timeout, then the atexit shutdown waited it again.
    script = textwrap.dedent(
        f"""
        import asyncio, atexit, json, sys, time
        from enrichlog.container import configure_logging, get_logger
        from enrichlog.enricher import AsyncEnricher

        class Slow(AsyncEnricher):
            timeout = 5.0
            max_concurrency = 4

            async def enrich_async(self, logger, method_name, event_dict):
                await asyncio.sleep(0.5)
                return event_dict

        ended = {{}}
        # Registered first, so it runs last: after enrichlog's own exit.
        atexit.register(lambda: print(json.dumps(time.monotonic() - ended["at"])))
        configure_logging(
            enrichers=[Slow()],
            output={str(tmp_path / "out.log")!r},
            shutdown_timeout=4.0,
            queue_size=2000,
        )
        for index in range(2000):
            get_logger().info("queued", index=index)
        ended["at"] = time.monotonic()
        """
    )

    child = subprocess.run(
        [sys.executable, "-c", script], check=True, timeout=60, capture_output=True, text=True
    )

    assert 2000 == len((tmp_path / "out.log").read_text().splitlines())
    # About 4 s (the flush and the shutdown share it), not 8; generous for a
    # busy machine.
    assert float(child.stdout.split()[-1]) < 6.5


def test_events_of_threads_that_log_after_main_returns_are_still_enriched(
    tmp_path: Path,
) -> None:
    # Found by a review of the fix above: the time the application's threads
    # logged after main returned counted against the exit's shutdown, which
    # then had a tenth of shutdown_timeout: their events went unenriched.
    script = textwrap.dedent(
        f"""
        import asyncio, threading, time
        from enrichlog.container import configure_logging, get_logger
        from enrichlog.enricher import AsyncEnricher

        class Slow(AsyncEnricher):
            async def enrich_async(self, logger, method_name, event_dict):
                await asyncio.sleep(0.3)
                event_dict["slow"] = "done"
                return event_dict

        configure_logging(
            enrichers=[Slow()],
            output={str(tmp_path / "out.log")!r},
            shutdown_timeout=3.0,
            delivery="background",
        )

        def late():
            time.sleep(3.5)  # past shutdown_timeout after main returned
            for index in range(5):
                get_logger().info("late", index=index)

        threading.Thread(target=late).start()
        """
    )

    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)

    lines = [json.loads(line) for line in (tmp_path / "out.log").read_text().splitlines()]
    assert ["done"] * 5 == [line.get("slow") for line in lines]


# -- health ----------------------------------------------------------------------


def test_health_shows_each_enricher(log_file: Path) -> None:
    container = configure(log_file, [Counting(name="user"), FailsToStart()])

    health = container.health()

    assert {
        "user": {
            "started": True,
            "healthy": True,
            "available": True,
            "last_error": None,
            "breaker": "closed",
        },
        "broken": {
            "started": False,
            "healthy": False,
            "available": False,
            "last_error": "startup failed: ConnectionRefusedError",
            "breaker": "closed",
        },
    } == health


def test_health_after_shutdown_shows_enrichers_stopped(log_file: Path) -> None:
    container = configure(log_file, [Counting(name="user")])

    container.shutdown()

    assert {"started": False, "available": False} == {
        key: container.health()["user"][key] for key in ("started", "available")
    }


async def test_health_check_exception_counts_as_unhealthy() -> None:
    class Sick(Counting):
        async def _health_check(self) -> bool:
            raise TimeoutError("ping timed out")

    enricher = Sick(name="user")
    await enricher.startup()

    healthy = await enricher.health_check()

    assert (False, True, False) == (healthy, enricher.is_started, enricher.is_healthy)


async def test_health_check_before_startup_is_false() -> None:
    enricher = Counting(name="user")

    assert False is await enricher.health_check()


# -- hostile lifecycle hooks ----------------------------------------------------------


class Escape(BaseException):
    """A BaseException that is neither an Exception nor a cancellation."""


def outcome_of(action: Any) -> str | None:
    """Run ``action``; the name of any BaseException that escaped it (caught
    here so that a KeyboardInterrupt cannot end the test session)."""
    try:
        action()
    except BaseException as exc:
        return type(exc).__name__
    return None


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit, Escape])
def test_startup_raising_base_exception_marks_only_that_enricher_unavailable(
    log_file: Path, error_type: type[BaseException]
) -> None:
    class Hostile(Counting):
        async def _startup(self) -> None:
            raise error_type

    escaped = outcome_of(
        lambda: configure(log_file, [Hostile(name="hostile"), Counting(name="user")])
    )
    if escaped is None:
        get_logger().info("hello")

    assert (None, [("ok", {"hostile": "unavailable"})]) == (
        escaped,
        [(ln["user"], ln[ERRORS]) for ln in read_lines(log_file)],
    )


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit, Escape])
def test_shutdown_raising_base_exception_still_shuts_the_others_down(
    log_file: Path, error_type: type[BaseException]
) -> None:
    class Hostile(Counting):
        async def _shutdown(self) -> None:
            raise error_type

    healthy = Counting(name="healthy")
    container = configure(log_file, [healthy, Hostile(name="hostile")])

    escaped = outcome_of(lambda: container.shutdown(timeout=2))

    assert (None, (1, 1)) == (escaped, counts(healthy))


# -- concurrency of shutdown ------------------------------------------------------------


def test_concurrent_container_shutdowns_stop_each_enricher_once(
    log_file: Path,
) -> None:
    enricher = Counting(name="user")
    container = configure(log_file, [enricher])
    start = threading.Barrier(10)

    def stop() -> None:
        start.wait(timeout=10)
        container.shutdown()

    threads = [threading.Thread(target=stop) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert (1, 1) == counts(enricher)


async def test_ashutdown_stops_enrichers_and_reports(log_file: Path) -> None:
    enricher = Counting(name="user")
    container = configure(log_file, [enricher])
    await get_logger().ainfo("hello")

    report = await container.ashutdown()

    assert ((1, 1), {"written": 1, "dropped": 0, "pending": 0}) == (
        counts(enricher),
        {key: report[key] for key in ("written", "dropped", "pending")},
    )


async def test_async_context_manager_starts_and_stops_the_container(
    log_file: Path,
) -> None:
    enricher = Counting(name="user")
    settings = LoggingSettings(output=str(log_file), delivery="inline")

    async with LoggingContainer(settings, [enricher]):
        await get_logger().ainfo("inside")

    assert ((1, 1), [("inside", "ok")]) == (
        counts(enricher),
        [(ln["event"], ln["user"]) for ln in read_lines(log_file)],
    )
