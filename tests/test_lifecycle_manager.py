"""Tests for :mod:`enrichlog.engine.lifecycle`: the manager on its own, on
the caller's event loop, without a container or a runtime."""

from __future__ import annotations

import asyncio

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
