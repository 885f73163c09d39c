"""Command line: ``python -m enrichlog {demo,plan,check,stats,worker,dlq}`` and ``--version``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .cli import positive_count, seconds

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
    parser = _Parser(
        prog="python -m enrichlog",
        description="structlog-compatible logging with asynchronous enrichers",
    )
    parser.add_argument("--version", action="version", version=f"enrichlog {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="log a few enriched events with simulated lookups")
    demo.add_argument("--events", type=positive_count, default=5, help="events to log (default 5)")
    plan = commands.add_parser("plan", help="print the execution plan the environment configures")
    plan.add_argument("--format", choices=("text", "json", "mermaid"), default="text")
    commands.add_parser("check", help="validate the settings; exit 1 listing the errors")
    stats = commands.add_parser(
        "stats", help="a live table of a running process's metrics (endpoint or JSON snapshot)"
    )
    from .cli.stats import add_arguments  # noqa: PLC0415 - imports nothing optional

    add_arguments(stats)
    _add_scale_out_commands(commands)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        if done.code not in (0, None):
            raise  # a usage error: argparse said it on stderr
        return _shown(parser.prog)  # --help, --version: was it?
    except BrokenPipeError:
        _silence_stdout()
        return _EXIT_BROKEN_PIPE
    except OSError as exc:  # --help or --version could not be written
        _silence_stdout()
        _complain(f"{parser.prog}: {exc}")
        return 1
    if sys.stdout is None and args.command in _SHOWING:
        # Started with its stdout closed (``>&-``): what it is for cannot be shown.
        _complain(f"python -m enrichlog {args.command}: cannot write to stdout: it is closed")
        return 1

    try:
        status = _run(args)
        if sys.stdout is not None:
            sys.stdout.flush()  # here, so that a closed pipe is reported here
    except BrokenPipeError:
        # The reader is gone: nothing more can be shown, and Python would
        # complain again when it flushes stdout at exit.
        _silence_stdout()
        return _EXIT_BROKEN_PIPE
    except OSError as exc:
        # Its output failed (a full disk, /dev/full, an I/O error), or another
        # system call no command expected: one line, as any command-line tool.
        _silence_stdout()
        _complain(f"python -m enrichlog {args.command}: {exc}")
        return 1
    return status


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose ``--help`` and ``--version`` let a failed
    write be known (argparse drops it: unbuffered, ``> /dev/full`` exited 0)."""

    def _print_message(self, message: str, file: Any = None) -> None:
        file = file or sys.stderr
        if message and file is not None:
            file.write(message)


def _shown(prog: str) -> int:
    """The status of ``--help`` or ``--version``, once argparse printed it:
    0 if it reached stdout."""
    if sys.stdout is None:  # argparse wrote it to stderr instead
        _complain(f"{prog}: cannot write to stdout: it is closed")
        return 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return _EXIT_BROKEN_PIPE
    except OSError as exc:
        _silence_stdout()
        _complain(f"{prog}: {exc}")
        return 1
    return 0


#: The commands whose output on stdout is what they are run for.
_SHOWING = frozenset({"demo", "plan", "check", "stats", "dlq"})


def _complain(message: str) -> None:
    """``message`` on stderr, if there is one to write it to."""
    if sys.stderr is not None:
        with contextlib.suppress(OSError):
            print(message, file=sys.stderr)


def _silence_stdout() -> None:
    """Point stdout at the null device: what it still buffers, and anything
    written after, is dropped instead of failing again when Python flushes it
    at exit."""
    if sys.stdout is None:
        return
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _add_scale_out_commands(commands: Any) -> None:
    """``worker`` and ``dlq`` (scale-out, docs/scale-out.md)."""
    worker = commands.add_parser(
        "worker", help="enrich and write the events published to ENRICHLOG_TRANSPORT"
    )
    worker.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (enricher classes with a URI scheme); repeatable",
    )
    worker.add_argument(
        "--enrichers",
        metavar="MODULE:ATTR",
        help="enrichers in code: a list, or a callable returning one",
    )
    worker.add_argument(
        "--stats-interval",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="seconds between metrics lines on stderr; 0 = only at exit (default 30)",
    )
    dlq = commands.add_parser("dlq", help="list, show or replay dead-lettered events")
    actions = dlq.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the dead-lettered events, oldest first")
    listing.add_argument("--limit", type=int, default=None)
    listing.add_argument("--format", choices=("text", "json"), default="text")
    show = actions.add_parser("show", help="dead letters in full, as JSON")
    show.add_argument("sequences", type=int, nargs="+", metavar="SEQ")
    replay = actions.add_parser("replay", help="publish dead-lettered events again")
    replay.add_argument("sequences", type=int, nargs="*", metavar="SEQ")
    replay.add_argument("--all", dest="replay_all", action="store_true", help="every one")
    replay.add_argument("--keep", action="store_true", help="keep them in the dead-letter stream")
    replay.add_argument("--limit", type=int, default=None, help="with --all: at most this many")


def _run_scale_out(args: argparse.Namespace) -> int:
    if args.command == "worker":
        from .cli.worker import run_worker  # noqa: PLC0415

        return run_worker(args.imports, args.enrichers, args.stats_interval)
    from .cli.dlq import run_dlq  # noqa: PLC0415

    return run_dlq(
        args.action,
        getattr(args, "sequences", ()),
        replay_all=getattr(args, "replay_all", False),
        keep=getattr(args, "keep", False),
        limit=getattr(args, "limit", None),
        fmt=getattr(args, "format", "text"),
    )


def _run(args: argparse.Namespace) -> int:
    if args.command in ("worker", "dlq"):
        return _run_scale_out(args)
    if args.command == "demo":
        from .cli.demo import demo  # noqa: PLC0415 - each command imports what it needs

        return demo(args.events)
    if args.command == "stats":
        from .cli.stats import run_stats  # noqa: PLC0415

        return run_stats(args.url, args.file, interval=args.interval, once=args.once)
    from .cli.check import check, show_plan  # noqa: PLC0415

    if args.command == "plan":
        return show_plan(args.format)
    return check()


if __name__ == "__main__":
    sys.exit(main())
