"""Found by the fourteenth outside attack round (testers with only the README
and the docs: batched lookups and the built-in PostgreSQL, Redis and HTTP
lookups under faults; the loop runtime, reconfiguring and the loop's end),
each kept as a test."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import decimal
import enum
import json
import threading
import time
import uuid
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import pytest
from structlog.typing import EventDict, WrappedLogger

from enrichlog import (
    AsyncEnricher,
    EnricherConfigError,
    LoggingContainer,
    SyncEnricher,
    configure_logging,
    current_container,
    get_logger,
    register_enricher,
)
from enrichlog.engine import chain
from enrichlog.testing import LineSink
from enrichlog.transport import codec


class Incomparable:
    """A hashable key that cannot be compared (its ``__eq__`` raises)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("cannot compare")


class IncomparableKeys(AsyncEnricher):
    name = "u"
    cache_ttl = 60.0

    def __init__(self, batched: bool) -> None:
        super().__init__()
        self.batched = batched

    def cache_key(self, event_dict: EventDict) -> Hashable:
        return Incomparable(event_dict["k"])


class BatchedIncomparable(IncomparableKeys):
    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        await asyncio.sleep(0.01)
        return dict.fromkeys(keys, 1)

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        event_dict["x"] = value
        return event_dict


class PerEventIncomparable(IncomparableKeys):
    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.01)
        event_dict["x"] = 1
        return event_dict


@pytest.mark.parametrize("enricher", [BatchedIncomparable, PerEventIncomparable])
def test_a_key_that_cannot_be_compared_fails_its_events_with_error_and_counts_them(
    enricher: type[IncomparableKeys], caplog: pytest.LogCaptureFixture
) -> None:
    # Batched, 79 of 200 events were written as "unavailable" after a
    # traceback of the batch's bookkeeping on stderr, and counted nowhere.
    sink = LineSink()
    container = configure_logging(enrichers=[enricher(batched=True)], output=sink)
    log = get_logger()
    for seq in range(200):
        log.info("ev", seq=seq, k=seq % 2)
    container.shutdown()

    events = sink.events()
    assert list(range(200)) == sorted(event["seq"] for event in events)
    reasons = {event.get("enrichment_errors", {}).get("u", event.get("x")) for event in events}
    assert reasons <= {"error: RuntimeError", 1}, reasons
    failed = sum(1 for event in events if "enrichment_errors" in event)
    metrics = container.metrics()["enrichers"]["u"]
    assert failed == metrics["failures_by_reason"].get("error", 0)
    assert "enriching an event failed" not in caplog.text


class ApplyFails(AsyncEnricher):
    """One key; ``apply`` fails (raises, or returns something not a mapping)."""

    name = "u"
    cache_error_ttl = 60.0
    failure_threshold = 1000

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.asked: list[Hashable] = []

    def cache_key(self, event_dict: EventDict) -> Hashable:
        return event_dict.get("k")

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        self.asked.extend(keys)
        if self.how == "unreadable":
            return _Unreadable(dict.fromkeys(keys, "v"))
        return dict.fromkeys(keys, "v")

    def apply(self, event_dict: EventDict, value: Any) -> Any:
        if self.how == "raises":
            raise ValueError("apply")
        if self.how == "not a mapping":
            return 42
        event_dict["x"] = value
        return event_dict


class _Unreadable(dict[Hashable, Any]):
    """An answer that fails whenever it is read."""

    def __getitem__(self, key: Hashable) -> Any:
        raise RuntimeError("unreadable")

    def get(self, key: Hashable, default: Any = None) -> Any:
        raise RuntimeError("unreadable")


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("raises", "error: ValueError"),
        ("not a mapping", "invalid_return"),
        ("unreadable", "error: RuntimeError"),
    ],
)
def test_a_key_whose_value_cannot_be_applied_is_remembered_as_failed(how: str, reason: str) -> None:
    # The failure was not remembered: the backend was asked again for
    # every event (5 calls for 5 events of one key), while a failed call or
    # an exception as the key's value is asked once for cache_error_ttl.
    enricher = ApplyFails(how)
    sink = LineSink()
    container = configure_logging(enrichers=[enricher], output=sink)
    log = get_logger()
    for seq in range(5):
        log.info("ev", seq=seq, k=1)
        assert container.flush(timeout=10)
    container.shutdown()

    assert [1] == enricher.asked
    assert [reason] * 5 == [event["enrichment_errors"]["u"] for event in sink.events()]
    metrics = container.metrics()["enrichers"]["u"]
    assert (1, 4) == (metrics["cache_misses"], metrics["cache_hits"])


