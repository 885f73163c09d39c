"""Found by the eighth outside attack round (testers with only the README
and the docs), each kept as a test. (The others of that round are kept
beside the behaviour they test: batching, the HTTP lookup, masking, the
transport.)"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any
from urllib.parse import quote

import pytest
from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, EnricherConfigError, configure_logging, get_logger


class Plain(AsyncEnricher):
    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict["plain"] = True
        return event_dict


class _CallableObject:
    async def __call__(self, *args: Any) -> None:
        return None


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"enrich_async": 5}, "enrich_async must be a method .*, but the class sets it to a value"),
        ({"enrich_async": None}, "enrich_async must be a method .*, but the class sets it to None"),
        ({"cache_key": 5}, "cache_key must be a method"),
        ({"options": {"timeout": 1}}, "options is read-only"),
        # Found by the re-test: a callable object (no self when called on
        # the instance) and enrichlog's own lifecycle methods.
        ({"enrich_async": _CallableObject()}, "enrich_async must be a method"),
        ({"startup": None}, "startup must be a method .*, but the class sets it to None"),
        ({"shutdown": None}, "shutdown must be a method"),
    ],
    ids=[
        "enrich_async-number",
        "enrich_async-none",
        "cache_key-number",
        "options-dict",
        "enrich_async-callable-object",
        "startup-none",
        "shutdown-none",
    ],
)
def test_a_value_in_place_of_a_method_or_property_is_refused_at_construction(
    attributes: dict[str, Any], message: str
) -> None:
    # enrich_async = 5 was accepted and every event got 'error: TypeError';
    # options = {...} failed in configure_logging with an AttributeError
    # naming neither the enricher nor the attribute.
    cls = type("Odd", (Plain,), attributes)

    with pytest.raises(EnricherConfigError, match=message) as caught:
        cls()
    assert "'odd'" in str(caught.value)


def test_an_output_path_holding_a_nul_is_a_configuration_error() -> None:
    # It raised ValueError("embedded null byte"), naming no setting.
    with pytest.raises(EnricherConfigError, match="output: a file path cannot hold a NUL"):
        configure_logging(output="bad\x00name.log")


def test_an_unknown_level_number_is_named_as_such() -> None:
    # level=15 said "Input should be a valid string", though 10 is accepted.
    with pytest.raises(EnricherConfigError, match="unknown level number 15; expected one of 10"):
        configure_logging(level=15)

    buffer = io.StringIO()
    container = configure_logging(level=30, output=buffer)
    get_logger().info("hidden")
    get_logger().warning("shown")
    container.shutdown()
    assert ["shown"] == [json.loads(line)["event"] for line in buffer.getvalue().splitlines()]


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_a_message_whose_arguments_do_not_fit_is_written_not_raised(delivery: str) -> None:
    # log.info("%s %s", 1) raised TypeError into the caller and the event
    # was lost (plain structlog does the same; enrichlog promises the log
    # call never raises).
    buffer = io.StringIO()
    container = configure_logging(output=buffer, delivery=delivery)
    log = get_logger()
    log.info("%s %s", 1)  # noqa: PLE1206 - the mistake under test
    log.warning("%d items", "many")
    log.log(40, "%(missing)s", {"other": 1})
    log.info("%s and %s", 1, 2)
    asyncio.run(log.ainfo("%s %s", 9))
    container.shutdown()

    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [
        ("%s %s", [1], "TypeError"),
        ("%d items", ["many"], "TypeError"),
        ("%(missing)s", {"other": 1}, "KeyError"),  # the mapping, as the bridge keeps it
        ("1 and 2", None, None),
        ("%s %s", [9], "TypeError"),
    ] == [(ln["event"], ln.get("positional_args"), ln.get("format_error")) for ln in lines]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("\x1b[31mred\nnl", "control character"),
        ("a,b", "comma"),
        ("x" * 101, "longer than 100"),
        (" padded", "spaces around it"),
    ],
    ids=["escape-sequence", "comma", "too-long", "padded"],
)
def test_an_enricher_name_unfit_to_show_is_refused(name: str, problem: str) -> None:
    # An escape sequence in a name reached the terminal of whoever ran
    # `plan`, and broke its table and the Mermaid output.
    with pytest.raises(EnricherConfigError, match=problem):
        Plain(name=name)
    with pytest.raises(EnricherConfigError, match=problem):
        configure_logging(enrichers=[f"static://?a=1&name={quote(name)}"])


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_stack_info_renders_the_callers_stack(delivery: str) -> None:
    # stack_info=True was written as the field "stack_info": true.
    buffer = io.StringIO()
    container = configure_logging(output=buffer, delivery=delivery)

    def checkout_handler() -> None:
        get_logger().info("with stack", stack_info=True)

    checkout_handler()
    get_logger().info("without", stack_info=False)
    container.shutdown()

    first, second = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert "stack_info" not in first
    assert "in checkout_handler" in first["stack"].splitlines()[-2]
    assert "enrichlog/" not in first["stack"]
    assert "stack" not in second
