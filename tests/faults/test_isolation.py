"""Case 11: what a failing enricher changed, nested values included, never
reaches the line, a sibling of its level or the application's own objects.
"""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path
from typing import Any

import pytest

from enrichlog import AsyncEnricher, SyncEnricher, configure_logging, get_logger


def _mutate(event_dict: dict[str, Any]) -> None:
    event_dict["nested"]["inner"]["x"] = "changed"
    event_dict["nested"]["inner"]["list"].append("changed")
    event_dict["ordered"]["x"] = "changed"
    event_dict["default"]["k"].append("changed")
    event_dict["items"].add("changed")


def _failing(kind: str) -> Any:
    if kind == "async":

        class AsyncFails(AsyncEnricher):
            name = "fails"

            async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
                await asyncio.sleep(0)
                _mutate(event_dict)
                raise ValueError("after mutating")

        return AsyncFails()

    class SyncFails(SyncEnricher):
        name = "fails"
        blocking = kind == "blocking"

        def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            _mutate(event_dict)
            raise ValueError("after mutating")

    return SyncFails()


def _sibling(kind: str) -> Any:
    def saw(event_dict: dict[str, Any]) -> None:
        event_dict["sibling_saw"] = [
            event_dict["nested"]["inner"].get("x"),
            list(event_dict["nested"]["inner"]["list"]),
            event_dict["ordered"].get("x"),
            list(event_dict["default"]["k"]),
            sorted(event_dict["items"]),
        ]

    if kind == "async":

        class AsyncSibling(AsyncEnricher):
            name = "sibling"

            async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
                await asyncio.sleep(0.01)  # after the failing one changed its copy
                saw(event_dict)
                return event_dict

        return AsyncSibling()

    class SyncSibling(SyncEnricher):
        name = "sibling"
        blocking = kind == "blocking"

        def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            saw(event_dict)
            return event_dict

    return SyncSibling()


def _application_values() -> dict[str, Any]:
    return {
        "nested": {"inner": {"list": [1]}},
        "ordered": collections.OrderedDict(a=1),
        "default": collections.defaultdict(list, k=[1]),
        "items": {1},
    }


UNCHANGED = [None, [1], None, [1], [1]]


@pytest.mark.parametrize("kind", ["sync", "async", "blocking"])
@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_a_failing_enrichers_nested_changes_reach_neither_line_sibling_nor_application(
    log_file: Path, kind: str, delivery: str
) -> None:
    container = configure_logging(
        enrichers=[_failing(kind), _sibling(kind)], output=str(log_file), delivery=delivery
    )
    values = _application_values()

    get_logger().info("e", **values)
    container.flush(10)

    line = json.loads(log_file.read_text().splitlines()[0])
    assert {"fails": "error: ValueError"} == line["enrichment_errors"]
    assert UNCHANGED == line["sibling_saw"]
    assert (
        {"inner": {"list": [1]}},
        {"a": 1},
        {"k": [1]},
    ) == (line["nested"], line["ordered"], line["default"])
    assert _application_values() == values


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_enricher_changing_a_nested_value_changes_the_line_but_not_the_applications_dict(
    log_file: Path, kind: str
) -> None:
    def change(event_dict: dict[str, Any]) -> None:
        event_dict["payload"]["inner"]["x"] = "enriched"

    class SyncChanges(SyncEnricher):
        name = "changes"

        def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            change(event_dict)
            return event_dict

    class AsyncChanges(AsyncEnricher):
        name = "changes"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            await asyncio.sleep(0)
            change(event_dict)
            return event_dict

    enricher = SyncChanges() if kind == "sync" else AsyncChanges()
    container = configure_logging(enrichers=[enricher], output=str(log_file), delivery="inline")
    payload = {"inner": {"y": 1}}

    get_logger().info("e", payload=payload)
    container.flush(10)

    line = json.loads(log_file.read_text().splitlines()[0])
    assert {"inner": {"y": 1, "x": "enriched"}} == line["payload"]
    assert {"inner": {"y": 1}} == payload


def test_a_dict_inside_a_tuple_is_isolated_too(log_file: Path) -> None:
    class Fails(SyncEnricher):
        name = "fails"

        def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            event_dict["pair"][0]["x"] = "changed"
            raise ValueError("after mutating")

    configure_logging(enrichers=[Fails()], output=str(log_file), delivery="inline")
    pair = ({"y": 1}, "second")

    get_logger().info("e", pair=pair)

    line = json.loads(log_file.read_text().splitlines()[0])
    assert ([{"y": 1}, "second"], ({"y": 1}, "second")) == (line["pair"], pair)


class Ambiguous:
    """Like a numpy array: ``==`` answers element-wise, and that answer has
    no truth value."""

    def __eq__(self, other: object) -> Any:
        class ElementWise:
            def __bool__(self) -> bool:
                raise ValueError("the truth value of an array is ambiguous")

        return ElementWise()

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return "Ambiguous()"


def test_an_ordered_dict_holding_array_like_values_does_not_fail_the_enricher(
    log_file: Path,
) -> None:
    class Tag(AsyncEnricher):
        name = "tag"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            await asyncio.sleep(0)
            event_dict["tag"] = True
            return event_dict

    configure_logging(enrichers=[Tag()], output=str(log_file), delivery="inline")

    get_logger().info("scores", values=collections.OrderedDict(a=Ambiguous()))

    line = json.loads(log_file.read_text().splitlines()[0])
    assert (True, None) == (line.get("tag"), line.get("enrichment_errors"))
