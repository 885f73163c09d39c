"""Shared fixtures: a clean structlog configuration and a log file per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enrichlog.testing import reset_logging

# enrichlog's own pytest plugin: the enrichlog_container, enrichlog_output and
# fake_clock fixtures (tests/integrations/test_testing.py exercises them, and
# runs a test file of its own with pytester).
pytest_plugins = ["enrichlog.testing.pytest_plugin", "pytester"]


@pytest.fixture(autouse=True)
def _isolated_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts unconfigured, with no ENRICHLOG_* from outside, and
    leaves no container running."""
    for key in list(__import__("os").environ):
        if key.startswith("ENRICHLOG_"):
            monkeypatch.delenv(key)
    yield
    reset_logging()


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    """A path for a container's output file."""
    return tmp_path / "out.log"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name any shared server the run found stopped and started again."""
    from tests.services import RESTARTED

    for line in RESTARTED:
        terminalreporter.write_line(f"enrichlog tests: {line}", yellow=True)
