"""Found by the seventeenth outside attack round (testers with only the README
and the docs: the library's own metrics, health and commands; the built-in
lookups and batching; ASGI, the stdlib bridge, the testing helpers and
OpenTelemetry), each kept as a test."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest

from enrichlog import (
    AsyncEnricher,
    LoggingContainer,
    LoggingSettings,
    configure_logging,
    current_container,
    get_logger,
)
from enrichlog.exceptions import EnrichlogError
from enrichlog.integrations.prometheus import register
from tests.faults.runner import script_env


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _run_python(code: str, *args: object) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ``args``; its output."""
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=60,
        check=False,
    )


def _wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


class _Held(AsyncEnricher):
    """Counts the calls it entered; each waits until ``release`` is set
    (forever if it never is: until shutdown cancels it)."""

    name = "held"
    timeout = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.entered = 0
        self.release = threading.Event()

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        self.entered += 1
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        event_dict["held"] = 1
        return event_dict


def test_events_written_unenriched_during_the_drain_count_as_unavailable() -> None:
    # The lines said {"held": "unavailable"}, failures_by_reason["unavailable"]
    # stayed 0 (resilience.md: "unavailable ... or the container was
    # shutting down" is an event skipped, and counted).
    enricher = _Held()
    out = io.StringIO()
    container = configure_logging(enrichers=[enricher], output=out)
    log = get_logger()
    log.info("before")
    _wait_for(lambda: enricher.entered == 1)
    closing = threading.Thread(target=container.shutdown, args=(30.0,))
    closing.start()
    _wait_for(lambda: not container.running)
    for index in range(3):
        log.info("during", i=index)
    enricher.release.set()
    closing.join(30.0)

    lines = _lines(out)
    during = [line for line in lines if line["event"] == "during"]
    metrics = container.metrics()["enrichers"]["held"]
    assert (len(lines), len(during)) == (4, 3)
    assert all(line["enrichment_errors"] == {"held": "unavailable"} for line in during)
    assert (metrics["calls"], metrics["successes"]) == (1, 1)
    assert metrics["failures_by_reason"]["unavailable"] == 3


def test_calls_shutdown_cancels_are_timed_and_their_events_counted_unavailable() -> None:
    # The report said salvaged: 10, the snapshot calls 10, but the latency
    # histogram (Prometheus' calls) 0 and no outcome at all: stats --file
    # and stats --url disagreed on the same state.
    enricher = _Held()
    out = io.StringIO()
    container = configure_logging(enrichers=[enricher], output=out)
    registry = CollectorRegistry()
    register(container, registry)
    log = get_logger()
    for _ in range(4):
        log.info("x")
    _wait_for(lambda: enricher.entered == 4)
    report = container.shutdown(timeout=0.3)

    metrics = container.metrics()["enrichers"]["held"]
    scrape = generate_latest(registry).decode()
    assert report["salvaged"] == 4
    assert [line["enrichment_errors"] for line in _lines(out)] == [{"held": "unavailable"}] * 4
    assert (metrics["calls"], metrics["latency"]["count"]) == (4, 4)
    assert metrics["failures_by_reason"]["unavailable"] == 4
    assert 'enrichlog_enricher_duration_seconds_count{enricher="held"} 4.0' in scrape
    assert 'enrichlog_enricher_calls_total{enricher="held",outcome="unavailable"} 4.0' in scrape


def test_a_call_that_raises_drop_event_counts_as_a_success() -> None:
    # Four calls, two successes, no failure: the outcomes did not add up to
    # the calls (resilience.md: DropEvent is a success for the breaker).
    class Dropper(AsyncEnricher):
        name = "dropper"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            if event_dict.get("drop"):
                raise structlog.DropEvent
            event_dict["d"] = 1
            return event_dict

    out = io.StringIO()
    container = configure_logging(enrichers=[Dropper()], output=out)
    log = get_logger()
    for drop in (False, False, True, True):
        log.info("e", drop=drop)
    container.flush(10.0)
    metrics = container.metrics()

    assert len(_lines(out)) == 2
    assert metrics["filtered"] == 2
    dropper = metrics["enrichers"]["dropper"]
    assert (dropper["calls"], dropper["successes"], dropper["failures"]) == (4, 4, 0)


