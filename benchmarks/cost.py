"""Per-event cost on the logging thread, against plain structlog.

Both sections time ``log.info("checkout", user_id=..., amount=...)`` with inline
delivery, in CPU time of the logging thread (``time.thread_time_ns``: time spent
descheduled while a neighbour runs is not counted). Plain structlog and enrichlog live
side by side in the process and are timed in short alternating blocks (A B B A A B ...),
so that what noise remains hits both alike; the ratio is the median of the per-pair
ratios. ``instructions.py`` counts the same calls with callgrind, which is repeatable
where time is not.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from typing import Any

import structlog
from common import (
    DEVNULL,
    CachedLookup,
    Check,
    Context,
    plain_structlog,
    time_block,
    us,
)

from enrichlog import configure_logging, get_logger

OVERHEAD_TARGET = 1.05
HITS_TARGET = 1.5


def alternating_blocks(
    loggers: dict[str, Any], events: int, blocks: int, advance: Callable[[], None]
) -> dict[str, list[float]]:
    """Per-event microseconds of each logger, one figure per block of ``events`` calls;
    the order flips every block so that neither always runs first."""
    infos = {name: log.info for name, log in loggers.items()}
    for info in infos.values():
        time_block(info, 100)  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in infos}
    names = list(infos)
    steps = max(1, blocks // 10)
    for block in range(blocks):
        gc.collect()
        for name in names if block % 2 == 0 else reversed(names):
            samples[name].append(time_block(infos[name], events))
        if (block + 1) % steps == 0:
            advance()
    return samples


def _measure(
    ctx: Context, section: str, what: str, setup: Callable[[], Any], target: float
) -> None:
    """Time plain structlog against enrichlog as ``setup`` configures it; record it."""
    container, log = setup()
    try:
        events, blocks = ctx.pick(1_000, 2_000), ctx.pick(10, 40)
        samples = alternating_blocks(
            {"structlog": plain_structlog(), "enrichlog": log}, events, blocks, ctx.advance
        )
    finally:
        container.shutdown()
        structlog.reset_defaults()
    ratios = [
        ours / base for ours, base in zip(samples["enrichlog"], samples["structlog"], strict=True)
    ]
    structlog_us = statistics.median(samples["structlog"])
    enrichlog_us = statistics.median(samples["enrichlog"])
    ratio = statistics.median(ratios)
    ctx.results.raw[section] = {
        "events_per_block": events,
        "blocks_us": samples,
        "structlog_us": structlog_us,
        "enrichlog_us": enrichlog_us,
        "ratio": ratio,
    }
    spread = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratio, ratio, ratio]
    ctx.results.add(
        Check(
            section,
            what,
            f"structlog {us(structlog_us)}",
            us(enrichlog_us),
            ratio,
            ratio,
            "<=",
            target,
            note=f"median of {len(ratios)} paired blocks; quartiles "
            f"{spread[0]:.2f}x-{spread[2]:.2f}x",
        )
    )


def bench_overhead(ctx: Context) -> None:
    """No enrichers: the cost of one ``log.info`` against plain structlog (≤ 1.05x)."""

    def bare() -> tuple[Any, Any]:
        return configure_logging(output=DEVNULL, delivery="inline"), get_logger()

    _measure(ctx, "overhead", "per event, no enrichers (CPU time)", bare, OVERHEAD_TARGET)


def bench_hits(ctx: Context) -> None:
    """Three async enrichers whose lookups all hit their cache: the event completes on the
    logging thread with no hop (≤ 1.5x plain structlog)."""

    def cached() -> tuple[Any, Any]:
        enrichers = [CachedLookup(name=n) for n in ("tenant", "user", "plan")]
        container = configure_logging(enrichers=enrichers, output=DEVNULL, delivery="inline")
        log = get_logger()
        for user_id in range(100):  # fill the caches
            log.info("warm", user_id=user_id)
        container.flush()
        return container, log

    _measure(ctx, "hits", "per event, 3 cache-hit enrichers (CPU time)", cached, HITS_TARGET)
