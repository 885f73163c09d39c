"""Found by the fifteenth outside attack round (testers with only the README
and the docs: what a user switching from structlog gets, line for line; the
enricher contract over time), each kept as a test."""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import json
import logging
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, configure_logging, get_logger, register_enricher
from enrichlog.testing import LineSink

CallsiteParameter = structlog.processors.CallsiteParameter
CALL_SITE = [
    CallsiteParameter.FILENAME,
    CallsiteParameter.FUNC_NAME,
    CallsiteParameter.LINENO,
    CallsiteParameter.THREAD_NAME,
]


class Lookup(AsyncEnricher):
    name = "lookup"

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.001)
        event_dict["user"] = "alice"
        return event_dict


def _call_site(event: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(event.get(parameter.value) for parameter in CALL_SITE)


def _log_here(log: Any) -> int:
    """Logs one event; the line number of the call."""
    log.info("checkout")
    return _log_here.__code__.co_firstlineno + 2


async def _alog_here(log: Any) -> int:
    await log.ainfo("checkout")
    return _alog_here.__code__.co_firstlineno + 1


# -- CallsiteParameterAdder given as an enricher ----------------------------


@pytest.mark.parametrize("after_an_async_enricher", [False, True], ids=["alone", "after-lookup"])
def test_a_callsite_adder_records_the_application_call_not_enrichlogs_frames(
    after_an_async_enricher: bool,
) -> None:
    """It recorded ``plan.py``/``call_sync`` (and, after an async enricher,
    the runtime's thread) instead of the caller: wrong data, silently."""
    adder = structlog.processors.CallsiteParameterAdder(CALL_SITE)
    enrichers: list[Any] = (
        [Lookup(), register_enricher(adder, name="callsite", dependencies="lookup")]
        if after_an_async_enricher
        else [adder]
    )
    sink = LineSink()
    container = configure_logging(enrichers=enrichers, output=sink)
    try:
        line = _log_here(get_logger())
        aline = asyncio.run(_alog_here(get_logger()))
    finally:
        container.shutdown()

    expected = [
        ("test_fifteenth_attack_round.py", "_log_here", line, "MainThread"),
        ("test_fifteenth_attack_round.py", "_alog_here", aline, "MainThread"),
    ]
    assert expected == [_call_site(event) for event in sink.events()]
    if after_an_async_enricher:
        assert ["alice", "alice"] == [event["user"] for event in sink.events()]


def test_a_callsite_adder_on_a_thread_records_that_thread() -> None:
    sink = LineSink()
    container = configure_logging(
        enrichers=[Lookup(), structlog.processors.CallsiteParameterAdder(CALL_SITE)], output=sink
    )
    lines: list[int] = []
    try:
        thread = threading.Thread(target=lambda: lines.append(_log_here(get_logger())), name="t1")
        thread.start()
        thread.join()
    finally:
        container.shutdown()

    assert [("test_fifteenth_attack_round.py", "_log_here", lines[0], "t1")] == [
        _call_site(event) for event in sink.events()
    ]


def test_a_callsite_adder_through_the_stdlib_bridge_records_the_logging_call() -> None:
    sink = LineSink()
    container = configure_logging(
        enrichers=[Lookup(), structlog.processors.CallsiteParameterAdder(CALL_SITE)],
        output=sink,
        stdlib=True,
    )
    try:

        def stdlib_call() -> int:
            logging.getLogger("app.stdlib").warning("from stdlib")
            return stdlib_call.__code__.co_firstlineno + 1

        line = stdlib_call()
    finally:
        container.shutdown()

    events = [event for event in sink.events() if event["event"] == "from stdlib"]
    assert [("test_fifteenth_attack_round.py", "stdlib_call", line, "MainThread")] == [
        _call_site(event) for event in events
    ]


def test_the_users_callsite_adder_is_left_as_it_was() -> None:
    """enrichlog runs a copy that also skips its own frames: the object the
    user passed still behaves as structlog's (used in a plain chain too)."""
    adder = structlog.processors.CallsiteParameterAdder(CALL_SITE)
    container = configure_logging(enrichers=[adder], output=LineSink())
    container.shutdown()

    assert ["logging"] == adder._additional_ignores


# -- "%(name)s" with a mapping that is not a dict -----------------------------


class ReadOnly(collections.abc.Mapping[str, Any]):
    def __init__(self, **values: Any) -> None:
        self._values = values

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@pytest.mark.parametrize(
    "mapping",
    [types.MappingProxyType({"user": "alice"}), ReadOnly(user="alice")],
    ids=["mappingproxy", "custom-mapping"],
)
def test_a_single_mapping_argument_is_interpolated_by_name_as_structlog_does(
    mapping: Any,
) -> None:
    """structlog interpolates ``"%(user)s"`` with any non-empty mapping;
    enrichlog did only with a dict, and wrote the message unformatted with
    ``format_error``."""
    sink = LineSink()
    container = configure_logging(output=sink)
    try:
        get_logger().info("user %(user)s", mapping)
    finally:
        container.shutdown()

    [event] = sink.events()
    assert ("user alice", None) == (event["event"], event.get("format_error"))


# -- ainfo() at a full queue under overflow="block" --------------------------


class Slow(AsyncEnricher):
    name = "slow"

    def __init__(self, seconds: float) -> None:
        super().__init__(timeout=30.0)
        self.seconds = seconds

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(self.seconds)
        event_dict["slow"] = True
        return event_dict


@pytest.mark.parametrize("runtime", ["thread", "loop"])
def test_ainfo_at_a_full_queue_awaits_room_instead_of_dropping(runtime: str) -> None:
    """``overflow="block"`` (the default) waits for room; ``ainfo()`` did not
    (it "behaved as drop_new"), so concurrent tasks awaiting their log calls
    lost most of a burst although each could wait without blocking its loop:
    12,530 of 20,000 written."""
    events = 200
    sink = LineSink()

    async def scenario() -> dict[str, Any]:
        container = configure_logging(
            enrichers=[Slow(0.002)],
            output=sink,
            runtime=runtime,
            queue_size=5,
            max_in_flight=4,
            overflow_block_timeout=60.0,
        )
        await container.astartup()
        log = get_logger()
        await asyncio.gather(*(log.ainfo("e", i=i) for i in range(events)))
        report = await container.ashutdown()
        return dict(report)

    report = asyncio.run(asyncio.wait_for(scenario(), 60))

    written = sink.events()
    assert (events, 0) == (report["written"], report["dropped"])
    assert sorted(range(events)) == sorted(event["i"] for event in written)
    assert {True} == {event.get("slow") for event in written}


def test_ainfo_that_waited_its_block_timeout_drops_its_event_counted() -> None:
    events = 20
    sink = LineSink()

    async def scenario() -> dict[str, Any]:
        container = configure_logging(
            enrichers=[Slow(0.5)],
            output=sink,
            queue_size=2,
            max_in_flight=1,
            overflow_block_timeout=0.05,
        )
        log = get_logger()
        await asyncio.wait_for(asyncio.gather(*(log.ainfo("e", i=i) for i in range(events))), 30)
        metrics = container.metrics()
        report = await container.ashutdown(30)
        return {**dict(report), "overflow": metrics["dropped_by_kind"]["overflow"]}

    report = asyncio.run(scenario())

    assert report["dropped"] > 0
    assert report["dropped"] == report["overflow"]
    assert events == report["written"] + report["dropped"]
    assert report["written"] == len(sink.events())


def test_ainfo_cancelled_while_it_awaits_room_still_hands_its_event_over() -> None:
    """Cancelled while waiting for room, the call queues its event if there
    is room by then, or drops it counted: never lost uncounted."""
    events = 30
    sink = LineSink()

    async def scenario() -> dict[str, Any]:
        container = configure_logging(
            enrichers=[Slow(0.05)],
            output=sink,
            queue_size=2,
            max_in_flight=1,
            overflow_block_timeout=60.0,
        )
        log = get_logger()
        tasks = [asyncio.ensure_future(log.ainfo("e", i=i)) for i in range(events)]
        await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        report = await container.ashutdown(30)
        return dict(report)

    report = asyncio.run(asyncio.wait_for(scenario(), 60))

    assert events == report["written"] + report["dropped"]
    assert report["written"] == len(sink.events())


def test_ainfo_awaiting_room_when_the_container_shuts_down_writes_its_event() -> None:
    events = 30
    sink = LineSink()

    async def scenario() -> dict[str, Any]:
        container = configure_logging(
            enrichers=[Slow(0.2)],
            output=sink,
            queue_size=2,
            max_in_flight=1,
            overflow_block_timeout=60.0,
            shutdown_timeout=0.5,
        )
        log = get_logger()
        tasks = [asyncio.ensure_future(log.ainfo("e", i=i)) for i in range(events)]
        await asyncio.sleep(0.1)  # the queue is full, the rest await room
        shutting_down = asyncio.ensure_future(asyncio.to_thread(container.shutdown))
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        report = await shutting_down
        return dict(report)

    report = asyncio.run(asyncio.wait_for(scenario(), 60))

    written = sink.events()
    assert 0 == report["dropped"]
    assert sorted(range(events)) == sorted(event["i"] for event in written)


# -- sync enrichers that are unavailable ------------------------------------


class Calls:
    def __init__(self) -> None:
        self.count = 0


def _geoip(calls: Calls, *, fails_startup: bool, healthy: bool, blocking: bool) -> Any:
    from enrichlog import SyncEnricher

    class GeoIP(SyncEnricher):
        name = "geoip"

        async def _startup(self) -> None:
            if fails_startup:
                raise FileNotFoundError("GeoLite2.mmdb missing")
            self.db = {"1.2.3.4": "DE"}

        async def _health_check(self) -> bool:
            return healthy

        def enrich(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            calls.count += 1
            event_dict["country"] = self.db["1.2.3.4"]
            return event_dict

    return GeoIP(blocking=blocking)


@pytest.mark.parametrize("blocking", [False, True], ids=["inline", "blocking"])
@pytest.mark.parametrize("with_async", [False, True], ids=["alone", "with-async"])
def test_a_sync_enricher_whose_startup_failed_is_skipped_as_unavailable(
    blocking: bool, with_async: bool
) -> None:
    """health() said unavailable, yet it was called for every event (and
    failed with AttributeError on what its _startup never set)."""
    calls = Calls()
    sink = LineSink()
    enrichers = [_geoip(calls, fails_startup=True, healthy=True, blocking=blocking)]
    container = configure_logging(
        enrichers=[*enrichers, *([Lookup()] if with_async else [])], output=sink
    )
    try:
        for i in range(5):
            get_logger().info("e", i=i)
        container.flush(10)
        health = container.health()["geoip"]
    finally:
        container.shutdown()

    assert (False, 0) == (health["available"], calls.count)
    assert [{"geoip": "unavailable"}] * 5 == [event["enrichment_errors"] for event in sink.events()]


@pytest.mark.parametrize("blocking", [False, True], ids=["inline", "blocking"])
def test_a_sync_enricher_failing_its_health_check_is_skipped_until_it_passes(
    blocking: bool,
) -> None:
    calls = Calls()
    sink = LineSink()
    geoip = _geoip(calls, fails_startup=False, healthy=False, blocking=blocking)
    container = configure_logging(enrichers=[geoip], output=sink, health_check_interval=0.05)
    try:
        for _ in range(500):
            if not container.health()["geoip"]["available"]:
                break
            threading.Event().wait(0.01)
        for i in range(5):
            get_logger().info("e", i=i)
        container.flush(10)
    finally:
        container.shutdown()

    assert 0 == calls.count
    assert [{"geoip": "unavailable"}] * 5 == [event["enrichment_errors"] for event in sink.events()]


def test_a_healthy_sync_enricher_with_a_startup_is_called() -> None:
    calls = Calls()
    sink = LineSink()
    geoip = _geoip(calls, fails_startup=False, healthy=True, blocking=False)
    container = configure_logging(enrichers=[geoip], output=sink)
    try:
        get_logger().info("e")
    finally:
        container.shutdown()

    assert (1, "DE") == (calls.count, sink.events()[0]["country"])


# -- enrichers stopped together ---------------------------------------------


class Stops(AsyncEnricher):
    def __init__(self, name: str, seconds: float, log: list[str], **kw: Any) -> None:
        super().__init__(name=name, **kw)
        self.seconds, self.log = seconds, log

    async def _shutdown(self) -> None:
        self.log.append(f"{self.name} begins")
        await asyncio.sleep(self.seconds)
        self.log.append(f"{self.name} ends")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


def test_independent_enrichers_are_stopped_together_within_the_shutdown_timeout() -> None:
    """Three independent 0.4 s _shutdown hooks were run one after another
    within one shutdown_timeout (1 s): the third was cut off."""
    log: list[str] = []
    enrichers = [Stops(name, 0.4, log) for name in ("a", "b", "c")]
    container = configure_logging(enrichers=enrichers, output=LineSink(), shutdown_timeout=3.0)
    container.shutdown()

    assert {"a ends", "b ends", "c ends"} <= set(log)
    # All three began before any ended.
    assert {"a begins", "b begins", "c begins"} == set(log[:3])


def test_a_slow_shutdown_leaves_no_other_enricher_unstopped_and_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One slow _shutdown meant another enricher's _shutdown (closing its
    pool) never ran, and the warning did not say which were not stopped."""
    log: list[str] = []
    pool, slow = Stops("pool", 0.0, log), Stops("slow", 60.0, log)
    container = configure_logging(enrichers=[pool, slow], output=LineSink(), shutdown_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="enrichlog"):
        container.shutdown()

    assert "pool ends" in log
    assert "not stopped: 'slow'" in caplog.text


def test_dependants_are_still_stopped_before_what_they_depend_on() -> None:
    log: list[str] = []
    base = Stops("base", 0.05, log)
    user = Stops("user", 0.05, log, dependencies="base")
    other = Stops("other", 0.05, log)
    container = configure_logging(enrichers=[base, user, other], output=LineSink())
    container.shutdown()

    assert log.index("user ends") < log.index("base begins")
    # 'other' depends on nothing and nothing on it: stopped with 'base'.
    assert log.index("other begins") < log.index("base ends")


# -- configure-time refusals -----------------------------------------------


def test_a_resilience_attribute_on_a_sync_enricher_is_refused_naming_it() -> None:
    """``timeout = 0.1`` (and a cache_ttl and cache_key) on a blocking
    SyncEnricher were accepted and ignored: each event waited the whole
    call, and nothing was cached."""
    from enrichlog import EnricherConfigError, SyncEnricher

    class Rdns(SyncEnricher):
        name = "rdns"
        blocking = True
        timeout = 0.1

        def enrich(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            return event_dict

    class Cached(SyncEnricher):
        name = "cached"

        def cache_key(self, event_dict: EventDict) -> Any:
            return event_dict.get("user_id")

        def enrich(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            return event_dict

    with pytest.raises(EnricherConfigError, match=r"'rdns': 'timeout' applies to async"):
        configure_logging(enrichers=[Rdns()], output=LineSink())
    with pytest.raises(EnricherConfigError, match=r"'cached': 'cache_key' applies to async"):
        configure_logging(enrichers=[Cached()], output=LineSink())


def test_enricher_options_for_no_enricher_or_a_sync_one_are_refused() -> None:
    from enrichlog import EnricherConfigError

    def rdns(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return event_dict

    with pytest.raises(EnricherConfigError, match=r"'lokup'.*did you mean 'lookup'"):
        configure_logging(
            enrichers=[Lookup()], enricher_options={"lokup": {"timeout": 1}}, output=LineSink()
        )
    with pytest.raises(EnricherConfigError, match=r"enricher_options\['rdns'\].*sync enricher"):
        configure_logging(
            enrichers=[Lookup(), rdns],
            enricher_options={"rdns": {"timeout": 1}},
            output=LineSink(),
        )


def test_keep_existing_must_be_a_bool() -> None:
    from enrichlog import EnricherConfigError

    class Keeps(Lookup):
        keep_existing = "no"  # type: ignore[assignment]

    with pytest.raises(EnricherConfigError, match="keep_existing must be True or False"):
        configure_logging(enrichers=[Keeps()], output=LineSink())


def test_a_retry_base_delay_above_its_cap_is_refused_when_retrying() -> None:
    from enrichlog import EnricherConfigError

    with pytest.raises(EnricherConfigError, match=r"retry_base_delay .* retry_max_delay"):
        configure_logging(
            enrichers=[Lookup(retry_attempts=3, retry_base_delay=5.0, retry_max_delay=0.1)],
            output=LineSink(),
        )
    # Without retries the delays are never used: accepted.
    configure_logging(
        enrichers=[Lookup(retry_base_delay=5.0, retry_max_delay=0.1)], output=LineSink()
    ).shutdown()


# -- found by the re-test of the fifteenth round ------------------------------


def test_a_callsite_adder_reads_a_bridged_records_own_call_site() -> None:
    """Through the stdlib bridge the adder read the handler's stack: a
    record handed over by a QueueListener was written with the listener's
    thread and function, and one logged with ``stacklevel=2`` with the
    wrapper's line, where structlog's ProcessorFormatter reads the record."""
    import logging.handlers
    import queue

    from enrichlog.stdlib import EnrichlogHandler

    sink = LineSink()
    container = configure_logging(
        enrichers=[structlog.processors.CallsiteParameterAdder(CALL_SITE)], output=sink
    )
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    queued = logging.getLogger("fifteenth.queued")
    queued.propagate, queued.level = False, logging.INFO
    queue_handler = logging.handlers.QueueHandler(records)
    queued.addHandler(queue_handler)
    listener = logging.handlers.QueueListener(records, EnrichlogHandler())
    listener.start()
    try:

        def producer() -> None:
            queued.info("queued")

        def helper() -> None:
            queued.info("via helper", stacklevel=2)

        def app_code() -> int:
            helper()
            return app_code.__code__.co_firstlineno + 1

        thread = threading.Thread(target=producer, name="producer")
        thread.start()
        thread.join()
        line = app_code()
    finally:
        listener.stop()
        queued.removeHandler(queue_handler)
        container.shutdown()

    by_event = {event["event"]: _call_site(event) for event in sink.events()}
    producer_line = producer.__code__.co_firstlineno + 1
    assert ("test_fifteenth_attack_round.py", "producer", producer_line, "producer") == by_event[
        "queued"
    ]
    assert ("test_fifteenth_attack_round.py", "app_code", line, "MainThread") == by_event[
        "via helper"
    ]


def test_a_hung_dependant_shutdown_leaves_its_dependencies_stopped_all_the_same(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The dependant's hung _shutdown took the whole shutdown_timeout, and
    what it depended on was never stopped (its pool left open)."""
    log: list[str] = []
    base = Stops("base", 0.0, log)
    top = Stops("top", 60.0, log, dependencies="base")
    container = configure_logging(enrichers=[base, top], output=LineSink(), shutdown_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="enrichlog"):
        container.shutdown()

    assert ["top begins", "base begins", "base ends"] == log
    assert "not stopped: 'top'" in caplog.text


def test_a_startup_ignoring_its_cancellation_holds_up_no_dependencys_stop() -> None:
    log: list[str] = []
    release = threading.Event()

    class Stubborn(Stops):
        async def _startup(self) -> None:
            while not release.is_set():
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    continue

    base = Stops("base", 0.0, log)
    slow = Stubborn("slow", 0.0, log, dependencies="base")
    container = configure_logging(
        enrichers=[base, slow], output=LineSink(), startup_timeout=0.1, shutdown_timeout=1.0
    )
    try:
        container.shutdown()
    finally:
        release.set()

    assert "base ends" in log
    assert "slow begins" not in log  # it never started: nothing to stop


def test_check_flags_options_for_a_sync_uri_enricher(tmp_path: Any) -> None:
    """``check`` passed what configure_logging() then refused."""
    from tests.helpers import run_cli

    result = run_cli(
        tmp_path,
        "check",
        env={
            "ENRICHLOG_ENRICHERS": "hostname://",
            "ENRICHLOG_ENRICHER_OPTIONS__HOSTNAME__TIMEOUT": "0.25",
        },
    )

    assert 1 == result.returncode
    assert "enricher_options['hostname']: 'hostname' is a sync enricher" in result.stderr


def test_a_mapping_that_does_not_fit_is_kept_as_the_mapping_as_the_bridge_keeps_it() -> None:
    sink = LineSink()
    container = configure_logging(output=sink)
    try:
        get_logger().info("user %(user)s", {"other": 1})
    finally:
        container.shutdown()

    [event] = sink.events()
    assert ({"other": 1}, "KeyError") == (event["positional_args"], event["format_error"])


# -- found by the attack on awaiting room ------------------------------------


class Paced(AsyncEnricher):
    name = "paced"

    def __init__(self, seconds: float) -> None:
        super().__init__(timeout=5.0)
        self.seconds = seconds

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(self.seconds)
        return event_dict


def test_ainfo_waiters_are_not_starved_by_threads_blocked_on_the_same_queue() -> None:
    """Threads woken by the pipeline took every slot before a woken
    coroutine was scheduled on its loop: 75 % of the ainfo events dropped
    against 1.5 % of the threads' (overflow_block_timeout 0.3 s)."""
    sink = LineSink()
    container = configure_logging(
        enrichers=[Paced(0.01)],
        output=sink,
        queue_size=10,
        max_in_flight=2,
        overflow_block_timeout=0.3,
    )
    stop = threading.Event()
    logged = {"sync": 0, "async": 0}

    def thread_logs() -> None:
        while not stop.is_set():
            get_logger().info("e", kind="sync")
            logged["sync"] += 1

    async def tasks_log() -> None:
        async def one() -> None:
            while not stop.is_set():
                await get_logger().ainfo("e", kind="async")
                logged["async"] += 1

        await asyncio.gather(*(one() for _ in range(5)))

    threads = [threading.Thread(target=thread_logs) for _ in range(5)]
    for thread in threads:
        thread.start()
    threading.Timer(1.5, stop.set).start()
    asyncio.run(tasks_log())
    for thread in threads:
        thread.join()
    report = container.shutdown()

    written = collections.Counter(event["kind"] for event in sink.events())
    assert sum(logged.values()) == report["written"] + report["dropped"]
    async_dropped = 1 - written["async"] / logged["async"]
    assert async_dropped < 0.5, (logged, dict(written))


def test_events_awaiting_room_at_a_loop_shutdown_are_written_and_counted() -> None:
    """runtime="loop", a sync shutdown() on the loop while 50 tasks awaited
    room: all 50 lines were written, but the report counted 9."""
    sink = LineSink()

    async def scenario() -> tuple[dict[str, int], dict[str, Any]]:
        container = configure_logging(
            enrichers=[Paced(0.05)],
            output=sink,
            queue_size=5,
            max_in_flight=2,
            overflow_block_timeout=30,
            runtime="loop",
        )
        await container.astartup()
        tasks = [asyncio.ensure_future(get_logger().ainfo("a", i=i)) for i in range(50)]
        await asyncio.sleep(0.1)
        written_before = container.metrics()["written"]
        report = container.shutdown()
        await asyncio.gather(*tasks)
        return {**report, "written_before": written_before}, dict(container.metrics())

    report, metrics = asyncio.run(asyncio.wait_for(scenario(), 60))

    assert (50, 50, 0) == (len(sink.events()), report["written"], report["dropped"])
    assert 50 == metrics["written"]
    # Those awaiting room count among the salvaged (the re-test found 7 of 60).
    assert 50 - report["written_before"] == report["salvaged"]


def test_events_awaiting_room_on_a_loop_left_stopped_are_written_by_shutdown() -> None:
    """The waiters' loop stopped (Ctrl-C out of run_until_complete) and
    was never closed: shutdown() wrote 7 of 20 and counted nothing else."""
    sink = LineSink()
    container = configure_logging(
        enrichers=[Paced(0.05)],
        output=sink,
        queue_size=5,
        max_in_flight=2,
        overflow_block_timeout=30,
    )
    pending: list[asyncio.Future[None]] = []

    class Interrupted(Exception):
        pass

    async def main() -> None:
        pending.extend(asyncio.ensure_future(get_logger().ainfo("a", i=i)) for i in range(20))
        await asyncio.sleep(0.05)
        raise Interrupted

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(Interrupted):
            loop.run_until_complete(main())
        report = container.shutdown()
        lines = len(sink.events())
    finally:
        for task in asyncio.all_tasks(loop):
            task._log_destroy_pending = False  # type: ignore[attr-defined]
        loop.close()

    assert (20, 20, 0) == (lines, report["written"], report["dropped"])


def test_ctrl_c_during_a_blocked_log_call_counts_its_event_as_dropped(tmp_path: Any) -> None:
    """The interrupt reached the application (as it should), and the event
    vanished: neither written nor counted."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import asyncio, json, os, signal, threading, time
        from enrichlog import AsyncEnricher, configure_logging, get_logger
        from enrichlog.testing import LineSink

        GATE = threading.Event()
        class Gate(AsyncEnricher):
            name = "gate"
            timeout = 60.0
            async def enrich_async(self, logger, m, ed):
                while not GATE.is_set():
                    await asyncio.sleep(0.005)
                return ed

        sink = LineSink()
        c = configure_logging(enrichers=[Gate()], output=sink, queue_size=3, max_in_flight=1,
                              overflow_block_timeout=30)
        log = get_logger()
        for n in range(4):
            log.info("fill", n=n)
        time.sleep(0.2)
        threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        interrupted = False
        try:
            log.info("the blocked one")
        except KeyboardInterrupt:
            interrupted = True
        GATE.set()
        r = c.shutdown()
        print(json.dumps({"interrupted": interrupted, "lines": len(sink.events()),
                          "written": r["written"], "dropped": r["dropped"]}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )

    assert 0 == result.returncode, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"interrupted": True, "lines": 4, "written": 4, "dropped": 1} == summary


# -- found by the attack on the testing helpers --------------------------------


def test_run_enricher_does_not_wait_for_an_abandoned_call() -> None:
    """The helpers waited until a call that ignored its cancellation ended
    by itself (a 30 s tail held the test 30 s); a container writes the
    event as abandoned 0.5 s after the timeout and goes on."""
    import time

    from enrichlog.testing import arun_enricher, run_enricher

    release = threading.Event()

    class Stubborn(AsyncEnricher):
        name = "stubborn"
        timeout = 0.1

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            while not release.is_set():
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    continue
            return event_dict

    results: list[Any] = []
    finished = threading.Event()

    async def arun() -> None:
        results.append((await arun_enricher(Stubborn(), {"event": "x"})).errors)
        # (asyncio.run() itself then waits for the call, as it waits for any
        # task that ignores its cancellation: asyncio's own behaviour.)
        finished.set()

    def use_the_helpers() -> None:
        results.append(run_enricher(Stubborn(), {"event": "x"}).errors)
        asyncio.run(arun())

    helper = threading.Thread(target=use_the_helpers, daemon=True)
    started = time.monotonic()
    helper.start()
    try:
        # Released only after a generous wait: the helpers must return first.
        assert finished.wait(30)
    finally:
        release.set()
        helper.join(10)

    assert [{"stubborn": "timeout"}] * 2 == results
    assert time.monotonic() - started < 30


def test_arun_enricher_runs_a_blocking_enricher_in_daemon_threads() -> None:
    """It used the caller loop's default executor, whose end asyncio.run()
    waits for: a stuck 6 s call held asyncio.run() 6 s after the 0.2 s
    timeout."""
    from enrichlog import SyncEnricher
    from enrichlog.settings import LoggingSettings
    from enrichlog.testing import arun_enricher

    release = threading.Event()
    threads: list[str] = []

    class Rdns(SyncEnricher):
        name = "rdns"
        blocking = True

        def enrich(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            threads.append(threading.current_thread().name)
            release.wait(30)
            return event_dict

    settings = LoggingSettings(enricher_timeout=0.2)
    try:
        result = asyncio.run(arun_enricher(Rdns(), {"event": "x"}, settings=settings))
    finally:
        release.set()

    assert {"rdns": "timeout"} == result.errors
    assert threads
    assert threads[0].startswith("enrichlog-")


def test_the_runner_runs_health_checks_at_the_settings_interval() -> None:
    """EnricherRunner took ``settings`` but ran no health check: an
    enricher failing its check was never skipped in a test."""
    import time

    from enrichlog.settings import LoggingSettings
    from enrichlog.testing import EnricherRunner

    class Down(AsyncEnricher):
        name = "down"

        async def _health_check(self) -> bool:
            return False

        async def enrich_async(
            self, logger: WrappedLogger, method_name: str, event_dict: EventDict
        ) -> EventDict:
            return event_dict

    settings = LoggingSettings(health_check_interval=0.05)
    with EnricherRunner(Down(), settings=settings) as runner:
        deadline = time.monotonic() + 20
        while runner.enricher.available and time.monotonic() < deadline:
            time.sleep(0.02)
        result = runner.run({"event": "x"})

    assert {"down": "unavailable"} == result.errors
