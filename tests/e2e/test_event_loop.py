"""The ``event_loop`` setting: the thread runtime on uvloop (extra ``uvloop``)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from enrichlog import AsyncEnricher, EnricherConfigError, configure_logging, get_logger
from tests.helpers import read_lines

uvloop = pytest.importorskip("uvloop")


class LoopName(AsyncEnricher):
    """Adds the type of the loop it ran on, after a real await."""

    name = "loop"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0.001)
        event_dict["loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]
        return event_dict


@pytest.mark.parametrize(("event_loop", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_the_thread_runtime_runs_enrichers_on_the_chosen_loop(
    log_file: Path, event_loop: str, module: str
) -> None:
    container = configure_logging(
        enrichers=[LoopName()], output=str(log_file), delivery="background", event_loop=event_loop
    )
    log = get_logger()
    for i in range(200):
        log.info("e", i=i)
    report = container.shutdown()

    lines = read_lines(log_file)
    assert (200, 200) == (len(lines), report.written)
    assert {module} == {line["loop"] for line in lines}
    assert list(range(200)) == [line["i"] for line in lines]


def test_uvloop_with_the_loop_runtime_is_refused() -> None:
    with pytest.raises(
        EnricherConfigError, match="event_loop='uvloop' applies to runtime='thread'"
    ):
        configure_logging(event_loop="uvloop", runtime="loop")


def test_uvloop_without_the_extra_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "uvloop" else find_spec(name, *args),
    )

    with pytest.raises(EnricherConfigError, match=r"enrichlog\[uvloop\]"):
        configure_logging(event_loop="uvloop")
