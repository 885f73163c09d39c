"""The stdlib ``logging`` bridge, logger names and per-logger levels."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, EnricherConfigError, LoggingSettings, get_logger
from enrichlog.container import configure_logging
from enrichlog.stdlib import EnrichlogHandler, FormatterEnrichment, record_to_event
from enrichlog.testing import LineSink, capture_events


class Tenant(AsyncEnricher):
    """Awaits, then adds ``tenant`` and what it saw of the context."""

    name = "tenant"
    timeout = 1.0

    def __init__(self, delay: float = 0.005, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = delay
        self.calls = 0

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        self.calls += 1
        await asyncio.sleep(self.delay)
        event_dict["tenant"] = "acme"
        event_dict["seen_request_id"] = event_dict.get("request_id")
        return event_dict


@pytest.fixture
def restore_stdlib() -> Iterator[None]:
    """Put the root logger's handlers and level back as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def stdlib_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, EnrichlogHandler)]


# -- stdlib=True ---------------------------------------------------------------------


@pytest.mark.usefixtures("restore_stdlib")
def test_stdlib_records_become_enriched_events_with_their_fields() -> None:
    container = configure_logging(output=LineSink(), stdlib=True, enrichers=[Tenant()])
    assert 1 == len(stdlib_handlers())
    assert logging.INFO == logging.getLogger().level
    structlog.contextvars.bind_contextvars(request_id="r1")
    try:
        with capture_events() as events:
            logging.getLogger("lib.db").info("%d rows from %s", 3, "users", extra={"table": "u"})
            try:
                raise KeyError("k")
            except KeyError:
                logging.getLogger("lib").exception("failed")
            logging.getLogger("lib").debug("below the level")
    finally:
        structlog.contextvars.clear_contextvars()
    container.shutdown()

    rows, failed = events
    assert {
        "event": "3 rows from users",
        "logger": "lib.db",
        "level": "info",
        "table": "u",
        "request_id": "r1",
        "tenant": "acme",
        "seen_request_id": "r1",
    }.items() <= rows.items()
    assert ("failed", "error", KeyError) == (
        failed["event"],
        failed["level"],
        failed["exc_info"][0],
    )
    assert [] == stdlib_handlers()
    assert logging.WARNING == logging.getLogger().level


@pytest.mark.usefixtures("restore_stdlib")
def test_the_rendered_line_has_the_formatted_exception() -> None:
    sink = LineSink()
    container = configure_logging(output=sink, stdlib=True)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("lib").error("math", exc_info=True)
    container.shutdown()

    (line,) = sink.events()
    assert "ZeroDivisionError" == line["exception"][0]["exc_type"]
    assert "exc_info" not in line


def test_extra_fields_cannot_replace_the_event_keys() -> None:
    record = logging.LogRecord("lib", logging.WARNING, __file__, 1, "msg %s", ("x",), None)
    record.__dict__.update({"event": "no", "logger": "no", "level": "no", "user_id": 7})

    assert ("warning", "msg x", {"user_id": 7}) == record_to_event(record)


def test_an_extra_field_whose_key_is_not_a_string_is_written_under_its_text() -> None:
    # Found by the seventeenth round: extra={1: "x"} made the handler raise
    # (AttributeError: 'int' object has no attribute 'startswith'); the
    # record was lost, without a word when logging.raiseExceptions is off.
    sink = LineSink()
    container = configure_logging(output=sink, stdlib=True)
    logging.getLogger("app").warning("order placed", extra={1: "x", "order": 7, "1": "y"})
    logging.getLogger("app").warning("named", extra={("event",): "t"})
    logging.getLogger("app").warning("next")
    report = container.shutdown()

    first, second, third = sink.events()
    assert (first["event"], first["order"], first["1"], first["1_2"]) == (
        "order placed",
        7,
        "y",
        "x",
    )
    assert (second["event"], second["('event',)"]) == ("named", "t")
    assert third["event"] == "next"
    assert report["written"] == 3


