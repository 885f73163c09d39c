"""Case 14: settings that cannot work are refused when they are configured,
naming the field, before the running configuration is touched."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from enrichlog import AsyncEnricher, EnricherConfigError, configure_logging, get_logger


class Tag(AsyncEnricher):
    name = "tag"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict["tag"] = True
        return event_dict


REFUSED: list[tuple[str, Any]] = [
    ("queue_size", 10**23),
    ("queue_size", 0),
    ("queue_size", 1.5),
    ("max_in_flight", 0),
    ("max_in_flight", 10**7),
    ("shutdown_timeout", 1e12),  # overflows the platform's clock
    ("shutdown_timeout", 0),
    ("enricher_timeout", math.inf),
    ("enricher_timeout", math.nan),
    ("enricher_timeout", -1),
    ("overflow_block_timeout", 10**9),  # beyond what a thread may wait
    ("drop_report_interval", 0),
    ("level_timeout", 0),
    ("max_enricher_threads", 10**6),
    ("enricher_max_concurrency", 10**7),
    ("cache_max_size", 0),
    ("cache_ttl", -5),
    ("retry_attempts", 0),
    ("retry_max_delay", 1e9),
    ("batch_window", -1),
    ("health_check_interval", 0),
    ("breaker_failure_threshold", 0),
    ("level", "loud"),
    ("level", 5),
    ("format", "xml"),
    ("overflow", "spill"),
    ("delivery", "sometimes"),
    ("handle_sigterm", "maybe"),
    ("error_field", "event"),
    ("error_field", "timestamp"),
    ("output", ""),
    ("enricher_options", {"tag": {"timeout": 0}}),
    ("enricher_options", {"tag": {"bogus": 1}}),
]


@pytest.mark.parametrize(
    ("field", "value"), REFUSED, ids=[f"{field}={value!r}" for field, value in REFUSED]
)
def test_a_setting_that_cannot_work_is_refused_naming_the_field(field: str, value: Any) -> None:
    settings: dict[str, Any] = {"output": "stderr", field: value}

    with pytest.raises(EnricherConfigError) as raised:
        configure_logging(enrichers=[Tag()], **settings)

    assert f"{field}" in str(raised.value)


@pytest.mark.parametrize("output", ["/nonexistent-directory/out.log", "/"])
def test_an_output_that_cannot_be_opened_is_refused_naming_it(output: str) -> None:
    with pytest.raises(EnricherConfigError) as raised:
        configure_logging(enrichers=[Tag()], output=output)

    assert f"output {output!r} cannot be opened for appending" in str(raised.value)


def test_an_unknown_setting_is_refused_with_a_suggestion() -> None:
    with pytest.raises(EnricherConfigError) as raised:
        configure_logging(enrichers=[Tag()], queue_sise=10)

    assert "'queue_sise' (did you mean 'queue_size'?)" in str(raised.value)


def test_an_invalid_enricher_knob_is_refused_naming_the_enricher_and_the_knob() -> None:
    with pytest.raises(EnricherConfigError) as raised:
        Tag(max_concurrency=10**23)

    assert "enricher 'tag': max_concurrency=" in str(raised.value)


@pytest.mark.parametrize(
    "bad", [{"queue_size": 10**23}, {"output": "/nonexistent-directory/out.log"}]
)
def test_a_refused_configuration_leaves_the_running_one_untouched(
    log_file: Path, bad: dict[str, Any]
) -> None:
    running = configure_logging(enrichers=[Tag()], output=str(log_file), delivery="inline")

    with pytest.raises(EnricherConfigError):
        configure_logging(enrichers=[Tag()], **bad)
    get_logger().info("still here")

    assert running.running
    assert ["still here"] == [
        json.loads(line)["event"] for line in log_file.read_text().splitlines()
    ]