_CLASH = """
import json, sys, time
from prometheus_client import Counter
from enrichlog import AsyncEnricher, configure_logging, current_container, get_logger

class E(AsyncEnricher):
    name = "e"
    async def enrich_async(self, logger, method_name, event_dict):
        event_dict["e"] = 1
        return event_dict

first = configure_logging(enrichers=[E()], output=sys.argv[1])
log = get_logger()
log.info("before")
Counter("enrichlog_events_handed_off", "the application's own metric of that name")
second = configure_logging(enrichers=[E()], output=sys.argv[1], metrics_port=0)
for index in range(3):
    log.info("after", i=index)
second.shutdown()
print(json.dumps({"current_was_second": current_container() is None and second.closed,
                  "port": second.metrics_port}))
"""


def test_a_metric_name_clash_with_metrics_port_does_not_stop_logging(tmp_path: Any) -> None:
    # configure_logging(metrics_port=...) raised prometheus_client's
    # DuplicateTimeseries after the running container was shut down:
    # structlog kept a closed output, and every later event was lost.
    out = tmp_path / "out.log"
    run = _run_python(_CLASH, out)

    assert run.returncode == 0, run.stderr
    events = [json.loads(line)["event"] for line in out.read_text().splitlines()]
    assert events == ["before", "after", "after", "after"]
    assert "cannot register its metrics in prometheus_client's default registry" in run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == {"current_was_second": True, "port": None}


def test_a_second_container_is_refused_while_one_runs() -> None:
    # LoggingContainer(...).start() took structlog over while the first ran:
    # its lines went to the second's output, and both counted them.
    class E(AsyncEnricher):
        name = "e"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            event_dict["e"] = 1
            return event_dict

    first_out, second_out = io.StringIO(), io.StringIO()
    first = configure_logging(enrichers=[E()], output=first_out)
    second = LoggingContainer(LoggingSettings(output=second_out), [E()])
    with pytest.raises(EnrichlogError, match="another logging container is running"):
        second.start()
    log = get_logger()
    for _ in range(3):
        log.info("first")
    first.flush(10.0)

    assert not second.running
    assert (len(_lines(first_out)), second_out.getvalue()) == (3, "")
    assert first.metrics()["written"] == 3


def test_configure_logging_replaces_a_container_started_directly() -> None:
    out_direct, out_configured = io.StringIO(), io.StringIO()
    direct = LoggingContainer(LoggingSettings(output=out_direct), []).start()
    get_logger().info("direct")
    configured = configure_logging(output=out_configured)
    get_logger().info("configured")
    configured.flush(10.0)

    assert (direct.closed, current_container() is configured) == (True, True)
    assert [line["event"] for line in _lines(out_direct)] == ["direct"]
    assert [line["event"] for line in _lines(out_configured)] == ["configured"]
    assert (direct.metrics()["written"], configured.metrics()["written"]) == (1, 1)


