"""Real servers for the integration tests: reachability checks that skip (or,
with ``ENRICHLOG_REQUIRE_SERVICES=1``, fail) a test whose server is down, a
TCP proxy that can cut a client off from a server and let it back, and a
small JSON HTTP server.

``ENRICHLOG_REQUIRE_SERVICES`` is read when this module is imported, at
collection: ``tests/conftest.py`` removes every ``ENRICHLOG_*`` variable
from the environment of each test, so a test could not see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import pytest

#: Fail instead of skip when a server is unreachable (CI sets it).
REQUIRE_SERVICES = os.environ.get("ENRICHLOG_REQUIRE_SERVICES", "").strip().lower() in {
    "1",
    "true",
    "yes",
}

PG_HOST = os.environ.get("ENRICHLOG_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("ENRICHLOG_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("ENRICHLOG_TEST_PG_USER", "postgres")
PG_DATABASE = os.environ.get("ENRICHLOG_TEST_PG_DATABASE", "test")
REDIS_HOST = os.environ.get("ENRICHLOG_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("ENRICHLOG_TEST_REDIS_PORT", "6379"))

#: How the machine starts each local server (its documented commands), for a
#: server found stopped under ``ENRICHLOG_REQUIRE_SERVICES=1``: a shared
#: server that something outside the run stopped would otherwise fail every
#: test after it. Each start is reported at the end of the run.
_START_COMMANDS: dict[tuple[str, int], str] = {
    ("127.0.0.1", 4222): "start-stop-daemon --start --oknodo --background"
    " --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js"
    " -sd /var/lib/nats-server -l /var/log/nats-server.log",
    ("127.0.0.1", 6379): 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save ""'
    " --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    ("127.0.0.1", 5432): "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
}

#: The servers this run found stopped and started again, with what it saw.
RESTARTED: list[str] = []

_unreachable: dict[tuple[str, int], str] = {}


def _probe(host: str, port: int) -> str | None:
    """``None`` if a TCP connection to ``host:port`` opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _start_again(service: str, host: str, port: int, problem: str) -> str | None:
    """Start a stopped local server with the machine's own command; ``None``
    once it answers, else why not."""
    command = _START_COMMANDS.get((host, port))
    if command is None:
        return problem
    started = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
    deadline = time.monotonic() + 30
    while (again := _probe(host, port)) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    if again is None:
        RESTARTED.append(f"{service} at {host}:{port} was down ({problem}); started it again")
        return None
    return f"{problem}; starting it again failed: {started.stderr.strip() or again}"


def require_service(service: str, host: str, port: int) -> None:
    """Skip the calling test when ``host:port`` does not accept connections
    (fail it under ``ENRICHLOG_REQUIRE_SERVICES=1``, after starting a stopped
    local server once with the machine's own command). Probed for each test:
    a connect costs well under a millisecond."""
    key = (host, port)
    problem = _unreachable.get(key) or _probe(host, port)
    if problem is not None and REQUIRE_SERVICES and key not in _unreachable:
        problem = _start_again(service, host, port, problem)
    if problem is None:
        return
    _unreachable[key] = problem
    reason = f"{service} is not reachable at {host}:{port} ({problem})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}; ENRICHLOG_REQUIRE_SERVICES=1 requires it")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- a TCP proxy -------------------------------------------------------------


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to a server, on its own thread and loop.

    :meth:`stop` closes the listening socket and every connection, as a
    server that goes away would; :meth:`start` listens again on the same
    port. Used to take a real server away from a client and give it back.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        #: While set, the server's replies are held back (a slow or broken
        #: network path): the connections stay open, nothing reaches the
        #: client.
        self.holding_replies = False

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        """Accept connections (again)."""
        self._call(self._start())

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    def stop(self) -> None:
        """Close the listener and cut every open connection."""
        self._call(self._stop())

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def close(self) -> None:
        """Stop, end the connections' tasks and the proxy's thread. (Tasks
        left pending on the closed loop were reported by asyncio as
        "destroyed but it is pending" whenever they were collected: in
        whichever later test that was, which read it as its own.)"""
        self.stop()
        self._call(self._end_tasks())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @staticmethod
    async def _end_tasks() -> None:
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, replies: bool = False
        ) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    while replies and self.holding_replies:
                        await asyncio.sleep(0.01)
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()
            self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer, replies=True))


