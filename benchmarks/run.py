"""enrichlog benchmarks, each beside plain structlog in the same run.

    .venv/bin/python benchmarks/run.py            # everything
    .venv/bin/python benchmarks/run.py hits       # one section
    .venv/bin/python benchmarks/run.py --quick    # fewer events (CI smoke)

Sections:
  overhead    no enrichers: per-event cost against plain structlog (target <= 1.10x)
  hits        three async enrichers, all cache hits, sync path (target <= 2x)
  parallel    three independent 5 ms enrichers: event latency against the slowest (<= 1.2x)
  background  caller p50/p99 of log.info() with three 5 ms enrichers (p99 < 50 us) and
              end-to-end throughput, uncached (>= 5,000 events/s)
  memory      peak RSS logging 1,000,000 events against a slow output: bounded by queue_size

Baseline: structlog with the same pre-processors (contextvars, level, ISO timestamp), orjson
``JSONRenderer``, ``BytesLoggerFactory`` to /dev/null, cached loggers. Figures are medians of
repeated rounds; the machine is shared, so compare ratios, not absolute microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from enrichlog import AsyncEnricher, configure_logging, get_logger

DEVNULL = "/dev/null"


# -- helpers -----------------------------------------------------------------------------------


def configure_plain_structlog() -> Any:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(20),
        logger_factory=structlog.BytesLoggerFactory(open(DEVNULL, "wb")),  # noqa: SIM115
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger()


def per_event_us(log: Any, events: int, rounds: int) -> float:
    """Median over rounds of the mean cost of one ``log.info`` call."""
    info = log.info
    info("warm-up", user_id=0)
    results = []
    for _ in range(rounds):
        gc.collect()
        started = time.perf_counter_ns()
        for i in range(events):
            info("checkout", user_id=i % 100, amount=12.5)
        results.append((time.perf_counter_ns() - started) / events / 1000)
    return statistics.median(results)


def interleaved(
    variants: dict[str, Callable[[], Any]], events: int, rounds: int
) -> dict[str, float]:
    """Measure each variant in alternating rounds so that machine noise hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, setup in variants.items():
            log = setup()
            samples[name].append(per_event_us(log, events, 1))
            teardown()
    return {name: statistics.median(values) for name, values in samples.items()}


_containers: list[Any] = []


def teardown() -> None:
    while _containers:
        _containers.pop().shutdown()
    structlog.reset_defaults()


class CachedLookup(AsyncEnricher):
    """Pretends to query a backend; its results are cached by user id."""

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0.001)
        event_dict[f"{self.name}_value"] = f"{self.name}-{event_dict['user_id']}"
        return event_dict

    def cache_key(self, event_dict: Any) -> Any:
        return event_dict.get("user_id")


class FiveMs(AsyncEnricher):
    """An uncached lookup that takes 5 ms."""

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0.005)
        event_dict[self.name] = 1
        return event_dict


def report(name: str, figures: dict[str, Any]) -> None:
    print(json.dumps({"section": name, **figures}), flush=True)


# -- sections ----------------------------------------------------------------------------------


def bench_overhead(events: int, rounds: int) -> None:
    def enrichlog_bare() -> Any:
        _containers.append(configure_logging(output=DEVNULL, delivery="inline"))
        return get_logger()

    result = interleaved(
        {"structlog": configure_plain_structlog, "enrichlog": enrichlog_bare}, events, rounds
    )
    report(
        "overhead",
        {
            "structlog_us": round(result["structlog"], 3),
            "enrichlog_no_enrichers_us": round(result["enrichlog"], 3),
            "ratio": round(result["enrichlog"] / result["structlog"], 3),
            "target_ratio": 1.10,
        },
    )


def bench_hits(events: int, rounds: int) -> None:
    def enrichlog_hits() -> Any:
        enrichers = [CachedLookup(name=n) for n in ("tenant", "user", "plan")]
        container = configure_logging(enrichers=enrichers, output=DEVNULL, delivery="inline")
        _containers.append(container)
        log = get_logger()
        for user_id in range(100):  # fill the caches
            log.info("warm", user_id=user_id)
        container.flush()
        return log

    result = interleaved(
        {"structlog": configure_plain_structlog, "enrichlog": enrichlog_hits}, events, rounds
    )
    report(
        "hits",
        {
            "structlog_us": round(result["structlog"], 3),
            "enrichlog_3_cached_enrichers_us": round(result["enrichlog"], 3),
            "ratio": round(result["enrichlog"] / result["structlog"], 3),
            "target_ratio": 2.0,
        },
    )