class _OddStr(str):
    """A str whose comparison raises."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no compare")

    __hash__ = str.__hash__


@pytest.mark.parametrize("batching", [True, False])
def test_a_key_that_cannot_be_compared_fails_its_own_event_only(batching: bool) -> None:
    # The odd key was cached as a success; every later event with the equal
    # plain key "1" then failed with error: RuntimeError for the whole
    # cache_ttl (enrichers.md: such a key "fails its event").
    class Many(AsyncEnricher):
        name = "b"

        def cache_key(self, event_dict: Any) -> Any:
            return event_dict.get("uid")

        async def enrich_many(self, keys: Any) -> Any:
            return {key: f"v{key}" for key in keys}

        def apply(self, event_dict: Any, value: Any) -> Any:
            event_dict["v"] = value
            return event_dict

    class One(AsyncEnricher):
        name = "b"
        cache_ttl = 300.0

        def cache_key(self, event_dict: Any) -> Any:
            return event_dict.get("uid")

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            event_dict["v"] = f"v{event_dict['uid']}"
            return event_dict

    out = io.StringIO()
    container = configure_logging(enrichers=[Many() if batching else One()], output=out)
    log = get_logger()
    log.info("odd", uid=_OddStr("1"))
    container.flush(10.0)
    for _ in range(3):
        log.info("plain", uid="1")
        container.flush(10.0)
    container.shutdown()

    lines = _lines(out)
    assert lines[0]["enrichment_errors"] == {"b": "error: RuntimeError"}
    later = [(line["event"], line.get("v"), line.get("enrichment_errors")) for line in lines[1:]]
    assert later == [("plain", "v1", None)] * 3


# -- found by the re-test of the round ------------------------------------------


def test_a_container_started_directly_is_current_captured_reset_and_replaced() -> None:
    # configure_logging() raised "another logging container is running ...
    # call configure_logging(), which replaces it" once an earlier container
    # of its own had been shut down; capture_events() found no container;
    # reset_logging() left the direct one running.
    from enrichlog.testing import capture_events, reset_logging

    earlier = configure_logging(output=io.StringIO())
    earlier.shutdown()
    direct = LoggingContainer(LoggingSettings(output=io.StringIO()), []).start()
    assert current_container() is direct
    with capture_events() as events:
        get_logger().info("one")
    assert [event["event"] for event in events] == ["one"]
    reset_logging()
    assert direct.closed

    again = LoggingContainer(LoggingSettings(output=io.StringIO()), []).start()
    replacing = configure_logging(output=io.StringIO())
    assert again.closed
    assert current_container() is replacing


def test_configure_logging_never_loses_a_race_with_a_direct_start() -> None:
    # A start() on another thread slipped in between the old container's
    # shutdown and the new one's start: configure_logging() raised.
    configure_logging(output=io.StringIO(), handle_sigterm=False)
    raised: list[BaseException] = []
    stop = threading.Event()

    def reconfigure() -> None:
        for _ in range(15):
            try:
                configure_logging(output=io.StringIO(), handle_sigterm=False)
            except BaseException as exc:  # the test reports it
                raised.append(exc)

    def start_directly() -> None:
        while not stop.is_set():
            candidate = LoggingContainer(
                LoggingSettings(output=io.StringIO(), handle_sigterm=False), []
            )
            with contextlib.suppress(EnrichlogError):
                candidate.start()

    racer = threading.Thread(target=start_directly)
    racer.start()
    try:
        reconfigure()
    finally:
        stop.set()
        racer.join(30)
    assert raised == []


class _Stubborn(AsyncEnricher):
    """Ignores cancellation until ``seconds`` passed, then answers."""

    name = "stubborn"
    timeout = 30.0
    seconds = 1.6

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(end - time.monotonic())
        event_dict["stubborn"] = 1
        return event_dict


@pytest.mark.parametrize("runtime", ["thread", "loop"])
def test_a_call_that_ignores_shutdowns_cancellation_is_abandoned_once(runtime: str) -> None:
    # Thread runtime: the call was never timed (calls 1, latency 0) and not
    # counted abandoned though a warning said it was left behind. Loop
    # runtime: the same call counted as a success, its event unavailable.
    out = io.StringIO()
    held: dict[str, Any] = {}

    async def on_the_loop() -> None:
        container = configure_logging(
            enrichers=[_Stubborn()], output=out, runtime="loop", shutdown_timeout=0.2
        )
        await container.astartup()
        held["container"] = container
        get_logger().info("x")
        await asyncio.sleep(0.1)
        await container.ashutdown()
        await asyncio.sleep(_Stubborn.seconds + 0.3)  # the call ends, late

    if runtime == "loop":
        asyncio.run(on_the_loop())
        container = held["container"]
    else:
        container = configure_logging(enrichers=[_Stubborn()], output=out, shutdown_timeout=0.2)
        get_logger().info("x")
        time.sleep(0.1)
        container.shutdown()

    def stubborn() -> Any:
        return container.metrics()["enrichers"]["stubborn"]

    _wait_for(lambda: stubborn()["abandoned"] == 1)
    metrics = stubborn()
    assert _lines(out)[0]["enrichment_errors"] == {"stubborn": "unavailable"}
    assert (metrics["calls"], metrics["latency"]["count"], metrics["successes"]) == (1, 1, 0)
    assert metrics["failures_by_reason"]["unavailable"] == 1
    assert metrics["failures"] == 1


def test_events_logged_after_shutdown_count_for_no_container() -> None:
    # The shut-down container's unavailable counter kept rising (0 -> 10)
    # while its written and events_in stayed, and /metrics kept the value of
    # the shutdown.
    class Slow(AsyncEnricher):
        name = "slow"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            await asyncio.sleep(0.01)
            event_dict["slow"] = 1
            return event_dict

    out = io.StringIO()
    container = configure_logging(enrichers=[Slow()], output=out)
    log = get_logger()
    for _ in range(5):
        log.info("before")
    container.shutdown()
    for _ in range(5):
        log.info("after")

    metrics = container.metrics()
    assert len(_lines(out)) == 10
    assert (metrics["written"], metrics["events_in"]) == (5, 5)
    assert metrics["enrichers"]["slow"]["failures_by_reason"]["unavailable"] == 0


def test_a_container_whose_loop_ended_without_a_shutdown_does_not_block_a_new_start() -> None:
    out = io.StringIO()
    held: dict[str, Any] = {}

    class Adds(AsyncEnricher):
        name = "adds"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            event_dict["added"] = 1
            return event_dict

    async def main() -> None:
        held["old"] = configure_logging(enrichers=[Adds()], output=out, runtime="loop")
        await held["old"].astartup()
        get_logger().info("on the loop")

    asyncio.run(main())
    new = LoggingContainer(LoggingSettings(output=out), []).start()
    get_logger().info("after")
    new.shutdown()

    assert held["old"].closed
    assert [line["event"] for line in _lines(out)] == ["on the loop", "after"]


def test_stdlib_records_logged_while_configure_logging_replaces_the_container_are_kept() -> None:
    # Each replacement left 5-16 ms without a handler on the root logger:
    # INFO records vanished, WARNING ones went to logging.lastResort; and a
    # logger of the application's own with an EnrichlogHandler lost records
    # while the root's level was put back in between.
    import logging

    from enrichlog.stdlib import EnrichlogHandler
    from enrichlog.testing import LineSink, reset_logging

    class Adds(AsyncEnricher):
        name = "adds"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            await asyncio.sleep(0.0005)
            event_dict["added"] = 1
            return event_dict

    sinks = [LineSink()]
    configure_logging(enrichers=[Adds()], output=sinks[-1], stdlib=True, level="info")
    app = logging.getLogger("t17.app")  # propagates to the root's handler
    audit = logging.getLogger("t17.audit")
    own = EnrichlogHandler()
    audit.addHandler(own)
    audit.propagate = False
    stop = threading.Event()
    sent = [0]

    def log() -> None:
        while not stop.is_set():
            app.info("app %d", sent[0])
            audit.info("audit %d", sent[0])
            sent[0] += 1

    logging_thread = threading.Thread(target=log)
    logging_thread.start()
    try:
        for _ in range(5):
            time.sleep(0.03)
            sinks.append(LineSink())
            configure_logging(enrichers=[Adds()], output=sinks[-1], stdlib=True, level="info")
        time.sleep(0.03)
    finally:
        stop.set()
        logging_thread.join(30)
        audit.removeHandler(own)
        reset_logging()

    seen = {json.loads(line)["event"] for sink in sinks for line in sink.lines}
    for name in ("app", "audit"):
        missing = [i for i in range(sent[0]) if f"{name} {i}" not in seen]
        assert missing == [], (name, len(missing), sent[0])
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, EnrichlogHandler)]
    assert handlers == []


def test_levels_across_a_replacement_of_stdlib_containers_are_set_and_restored() -> None:
    import logging

    from enrichlog.stdlib import EnrichlogHandler

    root, noisy, chatty = (logging.getLogger(n) for n in ("", "t17.noisy", "t17.chatty"))
    levels_before = (root.level, noisy.level, chatty.level)
    root.setLevel(logging.WARNING)
    try:
        configure_logging(
            output=io.StringIO(),
            stdlib=True,
            level="info",
            levels={"t17.noisy": "error", "t17.chatty": "debug"},
        )
        assert (root.level, noisy.level, chatty.level) == (
            logging.INFO,
            logging.ERROR,
            logging.DEBUG,
        )
        second = configure_logging(
            output=io.StringIO(), stdlib=True, level="debug", levels={"t17.noisy": "warning"}
        )
        assert (root.level, noisy.level, chatty.level) == (
            logging.DEBUG,
            logging.WARNING,
            logging.NOTSET,
        )
        ours = [h for h in root.handlers if isinstance(h, EnrichlogHandler)]
        assert len(ours) == 1
        third = configure_logging(output=io.StringIO(), stdlib=False)
        assert (root.level, noisy.level) == (logging.WARNING, logging.NOTSET)
        assert not [h for h in root.handlers if isinstance(h, EnrichlogHandler)]
        assert second.closed
        third.shutdown()
    finally:
        root.setLevel(levels_before[0])
        noisy.setLevel(levels_before[1])
        chatty.setLevel(levels_before[2])


@pytest.mark.parametrize("runtime", ["thread", "loop"])
def test_calls_abandoned_at_shutdown_reach_the_scrape(runtime: str) -> None:
    # metrics() said abandoned 4 and 4 calls timed; both collectors kept 0
    # and 0, frozen at the shutdown, so stats --url and --file disagreed.
    out = io.StringIO()
    registry = CollectorRegistry()
    held: dict[str, Any] = {}

    async def on_the_loop() -> None:
        container = configure_logging(
            enrichers=[_Stubborn()], output=out, runtime="loop", shutdown_timeout=0.2
        )
        await container.astartup()
        register(container, registry)
        held["container"] = container
        for _ in range(2):
            get_logger().info("x")
        await asyncio.sleep(0.1)
        await container.ashutdown()
        await asyncio.sleep(_Stubborn.seconds + 0.3)

    if runtime == "loop":
        asyncio.run(on_the_loop())
        container = held["container"]
    else:
        container = configure_logging(enrichers=[_Stubborn()], output=out, shutdown_timeout=0.2)
        register(container, registry)
        for _ in range(2):
            get_logger().info("x")
        time.sleep(0.1)
        container.shutdown()

    scrape = generate_latest(registry).decode()
    metrics = container.metrics()["enrichers"]["stubborn"]
    assert (metrics["calls"], metrics["latency"]["count"], metrics["abandoned"]) == (2, 2, 2)
    assert 'enrichlog_enricher_duration_seconds_count{enricher="stubborn"} 2.0' in scrape
    assert 'enrichlog_enricher_abandoned_total{enricher="stubborn"} 2.0' in scrape


def test_a_cached_call_that_ignores_cancellation_is_not_reported_by_asyncio_run() -> None:
    # asyncio.run() reported "unhandled exception during asyncio.run()
    # shutdown" for enrichlog's cache task, _EnrichmentFailedError, once
    # per key.
    class Cached(_Stubborn):
        cache_ttl = 60.0

        def cache_key(self, event_dict: Any) -> Any:
            return event_dict["k"]

    reported: list[dict[str, Any]] = []
    out = io.StringIO()

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        container = configure_logging(
            enrichers=[Cached()], output=out, runtime="loop", shutdown_timeout=0.2
        )
        await container.astartup()
        for index in range(4):
            get_logger().info("x", k=index % 2)
        await asyncio.sleep(0.1)
        await container.ashutdown()

    asyncio.run(main())

    assert [context.get("message") for context in reported] == []
    assert len(_lines(out)) == 4


def test_a_replacement_re_adds_the_root_handler_the_application_removed() -> None:
    # Found by the third re-test: the hand-over assumed the outgoing
    # container's handler was still on the root; after dictConfig (or any
    # clean-up of the application's) the new container had no bridge.
    import logging

    from enrichlog.stdlib import EnrichlogHandler

    root = logging.getLogger()
    configure_logging(stdlib=True, level="info", output=io.StringIO())
    ours = [h for h in root.handlers if isinstance(h, EnrichlogHandler)]
    for handler in ours:
        root.removeHandler(handler)
    out = io.StringIO()
    container = configure_logging(stdlib=True, level="info", output=out)
    logging.getLogger("t17.app").info("after the replacement")
    container.shutdown()

    assert [line["event"] for line in _lines(out)] == ["after the replacement"]
    assert not [h for h in root.handlers if isinstance(h, EnrichlogHandler)]


def test_a_call_in_its_grace_when_the_drain_times_out_is_counted_before_ashutdown_returns() -> None:
    # runtime="loop": the call had timed out and was within its abandonment
    # grace; it was counted after the counts were final, so the scrape kept
    # 0 abandoned and 0 calls timed for good.
    class Stubborn(AsyncEnricher):
        name = "stub"
        timeout = 0.2

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                end = time.monotonic() + 1.0
                while time.monotonic() < end:
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.sleep(end - time.monotonic())
            return event_dict

    registry = CollectorRegistry()
    seen: dict[str, Any] = {}

    async def main() -> None:
        container = configure_logging(
            runtime="loop", enrichers=[Stubborn()], output=io.StringIO(), shutdown_timeout=0.3
        )
        await container.astartup()
        register(container, registry)
        get_logger().info("one")
        await asyncio.sleep(0.35)  # past its timeout, within its grace
        await container.ashutdown()
        seen["metrics"] = container.metrics()["enrichers"]["stub"]
        seen["scrape"] = generate_latest(registry).decode()
        await asyncio.sleep(1.2)  # the call ends meanwhile: nothing counted again
        seen["later"] = container.metrics()["enrichers"]["stub"]

    asyncio.run(main())

    metrics, later = seen["metrics"], seen["later"]
    assert (metrics["calls"], metrics["latency"]["count"], metrics["abandoned"]) == (1, 1, 1)
    assert (later["latency"]["count"], later["abandoned"]) == (1, 1)
    assert 'enrichlog_enricher_abandoned_total{enricher="stub"} 1.0' in seen["scrape"]
    assert 'enrichlog_enricher_duration_seconds_count{enricher="stub"} 1.0' in seen["scrape"]


def test_stdlib_records_during_the_first_configurations_start_never_reach_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Found by the third re-test: records of an EnrichlogHandler logged while
    # the first configure_logging() started its enrichers went to structlog's
    # default renderer, on standard output.
    import logging

    from enrichlog.stdlib import EnrichlogHandler
    from enrichlog.testing import reset_logging

    class SlowStart(AsyncEnricher):
        name = "slowstart"

        async def _startup(self) -> None:
            await asyncio.sleep(0.3)

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            return event_dict

    reset_logging()
    audit = logging.getLogger("t17.audit.start")
    handler = EnrichlogHandler()
    audit.addHandler(handler)
    audit.propagate = False
    stop = threading.Event()

    def log() -> None:
        index = 0
        while not stop.is_set():
            audit.warning("r-%d", index)
            index += 1
            time.sleep(0.005)

    logging_thread = threading.Thread(target=log)
    logging_thread.start()
    try:
        time.sleep(0.05)
        container = configure_logging(enrichers=[SlowStart()], output=io.StringIO())
        time.sleep(0.05)
    finally:
        stop.set()
        logging_thread.join(30)
        audit.removeHandler(handler)
    container.shutdown()

    assert "r-" not in capsys.readouterr().out


_ASYNC_WITH_SIGTERM = """
import asyncio, os, signal, sys
from enrichlog import AsyncEnricher, LoggingContainer, LoggingSettings, get_logger

