"""Prometheus exposition of ``container.metrics()`` (extra ``prometheus``).

:func:`register` adds an :class:`EnrichlogCollector` to a
``prometheus_client`` registry. The collector does no work per event: at
scrape time it reads :meth:`~enrichlog.container.LoggingContainer.metrics`
and translates the snapshot into metric families with Prometheus names
(``enrichlog_enricher_calls_total{enricher, outcome}``,
``enrichlog_queue_depth``...; ``docs/monitoring/index.md`` lists them all).

Without a container, a collector follows every container started in the
process: ``configure_logging`` shuts the previous container down and starts
a new one, and the counters of each container shut down are kept, so totals
never go backwards across reconfigurations. Gauges (queue depth, circuit
state...) describe the running containers only.

The ``metrics_port`` setting serves ``/metrics`` (``prometheus_client``'s
default registry) on a small HTTP server started with the container and
stopped, its port released, at shutdown; :func:`metrics_app` serves the same exposition as an
ASGI app, for mounting in a web application.

This module imports ``prometheus_client`` only when it is used; without the
extra, each entry point raises
:class:`~enrichlog.exceptions.EnricherConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..enricher import AsyncEnricher
from ..exceptions import EnricherConfigError, EnrichlogError
from ..metrics import (
    BUCKETS,
    FAILURE_REASONS,
    TRANSPORT_COUNTERS,
    WORKER_COUNTERS,
    EnricherMetrics,
    LatencyHistogram,
    LatencySummary,
    MetricsSnapshot,
)
from ..options import ResolvedOptions
from ..reporting import reporting_logger
from ..uri.masking import mask_secrets

if TYPE_CHECKING:
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import CollectorRegistry

    from ..container import LoggingContainer
    from ._endpoint import MetricsEndpoint

__all__ = [
    "CIRCUIT_STATES",
    "ASGIApp",
    "EnrichlogCollector",
    "container_started",
    "container_stopped",
    "metrics_app",
    "metrics_endpoint_port",
    "register",
    "require_client",
]

#: The value of ``enrichlog_circuit_state`` for each breaker state.
CIRCUIT_STATES: Final[Mapping[str, int]] = {"closed": 0, "half_open": 1, "open": 2}

_MISSING_EXTRA = (
    "the Prometheus integration needs prometheus-client, which is not installed; "
    "install the extra: pip install 'enrichlog[prometheus]'"
)

_report = reporting_logger("enrichlog")

# ASGI, as the specification types it (no framework needed).
ASGIScope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
#: An ASGI 3 application.
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]


def require_client() -> None:
    """Check that ``prometheus_client`` can be imported.

    Raises:
        EnricherConfigError: it cannot; the message names the extra.
    """
    try:
        import prometheus_client  # noqa: F401, PLC0415 - the optional extra
    except ImportError as exc:
        raise EnricherConfigError(_MISSING_EXTRA) from exc


# -- following containers -------------------------------------------------------


@dataclass(frozen=True)
class _Reading:
    """What one scrape exposes."""

    #: Counters: of every container followed, shut down ones included.
    #: Gauges: of the running containers only (zero when none runs).
    totals: MetricsSnapshot
    #: The enrichers of the running containers, for their gauges.
    live: Mapping[str, EnricherMetrics]
    #: Each running async enricher's timeout, in seconds.
    timeouts: Mapping[str, float]
    #: Containers followed and running.
    running: int


_NOTHING = _Reading(MetricsSnapshot(), {}, {}, 0)

# MetricsSnapshot fields that describe the present, not a total.
_GAUGE_FIELDS = ("pending", "queue_depth", "queue_high_water", "queue_size", "in_flight")


class _Tracker:
    """Every container started in this process: the running ones, and the
    totals of those shut down (so process-wide counters never go back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Running containers by id(), in the order they started.
        self._running: dict[int, LoggingContainer] = {}
        self._timeouts: weakref.WeakKeyDictionary[LoggingContainer, Mapping[str, float]] = (
            weakref.WeakKeyDictionary()
        )
        # The last snapshot of each container shut down: after its shutdown,
        # its metrics() would count the lines of the container installed next
        # (they share structlog's writer).
        self._finals: weakref.WeakKeyDictionary[LoggingContainer, MetricsSnapshot] = (
            weakref.WeakKeyDictionary()
        )
        self._stopped = MetricsSnapshot()

    def after_fork_in_child(self) -> None:
        """A fresh lock (a thread of the parent may have held this one), and
        none of the parent's totals: a child's metrics count its own events
        only, as its running container's do."""
        self._lock = threading.Lock()
        self._finals = weakref.WeakKeyDictionary()
        self._stopped = MetricsSnapshot()

    def follow(self, container: LoggingContainer) -> None:
        timeouts = _enricher_timeouts(container)
        with self._lock:
            self._running[id(container)] = container
            self._timeouts[container] = timeouts

    def unfollow(self, container: LoggingContainer) -> None:
        with self._lock:
            if self._running.pop(id(container), None) is None:
                return
            final = container.metrics()
            self._finals[container] = final
            self._stopped = _merge(self._stopped, _at_rest(final))

    def reading(self, container: LoggingContainer | None) -> _Reading:
        # Snapshots are taken under the lock, so that a container shut down
        # meanwhile is counted either as running or as stopped, never both.
        with self._lock:
            if container is not None:
                return self._reading_of(container)
            totals = self._stopped
            running = [(c.metrics(), self._timeouts.get(c, {})) for c in self._running.values()]
        live: dict[str, EnricherMetrics] = {}
        timeouts: dict[str, float] = {}
        for snapshot, enricher_timeouts in running:
            totals = _merge(totals, snapshot)
            live.update(snapshot.enrichers)
            timeouts.update(enricher_timeouts)
        return _Reading(totals, live, timeouts, len(running))

    def _reading_of(self, container: LoggingContainer) -> _Reading:
        if container.running:
            snapshot = container.metrics()
            timeouts = self._timeouts.get(container)
            if timeouts is None:
                timeouts = _enricher_timeouts(container)
            return _Reading(snapshot, snapshot.enrichers, timeouts, 1)
        final = self._finals.get(container)
        return _Reading(_at_rest(container.metrics() if final is None else final), {}, {}, 0)


_TRACKER = _Tracker()


def _enricher_timeouts(container: LoggingContainer) -> dict[str, float]:
    """Each async enricher's timeout, resolved as the runtime resolves it."""
    timeouts: dict[str, float] = {}
    for enricher in container.registry:
        if isinstance(enricher, AsyncEnricher):
            try:
                options = ResolvedOptions.for_enricher(enricher, container.settings)
            except EnrichlogError:  # refused when the container was built
                continue
            timeouts[enricher.name] = options.timeout
    return timeouts


def _at_rest(snapshot: MetricsSnapshot) -> MetricsSnapshot:
    """``snapshot``'s counters, with its gauges at zero."""
    zeros: dict[str, Any] = dict.fromkeys(_GAUGE_FIELDS, 0)
    return dataclasses.replace(snapshot, **zeros)


def _merge(first: MetricsSnapshot, second: MetricsSnapshot) -> MetricsSnapshot:
    """Counters and gauges added up; ``second``'s delivery mode."""
    enrichers = dict(first.enrichers)
    for name, metrics in second.enrichers.items():
        mine = enrichers.get(name)
        enrichers[name] = metrics if mine is None else _merge_enricher(mine, metrics)
    return dataclasses.replace(
        second,
        **_summed_ints(first, second),
        dropped_by_kind=_add_counts(first.dropped_by_kind, second.dropped_by_kind),
        enrichment_latency=_merge_latency(first.enrichment_latency, second.enrichment_latency),
        enricher_time=_merge_latency(first.enricher_time, second.enricher_time),
        enrichers=enrichers,
        transport=_merge_parts(first.transport, second.transport),
        worker=_merge_parts(first.worker, second.worker),
    )


def _merge_parts(
    first: Mapping[str, Any] | None, second: Mapping[str, Any] | None
) -> Mapping[str, Any] | None:
    """A transport's or a worker's counts added up; ``second``'s other values."""
    if first is None or second is None:
        return second if first is None else first
    merged = dict(second)
    for key, value in first.items():
        other = second.get(key)
        if _is_count(value) and _is_count(other):
            merged[key] = value + other
    return merged


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _merge_enricher(first: EnricherMetrics, second: EnricherMetrics) -> EnricherMetrics:
    """Counters added up; ``second``'s breaker state and cache statistics."""
    return dataclasses.replace(
        second,
        **_summed_ints(first, second),
        failures_by_reason=_add_counts(first.failures_by_reason, second.failures_by_reason),
        latency=_merge_latency(first.latency, second.latency),
    )


def _summed_ints(first: object, second: object) -> dict[str, Any]:
    """Every integer field of two dataclasses of one type, added up."""
    summed: dict[str, Any] = {}
    for field in dataclasses.fields(first):  # type: ignore[arg-type]
        value = getattr(first, field.name)
        if isinstance(value, int) and not isinstance(value, bool):
            summed[field.name] = value + getattr(second, field.name)
    return summed


def _add_counts(first: Mapping[str, int], second: Mapping[str, int]) -> dict[str, int]:
    added = dict(first)
    for key, count in second.items():
        added[key] = added.get(key, 0) + count
    return added


def _merge_latency(first: LatencySummary, second: LatencySummary) -> LatencySummary:
    if not first.count:
        return second
    if not second.count:
        return first
    histogram = LatencyHistogram()
    histogram.counts = [a + b for a, b in zip(first.buckets, second.buckets, strict=True)]
    histogram.sum = first.sum + second.sum
    histogram.max = max(first.max, second.max)
    return histogram.summary()


def container_started(container: LoggingContainer) -> None:
    """Called by :meth:`LoggingContainer.start`: follow the container and,
    when its ``metrics_port`` is set, register the process-wide collector
    in ``prometheus_client.REGISTRY`` and serve it at ``/metrics``.

    A port that cannot be listened on, or a default registry that refuses
    enrichlog's metrics (the application registered its own under one of
    their names), is reported through the stdlib logger ``enrichlog``;
    logging goes on without the endpoint.
    """
    _TRACKER.follow(container)
    settings = container.settings
    if settings.metrics_port is None:
        return
    try:
        register()
    except ValueError as exc:  # prometheus_client: "Duplicated timeseries in CollectorRegistry"
        _report.warning(
            "enrichlog: cannot register its metrics in prometheus_client's default registry "
            "(%s); the metrics endpoint is off",
            mask_secrets(str(exc)),
        )
        return
    from ._endpoint import MetricsEndpoint  # noqa: PLC0415 - http.server only when used

    try:
        endpoint = MetricsEndpoint.start(settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        _report.warning(
            "enrichlog: cannot serve metrics on %s:%s (%s); the metrics endpoint is off",
            mask_secrets(settings.metrics_host),
            settings.metrics_port,
            mask_secrets(str(exc)),
        )
        return
    with _endpoints_lock:
        _endpoints[container] = endpoint


def container_stopped(container: LoggingContainer) -> None:
    """Called by :meth:`LoggingContainer.shutdown`: keep the container's
    final counters and stop its metrics endpoint, releasing the port."""
    _TRACKER.unfollow(container)
    with _endpoints_lock:
        endpoint = _endpoints.pop(container, None)
    if endpoint is not None:
        endpoint.stop()


def metrics_endpoint_port(container: LoggingContainer) -> int | None:
    """The port ``container``'s metrics endpoint listens on (the one chosen
    when ``metrics_port=0``), or ``None`` when it serves none."""
    with _endpoints_lock:
        endpoint = _endpoints.get(container)
    return None if endpoint is None else endpoint.port


# -- the collector --------------------------------------------------------------


class EnrichlogCollector:
    """A ``prometheus_client`` custom collector of enrichlog's metrics.

    ``collect()`` reads the metrics at scrape time; nothing is done per
    event. With ``container=None`` it follows every container started in the
    process (counters of containers shut down are kept); with a container,
    only that one.
    """

    def __init__(self, container: LoggingContainer | None = None) -> None:
        self.container = container

    def collect(self) -> Iterator[Metric]:
        """The metric families, read now."""
        yield from _families(_TRACKER.reading(self.container))

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples, for the registry's check of
        duplicate names (no snapshot is taken)."""
        yield from _families(_NOTHING)


# One enrichlog collector per registry: registering again is a no-op, or
# replaces the collector when it follows another container.
_registered: weakref.WeakKeyDictionary[CollectorRegistry, EnrichlogCollector] = (
    weakref.WeakKeyDictionary()
)
_registered_lock = threading.Lock()


def register(
    container: LoggingContainer | None = None, registry: CollectorRegistry | None = None
) -> EnrichlogCollector:
    """Register an :class:`EnrichlogCollector` in ``registry``; return it.

    Args:
        container: the container to expose; ``None`` (the default) follows
            every container started in the process, so the collector keeps
            counting across ``configure_logging`` calls.
        registry: defaults to ``prometheus_client.REGISTRY``.

    Idempotent: registering again with the same container returns the
    collector already registered; with another container, that collector is
    replaced (a registry holds one enrichlog collector).

    Raises:
        EnricherConfigError: ``prometheus_client`` is not installed (the
            message names the extra).
    """
    require_client()
    from prometheus_client import REGISTRY  # noqa: PLC0415 - optional extra

    target = REGISTRY if registry is None else registry
    with _registered_lock:
        existing = _registered.get(target)
        if existing is not None:
            if existing.container is container:
                return existing
            target.unregister(existing)
        collector = EnrichlogCollector(container)
        target.register(collector)
        _registered[target] = collector
        return collector


class _Families:
    """The metric families of one reading, built in a fixed order."""

    def __init__(self) -> None:
        from prometheus_client.core import (  # noqa: PLC0415 - optional extra
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        self._counter = CounterMetricFamily
        self._gauge = GaugeMetricFamily
        self._histogram = HistogramMetricFamily
        self.built: list[Metric] = []

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
        family = self._counter(name, doc, labels=labels)
        self.built.append(family)
        return family

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        family = self._gauge(name, doc, labels=labels)
        self.built.append(family)
        return family

    def histogram(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> HistogramMetricFamily:
        family = self._histogram(name, doc, labels=labels)
        self.built.append(family)
        return family


def _families(reading: _Reading) -> list[Metric]:
    """The metric families of one reading, in a fixed order."""
    families = _Families()
    _pipeline_families(families, reading)
    _enricher_families(families, reading.totals.enrichers)
    _enricher_gauges(families, reading)
    _scale_out_families(families, reading.totals)
    return families.built


def _scale_out_families(families: _Families, totals: MetricsSnapshot) -> None:
    """A producer's transport and a worker's counters (docs/scale-out.md),
    when the process has them."""
    if totals.transport is not None:
        _part_families(
            families,
            totals.transport,
            (
                "enrichlog_transport_events_total",
                "Events of the scale-out transport: published to the stream, duplicates the "
                "server recognised, spooled to disk, replayed from it, dropped past the spool "
                "cap, rejected, published with values cut to fit, and failed publish attempts.",
                TRANSPORT_COUNTERS,
            ),
            ("enrichlog_transport_queued", "queued", "Events waiting to be published."),
            ("enrichlog_transport_spool_bytes", "spool_bytes", "Bytes in the on-disk spool."),
            ("enrichlog_transport_connected", "connected", "1 while connected to the broker."),
        )
    if totals.worker is not None:
        _part_families(
            families,
            totals.worker,
            (
                "enrichlog_worker_messages_total",
                "Messages of an enrichment worker: consumed (redelivered: delivered before), "
                "acknowledged, nacked for a retry, dead-lettered, duplicates skipped, and lines "
                "the output refused.",
                WORKER_COUNTERS,
            ),
            ("enrichlog_worker_in_flight", "in_flight", "Events fetched and not yet answered."),
            (
                "enrichlog_worker_consumer_lag",
                "consumer_lag",
                "Events in the stream not yet delivered to any worker.",
            ),
            (
                "enrichlog_worker_ack_pending",
                "ack_pending",
                "Events delivered and not yet acknowledged.",
            ),
        )


def _part_families(
    families: _Families,
    part: Mapping[str, Any],
    counter: tuple[str, str, tuple[str, ...]],
    *gauges: tuple[str, str, str],
) -> None:
    """A transport's or a worker's figures: the ``(name, doc, results)``
    counter by ``result``, and ``(name, key, doc)`` gauges (one it does not
    know yet, ``None``, is left out)."""
    name, doc, results = counter
    family = families.counter(name, doc, ("result",))
    for result in results:
        family.add_metric([result], part.get(result, 0))
    for name, key, doc in gauges:
        value = part.get(key)
        if value is not None:
            families.gauge(name, doc).add_metric([], float(value))


def _pipeline_families(families: _Families, reading: _Reading) -> None:
    totals = reading.totals
    events = families.counter(
        "enrichlog_events_total",
        "Events by what became of them: written, dropped (overflow policy), "
        "write_failed (the output refused the line), filtered (an enricher dropped it).",
        ("result",),
    )
    for result in ("written", "dropped", "write_failed", "filtered"):
        events.add_metric([result], getattr(totals, result))
    dropped = families.counter(
        "enrichlog_events_dropped_total",
        "Events dropped under the overflow policy, by kind: overflow (a new event "
        "refused), evicted (a queued event pushed out by drop_old).",
        ("kind",),
    )
    for kind, count in sorted({"overflow": 0, "evicted": 0, **totals.dropped_by_kind}.items()):
        dropped.add_metric([kind], count)
    families.counter(
        "enrichlog_events_handed_off_total",
        "Events queued for the runtime (they awaited an enricher).",
    ).add_metric([], totals.handed_off)
    families.counter(
        "enrichlog_render_fallbacks_total",
        "Events the renderer could not render as given, written from a printable copy.",
    ).add_metric([], totals.render_fallbacks)
    for name, doc, value in (
        ("enrichlog_events_pending", "Events queued and not yet written.", totals.pending),
        (
            "enrichlog_queue_depth",
            "Events waiting in the queue for enrichment.",
            totals.queue_depth,
        ),
        (
            "enrichlog_queue_high_water",
            "The deepest the queue has been since the container started.",
            totals.queue_high_water,
        ),
        (
            "enrichlog_queue_size",
            "Capacity of the queue (the queue_size setting).",
            totals.queue_size,
        ),
        ("enrichlog_in_flight", "Events being enriched at this moment.", totals.in_flight),
        (
            "enrichlog_containers_running",
            "Logging containers running in this process.",
            reading.running,
        ),
    ):
        families.gauge(name, doc).add_metric([], value)
    _add_histogram(
        families.histogram(
            "enrichlog_event_enrichment_seconds",
            "Per event that awaited: from its first enricher call to the end of its enrichment.",
        ),
        [],
        totals.enrichment_latency,
    )
    _add_histogram(
        families.histogram(
            "enrichlog_event_enricher_seconds",
            "Per event that awaited: the sum of its enrichers' call times (against "
            "enrichlog_event_enrichment_seconds: what running a level's enrichers "
            "concurrently saved).",
        ),
        [],
        totals.enricher_time,
    )


def _enricher_families(families: _Families, enrichers: Mapping[str, EnricherMetrics]) -> None:
    calls = families.counter(
        "enrichlog_enricher_calls_total",
        "Enricher outcomes: calls that succeeded or failed (success, error, timeout, "
        "invalid_return; a batch call once), and events skipped or cut off without a "
        "call of their own (overloaded, circuit_open, unavailable; timeout for an event "
        "a level_timeout cut off). Cache hits are not counted here.",
        ("enricher", "outcome"),
    )
    duration = families.histogram(
        "enrichlog_enricher_duration_seconds",
        "Duration of each call made to the enricher (a batch call counts once).",
        ("enricher",),
    )
    retries = families.counter(
        "enrichlog_enricher_retries_total",
        "Attempts retried after a transient failure.",
        ("enricher",),
    )
    abandoned = families.counter(
        "enrichlog_enricher_abandoned_total",
        "Calls abandoned: they ignored their cancellation past the grace period.",
        ("enricher",),
    )
    cache = families.counter(
        "enrichlog_cache_requests_total",
        "Lookups of the enricher's cache, by result (hit, miss).",
        ("enricher", "result"),
    )
    batch_calls = families.counter(
        "enrichlog_batch_calls_total", "enrich_many() calls of a batching enricher.", ("enricher",)
    )
    batch_keys = families.counter(
        "enrichlog_batch_keys_total",
        "Keys asked by enrich_many() calls of a batching enricher.",
        ("enricher",),
    )
    for name, metrics in sorted(enrichers.items()):
        reasons = metrics.failures_by_reason
        calls.add_metric([name, "success"], metrics.successes)
        for reason in (*FAILURE_REASONS, *sorted(set(reasons) - set(FAILURE_REASONS))):
            calls.add_metric([name, reason], reasons.get(reason, 0))
        _add_histogram(duration, [name], metrics.latency)
        retries.add_metric([name], metrics.retries)
        abandoned.add_metric([name], metrics.abandoned)
        if metrics.cache is not None:
            cache.add_metric([name, "hit"], metrics.cache_hits)
            cache.add_metric([name, "miss"], metrics.cache_misses)
        batch_calls.add_metric([name], metrics.batch_calls)
        batch_keys.add_metric([name], metrics.batch_keys)


def _enricher_gauges(families: _Families, reading: _Reading) -> None:
    state = families.gauge(
        "enrichlog_circuit_state",
        "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
        ("enricher",),
    )
    state_seconds = families.gauge(
        "enrichlog_circuit_state_seconds",
        "Seconds the circuit breaker has been in its current state.",
        ("enricher",),
    )
    timeout = families.gauge(
        "enrichlog_enricher_timeout_seconds",
        "The enricher's timeout per event, as configured.",
        ("enricher",),
    )
    entries = families.gauge(
        "enrichlog_cache_entries", "Entries held in the enricher's cache.", ("enricher",)
    )
    for name, metrics in sorted(reading.live.items()):
        state.add_metric([name], CIRCUIT_STATES.get(metrics.breaker, 0))
        state_seconds.add_metric([name], metrics.breaker_seconds)
        if name in reading.timeouts:
            timeout.add_metric([name], reading.timeouts[name])
        if metrics.cache is not None:
            entries.add_metric([name], metrics.cache.get("size", 0))


def _add_histogram(
    family: HistogramMetricFamily, labels: list[str], latency: LatencySummary
) -> None:
    """One histogram series: cumulative ``le`` buckets of :data:`BUCKETS`,
    then ``+Inf``, ``_sum`` and ``_count``."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*BUCKETS, float("inf")), latency.buckets, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    family.add_metric(labels, buckets, latency.sum)


# -- the HTTP endpoint ----------------------------------------------------------


_endpoints: weakref.WeakKeyDictionary[LoggingContainer, MetricsEndpoint] = (
    weakref.WeakKeyDictionary()
)
_endpoints_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """In a forked child: fresh locks (a parent's thread may have held one),
    and no endpoint: their server threads stayed in the parent, which keeps
    serving; the child only closes its copy of their sockets."""
    global _endpoints_lock, _registered_lock  # noqa: PLW0603 - reset after fork
    _TRACKER.after_fork_in_child()
    _registered_lock = threading.Lock()
    _endpoints_lock = threading.Lock()
    for endpoint in list(_endpoints.values()):
        endpoint.forget()
    _endpoints.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the ASGI app ---------------------------------------------------------------


def metrics_app(
    container: LoggingContainer | None = None, *, registry: CollectorRegistry | None = None
) -> ASGIApp:
    """An ASGI app serving the Prometheus exposition, on whatever path it is
    mounted at (``GET`` and ``HEAD``; other methods get ``405``).

    Args:
        container: as in :func:`register`; ``None`` follows every container
            started in the process.
        registry: the registry to serve; the collector is registered in it.
            Defaults to a registry of its own that holds only enrichlog's
            metrics (pass ``prometheus_client.REGISTRY`` to serve the
            process's other metrics too).

    The exposition format follows the request's ``Accept`` header (the
    Prometheus text format, or OpenMetrics when asked for). The app answers
    ASGI ``lifespan`` events, so it may also be run on its own.

    Raises:
        EnricherConfigError: ``prometheus_client`` is not installed (the
            message names the extra).
    """
    require_client()
    from prometheus_client import CollectorRegistry  # noqa: PLC0415 - optional extra
    from prometheus_client.exposition import choose_encoder  # noqa: PLC0415

    served = CollectorRegistry() if registry is None else registry
    register(container, served)

    async def app(scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1003})  # refused: not HTTP
            return
        if scope["type"] != "http":
            raise EnrichlogError(f"the metrics app serves HTTP, not {scope['type']!r}")
        method = scope.get("method", "GET")
        if method not in {"GET", "HEAD"}:
            refusal = b"Method Not Allowed\n"
            await _respond(
                send,
                405,
                [
                    (b"allow", b"GET, HEAD"),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(refusal)).encode("ascii")),
                ],
                refusal,
            )
            return
        accept = ""
        for name, value in scope.get("headers", ()):
            if name.lower() == b"accept":
                accept = value.decode("latin-1")
        encode, content_type = choose_encoder(accept)
        body = encode(served)
        headers = [
            (b"content-type", content_type.encode("latin-1")),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
        await _respond(send, 200, headers, b"" if method == "HEAD" else body)

    return app


async def _respond(
    send: ASGISend, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: ASGIReceive, send: ASGISend) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
