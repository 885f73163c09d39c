"""An ASGI application, run in-process: what the log call costs the request's event loop.

The ASGI callable is awaited directly by many concurrent client tasks with a synthetic
``scope``, ``receive`` and ``send`` (no server, no network). Each request logs one event
that two 1 ms lookups enrich. Variants, alternated round by round:

* ``enrichlog``: the lookups are two async enrichers. enrichlog is configured with
  ``runtime="loop"`` inside the running loop and started with ``await
  container.astartup()``, so enrichment runs on the application's own loop.
* ``structlog``: plain structlog; the handler awaits the same two 1 ms lookups itself,
  one after the other, before logging.
* ``enrichlog_batched`` (for the record, no target): enrichlog as above with the two
  lookups written with ``enrich_many`` (one 1 ms await per backend call, whatever the
  number of keys), as the built-in PostgreSQL, Redis and HTTP lookups are.
* ``task_per_lookup`` (for the record): the floor of enriching after the log call.
* ``driven_per_lookup`` (for the record): lower still, each lookup's coroutine driven
  by hand, without a task.

Figures: the duration of the log call inside the handler (p50/p99/max) and the process's
CPU time per request (``time.process_time()``, every thread, until every line is
written).
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from common import (
    DEVNULL,
    Backend,
    BatchedLookup,
    Check,
    Context,
    SleepLookup,
    distribution,
    paired_ratio,
    plain_structlog,
    sleep_lookup,
    us,
)

from enrichlog import configure_logging, get_logger

LOOKUP_SECONDS = 0.001
NAMES = ("user", "tenant")
CONCURRENCY = 100
LOG_CALL_P99_TARGET = 2.0
CPU_TARGET = 1.15

Lookup = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def make_app(log: Any, log_call_ns: list[int], lookups: list[Lookup]) -> App:
    """A checkout endpoint: read the request, await ``lookups`` inline (if any), log one
    event (timed), answer 200."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        user_id = scope["user_id"]
        fields: dict[str, Any] = {}
        for lookup in lookups:
            fields.update(await lookup(fields))
        started = time.perf_counter_ns()
        log.info("checkout", path=scope["path"], user_id=user_id, **fields)
        log_call_ns.append(time.perf_counter_ns() - started)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def _request(app: App, user_id: int) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/checkout",
        "query_string": b"",
        "headers": [(b"host", b"shop.test")],
        "user_id": user_id,
    }

    async def receive() -> dict[str, Any]:
        # A server's receive() waits for the socket: the request yields to the
        # loop once, as it would in a real server. (Without it, each client ran
        # all its requests in one step, and their events piled up unenriched.)
        await asyncio.sleep(0)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(scope, receive, send)


async def _serve(app: App, requests: int) -> None:
    """``requests`` requests from ``CONCURRENCY`` concurrent clients."""

    async def client(first: int) -> None:
        for user_id in range(first, requests, CONCURRENCY):
            await _request(app, user_id)

    await asyncio.gather(*(client(first) for first in range(CONCURRENCY)))


async def _start_enrichlog(
    backend: Backend, requests: int, batched: bool = False
) -> tuple[Any, str]:
    """enrichlog on the running loop, started without blocking it; and its runtime."""
    lookup = BatchedLookup if batched else SleepLookup
    enrichers = [lookup(name, LOOKUP_SECONDS, backend) for name in NAMES]
    container = configure_logging(
        enrichers=enrichers,
        runtime="loop",
        output=DEVNULL,
        queue_size=requests + 1_000,
        # As many calls in flight per enricher as the application has requests
        # in flight: the default (64) would queue calls behind a limit that
        # protects a backend, which the inline baseline does not have.
        enricher_max_concurrency=CONCURRENCY,
    )
    await container.astartup()
    return container, "loop"


async def _run_enrichlog(requests: int, batched: bool = False) -> dict[str, Any]:
    backend = Backend()
    container, runtime = await _start_enrichlog(backend, requests, batched)
    log_call_ns: list[int] = []
    # A concrete bound logger, as for plain structlog (common.plain_structlog).
    app = make_app(get_logger().bind(), log_call_ns, [])
    await _request(app, -1)  # warm-up
    await container.aflush()
    log_call_ns.clear()
    backend.reset()
    cpu, wall = time.process_time(), time.perf_counter()
    await _serve(app, requests)
    await container.aflush()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    metrics = container.metrics()
    await container.ashutdown()
    structlog.reset_defaults()
    return {
        **_figures(requests, cpu, wall, log_call_ns),
        "runtime": runtime,
        "written": metrics["written"] - 1,
        "dropped": metrics["dropped"],
        "backend_calls_per_request": backend.calls / requests,
    }


