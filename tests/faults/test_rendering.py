"""Case 2: strings with lone surrogates, odd keys and odd values through
every renderer, on every path an event can take to its line.

Paths: ``caller`` (sync enrichers only: structlog renders on the calling
thread), ``inline`` (an async enricher; the caller waits for the runtime to
write), ``background`` (queued; the runtime writes). A sync enricher adds
the odd key or value each event names, as an enricher would.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from enrichlog import AsyncEnricher, SyncEnricher, configure_logging, get_logger

SURROGATE = b"caf\xe9".decode("utf-8", "surrogateescape")


class RaisesOnRepr:
    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc

    def __repr__(self) -> str:
        raise self.exc

    __str__ = __repr__


_CYCLE: list[Any] = []
_CYCLE.append(_CYCLE)

#: message -> the fields the enricher adds: any key, any value.
ODD: dict[str, dict[Any, Any]] = {
    "surrogate value": {"v": SURROGATE},
    "surrogate key": {SURROGATE: 1},
    "surrogate nested": {"v": {"k": [SURROGATE], SURROGATE: SURROGATE}},
    "key with space": {"a key": 1},
    "key with equals": {"a=b": 1},
    "key with quote": {'a"b': 1},
    "key with backslash": {"a\\b": 1},
    "empty key": {"": 1},
    "int key": {1: "one"},
    "tuple key": {(1, 2): "pair"},
    "none key": {None: "none"},
    "mixed keys": {1: "one", "b": 2, (3,): "t"},
    "bytes value": {"v": b"\xff\xfe"},
    "nan": {"v": float("nan")},
    "huge int": {"v": 10**40},
    "set value": {"v": {1, 2}},
    "object value": {"v": object()},
    "cyclic value": {"v": _CYCLE},
    # Found by an outside tester (each wrote a last-resort line without the
    # event's fields, or raised into the caller):
    "enormous int": {"v": 10**5000},  # past the interpreter's decimal digits limit
    "level not a string": {"level": 42},  # the console pads it as text
    "repr raising GeneratorExit": {"v": RaisesOnRepr(GeneratorExit)},
    "repr raising cancellation": {"v": RaisesOnRepr(asyncio.CancelledError)},
}
MESSAGES = [*ODD, SURROGATE]  # the surrogate as the message itself, too


class AddOdd(SyncEnricher):
    name = "odd"

    def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict.update(ODD.get(event_dict["event"], {}))
        return event_dict


class Passes(AsyncEnricher):
    """Makes the event go through the runtime."""

    name = "passes"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        event_dict["passed"] = True
        return event_dict


def _configure(log_file: Path, fmt: str, path: str) -> Any:
    enrichers: list[Any] = [AddOdd()] if path == "caller" else [AddOdd(), Passes()]
    return configure_logging(
        enrichers=enrichers,
        output=str(log_file),
        format=fmt,
        delivery="background" if path == "background" else "inline",
    )


def _log_every_message() -> list[str]:
    raised = []
    log = get_logger()
    for message in MESSAGES:
        try:
            log.info(message)
        except Exception as exc:
            raised.append(f"{message!r}: {exc!r}")
    return raised


def test_the_json_renderer_in_use_is_orjson() -> None:
    from enrichlog.engine import chain

    assert chain.orjson is not None, "install the test extra: orjson is part of it"


@pytest.mark.parametrize("path", ["caller", "inline", "background"])
@pytest.mark.parametrize("fmt", ["json", "logfmt", "console"])
def test_odd_strings_and_keys_never_raise_and_every_event_is_written(
    log_file: Path, fmt: str, path: str
) -> None:
    container = _configure(log_file, fmt, path)

    raised = _log_every_message()
    container.flush(10)
    report = container.shutdown()

    lines = log_file.read_bytes().splitlines()
    assert [] == raised
    assert (len(MESSAGES), len(MESSAGES)) == (len(lines), report["written"])


@pytest.mark.parametrize("path", ["caller", "background"])
@pytest.mark.parametrize("fmt", ["json", "logfmt", "console"])
def test_each_fallback_rendering_is_counted_and_marks_its_line(
    log_file: Path, fmt: str, path: str
) -> None:
    container = _configure(log_file, fmt, path)

    _log_every_message()
    container.flush(10)
    fallbacks = container.metrics()["render_fallbacks"]
    container.shutdown()

    marked = [line for line in log_file.read_bytes().splitlines() if b"render_error" in line]
    assert fallbacks > 0
    assert fallbacks == len(marked)


_LOGFMT_PAIR = re.compile(r'([^\s=]+)(?:=("(?:[^"\\]|\\.)*"|\S*))?')


def _logfmt_pairs(line: str) -> list[tuple[str, str]]:
    """``key=value`` pairs as a logfmt reader splits them (``key`` up to
    the first ``=``; a value quoted or up to the next space)."""
    return [(key, value) for key, value in _LOGFMT_PAIR.findall(line)]


def test_a_logfmt_line_with_ordinary_keys_parses_back_into_its_fields(log_file: Path) -> None:
    container = configure_logging(output=str(log_file), format="logfmt", delivery="inline")

    get_logger().info("hello world", user="bob smith", n=1)
    container.shutdown()

    pairs = dict(_logfmt_pairs(log_file.read_text().strip()))
    assert {"event": '"hello world"', "user": '"bob smith"', "n": "1", "level": "info"} == {
        key: pairs[key] for key in ("event", "user", "n", "level")
    }


@pytest.mark.parametrize("path", ["caller", "background"])
def test_a_logfmt_key_containing_equals_cannot_forge_another_field(
    log_file: Path, path: str
) -> None:
    class ForgedKey(SyncEnricher):
        name = "forged"

        def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            event_dict["level=error"] = 1  # e.g. a key taken from a request
            return event_dict

    enrichers: list[Any] = [ForgedKey()] if path == "caller" else [ForgedKey(), Passes()]
    container = configure_logging(
        enrichers=enrichers,
        output=str(log_file),
        format="logfmt",
        delivery="background" if path == "background" else "inline",
    )

    get_logger().info("login")
    container.shutdown()

    pairs = _logfmt_pairs(log_file.read_text().strip())
    assert ["info"] == [value for key, value in pairs if key == "level"]


@pytest.mark.parametrize("fmt", ["json", "logfmt", "console"])
@pytest.mark.parametrize(
    "odd",
    [{"k" + SURROGATE: 1}, {"n": 10**5000}, {"level": 42}, {"v": RaisesOnRepr(GeneratorExit)}],
    ids=["surrogate key", "enormous int", "level not a string", "repr raising"],
)
def test_a_fallback_line_keeps_the_event_s_other_fields(
    log_file: Path, fmt: str, odd: dict[Any, Any]
) -> None:
    # Found by an outside tester: in logfmt a surrogate key, in every format an
    # int past 4,300 digits, in the console a `level` that is no string gave a
    # last-resort line holding the message alone.
    class Adds(SyncEnricher):
        name = "adds"

        def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            event_dict.update(odd)
            return event_dict

    container = configure_logging(
        enrichers=[Adds()], output=str(log_file), format=fmt, delivery="inline"
    )
    get_logger().warning("login failed", user="alice", request_id="r-1")
    fallbacks = container.metrics()["render_fallbacks"]
    container.shutdown()

    line = log_file.read_bytes().decode("utf-8", "backslashreplace")
    assert ("alice", "r-1", "login failed", line.count("render_error")) == (
        "alice" * ("alice" in line),
        "r-1" * ("r-1" in line),
        "login failed" * ("login failed" in line),
        fallbacks,
    ), line


def test_an_interrupt_in_a_render_on_the_main_thread_reaches_the_application(
    log_file: Path,
) -> None:
    # Ctrl-C landing while the main thread renders its own line is the
    # application's, as in the output's write: raised, not written as a
    # render_error (found by a review of the fallback above). On other
    # threads it is survived (tests/faults/test_fifth_attack_round.py).
    container = configure_logging(output=str(log_file), format="console", delivery="inline")
    with pytest.raises(KeyboardInterrupt):
        get_logger().info("interrupted", v=RaisesOnRepr(KeyboardInterrupt))
    get_logger().info("after")
    container.shutdown()

    lines = log_file.read_text().splitlines()
    assert (1, True) == (len(lines), "] after" in lines[0])


def test_uuids_and_decimals_are_written_as_their_text(log_file: Path) -> None:
    # Found by an outside tester (a database driver's own UUID type, and
    # numeric columns): "UUID('...')" and "Decimal('12.50')" in JSON lines.
    import decimal
    import json
    import uuid

    class DriverUUID(uuid.UUID):  # as asyncpg's: a subclass orjson does not take
        pass

    identifier = "0b8c1fd6-51f5-4a6f-9c5e-6b1f2b3c4d5e"
    configure_logging(output=str(log_file))
    get_logger().info(
        "e",
        account=DriverUUID(identifier),
        balance=decimal.Decimal("12.50"),
        plain=uuid.UUID(identifier),
    )
    from enrichlog.container import current_container

    container = current_container()
    assert container is not None
    container.shutdown()

    line = json.loads(log_file.read_text())
    assert (identifier, "12.50", identifier) == (line["account"], line["balance"], line["plain"])
