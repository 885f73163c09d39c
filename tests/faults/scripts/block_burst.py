"""Held before: the ``block`` overflow policy under a large burst loses
nothing.

argv: output path. env: THREADS (8), EVENTS (12500 per thread),
QUEUE_SIZE (1000). The callers wait for room (overflow_block_timeout is
long), so no event may be dropped. Summary: logged, lines, per-thread
order kept, report, seconds.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from _harness import Tag, arg, env_int, read_json_lines, summary

from enrichlog import configure_logging, get_logger

output = arg(1)
threads_n = env_int("THREADS", 8)
events = env_int("EVENTS", 12_500)

container = configure_logging(
    enrichers=[Tag()],
    output=output,
    delivery="background",
    overflow="block",
    queue_size=env_int("QUEUE_SIZE", 1000),
    overflow_block_timeout=120.0,
    shutdown_timeout=120.0,
)
log = get_logger()


def produce(number: int) -> None:
    for i in range(events):
        log.info("e", t=number, i=i)


started = time.monotonic()
workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads_n)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
report = container.shutdown()
seconds = time.monotonic() - started

seen: dict[int, list[int]] = defaultdict(list)
lines = read_json_lines(output)
for line in lines:
    seen[line["t"]].append(line["i"])
summary(
    logged=threads_n * events,
    lines=len(lines),
    in_order=all(seen[n] == list(range(events)) for n in range(threads_n)),
    tagged=sum(1 for line in lines if line.get("tag") == "seen"),
    report=dict(report),
    queue_high_water=container.metrics()["queue_high_water"],
    seconds=seconds,
)