class Slow(AsyncEnricher):
    name = "slow"
    async def enrich_async(self, logger, method_name, event_dict):
        await asyncio.sleep(0.05)
        event_dict["slow"] = 1
        return event_dict

async def main():
    async with LoggingContainer(LoggingSettings(output=sys.argv[1]), [Slow()]):
        for i in range(200):
            get_logger().info("x", i=i)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(10)

asyncio.run(main())
"""


def test_async_with_a_container_on_the_main_thread_drains_on_sigterm(tmp_path: Any) -> None:
    # Found by the fourth re-test: the container started on an AnyIO worker
    # thread, so no SIGTERM handler was installed: 0 of 200 lines.
    out = tmp_path / "out.log"
    run = _run_python(_ASYNC_WITH_SIGTERM, out)

    assert run.returncode in (-15, 143), run.stderr
    assert "no SIGTERM handler was installed" not in run.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 200
    assert all(line.get("slow") == 1 for line in lines)


def test_an_event_a_sibling_filtered_is_not_counted_unavailable_at_shutdown() -> None:
    # Found by the fourth re-test: the event was filtered (no line), yet the
    # sibling that shutdown cancelled counted it unavailable.
    class Dropper(AsyncEnricher):
        name = "dropper"

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            await asyncio.sleep(0.01)
            raise structlog.DropEvent

    class Long(AsyncEnricher):
        name = "long"
        timeout = 5.0

        async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
            await asyncio.sleep(3)
            return event_dict

    out = io.StringIO()
    container = configure_logging(enrichers=[Dropper(), Long()], output=out, shutdown_timeout=0.3)
    get_logger().info("e")
    report = container.shutdown()

    assert (report["written"], report["filtered"], out.getvalue()) == (0, 1, "")
    assert container.metrics()["enrichers"]["long"]["failures_by_reason"]["unavailable"] == 0


_ASYNC_WITH_THEN_CONFIGURE = """
import asyncio, os, signal, sys
from enrichlog import AsyncEnricher, LoggingContainer, LoggingSettings
from enrichlog import configure_logging, get_logger