async def _run_enrichlog_batched(requests: int) -> dict[str, Any]:
    return await _run_enrichlog(requests, batched=True)


async def _run_structlog(requests: int) -> dict[str, Any]:
    backend = Backend()
    log_call_ns: list[int] = []
    lookups = [sleep_lookup(name, LOOKUP_SECONDS, backend) for name in NAMES]
    app = make_app(plain_structlog(), log_call_ns, lookups)
    await _request(app, -1)  # warm-up
    log_call_ns.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    await _serve(app, requests)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return _figures(requests, cpu, wall, log_call_ns)


class _TaskPerLookup:
    """The least that enriching after the log call costs: ``info()`` starts a task per
    lookup and returns; when the last one ends, the event is logged with plain structlog.
    No deadline, breaker, cache, concurrency limit, ordering or isolation."""

    def __init__(self, lookups: list[Lookup]) -> None:
        self._log = plain_structlog()
        self._lookups = lookups
        self._loop = asyncio.get_running_loop()
        self.pending: set[asyncio.Task[None]] = set()

    def info(self, event: str, **fields: Any) -> None:
        added: dict[str, Any] = {}
        left = len(self._lookups)

        async def lookup_into(lookup: Lookup) -> None:
            added.update(await lookup(fields))

        def done(task: asyncio.Task[None]) -> None:
            nonlocal left
            self.pending.discard(task)
            left -= 1
            if not left:
                self._log.info(event, **fields, **added)

        for lookup in self._lookups:
            task = self._loop.create_task(lookup_into(lookup))
            self.pending.add(task)
            task.add_done_callback(done)


async def _run_task_per_lookup(requests: int) -> dict[str, Any]:
    backend = Backend()
    log_call_ns: list[int] = []
    log = _TaskPerLookup([sleep_lookup(name, LOOKUP_SECONDS, backend) for name in NAMES])
    app = make_app(log, log_call_ns, [])
    await _request(app, -1)  # warm-up
    log_call_ns.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    await _serve(app, requests)
    await asyncio.gather(*log.pending)  # no task starts after the last request
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return _figures(requests, cpu, wall, log_call_ns)


class _DrivenPerLookup:
    """Less still: ``info()`` drives each lookup's coroutine itself, with no task (no
    task object, no registration, no first step scheduled: the coroutine runs at once
    up to its first await, and is resumed by a callback on the future it awaits). When
    the last lookup ends, the event is logged with plain structlog. No guards, no
    cancellation: the floor of enriching after the log call, with any scheduler."""

    def __init__(self, lookups: list[Lookup]) -> None:
        self._log = plain_structlog()
        self._lookups = lookups
        self._loop = asyncio.get_running_loop()
        self.pending = 0
        self._idle: asyncio.Future[None] | None = None

    def info(self, event: str, **fields: Any) -> None:
        added: dict[str, Any] = {}
        left = len(self._lookups)
        self.pending += 1

        def finish(value: dict[str, Any]) -> None:
            nonlocal left
            added.update(value)
            left -= 1
            if not left:
                self._log.info(event, **fields, **added)
                self.pending -= 1
                if not self.pending and self._idle is not None:
                    self._idle.set_result(None)

        for lookup in self._lookups:
            coroutine = lookup(fields)

            def step(awaited: Any = None, coroutine: Any = coroutine) -> None:
                try:
                    if awaited is not None:
                        awaited.result()
                    future = coroutine.send(None)
                except StopIteration as stop:
                    finish(stop.value)
                    return
                future._asyncio_future_blocking = False
                future.add_done_callback(step)

            step()

    async def idle(self) -> None:
        """Return once every event is logged."""
        if self.pending:
            self._idle = self._loop.create_future()
            await self._idle


async def _run_driven_per_lookup(requests: int) -> dict[str, Any]:
    backend = Backend()
    log_call_ns: list[int] = []
    log = _DrivenPerLookup([sleep_lookup(name, LOOKUP_SECONDS, backend) for name in NAMES])
    app = make_app(log, log_call_ns, [])
    await _request(app, -1)  # warm-up
    log_call_ns.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    await _serve(app, requests)
    await log.idle()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return _figures(requests, cpu, wall, log_call_ns)


def _figures(requests: int, cpu: float, wall: float, log_call_ns: list[int]) -> dict:
    return {
        "requests": requests,
        "cpu_us_per_request": cpu / requests * 1e6,
        "requests_per_s": requests / wall,
        **distribution(log_call_ns),
    }


