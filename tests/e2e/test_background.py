"""Background delivery end to end: nothing lost, nothing reordered."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import structlog

from enrichlog.container import configure_logging, get_logger
from enrichlog.enricher import AsyncEnricher, SyncEnricher
from tests.helpers import read_lines

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class Tag(AsyncEnricher):
    """Adds ``tag`` after yielding once to the loop."""

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        event_dict["tag"] = "seen"
        return event_dict


class Gate(AsyncEnricher):
    """Holds every event until ``opened`` is set (from any thread)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.opened = threading.Event()

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        while not self.opened.is_set():
            await asyncio.sleep(0.001)
        event_dict["gate"] = "passed"
        return event_dict


class CopyVar(AsyncEnricher):
    """Copies a context variable, as the enricher sees it, into the event
    (after yielding to the loop once)."""

    def __init__(self, var: contextvars.ContextVar[Any], field: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.var, self.field = var, field

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        event_dict[self.field] = self.var.get()
        return event_dict


class RequestIdCopier(CopyVar):
    """Copies the caller's request id contextvar into the event."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(REQUEST_ID, "seen_request_id", **kw)


def test_background_log_call_returns_before_enrichment(log_file: Path) -> None:
    gate = Gate(name="gate", timeout=5.0)
    container = configure_logging(enrichers=[gate], output=str(log_file), delivery="background")
    log = get_logger()

    log.info("queued")
    written_before_gate = read_lines(log_file)
    gate.opened.set()
    container.flush(5.0)

    assert [] == written_before_gate
    assert ["passed"] == [line["gate"] for line in read_lines(log_file)]


def test_auto_delivery_is_background_with_an_async_enricher(log_file: Path) -> None:
    container = configure_logging(enrichers=[Tag()], output=str(log_file))

    delivery = container.metrics()["delivery"]

    assert "background" == delivery


@pytest.mark.slow
def test_hundred_thousand_events_from_eight_threads_all_written_once_in_order(
    log_file: Path,
) -> None:
    container = configure_logging(
        enrichers=[Tag()],
        output=str(log_file),
        delivery="background",
        overflow="block",
        queue_size=2_000,
        overflow_block_timeout=60.0,
    )
    log = get_logger()
    per_thread = 12_500

    def produce(thread_no: int) -> None:
        for i in range(per_thread):
            log.info("e", t=thread_no, i=i)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = container.shutdown(timeout=120)

    seen: dict[int, list[int]] = defaultdict(list)
    for line in read_lines(log_file):
        seen[line["t"]].append(line["i"])
    assert {"written": 100_000, "dropped": 0, "pending": 0} == {
        key: report[key] for key in ("written", "dropped", "pending")
    }
    assert {n: list(range(per_thread)) for n in range(8)} == dict(seen)


def test_drop_new_counts_every_event_and_keeps_errors(log_file: Path) -> None:
    gate = Gate(name="gate", timeout=30.0)
    container = configure_logging(
        enrichers=[gate],
        output=str(log_file),
        delivery="background",
        overflow="drop_new",
        queue_size=10,
        max_in_flight=1,
    )
    log = get_logger()

    for i in range(200):
        log.info("info", i=i)
    for i in range(5):
        log.error("error", i=i)
    dropped_while_stalled = container.metrics()["dropped"]
    gate.opened.set()
    report = container.shutdown(timeout=30)

    lines = read_lines(log_file)
    assert 205 == report["written"] + report["dropped"]
    assert report["written"] == len(lines)
    assert dropped_while_stalled > 0
    assert [0, 1, 2, 3, 4] == [line["i"] for line in lines if line["level"] == "error"]


def test_drop_old_evicts_oldest_low_level_events(log_file: Path) -> None:
    gate = Gate(name="gate", timeout=30.0)
    container = configure_logging(
        enrichers=[gate],
        output=str(log_file),
        delivery="background",
        overflow="drop_old",
        queue_size=5,
        max_in_flight=1,
    )
    log = get_logger()

    log.info("first")  # taken into flight, held at the gate
    container.flush(0.2)
    log.error("urgent")
    for i in range(20):
        log.info("later", i=i)
    gate.opened.set()
    report = container.shutdown(timeout=30)

    lines = read_lines(log_file)
    assert 22 == report["written"] + report["dropped"]
    assert "urgent" in [line["event"] for line in lines]
    assert [16, 17, 18, 19] == [line["i"] for line in lines if line["event"] == "later"]


def test_flush_waits_for_everything_logged_before(log_file: Path) -> None:
    container = configure_logging(enrichers=[Tag()], output=str(log_file), delivery="background")
    log = get_logger()

    for i in range(500):
        log.info("e", i=i)
    flushed = container.flush(10)

    assert flushed
    assert list(range(500)) == [line["i"] for line in read_lines(log_file)]


async def test_aflush_waits_without_blocking_the_loop(log_file: Path) -> None:
    gate = Gate(name="gate", timeout=5.0)
    container = configure_logging(enrichers=[gate], output=str(log_file), delivery="background")
    log = get_logger()
    log.info("held")

    async def open_gate_later() -> None:
        await asyncio.sleep(0.01)
        gate.opened.set()

    opener = asyncio.create_task(open_gate_later())
    flushed = await container.aflush(5)
    await opener

    assert flushed
    assert ["held"] == [line["event"] for line in read_lines(log_file)]


async def test_contextvars_reach_the_right_events_across_concurrent_tasks(
    log_file: Path,
) -> None:
    container = configure_logging(
        enrichers=[RequestIdCopier(name="rid")], output=str(log_file), delivery="background"
    )
    log = get_logger()

    async def handle(n: int) -> None:
        REQUEST_ID.set(f"req-{n}")
        structlog.contextvars.bind_contextvars(bound=f"req-{n}")
        for step in range(3):
            log.info("step", n=n, step=step)
            await asyncio.sleep(0)
            await log.ainfo("astep", n=n, step=step)

    await asyncio.gather(*(handle(n) for n in range(100)))
    await container.aflush(10)

    lines = read_lines(log_file)
    assert 600 == len(lines)
    assert all(line["seen_request_id"] == f"req-{line['n']}" for line in lines)
    assert all(line["bound"] == f"req-{line['n']}" for line in lines)


def test_shutdown_report_is_exact_when_its_timeout_hits(log_file: Path) -> None:
    gate = Gate(name="gate", timeout=30.0)
    container = configure_logging(enrichers=[gate], output=str(log_file), delivery="background")
    log = get_logger()
    for i in range(3):
        log.info("stuck", i=i)

    report = container.shutdown(timeout=0.2)

    # Nothing is left pending: the three were salvaged (written with what
    # they had) and are counted as written.
    assert (0, 3, 3, 0) == (
        report["pending"],
        report["salvaged"],
        report["written"],
        report["dropped"],
    )


def test_shutdown_writes_events_it_gave_up_enriching(log_file: Path) -> None:
    gate = Gate(name="gate", timeout=30.0)
    container = configure_logging(
        enrichers=[gate], output=str(log_file), delivery="background", max_in_flight=1
    )
    log = get_logger()
    for i in range(3):
        log.info("stuck", i=i)

    report = container.shutdown(timeout=0.2)

    lines = read_lines(log_file)
    assert (0, 3) == (report["pending"], report["salvaged"])
    assert [0, 1, 2] == [line["i"] for line in lines]
    assert all(line["enrichment_errors"] == {"gate": "unavailable"} for line in lines)


def _run_script(tmp_path: Path, body: str, *, wait_for_ready: bool = False) -> Path:
    out = tmp_path / "child.log"
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, os, sys, time
            from enrichlog import AsyncEnricher, configure_logging, get_logger

            class Slowish(AsyncEnricher):
                async def enrich_async(self, logger, method_name, event_dict):
                    await asyncio.sleep(0.002)
                    event_dict["pid_seen"] = os.getpid()
                    return event_dict

            OUT = sys.argv[1]
            """
        )
        + textwrap.dedent(body)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICHLOG_")}
    process = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    if wait_for_ready:
        assert process.stdout is not None
        assert "ready" == process.stdout.readline().strip()
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    return out


