"""Scale-out cases of the seventeenth round, each kept as a test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from enrichlog import configure_logging, get_logger

from .conftest import Streams, lines_of, wait_until, worker_env

pytestmark = pytest.mark.services


def test_a_worker_enricher_cannot_take_the_id_readers_deduplicate_by(
    streams: Streams, tmp_path: Path, start_worker: Any
) -> None:
    # Left open by the sixteenth round: a worker-side enricher that set or
    # removed event_id (or enrichlog_id) took the transport's id off the
    # line, so readers that deduplicate by it merged or lost events.
    container = configure_logging(transport=streams.uri(), spool_dir=str(tmp_path / "s"))
    log = get_logger()
    log.info("replaced", seq=0, how="replace")
    log.info("replaced, app id", seq=1, how="replace", event_id="order-1")
    log.info("removed", seq=2, how="remove")
    log.info("removed, app id", seq=3, how="remove", event_id="order-1")
    log.info("enricher's enrichlog_id", seq=4, how="own", event_id="order-1")
    log.info("untouched", seq=5)
    assert 6 == container.shutdown()["published"]

    output = tmp_path / "out.jsonl"
    worker = start_worker(
        worker_env(streams, output), "--enrichers", "tests.scaleout.worker_enrichers:ids"
    )
    wait_until(lambda: len(lines_of(output)) >= 6, 30, "6 lines")
    assert 0 == worker.stop()
    lines = sorted(lines_of(output), key=lambda line: line["seq"])

    ids = [line.get("enrichlog_id", line.get("event_id")) for line in lines]
    assert len(set(ids)) == 6
    assert all(isinstance(found, str) and len(found) >= 16 for found in ids), ids
    assert [line.get("event_id") for line in lines] == [
        "from-the-enricher",
        "from-the-enricher",
        ids[2],
        ids[3],
        "order-1",
        ids[5],
    ]
    assert lines[4]["enrichlog_id_2"] == "enricher-own"
    assert "enrichlog_id" not in lines[5]
