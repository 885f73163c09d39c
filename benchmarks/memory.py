"""Peak memory logging a million events against a slow output: bounded by ``queue_size``.

Each queue size runs in a child process (``python benchmarks/memory.py _child EVENTS
QUEUE_SIZE``) so that its RSS is its own. The child logs through one uncached 5 ms
enricher into a pipe whose reader sleeps between reads (a slow disk or collector), with
``overflow="block"``: once the queue is full the producer is throttled, and memory should
stop growing. The child samples its RSS a hundred times along the way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from common import Check, Context, SleepLookup

from enrichlog import configure_logging, get_logger

QUEUE_SIZES = (1_000, 10_000)
SAMPLES = 100
#: Growth allowed over the second half of the run once the queue is full.
LATE_GROWTH_LIMIT_MB = 5.0


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` figure in kB: ``VmRSS`` (now) or ``VmHWM`` (peak).

    Not ``getrusage``'s ``ru_maxrss``: Linux carries that over ``exec`` from the parent,
    so a child would report the benchmark parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


def _slow_reader(read_fd: int) -> None:
    with os.fdopen(read_fd, "rb") as pipe:
        while chunk := pipe.read(4096):
            del chunk
            time.sleep(0.0002)


def child(events: int, queue_size: int) -> dict[str, Any]:
    """Log ``events`` events; return the RSS series and the drain report."""
    read_fd, write_fd = os.pipe()
    threading.Thread(target=_slow_reader, args=(read_fd,), daemon=True).start()
    container = configure_logging(
        enrichers=[SleepLookup("a", 0.005)],
        output=f"/dev/fd/{write_fd}",
        delivery="background",
        queue_size=queue_size,
        overflow="block",
        overflow_block_timeout=60.0,
    )
    log = get_logger()
    before_kb = _status_kb("VmHWM")
    every = max(1, events // SAMPLES)
    series = [(0, _status_kb("VmRSS") / 1024)]
    started = time.perf_counter()
    for i in range(events):
        log.info("event", i=i, payload="x" * 64)
        if (i + 1) % every == 0:
            series.append((i + 1, _status_kb("VmRSS") / 1024))
    report = container.shutdown(timeout=600)
    elapsed = time.perf_counter() - started
    peak_kb = _status_kb("VmHWM")
    return {
        "events": events,
        "queue_size": queue_size,
        "rss_before_mb": before_kb / 1024,
        "peak_rss_mb": peak_kb / 1024,
        "growth_mb": (peak_kb - before_kb) / 1024,
        "late_growth_mb": _late_growth(series),
        "series": series,
        "queue_high_water": container.metrics()["queue_high_water"],
        "written": report["written"],
        "dropped": report["dropped"],
        "seconds": elapsed,
    }


def _late_growth(series: list[tuple[int, float]]) -> float:
    """How much RSS grew in the second half of the run over the first half's peak."""
    half = len(series) // 2
    return max(rss for _, rss in series[half:]) - max(rss for _, rss in series[:half])


def bench_memory(ctx: Context) -> None:
    """Peak RSS logging a million events against a slow output, for two queue sizes:
    bounded by the queue (the high water stays at ``queue_size``, RSS stops growing)."""
    events = ctx.pick(50_000, 1_000_000)
    # The children run side by side: their RSS is their own, and it halves the wait.
    children = {
        queue_size: subprocess.Popen(
            [sys.executable, __file__, "_child", str(events), str(queue_size)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for queue_size in QUEUE_SIZES
    }
    figures = {}
    for queue_size, process in children.items():
        out, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"memory child (queue_size={queue_size}) failed")
        figures[f"queue_{queue_size}"] = json.loads(out.strip().splitlines()[-1])
        ctx.advance()
    ctx.results.raw["memory"] = figures
    for figure in figures.values():
        _check(ctx, figure)


def _check(ctx: Context, figure: dict[str, Any]) -> None:
    bounded = figure["queue_high_water"] <= figure["queue_size"]
    lost = figure["dropped"] or figure["written"] != figure["events"]
    ctx.results.add(
        Check(
            "memory",
            f"RSS growth over {figure['events']:,} events, slow output, "
            f"queue_size={figure['queue_size']:,}: second half vs first",
            f"RSS before {figure['rss_before_mb']:.1f} MB",
            f"peak +{figure['growth_mb']:.1f} MB, late +{figure['late_growth_mb']:.1f} MB",
            None,
            figure["late_growth_mb"] if bounded else float("inf"),
            "<=",
            LATE_GROWTH_LIMIT_MB,
            unit=" MB",
            note=f"high water {figure['queue_high_water']:,}; written {figure['written']:,}, "
            f"dropped {figure['dropped']:,}" + (" (EVENTS LOST)" if lost else ""),
        )
    )


if __name__ == "__main__" and sys.argv[1:2] == ["_child"]:
    print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]))))