# -- values JSON has no type for: __structlog__() first, the same with or without orjson --


@dataclasses.dataclass
class User:
    id: int
    password: str

    def __structlog__(self) -> str:
        return f"User({self.id})"


@dataclasses.dataclass
class Point:
    x: int
    y: str


class Color(enum.Enum):
    RED = 1


class Status(enum.Enum):
    OK = "ok"

    def __structlog__(self) -> str:
        return f"status-{self.value}"


class Unrepresentable:
    def __repr__(self) -> str:
        raise ValueError("no repr")


@pytest.fixture(params=["orjson", "stdlib json"])
def encoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The JSON renderer with orjson (the extra), or without it."""
    if request.param == "stdlib json":
        monkeypatch.setattr(chain, "orjson", None)
    else:
        pytest.importorskip("orjson")
    return str(request.param)


def test_a_dataclass_with_a_structlog_hook_is_written_by_the_hook(encoder: str) -> None:
    # With orjson, a dataclass was written as its fields, the hook ignored:
    # {"id": 7, "password": "hunter2"} where plain structlog writes "User(7)".
    sink = LineSink()
    container = configure_logging(output=sink)
    get_logger().info("login", user=User(7, "hunter2"), users=[User(8, "s3cret")])
    container.shutdown()

    (line,) = sink.lines
    assert "hunter2" not in line
    assert "s3cret" not in line
    (event,) = sink.events()
    assert ("User(7)", ["User(8)"]) == (event["user"], event["users"])


def test_odd_values_are_written_alike_with_or_without_orjson(encoder: str) -> None:
    sink = LineSink()
    container = configure_logging(output=sink)
    when = datetime.datetime(2020, 1, 2, 3, 4, 5)
    get_logger().info(
        "x",
        when=when,
        day=when.date(),
        color=Color.RED,
        status_by_hook=Status.OK if encoder == "stdlib json" else "status-ok",
        point=Point(1, "why"),
        id=uuid.UUID(int=5),
        amount=decimal.Decimal("1.10"),
    )
    container.shutdown()

    (event,) = sink.events()
    assert {
        "when": "2020-01-02T03:04:05",
        "day": "2020-01-02",
        "color": 1,
        "status_by_hook": "status-ok",
        "point": {"x": 1, "y": "why"},
        "id": "00000000-0000-0000-0000-000000000005",
        "amount": "1.10",
    }.items() <= event.items()


def test_the_fallback_rendering_writes_odd_values_as_the_line_would_have(encoder: str) -> None:
    # One field the encoder refuses (an int key for orjson, a repr that
    # raises) sent the line to the fallback, which wrote every odd value by
    # repr: the hook was ignored (Secretive(password='hunter2')), dates and
    # UUIDs became reprs.
    sink = LineSink()
    container = configure_logging(output=sink)
    get_logger().info(
        "x",
        counts={404: 1},
        refused=Unrepresentable(),
        user=User(7, "hunter2"),
        when=datetime.datetime(2020, 1, 2, 3, 4, 5),
        id=uuid.UUID(int=5),
        amount=decimal.Decimal("1.10"),
        point=Point(1, "why"),
        color=Color.RED,
    )
    container.shutdown()

    (line,) = sink.lines
    assert "hunter2" not in line
    (event,) = sink.events()
    assert "render_error" in event
    assert {
        "counts": {"404": 1},
        "user": "User(7)",
        "when": "2020-01-02T03:04:05",
        "id": "00000000-0000-0000-0000-000000000005",
        "amount": "1.10",
        "point": {"x": 1, "y": "why"},
        "color": 1,
        "refused": "<unrepresentable Unrepresentable: ValueError>",
    }.items() <= event.items()


@pytest.mark.parametrize("with_orjson", [True, False])
def test_an_event_sent_to_workers_carries_odd_values_as_the_line_would(
    with_orjson: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The transport wrote a hooked object by its repr (or, with orjson, a
    # dataclass by its fields): what the hook hides reached the wire.
    if not with_orjson:
        monkeypatch.setattr(codec, "orjson", None)
    event = {"event": "login", "user": User(7, "hunter2"), "when": datetime.date(2020, 1, 2)}
    data = codec.encode_event(event)
    assert b"hunter2" not in data
    assert {"event": "login", "user": "User(7)", "when": "2020-01-02"} == json.loads(data)


# -- the loop runtime: shutdown and start-up across tasks, threads and loops -------------


class Sleepy(AsyncEnricher):
    """A 0.3 s lookup whose pool records that it was closed."""

    name = "sleepy"

    def __init__(self, startup_seconds: float = 0.0) -> None:
        super().__init__()
        self.startup_seconds = startup_seconds
        self.closed = threading.Event()

    async def _startup(self) -> None:
        await asyncio.sleep(self.startup_seconds)

    async def _shutdown(self) -> None:
        self.closed.set()

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.3)
        event_dict["sleepy"] = 1
        return event_dict


def test_ashutdown_after_many_cut_waits_returns_once_the_drain_is_done() -> None:
    # Each cut ashutdown() left a thread of asyncio's default executor
    # waiting for the report; seven of them took every thread, and the
    # drain's own hand-off to a thread queued behind them: the next
    # ashutdown() returned only at 3 x shutdown_timeout + 5 s (11 s here).
    sink = LineSink()

    async def main() -> tuple[float, dict[str, int]]:
        container = configure_logging(
            enrichers=[Sleepy()], runtime="loop", output=sink, shutdown_timeout=2
        )
        await container.astartup()
        log = get_logger()
        for index in range(50):
            log.info("e", index=index)
        for _ in range(10):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(container.ashutdown(), 0.01)
        started = time.monotonic()
        report = await container.ashutdown()
        return time.monotonic() - started, dict(report)

    took, report = asyncio.run(main())
    assert took < 5, took  # the drain needs about 0.3 s; 11 s before
    assert 50 == report["written"] == len(sink.events())
    assert all(event["sleepy"] == 1 for event in sink.events())


def test_a_shutdown_from_another_thread_while_the_loop_is_busy_closes_the_pools_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The drain timed out and the events were written without their
    # fields, but the report said salvaged=0, nothing was said, and the
    # enricher's _shutdown never ran: not when the loop was free again,
    # not when asyncio.run() ended (its pool leaked).
    enricher = Sleepy()
    sink = LineSink()
    reports: list[dict[str, int]] = []

    async def main() -> None:
        container = configure_logging(
            enrichers=[enricher], runtime="loop", output=sink, shutdown_timeout=0.5
        )
        await container.astartup()
        for index in range(20):
            get_logger().info("e", index=index)
        await asyncio.sleep(0.05)
        other = threading.Thread(target=lambda: reports.append(dict(container.shutdown())))
        other.start()
        time.sleep(4.0)  # noqa: ASYNC251 - the application's loop is busy (sync work)
        other.join()
        await asyncio.sleep(0.5)  # the loop is free again

    asyncio.run(main())
    assert enricher.closed.is_set()
    assert 20 == len(sink.events())
    (report,) = reports
    assert 20 == report["salvaged"], report
    assert "did not answer" in caplog.text


def test_astartup_from_another_loop_waits_for_the_start_up() -> None:
    # It raised asyncio's "got Future attached to a different loop" while
    # the start-up ran on the application's loop.
    enricher = Sleepy(startup_seconds=0.5)
    sink = LineSink()
    outcome: list[object] = []

    async def main() -> None:
        container = configure_logging(enrichers=[enricher], runtime="loop", output=sink)
        get_logger().info("before the start-up ends")

        def from_another_loop() -> None:
            try:
                outcome.append(asyncio.run(container.astartup()))
            except BaseException as exc:  # the failure this test is about
                outcome.append(exc)

        await asyncio.to_thread(from_another_loop)
        outcome.append(container.health()["sleepy"]["started"])
        await container.ashutdown()

    asyncio.run(main())
    assert isinstance(outcome[0], LoggingContainer), outcome
    assert outcome[1] is True
    assert [1] == [event.get("sleepy") for event in sink.events()]


async def _slow_starting_service(sink: LineSink, containers: list[LoggingContainer]) -> None:
    """A service whose ``async with configure_logging(...)`` takes 1 s to start."""
    container = configure_logging(
        enrichers=[Sleepy(startup_seconds=1.0)], runtime="loop", output=sink
    )
    containers.append(container)
    async with container:
        await asyncio.sleep(10)


def test_async_with_cancelled_during_the_start_up_leaves_nothing_installed() -> None:
    # The task ended cancelled, but the container stayed installed and
    # running until the loop ended: __aexit__ never runs when __aenter__
    # does not return.
    sink = LineSink()
    containers: list[LoggingContainer] = []

    async def main() -> object:
        task = asyncio.create_task(_slow_starting_service(sink, containers))
        await asyncio.sleep(0.3)
        get_logger().info("while starting")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return current_container()

    assert asyncio.run(main()) is None
    (container,) = containers
    assert container.closed
    assert ["while starting"] == [event["event"] for event in sink.events()]


# -- found by the outside re-test of the fixes above ------------------------------------


class SameHashIncomparable:
    """Equal only to itself; every key has one hash."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        raise ValueError("cannot compare")


