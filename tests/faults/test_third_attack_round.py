"""Found by the third outside attack round (a tester with only the README and
the docs), each kept as a test."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from enrichlog import AsyncEnricher, configure_logging, get_logger
from tests.faults.runner import run_script


class Tag(AsyncEnricher):
    name = "tag"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        event_dict["tag"] = 1
        return event_dict


def test_a_child_forked_during_a_batched_lookup_still_gets_that_keys_fields(
    tmp_path: Path,
) -> None:
    run = run_script("fork_batch_in_flight.py", tmp_path / "out.log")

    assert 0 == run.returncode, run.stderr
    assert [[1, "name1", None], [2, "name2", None]] * 3 == run.summary["child"]
    assert ["name1"] == run.summary["parent"]


def test_a_replaced_containers_metrics_stop_counting_at_its_shutdown(tmp_path: Path) -> None:
    output = str(tmp_path / "out.log")
    first = configure_logging(enrichers=[Tag()], output=output, delivery="background")
    log = get_logger()
    for i in range(100):
        log.info("first", i=i)
    first.flush(timeout=10)
    second = configure_logging(enrichers=[Tag()], output=output, delivery="background")
    for i in range(50):
        log.info("second", i=i)
    second.flush(timeout=10)

    # The writer is shared; each container counts its own lines.
    assert (100, 100) == (first.metrics()["written"], first.metrics()["events_in"])
    assert (50, 50) == (second.metrics()["written"], second.metrics()["events_in"])
    second.shutdown()
    assert 150 == len(Path(output).read_text().splitlines())
