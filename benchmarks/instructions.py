"""Instructions per event under ``valgrind --tool=callgrind``: repeatable per-event costs.

Wall time on a shared machine moves by 10-30% from run to run; instruction counts do not.
Each variant runs in a child process under callgrind twice, logging a few and many
events; the difference of the two totals, divided by the difference of the event counts,
is the cost of one ``log.info`` call with start-up, imports and warm-up taken out.

    .venv/bin/python benchmarks/instructions.py            # the table
    .venv/bin/python benchmarks/instructions.py --events 2000

Variants: plain structlog (the baseline of ``cost.py``), enrichlog without enrichers,
enrichlog with three async enrichers whose lookups all hit their cache.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import DEVNULL, CachedLookup, Check, Context, plain_structlog
from cost import HITS_TARGET, OVERHEAD_TARGET

VARIANTS = ("structlog", "enrichlog", "enrichlog_hits")
LABELS = {
    "structlog": "plain structlog",
    "enrichlog": "enrichlog, no enrichers",
    "enrichlog_hits": "enrichlog, 3 cache-hit enrichers",
}
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def available() -> bool:
    """Whether valgrind is installed."""
    return shutil.which("valgrind") is not None


def _setup(variant: str) -> Any:
    """A warmed-up logger for ``variant``."""
    if variant == "structlog":
        return plain_structlog()
    from enrichlog import configure_logging, get_logger

    if variant == "enrichlog":
        configure_logging(output=DEVNULL, delivery="inline")
        return get_logger()
    container = configure_logging(
        enrichers=[CachedLookup(name=n) for n in ("tenant", "user", "plan")],
        output=DEVNULL,
        delivery="inline",
    )
    log = get_logger()
    for user_id in range(100):
        log.info("warm", user_id=user_id)
    container.flush()
    return log


def child(variant: str, events: int) -> None:
    """Log ``events`` events with ``variant`` (run under callgrind by the parent)."""
    info = _setup(variant).info
    info("warm-up", user_id=0)
    for i in range(events):
        info("checkout", user_id=i % 100, amount=12.5)


def _instructions(variant: str, events: int) -> int:
    """Total instructions of a child process that logs ``events`` events."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={os.path.join(tmp, 'callgrind.out')}",
                sys.executable,
                __file__,
                "_child",
                variant,
                str(events),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=True,
        )
    match = _COLLECTED.search(out.stderr)
    if match is None:
        raise RuntimeError(f"callgrind reported no total:\n{out.stderr[-2000:]}")
    return int(match.group(1))


def per_event(events: int, advance: Any = None) -> dict[str, float]:
    """Instructions per ``log.info`` call of each variant: (many - few) / (events - few)."""
    few = max(1, events // 10)
    jobs = [(variant, count) for variant in VARIANTS for count in (few, events)]
    totals: dict[tuple[str, int], int] = {}
    # Two at a time: instruction counts do not depend on what else runs.
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {job: pool.submit(_instructions, *job) for job in jobs}
        for job, future in futures.items():
            totals[job] = future.result()
            if advance is not None:
                advance()
    return {
        variant: (totals[variant, events] - totals[variant, few]) / (events - few)
        for variant in VARIANTS
    }


def bench_instructions(ctx: Context) -> None:
    """Instructions per event under callgrind: the ``overhead`` and ``hits`` targets
    (≤ 1.05x, ≤ 1.5x plain structlog) on a measure that machine noise does not move."""
    if not available():
        ctx.results.raw["instructions"] = None
        for _ in range(len(VARIANTS) * 2):
            ctx.advance()
        print("instructions: valgrind is not installed; section skipped", file=sys.stderr)
        return
    events = ctx.pick(1_000, 5_000)
    counts = per_event(events, ctx.advance)
    ctx.results.raw["instructions"] = {"events": events, **counts}
    base = counts["structlog"]
    for variant, section, target in (
        ("enrichlog", "overhead", OVERHEAD_TARGET),
        ("enrichlog_hits", "hits", HITS_TARGET),
    ):
        ratio = counts[variant] / base
        ctx.results.add(
            Check(
                section,
                f"per event, {LABELS[variant].removeprefix('enrichlog, ')} (instructions)",
                f"structlog {base:,.0f}",
                f"{counts[variant]:,.0f}",
                ratio,
                ratio,
                "<=",
                target,
                note="callgrind instructions per event",
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000, help="events of the long run")
    args = parser.parse_args()
    if not available():
        sys.exit("valgrind is not installed")
    counts = per_event(args.events)
    base = counts["structlog"]
    for variant in VARIANTS:
        print(f"{LABELS[variant]:<36} {counts[variant]:>10,.0f} {counts[variant] / base:6.2f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_child"]:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