@contextlib.contextmanager
def tcp_proxy(target_host: str, target_port: int) -> Iterator[TcpProxy]:
    """A started :class:`TcpProxy`, closed on exit."""
    proxy = TcpProxy(target_host, target_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


# -- a JSON HTTP server ------------------------------------------------------


@dataclass
class Request:
    """One request the HTTP backend received."""

    method: str
    raw_path: str
    headers: dict[str, str]


@dataclass
class Drip:
    """An answer body sent a byte at a time, ``interval`` seconds apart (a
    server that is slow, not silent: each read gets something)."""

    payload: bytes
    interval: float


@dataclass
class JsonBackend:
    """What :class:`HttpBackend` serves: ``GET /users/<id>`` answers
    ``users[id]`` (the segment percent-decoded, as a web framework routes),
    404 for an unknown id; ``/admin`` answers secrets (no lookup may reach
    it); ``/fail/<id>`` answers 500; ``/healthz`` answers 200. ``answer``
    may override a path's status and body."""

    users: dict[str, Any] = field(default_factory=dict)
    answer: Callable[[str], tuple[int, Any] | None] = lambda _path: None
    requests: list[Request] = field(default_factory=list)

    def route(self, raw_path: str) -> tuple[int, Any]:
        override = self.answer(raw_path)
        if override is not None:
            return override
        path = raw_path.split("?", 1)[0]
        segments = path.split("/")[1:]
        if segments == ["admin"]:
            return 200, {"secret": "the admin page"}
        if segments == ["healthz"]:
            return 200, {"ok": True}
        if len(segments) == 2 and segments[0] == "fail":
            return 500, {"error": "boom"}
        if len(segments) == 2 and segments[0] == "users":
            user = self.users.get(unquote(segments[1]))
            return (200, user) if user is not None else (404, {"error": "no such user"})
        return 404, {"error": "no such path"}


class HttpBackend:
    """A threaded HTTP/1.1 server (keep-alive) serving a :class:`JsonBackend`
    on a free local port. :meth:`stop` closes the listener and every open
    connection; :meth:`start` serves again on the same port."""

    def __init__(self, backend: JsonBackend | None = None) -> None:
        self.backend = backend or JsonBackend()
        self.port = free_port()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def requests(self) -> list[Request]:
        """Every request received so far, in order."""
        return self.backend.requests

    @property
    def open_connections(self) -> int:
        """Client connections open right now."""
        with self._lock:
            return len(self._connections)

    def start(self) -> None:
        """Serve (again, on the same port)."""
        backend, connections, lock = self.backend, self._connections, self._lock

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with lock:
                    connections.add(self.connection)

            def finish(self) -> None:
                with lock:
                    connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                with lock:
                    backend.requests.append(
                        Request("GET", self.path, {k.lower(): v for k, v in self.headers.items()})
                    )
                status, body = backend.route(self.path)
                drip = body if isinstance(body, Drip) else None
                if drip is not None:
                    body = drip.payload
                payload = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if drip is None:
                    self.wfile.write(payload)
                    return
                try:
                    for index in range(len(payload)):
                        self.wfile.write(payload[index : index + 1])
                        self.wfile.flush()
                        time.sleep(drip.interval)
                except OSError:
                    pass  # the client gave up

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest shows failures, not access logs

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut every open (keep-alive) connection."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            for connection in list(self._connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._connections.clear()
        self._server = None


# -- talking to the servers from tests ---------------------------------------


def run_async(coro: Any) -> Any:
    """Run ``coro`` to completion on a fresh loop in another thread (so it
    works from sync tests, fixtures and async tests alike)."""
    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    if error:
        raise error[0]
    return result[0]


def pg_fetch(query: str, *args: Any) -> list[Any]:
    """Run one query on a connection of its own (application_name
    ``enrichlog-tests``, so it is never counted as the enricher's)."""
    import asyncpg  # only the PostgreSQL tests need it

    async def fetch() -> list[Any]:
        connection = await asyncpg.connect(
            host=PG_HOST,
            port=PG_PORT,
            user=PG_USER,
            database=PG_DATABASE,
            server_settings={"application_name": "enrichlog-tests"},
        )
        try:
            return list(await connection.fetch(query, *args))
        finally:
            await connection.close()

    rows: list[Any] = run_async(fetch())
    return rows


def redis_client() -> Any:
    """A sync redis-py client for arranging and inspecting test data."""
    import redis  # only the Redis tests need it

    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, decode_responses=True)
