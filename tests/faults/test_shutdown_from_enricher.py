"""Case 6: ``container.shutdown()`` (or a reconfiguration) from inside an
enricher is refused with a clear error, and the application's own later
``shutdown()`` still drains everything."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import enrichlog.container as container_module
from enrichlog import (
    AsyncEnricher,
    EnrichlogError,
    LoggingContainer,
    SyncEnricher,
    configure_logging,
    get_logger,
)

EVENTS = 200
REFUSAL = "was called on enrichlog's own runtime (from an enricher?)"
CONFIGURE_REFUSAL = "was called from inside an enricher"


class _Shutter:
    """Calls shutdown (or what ``action`` says) on the event marked
    ``trigger``, and records what that call did."""

    def __init__(self, action: str = "shutdown") -> None:
        self.action = action
        self.container: LoggingContainer | None = None
        self.outcome: list[str] = []

    def act(self) -> None:
        assert self.container is not None
        try:
            if self.action == "configure":
                configure_logging(output=str(self.container.settings.output) + ".other")
            else:
                self.container.shutdown()
            self.outcome.append("returned")
        except EnrichlogError as exc:
            self.outcome.append(f"EnrichlogError: {exc}")
            raise

    async def aact(self) -> None:
        assert self.container is not None
        try:
            await self.container.ashutdown()
            self.outcome.append("returned")
        except EnrichlogError as exc:
            self.outcome.append(f"EnrichlogError: {exc}")
            raise


def _enrichers(kind: str, shutter: _Shutter) -> list[Any]:
    class AsyncShutter(AsyncEnricher):
        name = "shutter"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            await asyncio.sleep(0)
            if event_dict.get("trigger"):
                if kind == "ashutdown":
                    await shutter.aact()
                else:
                    shutter.act()
            event_dict["shutter"] = True
            return event_dict

    class SyncShutter(SyncEnricher):
        name = "shutter"

        def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            if event_dict.get("trigger"):
                shutter.act()
            event_dict["shutter"] = True
            return event_dict

    class Tag(AsyncEnricher):
        name = "tag"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            await asyncio.sleep(0)
            event_dict["tag"] = True
            return event_dict

    if kind in {"async", "ashutdown", "configure"}:
        return [AsyncShutter()]
    if kind == "blocking":
        return [SyncShutter(blocking=True), Tag()]
    return [SyncShutter(), Tag()]


def _log_around_the_trigger(container: LoggingContainer) -> bool:
    """Half the events, the trigger among them, a flush, the other half;
    whether the container still ran after the trigger."""
    log = get_logger()
    for i in range(EVENTS):
        log.info("e", i=i, trigger=i == EVENTS // 2)
    container.flush(10)
    running = container.running
    for i in range(EVENTS, 2 * EVENTS):
        log.info("e", i=i, trigger=False)
    return running


def _trigger_errors(log_file: Path) -> list[Any]:
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    return [line.get("enrichment_errors") for line in lines if line["trigger"]]


def _run(log_file: Path, kind: str) -> tuple[_Shutter, bool, dict[str, int]]:
    shutter = _Shutter("configure" if kind == "configure" else "shutdown")
    container = configure_logging(
        enrichers=_enrichers(kind, shutter), output=str(log_file), delivery="background"
    )
    shutter.container = container
    running = _log_around_the_trigger(container)
    report = container.shutdown(timeout=10)
    return shutter, running, dict(report)


@pytest.mark.parametrize("kind", ["async", "ashutdown", "blocking"])
def test_shutdown_from_an_enricher_is_refused_and_the_event_carries_the_error(
    log_file: Path, kind: str
) -> None:
    shutter, running, _ = _run(log_file, kind)

    (outcome,) = shutter.outcome
    assert REFUSAL in outcome
    assert [{"shutter": "error: EnrichlogError"}] == _trigger_errors(log_file)
    assert running


@pytest.mark.parametrize("kind", ["async", "ashutdown", "blocking"])
def test_the_applications_later_shutdown_still_drains_every_event(
    log_file: Path, kind: str
) -> None:
    _, _, report = _run(log_file, kind)

    lines = log_file.read_bytes().splitlines()
    assert (2 * EVENTS, 2 * EVENTS, 0) == (len(lines), report["written"], report["pending"])


def test_shutdown_from_an_inline_sync_enricher_is_refused_too(log_file: Path) -> None:
    shutter, running, report = _run(log_file, "sync")

    lines = log_file.read_bytes().splitlines()
    assert ["EnrichlogError"] == [outcome.partition(":")[0] for outcome in shutter.outcome]
    assert running
    assert (2 * EVENTS, 2 * EVENTS) == (len(lines), report["written"])


def test_configure_logging_from_an_enricher_leaves_the_running_configuration_in_place(
    log_file: Path,
) -> None:
    shutter = _Shutter("configure")
    first = configure_logging(
        enrichers=_enrichers("configure", shutter), output=str(log_file), delivery="background"
    )
    shutter.container = first
    try:
        get_logger().info("e", i=0, trigger=True)
        first.flush(10)
        current_after_refusal = container_module._current

        second = configure_logging(output=str(log_file))
        first_running_after_reconfigure = first.running
        second.shutdown()
    finally:
        first.shutdown()

    assert CONFIGURE_REFUSAL in shutter.outcome[0]
    assert current_after_refusal is first
    assert not first_running_after_reconfigure
