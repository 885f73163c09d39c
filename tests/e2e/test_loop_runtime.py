"""``runtime="loop"``: enrichment on the application's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, EnricherConfigError, configure_logging, get_logger
from tests.helpers import read_lines


class OnTheLoop(AsyncEnricher):
    """Opens its 'pool' at start-up and checks every call runs on that loop."""

    name = "pool"

    def __init__(self, startup_seconds: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.startup_seconds = startup_seconds
        self.loop: asyncio.AbstractEventLoop | None = None
        self.threads: set[int] = set()

    async def _startup(self) -> None:
        await asyncio.sleep(self.startup_seconds)
        self.loop = asyncio.get_running_loop()

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        self.threads.add(threading.get_ident())
        event_dict["same_loop"] = asyncio.get_running_loop() is self.loop
        return event_dict


def test_starting_without_a_running_loop_is_a_configuration_error(log_file: Path) -> None:
    with pytest.raises(EnricherConfigError, match=r"runtime='loop'.*none is running"):
        configure_logging(enrichers=[OnTheLoop()], output=str(log_file), runtime="loop")


def test_a_refused_loop_runtime_leaves_the_running_container_as_it_was(log_file: Path) -> None:
    # Found by an outside tester: the error came after the running container
    # had been shut down (its enricher stopped, later events unenriched).
    running = configure_logging(enrichers=[OnTheLoop()], output=str(log_file))
    get_logger().info("before")

    with pytest.raises(EnricherConfigError, match=r"runtime='loop'.*none is running"):
        configure_logging(enrichers=[OnTheLoop()], output=str(log_file), runtime="loop")

    assert running.health()["pool"]["started"]
    get_logger().info("after")
    report = running.shutdown()
    assert 2 == report["written"]
    assert [("before", True), ("after", True)] == [  # enriched, by the running enricher
        (line["event"], line["same_loop"]) for line in read_lines(log_file)
    ]


def test_enrichers_start_and_run_on_the_applications_loop_in_its_thread(
    log_file: Path,
) -> None:
    pool = OnTheLoop()

    async def main() -> None:
        async with configure_logging(enrichers=[pool], output=str(log_file), runtime="loop"):
            log = get_logger()
            for i in range(20):
                log.info("sync", i=i)
            await log.ainfo("async")

    asyncio.run(main())

    lines = read_lines(log_file)
    assert (21, {True}, {threading.get_ident()}) == (
        len(lines),
        {line["same_loop"] for line in lines},
        pool.threads,
    )


def test_startup_does_not_block_the_loop_and_early_events_wait_for_it(log_file: Path) -> None:
    pool = OnTheLoop(startup_seconds=0.2)
    ticks: list[int] = []

    async def main() -> None:
        async def tick() -> None:
            while True:
                ticks.append(1)
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        container = configure_logging(enrichers=[pool], output=str(log_file), runtime="loop")
        get_logger().info("logged while the pool starts")
        await container.astartup()
        ticked_during_startup = len(ticks)
        await container.ashutdown()
        ticker.cancel()
        assert ticked_during_startup >= 5

    asyncio.run(main())

    assert [("logged while the pool starts", True)] == [
        (line["event"], line["same_loop"]) for line in read_lines(log_file)
    ]


def test_a_loop_that_ends_without_shutdown_loses_nothing(log_file: Path) -> None:
    class Slow(OnTheLoop):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            await asyncio.sleep(10)
            return event_dict

    async def main() -> None:
        container = configure_logging(enrichers=[Slow()], output=str(log_file), runtime="loop")
        await container.astartup()
        for i in range(5):
            get_logger().info("pending", i=i)
        # asyncio.run() returns with the five events still being enriched.

    asyncio.run(main())

    assert [(i, {"pool": "unavailable"}) for i in range(5)] == [
        (line["i"], line["enrichment_errors"]) for line in read_lines(log_file)
    ]


_BLOCKING_LEFT_PENDING = """
import asyncio, sys, time
from enrichlog import configure_logging, get_logger, register_enricher

def slow_io(logger, method_name, event_dict):
    time.sleep(0.001)
    event_dict["looked_up"] = True
    return event_dict