class Slow(AsyncEnricher):
    name = "slow"
    async def enrich_async(self, logger, method_name, event_dict):
        await asyncio.sleep(0.02)
        event_dict["slow"] = 1
        return event_dict

async def first():
    async with LoggingContainer(LoggingSettings(output=sys.argv[1]), [Slow()]):
        get_logger().info("first")

asyncio.run(first())
print("between:", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, file=sys.stderr)
configure_logging(enrichers=[Slow()], output=sys.argv[1], max_in_flight=1)
for i in range(50):
    get_logger().info("ev", i=i)
os.kill(os.getpid(), signal.SIGTERM)
"""


def test_sigterm_after_an_async_with_container_still_drains_the_next_one(tmp_path: Any) -> None:
    # Found by the fifth re-test: ashutdown() on the thread runtime ran on a
    # worker thread, which cannot restore SIGTERM's handler; the stopped
    # container's stayed, the next one installed none, and SIGTERM lost its
    # queue (1 of 201 lines).
    out = tmp_path / "out.log"
    run = _run_python(_ASYNC_WITH_THEN_CONFIGURE, out)

    assert run.returncode in (-15, 143), run.stderr
    assert "between: True" in run.stderr
    assert len(out.read_text().splitlines()) == 51


def test_a_handler_left_by_a_shutdown_on_another_thread_is_taken_over() -> None:
    import signal

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are the main thread's")
    before = signal.getsignal(signal.SIGTERM)
    if before is not signal.SIG_DFL:
        pytest.skip("the test runner handles SIGTERM itself")
    first = configure_logging(enrichers=[_Held()], output=io.StringIO())
    assert signal.getsignal(signal.SIGTERM) == first._on_sigterm
    closing = threading.Thread(target=first.shutdown, args=(0.1,))
    closing.start()
    closing.join(30)
    second = configure_logging(enrichers=[_Held()], output=io.StringIO())
    try:
        assert signal.getsignal(signal.SIGTERM) == second._on_sigterm
    finally:
        second.shutdown(0.1)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
