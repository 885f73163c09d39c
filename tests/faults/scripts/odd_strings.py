"""Case 2: lone surrogates and odd keys through every renderer.

argv: output path, format (json, logfmt, console), path (``background``:
an async enricher, queued; ``inline``: an async enricher, the caller waits;
``caller``: sync enrichers only, structlog renders on the calling thread).

Each event is logged once; a sync enricher adds the odd key or value the
event names (so non-string keys reach the renderer the way an enricher would
put them there). Summary: logged, raised, lines, written, render_fallbacks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _harness import arg, count_lines, plain, summary

from enrichlog import AsyncEnricher, SyncEnricher, configure_logging, get_logger

output, fmt, path = arg(1), arg(2, "json"), arg(3, "inline")
SURROGATE = b"caf\xe9".decode("utf-8", "surrogateescape")

#: message -> the fields an enricher adds (any key, any value).
ODD: dict[str, dict[Any, Any]] = {
    "surrogate value": {"v": SURROGATE},
    "surrogate key": {SURROGATE: 1},
    "surrogate nested": {"v": {"k": [SURROGATE], SURROGATE: SURROGATE}},
    "key with space": {"a key": 1},
    "key with equals": {"a=b": 1},
    "key with quote": {'a"b': 1},
    "key with backslash": {"a\\b": 1},
    "empty key": {"": 1},
    "int key": {1: "one"},
    "tuple key": {(1, 2): "pair"},
    "none key": {None: "none"},
    "mixed keys": {1: "one", "b": 2, (3,): "t"},
    "bytes value": {"v": b"\xff\xfe"},
    "nan": {"v": float("nan")},
    "huge int": {"v": 10**40},
    "set value": {"v": {1, 2}},
    "object value": {"v": object()},
    "cyclic value": {},  # filled below
}
cycle: list[Any] = []
cycle.append(cycle)
ODD["cyclic value"] = {"v": cycle}


class AddOdd(SyncEnricher):
    name = "odd"

    def enrich(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict.update(ODD.get(event_dict["event"], {}))
        return event_dict


class Passes(AsyncEnricher):
    """An async enricher, so that the event is handed to the runtime."""

    name = "passes"

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(0)
        event_dict["passed"] = True
        return event_dict


enrichers: list[Any] = [AddOdd()]
if path != "caller":
    enrichers.append(Passes())
container = configure_logging(
    enrichers=enrichers,
    output=output,
    format=fmt,
    delivery="background" if path == "background" else "inline",
)
log = get_logger()

messages = [*ODD, SURROGATE]  # the surrogate as the message itself too
raised = 0
for message in messages:
    try:
        log.info(message)
    except Exception:
        raised += 1

flushed = container.flush(10)
metrics = plain(container.metrics())
report = container.shutdown()
summary(
    logged=len(messages),
    raised=raised,
    flushed=flushed,
    lines=count_lines(output),
    written=report["written"],
    render_fallbacks=metrics["render_fallbacks"],
    report=dict(report),
)