def test_a_message_that_cannot_be_formatted_keeps_its_arguments() -> None:
    # Found by an outside tester: logging.info("user %s paid %d", "alice")
    # became "user %s paid %d (not formattable with its arguments)" and
    # "alice" was lost, where enrichlog's own log.info() keeps the arguments
    # in positional_args and the exception's type in format_error.
    def event(msg: Any, args: Any, **extra: Any) -> tuple[str, str, dict[str, Any]]:
        record = logging.LogRecord("lib", 25, __file__, 1, msg, args, None)
        record.__dict__.update(extra)
        return record_to_event(record)

    assert (
        "info",
        "user %s paid %d",
        {"positional_args": ("alice",), "format_error": "TypeError"},
    ) == event("user %s paid %d", ("alice",))
    assert (
        "info",
        "%d apples",
        {"positional_args": ("many",), "format_error": "TypeError"},
    ) == event("%d apples", ("many",))
    # A "%(name)s" message's mapping, as the record holds it.
    assert (
        "info",
        "%(user)s paid",
        {"positional_args": {"amount": 3}, "format_error": "KeyError"},
    ) == event("%(user)s paid", ({"amount": 3},))
    # An extra= field of the same name is kept as given.
    assert (
        "info",
        "%d",
        {"positional_args": "mine", "format_error": "TypeError"},
    ) == event("%d", ("x",), positional_args="mine")


def test_a_message_object_whose_str_raises_names_what_raised_without_arguments() -> None:
    # Found by an outside tester: a message object whose __str__ raised, with
    # no arguments at all, was shown "(not formattable with its arguments)".
    record = logging.LogRecord("lib", logging.INFO, __file__, 1, NoStr(), (), None)

    method, message, fields = record_to_event(record)
    assert message.startswith("<tests.integrations.test_stdlib.NoStr object at ")
    assert ("info", {"format_error": "ValueError"}) == (method, fields)


@pytest.mark.usefixtures("restore_stdlib")
def test_records_of_enrichlog_itself_are_written_without_enrichment() -> None:
    tenant = Tenant()
    container = configure_logging(output=LineSink(), stdlib=True, enrichers=[tenant])
    with capture_events() as events:
        logging.getLogger("enrichlog").warning("enrichlog dropped %d event(s)", 3)
    container.shutdown()

    (report,) = events
    assert ("enrichlog dropped 3 event(s)", "enrichlog") == (report["event"], report["logger"])
    assert "tenant" not in report
    assert 0 == tenant.calls


class LogsFromInside(AsyncEnricher):
    """Logs through the stdlib from inside its own call, every time."""

    name = "chatty"

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        logging.getLogger("chatty.client").info("looking up %s", event_dict["event"])
        event_dict["looked_up"] = True
        return event_dict


def stdlib_logging_processor(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """A sync enricher that logs through the stdlib for every event."""
    logging.getLogger("app.audit").info("saw %s", event_dict["event"])
    return event_dict


@pytest.mark.usefixtures("restore_stdlib")
def test_logging_from_inside_enrichment_does_not_loop() -> None:
    sink = LineSink()
    container = configure_logging(
        output=sink, stdlib=True, enrichers=[LogsFromInside(), stdlib_logging_processor]
    )
    logging.getLogger("app").info("outer")
    container.shutdown()

    lines = sink.events()
    by_event = {line["event"]: line for line in lines}
    assert {"outer", "looking up outer", "saw outer"} == set(by_event), lines
    assert by_event["outer"]["looked_up"] is True
    assert "looked_up" not in by_event["looking up outer"]  # not enriched again


def test_a_chosen_logger_with_its_own_handler() -> None:
    logger = logging.getLogger("chosen")
    handler = EnrichlogHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        configure_logging(output=LineSink(), level="debug", enrichers=[Tenant()])
        with capture_events() as events:
            logger.debug("chosen %s", "one")
            logging.getLogger("chosen.child").warning("child")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)

    assert [("chosen one", "chosen", "acme"), ("child", "chosen.child", "acme")] == [
        (e["event"], e["logger"], e["tenant"]) for e in events
    ]


def test_without_a_container_warnings_go_to_standard_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = logging.getLogger("orphan")
    handler = EnrichlogHandler()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("nobody listens")
        logger.info("dropped")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True

    assert "nobody listens\n" == capsys.readouterr().err


@pytest.mark.usefixtures("restore_stdlib")
def test_a_record_logged_on_the_runtime_while_a_caller_waits_does_not_deadlock() -> None:
    class LogsOnTheLoop(AsyncEnricher):
        name = "loop_logger"
        timeout = 2.0

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            logging.getLogger("driver").warning("slow query")
            return event_dict

    sink = LineSink()
    container = configure_logging(
        output=sink, stdlib=True, delivery="inline", enrichers=[LogsOnTheLoop()]
    )
    done = threading.Event()

    def log() -> None:
        logging.getLogger("app").warning("inline caller")
        done.set()

    thread = threading.Thread(target=log)
    thread.start()
    assert done.wait(5)
    thread.join()
    container.shutdown()
    assert {"slow query", "inline caller"} == {line["event"] for line in sink.events()}


