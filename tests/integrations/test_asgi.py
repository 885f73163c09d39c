"""``enrichlog.asgi``: the request-context middleware, the lifespan and the
health app, as pure ASGI (called in-process) and under FastAPI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Hashable
from typing import Any

import httpx
import pytest
import structlog
from structlog.typing import EventDict, WrappedLogger

from enrichlog import AsyncEnricher, EnricherConfigError, LoggingSettings, get_logger
from enrichlog.asgi import RequestContextMiddleware, health_app, lifespan
from enrichlog.container import configure_logging, current_container
from enrichlog.testing import LineSink, capture_events

Message = dict[str, Any]


class Echo(AsyncEnricher):
    """Copies the request id it sees (so: the context reached the loop)
    after a short await."""

    name = "echo"
    timeout = 1.0

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        await asyncio.sleep(0.005)
        event_dict["seen_request_id"] = event_dict.get("request_id")
        return event_dict


class Broken(AsyncEnricher):
    """Never starts."""

    name = "broken"

    async def _startup(self) -> None:
        raise ConnectionRefusedError("no backend")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        return event_dict


async def call(
    app: Any,
    path: str = "/",
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    kind: str = "http",
    state: dict[str, Any] | None = None,
) -> tuple[int | None, dict[bytes, bytes], bytes]:
    """One request to ``app``: (status, response headers, body)."""
    scope: dict[str, Any] = {
        "type": kind,
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": headers or [],
        "client": ("10.1.2.3", 5555),
    }
    if state is not None:  # the lifespan's state, as a server passes it
        scope["state"] = state
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    if start is None:
        return None, {}, body
    return start["status"], dict(start.get("headers", [])), body


def endpoint(status: int = 200, *, log_event: str | None = "handled") -> Any:
    """A tiny ASGI app that logs one line and answers ``status``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if log_event is not None:
            get_logger("app").info(log_event)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


# -- the middleware --------------------------------------------------------------------


async def test_request_lines_carry_the_request_context_and_the_access_event() -> None:
    sink = LineSink()
    async with configure_logging(output=sink, runtime="loop", enrichers=[Echo()]):
        app = RequestContextMiddleware(endpoint())
        async with capture_events() as events:
            status, headers, _ = await call(
                app, "/orders/7", headers=[(b"x-request-id", b"req-123")]
            )

    assert 200 == status
    assert b"req-123" == headers[b"x-request-id"]
    handled, access = events
    context = {"request_id": "req-123", "method": "GET", "path": "/orders/7", "client": "10.1.2.3"}
    assert context.items() <= handled.items()
    assert context.items() <= access.items()
    # Enriched in the background, on the loop: the enricher saw the context too.
    assert "req-123" == handled["seen_request_id"] == access["seen_request_id"]
    assert ("handled", "app") == (handled["event"], handled["logger"])
    assert ("request", "access", "info", 200) == (
        access["event"],
        access["logger"],
        access["level"],
        access["status"],
    )
    assert isinstance(access["duration_ms"], float)
    assert access["duration_ms"] >= 0
    assert 2 == len(sink.events())


async def test_a_request_without_the_header_gets_a_generated_id() -> None:
    async with configure_logging(output=LineSink(), runtime="loop"):
        app = RequestContextMiddleware(endpoint())
        async with capture_events() as events:
            _, headers, _ = await call(app)
            _, other_headers, _ = await call(app, headers=[(b"x-request-id", b"bad id\x01")])

    generated = headers[b"x-request-id"].decode()
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    replaced = other_headers[b"x-request-id"].decode()
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)
    assert generated != replaced
    assert [generated, generated, replaced, replaced] == [e["request_id"] for e in events]


async def test_a_custom_header_and_a_header_the_app_set_itself() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 201, "headers": [(b"x-trace", b"mine")]}
        )
        await send({"type": "http.response.body", "body": b""})

    async with configure_logging(output=LineSink(), runtime="loop"):
        wrapped = RequestContextMiddleware(app, header="X-Trace")
        async with capture_events() as events:
            status, headers, _ = await call(wrapped, headers=[(b"x-trace", b"abc")])

    assert (201, b"mine") == (status, headers[b"x-trace"])
    assert "abc" == events[0]["request_id"]


