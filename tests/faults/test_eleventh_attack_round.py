"""Found by the eleventh outside attack round (testers with only the README
and the docs: the docs as a contract; the testing helpers, OpenTelemetry and
outputs), each kept as a test. (The others of that round are kept beside
the behaviour they test: the lookups, masking, the command line.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, configure_logging, get_logger
from enrichlog.engine.output import reopen_files
from enrichlog.testing import EnricherRunner, LineSink
from tests.faults.runner import script_env


def run_code(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python process of its own."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_python(code: str, *args: str) -> dict[str, Any]:
    """Run ``code`` in a Python process of its own; the JSON object it
    prints last on stdout."""
    proc = run_code(code, *args)
    assert 0 == proc.returncode, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


ROWS = {1: {"name": "ann", "tier": "gold"}, 2: {"name": "bob", "tier": "free"}}


class BatchedTiers(AsyncEnricher):
    """A batching lookup that keeps the event's own fields."""

    keep_existing = True
    cache_ttl = 60.0

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[list[Hashable]] = []

    def cache_key(self, event_dict: EventDict) -> Hashable:
        return event_dict.get("user_id")

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        self.keys.append(list(keys))
        return {key: ROWS[key] for key in keys if key in ROWS}  # type: ignore[index]

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        event_dict.update(value)
        return event_dict


class Tiers(AsyncEnricher):
    """The same, one event at a time."""

    keep_existing = True
    cache_ttl = 60.0

    def cache_key(self, event_dict: EventDict) -> Hashable:
        return event_dict.get("user_id")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict.update(ROWS.get(event_dict.get("user_id"), {}))  # type: ignore[arg-type]
        return event_dict


@pytest.mark.parametrize("enricher", [BatchedTiers, Tiers])
@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_keep_existing_keeps_each_events_own_fields_through_the_cache(
    enricher: type[AsyncEnricher], delivery: str
) -> None:
    # The changes of a key are worked out once and cached: with setdefault in
    # apply, the first event's call-site field decided for every later event
    # of its key. keep_existing leaves that to the runtime, per event.
    sink = LineSink()
    container = configure_logging(enrichers=[enricher()], output=sink, delivery=delivery)
    log = get_logger()

    log.info("a1", user_id=1, tier="call site")
    container.flush()
    log.info("a2", user_id=1)
    log.info("b1", user_id=2)
    container.flush()
    log.info("b2", user_id=2, tier="call site")
    container.shutdown()

    assert {
        "a1": ("ann", "call site"),
        "a2": ("ann", "gold"),
        "b1": ("bob", "free"),
        "b2": ("bob", "call site"),
    } == {e["event"]: (e.get("name"), e.get("tier")) for e in sink.events()}


def test_without_keep_existing_an_enricher_still_replaces_fields() -> None:
    class Replacing(Tiers):
        keep_existing = False

    sink = LineSink()
    container = configure_logging(enrichers=[Replacing()], output=sink, delivery="inline")

    get_logger().info("a", user_id=1, tier="call site")
    container.shutdown()

    assert "gold" == sink.events()[0]["tier"]


def test_the_runner_keeps_the_events_own_fields_too() -> None:
    with EnricherRunner(BatchedTiers()) as runner:
        first = runner.run({"event": "a", "user_id": 1, "tier": "call site"})
        second = runner.run({"event": "b", "user_id": 1})

    assert ("ann", "call site") == (first.event["name"], first.event["tier"])
    assert ("ann", "gold") == (second.event["name"], second.event["tier"])


CLOSED_STDERR = """
    import asyncio, json, sys
    from enrichlog import AsyncEnricher, configure_logging, get_logger

    class Awaiting(AsyncEnricher):
        async def enrich_async(self, logger, method_name, event_dict):
            await asyncio.sleep(0)
            event_dict["awaited"] = True
            return event_dict

    output, delivery = sys.argv[1:]
    container = configure_logging(
        output=output,
        enrichers=[Awaiting()] if delivery == "background" else [],
        delivery=delivery,
    )
    log = get_logger()
    raised = []
    for i in range(200):
        if i == 50:
            sys.stderr.close()  # a daemonised process's
        try:
            log.info("e", i=i)
        except BaseException as exc:
            raised.append(repr(exc))
    try:
        report = dict(container.shutdown())
    except BaseException as exc:
        report = {"raised": repr(exc)}
    print(json.dumps({"raised": raised, "report": report}))
"""