class SlowBatches(AsyncEnricher):
    name = "b"
    timeout = 5.0

    def cache_key(self, event_dict: EventDict) -> Hashable:
        return event_dict.get("k")

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        await asyncio.sleep(1.0)
        return dict.fromkeys(keys, "v")

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        event_dict["f"] = value
        return event_dict


def test_a_key_that_cannot_be_compared_with_one_in_flight_fails_its_event_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The first fix tried the key against itself only: one equal to itself
    # but not comparable with the key in flight (same hash) still broke the
    # batch's bookkeeping: 19 of 20 events "unavailable", counted nowhere.
    sink = LineSink()
    container = configure_logging(enrichers=[SlowBatches()], output=sink)
    log = get_logger()
    log.info("e", n=0, k=SameHashIncomparable(0))
    time.sleep(0.3)  # its enrich_many() is running
    for n in range(1, 20):
        log.info("e", n=n, k=SameHashIncomparable(n))
    container.shutdown()

    events = sorted(sink.events(), key=lambda event: event["n"])
    assert list(range(20)) == [event["n"] for event in events]
    assert "v" == events[0]["f"]
    assert [{"b": "error: ValueError"}] * 19 == [event["enrichment_errors"] for event in events[1:]]
    assert 19 == container.metrics()["enrichers"]["b"]["failures_by_reason"]["error"]
    assert "enriching an event failed" not in caplog.text


