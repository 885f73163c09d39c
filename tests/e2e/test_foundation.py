"""End to end: ``configure_logging`` with real enrichers and a real log file.

Every test logs through ``get_logger()`` after ``configure_logging(...,
delivery="inline")`` and reads back the JSON lines the container wrote.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.typing import EventDict, WrappedLogger

import enrichlog.container as container_module
from enrichlog.container import LoggingContainer, configure_logging, get_logger
from enrichlog.enricher import AsyncEnricher, SyncEnricher, register_enricher
from enrichlog.exceptions import EnricherConfigError, EnricherDependencyError
from tests.helpers import read_lines

RUNTIME_THREAD = "enrichlog-runtime"
ERRORS = "enrichment_errors"

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def configure(
    log_file: Path, enrichers: Iterable[object] = (), **overrides: Any
) -> LoggingContainer:
    """``configure_logging`` writing JSON lines to ``log_file``, inline."""
    overrides.setdefault("delivery", "inline")
    return configure_logging(enrichers=list(enrichers), output=str(log_file), **overrides)


def run_in_thread(target: Callable[[], object], name: str = "caller") -> None:
    worker = threading.Thread(target=target, name=name)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()


# -- enrichers -----------------------------------------------------------------


class AddField(AsyncEnricher):
    """Adds ``field=value`` after yielding to the runtime loop once."""

    def __init__(self, field: str, value: Any, **kwargs: Any) -> None:
        kwargs.setdefault("name", field)
        super().__init__(**kwargs)
        self.field = field
        self.value = value

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0)
        event_dict[self.field] = self.value
        return event_dict


class Hanging(AsyncEnricher):
    """Never finishes by itself: only a timeout ends it."""

    name = "slow"

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.Event().wait()
        return event_dict


class Raising(AsyncEnricher):
    """Raises ``error`` for every event."""

    name = "boom"

    def __init__(self, error: BaseException, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0)
        raise self.error


class WaitsFor(AsyncEnricher):
    """Waits (off the runtime loop) for a threading.Event; records whether it
    was set in time as ``released``."""

    name = "waits"

    def __init__(self, released: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.released = released

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict["released"] = await asyncio.to_thread(self.released.wait, 3.0)
        return event_dict


class ContextReader(AsyncEnricher):
    """Reports what the call site's context looks like from inside
    ``enrich_async``."""

    name = "context_reader"

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0)
        event_dict["seen_tenant"] = structlog.contextvars.get_contextvars().get("tenant")
        event_dict["seen_request_id"] = request_id.get()
        return event_dict


class ThreadRecorder(AsyncEnricher):
    """Records the thread ``enrich_async`` ran on."""

    name = "async_thread"

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict["async_thread"] = threading.current_thread().name
        return event_dict


# -- delivery paths --------------------------------------------------------------


def test_sync_info_from_plain_thread_is_in_the_file_when_the_call_returns(
    log_file: Path,
) -> None:
    configure(log_file, [AddField("user", "alice")])
    log = get_logger()
    seen_on_return: list[dict[str, Any]] = []

    def work() -> None:
        log.info("hello")
        seen_on_return.extend(read_lines(log_file))

    run_in_thread(work)

    assert [("hello", "alice")] == [(ln["event"], ln["user"]) for ln in seen_on_return]


def test_sync_info_from_main_thread_without_loop_is_written_on_return(
    log_file: Path,
) -> None:
    configure(log_file, [AddField("user", "alice")])

    get_logger().info("hello")
    lines = read_lines(log_file)

    assert [("hello", "alice")] == [(ln["event"], ln["user"]) for ln in lines]


def test_many_threads_each_event_written_once_in_per_thread_order(
    log_file: Path,
) -> None:
    threads, per_thread = 16, 50
    configure(log_file, [AddField("enriched", True)])
    log = get_logger()
    start = threading.Barrier(threads)

    def work(thread_no: int) -> None:
        start.wait(timeout=10)
        for seq in range(per_thread):
            log.info("event", thread_no=thread_no, seq=seq)

    workers = [threading.Thread(target=work, args=(n,), name=f"w{n}") for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    lines = read_lines(log_file)
    per_thread_seqs = {
        n: [ln["seq"] for ln in lines if ln["thread_no"] == n] for n in range(threads)
    }

    assert (
        threads * per_thread,
        {n: list(range(per_thread)) for n in range(threads)},
        True,
    ) == (
        len(lines),
        per_thread_seqs,
        all(ln["enriched"] is True for ln in lines),
    )


async def test_ainfo_lets_the_caller_loop_run_while_an_enricher_waits(
    log_file: Path,
) -> None:
    released = threading.Event()
    configure(log_file, [WaitsFor(released, timeout=5.0)])
    log = get_logger()

    async def release() -> None:
        released.set()

    # Runs only if ainfo yields the caller's loop while enrichment waits.
    releaser = asyncio.get_running_loop().create_task(release())
    await asyncio.wait_for(log.ainfo("waited"), timeout=10)
    await releaser

    assert [("waited", True, None)] == [
        (ln["event"], ln["released"], ln.get(ERRORS)) for ln in read_lines(log_file)
    ]


@pytest.mark.parametrize("setup", ["no-enrichers", "cache-hits", "after-ashutdown"])
async def test_a_loop_of_ainfo_lets_other_tasks_run_and_can_be_cancelled(
    log_file: Path, setup: str
) -> None:
    """Found by an outside tester: with nothing to await (no async enricher,
    a cache hit, a container shut down), ``await log.ainfo()`` never yielded:
    a task logging in a loop starved every other task, its cancellation
    included; and after ``ashutdown()`` a cancellation arriving as the event
    was written was swallowed (Python 3.11's ``wait_for``)."""

    class Cached(AsyncEnricher):
        name = "cached"

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            event_dict["cached"] = True
            return event_dict

        def cache_key(self, event_dict: EventDict) -> Any:
            return 1

    container = configure(log_file, [Cached()] if setup != "no-enrichers" else [])
    log = get_logger()
    if setup == "cache-hits":
        await log.ainfo("warm-up")  # the key is cached from here on
    elif setup == "after-ashutdown":
        await container.ashutdown()
    turns = 0

    async def tick() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def log_many() -> int:
        for _ in range(200):
            await log.ainfo("again")
        return turns  # how often the other task ran meanwhile

    async def log_forever() -> None:
        while True:
            await log.ainfo("again")

    loop = asyncio.get_running_loop()
    ticker = loop.create_task(tick())
    assert await loop.create_task(log_many()) >= 100  # about one turn per call
    logger = loop.create_task(log_forever())
    await asyncio.sleep(0.01)
    logger.cancel()
    await asyncio.wait([logger], timeout=5)  # not awaited: it might swallow the cancel
    ticker.cancel()

    assert (True, True) == (logger.done(), logger.done() and logger.cancelled())


async def test_ainfo_line_is_in_the_file_when_the_await_returns(
    log_file: Path,
) -> None:
    configure(log_file, [AddField("user", "alice")])

    await get_logger().ainfo("hello")
    lines = read_lines(log_file)

    assert [("hello", "alice")] == [(ln["event"], ln["user"]) for ln in lines]


async def test_sync_info_inside_running_loop_returns_before_enrichment_finishes(
    log_file: Path,
) -> None:
    released = threading.Event()
    container = configure(log_file, [WaitsFor(released, timeout=5.0)])
    log = get_logger()

    log.info("first")  # would block, or time the enricher out, if it waited
    written_before_release = read_lines(log_file)
    released.set()
    await container.aflush(timeout=10)

    assert ([], [("first", True, None)]) == (
        written_before_release,
        [(ln["event"], ln["released"], ln.get(ERRORS)) for ln in read_lines(log_file)],
    )


async def test_sync_info_inside_running_loop_keeps_order_with_later_ainfo(
    log_file: Path,
) -> None:
    container = configure(log_file, [AddField("user", "alice")])
    log = get_logger()

    log.info("one")
    await log.ainfo("two")
    log.info("three")
    await log.ainfo("four")
    await container.aflush(timeout=10)

    assert ["one", "two", "three", "four"] == [ln["event"] for ln in read_lines(log_file)]


def test_container_flush_waits_for_events_handed_off_inside_a_loop(
    log_file: Path,
) -> None:
    container = configure(log_file, [AddField("user", "alice")])

    async def log_inside_loop() -> None:
        get_logger().info("handed off")

    asyncio.run(log_inside_loop())
    flushed = container.flush(timeout=10)

    assert (True, ["handed off"]) == (
        flushed,
        [ln["event"] for ln in read_lines(log_file)],
    )


# -- contextvars ---------------------------------------------------------------


def test_contextvars_are_visible_to_async_enrichers_on_the_sync_thread_path(
    log_file: Path,
) -> None:
    configure(log_file, [ContextReader()])

    def work() -> None:
        structlog.contextvars.bind_contextvars(tenant="acme")
        request_id.set("req-1")
        get_logger().info("hello")

    run_in_thread(work)

    assert [("acme", "req-1")] == [
        (ln["seen_tenant"], ln["seen_request_id"]) for ln in read_lines(log_file)
    ]


async def test_contextvars_are_visible_to_async_enrichers_on_the_ainfo_path(
    log_file: Path,
) -> None:
    configure(log_file, [ContextReader()])

    async def work() -> None:
        structlog.contextvars.bind_contextvars(tenant="acme")
        request_id.set("req-2")
        await get_logger().ainfo("hello")

    await asyncio.get_running_loop().create_task(work())  # own context copy

    assert [("acme", "req-2")] == [
        (ln["seen_tenant"], ln["seen_request_id"]) for ln in read_lines(log_file)
    ]


async def test_contextvars_are_visible_to_async_enrichers_on_the_sync_in_loop_path(
    log_file: Path,
) -> None:
    container = configure(log_file, [ContextReader()])

    async def work() -> None:
        structlog.contextvars.bind_contextvars(tenant="acme")
        request_id.set("req-3")
        get_logger().info("hello")

    await asyncio.get_running_loop().create_task(work())
    await container.aflush(timeout=10)

    assert [("acme", "req-3")] == [
        (ln["seen_tenant"], ln["seen_request_id"]) for ln in read_lines(log_file)
    ]


def test_contextvars_set_after_the_call_are_not_seen_by_the_enricher(
    log_file: Path,
) -> None:
    released = threading.Event()

    class ReadsLate(WaitsFor):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            await asyncio.to_thread(self.released.wait, 3.0)
            event_dict["seen_request_id"] = request_id.get()
            return event_dict

    container = configure(log_file, [ReadsLate(released, timeout=5.0)])

    async def work() -> None:
        request_id.set("at-call")
        get_logger().info("hello")
        request_id.set("after-call")
        released.set()

    asyncio.run(work())
    container.flush(timeout=10)

    assert ["at-call"] == [ln["seen_request_id"] for ln in read_lines(log_file)]


# -- levels: dependencies, snapshots, merge order ---------------------------------


def test_dependant_sees_the_output_of_its_dependency(log_file: Path) -> None:
    class ReadsA(AsyncEnricher):
        name = "b"
        dependencies = ("a",)

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            event_dict["b_saw"] = event_dict.get("a_field")
            return event_dict

    configure(log_file, [ReadsA(), AddField("a_field", "from a", name="a")])

    get_logger().info("hello")

    assert [("from a", "from a")] == [(ln["a_field"], ln["b_saw"]) for ln in read_lines(log_file)]


def test_dependant_sync_function_sees_async_dependency_output(log_file: Path) -> None:
    @register_enricher(dependencies=["a"])
    def reads_a(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> None:
        event_dict["saw"] = event_dict.get("a_field")

    configure(log_file, [reads_a, AddField("a_field", 1, name="a")])

    get_logger().info("hello")

    assert [1] == [ln["saw"] for ln in read_lines(log_file)]


def test_enrichers_of_one_level_see_the_event_as_it_was_when_the_level_started(
    log_file: Path,
) -> None:
    x_done = asyncio.Event()

    class X(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            event_dict["x"] = 1
            event_dict["x_saw_y"] = "y" in event_dict
            x_done.set()
            return event_dict

    class Y(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            await asyncio.wait_for(x_done.wait(), 3)  # X has written "x" by now
            event_dict["y"] = 1
            event_dict["y_saw_x"] = "x" in event_dict
            return event_dict

    configure(log_file, [X(), Y()])

    get_logger().info("hello")

    assert [(False, False, 1, 1)] == [
        (ln["x_saw_y"], ln["y_saw_x"], ln["x"], ln["y"]) for ln in read_lines(log_file)
    ]


def test_sync_enricher_output_is_not_visible_to_async_enricher_of_same_level(
    log_file: Path,
) -> None:
    def sync_first(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict["from_sync"] = 1
        return event_dict

    class SeesSync(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            event_dict["saw_sync"] = "from_sync" in event_dict
            return event_dict

    configure(log_file, [register_enricher(sync_first, priority=1), SeesSync()])

    get_logger().info("hello")

    assert [(False, 1)] == [(ln["saw_sync"], ln["from_sync"]) for ln in read_lines(log_file)]


def test_same_level_changes_merge_by_priority_before_registration_order(
    log_file: Path,
) -> None:
    configure(
        log_file,
        [
            AddField("winner", "p20", name="late", priority=20),
            AddField("winner", "p10", name="early", priority=10),
        ],
    )

    get_logger().info("hello")

    assert ["p20"] == [ln["winner"] for ln in read_lines(log_file)]


def test_same_level_changes_with_equal_priority_merge_in_registration_order(
    log_file: Path,
) -> None:
    configure(
        log_file,
        [
            AddField("winner", "first", name="first"),
            AddField("winner", "second", name="second"),
        ],
    )

    get_logger().info("hello")

    assert ["second"] == [ln["winner"] for ln in read_lines(log_file)]


def test_enricher_removing_a_key_removes_it_from_the_event(log_file: Path) -> None:
    class Redact(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            del event_dict["password"]
            return event_dict

    configure(log_file, [Redact()])

    get_logger().info("login", password="hunter2")

    assert [False] == ["password" in ln for ln in read_lines(log_file)]


def test_enricher_returning_a_new_mapping_contributes_its_fields(
    log_file: Path,
) -> None:
    class NewDict(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            return {**event_dict, "fresh": True}

    configure(log_file, [NewDict()])

    get_logger().info("hello")

    assert [("hello", True)] == [(ln["event"], ln["fresh"]) for ln in read_lines(log_file)]


def test_enricher_returning_none_counts_as_mutated_in_place(log_file: Path) -> None:
    class InPlace(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> None:
            event_dict["in_place"] = True

    configure(log_file, [InPlace()])

    get_logger().info("hello")

    assert [(True, None)] == [(ln["in_place"], ln.get(ERRORS)) for ln in read_lines(log_file)]


def test_enricher_raising_drop_event_filters_the_event_out(log_file: Path) -> None:
    class DropsDebugNoise(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            if event_dict["event"] == "noise":
                raise structlog.DropEvent
            return event_dict

    configure(log_file, [DropsDebugNoise()])
    log = get_logger()

    log.info("noise")
    log.info("signal")

    assert [("signal", None)] == [(ln["event"], ln.get(ERRORS)) for ln in read_lines(log_file)]


# -- failures --------------------------------------------------------------------


def test_failures_in_a_level_are_isolated_and_the_event_is_written(
    log_file: Path,
) -> None:
    class ReturnsInt(AsyncEnricher):
        name = "bad_return"

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> Any:
            return 42

    configure(
        log_file,
        [
            Raising(ValueError("nope"), name="raiser"),
            Hanging(name="sleeper", timeout=0.05),
            ReturnsInt(),
            AddField("fine", "yes"),
        ],
    )

    get_logger().info("survives")

    assert [
        (
            "survives",
            "yes",
            {
                "raiser": "error: ValueError",
                "sleeper": "timeout",
                "bad_return": "invalid_return",
            },
        )
    ] == [(ln["event"], ln["fine"], ln[ERRORS]) for ln in read_lines(log_file)]


def test_failed_enricher_leaves_none_of_its_fields_in_the_event(
    log_file: Path,
) -> None:
    class HalfDone(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            event_dict["partial"] = True
            raise RuntimeError("after writing a field")

    configure(log_file, [HalfDone()])

    get_logger().info("hello")

    assert [(False, {"half_done": "error: RuntimeError"})] == [
        ("partial" in ln, ln[ERRORS]) for ln in read_lines(log_file)
    ]


def test_failing_sync_function_is_isolated_like_an_async_one(log_file: Path) -> None:
    def broken(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> None:
        raise KeyError("missing")

    configure(log_file, [broken, AddField("fine", "yes")])

    get_logger().info("hello")

    assert [("yes", {"broken": "error: KeyError"})] == [
        (ln["fine"], ln[ERRORS]) for ln in read_lines(log_file)
    ]


class Escape(BaseException):
    """A BaseException that is neither an Exception nor a cancellation."""


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit, Escape])
def test_base_exception_from_enricher_loses_no_event_and_runtime_keeps_working(
    log_file: Path, error_type: type[BaseException]
) -> None:
    class RaisesOnce(AsyncEnricher):
        name = "flaky"
        calls = 0

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            RaisesOnce.calls += 1
            if RaisesOnce.calls == 1:
                raise error_type
            event_dict["ok"] = True
            return event_dict

    configure(log_file, [RaisesOnce()])
    log = get_logger()

    log.info("first")
    log.info("second")

    assert [
        ("first", None, {"flaky": f"error: {error_type.__name__}"}),
        ("second", True, None),
    ] == [(ln["event"], ln.get("ok"), ln.get(ERRORS)) for ln in read_lines(log_file)]


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_from_blocking_sync_enricher_loses_no_event(
    log_file: Path, error_type: type[BaseException]
) -> None:
    @register_enricher(blocking=True)
    def blocking_boom(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> None:
        raise error_type

    configure(log_file, [blocking_boom])
    log = get_logger()

    log.info("first")
    log.info("second")

    assert [
        ("first", {"blocking_boom": f"error: {error_type.__name__}"}),
        ("second", {"blocking_boom": f"error: {error_type.__name__}"}),
    ] == [(ln["event"], ln.get(ERRORS)) for ln in read_lines(log_file)]


def test_enricher_adding_an_unserialisable_value_still_gets_the_line_written(
    log_file: Path,
) -> None:
    class Unserialisable:
        def __repr__(self) -> str:
            return "<Unserialisable>"

    configure(log_file, [AddField("handle", Unserialisable())])

    get_logger().info("hello")

    assert [("hello", "<Unserialisable>")] == [
        (ln["event"], ln["handle"]) for ln in read_lines(log_file)
    ]


def test_enricher_adding_a_value_whose_repr_raises_still_gets_the_line_written(
    log_file: Path,
) -> None:
    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

    configure(log_file, [AddField("handle", Hostile())])

    get_logger().info("hello")

    assert [("hello", True)] == [(ln["event"], "render_error" in ln) for ln in read_lines(log_file)]


def test_enricher_adding_a_non_string_key_still_gets_the_line_written(
    log_file: Path,
) -> None:
    class OddKey(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            event_dict[("a", 1)] = "tuple key"  # type: ignore[index]
            return event_dict

    configure(log_file, [OddKey()])

    get_logger().info("hello")

    assert [("hello", "tuple key", True)] == [
        (ln["event"], ln["('a', 1)"], "render_error" in ln) for ln in read_lines(log_file)
    ]


def test_failing_enricher_is_tried_again_for_the_next_event(log_file: Path) -> None:
    class FailsFirst(AsyncEnricher):
        calls = 0

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            FailsFirst.calls += 1
            if FailsFirst.calls == 1:
                raise ConnectionError("backend restarting")
            event_dict["user"] = "alice"
            return event_dict

    configure(log_file, [FailsFirst()])
    log = get_logger()

    log.info("first")
    log.info("second")

    assert [
        ("first", None, {"fails_first": "error: ConnectionError"}),
        ("second", "alice", None),
    ] == [(ln["event"], ln.get("user"), ln.get(ERRORS)) for ln in read_lines(log_file)]


def test_exception_info_survives_the_hand_off_to_the_runtime(log_file: Path) -> None:
    configure(log_file, [AddField("user", "alice")])

    def work() -> None:
        try:
            raise ZeroDivisionError("oops")
        except ZeroDivisionError:
            get_logger().exception("failed")

    run_in_thread(work)

    assert ["ZeroDivisionError"] == [ln["exception"][0]["exc_type"] for ln in read_lines(log_file)]


# -- timeouts --------------------------------------------------------------------


def log_and_time(log_file: Path) -> float:
    started = time.monotonic()
    get_logger().info("hello")
    return time.monotonic() - started


def errors_in(log_file: Path) -> list[Any]:
    return [ln.get(ERRORS) for ln in read_lines(log_file)]


def test_timeout_class_attribute_cuts_the_enricher_off(log_file: Path) -> None:
    class ShortFuse(Hanging):
        timeout = 0.05

    configure(log_file, [ShortFuse()], enricher_timeout=30)

    elapsed = log_and_time(log_file)

    assert ([{"slow": "timeout"}], True) == (errors_in(log_file), elapsed < 5)


def test_timeout_constructor_argument_cuts_the_enricher_off(log_file: Path) -> None:
    configure(log_file, [Hanging(timeout=0.05)], enricher_timeout=30)

    elapsed = log_and_time(log_file)

    assert ([{"slow": "timeout"}], True) == (errors_in(log_file), elapsed < 5)


def test_enricher_timeout_setting_is_the_default(log_file: Path) -> None:
    configure(log_file, [Hanging()], enricher_timeout=0.05)

    get_logger().info("hello")

    assert [{"slow": "timeout"}] == errors_in(log_file)


def test_enricher_options_setting_overrides_the_enricher_timeout(
    log_file: Path,
) -> None:
    configure(
        log_file,
        [Hanging(timeout=30)],
        enricher_options={"slow": {"timeout": 0.05}},
    )

    elapsed = log_and_time(log_file)

    assert ([{"slow": "timeout"}], True) == (errors_in(log_file), elapsed < 5)


def test_level_timeout_cancels_every_enricher_still_running(log_file: Path) -> None:
    configure(
        log_file,
        [Hanging(name="slow_a"), Hanging(name="slow_b"), AddField("fast", 1)],
        enricher_timeout=30,
        level_timeout=0.05,
    )

    elapsed = log_and_time(log_file)

    assert (
        [(1, {"slow_a": "timeout", "slow_b": "timeout"})],
        True,
    ) == ([(ln["fast"], ln[ERRORS]) for ln in read_lines(log_file)], elapsed < 5)


def test_level_timeout_bounds_a_lone_enricher_with_a_longer_own_timeout(
    log_file: Path,
) -> None:
    configure(log_file, [Hanging(timeout=30)], level_timeout=0.05)

    elapsed = log_and_time(log_file)

    assert ([{"slow": "timeout"}], True) == (errors_in(log_file), elapsed < 5)


def test_an_event_the_level_timeout_cut_off_counts_as_a_timeout_of_its_enricher(
    log_file: Path,
) -> None:
    """The line says ``timeout``; so does the enricher's failure count (the
    call, still running, counts its own outcome when it ends)."""
    container = configure(log_file, [Hanging(timeout=30)], level_timeout=0.05)

    for _ in range(3):
        get_logger().info("hello")
    metrics = container.metrics()["enrichers"]["slow"]

    assert ([{"slow": "timeout"}] * 3, 3, 3, 0) == (
        errors_in(log_file),
        metrics["failures_by_reason"]["timeout"],
        metrics["calls"],
        metrics["successes"],
    )


def test_a_call_queued_for_a_slot_is_not_made_for_an_event_the_level_timeout_cut_off(
    log_file: Path,
) -> None:
    """Found by an outside tester: the calls of cut-off events queued behind
    the concurrency limit were made later all the same, for nobody (backend
    load exactly when the backend is slow)."""

    class Slow(AsyncEnricher):
        name = "slow"
        started = 0

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            type(self).started += 1
            await asyncio.sleep(0.1)
            return event_dict

    container = configure(
        log_file,
        [Slow(timeout=5, max_concurrency=1)],
        level_timeout=0.05,
        delivery="background",  # all three queued at once, all cut off at 0.05 s
    )
    for _ in range(3):
        get_logger().info("hello")
    time.sleep(0.6)  # the first call ends at 0.1 s and frees its slot
    container.shutdown()

    # Only the first call was made; the two queued behind it were dropped.
    assert ([{"slow": "timeout"}] * 3, 1) == (errors_in(log_file), Slow.started)


def test_timeout_in_first_level_still_runs_the_next_level(log_file: Path) -> None:
    configure(
        log_file,
        [Hanging(name="a", timeout=0.05), AddField("b", 1, dependencies=["a"])],
    )

    get_logger().info("hello")

    assert [(1, {"a": "timeout"})] == [(ln["b"], ln[ERRORS]) for ln in read_lines(log_file)]


def test_three_independent_slow_enrichers_run_concurrently(log_file: Path) -> None:
    class Sleepy(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            await asyncio.sleep(0.1)
            event_dict[self.name] = True
            return event_dict

    configure(
        log_file,
        [Sleepy(name="one"), Sleepy(name="two"), Sleepy(name="three")],
        enricher_timeout=2,
    )
    get_logger().info("warm-up")

    elapsed = log_and_time(log_file)

    # Sequential would take 0.3 s; concurrent takes ~0.1 s.
    assert elapsed < 0.25


# -- the error field --------------------------------------------------------------


def test_error_field_none_leaves_no_error_field(log_file: Path) -> None:
    configure(log_file, [Raising(ValueError("x"))], error_field=None)

    get_logger().info("hello")

    assert [("hello", False)] == [(ln["event"], ERRORS in ln) for ln in read_lines(log_file)]


def test_custom_error_field_name_holds_the_reasons(log_file: Path) -> None:
    configure(log_file, [Raising(ValueError("x"))], error_field="failed_enrichers")

    get_logger().info("hello")

    assert [({"boom": "error: ValueError"}, False)] == [
        (ln["failed_enrichers"], ERRORS in ln) for ln in read_lines(log_file)
    ]


def test_errors_of_several_levels_collect_in_one_field(log_file: Path) -> None:
    configure(
        log_file,
        [
            Raising(ValueError("x"), name="first"),
            Raising(KeyError("y"), name="second", dependencies=["first"]),
        ],
    )

    get_logger().info("hello")

    assert [{"first": "error: ValueError", "second": "error: KeyError"}] == errors_in(log_file)


# -- sync enrichers ----------------------------------------------------------------


def test_plain_sync_function_runs_inline_on_the_logging_thread(log_file: Path) -> None:
    def thread_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict["sync_thread"] = threading.current_thread().name
        return event_dict

    configure(log_file, [thread_name])

    run_in_thread(lambda: get_logger().info("hello"), name="caller")

    assert ["caller"] == [ln["sync_thread"] for ln in read_lines(log_file)]


def test_sync_enricher_subclass_adds_its_fields(log_file: Path) -> None:
    class Version(SyncEnricher):
        def enrich(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            event_dict["version"] = "1.2.3"
            return event_dict

    configure(log_file, [Version()])

    get_logger().info("hello")

    assert ["1.2.3"] == [ln["version"] for ln in read_lines(log_file)]


def test_blocking_sync_function_runs_in_a_worker_thread(log_file: Path) -> None:
    @register_enricher(blocking=True)
    def blocking_thread(
        logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict["blocking_thread"] = threading.current_thread().name
        return event_dict

    configure(log_file, [blocking_thread])

    run_in_thread(lambda: get_logger().info("hello"), name="caller")
    [line] = read_lines(log_file)

    assert (False, False) == (
        line["blocking_thread"] == "caller",
        line["blocking_thread"] == RUNTIME_THREAD,
    )


def test_blocking_sync_function_runs_concurrently_with_async_enrichers_of_its_level(
    log_file: Path,
) -> None:
    # Both must be inside their enricher at once to pass the barrier.
    meeting = threading.Barrier(2, timeout=3)

    @register_enricher(blocking=True)
    def blocking_side(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        meeting.wait()
        event_dict["blocking_met"] = True
        return event_dict

    class AsyncSide(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            await asyncio.to_thread(meeting.wait)
            event_dict["async_met"] = True
            return event_dict

    configure(log_file, [blocking_side, AsyncSide()], enricher_timeout=5)

    get_logger().info("hello")

    assert [(True, True, None)] == [
        (ln.get("blocking_met"), ln.get("async_met"), ln.get(ERRORS)) for ln in read_lines(log_file)
    ]


def test_async_enricher_runs_on_the_runtime_thread(log_file: Path) -> None:
    configure(log_file, [ThreadRecorder()])

    run_in_thread(lambda: get_logger().info("hello"), name="caller")

    assert [RUNTIME_THREAD] == [ln["async_thread"] for ln in read_lines(log_file)]


# -- register_enricher -------------------------------------------------------------


def test_decorated_async_functions_run_in_dependency_order(log_file: Path) -> None:
    @register_enricher
    async def tenant(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        await asyncio.sleep(0)
        event_dict["tenant"] = "acme"
        return event_dict

    @register_enricher(name="plan", dependencies=["tenant"], priority=5)
    async def lookup_plan(
        logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        event_dict["plan"] = {"acme": "gold"}.get(event_dict.get("tenant"))
        return event_dict

    configure(log_file, [lookup_plan, tenant])

    get_logger().info("hello")

    assert [("acme", "gold")] == [(ln["tenant"], ln["plan"]) for ln in read_lines(log_file)]


def test_level_filtering_applies_before_enrichment(log_file: Path) -> None:
    calls: list[str] = []

    async def counting(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> None:
        calls.append(event_dict["event"])

    configure(log_file, [counting], level="warning")
    log = get_logger()

    log.debug("hidden")
    log.info("hidden too")
    log.warning("shown")

    assert (["shown"], ["shown"]) == (
        calls,
        [ln["event"] for ln in read_lines(log_file)],
    )


# -- configure-time errors ------------------------------------------------------------


def test_configure_rejects_an_int_naming_it(log_file: Path) -> None:
    with pytest.raises(EnricherConfigError, match=r"42.*int"):
        configure(log_file, [42])


def test_configure_rejects_an_enricher_class_suggesting_an_instance(
    log_file: Path,
) -> None:
    with pytest.raises(EnricherConfigError, match=r"use Hanging\(\)"):
        configure(log_file, [Hanging])


def test_configure_rejects_a_sync_function_with_the_wrong_arity(
    log_file: Path,
) -> None:
    def two_args(logger: WrappedLogger, event_dict: EventDict) -> EventDict:
        return event_dict

    with pytest.raises(EnricherConfigError, match="two_args"):
        configure(log_file, [two_args])


def test_configure_rejects_a_dependency_cycle_naming_it(log_file: Path) -> None:
    with pytest.raises(EnricherDependencyError, match="a -> b -> a"):
        configure(
            log_file,
            [AddField("a", 1, dependencies=["b"]), AddField("b", 1, dependencies=["a"])],
        )


def test_configure_rejects_a_missing_dependency_naming_both(log_file: Path) -> None:
    with pytest.raises(EnricherConfigError, match=r"'user'.*'tenant'"):
        configure(log_file, [AddField("user", 1, dependencies=["tenant"])])


def test_configure_rejects_a_duplicate_name(log_file: Path) -> None:
    with pytest.raises(EnricherConfigError, match="'user'"):
        configure(log_file, [AddField("user", 1), AddField("user", 2)])


def test_enricher_rejects_a_negative_timeout_naming_itself() -> None:
    with pytest.raises(EnricherConfigError, match=r"'slow'.*timeout"):
        Hanging(timeout=-1)


def test_configure_rejects_a_negative_enricher_timeout_setting(
    log_file: Path,
) -> None:
    with pytest.raises(EnricherConfigError, match="enricher_timeout"):
        configure(log_file, [Hanging()], enricher_timeout=-1)


def test_configure_rejects_a_negative_per_enricher_timeout_option(
    log_file: Path,
) -> None:
    with pytest.raises(EnricherConfigError, match="slow"):
        configure(log_file, [Hanging()], enricher_options={"slow": {"timeout": -1}})


def test_configure_rejects_an_unknown_setting_naming_it(log_file: Path) -> None:
    with pytest.raises(EnricherConfigError, match="enricher_timout"):
        configure(log_file, [], enricher_timout=1)


def test_failed_configure_installs_nothing(log_file: Path) -> None:
    with pytest.raises(EnricherConfigError):
        configure(log_file, [42])

    assert None is container_module._current


def test_bad_reconfigure_leaves_the_previous_configuration_working(
    log_file: Path, tmp_path: Path
) -> None:
    first = configure(log_file, [AddField("user", "alice")])
    with pytest.raises(EnricherConfigError):
        configure(tmp_path / "second.log", [AddField("user", "bob"), 42])

    get_logger().info("still here")

    assert (True, [("still here", "alice", None)]) == (
        first.running,
        [(ln["event"], ln["user"], ln.get(ERRORS)) for ln in read_lines(log_file)],
    )


def test_reconfigure_with_unopenable_output_leaves_the_previous_one_working(
    log_file: Path, tmp_path: Path
) -> None:
    first = configure(log_file, [AddField("user", "alice")])
    with pytest.raises(EnricherConfigError, match="no-such-dir"):
        configure(tmp_path / "no-such-dir" / "out.log", [AddField("user", "bob")])

    get_logger().info("still here")

    assert (True, [("still here", "alice", None)]) == (
        first.running,
        [(ln["event"], ln["user"], ln.get(ERRORS)) for ln in read_lines(log_file)],
    )


def test_reconfigure_sends_later_events_to_the_new_output(log_file: Path, tmp_path: Path) -> None:
    second_file = tmp_path / "second.log"
    configure(log_file, [AddField("user", "alice")])
    get_logger().info("to first")
    configure(second_file, [AddField("user", "bob")])

    get_logger().info("to second")

    assert (
        [("to first", "alice")],
        [("to second", "bob")],
    ) == (
        [(ln["event"], ln["user"]) for ln in read_lines(log_file)],
        [(ln["event"], ln["user"]) for ln in read_lines(second_file)],
    )


# -- more paths --------------------------------------------------------------------


def test_contextvars_are_visible_to_blocking_sync_enrichers(log_file: Path) -> None:
    @register_enricher(blocking=True)
    def reads_context(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict["seen_request_id"] = request_id.get()
        return event_dict

    configure(log_file, [reads_context])

    def work() -> None:
        request_id.set("req-4")
        get_logger().info("hello")

    run_in_thread(work)

    assert ["req-4"] == [ln["seen_request_id"] for ln in read_lines(log_file)]


@pytest.mark.parametrize("error_type", [KeyboardInterrupt, SystemExit])
def test_interrupt_from_a_sync_enricher_on_the_calling_thread_reaches_the_application(
    log_file: Path, error_type: type[BaseException]
) -> None:
    def inline_boom(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> None:
        raise error_type

    configure(log_file, [inline_boom])

    with pytest.raises(error_type):
        get_logger().info("hello")

    # Written first, without the enricher's fields.
    assert [("hello", {"inline_boom": f"error: {error_type.__name__}"})] == [
        (ln["event"], ln.get(ERRORS)) for ln in read_lines(log_file)
    ]


def test_an_escape_from_a_sync_enricher_on_the_calling_thread_stays_a_reason(
    log_file: Path,
) -> None:
    def inline_escape(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> None:
        raise Escape

    configure(log_file, [inline_escape])

    get_logger().info("hello")

    assert [("hello", {"inline_escape": "error: Escape"})] == [
        (ln["event"], ln.get(ERRORS)) for ln in read_lines(log_file)
    ]


def test_enricher_that_logs_itself_neither_deadlocks_nor_recurses(
    log_file: Path,
) -> None:
    class Chatty(AsyncEnricher):
        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            if event_dict["event"] == "outer":
                get_logger().info("from the enricher")
                await get_logger().ainfo("awaited from the enricher")
            event_dict["chatty"] = True
            return event_dict

    configure(log_file, [Chatty()], enricher_timeout=5)

    run_in_thread(lambda: get_logger().info("outer"))

    assert [
        ("from the enricher", None),
        ("awaited from the enricher", None),
        ("outer", True),
    ] == [(ln["event"], ln.get("chatty")) for ln in read_lines(log_file)]


def test_configure_without_enrichers_writes_plain_lines(log_file: Path) -> None:
    configure(log_file)
    log = get_logger()

    log.info("sync", n=1)
    asyncio.run(log.ainfo("async", n=2))

    assert [("sync", 1, "info"), ("async", 2, "info")] == [
        (ln["event"], ln["n"], ln["level"]) for ln in read_lines(log_file)
    ]


def test_ainfo_interpolates_positional_arguments(log_file: Path) -> None:
    configure(log_file, [AddField("user", "alice")])

    asyncio.run(get_logger().ainfo("hello %s", "world"))

    assert [("hello world", "alice")] == [(ln["event"], ln["user"]) for ln in read_lines(log_file)]


def test_bound_values_and_timestamp_reach_the_line(log_file: Path) -> None:
    configure(log_file, [AddField("user", "alice")])

    get_logger().bind(request="r1").warning("hello")
    [line] = read_lines(log_file)

    assert ("r1", "warning", "alice", True) == (
        line["request"],
        line["level"],
        line["user"],
        line["timestamp"].endswith("Z"),
    )


def test_logger_obtained_before_reconfigure_follows_the_new_configuration(
    log_file: Path, tmp_path: Path
) -> None:
    second_file = tmp_path / "second.log"
    log = get_logger()  # e.g. a module-level logger
    configure(log_file, [AddField("user", "alice")])
    log.info("to first")
    configure(second_file, [AddField("user", "bob")])

    log.info("to second")

    assert [("to second", "bob", None)] == [
        (ln["event"], ln.get("user"), ln.get(ERRORS)) for ln in read_lines(second_file)
    ]
