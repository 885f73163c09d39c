"""enrichlog benchmarks: every target measured against a baseline of the same run.

    .venv/bin/python benchmarks/run.py --report        # everything; writes docs/benchmarks/
    .venv/bin/python benchmarks/run.py hits background # chosen sections
    .venv/bin/python benchmarks/run.py --quick         # fewer events: a smoke run
    .venv/bin/python benchmarks/run.py --json out.json # raw figures as JSON
    .venv/bin/python benchmarks/run.py --from-json out.json --report  # re-draw, no run

Sections (targets in brackets; ratios are enrichlog over the baseline):
  overhead      no enrichers, per event vs plain structlog, wall time [<= 1.05x]
  hits          3 async enrichers, all cache hits, per event vs plain structlog [<= 1.5x]
  instructions  the same two, as callgrind instructions per event (needs valgrind)
  parallel      3 independent 5 ms enrichers: event latency vs the slowest [<= 1.1x]
  scaling       1..6 independent 5 ms enrichers: latency vs the sum of theirs (chart)
  background    3 uncached 5 ms enrichers, background delivery, vs the reference pipeline:
                throughput [>= 0.75x], caller log.info() p99 [<= 1.5x]
  batching      the same lookups with enrich_many: throughput vs the reference [>= 2x],
                backend calls per event [< 0.1]
  uvloop        background and batching with event_loop="uvloop" vs asyncio's loop (no target)
  asgi          in-process ASGI app, two 1 ms enrichers per request, vs plain structlog
                with the lookups awaited inline: log-call p99 [<= 2x], CPU/request [<= 1.15x]
  memory        peak RSS over 1,000,000 events, slow output: bounded by queue_size

Baselines: plain structlog with enrichlog's pre-processors (contextvars, level, ISO
timestamp), orjson ``JSONRenderer``, ``BytesLoggerFactory`` to /dev/null, cached loggers;
and ``reference.py``, a minimal hand-written asyncio pipeline. The machine is shared:
variants alternate round by round and figures are medians, so compare ratios, not
absolute microseconds. A FAIL does not fail the process unless ``--strict`` is given.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import report
from asgi import bench_asgi
from common import Check, Context, Results
from cost import bench_hits, bench_overhead
from instructions import bench_instructions
from latency import bench_parallel, bench_scaling
from memory import bench_memory
from progress import make_bar
from throughput import bench_background, bench_batching, bench_uvloop

REPORT_DIR = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


@dataclass(frozen=True)
class Section:
    """A section; how many progress steps it takes and roughly how many seconds, each
    as (quick, full), so that the bar moves with time rather than with steps."""

    name: str
    run: Callable[[Context], None]
    steps: tuple[int, int]
    seconds: tuple[int, int]


SECTIONS = {
    section.name: section
    for section in (
        Section("overhead", bench_overhead, (10, 10), (2, 8)),
        Section("hits", bench_hits, (10, 10), (2, 8)),
        Section("instructions", bench_instructions, (6, 6), (120, 300)),
        Section("parallel", bench_parallel, (1, 1), (2, 6)),
        Section("scaling", bench_scaling, (6, 6), (3, 15)),
        Section("background", bench_background, (1, 5), (3, 65)),
        Section("batching", bench_batching, (1, 5), (5, 100)),
        Section("asgi", bench_asgi, (1, 3), (3, 20)),
        Section("uvloop", bench_uvloop, (2, 6), (4, 40)),
        Section("memory", bench_memory, (2, 2), (20, 300)),
    )
}


def check_line(check: Check) -> str:
    """One result, as printed when its section ends."""
    line = (
        f"{check.verdict:<4}  {check.section:<10} {check.what}: {check.enrichlog} "
        f"vs {check.baseline}"
    )
    if check.ratio is not None:
        line += f" = {check.ratio_text}"
    if check.op != "info":
        line += f" (target {check.target})"
    if check.note:
        line += f"; {check.note}"
    return line


def summary_table(results: Results) -> str:
    """The checks as an aligned text table, and the totals."""
    rows = [("section", "what", "measured", "target", "result")]
    rows += [(c.section, c.what, c.measured_text, c.target, c.verdict) for c in results.checks]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    met = sum(c.passed is True for c in results.checks)
    lines.append(f"\n{met} targets met, {len(results.failed())} missed.")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sections", nargs="*", metavar="section", help="default: all")
    parser.add_argument("--quick", action="store_true", help="fewer events: a smoke run")
    parser.add_argument(
        "--report",
        action="store_true",
        help="write results.md, results.json and PNG charts to docs/benchmarks/",
    )
    parser.add_argument("--report-dir", type=Path, default=REPORT_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, metavar="PATH", help="dump the raw results here")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="PATH",
        help="measure nothing: print and report the results of an earlier --json dump",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def measure(args: argparse.Namespace) -> Results:
    """Run the chosen sections, printing each result as its section ends."""
    chosen = [SECTIONS[name] for name in args.sections or SECTIONS]
    which = 0 if args.quick else 1
    results = Results()
    with make_bar(sum(s.seconds[which] for s in chosen), not args.no_progress) as bar:
        ctx = Context(args.quick, results, bar)
        for section in chosen:
            bar.section(section.name, section.seconds[which], section.steps[which])
            before, started = len(results.checks), time.monotonic()
            section.run(ctx)
            seconds = time.monotonic() - started
            results.raw.setdefault("seconds", {})[section.name] = seconds
            bar.finish_section()
            for check in results.checks[before:]:
                bar.print(check_line(check))
            bar.print(f"      {section.name} took {seconds:.0f} s")
    return results


def reload(path: Path) -> tuple[Results, str, dict]:
    """The results, command and machine of an earlier ``--json`` dump."""
    payload = json.loads(path.read_text())
    checks = [Check.from_dict(check) for check in payload["checks"]]
    return Results(checks, payload["raw"]), payload["command"], payload["machine"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.from_json:
        results, command, info = reload(args.from_json)
    else:
        command = shlex.join([".venv/bin/python", "benchmarks/run.py", *argv])
        info = report.machine()
        results = measure(args)
    print()
    print(summary_table(results))
    payload = {
        "command": command,
        "machine": info,
        "checks": [check.as_dict() for check in results.checks],
        "raw": results.raw,
    }
    dumps = [args.json] if args.json else []
    if args.report:
        for path in report.write(results, args.report_dir, command, info):
            print(f"wrote {path}")
        if not args.from_json:
            dumps.append(args.report_dir / "results.json")
    for path in dumps:
        path.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {path}")
    return 1 if args.strict and results.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
