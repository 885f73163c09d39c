"""Found by the sixth outside attack round (testers with only the README and
the docs), each kept as a test. (The others of that round are kept beside
the behaviour they test: the lookups, batching, the loop runtime.)"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, EnricherConfigError, configure_logging, get_logger
from tests.helpers import read_lines

ERRORS = "enrichment_errors"


def forging_sync(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict[ERRORS] = "forged by a sync enricher"
    event_dict["sync"] = True
    return event_dict


class ForgingAsync(AsyncEnricher):
    name = "forging_async"

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict[ERRORS] = {"other": "forged by an async enricher"}
        event_dict["async"] = True
        return event_dict


class ForgingBatch(AsyncEnricher):
    """A backend whose rows hold a field named like the error field."""

    name = "forging_batch"

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict.get("k")

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        return {key: {ERRORS: "forged by a row", "row": key} for key in keys}

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        event_dict.update(value)
        return event_dict


class Down(AsyncEnricher):
    name = "down"

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        raise ConnectionError("down")


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_no_enricher_or_backend_row_sets_the_error_field(log_file: Path, delivery: str) -> None:
    # Found by an outside tester: an HTTP answer, a Redis hash or a row with a
    # field named enrichment_errors was written there ("forged"), or merged
    # with the real reasons when another enricher failed.
    container = configure_logging(
        enrichers=[forging_sync, ForgingAsync(), ForgingBatch()],
        output=str(log_file),
        delivery=delivery,
    )
    get_logger().info("clean", k=1)
    container.shutdown()
    configure_logging(
        enrichers=[forging_sync, ForgingAsync(), ForgingBatch(), Down()],
        output=str(log_file),
        delivery=delivery,
    )
    get_logger().info("one failed", k=2)
    configure_logging(output=str(log_file)).shutdown()

    clean, failed = read_lines(log_file)
    assert (True, True, 1) == (clean["sync"], clean["async"], clean["row"])
    assert ERRORS not in clean
    assert {"down": "error: ConnectionError"} == failed[ERRORS]
    assert (True, True, 2) == (failed["sync"], failed["async"], failed["row"])


def test_an_enricher_that_provides_the_error_field_is_refused(log_file: Path) -> None:
    with pytest.raises(EnricherConfigError, match=r"enricher 'forging_async' provides '"):
        configure_logging(enrichers=[ForgingAsync(provides=[ERRORS])], output=str(log_file))
    with pytest.raises(EnricherConfigError, match=r"query key 'into': into names a key every"):
        configure_logging(
            enrichers=["redis-lookup://127.0.0.1:6379/0?key=u:{k}&into=event"],
            output=str(log_file),
        )
    uri = "redis-lookup://127.0.0.1:6379/0?key=u:{k}&into=" + ERRORS
    with pytest.raises(EnricherConfigError, match=r"provides 'enrichment_errors'"):
        configure_logging(enrichers=[uri], output=str(log_file))
    # With the error field elsewhere, that key is an ordinary one.
    configure_logging(enrichers=[uri], output=str(log_file), error_field="errors").shutdown()


def _cyclic_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"name": "loop"}
    value["self"] = value
    return value


def _cyclic_list() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def stamp(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict["stamped"] = True
    return event_dict


class Stamps(AsyncEnricher):
    name = "stamps"

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict["stamped"] = True
        return event_dict


@pytest.mark.parametrize("kind", ["sync", "async", "blocking"])
def test_a_value_that_holds_itself_or_nests_deep_is_enriched_and_written(
    log_file: Path, kind: str
) -> None:
    # Found by an outside tester: with a sync enricher the log call raised
    # RecursionError (the event lost, counted nowhere); with an async one the
    # enricher, never called, failed with RecursionError and its breaker
    # opened for every later event. (Copying the event for the enricher
    # recursed without end.)
    from enrichlog import register_enricher

    enricher: Any = {
        "sync": stamp,
        "async": Stamps(failure_threshold=2),
        "blocking": register_enricher(stamp, name="stamp_blocking", blocking=True),
    }[kind]
    container = configure_logging(enrichers=[enricher], output=str(log_file))
    log = get_logger()
    for _ in range(3):
        log.info("cyclic dict", payload=_cyclic_dict())
        log.info("cyclic list", payload=_cyclic_list())
        log.info("deep", payload=_nested(600))
        log.info("deeper than the recursion limit", payload=_nested(5000))
    log.info("plain")
    report = container.shutdown()

    lines = read_lines(log_file)
    assert (13, 13) == (report["written"], len(lines))
    assert all(line.get("stamped") for line in lines)
    assert all(ERRORS not in line for line in lines)


def test_logfmt_quotes_and_escapes_every_value_that_is_not_plain(log_file: Path) -> None:
    # Found by an outside tester: a tab, a carriage return or another control
    # character went out raw and unquoted, so `user=mallory<TAB>admin` read
    # back as two fields, and a raw CR split the line in universal-newline mode.
    values = ["mallory\tadmin", "ok\rlevel=error", "a\x1b[31m", "a\x00b", "a\x85b", "a\u2028b"]
    container = configure_logging(output=str(log_file), format="logfmt")
    for value in values:
        get_logger().info("e", user=value, plain="ok", spaced="a b")
    container.shutdown()

    raw = log_file.read_bytes().split(b"\n")[:-1]
    assert len(values) == len(raw)
    assert all(line.isascii() and b"\r" not in line for line in raw)
    assert [
        'user="mallory\\tadmin"',
        'user="ok\\rlevel=error"',
        'user="a\\x1b[31m"',
        'user="a\\x00b"',
        'user="a\\x85b"',
        'user="a\\u2028b"',
    ] == [line.decode().split(" plain=")[0] for line in raw]
    assert all(b' plain=ok spaced="a b" event=e' in line for line in raw)


def test_without_orjson_tuples_that_hold_themselves_or_nest_deep_are_written(
    tmp_path: Path,
) -> None:
    # Found by an outside tester: such tuples crash orjson (the process);
    # the documented way out is the standard library's encoder.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys
        sys.modules["orjson"] = None  # as without the extra
        from enrichlog import configure_logging, get_logger
        cycle = []
        cycle.append((cycle,))
        deep = ()
        for _ in range(100_000):
            deep = (deep,)
        container = configure_logging(output=sys.argv[1])
        for value in (cycle, {"t": (cycle,)}, deep):
            get_logger().info("odd", payload=value)
        get_logger().info("after")
        print(container.shutdown()["written"])
        """
    )
    out = tmp_path / "out.log"
    child = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert (0, "4") == (child.returncode, child.stdout.strip())
    assert ["odd", "odd", "odd", "after"] == [line["event"] for line in read_lines(out)]