@pytest.mark.slow
def test_process_exit_without_shutdown_drains_every_event(tmp_path: Path) -> None:
    out = _run_script(
        tmp_path,
        """
        configure_logging(enrichers=[Slowish()], output=OUT, delivery="background",
                          queue_size=100_000)
        log = get_logger()
        for i in range(10_000):
            log.info("e", i=i)
        """,
    )

    lines = read_lines(out)

    assert list(range(10_000)) == [line["i"] for line in lines]


@pytest.mark.slow
def test_sigterm_drains_every_event(tmp_path: Path) -> None:
    out = _run_script(
        tmp_path,
        """
        configure_logging(enrichers=[Slowish()], output=OUT, delivery="background",
                          queue_size=100_000)
        log = get_logger()
        for i in range(10_000):
            log.info("e", i=i)
        print("ready", flush=True)
        time.sleep(60)
        """,
        wait_for_ready=True,
    )

    lines = read_lines(out)

    assert list(range(10_000)) == [line["i"] for line in lines]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_a_fresh_runtime_and_no_parent_events(tmp_path: Path) -> None:
    out = _run_script(
        tmp_path,
        """
        container = configure_logging(enrichers=[Slowish()], output=OUT,
                                      delivery="background")
        log = get_logger()
        for i in range(200):
            log.info("before-fork", i=i)
        pid = os.fork()
        who = "child" if pid == 0 else "parent"
        for i in range(200):
            log.info("after-fork", who=who, i=i)
        if pid == 0:
            container.shutdown()
            os._exit(0)
        os.waitpid(pid, 0)
        """,
    )

    lines = read_lines(out)
    before = [line["i"] for line in lines if line["event"] == "before-fork"]
    after = defaultdict(list)
    for line in lines:
        if line["event"] == "after-fork":
            after[line["who"]].append(line)
    pids = {who: {line["pid_seen"] for line in got} for who, got in after.items()}
    assert list(range(200)) == sorted(before)
    assert len(before) == len(set(before))
    assert list(range(200)) == [line["i"] for line in after["parent"]]
    assert list(range(200)) == [line["i"] for line in after["child"]]
    assert 1 == len(pids["parent"])
    assert 1 == len(pids["child"])
    assert pids["parent"] != pids["child"]


