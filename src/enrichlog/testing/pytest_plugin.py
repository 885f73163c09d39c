"""pytest fixtures for applications that log with enrichlog (opt-in)::

    # conftest.py
    pytest_plugins = ["enrichlog.testing.pytest_plugin"]

Fixtures:

* ``enrichlog_container``: a container configured for the test (its lines
  kept by ``enrichlog_output``), shut down afterwards, with structlog
  reset; configure it per test with ``@pytest.mark.enrichlog(...)`` or for
  many tests by overriding ``enrichlog_settings``::

      @pytest.mark.enrichlog(enrichers=[UserEnricher()], level="debug")
      def test_checkout(enrichlog_container, enrichlog_output):
          with capture_events() as events:
              checkout(user_id=42)
          assert events[0]["user_name"] == "alice"

* ``enrichlog_output``: the :class:`~enrichlog.testing.LineSink` the
  container writes to (``.lines``, ``.events()``).
* ``enrichlog_settings``: keyword arguments of ``configure_logging`` for
  ``enrichlog_container`` (default: none); override it in a conftest.
* ``fake_clock``: a :class:`~enrichlog.testing.FakeClock`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from ..container import LoggingContainer, configure_logging, reset_logging
from ..exceptions import EnricherConfigError
from . import FakeClock, LineSink

__all__ = [
    "enrichlog_container",
    "enrichlog_output",
    "enrichlog_settings",
    "fake_clock",
    "pytest_configure",
]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``enrichlog`` marker."""
    config.addinivalue_line(
        "markers",
        "enrichlog(**settings): configure_logging() arguments of the "
        "enrichlog_container fixture (enrichers=[...], level=..., ...)",
    )


@pytest.fixture
def enrichlog_settings() -> dict[str, Any]:
    """``configure_logging`` keyword arguments of ``enrichlog_container``;
    override this fixture to configure every test of a directory."""
    return {}


@pytest.fixture
def enrichlog_output() -> LineSink:
    """Where ``enrichlog_container`` writes its lines."""
    return LineSink()


@pytest.fixture
def enrichlog_container(
    request: pytest.FixtureRequest,
    enrichlog_settings: dict[str, Any],
    enrichlog_output: LineSink,
) -> Iterator[LoggingContainer]:
    """A container configured for this test, shut down afterwards (and
    structlog reset, its context variables cleared). Its settings:
    ``output`` is ``enrichlog_output``, then ``enrichlog_settings``, then
    the ``@pytest.mark.enrichlog(...)`` markers of the test's module, class
    and function, in that order (the closest one's keys win, the others'
    are kept)."""
    settings: dict[str, Any] = {"output": enrichlog_output, **enrichlog_settings}
    # The markers of the module, the class and the function, merged key by
    # key: the closest one's keys win, the others' are kept.
    for marker in reversed(list(request.node.iter_markers("enrichlog"))):
        if marker.args:
            # Ignored without a word, @pytest.mark.enrichlog("debug") would
            # leave the test on the default level.
            raise EnricherConfigError(
                f"@pytest.mark.enrichlog takes settings as keywords "
                f"(@pytest.mark.enrichlog(level='debug')), not {len(marker.args)} positional "
                "argument(s)"
            )
        settings.update(marker.kwargs)
    reset_logging()
    container = configure_logging(**settings)
    # A logger is bound once, at its first use, with the level of that
    # moment (cached: the level costs a log call nothing). In tests each
    # test's level must hold, also for a module-level logger a test before
    # used: bound afresh at every call here.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield container
    finally:
        reset_logging()


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock that moves only when advanced (``fake_clock.advance(60)``)."""
    return FakeClock()
