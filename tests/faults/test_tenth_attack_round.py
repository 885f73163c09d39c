"""Found by the tenth outside attack round (testers with only the README and
the docs: concurrency and lifecycle under stress, the command line and the
settings, the built-in lookups under faults, scale-out), each kept as a
test."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from structlog.typing import EventDict, WrappedLogger

from enrichlog import (
    AsyncEnricher,
    EnricherConfigError,
    EnrichlogError,
    configure_logging,
    current_container,
    get_logger,
)


def python(*args: object) -> subprocess.CompletedProcess[str]:
    """Run this Python with ``args`` in a process of its own (signals land
    on its main thread, as in an application)."""
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def ids(path: Path) -> list[int]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


INTERRUPTED_DRAIN_SCRIPT = """
import asyncio, os, signal, sys, threading, time
from enrichlog import AsyncEnricher, configure_logging, current_container, get_logger

output, mode = sys.argv[1], sys.argv[2]
if mode == "exit":  # the application's own handler: sys.exit() on SIGTERM
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

class Slow(AsyncEnricher):
    name = "slow"
    async def enrich_async(self, logger, method_name, event_dict):
        await asyncio.sleep(0.05)  # one at a time: 40 events take 2 s to drain
        event_dict["slow"] = True
        return event_dict

container = configure_logging(enrichers=[Slow()], output=output, max_in_flight=1)
for i in range(40):
    get_logger().info("queued", id=i)
draining = threading.Event()

def interrupt():
    draining.wait()
    time.sleep(0.2)  # well inside the 2 s drain
    os.kill(os.getpid(), signal.SIGTERM if mode == "exit" else signal.SIGINT)

threading.Thread(target=interrupt, daemon=True).start()
draining.set()
try:
    if mode == "configure":
        configure_logging(enrichers=[Slow()], output=output, max_in_flight=1)
    else:
        container.shutdown()
except KeyboardInterrupt:
    print("interrupted", current_container() is None)
for i in range(40, 50):
    get_logger().info("after", id=i)
