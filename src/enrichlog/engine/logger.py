"""The bound logger class enrichlog installs.

structlog's filtering bound logger, with ``a*`` methods that do not hop to
an executor thread: they run the cheap pre-processors on the caller and
await the event's enrichment and writing on the runtime loop, without
blocking the caller's loop. Filtered-out levels stay a bare ``return None``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from structlog._log_levels import LEVEL_TO_NAME

from .processor import ASYNC_WAITER

__all__ = ["make_bound_logger_class"]


def _interpolate(event: str, args: tuple[Any, ...]) -> str:
    # Same rules as structlog's own positional-argument interpolation.
    if not args:
        return event
    if len(args) == 1 and isinstance(args[0], dict) and args[0]:
        return event % args[0]
    return event % args


async def _log_and_wait(self: Any, name: str, event: str | None, kw: dict[str, Any]) -> None:
    waiters: list[tuple[asyncio.Future[None], float]] = []
    token = ASYNC_WAITER.set(waiters)
    try:
        self._proxy_to_logger(name, event, **kw)
    finally:
        ASYNC_WAITER.reset(token)
    if waiters:
        future, bound = waiters[0]
        # Bounded like an inline caller's wait; past it the event stays
        # queued and is written later, and the caller moves on.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), bound)


def _make_async_method(name: str) -> Callable[..., Coroutine[Any, Any, None]]:
    async def ameth(self: Any, event: str, *args: Any, **kw: Any) -> None:
        await _log_and_wait(self, name, _interpolate(event, args), kw)

    ameth.__name__ = f"a{name}"
    ameth.__doc__ = f"Log at {name} level; await enrichment without blocking the loop."
    return ameth


def make_bound_logger_class(min_level: int) -> type[Any]:
    """A ``FilteringBoundLogger`` class for ``min_level`` with runtime-aware
    async methods."""
    base: type[Any] = structlog.make_filtering_bound_logger(min_level)
    methods: dict[str, Any] = {}
    for level, name in LEVEL_TO_NAME.items():
        if level >= min_level:
            methods[f"a{name}"] = _make_async_method(name)

    async def alog(self: Any, level: int, event: str, *args: Any, **kw: Any) -> None:
        if level < min_level:
            return
        await _log_and_wait(self, LEVEL_TO_NAME[level], _interpolate(event, args), kw)

    async def aexception(self: Any, event: str, *args: Any, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        if methods.get("aerror") is not None:
            await methods["aerror"](self, event, *args, **kw)

    methods["alog"] = alog
    methods["aexception"] = aexception
    for alias, target in (("afatal", "acritical"), ("awarn", "awarning"), ("amsg", "ainfo")):
        if target in methods:
            methods[alias] = methods[target]
    return type("EnrichlogBoundLogger", (base,), methods)