# -- FormatterEnrichment --------------------------------------------------------------


def formatter_handler(*pre_chain: Any) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, *pre_chain],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    logger = logging.getLogger(f"formatted.{id(stream)}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_formatter_enrichment_completes_the_event_synchronously() -> None:
    container = configure_logging(output=LineSink(), enrichers=[Tenant(delay=0.02)])
    logger, stream = formatter_handler(FormatterEnrichment())
    logger.info("from a library")
    container.shutdown()

    line = json.loads(stream.getvalue())
    assert {"event": "from a library", "level": "info", "tenant": "acme"}.items() <= line.items()


def test_formatter_enrichment_never_raises_and_records_what_failed() -> None:
    class Slow(AsyncEnricher):
        name = "slow"
        timeout = 0.05

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            await asyncio.sleep(5)
            return event_dict

    def dropper(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        raise structlog.DropEvent

    configure_logging(output=LineSink(), enrichers=[Slow()])
    logger, stream = formatter_handler(FormatterEnrichment())
    logger.info("slow one")
    configure_logging(output=LineSink(), enrichers=[dropper])
    logger.info("dropped one")

    slow, dropped = (json.loads(line) for line in stream.getvalue().splitlines())
    assert {"slow": "timeout"} == slow["enrichment_errors"]
    assert "dropped one" == dropped["event"]  # a formatter must write its line


def test_an_enricher_logging_to_the_formatter_s_own_handler_does_not_stall_it() -> None:
    # Found by an outside tester: the logging thread held the handler's lock
    # while it waited; the enricher's record (a driver's warning) waited for
    # that lock on the runtime's thread, so no timer of the loop fired: every
    # record took 2.5 s and was written without its fields or a reason.
    logger, stream = formatter_handler(FormatterEnrichment())

    class Chatty(AsyncEnricher):
        name = "chatty"
        timeout = 5.0

        async def enrich_async(
            self, logger_: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            logger.warning("driver says hi")  # to the same handler
            event_dict["chatty"] = 1
            return event_dict

    container = configure_logging(output=LineSink(), enrichers=[Chatty()])
    for i in range(3):
        logger.info("record %d", i)
    container.shutdown()

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    records = [line for line in lines if line["event"].startswith("record")]
    assert [1, 1, 1] == [line.get("chatty") for line in records]
    assert 3 == sum(line["event"] == "driver says hi" for line in lines)


def test_the_containers_own_processor_in_a_formatter_would_raise() -> None:
    container = configure_logging(output=LineSink(), enrichers=[Tenant()])
    logger, _ = formatter_handler(container.processor)
    with pytest.raises(structlog.DropEvent):
        logger.info("handed off")


def test_formatter_enrichment_without_a_container_passes_events_unchanged() -> None:
    logger, stream = formatter_handler(FormatterEnrichment())
    logger.info("plain")

    assert {"event": "plain", "level": "info"} == json.loads(stream.getvalue())


# -- logger names and per-logger levels ----------------------------------------------------


def test_named_loggers_carry_their_name() -> None:
    configure_logging(output=LineSink())
    with capture_events() as events:
        get_logger("api").info("named")
        get_logger("api").bind(user_id=1).info("bound")
        structlog.get_logger("api.v2").info("via structlog")
        get_logger().info("anonymous")
        get_logger("api").info("overridden", logger="explicit")

    assert [
        ("named", "api"),
        ("bound", "api"),
        ("via structlog", "api.v2"),
        ("anonymous", None),
        ("overridden", "explicit"),
    ] == [(e["event"], e.get("logger")) for e in events]


@pytest.mark.usefixtures("restore_stdlib")
def test_per_logger_levels_filter_structlog_and_stdlib_by_name_prefix() -> None:
    configure_logging(
        output=LineSink(),
        stdlib=True,
        levels={"uvicorn.access": "warning", "app": "debug", "app.noisy": "error"},
    )
    with capture_events() as events:
        for name in ("app", "app.db", "app.noisy.x", "application", "uvicorn.access", "other"):
            get_logger(name).debug(f"{name} debug")
            get_logger(name).info(f"{name} info")
            get_logger(name).warning(f"{name} warning")
            logging.getLogger(name).debug(f"stdlib {name} debug")
            logging.getLogger(name).info(f"stdlib {name} info")
            logging.getLogger(name).warning(f"stdlib {name} warning")
        get_logger().info("anonymous info")

    written = {e["event"] for e in events}
    for prefix in ("", "stdlib "):
        assert {f"{prefix}app debug", f"{prefix}app.db debug", f"{prefix}app.db info"} <= written
        assert f"{prefix}app.noisy.x warning" not in written
        assert f"{prefix}uvicorn.access info" not in written
        assert f"{prefix}uvicorn.access warning" in written
        assert f"{prefix}application debug" not in written
        assert {f"{prefix}application info", f"{prefix}other info"} <= written
    assert "anonymous info" in written


def test_levels_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICHLOG_LEVELS", "uvicorn.access=warning, app=DEBUG")
    assert {"uvicorn.access": "warning", "app": "debug"} == LoggingSettings().levels

    monkeypatch.setenv("ENRICHLOG_LEVELS", "app=verbose")
    with pytest.raises(EnricherConfigError, match=r"levels: logger 'app': unknown level 'verbose'"):
        configure_logging()


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ("app", "'app' is not 'logger=level'"),
        ({" app": "info"}, "logger name ' app' is not a dotted logger name"),
        ({"app": 15}, "logger 'app': unknown level 15"),
    ],
)
def test_bad_levels_name_the_culprit(levels: Any, message: str) -> None:
    with pytest.raises(EnricherConfigError, match=message):
        configure_logging(levels=levels)


async def test_formatter_enrichment_on_the_loop_that_runs_enrichment_does_not_wait() -> None:
    async with configure_logging(output=LineSink(), runtime="loop", enrichers=[Tenant(delay=5)]):
        logger, stream = formatter_handler(FormatterEnrichment())
        loop = asyncio.get_running_loop()
        started = loop.time()
        logger.info("on the loop")  # waiting here would block the loop enrichment needs
        elapsed = loop.time() - started

    line = json.loads(stream.getvalue())
    assert elapsed < 1.0
    assert {"tenant": "unavailable"} == line["enrichment_errors"]


class NoStr:
    def __str__(self) -> str:
        raise ValueError("no str")


class NoStrNoRepr(NoStr):
    def __repr__(self) -> str:
        raise ValueError("no repr")


def test_a_record_whose_message_cannot_be_shown_is_still_written() -> None:
    # Found by the attack round: str(record.msg) raised in the fallback, the
    # handler's handleError() printed a traceback and the record was lost.
    sink = LineSink()
    container = configure_logging(output=sink)
    lib = logging.getLogger("tests.unprintable")
    lib.propagate = False  # pytest's own capture handler would choke on them first
    handler = EnrichlogHandler()
    lib.addHandler(handler)
    try:
        for message in (NoStr(), NoStrNoRepr()):
            lib.warning(message)
    finally:
        lib.removeHandler(handler)
        lib.propagate = True
    report = container.shutdown()

    lines = [json.loads(line) for line in sink.lines]
    assert 2 == report.written
    assert lines[0]["event"].startswith("<tests.integrations.test_stdlib.NoStr object at ")
    assert ("<unprintable NoStrNoRepr>", "ValueError") == (
        lines[1]["event"],
        lines[1]["format_error"],
    )


def test_a_stdlib_record_with_the_wrong_arguments_is_written_with_them() -> None:
    # Found by an outside tester: through the handler, the arguments of a
    # record that did not fit its message never reached the line.
    sink = LineSink()
    container = configure_logging(output=sink)
    lib = logging.getLogger("tests.wrong_arguments")
    lib.propagate = False  # pytest's own capture handler would raise on them first
    lib.setLevel(logging.INFO)
    handler = EnrichlogHandler()
    lib.addHandler(handler)
    try:
        lib.info("user %s paid %d", "alice")
        lib.info("amount %d", "12.5 EUR")
    finally:
        lib.removeHandler(handler)
        lib.setLevel(logging.NOTSET)
        lib.propagate = True
    get_logger("tests.wrong_arguments").info("user %s paid %d", "alice")
    container.shutdown()

    short, wrong_type, own = (
        {key: value for key, value in line.items() if key != "timestamp"} for line in sink.events()
    )
    assert {
        "logger": "tests.wrong_arguments",
        "level": "info",
        "event": "user %s paid %d",
        "positional_args": ["alice"],
        "format_error": "TypeError",
    } == short
    assert ("amount %d", ["12.5 EUR"], "TypeError") == (
        wrong_type["event"],
        wrong_type["positional_args"],
        wrong_type["format_error"],
    )
    # The same fields as enrichlog's own logger gives the same call.
    assert short == own