@pytest.mark.parametrize("then", ["return", "ashutdown", "shutdown", "log"])
def test_enrichers_stop_even_when_the_loop_ends_as_soon_as_it_is_free(then: str) -> None:
    # After a shutdown from another thread found the loop blocked, the
    # enrichers' stop was a task started when the loop got back to it:
    # asyncio.run() ending right then cancelled it before its first step,
    # and _shutdown never ran.
    enricher = Sleepy()
    sink = LineSink()

    async def main() -> None:
        container = configure_logging(
            enrichers=[enricher], runtime="loop", output=sink, shutdown_timeout=0.5
        )
        await container.astartup()
        for n in range(10):
            get_logger().info("e", n=n)
        other = threading.Thread(target=container.shutdown)
        other.start()
        time.sleep(2.0)  # noqa: ASYNC251 - the application's loop is busy (sync work)
        other.join()
        if then == "ashutdown":
            await container.ashutdown()
        elif then == "shutdown":
            container.shutdown()
        elif then == "log":
            await get_logger().ainfo("after")

    asyncio.run(main())
    assert enricher.closed.is_set()
    assert 10 + (then == "log") == len(sink.events())


def test_a_second_cancellation_of_async_with_during_start_up_is_no_reason_to_stay() -> None:
    # Cancelled twice (a second Ctrl-C, an outer timeout), the clean-up was
    # cut: the container stayed installed, and a configure_logging() on the
    # loop right after froze it for 35 s waiting for that drain.
    first, second = LineSink(), LineSink()
    containers: list[LoggingContainer] = []

    async def main() -> float:
        task = asyncio.create_task(_slow_starting_service(first, containers))
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert current_container() is None
        started = time.monotonic()
        replacement = configure_logging(enrichers=[Sleepy()], runtime="loop", output=second)
        took = time.monotonic() - started
        await replacement.astartup()
        get_logger().info("with the new one")
        await replacement.ashutdown()
        return took

    assert asyncio.run(main()) < 1.0
    assert containers[0].closed
    assert [1] == [event.get("sleepy") for event in second.events()]


