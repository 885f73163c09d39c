"""``python -m enrichlog demo``: enrichment on the embedded defaults.

Two built-in sync enrichers (hostname, process id) and four async ones that
simulate I/O latency, in two dependency levels. Each line is printed as it
is written; the summary compares the enrichment latency of each event with
the sum of its enrichers' latencies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import statistics
import time
from typing import Any, TextIO

from structlog.typing import EventDict, WrappedLogger

from ..container import configure_logging, get_logger
from ..enricher import AsyncEnricher, register_enricher
from ..exceptions import EnrichlogError

__all__ = ["SimulatedLookup", "critical_path", "demo", "demo_enrichers", "run_demo"]


class SimulatedLookup(AsyncEnricher):
    """An async enricher that 'looks up' a value after a fixed latency."""

    def __init__(self, name: str, latency: float, field: str, value: Any, **kw: Any) -> None:
        super().__init__(name=name, **kw)
        self.latency = latency
        self.field = field
        self.value = value

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(self.latency)
        value = self.value(event_dict) if callable(self.value) else self.value
        event_dict[self.field] = value
        return event_dict


def _add_hostname(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict["hostname"] = _HOSTNAME
    return event_dict


def _add_pid(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict["pid"] = os.getpid()
    return event_dict


_HOSTNAME = socket.gethostname()

#: (name, seconds, field, value, dependencies)
DEMO_LOOKUPS: tuple[tuple[str, float, str, Any, tuple[str, ...]], ...] = (
    ("tenant", 0.030, "tenant", lambda e: f"tenant-{e.get('user_id', 0) % 3}", ()),
    ("geo", 0.020, "region", "eu-west-1", ()),
    ("flags", 0.025, "flags", ["new-checkout"], ()),
    ("user", 0.040, "user_name", lambda e: f"user-{e.get('user_id')}", ("tenant",)),
)


def demo_enrichers() -> list[object]:
    """The demo's enrichers: two sync built-ins and the simulated lookups."""
    lookups: list[object] = [
        SimulatedLookup(name, latency, field, value, dependencies=deps)
        for name, latency, field, value, deps in DEMO_LOOKUPS
    ]
    return [
        register_enricher(_add_hostname, name="hostname"),
        register_enricher(_add_pid, name="pid"),
        *lookups,
    ]


def critical_path() -> float:
    """Seconds along the slowest chain of dependent lookups."""
    latency = {name: seconds for name, seconds, *_ in DEMO_LOOKUPS}
    deps = {name: d for name, *_, d in DEMO_LOOKUPS}

    def finish(name: str) -> float:
        return latency[name] + max((finish(d) for d in deps[name]), default=0.0)

    return max(finish(name) for name in latency)


def demo(events: int = 5, err: TextIO | None = None) -> int:
    """``python -m enrichlog demo``: :func:`run_demo`, and the exit status;
    a configuration problem (``ENRICHLOG_LEVEL=verbose``) is one line on
    ``err`` and 1, as ``plan`` and ``check`` report it, not a traceback."""
    try:
        run_demo(events)
    except EnrichlogError as exc:
        import sys  # noqa: PLC0415 - resolved at call time, like _stdout()

        print(f"error: {exc}", file=err if err is not None else sys.stderr)
        return 1
    return 0


def run_demo(events: int = 5, out: TextIO | None = None) -> dict[str, float]:
    """Log ``events`` enriched events (1 or more) to stdout and print a
    summary.

    Raises:
        ValueError: ``events`` is less than 1.
        EnrichlogError: the environment's settings are invalid.
    """
    if events < 1:
        raise ValueError(f"events must be 1 or more, not {events}")
    container = configure_logging(
        enrichers=demo_enrichers(),
        delivery="inline",
        output="stdout",
        format="json",
        transport=None,  # its events are examples: never published to the application's stream
    )
    log = get_logger("demo")
    durations = []
    # Its events are its output: when stdout fails, the summary below fails
    # the same way and the command says so once (141 for a closed pipe), not
    # also through enrichlog's reports of each failed line.
    quiet = _WithoutOutputReports()
    reports = logging.getLogger("enrichlog")
    reports.addFilter(quiet)
    try:
        for user_id in range(1, events + 1):
            started = time.perf_counter()
            log.info("checkout", user_id=user_id, amount=9.99 * user_id)
            durations.append(time.perf_counter() - started)
    finally:
        container.shutdown()
        reports.removeFilter(quiet)
    total = sum(seconds for _, seconds, *_ in DEMO_LOOKUPS)
    summary = {
        "events": float(events),
        "median_ms": statistics.median(durations) * 1000,
        "sum_of_enrichers_ms": total * 1000,
        "critical_path_ms": critical_path() * 1000,
    }
    levels = container.registry.resolve_dependencies()
    stream = out if out is not None else _stdout()
    print(
        f"\nenrichlog demo: {events} events, {len(levels)} dependency levels "
        f"{levels}\n"
        f"  enrichment latency per event (median): {summary['median_ms']:.1f} ms\n"
        f"  sum of the enrichers' latencies:       {summary['sum_of_enrichers_ms']:.1f} ms\n"
        f"  slowest dependency chain:              {summary['critical_path_ms']:.1f} ms\n"
        "  independent enrichers ran concurrently; each level waited only "
        "for its slowest enricher.",
        file=stream,
        flush=True,
    )
    return summary


class _WithoutOutputReports(logging.Filter):
    """Drops enrichlog's reports of lines it could not write."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("enrichlog could not write")


def _stdout() -> TextIO:
    import sys  # noqa: PLC0415 - resolved at call time, for redirected stdout

    return sys.stdout
