"""LoggingContainer.submit_event: how an enrichment worker feeds decoded
events to the engine (enriched, written in turn, completion reported)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import structlog

from enrichlog import AsyncEnricher, LoggingContainer


class Lines:
    """A wrapped logger that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[bytes | str] = []

    def info(self, line: bytes | str) -> None:
        self.lines.append(line)


class Adds(AsyncEnricher):
    name = "adds"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0.001)
        if event_dict.get("drop"):
            raise structlog.DropEvent
        event_dict["added"] = True
        return event_dict


def test_a_submitted_event_is_enriched_written_and_reported() -> None:
    container = LoggingContainer(None, [Adds()])
    container.start_enrichers(10.0)
    logger = Lines()
    done: list[bool] = []
    finished = threading.Event()

    def on_done(filtered: bool) -> None:
        done.append(filtered)
        if len(done) == 2:
            finished.set()

    accepted = [
        container.submit_event(logger, "info", {"event": "kept"}, on_done),
        container.submit_event(logger, "info", {"event": "gone", "drop": True}, on_done),
    ]
    assert finished.wait(10)
    container.shutdown()
    refused = container.submit_event(logger, "info", {"event": "late"}, on_done)

    assert ([True, True], False) == (accepted, refused)
    assert [False, True] == done
    assert 1 == len(logger.lines)
    assert {"event": "kept", "added": True}.items() <= json.loads(logger.lines[0]).items()
