"""Tests for :mod:`enrichlog.engine.lifecycle`: the manager on its own, on
the caller's event loop, without a container or a runtime."""

from __future__ import annotations

import asyncio
import contextlib

from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, EnricherLifecycleManager


class Pool(AsyncEnricher):
    """Opens a 'pool' on the loop it starts on; healthy while open."""

    def __init__(self, name: str, fail_start: bool = False) -> None:
        super().__init__(name=name)
        self.fail_start = fail_start
        self.loop: asyncio.AbstractEventLoop | None = None
        self.events: list[str] = []

    async def _startup(self) -> None:
        if self.fail_start:
            raise ConnectionError("db down")
        self.loop = asyncio.get_running_loop()
        self.events.append("started")

    async def _shutdown(self) -> None:
        self.events.append("stopped")

    async def _health_check(self) -> bool:
        return self.loop is asyncio.get_running_loop()

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


def test_manager_without_arguments_runs_the_full_lifecycle_in_asyncio_run() -> None:
    users = Pool("users")
    manager = EnricherLifecycleManager()
    manager.register_enricher(users)

    async def lifecycle() -> tuple[dict[str, bool], dict[str, bool]]:
        started = await manager.startup_all()
        health = await manager.health_check_all()
        await manager.shutdown_all()
        return started, health

    started, health = asyncio.run(lifecycle())

    assert ({"users": True}, {"users": True}, False, ["started", "stopped"]) == (
        started,
        health,
        users.is_started,
        users.events,
    )


def test_managed_enrichers_starts_and_stops_on_the_callers_loop() -> None:
    users, orders = Pool("users"), Pool("orders")
    manager = EnricherLifecycleManager([users, orders])

    async def inside() -> bool:
        async with manager.managed_enrichers():
            return users.loop is asyncio.get_running_loop() and orders.is_healthy

    assert (True, ["started", "stopped"]) == (asyncio.run(inside()), orders.events)


def test_a_failed_start_is_reported_in_status_and_does_not_stop_the_others() -> None:
    manager = EnricherLifecycleManager([Pool("good"), Pool("bad", fail_start=True)])

    async def start() -> dict[str, bool]:
        started = await manager.startup_all()
        await manager.shutdown_all()
        return started

    started = asyncio.run(start())

    assert (
        {"good": True, "bad": False},
        "startup failed: ConnectionError",
    ) == (started, manager.status()["bad"]["last_error"])


