"""Shared fixtures: a clean structlog configuration and a log file per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

import enrichlog.container as container_module


@pytest.fixture(autouse=True)
def _isolated_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts unconfigured, with no ENRICHLOG_* from outside, and
    leaves no container running."""
    for key in list(__import__("os").environ):
        if key.startswith("ENRICHLOG_"):
            monkeypatch.delenv(key)
    yield
    current = container_module._current
    if current is not None:
        current.shutdown()
        container_module._current = None
    structlog.reset_defaults()


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    """A path for a container's output file."""
    return tmp_path / "out.log"
