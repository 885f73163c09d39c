"""Async usage, the way a FastAPI or aiohttp service would log.

A tiny line-based TCP server on 127.0.0.1 (asyncio only, no web framework)
handles concurrent requests. Each handler binds a request id with
structlog's contextvars and logs with ``await log.ainfo(...)``: the
handler awaits its own line, while the server's event loop keeps serving
other requests and enrichment runs on enrichlog's own loop. Run it::

    python examples/fastapi_style.py

Eight requests, each needing two 40 ms lookups, finish in about the time
of one lookup: the two enrichers of a level run concurrently, and so do the
requests.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Hashable

import structlog
from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, configure_logging, get_logger

LOOKUP_SECONDS = 0.04


class AccountEnricher(AsyncEnricher):
    """Adds ``account`` for ``user_id`` (a simulated account service)."""

    name = "account"
    timeout = 0.5

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict.get("user_id")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        if "user_id" in event_dict:
            await asyncio.sleep(LOOKUP_SECONDS)
            event_dict["account"] = f"acct-{event_dict['user_id']:04d}"
        return event_dict


class GeoEnricher(AsyncEnricher):
    """Adds ``country`` for the client address (a simulated GeoIP lookup)."""

    name = "geo"
    timeout = 0.5

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(LOOKUP_SECONDS)
        event_dict["country"] = "NL" if event_dict.get("client", "").startswith("127.") else "??"
        return event_dict


log = get_logger("api")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One request per connection: ``<user_id> <path>``."""
    line = (await reader.readline()).decode().strip()
    user_id, path = line.split(" ", 1)
    client = writer.get_extra_info("peername")[0]
    # Bound here, visible in this request's lines (and to the enrichers).
    structlog.contextvars.bind_contextvars(request_id=uuid.uuid4().hex[:8], client=client)
    started = time.perf_counter()
    await log.ainfo("request", path=path, user_id=int(user_id))
    status = 404 if path.endswith("/missing") else 200
    writer.write(f"{status}\n".encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await log.ainfo(
        "response",
        status=status,
        user_id=int(user_id),
        ms=round((time.perf_counter() - started) * 1000, 1),
    )


async def request(port: int, user_id: int, path: str) -> str:
    """A client: send one request, return the status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{user_id} {path}\n".encode())
    await writer.drain()
    status = (await reader.readline()).decode().strip()
    writer.close()
    await writer.wait_closed()
    return status


async def main() -> None:
    # Like a FastAPI lifespan handler: configure at startup, drain at shutdown.
    container = configure_logging(enrichers=[AccountEnricher(), GeoEnricher()])
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.perf_counter()
    async with server:
        statuses = await asyncio.gather(
            *(request(port, user_id, f"/orders/{user_id}") for user_id in range(1, 8)),
            request(port, 99, "/orders/missing"),
        )
    elapsed = time.perf_counter() - started
    await container.ashutdown()
    codes = ", ".join(sorted(set(statuses)))
    print(f"{len(statuses)} requests (status {codes}) in {elapsed * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