@pytest.mark.parametrize("output", ["/dev/full", "stderr"])
@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_a_closed_stderr_raises_into_no_log_call_and_no_shutdown(
    output: str, delivery: str
) -> None:
    # enrichlog's write-failure report went to logging's last resort, whose
    # error path raised ValueError on the closed sys.stderr: into the log
    # call (inline) and shutdown(), which then left the enrichers running.
    result = run_python(CLOSED_STDERR, output, delivery)

    assert [] == result["raised"]
    report = result["report"]
    assert 200 == report["written"] + report["write_failed"]
    assert 0 == report["pending"]
    if output == "/dev/full":
        assert 200 == report["write_failed"]


def test_sighup_with_a_named_pipe_whose_reader_is_gone_does_not_hang(tmp_path: Path) -> None:
    # The reopen on SIGHUP opened the pipe waiting for a reader: the signal
    # handler, and the application's main thread with it, hung for good.
    fifo = tmp_path / "app.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def read_one_line() -> None:
        with open(fifo, "rb") as reader:
            got.append(reader.readline())

    reader = threading.Thread(target=read_one_line)
    reader.start()
    container = configure_logging(output=str(fifo))  # opens once the reader is there
    get_logger().info("first")
    reader.join(10)
    reopening = threading.Thread(target=reopen_files, daemon=True)
    reopening.start()
    reopening.join(5)

    assert not reopening.is_alive()
    assert 0 == reopen_files()  # a pipe is not rotated
    get_logger().info("after the reader left")
    report = container.shutdown()
    assert b'"event":"first"' in got[0]
    assert (1, 1) == (report["written"], report["write_failed"])


class RefusingSink:
    def write(self, text: str) -> None:
        raise OSError("no room")


def test_a_new_outputs_first_failure_is_reported_after_a_reconfiguration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The writer structlog holds is retargeted on reconfiguration; it kept the
    # previous output's last report time, so a new output failing within
    # drop_report_interval (10 s) of the old one's failure went unreported.
    for output in ("/dev/full", RefusingSink()):
        container = configure_logging(output=output)
        get_logger().info("lost")
        reported = [r.getMessage() for r in caplog.records if "could not write" in r.getMessage()]
        caplog.clear()
        container.shutdown()

        # At once, as its own failure (not summed up with the other output's
        # at shutdown, "since its last report (2 in all)").
        assert 1 == len(reported)
        assert "since its last report" not in reported[0]


LOGS_AT_EXIT = """
    import asyncio, atexit, logging, sys
    from enrichlog import AsyncEnricher, configure_logging, get_logger

    class Awaiting(AsyncEnricher):
        async def enrich_async(self, logger, method_name, event_dict):
            await asyncio.sleep(0.001)
            event_dict["awaited"] = True
            return event_dict

    path, delivery = sys.argv[1:]
    library = logging.getLogger("thirdparty")

    def closing_pools():  # registered first: runs after enrichlog's exit drain
        library.info("late info")
        library.warning("late warning")
        get_logger("app").info("late structlog")

    atexit.register(closing_pools)
    enrichers = [Awaiting()] if delivery == "background" else []
    configure_logging(output=path, stdlib=True, enrichers=enrichers)
    for i in range(50):
        library.info("main %d", i)
    print("{}")
"""


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_stdlib_records_logged_after_the_exit_drain_are_written(
    tmp_path: Path, delivery: str
) -> None:
    # The bridge was removed by the exit drain: a library logging at exit
    # (closing its pools) had its WARNING on stderr, its INFO dropped.
    path = tmp_path / "app.log"
    run_python(LOGS_AT_EXIT, str(path), delivery)

    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert 53 == len(events)
    assert ["late info", "late warning", "late structlog"] == events[-3:]


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr")


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_console_keeps_the_applications_traceback_when_a_field_cannot_be_shown(
    delivery: str,
) -> None:
    # The fallback rendering ran while handling the renderer's failure, so
    # exc_info=True read that one: enrichlog's frames in the line, the
    # application's KeyError lost (background) or chained under it (inline).
    sink = LineSink()
    container = configure_logging(output=sink, format="console", delivery=delivery)
    try:
        raise KeyError("the-app-error")
    except KeyError:
        get_logger().exception("failed", bad=BadRepr())
    container.shutdown()

    text = "".join(sink.lines)
    assert "the-app-error" in text
    assert "enrichlog" not in text.replace("test_eleventh_attack_round", "")
    assert "During handling" not in text
    assert "render_error" in text


