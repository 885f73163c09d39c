"""Seeing the plan: what ``python -m enrichlog plan`` prints.

:func:`describe_plan` turns resolved levels of enrichers into a JSON-able
description, :func:`render_plan` writes it as a text table, JSON or a
Mermaid flowchart. The values shown come from
:meth:`~enrichlog.options.ResolvedOptions.for_enricher`, the same place the
runtime reads them, so the plan and the runtime cannot disagree.

URIs appear with their secrets masked (as the factory recorded them), and
the output setting passes through :func:`~enrichlog.uri.masking.mask_secrets`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..enricher import AsyncEnricher, Enricher, SyncEnricher
from ..options import ResolvedOptions
from ..settings import LoggingSettings
from ..uri.factory import EnricherFactory
from ..uri.masking import mask_secrets
from . import printable

__all__ = [
    "PlanFormat",
    "describe_plan",
    "enricher_kind",
    "render_plan",
]

PlanFormat = Literal["text", "json", "mermaid"]
"""The formats :func:`render_plan` writes."""


def enricher_kind(enricher: Enricher) -> Literal["async", "blocking", "sync"]:
    """How the runtime runs ``enricher``: awaited, in a worker thread, inline."""
    if isinstance(enricher, AsyncEnricher):
        return "async"
    if isinstance(enricher, SyncEnricher) and enricher.blocking:
        return "blocking"
    return "sync"


def _describe_enricher(enricher: Enricher, settings: LoggingSettings) -> dict[str, Any]:
    spec = EnricherFactory.spec_of(enricher)
    entry: dict[str, Any] = {
        "name": enricher.name,
        "kind": enricher_kind(enricher),
        "source": enricher.source,
        "uri": spec.uri if spec is not None else None,
        "dependencies": list(enricher.dependencies),
        "priority": enricher.priority,
        "provides": list(enricher.provides),
        # Sync enrichers run inline, unguarded: nothing below applies to
        # them, but a blocking one's worker thread is waited for only up to
        # the default timeout.
        "timeout": settings.enricher_timeout if enricher_kind(enricher) == "blocking" else None,
        "cache": None,
        "breaker": None,
        "retry": None,
        "max_concurrency": None,
        "batch": None,
    }
    if isinstance(enricher, AsyncEnricher):
        options = ResolvedOptions.for_enricher(enricher, settings)
        entry |= {
            "timeout": options.timeout,
            "cache": {
                "enabled": enricher.caches,
                "ttl": options.cache_ttl,
                "max_size": options.cache_max_size,
                "error_ttl": options.cache_error_ttl,
            },
            "breaker": {
                "failure_threshold": options.failure_threshold,
                "recovery_timeout": options.recovery_timeout,
                "half_open_max_calls": options.half_open_max_calls,
            },
            "retry": {
                "attempts": options.retry_attempts,
                "base_delay": options.retry_base_delay,
                "max_delay": options.retry_max_delay,
            },
            "max_concurrency": options.max_concurrency,
            "batch": (
                {"size": options.batch_size, "window": options.batch_window}
                if enricher.batches
                else None
            ),
        }
    return entry


def describe_plan(
    levels: Sequence[Sequence[Enricher]], settings: LoggingSettings
) -> dict[str, Any]:
    """Describe an execution plan as JSON-able data.

    Args:
        levels: the enrichers by dependency level, each level in run order.
        settings: supply the defaults and per-enricher overrides.

    Returns:
        ``{"delivery", "effective_delivery", "level", "format", "output",
        "error_field", "level_timeout", "levels": [{"level": i, "enrichers":
        [...]}]}``; each enricher has ``name``, ``kind``, ``source``,
        ``uri`` (masked, or ``None``), ``dependencies``, ``priority``,
        ``provides``, ``timeout``, ``cache``, ``breaker``, ``retry``,
        ``max_concurrency`` and ``batch`` (``None`` where it does not apply:
        ``batch`` is set for enrichers that define ``enrich_many``).

    Raises:
        EnricherConfigError: an async enricher's options cannot work
            (:meth:`~enrichlog.options.ResolvedOptions.for_enricher`).
    """
    runtime_enrichers = any(
        enricher_kind(enricher) != "sync" for level in levels for enricher in level
    )
    effective_delivery = settings.effective_delivery(runtime_enrichers=runtime_enrichers)
    return {
        "delivery": settings.delivery,
        "effective_delivery": effective_delivery,
        "level": settings.level,
        "format": settings.format,
        "output": mask_secrets(settings.output_name),
        "error_field": settings.error_field,
        "level_timeout": settings.level_timeout,
        "levels": [
            {
                "level": index,
                "enrichers": [_describe_enricher(e, settings) for e in level],
            }
            for index, level in enumerate(levels)
        ],
    }


def render_plan(description: Mapping[str, Any], fmt: PlanFormat = "text") -> str:
    """Write a :func:`describe_plan` result as ``text``, ``json`` or
    ``mermaid`` (a ``flowchart TD``).

    Raises:
        ValueError: ``fmt`` is none of those.
    """
    if fmt == "json":
        return json.dumps(description, indent=2)
    if fmt == "text":
        return _render_text(description)
    if fmt == "mermaid":
        return _render_mermaid(description)
    raise ValueError(f"unknown plan format {fmt!r}; expected text, json or mermaid")


# -- text --------------------------------------------------------------------

_COLUMNS = (
    "name",
    "kind",
    "source",
    "priority",
    "timeout",
    "cache",
    "breaker",
    "retry",
    "concurrency",
    "batch",
    "depends on",
    "uri",
)


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _text_row(entry: Mapping[str, Any]) -> list[str]:
    cache, breaker, retry = entry["cache"], entry["breaker"], entry["retry"]
    batch = entry.get("batch")
    if cache is None:
        cache_text = "-"
    elif cache["enabled"]:
        cache_text = f"ttl {_seconds(cache['ttl'])}, max {cache['max_size']}"
    else:
        cache_text = "off"
    cells = [
        entry["name"],
        entry["kind"],
        entry["source"],
        str(entry["priority"]),
        "-" if entry["timeout"] is None else _seconds(entry["timeout"]),
        cache_text,
        "-"
        if breaker is None
        else f"{breaker['failure_threshold']} fails, {_seconds(breaker['recovery_timeout'])}",
        "-" if retry is None else str(retry["attempts"]),
        "-" if entry["max_concurrency"] is None else str(entry["max_concurrency"]),
        "-" if batch is None else f"{batch['size']}, {_seconds(batch['window'])}",
        ", ".join(entry["dependencies"]) or "-",
        entry["uri"] or "-",
    ]
    # A URI or a name may hold a control character (a line break): escaped,
    # as it would break the table or act on the terminal.
    return [printable(cell) for cell in cells]


def _render_text(description: Mapping[str, Any]) -> str:
    delivery = description["delivery"]
    if delivery != description["effective_delivery"]:
        delivery = f"{delivery} ({description['effective_delivery']})"
    lines = [
        printable(
            f"delivery {delivery}, level {description['level']}, "
            f"format {description['format']}, output {description['output']}"
        )
    ]
    levels = description["levels"]
    if not levels:
        lines.append("no enrichers configured")
        return "\n".join(lines)
    rows = [list(_COLUMNS)] + [_text_row(entry) for level in levels for entry in level["enrichers"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines += ["", "  " + line(rows[0])]
    row_iter = iter(rows[1:])
    for level in levels:
        count = len(level["enrichers"])
        together = ", concurrently" if count > 1 else ""
        lines.append(f"level {level['level']} ({count} enricher{'s' * (count != 1)}{together})")
        lines.extend("  " + line(next(row_iter)) for _ in level["enrichers"])
    return "\n".join(lines)


# -- mermaid -----------------------------------------------------------------

_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_]")
_MERMAID_ESCAPES = {'"': "#quot;", "<": "#lt;", ">": "#gt;"}


def _mermaid_label(*lines: str) -> str:
    text = "<br/>".join(
        "".join(_MERMAID_ESCAPES.get(char, char) for char in printable(line)) for line in lines
    )
    return f'"{text}"'


def _node_ids(names: Sequence[str]) -> dict[str, str]:
    # Prefixed: Mermaid reserves words such as 'end' as node ids.
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        base = "e_" + _UNSAFE_ID.sub("_", name)
        node_id, suffix = base, 2
        while node_id in taken:
            node_id, suffix = f"{base}_{suffix}", suffix + 1
        ids[name] = node_id
        taken.add(node_id)
    return ids


def _mermaid_details(entry: Mapping[str, Any]) -> str:
    details = [entry["kind"], entry["source"]]
    if entry["timeout"] is not None:
        details.append(f"timeout {_seconds(entry['timeout'])}")
    if entry["cache"] is not None and entry["cache"]["enabled"]:
        details.append(f"cache {_seconds(entry['cache']['ttl'])}")
    if entry.get("batch") is not None:
        details.append(f"batch {entry['batch']['size']}")
    return " · ".join(details)


def _render_mermaid(description: Mapping[str, Any]) -> str:
    levels = description["levels"]
    entries = [entry for level in levels for entry in level["enrichers"]]
    ids = _node_ids([entry["name"] for entry in entries])
    lines = ["flowchart TD"]
    for level in levels:
        index = level["level"]
        lines.append(f'  subgraph level_{index}["level {index}"]')
        for entry in level["enrichers"]:
            label_lines = [entry["name"], _mermaid_details(entry)]
            if entry["uri"]:
                label_lines.append(entry["uri"])
            lines.append(f"    {ids[entry['name']]}[{_mermaid_label(*label_lines)}]")
        lines.append("  end")
    for entry in entries:
        for dependency in entry["dependencies"]:
            if dependency not in ids:
                # Not in the plan (the plan was built by hand): show it anyway.
                ids[dependency] = _node_ids([*ids, dependency])[dependency]
                lines.append(f"  {ids[dependency]}[{_mermaid_label(dependency + ' (missing)')}]")
            lines.append(f"  {ids[dependency]} --> {ids[entry['name']]}")
    return "\n".join(lines)