def bench_asgi(ctx: Context) -> None:
    """Each request logs one event through two 1 ms async enrichers: enrichlog's log-call
    p99 on the loop (≤ 2x plain structlog's) and CPU per request (≤ 1.15x an app that
    awaits the same lookups inline)."""
    requests = ctx.pick(2_000, 10_000)
    variants = {
        "structlog": _run_structlog,
        "enrichlog": _run_enrichlog,
        "enrichlog_batched": _run_enrichlog_batched,
        "task_per_lookup": _run_task_per_lookup,
        "driven_per_lookup": _run_driven_per_lookup,
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for round_number in range(ctx.pick(1, 3)):
        names = list(variants) if round_number % 2 == 0 else list(reversed(variants))
        for name in names:
            gc.collect()  # as in throughput.py: no garbage of earlier runs
            runs[name].append(asyncio.run(variants[name](requests)))
        ctx.advance()
    summary = {
        name: {
            "rounds": variant_runs,
            **{
                key: statistics.median(run[key] for run in variant_runs)
                for key, value in variant_runs[0].items()
                if isinstance(value, int | float)
            },
        }
        for name, variant_runs in runs.items()
    }
    runtime = runs["enrichlog"][0]["runtime"]
    summary["enrichlog"]["runtime"] = summary["enrichlog_batched"]["runtime"] = runtime
    ctx.results.raw["asgi"] = summary
    _checks(ctx, summary, runtime)


def _checks(ctx: Context, summary: dict[str, Any], runtime: str) -> None:
    plain, ours, floor = summary["structlog"], summary["enrichlog"], summary["task_per_lookup"]
    label = f"enrichlog runtime: {runtime}"
    p99_ratio = paired_ratio(ours, plain, "p99_us")
    ctx.results.add(
        Check(
            "asgi",
            "log-call p99 in the request handler",
            f"structlog {us(plain['p99_us'])}",
            us(ours["p99_us"]),
            p99_ratio,
            p99_ratio,
            "<=",
            LOG_CALL_P99_TARGET,
            note=f"{label}; p50 {us(ours['p50_us'])} vs {us(plain['p50_us'])}",
        )
    )
    cpu_ratio = paired_ratio(ours, plain, "cpu_us_per_request")
    ctx.results.add(
        Check(
            "asgi",
            "CPU per request, vs lookups awaited inline",
            f"structlog {us(plain['cpu_us_per_request'])}",
            us(ours["cpu_us_per_request"]),
            cpu_ratio,
            cpu_ratio,
            "<=",
            CPU_TARGET,
            note=f"{label}; written {ours['written']:,.0f}, dropped {ours['dropped']:,.0f}; "
            f"{ours['requests_per_s']:,.0f} vs {plain['requests_per_s']:,.0f} requests/s",
        )
    )
    batched = summary["enrichlog_batched"]
    batched_ratio = paired_ratio(batched, plain, "cpu_us_per_request")
    ctx.results.add(
        Check(
            "asgi",
            "CPU per request, the lookups written with enrich_many, vs lookups awaited inline",
            f"structlog {us(plain['cpu_us_per_request'])}",
            us(batched["cpu_us_per_request"]),
            batched_ratio,
            batched_ratio,
            "info",
            0.0,
            note=f"{label}; {batched['backend_calls_per_request']:.3f} backend calls per "
            f"request (inline: {len(NAMES)}); written {batched['written']:,.0f}, "
            f"dropped {batched['dropped']:,.0f}",
        )
    )
    floor_ratio = paired_ratio(floor, plain, "cpu_us_per_request")
    ctx.results.add(
        Check(
            "asgi",
            "CPU per request, a bare task per lookup (no guards), vs lookups awaited inline",
            f"structlog {us(plain['cpu_us_per_request'])}",
            us(floor["cpu_us_per_request"]),
            floor_ratio,
            floor_ratio,
            "info",
            0.0,
            note="the least that enriching after the log call costs: info() starts a task per "
            f"lookup and returns; enrichlog is {cpu_ratio / floor_ratio:.2f}x this",
        )
    )
    driven = summary["driven_per_lookup"]
    driven_ratio = paired_ratio(driven, plain, "cpu_us_per_request")
    ctx.results.add(
        Check(
            "asgi",
            "CPU per request, each lookup's coroutine driven without a task, vs lookups "
            "awaited inline",
            f"structlog {us(plain['cpu_us_per_request'])}",
            us(driven["cpu_us_per_request"]),
            driven_ratio,
            driven_ratio,
            "info",
            0.0,
            note="lower still: no task at all, the coroutine run at once and resumed by a "
            "callback on the future it awaits; no guards, no cancellation",
        )
    )