class SlowPool(Pool):
    """Starts once ``release`` is set: a start-up slower than the wait."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = asyncio.Event()
        self.attempts = 0

    async def _startup(self) -> None:
        self.attempts += 1
        await self.release.wait()
        await super()._startup()


def test_a_start_up_slower_than_the_wait_goes_on_in_the_background() -> None:
    # Past the timeout the wait ends, not the start-up: a slow start is not a
    # failed one (it used to be cancelled there, and never tried again).
    pool = SlowPool("slow")
    manager = EnricherLifecycleManager([pool], health_check_interval=0.01)

    async def start() -> tuple[bool, bool, int]:
        try:
            await manager.startup_all(timeout=0.05)
        except TimeoutError:
            timed_out = True
        await asyncio.sleep(0.1)  # health-check rounds meanwhile start no second one
        pool.release.set()
        for _ in range(500):
            if pool.available:
                break
            await asyncio.sleep(0.01)
        available = pool.available
        await manager.shutdown_all()
        return timed_out, available, pool.attempts

    assert (True, True, 1) == asyncio.run(start())
    assert ["started", "stopped"] == pool.events


def test_shutdown_stops_a_start_up_still_going_on() -> None:
    pool = SlowPool("slow")
    manager = EnricherLifecycleManager([pool])

    async def start_then_stop() -> None:
        with contextlib.suppress(TimeoutError):
            await manager.startup_all(timeout=0.01)
        await manager.shutdown_all()

    asyncio.run(start_then_stop())

    assert (False, 1, []) == (pool.is_started, pool.attempts, pool.events)


class Checked(AsyncEnricher):
    """A health check that answers ``healthy``, or hangs (``hang``), or
    hangs ignoring its cancellation (``stubborn``); counts its checks."""

    def __init__(self, name: str, *, hang: bool = False, stubborn: bool = False) -> None:
        super().__init__(name=name)
        self.hang, self.stubborn = hang, stubborn
        self.healthy = True
        self.checks = 0
        self.stopped = False
        self.release = asyncio.Event()

    async def _health_check(self) -> bool:
        self.checks += 1
        if self.stubborn:
            while not self.release.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await self.release.wait()
        elif self.hang:
            await self.release.wait()
        return self.healthy

    async def _shutdown(self) -> None:
        self.stopped = True

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


def test_a_health_check_that_hangs_fails_and_never_holds_up_the_others() -> None:
    # The round awaited every check: one that never answered stopped every
    # later round, so another's failing check went unnoticed for good.
    hung, failing = Checked("hung", hang=True), Checked("failing")

    async def main() -> tuple[dict[str, bool], dict[str, bool], int]:
        manager = EnricherLifecycleManager([hung, failing])
        await manager.startup_all()
        first = await manager.health_check_all(timeout=0.05)
        failing.healthy = False
        second = await manager.health_check_all(timeout=0.05)
        checks = hung.checks
        hung.release.set()
        await manager.shutdown_all()
        return first, second, checks

    first, second, hung_checks = asyncio.run(main())

    assert {"hung": False, "failing": True} == first
    assert {"hung": False, "failing": False} == second
    assert 1 == hung_checks  # not started again while the first still runs
    assert "health check timed out" == hung.last_error


def test_shutdown_stops_the_enrichers_past_a_check_that_ignores_its_cancellation() -> None:
    stubborn = Checked("stubborn", stubborn=True)

    async def main() -> int:
        manager = EnricherLifecycleManager([stubborn])
        await manager.startup_all()
        await manager.health_check_all(timeout=0.05)
        try:
            await asyncio.wait_for(manager.shutdown_all(), 5.0)
            return manager.unfinished()
        finally:
            stubborn.release.set()  # lets asyncio.run end
            await asyncio.sleep(0)

    unfinished = asyncio.run(main())

    assert 1 == unfinished  # left to end on its own, and said
    assert stubborn.stopped
    assert not stubborn.is_started


class SlowStart(Checked):
    """Fails its first start-up; the next takes longer than a check may."""

    def __init__(self) -> None:
        super().__init__("slow_start")
        self.starts = 0

    async def _startup(self) -> None:
        self.starts += 1
        if self.starts == 1:
            raise ConnectionError("db down")
        await asyncio.sleep(0.3)


def test_a_start_up_slower_than_a_check_may_take_goes_on_and_ends() -> None:
    # A restart run by a health round is not cut off by the round's limit:
    # with a start-up longer than the interval, it would never start.
    slow = SlowStart()

    async def main() -> tuple[dict[str, bool], bool]:
        manager = EnricherLifecycleManager([slow], health_check_interval=60.0)
        await manager.startup_all()
        first = await manager.health_check_all(timeout=0.05)
        for _ in range(100):
            if slow.is_started:
                break
            await asyncio.sleep(0.05)
        started = slow.is_started
        await manager.shutdown_all()
        return first, started

    first, started = asyncio.run(main())

    assert {"slow_start": False} == first
    assert started
    assert 2 == slow.starts
    assert slow.last_error != "health check timed out"


def test_a_check_still_hanging_from_an_earlier_round_is_not_waited_for_again() -> None:
    # Each round waited its whole limit for it again: with a hung check,
    # the others were checked half as often.
    hung, healthy = Checked("hung", stubborn=True), Checked("healthy")

    async def main() -> tuple[dict[str, bool], float]:
        manager = EnricherLifecycleManager([hung, healthy])
        await manager.startup_all()
        await manager.health_check_all(timeout=0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        second = await manager.health_check_all(timeout=30.0)
        took = loop.time() - started
        hung.release.set()
        await manager.shutdown_all()
        return second, took

    second, took = asyncio.run(main())

    assert {"hung": False, "healthy": True} == second
    assert took < 10.0  # not the 30 s limit
    assert 2 == healthy.checks


def test_while_unavailable_last_error_keeps_saying_why() -> None:
    # A call in flight when a health check failed overwrote the reason.
    failing = Checked("failing")
    failing.healthy = False

    async def main() -> tuple[str | None, str | None]:
        manager = EnricherLifecycleManager([failing])
        await manager.startup_all()
        await manager.health_check_all()
        failing.record_failure("timeout")
        while_down = failing.last_error
        failing.healthy = True
        await manager.health_check_all()
        await manager.shutdown_all()
        return while_down, failing.last_error

    assert ("health check failed", "timeout") == asyncio.run(main())