"""


@pytest.mark.parametrize("mode", ["interrupt", "exit", "configure"])
def test_an_interrupt_during_the_drain_loses_no_event(mode: str, tmp_path: Path) -> None:
    # Found by an outside tester: Ctrl-C (or the application's own SIGTERM
    # handler calling sys.exit()) landing while shutdown() drained, or while
    # configure_logging() drained the container it replaced, cut the drain
    # short: 9 of the 40 queued lines were written, and none logged after.
    script, output = tmp_path / "drain.py", tmp_path / "out.log"
    script.write_text(INTERRUPTED_DRAIN_SCRIPT)
    run = python(script, output, mode)
    assert run.returncode == 0, run.stderr
    if mode == "exit":
        assert ids(output) == list(range(40))  # sys.exit() ended it in shutdown()
    else:
        assert "interrupted True" in run.stdout  # raised once drained; nothing new installed
        assert sorted(ids(output)) == list(range(50))
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert any(line.get("slow") for line in lines)  # the drain had begun enriching
    assert len(lines) == len({line["id"] for line in lines})


class Sleepy(AsyncEnricher):
    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.2)
        event_dict["sleepy"] = True
        return event_dict


@pytest.mark.parametrize("timeout", [math.inf, 1e300, 10**30])
def test_a_drain_timeout_beyond_the_clocks_range_waits_and_loses_nothing(
    timeout: float, tmp_path: Path
) -> None:
    # shutdown(timeout=float("inf")) raised OverflowError half-way through
    # the drain, and every pending event was lost (0 of 10 lines).
    output = tmp_path / "out.log"
    container = configure_logging(enrichers=[Sleepy()], output=str(output))
    for i in range(5):
        get_logger().info("pending", id=i)
    assert container.flush(timeout) is True
    for i in range(5, 10):
        get_logger().info("pending", id=i)
    report = container.shutdown(timeout)
    assert (report["written"], report["pending"]) == (10, 0)
    assert ids(output) == list(range(10))


def test_an_invalid_drain_timeout_is_refused_before_anything_changes(tmp_path: Path) -> None:
    output = tmp_path / "out.log"
    container = configure_logging(enrichers=[Sleepy()], output=str(output))
    get_logger().info("pending", id=0)
    with pytest.raises(ValueError, match=r"shutdown\(\): timeout .* not NaN"):
        container.shutdown(math.nan)
    with pytest.raises(TypeError, match=r"flush\(\): timeout .* not str"):
        container.flush("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"shutdown\(\): timeout .* not bool"):
        container.shutdown(True)
    assert current_container() is container  # still running
    get_logger().info("later", id=1)
    assert container.shutdown(-1)["pending"] == 0  # negative: do not wait; salvaged
    assert ids(output) == [0, 1]


async def test_an_invalid_async_drain_timeout_is_refused(tmp_path: Path) -> None:
    container = configure_logging(enrichers=[Sleepy()], output=str(tmp_path / "out.log"))
    with pytest.raises(ValueError, match=r"aflush\(\)"):
        await container.aflush(math.nan)
    with pytest.raises(ValueError, match=r"ashutdown\(\)"):
        await container.ashutdown(math.nan)
    assert not container.closed


class ConfiguresInStartup(AsyncEnricher):
    def __init__(self, output: str) -> None:
        super().__init__(name="configures")
        self.output = output
        self.refusal: BaseException | None = None

    async def _startup(self) -> None:
        try:
            configure_logging(output=self.output)
        except EnrichlogError as exc:
            self.refusal = exc

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict["configures"] = True
        return event_dict


def test_configure_logging_in_a_startup_is_refused_at_once(tmp_path: Path) -> None:
    # With runtime="thread" it held the start-up for startup_timeout (30 s),
    # then failed with a message about shutdown().
    enricher = ConfiguresInStartup(str(tmp_path / "inner.log"))
    container = configure_logging(
        enrichers=[enricher], output=str(tmp_path / "out.log"), startup_timeout=20
    )
    assert isinstance(enricher.refusal, EnrichlogError)
    assert "configure_logging() was called from inside an enricher" in str(enricher.refusal)
    assert current_container() is container
    assert container.health()["configures"]["available"]


async def test_configure_logging_in_a_startup_on_the_loop_keeps_the_container(
    tmp_path: Path,
) -> None:
    # With runtime="loop" the call in the _startup succeeded and replaced
    # the container being started: the application's events went elsewhere.
    output = tmp_path / "out.log"
    enricher = ConfiguresInStartup(str(tmp_path / "inner.log"))
    container = configure_logging(enrichers=[enricher], output=str(output), runtime="loop")
    await container.astartup()
    assert isinstance(enricher.refusal, EnrichlogError)
    assert current_container() is container
    await get_logger().ainfo("app", id=0)
    await container.ashutdown()
    assert [json.loads(line).get("configures") for line in output.read_text().splitlines()] == [
        True
    ]


class LogsInStartup(AsyncEnricher):
    name = "logs_in_startup"

    async def _startup(self) -> None:
        await get_logger().ainfo("from startup", id=-1)

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict["enriched"] = True
        return event_dict


async def test_an_event_a_startup_awaits_is_written_as_it_is(tmp_path: Path) -> None:
    # await log.ainfo() in a _startup (runtime="loop") waited for the very
    # start-up it ran in: astartup() took 4.5 s, and the line got the
    # enricher's own field.
    output = tmp_path / "out.log"
    container = configure_logging(enrichers=[LogsInStartup()], output=str(output), runtime="loop")
    await asyncio.wait_for(container.astartup(), 20)
    await get_logger().ainfo("app", id=0)
    await container.ashutdown()
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(line["id"], line.get("enriched")) for line in lines] == [(-1, None), (0, True)]


class NoSuperInit(AsyncEnricher):
    name = "no_super"

    def __init__(self) -> None:  # forgets super().__init__()
        self.dsn = "postgresql://app@db/app"

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


def test_an_enricher_without_super_init_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    # It failed late, with a bare AttributeError, after the running
    # configuration was taken down (no container left, a runtime thread
    # still running).
    running = configure_logging(output=str(tmp_path / "out.log"))
    with pytest.raises(EnricherConfigError, match=r"NoSuperInit: .*super\(\).__init__\(\)"):
        configure_logging(enrichers=[NoSuperInit()], output=str(tmp_path / "out.log"))
    assert current_container() is running


def test_a_blocking_attribute_on_an_async_enricher_is_refused() -> None:
    class Blocking(AsyncEnricher):
        name = "blocking_async"
        blocking = True

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            return event_dict

    with pytest.raises(EnricherConfigError, match="'blocking_async': blocking applies to sync"):
        Blocking()


class OneAtATime(AsyncEnricher):
    name = "one_at_a_time"

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.02)
        event_dict["enriched"] = True
        return event_dict


async def test_a_cancelled_ashutdown_on_the_loop_still_drains(tmp_path: Path) -> None:
    # A wait_for around ashutdown() (runtime="loop") stopped the drain
    # half-way: the report said 9 written and 31 pending, and a second
    # ashutdown() returned that report at once.
    output = tmp_path / "out.log"
    container = configure_logging(
        enrichers=[OneAtATime()], output=str(output), runtime="loop", max_in_flight=1
    )
    await container.astartup()
    for i in range(40):
        get_logger().info("queued", id=i)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(container.ashutdown(), 0.1)  # 40 x 20 ms to drain
    report = await container.ashutdown()
    assert (report["written"], report["pending"]) == (40, 0)
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["id"] for line in lines] == list(range(40))
    assert all(line.get("enriched") for line in lines)


async def test_configure_logging_on_the_loop_of_a_loop_container_does_not_wait(
    tmp_path: Path,
) -> None:
    # Found by an outside re-test: the shutdown() of the replaced container
    # ran its drain on a thread of its own (to shield it from interrupts),
    # which took the loop's own thread for another one and waited for the
    # loop it was blocking, for the whole shutdown_timeout.
    output = tmp_path / "out.log"
    old = configure_logging(
        enrichers=[OneAtATime()], output=str(output), runtime="loop", shutdown_timeout=30
    )
    await old.astartup()
    for i in range(10):
        get_logger().info("queued", id=i)
    replaced = asyncio.get_running_loop().time()
    configure_logging(output=str(output))
    assert asyncio.get_running_loop().time() - replaced < 20  # not the 30 s timeout
    assert sorted(ids(output)) == list(range(10))


async def test_astartup_is_not_cancelled_by_a_shutdown_from_another_task(tmp_path: Path) -> None:
    # A shutdown from another task during the start-up raised CancelledError
    # in the task awaiting astartup(), which nobody had cancelled.
    class SlowStart(OneAtATime):
        async def _startup(self) -> None:
            await asyncio.sleep(1.0)

    container = configure_logging(
        enrichers=[SlowStart()], output=str(tmp_path / "out.log"), runtime="loop"
    )
    starting = asyncio.ensure_future(container.astartup())
    await asyncio.sleep(0.1)
    await container.ashutdown()
    assert await starting is container


def test_blocking_set_on_an_async_enricher_instance_is_refused() -> None:
    enricher = OneAtATime()
    enricher.blocking = True  # type: ignore[attr-defined]
    with pytest.raises(EnricherConfigError, match="blocking applies to sync enrichers only"):
        configure_logging(enrichers=[enricher], output="/dev/null")


@pytest.mark.parametrize(
    "timeout", [10**400, Decimal("Infinity"), Decimal("30")], ids=["huge", "inf", "decimal"]
)
def test_any_real_drain_timeout_is_taken(timeout: object, tmp_path: Path) -> None:
    container = configure_logging(enrichers=[Sleepy()], output=str(tmp_path / "out.log"))
    get_logger().info("pending", id=0)
    assert container.flush(timeout) is True  # type: ignore[arg-type]
    assert container.shutdown(timeout)["pending"] == 0  # type: ignore[arg-type]
