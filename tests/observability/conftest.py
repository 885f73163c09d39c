"""Fixtures of the observability tests: a fresh process-wide tracker per
test, and a running container with enrichers that succeed, fail, time out
and hit a cache, serving /metrics on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enrichlog import LoggingContainer
from enrichlog.integrations import prometheus

from .workload import configure, log_events

#: Events the ``live`` container logged (two rounds: the second hits the cache).
EVENTS = 40


@pytest.fixture(autouse=True)
def _fresh_tracker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Process-wide counters start at zero in each test: containers of
    earlier tests are not counted."""
    monkeypatch.setattr(prometheus, "_TRACKER", prometheus._Tracker())


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LoggingContainer]:
    """A running container serving /metrics, after :data:`EVENTS` events."""
    container = configure(str(tmp_path / "out.log"), metrics_port=0)
    log_events(EVENTS // 2)
    assert container.flush(10)
    log_events(EVENTS // 2)
    assert container.flush(10)
    yield container
    container.shutdown()
