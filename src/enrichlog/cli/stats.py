"""``python -m enrichlog stats``: a running process's metrics, as a table.

The metrics come from the process's ``/metrics`` endpoint (``--url``, read
with the ``prometheus`` extra's parser) or from a JSON file holding
``container.metrics().as_dict()`` (``--file``). On a terminal the table
refreshes every ``--interval`` seconds (extra ``stats``: rich) and shows
rates since the previous refresh; otherwise, or with ``--once``, one
snapshot is printed as plain text.

Per enricher: calls, success rate, failures by reason, latency percentiles
against the timeout, cache hit rate and breaker state. For the pipeline:
events written, dropped and failed, the queue, events in flight, and the
enrichment latency per event against the time its enrichers took.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..exceptions import EnricherConfigError, EnrichlogError
from ..metrics import (
    BUCKETS,
    FAILURE_REASONS,
    EnricherMetrics,
    LatencyHistogram,
    LatencySummary,
    MetricsSnapshot,
)
from ..uri.masking import mask_secrets, mask_uri, masked_parts, scrub
from . import positive_seconds, printable

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from rich.console import Console, RenderableType

__all__ = [
    "Stats",
    "parse_exposition",
    "read_stats",
    "render_rich",
    "render_text",
    "run_stats",
    "snapshot_from_dict",
]

_STATES = {0: "closed", 1: "half_open", 2: "open"}
#: The most of a ``--url`` response read: a process with a thousand enrichers
#: exposes well under a mebibyte.
MAX_RESPONSE_BYTES = 16 * 2**20
_MISSING_RICH = (
    "the live table needs rich, which is not installed; install the extra: "
    "pip install 'enrichlog[stats]' (or print one snapshot with --once)"
)
_MISSING_PARSER = (
    "reading a metrics endpoint needs prometheus-client, which is not installed; "
    "install the extra: pip install 'enrichlog[prometheus]' (or read a snapshot with --file)"
)


@dataclass(frozen=True)
class Stats:
    """One reading of a process's metrics."""

    snapshot: MetricsSnapshot
    #: Each enricher's timeout in seconds (known from an endpoint only).
    timeouts: Mapping[str, float] = field(default_factory=dict)
    #: ``time.monotonic()`` when it was read.
    taken: float = 0.0
    #: The delivery mode, when the source says (a JSON snapshot does).
    delivery: str | None = None


# -- reading -------------------------------------------------------------------