class GatedRequestIdCopier(Gate):
    """Holds every event until opened, then copies the caller's request id."""

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict = await super().enrich_async(logger, method_name, event_dict)
        event_dict["seen_request_id"] = REQUEST_ID.get()
        # A call's own changes stay in its own copy of the context.
        REQUEST_ID.set("changed-by-the-enricher")
        return event_dict


def test_queued_events_keep_the_context_they_were_logged_in(log_file: Path) -> None:
    """Events handed off from equal contexts share one copy of it while they
    wait (a backlog holds one context, not one per event); a change of a
    variable between two log calls still reaches only the later events, and
    what an enricher's call sets never reaches another event."""
    copier = GatedRequestIdCopier(name="rid", timeout=10.0)
    container = configure_logging(enrichers=[copier], output=str(log_file), delivery="background")
    log = get_logger()
    expected: list[str] = []

    def run_in_a_fresh_context() -> None:
        for request_id in ("a", "a", "b", "b", "a"):
            REQUEST_ID.set(request_id)
            for _ in range(3):
                log.info("queued", n=len(expected))
                expected.append(request_id)
        REQUEST_ID.set("-")
        log.info("queued", n=len(expected))
        expected.append("-")

    contextvars.Context().run(run_in_a_fresh_context)
    copier.opened.set()
    container.flush(10.0)

    lines = read_lines(log_file)
    assert list(range(len(expected))) == [line["n"] for line in lines]
    assert expected == [line["seen_request_id"] for line in lines]


STATE: contextvars.ContextVar[Any] = contextvars.ContextVar("state")


class GatedStateReader(Gate):
    """Holds every event until opened, then reads the caller's ``STATE``."""

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict = await super().enrich_async(logger, method_name, event_dict)
        state = STATE.get(None)
        event_dict["seen_user"] = state.get("user") if isinstance(state, dict) else repr(state)
        return event_dict


def test_queued_events_keep_their_own_objects_of_equal_value(log_file: Path) -> None:
    """Two requests whose context variables hold equal but distinct objects
    (an empty per-request dict each) are not confused: an event is enriched
    with its own request's object, as it is when enrichment runs, even though
    the two were equal when logged."""
    reader = GatedStateReader(name="state", timeout=10.0)
    container = configure_logging(enrichers=[reader], output=str(log_file), delivery="background")
    log = get_logger()
    states: list[dict[str, Any]] = []

    def request(n: int) -> None:
        state: dict[str, Any] = {}
        STATE.set(state)
        log.info("request", n=n)
        states.append(state)

    for n in range(4):
        contextvars.Context().run(request, n)
    for n, state in enumerate(states):
        state["user"] = f"user-{n}"  # filled after the log call, before enrichment
    reader.opened.set()
    container.flush(10.0)

    assert [f"user-{n}" for n in range(4)] == [line["seen_user"] for line in read_lines(log_file)]