class _Unprintable:
    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Unprintable)

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def _deep_tuple(depth: int) -> tuple[Any, ...]:
    deep: tuple[Any, ...] = ()
    for _ in range(depth):
        deep = (deep,)
    return deep


# The keys themselves (not in the events: orjson could not render those).
_KEYS: dict[str, Hashable] = {
    "unprintable": _Unprintable(),
    "deep": _deep_tuple(3000),
    "plain": "plain",
}


class KeyedByAnything(AsyncEnricher):
    name = "keyed"
    cache_error_ttl = 0.01

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return _KEYS[event_dict["key"]]

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        self.calls += 1
        event_dict["looked_up"] = True
        return event_dict


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_a_cache_key_whose_repr_fails_is_looked_up_like_any_other(
    log_file: Path, delivery: str
) -> None:
    # Found by an outside tester: the key's repr() named the lookup's task;
    # when it failed, that event failed (RuntimeError, RecursionError) and
    # every later one with the key got AttributeError, for good.
    enricher = KeyedByAnything()
    container = configure_logging(enrichers=[enricher], output=str(log_file), delivery=delivery)
    for key in ("unprintable", "unprintable", "deep", "deep", "plain"):
        get_logger().info("e", key=key)
    container.shutdown()

    lines = read_lines(log_file)
    assert [True] * 5 == [line.get("looked_up") for line in lines]
    assert all(ERRORS not in line for line in lines)
    assert 3 == enricher.calls  # one per key: the cache answers the others