def bench_parallel(events: int) -> None:
    container = configure_logging(
        enrichers=[FiveMs(name=n) for n in ("a", "b", "c")], output=DEVNULL, delivery="inline"
    )
    log = get_logger()
    log.info("warm-up")
    latencies = []
    for i in range(events):
        started = time.perf_counter()
        log.info("e", i=i)
        latencies.append(time.perf_counter() - started)
    container.shutdown()
    structlog.reset_defaults()
    median_ms = statistics.median(latencies) * 1000
    report(
        "parallel",
        {
            "events": events,
            "median_event_latency_ms": round(median_ms, 3),
            "slowest_enricher_ms": 5.0,
            "sum_of_enrichers_ms": 15.0,
            "ratio_to_slowest": round(median_ms / 5.0, 3),
            "target_ratio": 1.2,
        },
    )


def bench_background(events: int) -> None:
    plain = configure_plain_structlog()
    baseline = []
    for i in range(events):
        started = time.perf_counter_ns()
        plain.info("e", i=i)
        baseline.append(time.perf_counter_ns() - started)
    structlog.reset_defaults()

    container = configure_logging(
        enrichers=[FiveMs(name=n) for n in ("a", "b", "c")],
        output=DEVNULL,
        delivery="background",
        queue_size=max(events, 10_000),
    )
    log = get_logger()
    log.info("warm-up")
    container.flush()
    latencies = []
    started_all = time.perf_counter()
    for i in range(events):
        started = time.perf_counter_ns()
        log.info("e", i=i)
        latencies.append(time.perf_counter_ns() - started)
    container.flush()
    elapsed = time.perf_counter() - started_all
    metrics = container.metrics()
    container.shutdown()
    structlog.reset_defaults()
    latencies.sort()
    baseline.sort()
    report(
        "background",
        {
            "events": events,
            "structlog_p50_us": round(baseline[len(baseline) // 2] / 1000, 2),
            "structlog_p99_us": round(baseline[int(len(baseline) * 0.99)] / 1000, 2),
            "caller_p50_us": round(latencies[len(latencies) // 2] / 1000, 2),
            "caller_p99_us": round(latencies[int(len(latencies) * 0.99)] / 1000, 2),
            "target_p99_us": 50,
            "throughput_events_per_s": round(events / elapsed),
            "target_throughput": 5000,
            "written": metrics["written"],
            "dropped": metrics["dropped"],
        },
    )


def bench_memory(events: int) -> None:
    """Run in a child process so its peak RSS is its own."""
    figures = {}
    for queue_size in (1_000, 10_000):
        out = subprocess.run(
            [sys.executable, __file__, "_memory_child", str(events), str(queue_size)],
            check=True,
            capture_output=True,
            text=True,
        )
        figures[f"queue_{queue_size}"] = json.loads(out.stdout.strip().splitlines()[-1])
    report("memory", {"events": events, **figures})


def _peak_rss_kb() -> int:
    """This process's peak RSS (VmHWM). Not ``getrusage``'s ``ru_maxrss``:
    Linux carries that over ``exec`` from the parent, so a child would report
    the benchmark parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _memory_child(events: int, queue_size: int) -> None:
    read_fd, write_fd = os.pipe()

    def slow_reader() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            while chunk := pipe.read(4096):
                del chunk
                time.sleep(0.0002)  # a slow disk or collector

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    container = configure_logging(
        enrichers=[FiveMs(name="a")],
        output=f"/dev/fd/{write_fd}",
        delivery="background",
        queue_size=queue_size,
        overflow="block",
        overflow_block_timeout=60.0,
    )
    log = get_logger()
    baseline_kb = _peak_rss_kb()
    for i in range(events):
        log.info("event", i=i, payload="x" * 64)
    report_ = container.shutdown(timeout=600)
    peak_kb = _peak_rss_kb()
    print(
        json.dumps(
            {
                "rss_before_mb": round(baseline_kb / 1024, 1),
                "peak_rss_mb": round(peak_kb / 1024, 1),
                "growth_mb": round((peak_kb - baseline_kb) / 1024, 1),
                "queue_high_water": container.metrics()["queue_high_water"],
                "written": report_["written"],
                "dropped": report_["dropped"],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sections", nargs="*")
    parser.add_argument("--quick", action="store_true", help="fewer events, for smoke runs")
    args = parser.parse_args()
    if args.sections[:1] == ["_memory_child"]:
        _memory_child(int(args.sections[1]), int(args.sections[2]))
        return
    quick = args.quick
    sections = args.sections or ["overhead", "hits", "parallel", "background", "memory"]
    for section in sections:
        if section == "overhead":
            bench_overhead(5_000 if quick else 50_000, 3 if quick else 7)
        elif section == "hits":
            bench_hits(5_000 if quick else 50_000, 3 if quick else 7)
        elif section == "parallel":
            bench_parallel(50 if quick else 300)
        elif section == "background":
            bench_background(5_000 if quick else 50_000)
        elif section == "memory":
            bench_memory(50_000 if quick else 1_000_000)
        else:
            parser.error(f"unknown section {section!r}")


if __name__ == "__main__":
    main()
