"""What the benchmark sections share: baselines, enrichers, statistics and results.

Every section measures enrichlog beside a baseline in the same run (plain structlog, the
hand-written reference pipeline of ``reference.py``, or a nominal enricher latency) and
records :class:`Check` rows: a measured ratio against a target, PASS or FAIL.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import operator
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import structlog

from enrichlog import AsyncEnricher

DEVNULL = "/dev/null"


# -- baselines ---------------------------------------------------------------------------------


def pre_processors() -> list[Any]:
    """The processors enrichlog runs on the caller before enrichment."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def plain_structlog() -> Any:
    """Plain structlog as a careful user would set it up: the same pre-processors, orjson's
    ``JSONRenderer``, a ``BytesLogger`` on /dev/null, a cached (concrete) bound logger.

    Built with ``structlog.wrap_logger`` rather than ``structlog.configure``, so that it
    lives beside an enrichlog configuration and the two can be timed in alternation."""
    return structlog.wrap_logger(
        structlog.BytesLogger(_devnull()),
        processors=[
            *pre_processors(),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(20),
        context_class=dict,
        cache_logger_on_first_use=True,
    ).bind()


@functools.cache
def _devnull() -> Any:
    """One /dev/null file for every plain structlog logger, open for the process's life."""
    return open(DEVNULL, "wb")


# -- enrichers ---------------------------------------------------------------------------------


class Backend:
    """Counts the calls a simulated backend receives and the keys they asked for."""

    def __init__(self) -> None:
        self.calls = 0
        self.keys = 0

    def reset(self) -> None:
        self.calls = self.keys = 0


class SleepLookup(AsyncEnricher):
    """An uncached lookup that awaits ``delay`` seconds (a DB row, an HTTP answer).

    When ``durations`` is given, each call appends how long its await really took, so
    that a section can compare an event's latency with its enrichers' own latencies.
    """

    def __init__(
        self,
        name: str,
        delay: float,
        backend: Backend | None = None,
        durations: list[float] | None = None,
    ) -> None:
        super().__init__(name=name)
        self.delay = delay
        self.backend = backend or Backend()
        self.durations = durations

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        self.backend.calls += 1
        self.backend.keys += 1
        started = time.perf_counter()
        await asyncio.sleep(self.delay)
        if self.durations is not None:
            self.durations.append(time.perf_counter() - started)
        event_dict[self.name] = 1
        return event_dict


class CachedLookup(AsyncEnricher):
    """Pretends to query a backend for 1 ms; results are cached by user id."""

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0.001)
        event_dict[f"{self.name}_value"] = f"{self.name}-{event_dict['user_id']}"
        return event_dict

    def cache_key(self, event_dict: Any) -> Any:
        return event_dict.get("user_id")


class BatchedLookup(AsyncEnricher):
    """A batching lookup (``enrich_many``): one ``delay`` await per backend call, whatever
    the number of keys, like ``SELECT ... WHERE id = ANY($1)``."""

    def __init__(self, name: str, delay: float, backend: Backend) -> None:
        super().__init__(name=name)
        self.delay = delay
        self.backend = backend

    def cache_key(self, event_dict: Any) -> Hashable | None:
        return event_dict.get("user_id")

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        self.backend.calls += 1
        self.backend.keys += len(keys)
        await asyncio.sleep(self.delay)
        return dict.fromkeys(keys, 1)

    def apply(self, event_dict: Any, value: Any) -> Any:
        event_dict[self.name] = value
        return event_dict


def sleep_lookup(name: str, delay: float, backend: Backend) -> Callable[[dict[str, Any]], Any]:
    """The reference pipeline's twin of :class:`SleepLookup`: an async function that
    returns the fields it adds."""

    async def lookup(event: dict[str, Any]) -> dict[str, Any]:
        backend.calls += 1
        backend.keys += 1
        await asyncio.sleep(delay)
        return {name: 1}

    return lookup


# -- statistics --------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of the (sorted) values lie."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(len(sorted_values) * fraction))
    return sorted_values[index]


def distribution(values_ns: Sequence[int]) -> dict[str, float]:
    """p50, p99 and max of durations in nanoseconds, in microseconds."""
    ordered = sorted(values_ns)
    return {
        "p50_us": percentile(ordered, 0.50) / 1000,
        "p99_us": percentile(ordered, 0.99) / 1000,
        "max_us": ordered[-1] / 1000 if ordered else float("nan"),
    }


def median_of(runs: Sequence[Mapping[str, float]], key: str) -> float:
    """The median over rounds of one figure."""
    return statistics.median(run[key] for run in runs)