def test_logfmt_keys_made_plain_take_no_other_fields_value(log_file: Path) -> None:
    # Found by a re-test: 'a b', 'a_b' and 'a=b' all became a_b, and only one
    # value survived; an application's own render_error was overwritten; an
    # empty key was written as it is (a line starting with '=').
    container = configure_logging(output=str(log_file), format="logfmt")
    log = get_logger()
    log.info("e", **{"a b": "1", "a_b": "2", "a=b": "3"})
    log.info("e", **{"": "empty", "render_error": "mine"})
    container.shutdown()

    first, second = log_file.read_text().splitlines()
    assert first.startswith("a_b=1 a_b_2=2 a_b_3=3 event=e ")
    assert second.startswith("_=empty event=e ")
    assert ' render_error_2=mine render_error="ValueError' in second


def test_console_lines_escape_control_characters(log_file: Path) -> None:
    # Found by a re-test: ESC, CR, NEL, U+2028 and other controls went to the
    # file (or terminal) raw: one event read as several lines, or coloured it.
    container = configure_logging(output=str(log_file), format="console")
    get_logger().info("msg\x1b[31m\rover", v="a\x85b\u2028c\x0bd", t="a\tb")
    get_logger().info("key", **{"k\x1b[31mey\r": 1})  # a review: keys too
    container.shutdown()

    text = log_file.read_text()
    assert 2 == len(text.splitlines())
    assert "\x1b" not in text
    assert "k\\x1b[31mey\\x0d=1" in text
    assert "msg\\x1b[31m\\x0dover" in text
    assert "a\\x85b\\u2028c\\x0bd" in text


class _Shows:
    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


@pytest.mark.parametrize("colors", [False, True])
def test_console_escapes_what_objects_and_tracebacks_show(colors: bool) -> None:
    # Found by a re-test of the fix above: an exception or an object as the
    # message, an object's repr() as a value, and the exception's text in a
    # traceback went out raw.
    from enrichlog.engine.chain import make_renderer

    render = make_renderer("console", colors=colors)
    hostile = "x\x1b[2J\x1b[31m\rFAKE\u2028y\x85z"
    lines = [
        render(None, "error", {"event": ValueError(hostile)}),
        render(None, "info", {"event": _Shows(hostile), "user": _Shows(hostile)}),
    ]
    try:
        raise ValueError(hostile)
    except ValueError:
        lines.append(render(None, "error", {"event": "failed", "exc_info": sys.exc_info()}))

    for line in lines:
        shown = line.replace("\x1b[", "") if colors else line  # the renderer's own colours
        assert "\x1b[2J" not in line
        assert "\r" not in shown
        assert "\u2028" not in shown
        assert "\x85" not in shown
    assert "x\\x1b[2J\\x1b[31m\\x0dFAKE\\u2028y\\x85z" in lines[0]


def test_enrichlogs_own_reports_carry_no_events_context(log_file: Path) -> None:
    # Found by an outside tester: the "circuit closed -> open" report came
    # out with the request id of whichever request's event opened it.
    import structlog

    container = configure_logging(
        enrichers=[Down(failure_threshold=1)], output=str(log_file), stdlib=True
    )
    structlog.contextvars.bind_contextvars(request_id="req-1")
    try:
        get_logger().info("request")
    finally:
        structlog.contextvars.clear_contextvars()
    container.shutdown()

    lines = read_lines(log_file)
    reports = [line for line in lines if line.get("logger") == "enrichlog"]
    assert ["req-1"] == [line.get("request_id") for line in lines if line["event"] == "request"]
    assert reports
    assert all("request_id" not in line for line in reports)
