"""Background delivery against the reference pipeline (``reference.py``), same run.

A producer thread logs as fast as it can; the queue is large enough never to be full.
Per variant and round we record the end-to-end throughput (first call to last line
written), the distribution of the caller's ``log.info()`` duration and the backend calls
per event. Variants alternate round by round; figures are medians over rounds.

* ``background``: three independent uncached 5 ms ``asyncio.sleep`` enrichers, in
  enrichlog and in the reference.
* ``batching``: the same lookups written with ``enrich_many`` (one 5 ms await per backend
  call whatever the number of keys) in enrichlog, against the reference with per-event
  lookups: what batching the events in flight should buy.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import structlog
from common import (
    DEVNULL,
    Backend,
    BatchedLookup,
    Check,
    Context,
    GcTimer,
    SleepLookup,
    distribution,
    median_of,
    paired_ratio,
    paired_ratios,
    plain_structlog,
    rate,
    sleep_lookup,
    us,
)
from reference import MAX_IN_FLIGHT, ReferencePipeline

from enrichlog import configure_logging, get_logger

LOOKUP_SECONDS = 0.005
NAMES = ("tenant", "user", "plan")
BACKGROUND_THROUGHPUT_TARGET = 0.75
BACKGROUND_P99_TARGET = 1.5
BATCHING_THROUGHPUT_TARGET = 2.0
BATCHING_CALLS_TARGET = 0.1
#: Events in flight in enrichlog's batching runs.
BATCHING_IN_FLIGHT = 2048


def _produce(log: Any, events: int) -> list[int]:
    """Log ``events`` events as fast as possible; the duration of each call (ns)."""
    info = log.info
    clock = time.perf_counter_ns
    durations = [0] * events
    for i in range(events):
        started = clock()
        info("checkout", user_id=i, amount=12.5)
        durations[i] = clock() - started
    return durations


def _figures(
    events: int,
    elapsed: float,
    cpu: float,
    durations: list[int],
    backend: Backend,
    collector: GcTimer,
) -> dict:
    return {
        "throughput": events / elapsed,
        "cpu_us_per_event": cpu / events * 1e6,
        "gc_share": collector.seconds / elapsed,
        "gc_us_per_event": collector.seconds / events * 1e6,
        "gc_young_collections_per_1000": collector.collections[0] / events * 1000,
        "gc_full_collections": collector.collections[2],
        **distribution(durations),
        "calls_per_event": backend.calls / events,
        "keys_per_call": backend.keys / backend.calls if backend.calls else 0.0,
    }


def run_reference(events: int) -> dict[str, Any]:
    """The reference pipeline with three per-event 5 ms lookups in one level."""
    backend = Backend()
    pipeline = ReferencePipeline([[sleep_lookup(n, LOOKUP_SECONDS, backend) for n in NAMES]])
    pipeline.start()
    log = pipeline.get_logger()
    log.info("warm-up", user_id=-1)
    pipeline.flush()
    backend.reset()
    with GcTimer() as collector:
        started, cpu = time.perf_counter(), time.process_time()
        durations = _produce(log, events)
        pipeline.flush()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    pipeline.stop()
    return {
        **_figures(events, elapsed, cpu, durations, backend, collector),
        "written": pipeline.written - 1,
    }


def run_enrichlog(
    events: int, make_enrichers: Callable[[Backend], list[Any]], **settings: Any
) -> dict:
    """enrichlog's background delivery with the given enrichers (and settings)."""
    backend = Backend()
    container = configure_logging(
        enrichers=make_enrichers(backend),
        output=DEVNULL,
        delivery="background",
        queue_size=events + 1_000,
        # As many calls in flight as the reference has events in flight.
        enricher_max_concurrency=MAX_IN_FLIGHT,
        **settings,
    )
    log = get_logger()
    log.info("warm-up", user_id=-1)
    container.flush()
    backend.reset()
    with GcTimer() as collector:
        started, cpu = time.perf_counter(), time.process_time()
        durations = _produce(log, events)
        container.flush()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    metrics = container.metrics()
    container.shutdown()
    structlog.reset_defaults()
    return {
        **_figures(events, elapsed, cpu, durations, backend, collector),
        "written": metrics["written"] - 1,
        "dropped": metrics["dropped"],
    }


