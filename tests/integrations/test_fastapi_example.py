"""``examples/fastapi_app.py`` under a real uvicorn server, against real
PostgreSQL and Redis: 200 concurrent requests, each of whose lines carries
its own request id and the user's row and preferences."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import (
    PG_DATABASE,
    PG_HOST,
    PG_PORT,
    PG_USER,
    REDIS_HOST,
    REDIS_PORT,
    free_port,
    pg_fetch,
    redis_client,
)

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "fastapi_app.py"
USERS = 20
REQUESTS = 200


@pytest.fixture
def users_table(pg_uri: str) -> Iterator[str]:
    """A fresh users table (id, name, email) with :data:`USERS` rows."""
    table = f"enrichlog_test_{uuid.uuid4().hex[:12]}"
    pg_fetch(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, email text)")
    pg_fetch(
        f"INSERT INTO {table} SELECT i, 'name-' || i, 'user' || i || '@example.com' "
        f"FROM generate_series(1, {USERS}) AS i"
    )
    try:
        yield table
    finally:
        pg_fetch(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture
def user_prefs(redis_prefix: str) -> str:
    """A preferences hash per user under the test's key prefix."""
    client = redis_client()
    try:
        for user_id in range(1, USERS + 1):
            client.hset(
                f"{redis_prefix}prefs:{user_id}",
                mapping={"theme": "dark" if user_id % 2 else "light", "n": str(user_id)},
            )
    finally:
        client.close()
    return redis_prefix


class Served:
    """The example running under uvicorn: its URL, its output file, and how
    to stop it."""

    def __init__(self, process: subprocess.Popen[str], base: str, output: Path) -> None:
        self.process = process
        self.base = base
        self.output = output

    def stop(self) -> int:
        """SIGINT, as Ctrl-C: uvicorn shuts down, the lifespan drains the
        lines; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def server(users_table: str, user_prefs: str, tmp_path: Path) -> Iterator[Served]:
    """The example, served by uvicorn in a process of its own (a free port);
    its JSON lines go to a file."""
    port = free_port()
    output = tmp_path / "app.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICHLOG_")}
    env.update(
        EXAMPLE_PG=f"{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}",
        EXAMPLE_REDIS=f"{REDIS_HOST}:{REDIS_PORT}/0",
        EXAMPLE_USERS_TABLE=users_table,
        EXAMPLE_REDIS_PREFIX=user_prefs,
        ENRICHLOG_OUTPUT=str(output),
    )
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "serve", "--port", str(port), "--no-seed"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    served = Served(process, base, output)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                assert process.stdout is not None
                pytest.fail(
                    f"the example exited with {process.returncode}: {process.stdout.read()}"
                )
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the example did not become healthy within 30 s")
            time.sleep(0.05)
        yield served
    finally:
        served.stop()


async def send_requests(base: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def one(k: int) -> httpx.Response:
            # Every other request brings its own id; the rest get one generated.
            headers = {"x-request-id": f"req-{k}"} if k % 2 == 0 else {}
            return await client.get(f"/users/{k % USERS + 1}", headers=headers)

        return await asyncio.gather(*(one(k) for k in range(REQUESTS)))


@pytest.mark.slow
@pytest.mark.services
def test_every_request_line_carries_its_id_and_the_enriched_fields(server: Served) -> None:
    health = httpx.get(f"{server.base}/health").json()
    responses = asyncio.run(send_requests(server.base))
    assert 0 == server.stop()  # drained: every line is written

    assert {"user", "prefs"} == set(health)
    assert all(view["available"] for view in health.values())
    assert [200] * REQUESTS == [r.status_code for r in responses]
    request_ids = [r.headers["x-request-id"] for r in responses]
    assert [f"req-{k}" for k in range(0, REQUESTS, 2)] == request_ids[::2]
    assert REQUESTS == len(set(request_ids))

    lines = [json.loads(line) for line in server.output.read_text().splitlines()]
    by_request: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if "request_id" in line:
            by_request.setdefault(line["request_id"], []).append(line)
    for k, request_id in enumerate(request_ids):
        user_id = k % USERS + 1
        request_lines = by_request.pop(request_id)
        assert {("example", "user viewed"), ("access", "request")} == {
            (line["logger"], line["event"]) for line in request_lines
        }
        for line in request_lines:
            assert "enrichment_errors" not in line, line
            assert (f"/users/{user_id}", user_id) == (line["path"], line["user_id"])
            assert {"name": f"name-{user_id}", "email": f"user{user_id}@example.com"} == line[
                "user"
            ]
            assert {"theme": "dark" if user_id % 2 else "light", "n": str(user_id)} == line["prefs"]
    # The health probes' own lines, and nothing else with a request id.
    assert all(line["path"] == "/health" for rest in by_request.values() for line in rest)
    # uvicorn's own logs came through the stdlib bridge; its access log is silenced.
    loggers = {line.get("logger") for line in lines}
    assert "uvicorn.error" in loggers
    assert "uvicorn.access" not in loggers
