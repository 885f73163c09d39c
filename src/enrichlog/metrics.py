"""What ``container.metrics()`` returns: a typed, frozen snapshot.

:class:`MetricsSnapshot` holds the pipeline's counters at the top level and
one :class:`EnricherMetrics` per async enricher. It is also a read-only
mapping of :meth:`MetricsSnapshot.as_dict` (``metrics["written"]``,
``metrics["enrichers"]["user"]["calls"]``), so code written against the
plain-dict metrics keeps working.

Latencies are kept in a :class:`LatencyHistogram`: fixed buckets, so memory
does not grow with the number of events, and the same buckets a Prometheus
histogram exposes. Percentiles are read from the buckets (linear within the
bucket that holds them); the maximum is exact.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BUCKETS",
    "FAILURE_REASONS",
    "TRANSPORT_COUNTERS",
    "WORKER_COUNTERS",
    "EnricherMetrics",
    "LatencyHistogram",
    "LatencySummary",
    "MetricsSnapshot",
]

#: Upper bounds (seconds) of the latency buckets; the last bucket is +Inf.
BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: The bucket of a duration (bound once: observed for every call and event).
_bucket_of = bisect.bisect_left

#: The reasons a call or an event's enricher can fail, as counted.
FAILURE_REASONS: tuple[str, ...] = (
    "error",
    "timeout",
    "overloaded",
    "circuit_open",
    "unavailable",
    "invalid_return",
)

#: What a producer's scale-out transport counts (``TransportMetrics``).
TRANSPORT_COUNTERS: tuple[str, ...] = (
    "published",
    "duplicates",
    "spooled",
    "replayed",
    "spool_dropped",
    "rejected",
    "truncated",
    "publish_errors",
)

#: What an enrichment worker counts (``WorkerMetrics``).
WORKER_COUNTERS: tuple[str, ...] = (
    "consumed",
    "acknowledged",
    "nacked",
    "dead_lettered",
    "redelivered",
    "duplicates_skipped",
    "write_failed",
)


class LatencyHistogram:
    """Counts of observed durations in :data:`BUCKETS`, with their sum and
    maximum. Recorded on one thread (the runtime's loop); read anywhere.
    """

    __slots__ = ("counts", "max", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.max = 0.0

    def observe(self, seconds: float) -> None:
        """Record one duration."""
        self.counts[_bucket_of(BUCKETS, seconds)] += 1
        self.sum += seconds
        if seconds > self.max:  # noqa: PLR1730 - no builtin call, once per call and event
            self.max = seconds

    def summary(self) -> LatencySummary:
        """A frozen copy with the percentiles worked out."""
        counts = tuple(self.counts)
        total = sum(counts)
        return LatencySummary(
            count=total,
            sum=self.sum,
            max=self.max,
            p50=_percentile(counts, total, 0.50, self.max),
            p95=_percentile(counts, total, 0.95, self.max),
            p99=_percentile(counts, total, 0.99, self.max),
            buckets=counts,
        )


def _percentile(counts: tuple[int, ...], total: int, fraction: float, largest: float) -> float:
    if not total:
        return 0.0
    rank = fraction * total
    seen = 0
    for index, count in enumerate(counts):
        if seen + count >= rank and count:
            low = BUCKETS[index - 1] if index else 0.0
            high = BUCKETS[index] if index < len(BUCKETS) else largest
            within = (rank - seen) / count
            return min(low + (high - low) * within, largest)
        seen += count
    return largest


@dataclass(frozen=True)
class LatencySummary:
    """Durations in seconds: how many, their sum, percentiles and maximum,
    and the count in each of :data:`BUCKETS` (plus one for +Inf)."""

    count: int = 0
    sum: float = 0.0
    max: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    buckets: tuple[int, ...] = (0,) * (len(BUCKETS) + 1)


class _ReadableAsMapping(Mapping[str, Any]):
    """A frozen dataclass of counters, also read as the mapping of its
    :meth:`as_dict` (``metrics["calls"]``)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able): nested dicts and lists, no dataclasses."""
        return _plain(self)  # type: ignore[no-any-return]

    def __getitem__(self, key: str) -> Any:
        if key not in self._fields():
            raise KeyError(key)
        return _plain(getattr(self, key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())

    @classmethod
    def _fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


@dataclass(frozen=True)
class EnricherMetrics(_ReadableAsMapping):
    """One async enricher's counters (also readable as a mapping).

    Attributes:
        calls: calls made to the enricher (a batch call counts once).
        successes: calls that returned changes.
        failures: events the enricher failed, all reasons together;
            ``failures_by_reason`` splits them (every reason of
            :data:`FAILURE_REASONS`, zero included).
        retries: attempts retried after a transient failure.
        abandoned: calls that ignored their cancellation past the grace.
        cache_hits, cache_misses: lookups of its cache (0 without a cache).
        batch_calls: ``enrich_many`` calls; ``batch_keys``: keys they asked.
        latency: how long its calls took.
        breaker: the circuit's state, ``closed``, ``open`` or ``half_open``.
        breaker_seconds: how long the circuit has been in that state.
        cache: the cache's own statistics (``None`` without a cache).
    """

    name: str
    calls: int = 0
    successes: int = 0
    failures: int = 0
    failures_by_reason: Mapping[str, int] = field(default_factory=dict)
    retries: int = 0
    abandoned: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    batch_calls: int = 0
    batch_keys: int = 0
    latency: LatencySummary = field(default_factory=LatencySummary)
    breaker: str = "closed"
    breaker_seconds: float = 0.0
    cache: Mapping[str, Any] | None = None

    @property
    def keys_per_batch(self) -> float:
        """Keys per ``enrich_many`` call (0.0 before any)."""
        return self.batch_keys / self.batch_calls if self.batch_calls else 0.0

    @classmethod
    def _fields(cls) -> tuple[str, ...]:
        return (*super()._fields(), "keys_per_batch")  # as in as_dict()


@dataclass(frozen=True)
class MetricsSnapshot(_ReadableAsMapping):
    """A container's counters at one moment.

    Attributes:
        delivery: ``inline`` or ``background``.
        events_in: events that reached enrichment (handed to the runtime or
            completed on the calling thread).
        handed_off: events queued for the runtime.
        written: lines written, whichever thread wrote them.
        write_failed: lines the output refused.
        dropped: events dropped under the overflow policy;
            ``dropped_by_kind`` splits them (``overflow``, ``evicted``).
        filtered: events an enricher filtered out on purpose.
        pending: events queued and not yet written.
        abandoned: enricher calls abandoned (all enrichers).
        render_fallbacks: events rendered from a printable copy.
        queue_depth, queue_high_water, queue_size, in_flight: the queue.
        enrichment_latency: per event that awaited, from the start of its
            first enricher call to the end of its enrichment.
        enricher_time: per such event, the sum of its enrichers' call
            times; its sum against ``enrichment_latency``'s is what running
            levels in parallel saved.
        enrichers: per async enricher.
        transport: with a transport (scale-out), what it published,
            spooled and lost: ``TransportMetrics.as_dict()``; else ``None``.
        worker: in an enrichment worker, what it consumed, acknowledged,
            retried and dead-lettered: ``WorkerMetrics.as_dict()``; else
            ``None``.
    """

    delivery: str = "inline"
    events_in: int = 0
    handed_off: int = 0
    written: int = 0
    write_failed: int = 0
    dropped: int = 0
    dropped_by_kind: Mapping[str, int] = field(default_factory=dict)
    filtered: int = 0
    pending: int = 0
    abandoned: int = 0
    render_fallbacks: int = 0
    queue_depth: int = 0
    queue_high_water: int = 0
    queue_size: int = 0
    in_flight: int = 0
    enrichment_latency: LatencySummary = field(default_factory=LatencySummary)
    enricher_time: LatencySummary = field(default_factory=LatencySummary)
    enrichers: Mapping[str, EnricherMetrics] = field(default_factory=dict)
    transport: Mapping[str, Any] | None = None
    worker: Mapping[str, Any] | None = None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        plain = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, EnricherMetrics):
            plain["keys_per_batch"] = value.keys_per_batch
        return plain
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value