def run_plain_structlog(events: int) -> dict[str, Any]:
    """Plain structlog, no enrichers: the caller's cost with nothing to hand off."""
    return distribution(_produce(plain_structlog(), events))


def _alternate(
    ctx: Context, variants: dict[str, Callable[[], dict]], rounds: tuple[int, int] = (1, 3)
) -> dict[str, list[dict]]:
    """Run every variant once per round, in an order that flips every round."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    for round_number in range(ctx.pick(*rounds)):
        for name in names if round_number % 2 == 0 else reversed(names):
            # Each run starts without the garbage of the runs (and sections)
            # before it, which the collector would otherwise walk on its time.
            gc.collect()
            runs[name].append(variants[name]())
        ctx.advance()
    return runs


#: Rounds of the sections with a target (quick, full): each gives a ratio of
#: the two variants run back to back, and the check reads their median.
TARGET_ROUNDS = (1, 5)


def _spread(ours: dict, baseline: dict, key: str) -> str:
    ratios = paired_ratios(ours, baseline, key)
    return f"median of {len(ratios)} paired rounds, {min(ratios):.2f}x-{max(ratios):.2f}x"


def _summary(runs: list[dict]) -> dict[str, Any]:
    keys = [key for key, value in runs[0].items() if isinstance(value, int | float)]
    return {"rounds": runs, **{key: median_of(runs, key) for key in keys}}


def bench_background(ctx: Context) -> None:
    """Three independent uncached 5 ms enrichers, background delivery: throughput
    (≥ 0.75x the reference's) and caller ``log.info()`` p99 (≤ 1.5x the reference's)."""
    events = ctx.pick(3_000, 20_000)

    def enrichers(backend: Backend) -> list[Any]:
        return [SleepLookup(n, LOOKUP_SECONDS, backend) for n in NAMES]

    runs = _alternate(
        ctx,
        {
            "reference": lambda: run_reference(events),
            "enrichlog": lambda: run_enrichlog(events, enrichers),
            "structlog": lambda: run_plain_structlog(events),
        },
        TARGET_ROUNDS,
    )
    summary = {name: _summary(variant_runs) for name, variant_runs in runs.items()}
    summary["events"] = events
    ctx.results.raw["background"] = summary
    ref, ours = summary["reference"], summary["enrichlog"]
    _throughput_check(ctx, "background", ref, ours, BACKGROUND_THROUGHPUT_TARGET)
    p99_ratio = paired_ratio(ours, ref, "p99_us")
    ctx.results.add(
        Check(
            "background",
            "caller log.info() p99",
            f"reference {us(ref['p99_us'])}",
            us(ours["p99_us"]),
            p99_ratio,
            p99_ratio,
            "<=",
            BACKGROUND_P99_TARGET,
            note=f"{_spread(ours, ref, 'p99_us')}; "
            f"p50 {us(ours['p50_us'])} vs {us(ref['p50_us'])}; "
            f"plain structlog p50/p99 {us(summary['structlog']['p50_us'])}"
            f" / {us(summary['structlog']['p99_us'])}",
        )
    )
    _gc_check(ctx, "background", ref, ours)
    _calls_check(ctx, "background", ref, ours, None)


def bench_batching(ctx: Context) -> None:
    """The same three 5 ms lookups written with ``enrich_many``: throughput ≥ 2x the
    reference (which makes a call per event), backend calls per event < 0.1."""
    events = ctx.pick(3_000, 20_000)

    def enrichers(backend: Backend) -> list[Any]:
        return [BatchedLookup(n, LOOKUP_SECONDS, backend) for n in NAMES]

    runs = _alternate(
        ctx,
        {
            "reference": lambda: run_reference(events),
            # Batches are made of the events in flight: a batching deployment
            # lets more in (docs/enrichers.md). The reference stays at 512, its
            # best (more in flight makes it slower: more tasks alive).
            "enrichlog": lambda: run_enrichlog(events, enrichers, max_in_flight=BATCHING_IN_FLIGHT),
        },
        TARGET_ROUNDS,
    )
    summary = {name: _summary(variant_runs) for name, variant_runs in runs.items()}
    summary["events"] = events
    ctx.results.raw["batching"] = summary
    ref, ours = summary["reference"], summary["enrichlog"]
    _throughput_check(ctx, "batching", ref, ours, BATCHING_THROUGHPUT_TARGET)
    _gc_check(ctx, "batching", ref, ours)
    _calls_check(ctx, "batching", ref, ours, BATCHING_CALLS_TARGET)


def _throughput_check(ctx: Context, section: str, ref: dict, ours: dict, target: float) -> None:
    ratio = paired_ratio(ours, ref, "throughput")
    lost = ours["dropped"] or ours["written"] != ctx.results.raw[section]["events"]
    ctx.results.add(
        Check(
            section,
            "end-to-end throughput, vs the reference pipeline",
            f"reference {rate(ref['throughput'])}",
            rate(ours["throughput"]),
            ratio,
            ratio,
            ">=",
            target,
            note=f"{_spread(ours, ref, 'throughput')}; "
            f"CPU per event {us(ours['cpu_us_per_event'])} vs "
            f"{us(ref['cpu_us_per_event'])}; written {ours['written']:,.0f}, "
            f"dropped {ours['dropped']:,.0f}" + (" (EVENTS LOST)" if lost else ""),
        )
    )


def _gc_check(ctx: Context, section: str, ref: dict, ours: dict) -> None:
    ratio = ours["gc_us_per_event"] / ref["gc_us_per_event"]
    ctx.results.add(
        Check(
            section,
            "cyclic GC time per event (share of wall time)",
            f"reference {us(ref['gc_us_per_event'])} ({ref['gc_share']:.0%})",
            f"{us(ours['gc_us_per_event'])} ({ours['gc_share']:.0%})",
            ratio,
            ratio,
            "info",
            0.0,
            note=f"young collections per 1,000 events {ours['gc_young_collections_per_1000']:.0f}"
            f" vs {ref['gc_young_collections_per_1000']:.0f}",
        )
    )


def _calls_check(ctx: Context, section: str, ref: dict, ours: dict, target: float | None) -> None:
    calls = ours["calls_per_event"]
    ctx.results.add(
        Check(
            section,
            "backend calls per event",
            f"reference {ref['calls_per_event']:.2f}",
            f"{calls:.3f} ({ours['keys_per_call']:.1f} keys per call)",
            None,
            calls,
            "info" if target is None else "<",
            target or 0.0,
            unit="",
        )
    )


def bench_uvloop(ctx: Context) -> None:
    """The ``background`` and ``batching`` lookups with ``event_loop="uvloop"`` against
    asyncio's loop, same run: what the ``uvloop`` extra buys (no target)."""
    try:
        import uvloop  # noqa: F401 - only to know whether the extra is there
    except ImportError:
        for _ in range(ctx.pick(2, 6)):
            ctx.advance()
        print("uvloop: not installed (pip install -e '.[uvloop]'); section skipped")
        return
    events = ctx.pick(3_000, 20_000)

    def sleeping(backend: Backend) -> list[Any]:
        return [SleepLookup(n, LOOKUP_SECONDS, backend) for n in NAMES]

    def batched(backend: Backend) -> list[Any]:
        return [BatchedLookup(n, LOOKUP_SECONDS, backend) for n in NAMES]

    for what, enrichers in (("per-event lookups", sleeping), ("batched lookups", batched)):
        runs = _alternate(
            ctx,
            {
                "asyncio": lambda e=enrichers: run_enrichlog(events, e),
                "uvloop": lambda e=enrichers: run_enrichlog(events, e, event_loop="uvloop"),
            },
        )
        summary = {name: _summary(variant_runs) for name, variant_runs in runs.items()}
        ctx.results.raw.setdefault("uvloop", {})[what] = summary
        base, ours = summary["asyncio"], summary["uvloop"]
        ratio = ours["throughput"] / base["throughput"]
        ctx.results.add(
            Check(
                "uvloop",
                f"background throughput, {what}: uvloop vs asyncio",
                f"asyncio {rate(base['throughput'])}",
                rate(ours["throughput"]),
                ratio,
                ratio,
                "info",
                0.0,
                note=f"CPU per event {us(ours['cpu_us_per_event'])} vs "
                f"{us(base['cpu_us_per_event'])}; caller p99 {us(ours['p99_us'])} vs "
                f"{us(base['p99_us'])}",
            )
        )