class Unequal:
    """A value that refuses to be compared (as numpy arrays and SQL
    expressions do)."""

    def __eq__(self, other: object) -> bool:
        raise TypeError("Boolean value of this clause is not defined")

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return "Unequal()"


def test_a_context_value_that_cannot_be_compared_costs_no_event(log_file: Path) -> None:
    reader = GatedStateReader(name="state", timeout=10.0)
    container = configure_logging(enrichers=[reader], output=str(log_file), delivery="background")
    log = get_logger()

    def requests() -> None:
        for n in range(6):
            STATE.set(Unequal())  # a new one each time: same key, values never equal
            log.info("request", n=n)

    contextvars.Context().run(requests)
    reader.opened.set()
    container.flush(10.0)

    lines = read_lines(log_file)
    assert list(range(6)) == [line["n"] for line in lines]
    assert all(line["seen_user"] == "Unequal()" for line in lines)


STAGE: contextvars.ContextVar[int] = contextvars.ContextVar("stage", default=-1)


class SetStage(SyncEnricher):
    """A sync enricher of the second level (it runs on the loop) that passes
    its event's number to the third level through a context variable."""

    def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        STAGE.set(event_dict["n"])
        return event_dict


def test_what_enrichment_sets_in_a_context_stays_with_its_event(log_file: Path) -> None:
    """Events logged from one unchanged context share it while queued; what
    an enricher sets in the context of one event never reaches another."""
    gate = Gate(name="gate", timeout=10.0)
    container = configure_logging(
        enrichers=[
            gate,
            SetStage(name="set_stage", dependencies="gate"),
            CopyVar(STAGE, "stage_seen", name="read_stage", dependencies="set_stage"),
        ],
        output=str(log_file),
        delivery="background",
    )
    log = get_logger()
    for n in range(20):
        log.info("staged", n=n)
    gate.opened.set()
    container.flush(10.0)

    lines = read_lines(log_file)
    assert list(range(20)) == [line["n"] for line in lines]
    assert [line["n"] for line in lines] == [line["stage_seen"] for line in lines]
    assert -1 == STAGE.get()  # and nothing reached the application's own context


def test_events_logged_where_no_variable_is_set_share_one_context(log_file: Path) -> None:
    """What the sharing is for: a backlog logged where no context variable
    is set holds one context object; once one is set, each event keeps its
    own (an unchanged context cannot be told from an equal one)."""
    gate = Gate(name="gate", timeout=10.0)
    container = configure_logging(enrichers=[gate], output=str(log_file), delivery="background")
    log = get_logger()
    container._pipeline.hold()  # queued, not started: the records stay in line

    def burst() -> None:
        for n in range(3):
            log.info("burst", n=n)
        REQUEST_ID.set("changed")
        for n in range(3, 5):
            log.info("burst", n=n)

    contextvars.Context().run(burst)
    contexts = [item.context for item in container._pipeline._normal]
    container._pipeline.release()
    gate.opened.set()
    container.flush(10.0)

    assert 5 == len(contexts)
    assert contexts[0] is contexts[1] is contexts[2]
    assert 0 == len(contexts[0])
    assert contexts[3] is not contexts[4]
    assert "changed" == contexts[3][REQUEST_ID] == contexts[4][REQUEST_ID]
    assert 5 == len(read_lines(log_file))


RID: contextvars.ContextVar[str | None] = contextvars.ContextVar("rid", default=None)


class BatchedKey(AsyncEnricher):
    """A batching enricher: one call for the keys of the events in flight."""

    def cache_key(self, event_dict: Any) -> Any:
        return event_dict["n"]

    async def enrich_many(self, keys: Any) -> Any:
        await asyncio.sleep(0.01)
        return {key: key for key in keys}

    def apply(self, event_dict: Any, value: Any) -> Any:
        event_dict["batched"] = value
        return event_dict


class SlowOrStubborn(AsyncEnricher):
    """Overloaded (one slot, calls that outlast the wait for it), or
    abandoned (a call that swallows its cancellation)."""

    def __init__(self, kind: str) -> None:
        super().__init__(
            name="first", timeout=0.05, max_concurrency=1 if kind == "overloaded" else 64
        )
        self.kind = kind

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        if self.kind == "overloaded":
            await asyncio.sleep(0.04)
        else:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                await asyncio.sleep(0.3)
        event_dict["first"] = True
        return event_dict