async def main():
    blocking = register_enricher(slow_io, name="blocking", blocking=True)
    container = configure_logging(enrichers=[blocking], runtime="loop", output=sys.argv[1])
    await container.astartup()
    await asyncio.to_thread(lambda: [get_logger().info("e", i=i) for i in range(200)])
    # main() returns with events queued and blocking calls in their threads.

asyncio.run(main())
"""


def test_a_loop_that_ends_leaves_no_call_of_a_blocking_enricher_pending(log_file: Path) -> None:
    # Found by an outside tester: asyncio reported enrichlog's own tasks
    # "destroyed but pending" (12 per run) when the loop ended meanwhile.
    child = subprocess.run(
        [sys.executable, "-c", _BLOCKING_LEFT_PENDING, str(log_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert (0, "") == (child.returncode, child.stderr)
    assert list(range(200)) == [line["i"] for line in read_lines(log_file)]


def test_ashutdown_on_the_loop_drains_every_event(log_file: Path) -> None:
    async def main() -> dict[str, int]:
        container = configure_logging(enrichers=[OnTheLoop()], output=str(log_file), runtime="loop")
        await container.astartup()
        log = get_logger()
        for i in range(200):
            log.info("e", i=i)
        return dict(await container.ashutdown())

    report = asyncio.run(main())

    lines = read_lines(log_file)
    assert ((200, 0, 0), list(range(200)), {True}) == (
        (report["written"], report["pending"], report["dropped"]),
        [line["i"] for line in lines],
        {line["same_loop"] for line in lines},
    )


def test_events_from_other_threads_are_enriched_on_the_loop(log_file: Path) -> None:
    pool = OnTheLoop()

    async def main() -> None:
        container = configure_logging(enrichers=[pool], output=str(log_file), runtime="loop")
        await container.astartup()

        def from_a_worker() -> None:
            for i in range(10):
                get_logger().info("worker", i=i)

        await asyncio.to_thread(from_a_worker)
        await container.ashutdown()

    asyncio.run(main())

    assert ([True] * 10, {threading.get_ident()}) == (
        [line["same_loop"] for line in read_lines(log_file)],
        pool.threads,
    )


def test_an_enricher_that_logs_does_not_loop_forever(log_file: Path) -> None:
    class Chatty(OnTheLoop):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            get_logger().info("from inside the enricher")
            return await super().enrich_async(logger, method_name, event_dict)

    async def main() -> None:
        container = configure_logging(enrichers=[Chatty()], output=str(log_file), runtime="loop")
        await container.astartup()
        get_logger().info("outer")
        await container.ashutdown()

    asyncio.run(main())

    assert ["from inside the enricher", "outer"] == sorted(
        line["event"] for line in read_lines(log_file)
    )


def test_sync_shutdown_on_the_loop_writes_pending_events_at_once(log_file: Path) -> None:
    class Slow(OnTheLoop):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            await asyncio.sleep(10)
            return event_dict

    async def main() -> dict[str, int]:
        container = configure_logging(enrichers=[Slow()], output=str(log_file), runtime="loop")
        await container.astartup()
        get_logger().info("pending")
        await asyncio.sleep(0)
        return dict(container.shutdown())

    report = asyncio.run(main())

    assert ((1, 0), ["pending"]) == (
        (report["written"], report["pending"]),
        [line["event"] for line in read_lines(log_file)],
    )


def test_an_interrupt_in_the_output_reaches_the_application_once_the_loop_has_written(
    log_file: Path,
) -> None:
    # A Ctrl-C landing in a line's write on the application's loop (main
    # thread): the runtime finishes its bookkeeping, the other lines are
    # written, then the interrupt leaves the loop for the application.
    from tests.integrations.test_output import SinkRaisingOnce

    sink = SinkRaisingOnce(KeyboardInterrupt)
    seen: dict[str, Any] = {}

    async def main() -> None:
        container = configure_logging(enrichers=[OnTheLoop()], output=sink, runtime="loop")
        await container.astartup()
        for name in "abcd":
            get_logger().info(name)
        seen["flushed"] = await container.aflush(5)
        seen["counts"] = (container.metrics()["written"], container.metrics()["write_failed"])
        await asyncio.sleep(1)  # the interrupt arrives first

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())

    assert ({"flushed": True, "counts": (3, 1)}, ["a", "c", "d"]) == (seen, sink.lines)


def _wait_until_available(container: Any, name: str) -> bool:
    for _ in range(500):
        if container.health()[name]["available"]:
            return True
        time.sleep(0.01)
    return False


def test_an_enricher_slower_to_start_than_startup_timeout_is_used_once_up_thread(
    log_file: Path,
) -> None:
    # Past startup_timeout the wait ends, not the start-up (it used to be
    # cancelled there and never tried again).
    container = configure_logging(
        enrichers=[OnTheLoop(startup_seconds=0.3)], output=str(log_file), startup_timeout=0.05
    )
    get_logger().info("early")
    up = _wait_until_available(container, "pool")
    get_logger().info("late")
    container.shutdown()

    lines = {line["event"]: line for line in read_lines(log_file)}
    assert (True, None, True) == (
        up,
        lines["early"].get("same_loop"),
        lines["late"].get("same_loop"),
    )


def test_an_enricher_slower_to_start_than_startup_timeout_is_used_once_up_loop(
    log_file: Path,
) -> None:
    async def main() -> tuple[bool, bool]:
        container = configure_logging(
            enrichers=[OnTheLoop(startup_seconds=0.3)],
            output=str(log_file),
            runtime="loop",
            startup_timeout=0.05,
        )
        await container.astartup()
        waited = 0
        while not container.health()["pool"]["available"] and waited < 500:
            await asyncio.sleep(0.01)
            waited += 1
        await get_logger().ainfo("late")
        available = container.health()["pool"]["available"]
        await container.ashutdown()
        return available, waited > 0

    available, waited = asyncio.run(main())

    assert (True, True, True) == (
        available,
        waited,
        read_lines(log_file)[-1].get("same_loop"),
    )


@pytest.mark.parametrize("hook", ["_startup", "_shutdown"])
def test_ashutdown_returns_when_an_enrichers_hook_ignores_its_cancellation(
    log_file: Path, hook: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an outside tester: with ``runtime="loop"``, ``ashutdown()``
    never returned when an enricher's start-up or shutdown swallowed
    ``CancelledError`` (``wait_for`` waits for what it cancelled)."""

    class Stubborn(AsyncEnricher):
        name = "stubborn"
        holding = True

        async def _hold(self) -> None:
            while self.holding:  # until the test lets go
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(0.02)

        async def _startup(self) -> None:
            if hook == "_startup":
                await self._hold()

        async def _shutdown(self) -> None:
            if hook == "_shutdown":
                await self._hold()

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            return event_dict

    enricher = Stubborn()

    async def main() -> tuple[bool, float]:
        container = configure_logging(
            enrichers=[enricher],
            output=str(log_file),
            runtime="loop",
            startup_timeout=0.2,
            shutdown_timeout=0.5,
        )
        with contextlib.suppress(Exception):
            await container.astartup()
        get_logger().info("kept")
        started = time.monotonic()
        closing = asyncio.get_running_loop().create_task(container.ashutdown())
        await asyncio.wait({closing}, timeout=20)
        took = time.monotonic() - started
        enricher.holding = False  # asyncio.run() can end the hook's task now
        return closing.done(), took

    returned, took = asyncio.run(main())

    # Within shutdown_timeout plus the second the cancelled hook is given,
    # saying what it left on the application's loop.
    assert (True, True, ["kept"], True) == (
        returned,
        took < 10,
        [line["event"] for line in read_lines(log_file)],
        "left running on the loop" in caplog.text,
    )


def test_shutting_down_while_an_enricher_starts_reports_nothing_to_the_applications_loop(
    log_file: Path,
) -> None:
    """Found by an outside tester: the cancelled start-up ended with an
    exception nobody retrieved, which asyncio reported through the
    application's own loop exception handler."""

    class SlowToStart(AsyncEnricher):
        name = "slow"

        async def _startup(self) -> None:
            await asyncio.sleep(3600)

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            return event_dict

    reported: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        container = configure_logging(
            enrichers=[SlowToStart()], output=str(log_file), runtime="loop", startup_timeout=0.1
        )
        get_logger().info("kept")
        await asyncio.sleep(0.2)
        await container.ashutdown()
        await asyncio.sleep(0.05)

    asyncio.run(main())
    import gc

    gc.collect()  # a future's unretrieved exception is reported when it is collected

    assert ([], ["kept"]) == (
        [ctx.get("message") for ctx in reported],
        [line["event"] for line in read_lines(log_file)],
    )