async def test_concurrent_requests_keep_their_own_context_and_nothing_leaks() -> None:
    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        get_logger("app").info("before")
        await asyncio.sleep(0.01)
        get_logger("app").info("after")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with configure_logging(output=LineSink(), runtime="loop", enrichers=[Echo()]):
        app = RequestContextMiddleware(slow)
        async with capture_events() as events:
            await asyncio.gather(
                *(
                    call(app, f"/r/{i}", headers=[(b"x-request-id", f"id-{i}".encode())])
                    for i in range(20)
                )
            )
        assert {} == structlog.contextvars.get_contextvars()

    assert 60 == len(events)
    for event in events:
        number = event["request_id"].removeprefix("id-")
        assert f"/r/{number}" == event["path"]
        assert event["request_id"] == event["seen_request_id"]


async def test_what_an_endpoint_binds_does_not_leak_into_the_next_request() -> None:
    # Requests run one after the other in the caller's task (a test client
    # such as httpx.ASGITransport does): what the first endpoint binds stays
    # in its own lines and leaves with it.
    async def login(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/login":
            structlog.contextvars.bind_contextvars(user_id="alice")
        get_logger("app").info("handled")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    structlog.contextvars.bind_contextvars(deployment="blue")  # the caller's own
    try:
        async with configure_logging(output=LineSink(), runtime="loop", enrichers=[Echo()]):
            app = RequestContextMiddleware(login)
            async with capture_events() as events:
                await call(app, "/login")
                await call(app, "/public")
            left = structlog.contextvars.get_contextvars()
    finally:
        structlog.contextvars.clear_contextvars()

    assert {"deployment": "blue"} == left
    assert [("/login", "alice"), ("/login", "alice"), ("/public", None), ("/public", None)] == [
        (event["path"], event.get("user_id")) for event in events
    ]


async def test_an_exception_logs_status_500_and_is_reraised() -> None:
    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async with configure_logging(output=LineSink(), runtime="loop"):
        app = RequestContextMiddleware(failing)
        async with capture_events() as events:
            with pytest.raises(RuntimeError, match="boom"):
                await call(app, headers=[(b"x-request-id", b"r1")])
        assert {} == structlog.contextvars.get_contextvars()

    (access,) = events
    assert ("request", "error", 500, "r1") == (
        access["event"],
        access["level"],
        access["status"],
        access["request_id"],
    )
    assert RuntimeError is access["exc_info"][0]


async def test_the_applications_start_message_is_never_changed() -> None:
    # Found by an outside tester: the header was added into the application's
    # own start message, so an application that sends one prebuilt message
    # echoed the first request's id to every later request (the middleware
    # took its own leftover header for one the application set itself).
    start = {"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]}
    body = {"type": "http.response.body", "body": b"ok"}

    async def constant(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(start)
        await send(body)

    async with configure_logging(output=LineSink(), runtime="loop"):
        app = RequestContextMiddleware(constant)
        echoed = [
            (await call(app, headers=[(b"x-request-id", rid)]))[1][b"x-request-id"]
            for rid in (b"one", b"two", b"three")
        ]

    assert [b"one", b"two", b"three"] == echoed
    assert {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"x-app", b"1")],
    } == start


async def test_the_access_line_keeps_the_request_fields_when_the_endpoint_clears_the_context() -> (
    None
):
    # Found by an outside tester: an endpoint that called
    # structlog.contextvars.clear_contextvars() (as structlog's docs suggest
    # per request) took request_id, method, path and client off the access
    # line, which took them from the context only.
    async def clearing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(user_id=7)
        if scope["path"] == "/fail":
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with configure_logging(output=LineSink(), runtime="loop"):
        app = RequestContextMiddleware(clearing)
        async with capture_events() as events:
            await call(app, "/ok", headers=[(b"x-request-id", b"r1")])
            with pytest.raises(RuntimeError, match="boom"):
                await call(app, "/fail", headers=[(b"x-request-id", b"r2")])
        assert {} == structlog.contextvars.get_contextvars()

    ok, failed = events
    for access, request_id, path, level in (
        (ok, "r1", "/ok", "info"),
        (failed, "r2", "/fail", "error"),
    ):
        assert {
            "event": "request",
            "level": level,
            "request_id": request_id,
            "method": "GET",
            "path": path,
            "client": "10.1.2.3",
            "user_id": 7,  # what the endpoint bound, as before
        }.items() <= access.items()


async def test_websocket_and_lifespan_scopes_pass_through_untouched() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append({"type": scope["type"], "context": structlog.contextvars.get_contextvars()})

    async with configure_logging(output=LineSink(), runtime="loop"):
        wrapped = RequestContextMiddleware(app)
        async with capture_events() as events:
            await call(wrapped, kind="websocket")
            await call(wrapped, kind="lifespan")

    assert [{"type": "websocket", "context": {}}, {"type": "lifespan", "context": {}}] == seen
    assert [] == events


async def test_the_access_log_can_be_silenced_by_level_or_turned_off() -> None:
    async with configure_logging(output=LineSink(), runtime="loop", levels={"access": "warning"}):
        async with capture_events() as events:
            await call(RequestContextMiddleware(endpoint()))
            await call(RequestContextMiddleware(endpoint(), access_log=False))

    assert ["handled", "handled"] == [event["event"] for event in events]


# -- the lifespan ------------------------------------------------------------------------


class State:
    """What Starlette's ``app.state`` is, as far as the lifespan is concerned."""


class AppWithState:
    def __init__(self) -> None:
        self.state = State()


async def test_lifespan_configures_on_the_loop_and_shuts_down_with_the_app() -> None:
    app = AppWithState()
    sink = LineSink()
    async with lifespan(enrichers=[Echo()], output=sink)(app):
        container = current_container()
        assert container is not None
        assert container is app.state.enrichlog  # type: ignore[attr-defined]
        assert "loop" == container.settings.runtime
        assert container.health()["echo"]["available"]  # started, awaited
        get_logger().info("inside", request_id="r")
    assert not container.running
    assert current_container() is None
    (line,) = sink.events()
    assert "r" == line["seen_request_id"]  # drained at shutdown, enriched


async def test_lifespan_needs_no_state_and_honours_runtime_from_arguments_or_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with lifespan(output=LineSink(), runtime="thread")(object()):
        container = current_container()
        assert container is not None
        assert "thread" == container.settings.runtime
    monkeypatch.setenv("ENRICHLOG_RUNTIME", "thread")
    async with lifespan(output=LineSink())(object()):
        container = current_container()
        assert container is not None
        assert "thread" == container.settings.runtime
    settings = LoggingSettings(level="debug")
    async with lifespan(settings=settings, output=LineSink())(object()):
        container = current_container()
        assert container is not None
        assert ("thread", "debug") == (container.settings.runtime, container.settings.level)


async def test_lifespan_with_settings_and_keywords_still_runs_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by an outside tester: lifespan(settings=LoggingSettings(...),
    # stdlib=True) ran runtime="thread": the merged settings have every field
    # set, so the runtime looked chosen. It is decided before merging now.
    monkeypatch.delenv("ENRICHLOG_RUNTIME", raising=False)
    async with lifespan(settings=LoggingSettings(level="debug"), output=LineSink())(object()):
        container = current_container()
        assert container is not None
        assert ("loop", "debug") == (container.settings.runtime, container.settings.level)
    chosen = LoggingSettings(runtime="thread")
    async with lifespan(settings=chosen, output=LineSink())(object()):
        container = current_container()
        assert container is not None
        assert "thread" == container.settings.runtime


async def test_an_invalid_setting_at_start_up_is_reported_once() -> None:
    # Found by an outside tester: event_loop="uvloop" (valid for the thread
    # runtime, not for the loop the lifespan chooses) failed with its prefix
    # twice: "invalid logging settings: settings: invalid logging settings:
    # settings: ...", the lifespan revalidating settings it had resolved.
    pytest.importorskip("uvloop")
    with pytest.raises(EnricherConfigError) as raised:
        async with lifespan(output=LineSink(), event_loop="uvloop")(object()):
            pass

    message = str(raised.value)
    assert "event_loop='uvloop' applies to runtime='thread' only" in message
    assert 1 == message.count("invalid logging settings")


async def test_lifespan_wraps_the_applications_own_lifespan() -> None:
    order: list[str] = []

    @contextlib.asynccontextmanager
    async def own(app: Any) -> AsyncIterator[None]:
        order.append(f"own start, logging up: {current_container() is not None}")
        yield
        order.append(f"own stop, logging up: {current_container() is not None}")

    async with lifespan(output=LineSink(), app_lifespan=own)(object()):
        order.append("serving")

    assert [
        "own start, logging up: True",
        "serving",
        "own stop, logging up: True",
    ] == order


def test_lifespan_refuses_an_unknown_setting_at_once() -> None:
    with pytest.raises(EnricherConfigError, match="'levle'"):
        lifespan(levle="debug")


@pytest.mark.parametrize(("enrichers", "given"), [(5, "'int'"), ("static://?a=1", "'str'")])
def test_lifespan_refuses_enrichers_that_are_not_a_list_at_once(enrichers: Any, given: str) -> None:
    # Found by an outside tester: lifespan(5) raised a bare TypeError, and
    # lifespan("static://?a=1") listed the string as one URI per character and
    # failed only at start-up, on the URI 's'; configure_logging() names the
    # argument.
    with pytest.raises(EnricherConfigError, match=f"enrichers: expected a list .* got {given}"):
        lifespan(enrichers)


async def test_lifespan_yields_what_the_applications_own_lifespan_yields() -> None:
    # Found by an outside tester: the state the application's lifespan
    # yields (Starlette's and FastAPI's lifespan state, request.state.db) was
    # dropped: lifespan(app_lifespan=own) yielded None.
    @contextlib.asynccontextmanager
    async def own(app: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"db": "pool"}

    async with lifespan(output=LineSink(), app_lifespan=own)(object()) as state:
        assert {"db": "pool"} == state
    async with lifespan(output=LineSink())(object()) as state:
        assert state is None


async def test_fastapi_request_state_from_the_applications_own_lifespan() -> None:
    # Found by an outside tester: with lifespan(app_lifespan=own), the state
    # own yielded never reached request.state (None instead of the pool).
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @contextlib.asynccontextmanager
    async def own(app: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"db": "pool"}

    app = FastAPI(lifespan=lifespan(output=LineSink(), app_lifespan=own))

    async def root(request: Request) -> JSONResponse:
        return JSONResponse({"db": getattr(request.state, "db", None)})

    # A plain route: FastAPI cannot resolve a Request annotation imported here.
    app.add_route("/", root)

    # The lifespan protocol as a server runs it; then a request with a copy
    # of the lifespan's state in its scope, as a server gives each request.
    state: dict[str, Any] = {}
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    running = asyncio.create_task(
        app({"type": "lifespan", "state": state}, to_app.get, from_app.put)
    )
    await to_app.put({"type": "lifespan.startup"})
    assert "lifespan.startup.complete" == (await from_app.get())["type"]
    _, _, body = await call(app, state=dict(state))
    await to_app.put({"type": "lifespan.shutdown"})
    assert "lifespan.shutdown.complete" == (await from_app.get())["type"]
    await running

    assert {"db": "pool"} == json.loads(body)


# -- the health app ------------------------------------------------------------------------


async def test_health_app_answers_200_when_every_enricher_is_available() -> None:
    async with configure_logging(output=LineSink(), runtime="loop", enrichers=[Echo()]):
        status, headers, body = await call(health_app(), "/anything")
        head_status, _, head_body = await call(health_app(), method="HEAD")
        post_status, _, _ = await call(health_app(), method="POST")

    assert (200, b"application/json") == (status, headers[b"content-type"])
    assert json.loads(body)["echo"]["available"] is True
    assert (200, b"") == (head_status, head_body)
    assert 405 == post_status


async def test_health_app_answers_503_when_an_enricher_is_unavailable_or_nothing_runs() -> None:
    status, _, body = await call(health_app())
    assert (503, {"error": "logging is not configured"}) == (status, json.loads(body))

    async with configure_logging(output=LineSink(), runtime="loop", enrichers=[Echo(), Broken()]):
        container = current_container()
        status, _, body = await call(health_app(container))

    health = json.loads(body)
    assert 503 == status
    assert (True, False) == (health["echo"]["available"], health["broken"]["available"])
    assert "startup failed: ConnectionRefusedError" == health["broken"]["last_error"]


async def test_health_app_served_on_its_own_completes_the_lifespan() -> None:
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[Message] = []

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        sent.append(message)

    await health_app()({"type": "lifespan"}, receive, send)

    assert [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}] == sent


# -- under FastAPI, in-process ----------------------------------------------------------


class UserName(AsyncEnricher):
    """A lookup by ``user_id``, cached."""

    name = "user"
    timeout = 1.0

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        return event_dict.get("user_id")

    async def enrich_async(
        self, logger: WrappedLogger, method_name: str, event_dict: EventDict
    ) -> EventDict:
        if "user_id" in event_dict:
            await asyncio.sleep(0.002)
            event_dict["user_name"] = f"user-{event_dict['user_id']}"
        return event_dict


async def test_fastapi_app_with_the_middleware_lifespan_and_health_route() -> None:
    from fastapi import FastAPI

    sink = LineSink()
    app = FastAPI(lifespan=lifespan(enrichers=[UserName()], output=sink))
    app.add_middleware(RequestContextMiddleware)
    app.add_route("/health", health_app(), include_in_schema=False)

    @app.get("/users/{user_id}")
    async def read_user(user_id: int) -> dict[str, int]:
        structlog.contextvars.bind_contextvars(user_id=user_id)
        await get_logger("api").ainfo("user viewed")
        return {"user_id": user_id}

    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        assert current_container() is app.state.enrichlog
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            health = await client.get("/health")
            responses = await asyncio.gather(
                *(
                    client.get(f"/users/{i % 5}", headers={"x-request-id": f"r{i}"})
                    for i in range(50)
                )
            )

    assert 200 == health.status_code
    assert all(r.status_code == 200 for r in responses)
    assert [f"r{i}" for i in range(50)] == [r.headers["x-request-id"] for r in responses]
    by_request: dict[str, list[dict[str, Any]]] = {}
    for line in sink.events():
        by_request.setdefault(line.get("request_id", ""), []).append(line)
    for i in range(50):
        lines = by_request[f"r{i}"]
        assert {"user viewed", "request"} == {line["event"] for line in lines}
        assert all(line["user_name"] == f"user-{i % 5}" for line in lines), lines
        assert all("enrichment_errors" not in line for line in lines)


@pytest.mark.parametrize(
    ("arguments", "culprit"),
    [
        ({"header": "x request id"}, "header"),
        ({"header": ""}, "header"),
        ({"header": "X-R\u00e9"}, "header"),
        ({"header": None}, "header"),
        ({"header": b"x-request-id"}, "header"),
        ({"event": ""}, "event"),
        ({"logger_name": 3}, "logger_name"),
    ],
)
def test_the_middleware_refuses_a_header_name_no_server_would_send(
    arguments: dict[str, Any], culprit: str
) -> None:
    # Found by the seventeenth round: "x request id" was accepted, and under
    # uvicorn every response then failed (h11: Illegal header name); None
    # and bytes failed with an AttributeError that named nothing.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        del scope, receive, send

    with pytest.raises(EnricherConfigError, match=rf"RequestContextMiddleware: {culprit} must"):
        RequestContextMiddleware(app, **arguments)


@pytest.mark.parametrize("settings", ["level=debug", {"level": "debug"}])
def test_lifespan_refuses_settings_that_are_not_logging_settings_at_once(settings: Any) -> None:
    # Found by the seventeenth round: AttributeError ('str' object has no
    # attribute 'model_fields_set') when the application started.
    with pytest.raises(EnricherConfigError, match="settings: expected a LoggingSettings"):
        lifespan(settings=settings)