LOOP_ENDS_WITH_CALLS_STARTING = """
    import asyncio, gc, json
    from enrichlog import AsyncEnricher, configure_logging, get_logger
    from enrichlog.testing import LineSink

    class UserLookup(AsyncEnricher):
        async def enrich_async(self, logger, method_name, event_dict):
            await asyncio.sleep(0.05)
            event_dict["user_name"] = "alice"
            return event_dict

    sink = LineSink()

    async def main():
        configure_logging(enrichers=[UserLookup()], runtime="loop", output=sink)
        await asyncio.sleep(0.1)
        for i in range(20):  # their calls start as asyncio.run cancels what is left
            get_logger().info("p", i=i)

    asyncio.run(main())
    configure_logging(output=LineSink())
    gc.collect()
    print(json.dumps({"written": len(sink.lines)}))
"""


def test_calls_started_as_the_loop_ends_are_not_destroyed_pending() -> None:
    # asyncio.run awaits the tasks there were when it started cancelling:
    # the calls started after (some not begun, so not cancelled by the
    # exit hook) were "destroyed but pending" when the loop closed.
    proc = run_code(LOOP_ENDS_WITH_CALLS_STARTING)

    assert '{"written": 20}' == proc.stdout.strip()
    assert "Task was destroyed" not in proc.stderr


def test_a_lookups_params_built_in_code_never_show_the_password_in_an_error() -> None:
    # pydantic's own message quoted the whole input, password included.
    from pydantic import ValidationError

    from enrichlog.enrichers import (
        HttpLookupEnricher,
        PostgresLookupEnricher,
        RedisLookupEnricher,
    )

    attempts = [
        lambda: PostgresLookupEnricher.Params(
            password="hunter2", table="users", from_="user_id", columns=("name",), pool_size=5
        ),
        lambda: RedisLookupEnricher.Params(password="hunter2", key="u:{id}", pool=1),
        lambda: HttpLookupEnricher.Params(password="hunter2", host="h", path="/u/{id}", x=1),
    ]
    for attempt in attempts:
        with pytest.raises(ValidationError) as raised:
            attempt()
        assert "hunter2" not in str(raised.value)


def test_the_shutdown_summary_counts_its_own_outputs_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # "(N in all)" added up the failures of every earlier container's output.
    for _ in range(3):
        container = configure_logging(output=RefusingSink(), delivery="inline")
        get_logger().info("a")
        get_logger().info("b")
    container.shutdown()

    summary = [r.getMessage() for r in caplog.records if "since its last report" in r.getMessage()]
    assert summary[-1].endswith("(2 in all)")


LOOP_CLOSED_BY_HAND = """
    import asyncio, json, sys, time
    from enrichlog import AsyncEnricher, configure_logging, get_logger

    class Slow(AsyncEnricher):
        async def enrich_async(self, logger, method_name, event_dict):
            await asyncio.sleep(0.1)
            event_dict["slow"] = 1
            return event_dict

    path, delivery = sys.argv[1:]

    async def main():
        container = configure_logging(
            enrichers=[Slow()], runtime="loop", delivery=delivery, output=path
        )
        await container.astartup()
        for i in range(20):  # more than the loop takes up before it stops
            get_logger().info("in the loop", i=i)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
    loop.close()  # by hand: no asyncio.run end, no exit hook
    took = []
    for i in range(5):
        started = time.monotonic()
        get_logger().info("after the close", i=i)
        took.append(time.monotonic() - started)
    lines = sum(1 for _ in open(path))
    print(json.dumps({"longest": max(took), "lines": lines}))
"""


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_a_loop_closed_by_hand_is_found_by_the_next_log_call(tmp_path: Path, delivery: str) -> None:
    # With the loop awake when it was closed, no wake-up failed, so nothing
    # found it out: each inline call waited 4.5 s and wrote nothing, and in
    # background no line came until a flush or the exit; the calls left in
    # the loop were then reported "destroyed but pending".
    path = tmp_path / "app.log"
    proc = run_code(LOOP_CLOSED_BY_HAND, str(path), delivery)

    result = json.loads(proc.stdout.splitlines()[-1])
    assert 25 == result["lines"]
    assert result["longest"] < 2.0
    assert "Task was destroyed" not in proc.stderr
    assert "never awaited" not in proc.stderr