def test_a_configure_logging_on_the_loop_while_an_ashutdown_drains_there_does_not_wait() -> None:
    sink = LineSink()

    async def main() -> float:
        container = configure_logging(enrichers=[Sleepy()], runtime="loop", output=sink)
        await container.astartup()
        for n in range(5):
            get_logger().info("e", n=n)
        draining = asyncio.ensure_future(container.ashutdown())
        await asyncio.sleep(0)  # the drain is under way, awaiting the lookups
        started = time.monotonic()
        configure_logging(output=sink)
        took = time.monotonic() - started
        await draining
        return took

    assert asyncio.run(main()) < 1.0
    assert list(range(5)) == sorted(event["n"] for event in sink.events())


class Fan:
    """A hook that returns eight objects with the same hook."""

    def __structlog__(self) -> list[Fan]:
        return [Fan() for _ in range(8)]


class HookFails:
    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __repr__(self) -> str:
        return f"HookFails({self.secret})"

    def __structlog__(self) -> str:
        raise RuntimeError("hook broke")


class HookReturnsSelf(HookFails):
    def __structlog__(self) -> HookReturnsSelf:  # type: ignore[override]
        return self


def test_a_hook_that_fans_out_is_bounded(encoder: str) -> None:
    # The fallback followed every hook to its depth limit: 8 objects per
    # level took 11.7 s and a 93 MB line (500 MB of memory) in the log call.
    sink = LineSink()
    container = configure_logging(output=sink, delivery="inline")
    started = time.monotonic()
    get_logger().info("fan", value=Fan())
    took = time.monotonic() - started
    container.shutdown()

    assert took < 2.0, took
    (line,) = sink.lines
    assert len(line) < 200_000
    assert "render_error" in sink.events()[0]


@pytest.mark.parametrize("hooked", [HookFails, HookReturnsSelf])
def test_a_hook_that_fails_does_not_fall_back_to_the_repr_it_hides(
    encoder: str, hooked: type[HookFails]
) -> None:
    # A failing hook (or one that returns its object) fell back to repr:
    # "HookFails(hunter2)", what the hook was written to keep out.
    sink = LineSink()
    container = configure_logging(output=sink)
    get_logger().info("x", value=hooked("hunter2"), values=[hooked("s3cret")])
    container.shutdown()

    (line,) = sink.lines
    assert "hunter2" not in line
    assert "s3cret" not in line
    (event,) = sink.events()
    assert event["value"].startswith(f"<{hooked.__name__}")


# -- found by the outside attack on dependency levels and sync enrichers ----------------


def test_a_chain_replaced_while_a_call_runs_it_is_run_whole_by_that_call() -> None:
    # configure_logging() replaces the shared chain in place; a log call
    # looping over it at that moment (another thread) could run off its
    # shortened end, skip the renderer, and raise TypeError from the
    # writer into the application: the event was lost (3 to 10 in 500,000
    # under 30 reconfigurations). Here the replacement lands mid-call.
    from enrichlog import container as container_module

    sink = LineSink()
    container = configure_logging(output=sink)
    chain = container_module._installed_chain
    original = list(chain)

    def another_thread_reconfigures(_: Any, __: str, event_dict: EventDict) -> EventDict:
        chain[:] = original
        return event_dict

    chain[:] = [*original[:-1], another_thread_reconfigures, original[-1]]
    get_logger().info("during the replacement")
    get_logger().info("after it")
    container.shutdown()

    assert ["during the replacement", "after it"] == [event["event"] for event in sink.events()]


class Quick(AsyncEnricher):
    name = "sib"
    dependencies = ("up",)
    timeout = 0.5

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.01)
        event_dict["sib"] = 1
        return event_dict


class Up(AsyncEnricher):
    name = "up"

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.01)
        event_dict["up"] = 1
        return event_dict