def read_stats(url: str | None = None, file: Path | None = None, timeout: float = 5.0) -> Stats:
    """Read the metrics at ``url`` (a ``/metrics`` endpoint) or in ``file``
    (JSON of ``container.metrics().as_dict()``).

    Raises:
        EnrichlogError: the source cannot be read or is not enrichlog's.
        EnricherConfigError: ``url`` given and prometheus-client missing.
    """
    if file is not None:
        try:
            with file.open("rb") as snapshot_file:
                raw = _read_capped(snapshot_file, f"the snapshot {str(file)!r}", "the file")
            data = json.loads(raw.decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise EnrichlogError(f"cannot read the snapshot {str(file)!r}: {exc}") from None
        except RecursionError:
            raise EnrichlogError(
                f"cannot read the snapshot {str(file)!r}: nested too deeply"
            ) from None
        snapshot = snapshot_from_dict(data)
        return Stats(snapshot, taken=time.monotonic(), delivery=snapshot.delivery)
    if url is None:
        raise EnrichlogError("give a metrics endpoint (--url) or a snapshot file (--file)")
    shown = mask_uri(url)
    if not url.startswith(("http://", "https://")):
        raise EnrichlogError(f"--url must be an http:// or https:// address, not {shown!r}")
    text = _fetch(url, shown, timeout)
    snapshot, timeouts = parse_exposition(text)
    return Stats(snapshot, timeouts, taken=time.monotonic())


def _fetch(url: str, shown: str, timeout: float) -> str:
    """The answer at ``url``, all of it within ``timeout`` seconds: read on
    a thread of its own, since the socket's timeout bounds each read only
    (a server sending its headers a byte at a time never lets one time
    out); one given up on is left to end, a daemon.

    Raises:
        EnrichlogError: no complete answer in time, or none that reads.
    """
    deadline = time.monotonic() + timeout
    answer: list[str | BaseException] = []

    def fetch() -> None:
        try:
            with urllib.request.urlopen(_request(url), timeout=timeout) as response:  # noqa: S310 - http(s) checked by the caller
                answer.append(
                    _read_capped(response, shown, "the response", deadline).decode("utf-8")
                )
        except BaseException as exc:  # handed to the caller
            answer.append(exc)

    reader = threading.Thread(target=fetch, name="enrichlog-stats-fetch", daemon=True)
    reader.start()
    reader.join(timeout + 0.5)
    if not answer:
        raise EnrichlogError(f"cannot read {shown}: no complete answer within {timeout:g}s")
    result = answer[0]
    if isinstance(result, EnrichlogError):
        raise result
    if isinstance(result, (OSError, ValueError, http.client.HTTPException)):  # not HTTP, say
        # What urllib says quotes the address as it parsed it: a password cut
        # short by an unescaped '/' or '#' reads as a port ('nonnumeric port').
        reason = scrub(mask_secrets(str(result)), masked_parts(url, shown))
        reason = " ".join(reason.split())  # one line (a redirect loop's)
        raise EnrichlogError(f"cannot read {shown}: {reason}") from None
    if isinstance(result, BaseException):
        raise result
    return result


def _read_capped(source: Any, what: str, whole: str, deadline: float | None = None) -> bytes:
    """All of ``source`` (``whole``: a file, a response), refused past
    :data:`MAX_RESPONSE_BYTES`, which no enrichlog endpoint or snapshot
    comes near (``/dev/zero`` is a file too), and, given a ``deadline``
    (``time.monotonic()``), unless it is all there by then: a socket's
    timeout bounds each read, and a server sending a byte a second never
    lets one time out.

    Raises:
        EnrichlogError: ``source`` holds more, or took too long.
    """
    if deadline is None:
        data: bytes = source.read(MAX_RESPONSE_BYTES + 1)
    else:
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_RESPONSE_BYTES:
            if time.monotonic() > deadline:
                raise EnrichlogError(f"cannot read {what}: {whole} did not arrive in time")
            chunk = source.read1(MAX_RESPONSE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
        if size <= MAX_RESPONSE_BYTES and getattr(source, "length", None):
            # Fewer bytes than its Content-Length said: the connection
            # closed early, and half an exposition reads as wrong figures.
            raise EnrichlogError(f"cannot read {what}: {whole} was cut short")
    if len(data) > MAX_RESPONSE_BYTES:
        raise EnrichlogError(
            f"cannot read {what}: {whole} is larger than {MAX_RESPONSE_BYTES // 2**20} MiB, "
            "which no enrichlog endpoint or snapshot is"
        )
    return data


def _request(url: str) -> urllib.request.Request:
    """A request for ``url``; a ``user:password@`` part becomes basic
    authentication (urllib does not send it from the address)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)  # noqa: S310 - http(s) checked by the caller
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    bare = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return urllib.request.Request(  # noqa: S310 - http(s) checked by the caller
        bare, headers={"Authorization": f"Basic {token}"}
    )


#: Field types of a snapshot, read off an empty one.
_EMPTY = MetricsSnapshot()


def snapshot_from_dict(data: Mapping[str, Any]) -> MetricsSnapshot:
    """A :class:`MetricsSnapshot` from the plain data of its ``as_dict()``.

    Raises:
        EnrichlogError: ``data`` is not such a snapshot.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("enrichers"), Mapping):
        raise EnrichlogError("not a metrics snapshot: expected container.metrics().as_dict()")
    for name, values in data["enrichers"].items():
        if not isinstance(values, Mapping):
            raise EnrichlogError(
                f"not a metrics snapshot: enrichers[{str(name)!r}] is {type(values).__name__}, "
                "expected the enricher's counters"
            )
        _check_fields(f"enrichers[{str(name)!r}]", values, _ENRICHER_TEMPLATE)
    _check_fields("", data, _EMPTY)
    try:
        enrichers = {
            str(name): _enricher_from_dict(str(name), values)
            for name, values in data["enrichers"].items()
        }
        top = {
            key: value
            for key, value in data.items()
            if key in MetricsSnapshot._fields() and key not in _NESTED
        }
        for key, value in top.items():
            expected = type(getattr(_EMPTY, key))
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if expected in (int, float) and not number:
                raise EnrichlogError(
                    f"not a metrics snapshot: {key!r} is {type(value).__name__}, expected a number"
                )
        return MetricsSnapshot(
            **top,
            enrichment_latency=_latency_from_dict(data.get("enrichment_latency")),
            enricher_time=_latency_from_dict(data.get("enricher_time")),
            enrichers=enrichers,
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise EnrichlogError(f"not a metrics snapshot: {exc}") from None


_NESTED = frozenset({"enrichment_latency", "enricher_time", "enrichers"})
_ENRICHER_TEMPLATE = EnricherMetrics(name="")
#: Mappings whose values may be missing (a worker's lag before it knows).
_MAY_HOLD_NONE = frozenset({"transport", "worker", "cache"})


def _check_fields(where: str, values: Mapping[str, Any], template: Any) -> None:
    """Refuse a field of ``values`` whose type is not that of the same field
    of ``template`` (a snapshot or its parts, default-valued): a number that
    is not one, or not finite, a name that is not text, counters by kind that
    are no mapping of numbers, latencies that are no latency summary."""
    for key, value in values.items():
        if not isinstance(key, str) or key not in type(template).__dataclass_fields__:
            continue  # as_dict() extras (keys_per_batch) and unknown keys: unused
        expected = getattr(template, key)
        shown = f"{where}[{key!r}]" if where else repr(key)
        if isinstance(expected, LatencySummary):
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise _not_snapshot(shown, value, "a latency summary")
            _check_fields(shown, value, expected)
        elif isinstance(expected, bool | str):
            if not isinstance(value, str):
                raise _not_snapshot(shown, value, "text")
        elif isinstance(expected, int | float):
            if not _finite_number(value):
                raise _not_snapshot(shown, value, "a number")
        elif isinstance(expected, tuple):
            if not isinstance(value, list | tuple) or not all(map(_finite_number, value)):
                raise _not_snapshot(shown, value, "a list of finite numbers")
        elif key != "enrichers" and not _counters(key, value, expected):  # enrichers: by the caller
            raise _not_snapshot(shown, value, "counters by name (text to finite numbers)")


def _counters(key: str, value: object, expected: object) -> bool:
    """Whether ``value`` fits a field of counters by name whose default is
    ``expected`` (``{}``, or ``None`` for a part a process may not have)."""
    if value is None:
        return expected is None
    return isinstance(value, Mapping) and all(
        isinstance(name, str)
        and (_finite_number(count) or (count is None and key in _MAY_HOLD_NONE))
        for name, count in value.items()
    )


def _finite_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and abs(value) <= _LARGEST  # first: math.isfinite(10**400) overflows
        and math.isfinite(value)
    )


def _not_snapshot(where: str, value: object, expected: str) -> EnrichlogError:
    what = type(value).__name__
    if isinstance(value, float):
        what = f"{value}"  # nan, inf
    return EnrichlogError(f"not a metrics snapshot: {where} is {what}, expected {expected}")


_ENRICHER_FIELDS = frozenset(EnricherMetrics.__dataclass_fields__) - {"name", "latency"}


def _enricher_from_dict(name: str, values: Mapping[str, Any]) -> EnricherMetrics:
    known = {key: value for key, value in values.items() if key in _ENRICHER_FIELDS}
    return EnricherMetrics(name=name, latency=_latency_from_dict(values.get("latency")), **known)


def _latency_from_dict(values: Mapping[str, Any] | None) -> LatencySummary:
    if not values:
        return LatencySummary()
    known = {k: v for k, v in values.items() if k in LatencySummary.__dataclass_fields__}
    if "buckets" in known:
        known["buckets"] = tuple(known["buckets"])
    return LatencySummary(**known)


def parse_exposition(text: str) -> tuple[MetricsSnapshot, dict[str, float]]:
    """enrichlog's metrics in a Prometheus text exposition, as a
    :class:`MetricsSnapshot`, and each enricher's timeout.

    Percentiles are read from the histogram buckets.

    Raises:
        EnricherConfigError: prometheus-client (the parser) is missing.
        EnrichlogError: the text holds none of enrichlog's metrics.
    """
    try:
        from prometheus_client.parser import (  # noqa: PLC0415 - optional extra
            text_string_to_metric_families,
        )
    except ImportError as exc:
        raise EnricherConfigError(_MISSING_PARSER) from exc
    try:
        families = {
            family.name: family
            for family in text_string_to_metric_families(text)
            if family.name.startswith("enrichlog_")
        }
    except ValueError as exc:
        raise EnrichlogError(f"not a Prometheus exposition: {printable(str(exc))}") from None
    if "enrichlog_events" not in families:
        raise EnrichlogError("the exposition holds no enrichlog metrics (enrichlog_events_total)")
    try:
        return _Exposition(families).snapshot()
    except (ValueError, TypeError, OverflowError) as exc:  # a bucket's 'le' that is no number
        raise EnrichlogError(f"not enrichlog's metrics: {printable(str(exc))}") from None


#: Larger counts than any process makes; beyond it int() and formatting
#: get slow or fail.
_LARGEST = 1e18


class _Exposition:
    """Samples of the parsed families, looked up by name and labels."""

    def __init__(self, families: Mapping[str, Metric]) -> None:
        self._samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in families.values():
            for sample in family.samples:
                if not math.isfinite(sample.value) or abs(sample.value) > _LARGEST:
                    # enrichlog exposes counts and seconds, never NaN or +Inf.
                    raise EnrichlogError(
                        f"not enrichlog's metrics: {printable(sample.name)} has the value "
                        f"{sample.value}, expected a finite number below 1e18"
                    )
                self._samples.setdefault(sample.name, []).append((sample.labels, sample.value))

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` that carry ``labels``."""
        return sum(
            value
            for found, value in self._samples.get(name, ())
            if all(found.get(key) == wanted for key, wanted in labels.items())
        )

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """The samples of ``name`` by the value of ``label``."""
        values: dict[str, float] = {}
        for found, value in self._samples.get(name, ()):
            if label in found and all(found.get(k) == v for k, v in labels.items()):
                values[found[label]] = values.get(found[label], 0.0) + value
        return values

    def latency(self, name: str, **labels: str) -> LatencySummary:
        """A histogram's buckets as a :class:`LatencySummary`."""
        cumulative: dict[float, float] = {}
        for found, value in self._samples.get(f"{name}_bucket", ()):
            if all(found.get(k) == v for k, v in labels.items()) and "le" in found:
                cumulative[float(found["le"])] = value
        if not cumulative:
            return LatencySummary()
        counts: list[int] = []
        below = 0.0
        for bound in (*BUCKETS, math.inf):
            reached = cumulative.get(bound, below)
            counts.append(round(reached - below))
            below = reached
        histogram = LatencyHistogram()
        histogram.counts = counts
        histogram.sum = self.value(f"{name}_sum", **labels)
        # The exact maximum is not exposed: the top of the highest bucket used.
        used = [index for index, count in enumerate(counts) if count]
        histogram.max = BUCKETS[min(used[-1], len(BUCKETS) - 1)] if used else 0.0
        return histogram.summary()

    def snapshot(self) -> tuple[MetricsSnapshot, dict[str, float]]:
        events = self.by("enrichlog_events_total", "result")
        names = set(self.by("enrichlog_enricher_calls_total", "enricher"))
        enrichers = {name: self._enricher(name) for name in sorted(names)}
        snapshot = MetricsSnapshot(
            delivery="unknown",
            handed_off=int(self.value("enrichlog_events_handed_off_total")),
            written=int(events.get("written", 0)),
            write_failed=int(events.get("write_failed", 0)),
            dropped=int(events.get("dropped", 0)),
            dropped_by_kind={
                kind: int(count)
                for kind, count in self.by("enrichlog_events_dropped_total", "kind").items()
            },
            filtered=int(events.get("filtered", 0)),
            pending=int(self.value("enrichlog_events_pending")),
            abandoned=sum(metrics.abandoned for metrics in enrichers.values()),
            render_fallbacks=int(self.value("enrichlog_render_fallbacks_total")),
            queue_depth=int(self.value("enrichlog_queue_depth")),
            queue_high_water=int(self.value("enrichlog_queue_high_water")),
            queue_size=int(self.value("enrichlog_queue_size")),
            in_flight=int(self.value("enrichlog_in_flight")),
            enrichment_latency=self.latency("enrichlog_event_enrichment_seconds"),
            enricher_time=self.latency("enrichlog_event_enricher_seconds"),
            enrichers=enrichers,
            transport=self._part(
                "enrichlog_transport_events_total",
                queued="enrichlog_transport_queued",
                spool_bytes="enrichlog_transport_spool_bytes",
            ),
            worker=self._part(
                "enrichlog_worker_messages_total",
                in_flight="enrichlog_worker_in_flight",
                consumer_lag="enrichlog_worker_consumer_lag",
                ack_pending="enrichlog_worker_ack_pending",
            ),
        )
        return snapshot, self.by("enrichlog_enricher_timeout_seconds", "enricher")

    def _part(self, counter: str, **gauges: str) -> dict[str, int] | None:
        """A transport's or a worker's figures: the counter by ``result`` and
        the gauges there are (``None`` when the exposition has none)."""
        if counter not in self._samples:
            return None
        part = {result: int(count) for result, count in self.by(counter, "result").items()}
        for key, name in gauges.items():
            if name in self._samples:
                part[key] = int(self.value(name))
        return part

    def _enricher(self, name: str) -> EnricherMetrics:
        outcomes = self.by("enrichlog_enricher_calls_total", "outcome", enricher=name)
        cache = self.by("enrichlog_cache_requests_total", "result", enricher=name)
        latency = self.latency("enrichlog_enricher_duration_seconds", enricher=name)
        states = self.by("enrichlog_circuit_state", "enricher")
        failures = {reason: int(count) for reason, count in outcomes.items() if reason != "success"}
        return EnricherMetrics(
            name=name,
            calls=latency.count,
            successes=int(outcomes.get("success", 0)),
            failures=sum(failures.values()),
            failures_by_reason=failures,
            retries=int(self.value("enrichlog_enricher_retries_total", enricher=name)),
            abandoned=int(self.value("enrichlog_enricher_abandoned_total", enricher=name)),
            cache_hits=int(cache.get("hit", 0)),
            cache_misses=int(cache.get("miss", 0)),
            batch_calls=int(self.value("enrichlog_batch_calls_total", enricher=name)),
            batch_keys=int(self.value("enrichlog_batch_keys_total", enricher=name)),
            latency=latency,
            breaker=_STATES.get(int(states.get(name, 0)), "closed"),
            breaker_seconds=self.value("enrichlog_circuit_state_seconds", enricher=name),
            cache=(
                {"hits": int(cache.get("hit", 0)), "misses": int(cache.get("miss", 0))}
                if cache
                else None
            ),
        )


# -- what is shown ----------------------------------------------------------------


ENRICHER_COLUMNS = (
    "enricher",
    "calls",
    "calls/s",
    "success",
    "failures",
    "p50",
    "p95",
    "p99",
    "timeout",
    "cache hits",
    "breaker",
)


_RATE = ENRICHER_COLUMNS.index("calls/s")
_FAILURES = ENRICHER_COLUMNS.index("failures")
# Left-aligned columns: the names, the failures and the breaker.
_LEFT = frozenset({0, _FAILURES, len(ENRICHER_COLUMNS) - 1})


def _enricher_rows(stats: Stats, previous: Stats | None) -> list[tuple[str, ...]]:
    return [tuple(map(printable, row)) for row in _raw_enricher_rows(stats, previous)]


def _raw_enricher_rows(stats: Stats, previous: Stats | None) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    elapsed = stats.taken - previous.taken if previous is not None else 0.0
    for name, metrics in sorted(stats.snapshot.enrichers.items()):
        failed = {reason: n for reason, n in metrics.failures_by_reason.items() if n}
        outcomes = metrics.successes + sum(failed.values())
        before = previous.snapshot.enrichers.get(name) if previous is not None else None
        rate = "-"
        if before is not None and elapsed > 0:
            rate = f"{max(0, metrics.calls - before.calls) / elapsed:,.1f}"
        looked_up = metrics.cache_hits + metrics.cache_misses
        timeout = stats.timeouts.get(name)
        rows.append(
            (
                name,
                f"{metrics.calls:,}",
                rate,
                f"{100 * metrics.successes / outcomes:.1f}%" if outcomes else "-",
                ", ".join(f"{_reason(r)} {n:,}" for r, n in _ordered(failed)) or "-",
                _duration(metrics.latency.p50, metrics.latency.count),
                _duration(metrics.latency.p95, metrics.latency.count),
                _duration(metrics.latency.p99, metrics.latency.count),
                "-" if timeout is None else _duration(timeout, 1),
                (
                    f"{100 * metrics.cache_hits / looked_up:.1f}%"
                    if metrics.cache is not None and looked_up
                    else "-"
                ),
                _breaker(metrics),
            )
        )
    return rows


def _ordered(failed: Mapping[str, int]) -> list[tuple[str, int]]:
    order = {reason: index for index, reason in enumerate(FAILURE_REASONS)}
    return sorted(failed.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))


def _reason(reason: str) -> str:
    return reason.replace("_", " ")


def _breaker(metrics: EnricherMetrics) -> str:
    if metrics.breaker == "closed":
        return "closed"
    return f"{metrics.breaker.replace('_', '-')} {_seconds(metrics.breaker_seconds)}"


def _duration(seconds: float, count: int) -> str:
    if not count:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _pipeline_rows(stats: Stats, previous: Stats | None) -> list[tuple[str, str]]:
    s = stats.snapshot
    elapsed = stats.taken - previous.taken if previous is not None else 0.0
    written = f"{s.written:,}"
    if previous is not None and elapsed > 0:
        written += f" ({max(0, s.written - previous.snapshot.written) / elapsed:,.1f}/s)"
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(s.dropped_by_kind.items()) if n)
    rows = [
        ("written", written),
        ("dropped", f"{s.dropped:,}" + (f" ({kinds})" if kinds else "")),
        ("write failed", f"{s.write_failed:,}"),
        ("filtered", f"{s.filtered:,}"),
        ("pending", f"{s.pending:,}"),
        (
            "queue",
            f"{s.queue_depth:,} of {s.queue_size:,}"
            + (f" ({100 * s.queue_depth / s.queue_size:.0f}%)" if s.queue_size else "")
            + f", high water {s.queue_high_water:,}",
        ),
        ("in flight", f"{s.in_flight:,}"),
        ("enrichment per event", _percentiles(s.enrichment_latency)),
        ("enricher time per event", _percentiles(s.enricher_time)),
    ]
    if s.enricher_time.sum > 0:
        saved = 1.0 - s.enrichment_latency.sum / s.enricher_time.sum
        if saved >= 0:
            rows.append(("concurrency saved", f"{100 * saved:.0f}% of enricher time"))
        else:
            # Events waited longer than their calls took: for concurrency
            # slots, or for a loop too busy to start them.
            rows.append(
                (
                    "waiting added",
                    f"{-100 * saved:.0f}% to enricher time (calls waited for a "
                    "concurrency slot or a busy loop)",
                )
            )
    if s.transport is not None:
        t = s.transport
        rows.append(
            (
                "transport",
                f"published {t.get('published', 0):,}, spooled {t.get('spooled', 0):,}, "
                f"spool dropped {t.get('spool_dropped', 0):,}, rejected {t.get('rejected', 0):,}, "
                f"truncated {t.get('truncated', 0):,}, queued {t.get('queued', 0):,}",
            )
        )
    if s.worker is not None:
        w = s.worker
        lag = w.get("consumer_lag")
        rows.append(
            (
                "worker",
                f"consumed {w.get('consumed', 0):,}, acknowledged {w.get('acknowledged', 0):,}, "
                f"nacked {w.get('nacked', 0):,}, dead-lettered {w.get('dead_lettered', 0):,}, "
                f"lag {'-' if lag is None else f'{lag:,}'}",
            )
        )
    if stats.delivery is not None:
        rows.insert(0, ("delivery", stats.delivery))
    return [(label, printable(value)) for label, value in rows]


def _percentiles(latency: LatencySummary) -> str:
    if not latency.count:
        return "-"
    return (
        f"p50 {_duration(latency.p50, 1)}  p95 {_duration(latency.p95, 1)}  "
        f"p99 {_duration(latency.p99, 1)}  ({latency.count:,} events)"
    )


def render_text(stats: Stats, previous: Stats | None = None, source: str = "") -> str:
    """The snapshot as plain text: the enricher table, then the pipeline
    (rates only when there is a ``previous`` reading)."""
    rows = [ENRICHER_COLUMNS, *_enricher_rows(stats, previous)]
    shown = [i for i in range(len(ENRICHER_COLUMNS)) if previous is not None or i != _RATE]
    widths = {i: max(len(row[i]) for row in rows) for i in shown}
    lines = [f"enrichlog stats{f' ({printable(source)})' if source else ''}", ""]
    for row in rows:
        cells = [row[i].ljust(widths[i]) if i in _LEFT else row[i].rjust(widths[i]) for i in shown]
        lines.append("  ".join(cells).rstrip())
    if len(rows) == 1:
        lines.append("(no async enricher)")
    lines.append("")
    pipeline = _pipeline_rows(stats, previous)
    label_width = max(len(label) for label, _ in pipeline)
    lines.extend(f"{label.ljust(label_width)}  {value}" for label, value in pipeline)
    return "\n".join(lines) + "\n"


def render_rich(stats: Stats, previous: Stats | None = None, source: str = "") -> RenderableType:
    """The snapshot as rich tables (extra ``stats``).

    Raises:
        EnricherConfigError: rich is not installed.
    """
    try:
        from rich.console import Group  # noqa: PLC0415 - optional extra
        from rich.table import Table  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415
    except ImportError as exc:
        raise EnricherConfigError(_MISSING_RICH) from exc

    enrichers = Table(title="enrichers", title_justify="left", expand=False)
    for index, column in enumerate(ENRICHER_COLUMNS):
        enrichers.add_column(
            column, justify="left" if index in _LEFT else "right", no_wrap=index != _FAILURES
        )
    for row in _enricher_rows(stats, previous):
        style = {"closed": "green", "half-open": "yellow"}.get(row[-1].split(" ")[0], "bold red")
        failures = Text(row[4], style="red" if row[4] != "-" else "")
        # Text, not str: rich would read '[red]' in a name as its markup.
        enrichers.add_row(
            *map(Text, row[:4]), failures, *map(Text, row[5:-1]), Text(row[-1], style=style)
        )
    pipeline = Table(title="pipeline", title_justify="left", show_header=False, expand=False)
    pipeline.add_column("what", style="bold")
    pipeline.add_column("value")
    s = stats.snapshot
    alarming = {"dropped": s.dropped, "write failed": s.write_failed}
    for label, value in _pipeline_rows(stats, previous):
        pipeline.add_row(label, Text(value, style="red" if alarming.get(label) else ""))
    heading = Text(f"enrichlog stats{f' ({printable(source)})' if source else ''}", style="bold")
    return Group(heading, enrichers, pipeline)


# -- the command ---------------------------------------------------------------------


def run_stats(
    url: str | None,
    file: Path | None,
    *,
    interval: float = 2.0,
    once: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    console: Console | None = None,
    refreshes: int | None = None,
) -> int:
    """Show the metrics at ``url`` or in ``file``; the exit status.

    Plain text, once, when ``once`` is set or ``out`` is not a terminal;
    otherwise a live table refreshed every ``interval`` seconds until
    interrupted (or ``refreshes`` times). 1 when the source cannot be read
    or an extra is missing (said on ``err``).
    """
    out, err = out or sys.stdout, err or sys.stderr
    source = mask_uri(url) if url is not None else str(file)  # never the URL's secrets
    try:
        stats = read_stats(url, file)
        if once or not out.isatty():
            out.write(render_text(stats, source=source))
            return 0
        _live(url, file, stats, interval, source, console, refreshes)
    except EnrichlogError as exc:
        print(f"error: {exc}", file=err)
        return 1
    return 0


def _live(
    url: str | None,
    file: Path | None,
    stats: Stats,
    interval: float,
    source: str,
    console: Console | None,
    refreshes: int | None,
) -> None:
    render_rich(stats, source=source)  # says which extra is missing, before the screen
    from rich.console import Group  # noqa: PLC0415 - optional extra, present (above)
    from rich.live import Live  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    previous: Stats | None = None
    problem = ""
    with Live(render_rich(stats, source=source), console=console, auto_refresh=False) as live:
        try:
            for _ in _count(refreshes):
                time.sleep(interval)
                try:
                    previous, stats = stats, read_stats(url, file)
                    problem = ""
                except EnrichlogError as exc:
                    problem = f"{exc} (showing the last reading)"
                table = render_rich(stats, previous, source)
                shown = Group(table, Text(problem, style="bold red")) if problem else table
                live.update(shown, refresh=True)
        except KeyboardInterrupt:
            return


def _count(limit: int | None) -> Iterable[int]:
    index = 0
    while limit is None or index < limit:
        yield index
        index += 1


#: The longest ``--interval``: longer cannot be slept (1e300 overflows).
MAX_INTERVAL = 86400.0


def _interval(text: str) -> float:
    """``--interval``: seconds, more than 0 and at most :data:`MAX_INTERVAL`."""
    seconds = positive_seconds(text)
    if seconds > MAX_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_INTERVAL:.0f} seconds (a day), not {text!r}"
        )
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``stats`` subcommand's options, on an argparse parser."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="a metrics endpoint, e.g. http://127.0.0.1:9464/metrics")
    source.add_argument(
        "--file", type=Path, help="a JSON snapshot: container.metrics().as_dict(), json.dump'ed"
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=2.0,
        help="seconds between refreshes (default 2, at most a day)",
    )
    parser.add_argument(
        "--once", action="store_true", help="print one snapshot as plain text, then exit"
    )
