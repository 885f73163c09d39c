"""A FastAPI service whose log lines carry the user's row from PostgreSQL and
their preferences from Redis, looked up by enrichlog, not by the handlers.

* ``lifespan`` configures logging on the application's own event loop (the
  lookups' connection pools live there) and drains it at shutdown;
* ``RequestContextMiddleware`` gives every line of a request its
  ``request_id``, ``method``, ``path`` and ``client``, echoes the request id
  in ``x-request-id`` and logs one access line per request;
* ``stdlib=True`` routes uvicorn's own logs through the same output
  (``uvicorn.access`` is silenced by ``levels``: the middleware logs access);
* ``/health`` answers 200 once both lookups are available, 503 otherwise.

Needs PostgreSQL (127.0.0.1:5432, user ``postgres``, database ``test``) and
Redis (127.0.0.1:6379); ``EXAMPLE_PG`` and ``EXAMPLE_REDIS`` point elsewhere
(``user:password@host:port/database``, ``host:port/db``). Run it::

    python examples/fastapi_app.py              # demo: serve, send requests, print the lines
    python examples/fastapi_app.py serve        # serve on 127.0.0.1:8000 until Ctrl-C
    curl -H 'x-request-id: abc' localhost:8000/users/1

The demo creates its table (``EXAMPLE_USERS_TABLE``, default
``enrichlog_example_users``) and Redis hashes (under ``EXAMPLE_REDIS_PREFIX``)
and removes them again; ``serve`` creates them if missing (``--no-seed``:
not at all) and leaves them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI

from enrichlog import LoggingSettings, get_logger
from enrichlog.asgi import RequestContextMiddleware, health_app, lifespan

PG = os.environ.get("EXAMPLE_PG", "postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("EXAMPLE_REDIS", "127.0.0.1:6379/0")
USERS_TABLE = os.environ.get("EXAMPLE_USERS_TABLE", "enrichlog_example_users")
REDIS_PREFIX = os.environ.get("EXAMPLE_REDIS_PREFIX", "enrichlog_example:")

#: Users of the demo: id -> (name, email) in PostgreSQL, preferences in Redis.
USERS = {
    1: ("ann", "ann@example.com", {"theme": "dark", "lang": "en"}),
    2: ("bob", "bob@example.com", {"theme": "light", "lang": "nl"}),
    3: ("cid", "cid@example.com", {"theme": "dark", "lang": "fr"}),
}

ENRICHERS = [
    # SELECT name, email FROM <table> WHERE id = <the event's user_id> -> "user": {...}
    f"postgres-lookup://{PG}?table={USERS_TABLE}&from=user_id&columns=name,email"
    "&into=user&name=user&ttl=30",
    # HGETALL <prefix>prefs:<user_id> -> "prefs": {...}
    f"redis-lookup://{REDIS}?key={REDIS_PREFIX}prefs:{{user_id}}&into=prefs&name=prefs&ttl=30",
]

log = get_logger("example")

app = FastAPI(
    title="enrichlog example",
    lifespan=lifespan(
        settings=LoggingSettings(
            enrichers=ENRICHERS, stdlib=True, levels={"uvicorn.access": "warning"}
        )
    ),
)
app.add_middleware(RequestContextMiddleware)
app.add_route("/health", health_app(), include_in_schema=False)


@app.get("/users/{user_id}")
async def read_user(user_id: int) -> dict[str, Any]:
    """One user's page; its lines get the user's row and preferences."""
    # Bound for the rest of this request: the access line carries it too.
    structlog.contextvars.bind_contextvars(user_id=user_id)
    log.info("user viewed")  # returns at once; the lookups happen on the loop
    return {"user_id": user_id}


# -- demo data ------------------------------------------------------------------------


async def seed() -> None:
    """Create the users table and the Redis hashes (idempotent)."""
    import asyncpg  # noqa: PLC0415 - only the demo data needs the clients directly
    import redis.asyncio as aioredis  # noqa: PLC0415

    connection = await asyncpg.connect(f"postgresql://{PG}")
    try:
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {USERS_TABLE} (id int PRIMARY KEY, name text, email text)"
        )
        await connection.executemany(
            f"INSERT INTO {USERS_TABLE} VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            [(user_id, name, email) for user_id, (name, email, _) in USERS.items()],
        )
    finally:
        await connection.close()
    client = aioredis.Redis.from_url(f"redis://{REDIS}", decode_responses=True)
    try:
        for user_id, (_, _, prefs) in USERS.items():
            await client.hset(f"{REDIS_PREFIX}prefs:{user_id}", mapping=prefs)
    finally:
        await client.aclose()


async def unseed() -> None:
    """Drop what :func:`seed` created."""
    import asyncpg  # noqa: PLC0415
    import redis.asyncio as aioredis  # noqa: PLC0415

    connection = await asyncpg.connect(f"postgresql://{PG}")
    try:
        await connection.execute(f"DROP TABLE IF EXISTS {USERS_TABLE}")
    finally:
        await connection.close()
    client = aioredis.Redis.from_url(f"redis://{REDIS}", decode_responses=True)
    try:
        await client.delete(*(f"{REDIS_PREFIX}prefs:{user_id}" for user_id in USERS))
    finally:
        await client.aclose()


# -- running it -----------------------------------------------------------------------


def serve(host: str, port: int) -> None:
    """Serve until interrupted. ``log_config=None``: uvicorn's loggers keep
    their records for the root logger, where enrichlog's bridge takes them."""
    uvicorn.run(app, host=host, port=port, log_config=None, lifespan="on")


async def demo() -> None:
    """Serve on a free port, send a few concurrent requests, stop, clean up."""
    import httpx  # noqa: PLC0415 - the client side of the demo only

    await seed()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()  # start-up failed: raise why
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = await client.get("/health")
            responses = await asyncio.gather(
                *(client.get(f"/users/{user_id}") for user_id in (1, 2, 3, 1, 2, 3))
            )
    finally:
        server.should_exit = True
        await serving
        await unseed()
    statuses = sorted({response.status_code for response in responses})
    print(
        f"health {health.status_code}; {len(responses)} requests, status {statuses}",
        file=sys.stderr,
    )


def main() -> None:
    """``serve`` or the demo (no arguments)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=["serve"], help="serve until Ctrl-C")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-seed", action="store_true", help="serve: create no demo data")
    args = parser.parse_args()
    if args.command == "serve":
        if not args.no_seed:
            asyncio.run(seed())
        serve(args.host, args.port)
    else:
        asyncio.run(demo())


if __name__ == "__main__":
    main()
