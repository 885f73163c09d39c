"""Command line: ``python -m enrichlog {demo,plan,check,stats}`` and ``--version``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

__all__ = ["main"]

# The status of a command whose reader went away (``plan | head -1``): what a
# shell reports for a process ended by SIGPIPE, 128 + 13.
_EXIT_BROKEN_PIPE = 141


def _version() -> str:
    try:
        return version("enrichlog")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    ``plan`` and ``check`` return 1 when the configuration has problems,
    listed on stderr, and ``stats`` when its source cannot be read; any
    command returns 141 when its output is a pipe whose reader stopped
    reading.
    """
    parser = argparse.ArgumentParser(
        prog="python -m enrichlog",
        description="structlog-compatible logging with asynchronous enrichers",
    )
    parser.add_argument("--version", action="version", version=f"enrichlog {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="log a few enriched events with simulated lookups")
    demo.add_argument("--events", type=int, default=5, help="events to log (default 5)")
    plan = commands.add_parser("plan", help="print the execution plan the environment configures")
    plan.add_argument("--format", choices=("text", "json", "mermaid"), default="text")
    commands.add_parser("check", help="validate the settings; exit 1 listing the errors")
    stats = commands.add_parser(
        "stats", help="a live table of a running process's metrics (endpoint or JSON snapshot)"
    )
    from .cli.stats import add_arguments  # noqa: PLC0415 - imports nothing optional

    add_arguments(stats)
    args = parser.parse_args(argv)

    try:
        status = _run(args)
        sys.stdout.flush()  # here, so that a closed pipe is reported here
    except BrokenPipeError:
        # The reader is gone: nothing more can be shown, and Python would
        # complain again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return _EXIT_BROKEN_PIPE
    return status


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from .cli.demo import run_demo  # noqa: PLC0415 - each command imports what it needs

        run_demo(args.events)
        return 0
    if args.command == "stats":
        from .cli.stats import run_stats  # noqa: PLC0415

        return run_stats(args.url, args.file, interval=args.interval, once=args.once)
    from .cli.check import check, show_plan  # noqa: PLC0415

    if args.command == "plan":
        return show_plan(args.format)
    return check()


if __name__ == "__main__":
    sys.exit(main())
