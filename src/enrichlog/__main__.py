"""Command line: ``python -m enrichlog {demo,plan,check}``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m enrichlog",
        description="structlog-compatible logging with asynchronous enrichers",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="log a few enriched events with simulated lookups")
    demo.add_argument("--events", type=int, default=5, help="events to log (default 5)")
    plan = commands.add_parser("plan", help="print the execution plan the environment configures")
    plan.add_argument("--format", choices=("text", "json", "mermaid"), default="text")
    commands.add_parser("check", help="validate the settings; exit 1 listing the errors")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .cli.demo import run_demo  # noqa: PLC0415 - each command imports what it needs

        run_demo(args.events)
        return 0
    from .cli.check import check, show_plan  # noqa: PLC0415

    if args.command == "plan":
        return show_plan(args.format)
    return check()


if __name__ == "__main__":
    sys.exit(main())
