"""ASGI integration: request context, a lifespan, and a health endpoint.

Pure ASGI, no framework dependency; works with FastAPI, Starlette, Quart,
Litestar or a bare ASGI app under any server::

    from fastapi import FastAPI
    from enrichlog.asgi import RequestContextMiddleware, health_app, lifespan

    app = FastAPI(lifespan=lifespan(enrichers=["redis-lookup://...?key=user:{user_id}"]))
    app.add_middleware(RequestContextMiddleware)
    app.add_route("/health", health_app())

* :class:`RequestContextMiddleware` binds ``request_id``, ``method``, ``path``
  and ``client`` to structlog's contextvars for each HTTP request, echoes
  the request id in the response, and logs one access event per request.
* :func:`lifespan` configures logging on the application's own event loop
  when the application starts, and drains and shuts it down when it stops.
* :func:`health_app` answers the enrichers' health as JSON: 200 when every
  enricher is available, 503 otherwise.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    MutableMapping,
)
from typing import Any

import structlog

from .container import LoggingContainer, _enricher_list, configure_logging, current_container
from .exceptions import EnricherConfigError
from .settings import LoggingSettings, require_settings, resolve_settings, unknown_settings

__all__ = ["HealthApp", "RequestContextMiddleware", "health_app", "lifespan"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: What a lifespan yields: ``None``, or the state Starlette and FastAPI
#: copy into each request's ``request.state``.
LifespanState = Mapping[str, Any] | None
#: The application's own lifespan: either kind fits.
AppLifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[LifespanState]]
#: The lifespan :func:`lifespan` returns. It yields what the application's
#: lifespan yields, so it is typed ``Any``: Starlette types a lifespan as
#: yielding ``None`` or as yielding a ``Mapping``, and accepts neither for
#: one that yields ``Mapping | None``.
Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]

#: The longest request id taken from a request header; a longer one, or one
#: with characters outside printable ASCII, is replaced by a generated id.
MAX_REQUEST_ID_LENGTH = 200


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and all(" " < c <= "~" for c in value)


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    if client:
        return str(client[0])
    return None


class RequestContextMiddleware:
    """Binds the request's context for its log lines and logs its access event.

    For each HTTP request, ``request_id`` (the request's ``header`` when it
    holds a printable id of at most 200 characters, else a new
    ``uuid4().hex``), ``method``, ``path`` and ``client`` (the peer's
    address) are bound to structlog's contextvars while the application
    handles it, and unbound afterwards: every line logged for the request
    carries them, lines enriched later in the background included (the
    context is copied at the log call). The response gets the request id in
    ``header`` (unless the application set that header itself), in a
    start message of its own: the application's message is never changed
    (it may send the same one for every request).

    When the application returns, one access event is logged: ``event``
    (default ``"request"``) with ``status`` and ``duration_ms``, at ``info``,
    and the four request fields passed with it (an endpoint that cleared
    structlog's context does not take them off the access line).
    When it raises, the event is logged at ``error`` with ``status`` 500
    (or the status already sent, if the response had started) and the
    exception, and the exception is re-raised. WebSocket and lifespan scopes
    pass through untouched.

    Args:
        app: the ASGI application.
        header: the request and response header of the request id.
        access_log: log the access event (``False``: only bind the context).
        event: the access event's ``event``.
        logger_name: the name of the logger of the access events (so that
            ``levels={"access": "warning"}`` can silence them).
    """

    def __init__(
        self,
        app: ASGIApp,
        header: str = "x-request-id",
        *,
        access_log: bool = True,
        event: str = "request",
        logger_name: str = "access",
    ) -> None:
        self.app = app
        self.header = _header_name(header).lower()
        for option, value in (("event", event), ("logger_name", logger_name)):
            if not isinstance(value, str) or not value:
                raise EnricherConfigError(
                    f"RequestContextMiddleware: {option} must be a non-empty string, not "
                    f"{_shown(value)}"
                )
        self._header_bytes = self.header.encode("latin-1")
        self.access_log = access_log
        self.event = event
        self._log = structlog.get_logger(logger_name)

    def _request_id(self, scope: Scope) -> str:
        for name, value in scope.get("headers") or ():
            if name.lower() == self._header_bytes:
                candidate = str(value.decode("latin-1")).strip()
                if _valid_request_id(candidate):
                    return candidate
                break
        return uuid.uuid4().hex

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self._request_id(scope)
        request = {
            "request_id": request_id,
            "method": scope.get("method"),
            "path": scope.get("path"),
            "client": _client(scope),
        }
        status: int | None = None
        header = (self._header_bytes, request_id.encode("latin-1"))

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers") or ())
                if not any(name.lower() == self._header_bytes for name, _ in headers):
                    headers.append(header)
                # A message of its own, never the application's changed in
                # place: an application that sends one prebuilt start
                # message would otherwise carry this request's id into the
                # next response, where it looks like a header it set itself.
                message = {**message, "headers": headers}
            await send(message)

        # The whole structlog context as it was before the request is put
        # back after it: what the endpoint bound (``bind_contextvars``) must
        # not leak into the next request where requests share a context (a
        # server or a test client that runs them in the caller's task).
        before = structlog.contextvars.get_contextvars()
        structlog.contextvars.bind_contextvars(**request)
        # The access event passes the request's fields itself: the endpoint
        # may have cleared the context (``clear_contextvars()`` at the start
        # of a request, as structlog's docs suggest) in this same task. What
        # it bound is merged from the context as before; the call's own
        # fields win over the context's.
        try:
            started = time.perf_counter()
            try:
                await self.app(scope, receive, send_with_request_id)
            except BaseException as exc:
                if self.access_log:
                    self._log.error(
                        self.event,
                        status=500 if status is None else status,
                        duration_ms=_elapsed_ms(started),
                        exc_info=exc,
                        **request,
                    )
                raise
            if self.access_log:
                self._log.info(
                    self.event,
                    status=500 if status is None else status,
                    duration_ms=_elapsed_ms(started),
                    **request,
                )
        finally:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(**before)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


def _shown(value: object) -> str:
    return (
        f"{value!r}"
        if isinstance(value, str | bytes) and len(value) <= 60
        else type(value).__name__
    )


#: An HTTP field name (RFC 9110's token): anything else is refused by the
#: server when the middleware echoes it, and every response fails.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def _header_name(header: object) -> str:
    if not isinstance(header, str) or not _TOKEN.match(header):
        raise EnricherConfigError(
            f"RequestContextMiddleware: header must be an HTTP header name (letters, digits "
            f"and !#$%&'*+-.^_`|~, no spaces), not {_shown(header)}"
        )
    return header


def lifespan(
    enrichers: Iterable[object] | None = None,
    *,
    settings: LoggingSettings | None = None,
    app_lifespan: AppLifespan | None = None,
    **overrides: Any,
) -> Lifespan:
    """A lifespan for ``FastAPI(lifespan=...)``, Starlette and other
    frameworks that take ``app -> async context manager``.

    When the application starts, logging is configured as
    ``configure_logging(enrichers, settings, **overrides)`` would, on the
    application's own event loop: ``runtime="loop"`` unless the arguments
    or the environment (``ENRICHLOG_RUNTIME``) choose otherwise. The
    enrichers' start-up is awaited without blocking the loop, and the
    container is set as ``app.state.enrichlog`` when the application has a
    ``state``. When the application stops, pending events are drained on
    the loop and the container is shut down.

    Args:
        enrichers: enrichers in code, as for :func:`configure_logging`.
        settings: as for :func:`configure_logging`.
        app_lifespan: the application's own lifespan, entered once logging
            is up (its start-up logs are enriched) and left before logging
            shuts down. What it yields is yielded on (Starlette's lifespan
            state, ``request.state``).
        overrides: ``LoggingSettings`` fields (``stdlib=True``...).

    Raises:
        EnricherConfigError: an unknown setting, or ``enrichers`` that is
            not a list of enrichers, at once; anything else invalid when the
            application starts.
    """
    unknown_settings(overrides)
    require_settings(settings)
    # As configure_logging() checks it, but at once: a lone URI string would
    # otherwise be listed as one "URI" per character, and fail at start-up.
    listed = None if enrichers is None else list(_enricher_list(enrichers))

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[LifespanState]:
        container = configure_logging(listed, settings=_on_the_loop(settings, overrides))
        try:
            await container.astartup()
            state = getattr(app, "state", None)
            if state is not None:
                with contextlib.suppress(Exception):
                    state.enrichlog = container
            if app_lifespan is None:
                yield None
            else:
                async with app_lifespan(app) as app_state:
                    yield app_state
        finally:
            await container.ashutdown()

    return run


def _on_the_loop(settings: LoggingSettings | None, overrides: Mapping[str, Any]) -> LoggingSettings:
    """``settings`` with ``overrides``, and ``runtime="loop"`` unless the
    arguments or the environment chose a runtime.

    Whether one was chosen is decided before the overrides are merged: a
    merged model has every field set (``resolve_settings`` validates a full
    copy), so ``settings=LoggingSettings(...)`` with any keyword would look
    as if it chose the default ``runtime="thread"``. Given settings chose
    one when it is among their fields set (the environment's included);
    without settings, the environment's ``ENRICHLOG_RUNTIME`` shows in the
    fields set of the model read from it.
    """
    if "runtime" in overrides:
        return resolve_settings(settings, overrides)
    if settings is None:
        resolved = resolve_settings(None, overrides)
        if "runtime" in resolved.model_fields_set:
            return resolved
        # Read again with the runtime, not ``resolved`` revalidated: the
        # settings' own error is raised once, not wrapped in a second
        # "invalid logging settings" (event_loop="uvloop" with the loop).
        return resolve_settings(None, {**overrides, "runtime": "loop"})
    if "runtime" in settings.model_fields_set:
        return resolve_settings(settings, overrides)
    return resolve_settings(settings, {**overrides, "runtime": "loop"})


class HealthApp:
    """The ASGI app :func:`health_app` returns."""

    __slots__ = ("container",)

    def __init__(self, container: LoggingContainer | None = None) -> None:
        #: The container reported on; ``None``: whichever is current.
        self.container = container

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request (or a lifespan, when served on its own)."""
        if scope["type"] == "lifespan":  # served on its own: nothing to start
            while True:
                message = await receive()
                kind = message["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        if scope.get("method") not in {"GET", "HEAD"}:
            await _respond(send, 405, {"error": "method not allowed"}, head=False)
            return
        current = self.container or current_container()
        if current is None or not current.running:
            await _respond(send, 503, {"error": "logging is not configured"}, scope)
            return
        health = current.health()
        ready = all(view.get("available") for view in health.values())
        await _respond(send, 200 if ready else 503, health, scope)


def health_app(container: LoggingContainer | None = None) -> HealthApp:
    """An ASGI app that answers ``GET`` (and ``HEAD``) with the enrichers'
    health as JSON, for readiness probes; it answers at any path, so route
    or mount it where you like (``app.add_route("/health", health_app())``
    answers ``/health`` itself; ``app.mount("/health", ...)`` answers
    ``/health/``).

    The body is :meth:`LoggingContainer.health` (per enricher: started,
    healthy, available, breaker, last error). Status 200 when every
    enricher is available, 503 otherwise, or when no container runs.

    Args:
        container: the container to report on; ``None``: whichever is
            current at each request.
    """
    return HealthApp(container)


async def _respond(
    send: Send, status: int, body: Any, scope: Scope | None = None, *, head: bool | None = None
) -> None:
    payload = json.dumps(body, default=str, sort_keys=True).encode()
    if head is None:
        head = scope is not None and scope.get("method") == "HEAD"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else payload})
