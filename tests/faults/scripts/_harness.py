"""Shared by the fault scripts: parameters, enrichers, counting, the summary.

Each script is run by a test with ``sys.executable``; it reads its parameters
from argv and the environment and ends by printing one JSON summary line
(``{"summary": {...}}``) on stdout, or on stderr when the log lines go to
stdout. The test parses that line with ``tests.faults.runner``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from enrichlog import AsyncEnricher

SUMMARY_KEY = "summary"


def arg(index: int, default: str | None = None) -> str:
    """``sys.argv[index]``, or ``default`` when it is not given."""
    if len(sys.argv) > index:
        return sys.argv[index]
    if default is None:
        raise SystemExit(f"usage: missing argument {index}")
    return default


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def count_lines(path: str | Path) -> int:
    """Lines in ``path`` (0 when it does not exist)."""
    try:
        with open(path, "rb") as stream:
            return sum(1 for line in stream if line.strip())
    except FileNotFoundError:
        return 0


def read_json_lines(path: str | Path) -> list[dict[str, Any]]:
    with open(path, "rb") as stream:
        return [json.loads(line) for line in stream if line.strip()]


def plain(value: Any) -> Any:
    """JSON-able data from a report or metrics snapshot."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def summary(*, to_stderr: bool = False, **fields: Any) -> None:
    """Print the summary line the test parses."""
    stream = sys.stderr if to_stderr else sys.stdout
    stream.write(json.dumps({SUMMARY_KEY: plain(fields)}, default=repr) + "\n")
    stream.flush()


class Tag(AsyncEnricher):
    """Adds ``tag`` after sleeping ``delay`` seconds (0: yield once)."""

    name = "tag"

    def __init__(self, delay: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        self.delay = delay

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(self.delay)
        event_dict["tag"] = "seen"
        return event_dict