class NextRidSync(SyncEnricher):
    def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict["next_sync_rid"] = RID.get()
        return event_dict


@pytest.mark.parametrize("first", ["batched", "overloaded", "abandoned"])
def test_every_level_of_an_event_runs_in_its_own_context(log_file: Path, first: str) -> None:
    """The outcome that completes a level may arrive in another event's
    context (a batch's call runs in its first event's; an enricher's shared
    timer in the one that armed it); the next level still starts in the
    event's own. (Found by an outside test: 18 events of 20 ran their second
    level with the first event's request id.)"""
    enricher = (
        BatchedKey(name="first", timeout=2.0) if first == "batched" else SlowOrStubborn(first)
    )
    container = configure_logging(
        enrichers=[
            enricher,
            CopyVar(RID, "next_rid", name="next", dependencies="first", timeout=2.0),
            NextRidSync(name="next_sync", dependencies="first"),
        ],
        output=str(log_file),
        delivery="background",
    )
    log = get_logger()
    for n in range(12):
        RID.set(f"r{n}")
        log.info("leveled", n=n)
    RID.set(None)
    container.shutdown(10.0)

    lines = read_lines(log_file)
    assert list(range(12)) == sorted(line["n"] for line in lines)
    assert all(line["next_rid"] == line["next_sync_rid"] == f"r{line['n']}" for line in lines)


AUDITED_SCRIPT = """
import sys
from enrichlog import AsyncEnricher, configure_logging, get_logger
import asyncio

class Tag(AsyncEnricher):
    async def enrich_async(self, logger, method_name, event_dict):
        await asyncio.sleep(0)
        event_dict["tag"] = "seen"
        return event_dict

container = configure_logging(
    enrichers=[Tag(name="tag")], output=sys.argv[1], delivery="background"
)
log = get_logger()
inside = False

def hook(event, args):
    # A policy hook: refuses introspection, and logs what it audits (once).
    global inside
    if event.startswith("gc."):
        raise PermissionError(f"audit policy refuses {event}")
    if event == "enrichlog.test" and not inside:
        inside = True
        try:
            log.info("audited", what=event)
        finally:
            inside = False

sys.addaudithook(hook)
for n in range(50):
    log.info("under audit", n=n)
    sys.audit("enrichlog.test")
container.shutdown(10)
print("ok")
"""


def test_a_log_call_raises_no_audit_event_a_hook_could_refuse(tmp_path: Path) -> None:
    """Plain structlog raises no audit event per log call, and neither may
    enrichlog: an application's audit hook that refuses introspection (or
    logs what it audits) must not cost an event. (A build that compared
    contexts with ``gc.get_referents`` lost every one.)"""
    script, out = tmp_path / "audited.py", tmp_path / "audited.log"
    script.write_text(AUDITED_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert 0 == done.returncode, done.stderr
    lines = read_lines(out)
    assert 100 == len(lines)
    assert 50 == sum(1 for line in lines if line["event"] == "under audit")
    assert all(line.get("tag") == "seen" for line in lines)


class Payload:
    """A per-request object, held by a context variable."""


PAYLOAD: contextvars.ContextVar[Payload | None] = contextvars.ContextVar("payload", default=None)


def test_a_finished_request_s_context_is_not_kept_alive(log_file: Path) -> None:
    """An enricher's timers (deadlines, waits for a slot) are shared by its
    calls; they must not keep the context of the event that armed them, and
    with it a request's objects, alive; nor may a level's timeout, once the
    level is complete. (An outside test found a request's object alive after
    shutdown, held by a deadline timer; each event's level timer held the
    event until it fired, level_timeout later.)"""
    container = configure_logging(
        enrichers=[RequestIdCopier(name="rid", timeout=8.0, max_concurrency=4)],
        output=str(log_file),
        delivery="background",
        level_timeout=2.0,  # under the enricher's timeout: a timer per level
    )
    log = get_logger()

    def request() -> weakref.ref[Payload]:
        payload = Payload()
        PAYLOAD.set(payload)
        for n in range(3):
            log.info("request", n=n)
        return weakref.ref(payload)

    payload = contextvars.Context().run(request)
    container.flush(10.0)
    log.info("another request")  # a later call re-arms the shared timers
    container.flush(10.0)
    gc.collect()
    alive_while_running = payload() is not None
    container.shutdown(10.0)
    gc.collect()

    assert not alive_while_running
    assert payload() is None
    assert 4 == len(read_lines(log_file))