def test_a_level_timer_the_loop_reaches_late_is_no_timeout_of_the_enrichers() -> None:
    # A sync enricher blocking the loop (not blocking=True) made the level
    # timer fire late: the quick sibling, which had no chance to run, was
    # charged "timeout" for 7 of 8 events.
    def sleeper(_: Any, __: str, event_dict: EventDict) -> EventDict:
        time.sleep(0.6)
        event_dict["slept"] = 1
        return event_dict

    sink = LineSink()
    container = configure_logging(
        enrichers=[Up(), Quick(), register_enricher(sleeper, name="sleeper", dependencies=["up"])],
        output=sink,
        level_timeout=0.2,
    )
    for n in range(4):
        get_logger().info("e", n=n)
    assert container.flush(timeout=30)
    metrics = container.metrics()["enrichers"]["sib"]
    container.shutdown()

    reasons = [event.get("enrichment_errors", {}).get("sib") for event in sink.events()]
    assert 4 == len(reasons)
    assert "timeout" not in reasons, reasons
    assert 0 == metrics["failures_by_reason"]["timeout"]


def test_keep_existing_on_a_sync_enricher_is_refused_naming_it() -> None:
    # It was ignored: the call site's value was replaced, without a word.
    class Tier(SyncEnricher):
        name = "tier"
        keep_existing = True

        def enrich(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            event_dict["tier"] = "gold"
            return event_dict

    with pytest.raises(EnricherConfigError, match="'tier': keep_existing applies to async"):
        configure_logging(enrichers=[Tier()], output=LineSink())


# -- found by the second outside re-test --------------------------------------------------


def test_ashutdown_after_a_blocked_loop_waits_for_the_enrichers_to_stop() -> None:
    # It returned at once: the enrichers' stop was a task the loop had not
    # started yet, and with a loop closed by hand it never ran.
    enricher = Sleepy()
    stopped_when_ashutdown_returned: list[bool] = []

    async def main() -> None:
        container = configure_logging(
            enrichers=[enricher], runtime="loop", output=LineSink(), shutdown_timeout=0.5
        )
        await container.astartup()
        get_logger().info("pending")
        await asyncio.sleep(0.05)
        other = threading.Thread(target=container.shutdown)
        other.start()
        other.join()  # blocks the loop: that shutdown salvages the event
        await container.ashutdown()
        stopped_when_ashutdown_returned.append(enricher.closed.is_set())

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert [True] == stopped_when_ashutdown_returned


def test_a_shutdown_on_the_loop_during_a_drain_there_ends_the_containers_lines() -> None:
    # Its report said 5 lines and the drain's 6, counting a line the
    # application logged after shutdown() had returned.
    sink = LineSink()

    async def main() -> tuple[int, int, int]:
        container = configure_logging(enrichers=[Sleepy()], runtime="loop", output=sink)
        await container.astartup()
        for n in range(5):
            get_logger().info("e", n=n)
        draining = asyncio.ensure_future(container.ashutdown())
        await asyncio.sleep(0.05)
        report = container.shutdown()
        get_logger().info("after the shutdown")
        drained = await draining
        return report["written"], drained["written"], container.metrics()["written"]

    assert (5, 5, 5) == asyncio.run(main())
    assert 6 == len(sink.lines)


class Hidden:
    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __repr__(self) -> str:
        return f"Hidden({self.secret})"

    def __structlog__(self) -> str:
        return "***"


class HiddenRaises(Hidden):
    def __structlog__(self) -> str:
        raise ValueError("no")


def test_hooked_items_of_sets_and_keys_are_written_by_their_hooks(encoder: str) -> None:
    # A set (or deque) was written by its repr, which shows its items'
    # reprs: Hidden(hunter2). A hooked dict key, by its repr too.
    sink = LineSink()
    container = configure_logging(output=sink)
    log = get_logger()
    log.info("in a set", value={Hidden("hunter2")})
    log.info("in a deque", value=collections.deque([Hidden("hunter2")]))
    log.info("a set of a raising hook", value=frozenset([HiddenRaises("hunter2")]))
    log.info("as a key", value={Hidden("hunter2"): 1})
    container.shutdown()

    assert not [line for line in sink.lines if "hunter2" in line]
    values = [event["value"] for event in sink.events()]
    assert ["***"] == values[0] == values[1]
    assert ["<HiddenRaises: __structlog__() failed (ValueError)>"] == values[2]
    assert {"***": 1} == values[3]


def test_keep_existing_on_a_plain_function_is_refused_naming_it() -> None:
    def tier(_: Any, __: str, event_dict: EventDict) -> EventDict:
        event_dict["tier"] = "gold"
        return event_dict

    tier.keep_existing = True  # type: ignore[attr-defined]
    with pytest.raises(EnricherConfigError, match="'tier': keep_existing applies to async"):
        configure_logging(enrichers=[tier], output=LineSink())