PLAN = {"name": "pro"}


class ConstantBatched(AsyncEnricher):
    """Sets constants and an equal dict: the values a first event may hold."""

    cache_ttl = 60.0

    def cache_key(self, event_dict: EventDict) -> Hashable:
        return event_dict.get("user_id")

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        return dict.fromkeys(keys, True)

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        event_dict.update(tier="gold", seats=5, active=value)
        event_dict["plan"] = dict(PLAN)
        return event_dict


class ConstantCached(AsyncEnricher):
    cache_ttl = 60.0

    def cache_key(self, event_dict: EventDict) -> Hashable:
        return event_dict.get("user_id")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict.update(tier="gold", seats=5, active=True)
        event_dict["plan"] = dict(PLAN)
        return event_dict


class KeptConstantBatched(ConstantBatched):
    keep_existing = True


@pytest.mark.parametrize("enricher", [ConstantBatched, ConstantCached, KeptConstantBatched])
@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_a_first_event_holding_the_same_values_does_not_blank_its_key(
    enricher: type[AsyncEnricher], delivery: str
) -> None:
    # Changes were worked out against the first event of a key: a field it
    # already held with the very value (a constant, an equal dict) was "no
    # change", and every later event of the key went without it, no reason
    # given, while cached.
    sink = LineSink()
    container = configure_logging(enrichers=[enricher()], output=sink, delivery=delivery)
    log = get_logger()

    log.info("first", user_id=7, tier="gold", seats=5, active=True, plan={"name": "pro"})
    container.flush()
    log.info("second", user_id=7)
    container.shutdown()

    second = sink.events()[1]
    assert ("gold", 5, True, {"name": "pro"}) == (
        second.get("tier"),
        second.get("seats"),
        second.get("active"),
        second.get("plan"),
    )


class CachedRedaction(AsyncEnricher):
    """Looks a user up (cached) and drops any password the event carries."""

    cache_ttl = 60.0

    def cache_key(self, event_dict: EventDict) -> Hashable:
        return event_dict.get("user_id")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict.pop("password", None)
        del event_dict["token"]  # every event of these tests has one
        event_dict["tier"] = "gold"
        return event_dict


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_a_cached_removal_applies_to_the_keys_later_events(delivery: str) -> None:
    # A pop that found nothing on the key's first event was no change: later
    # events of the key were written with their password in the clear.
    sink = LineSink()
    container = configure_logging(enrichers=[CachedRedaction()], output=sink, delivery=delivery)
    log = get_logger()

    log.info("first", user_id=1, token="t1")
    container.flush()
    log.info("second", user_id=1, token="t2", password="hunter2")
    container.shutdown()

    second = sink.events()[1]
    assert ("gold", None, None) == (
        second.get("tier"),
        second.get("password"),
        second.get("token"),
    )


PENDING_AINFO_AT_CLOSE = """
    import asyncio, json, sys, time
    from enrichlog import AsyncEnricher, configure_logging, get_logger

    class Slow(AsyncEnricher):
        timeout = 1.0

        async def enrich_async(self, logger, method_name, event_dict):
            await asyncio.sleep(0.3)
            event_dict["slow"] = 1
            return event_dict

    path, delivery = sys.argv[1:]
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def main():
        container = configure_logging(
            enrichers=[Slow()], output=path, delivery=delivery, runtime="loop"
        )
        await container.astartup()
        asyncio.ensure_future(get_logger().ainfo("pending"))
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    loop.close()
    took = []
    for i in range(3):
        started = time.monotonic()
        get_logger().info("after", i=i)
        took.append(time.monotonic() - started)
    print(json.dumps({"longest": max(took), "lines": sum(1 for _ in open(path))}))
"""


@pytest.mark.parametrize("delivery", ["inline", "background"])
def test_an_ainfo_pending_when_the_loop_is_closed_by_hand_breaks_nothing(
    tmp_path: Path, delivery: str
) -> None:
    # Resolving the pending ainfo's waiter on the closed loop raised into the
    # hook writing the events ("runtime exit hook failed"), and every later
    # log call then waited the enricher's timeout.
    path = tmp_path / "app.log"
    proc = run_code(PENDING_AINFO_AT_CLOSE, str(path), delivery)

    result = json.loads(proc.stdout.splitlines()[-1])
    assert 4 == result["lines"]
    assert result["longest"] < 0.5
    assert "exit hook failed" not in proc.stderr
