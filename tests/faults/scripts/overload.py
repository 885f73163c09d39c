"""Case 8: overload. Threads log as fast as they can through a slow async
enricher with a drop overflow policy.

argv: output path, overflow (drop_old, drop_new, block).
env: THREADS (8), EVENTS (10000 per thread), DELAY (0.005 s per call),
QUEUE_SIZE (10000), TIMEOUT (1.0).

The same threads then hand the same number of items to a plain
lock-and-deque queue drained by one consumer thread, as a reference for the
worst duration of one call. Summary: logged, lines, report, the reasons
seen in the lines, breaker state, failures by reason, worst and p99 call
durations for both.
"""

from __future__ import annotations

import collections
import threading
import time
from collections import Counter
from typing import Any

from _harness import Tag, arg, env_float, env_int, plain, read_json_lines, summary

from enrichlog import configure_logging, get_logger

output, overflow = arg(1), arg(2, "drop_old")
threads_n = env_int("THREADS", 8)
events = env_int("EVENTS", 10_000)
delay = env_float("DELAY", 0.005)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_threads(call: Any) -> list[float]:
    """Run ``call(thread, i)`` events times on each thread; every duration."""
    durations: list[list[float]] = [[] for _ in range(threads_n)]
    start = threading.Barrier(threads_n)

    def produce(number: int) -> None:
        own = durations[number]
        clock = time.perf_counter
        start.wait()
        for i in range(events):
            before = clock()
            call(number, i)
            own.append(clock() - before)

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [d for own in durations for d in own]


# -- the reference: a lock and a deque, drained by one consumer -----------------
lock = threading.Lock()
items: collections.deque[Any] = collections.deque()
done = threading.Event()


def consume() -> None:
    while not done.is_set() or items:
        with lock:
            batch = len(items)
            for _ in range(batch):
                items.popleft()
        if not batch:
            time.sleep(0.0005)


def hand_off(number: int, i: int) -> None:
    with lock:
        items.append({"event": "e", "t": number, "i": i})


consumer = threading.Thread(target=consume)
consumer.start()
reference = run_threads(hand_off)
done.set()
consumer.join()

# -- enrichlog ------------------------------------------------------------------
container = configure_logging(
    enrichers=[Tag(delay=delay, timeout=env_float("TIMEOUT", 1.0))],
    output=output,
    delivery="background",
    overflow=overflow,
    queue_size=env_int("QUEUE_SIZE", 10_000),
    shutdown_timeout=60,
)
log = get_logger()
started = time.monotonic()
durations = run_threads(lambda number, i: log.info("e", t=number, i=i))
logging_seconds = time.monotonic() - started
metrics = plain(container.metrics())
report = container.shutdown()
total_seconds = time.monotonic() - started
after = plain(container.metrics())

lines = read_json_lines(output)
reasons = Counter(
    reason for line in lines for reason in (line.get("enrichment_errors") or {}).values()
)
tag = after["enrichers"]["tag"]
summary(
    logged=threads_n * events,
    threads=threads_n,
    events_per_thread=events,
    lines=len(lines),
    distinct=len({(line["t"], line["i"]) for line in lines}),
    tagged=sum(1 for line in lines if line.get("tag") == "seen"),
    report=dict(report),
    dropped_by_kind=after["dropped_by_kind"],
    reasons=dict(reasons),
    breaker=tag["breaker"],
    failures_by_reason=tag["failures_by_reason"],
    worst_call=max(durations),
    p99_call=percentile(durations, 0.99),
    worst_reference=max(reference),
    p99_reference=percentile(reference, 0.99),
    logging_seconds=logging_seconds,
    total_seconds=total_seconds,
    queue_high_water=metrics["queue_high_water"],
)