def paired_ratio(ours: Mapping[str, Any], baseline: Mapping[str, Any], key: str) -> float:
    """The median over rounds of ours / baseline, each round's runs made back
    to back: the machine's speed, which drifts from minute to minute on a
    shared host, cancels out of each ratio."""
    return statistics.median(paired_ratios(ours, baseline, key))


def paired_ratios(ours: Mapping[str, Any], baseline: Mapping[str, Any], key: str) -> list[float]:
    """ours / baseline for each round (both summaries hold ``rounds``)."""
    return [
        mine[key] / theirs[key]
        for mine, theirs in zip(ours["rounds"], baseline["rounds"], strict=True)
    ]


def time_block(info: Callable[..., Any], events: int) -> float:
    """The mean cost of one ``info("checkout", ...)`` call over ``events`` calls (µs), in
    CPU time of the calling thread: time the thread spends descheduled while a
    neighbour runs is not counted, which removes most of a shared machine's noise."""
    clock = time.thread_time_ns
    started = clock()
    for i in range(events):
        info("checkout", user_id=i % 100, amount=12.5)
    return (clock() - started) / events / 1000


class GcTimer:
    """Time spent in the cyclic garbage collector, on every thread, while in the ``with``
    block; and the number of collections per generation.

    A young collection runs after 700 net allocations of GC-tracked objects (dicts,
    lists, tasks, coroutines, closures...), so ``collections[0] * 700`` estimates how many
    such objects the measured code allocated; older generations are collected less often
    but walk every live object, e.g. each queued event."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GcTimer:
        gc.collect()
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc_info: object) -> None:
        gc.callbacks.remove(self._callback)


# -- results -----------------------------------------------------------------------------------

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
}
_SYMBOLS = {"<=": "≤", ">=": "≥", "<": "<"}


@dataclass
class Check:
    """One target: what was measured, against what, and whether it is met.

    ``measured`` is compared with ``limit`` by ``op``; it is usually ``ratio`` (enrichlog
    over the baseline), but may be an absolute figure (backend calls per event). ``op``
    ``"info"`` marks a figure reported without a target.
    """

    section: str
    what: str
    baseline: str
    enrichlog: str
    ratio: float | None
    measured: float
    op: str
    limit: float
    unit: str = "x"
    note: str = ""

    @property
    def passed(self) -> bool | None:
        """True or False against the target; None for an informational figure."""
        if self.op == "info":
            return None
        return _OPERATORS[self.op](self.measured, self.limit)

    @property
    def verdict(self) -> str:
        """``PASS``, ``FAIL`` or ``-`` (no target)."""
        return {True: "PASS", False: "FAIL", None: "-"}[self.passed]

    @property
    def target(self) -> str:
        """The target as text, e.g. ``≤ 1.05x``."""
        if self.op == "info":
            return "-"
        return f"{_SYMBOLS[self.op]} {self.limit:g}{self.unit}"

    @property
    def ratio_text(self) -> str:
        """The ratio as text, e.g. ``1.04x``; with three decimals when two would show the
        limit itself for a ratio that is not (``1.054x`` fails ``≤ 1.05x``)."""
        if self.ratio is None:
            return "-"
        text = f"{self.ratio:.2f}"
        if float(text) == self.limit and self.ratio != self.limit:
            text = f"{self.ratio:.3f}"
        return f"{text}x"

    @property
    def measured_text(self) -> str:
        """What is compared with the target, as text: the ratio, or the figure and unit."""
        if self.ratio is not None:
            return self.ratio_text
        return f"{self.measured:.2f}{self.unit}"

    def as_dict(self) -> dict[str, Any]:
        """The check as plain data, with its verdict."""
        return {**asdict(self), "target": self.target, "verdict": self.verdict}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Check:
        """A check back from :meth:`as_dict`."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


@dataclass
class Results:
    """Everything a run measured: the checks, and raw figures per section (for the
    charts and ``--json``)."""

    checks: list[Check] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.passed is False]


def us(value: float) -> str:
    """Microseconds as text."""
    return f"{value:,.2f} µs"


def ms(value: float) -> str:
    """Milliseconds as text."""
    return f"{value:,.2f} ms"


def rate(value: float) -> str:
    """Events per second as text."""
    return f"{value:,.0f} ev/s"


class Context:
    """What a section gets: the run's options, where to record results, the progress bar.

    Args:
        quick: a smoke run (fewer events and rounds).
        results: where checks and raw figures go.
        progress: has ``advance()``, called once per round (or step) of a section.
    """

    def __init__(self, quick: bool, results: Results, progress: Any) -> None:
        self.quick = quick
        self.results = results
        self.progress = progress

    def pick(self, quick: int, full: int) -> int:
        """A count (events, rounds) for a quick or a full run."""
        return quick if self.quick else full

    def advance(self) -> None:
        """One step of the current section is done."""
        self.progress.advance()
