"""Enrichment latency of one event: what running a level's enrichers concurrently buys.

Inline delivery, one event at a time: ``log.info`` returns once the event's line is
written, so its duration is the event's enrichment latency (hand-off to the runtime loop,
the level's lookups, merge, render, write). Every lookup records how long its own await
took, so the event's latency is compared with its enrichers' real latencies, not only
with their nominal 5 ms (``asyncio.sleep`` overshoots by a fraction of a millisecond on a
busy machine).
"""

from __future__ import annotations

import statistics
import time

import structlog
from common import DEVNULL, Check, Context, SleepLookup, ms

from enrichlog import configure_logging, get_logger

LOOKUP_SECONDS = 0.005
PARALLEL_TARGET = 1.1
NAMES = ("a", "b", "c", "d", "e", "f")


def measure_inline(enrichers: int, events: int) -> dict[str, float]:
    """Median event latency, slowest and summed enricher latency (ms) for ``enrichers``
    independent 5 ms lookups; and the median per-event ratio latency / slowest."""
    durations: list[float] = []
    container = configure_logging(
        enrichers=[
            SleepLookup(name, LOOKUP_SECONDS, durations=durations) for name in NAMES[:enrichers]
        ],
        output=DEVNULL,
        delivery="inline",
    )
    log = get_logger()
    log.info("warm-up")
    latencies, slowest, summed, ratios = [], [], [], []
    for i in range(events):
        durations.clear()
        started = time.perf_counter()
        log.info("checkout", user_id=i, amount=12.5)
        latency = time.perf_counter() - started
        latencies.append(latency)
        slowest.append(max(durations))
        summed.append(sum(durations))
        ratios.append(latency / max(durations))
    container.shutdown()
    structlog.reset_defaults()
    return {
        "enrichers": enrichers,
        "latency_ms": statistics.median(latencies) * 1000,
        "slowest_ms": statistics.median(slowest) * 1000,
        "sum_ms": statistics.median(summed) * 1000,
        "nominal_slowest_ms": LOOKUP_SECONDS * 1000,
        "nominal_sum_ms": LOOKUP_SECONDS * 1000 * enrichers,
        "ratio_to_slowest": statistics.median(ratios),
    }


def bench_parallel(ctx: Context) -> None:
    """Three independent 5 ms enrichers: one event's latency against its slowest enricher
    (≤ 1.1x), not against their sum."""
    figures = measure_inline(3, ctx.pick(50, 400))
    ctx.advance()
    ctx.results.raw["parallel"] = figures
    ctx.results.add(
        Check(
            "parallel",
            "event latency, 3 independent 5 ms enrichers (inline), vs the slowest",
            f"slowest enricher {ms(figures['slowest_ms'])} (sum {ms(figures['sum_ms'])})",
            ms(figures["latency_ms"]),
            figures["ratio_to_slowest"],
            figures["ratio_to_slowest"],
            "<=",
            PARALLEL_TARGET,
            note=f"{figures['latency_ms'] / 5.0:.2f}x the nominal 5 ms",
        )
    )


def bench_scaling(ctx: Context) -> None:
    """1 to 6 independent 5 ms enrichers: event latency against the sum of the enrichers'
    latencies (what one parallel level buys). For the chart; no target."""
    rows: list[dict[str, float]] = []
    for count in range(1, len(NAMES) + 1):
        rows.append(measure_inline(count, ctx.pick(30, 200)))
        ctx.advance()
    ctx.results.raw["scaling"] = rows
    first, last = rows[0], rows[-1]
    ctx.results.add(
        Check(
            "scaling",
            f"1 to {last['enrichers']} independent 5 ms enrichers: latency vs their sum",
            f"sum {ms(first['sum_ms'])} to {ms(last['sum_ms'])}",
            f"{ms(first['latency_ms'])} to {ms(last['latency_ms'])}",
            last["latency_ms"] / last["sum_ms"],
            last["latency_ms"] / last["sum_ms"],
            "info",
            0.0,
            note=f"with {last['enrichers']}: {last['ratio_to_slowest']:.2f}x the slowest",
        )
    )
