"""``http-lookup://``: add fields of a JSON answer to each event.

::

    http-lookup://users.internal:8080/users/{user_id}?into=user&fields=name,tier
        &auth_env=USERS_API_TOKEN

sends ``GET http://users.internal:8080/users/<user_id>`` with
``Authorization: Bearer $USERS_API_TOKEN`` and adds
``{"user": {"name": ..., "tier": ...}}``. Built on one pooled httpx
``AsyncClient`` (the ``http`` extra) opened in ``_startup`` on the runtime
loop. Template values are percent-encoded as a whole path segment. See
``docs/integrations/http.md``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from structlog.typing import EventDict

from ..enricher import shortly_before
from ..exceptions import EnricherConfigError
from ..options import NotABool
from ..uri.params import CommaSeparated
from ._lookup import (
    DEFAULT_MAX_KEY_LENGTH,
    IntoField,
    KeyTemplate,
    LookupEnricher,
    require_module,
)

__all__ = ["HttpLookupEnricher"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# RFC 9110 token: what a header name may be.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Characters the template's own text may keep as they are; '?' and '#' in it
# are encoded, so the template stays a path.
_TEMPLATE_SAFE = "/:@!$&'()*+,;=-._~%"
#: Answers that mean "no such key": nothing is added, no error.
_MISSING_STATUS = frozenset({404, 410})
_TRANSIENT_STATUS = frozenset({502, 503, 504})
_CLOSE_TIMEOUT = 5.0

_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False), NotABool]


class HttpLookupEnricher(LookupEnricher):
    """Adds the JSON answer of ``GET <path with event fields>``:
    ``http-lookup://host:port/users/{user_id}?into=user&fields=name,tier``.

    The answer (a JSON object, or only its ``fields``) goes under ``into``,
    or into the event itself when ``into`` is not given; keys the event
    already has are kept. Each ``{field}`` of the path is replaced by the
    event's value percent-encoded as a whole segment, so a value cannot add
    segments or leave the path (``../admin`` is sent as ``..%2Fadmin``).

    An event that lacks a template field is not looked up, and a 404 or 410
    answer adds nothing; neither is an error. Any other answer that is not a
    2xx (a 5xx, a 401, a redirect), a connection error or a body that is not
    JSON fails the lookup.

    Credentials never come from the URI: ``auth_env`` names an environment
    variable whose value is sent as ``Authorization: Bearer <value>`` (or in
    the header ``auth_header``, prefixed by ``auth_scheme``).
    """

    scheme = "http-lookup"

    class Params(BaseModel):
        """Parameters of ``http-lookup://``."""

        model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

        host: str
        port: Annotated[int, Field(ge=1, le=65535), NotABool] | None = None
        path: str = "/"
        scheme: Literal["http", "https"] = "http"
        into: IntoField | None = None
        fields: CommaSeparated = ()
        auth_env: str | None = None
        auth_header: str = "Authorization"
        auth_scheme: str = "Bearer"
        connect_timeout: _Seconds = 2.0
        read_timeout: _Seconds = 5.0
        max_connections: Annotated[int, Field(ge=1), NotABool] = 10
        health_path: str | None = None
        max_key_length: Annotated[int, Field(ge=1), NotABool] = DEFAULT_MAX_KEY_LENGTH

        @field_validator("path")
        @classmethod
        def _path_template(cls, value: str) -> str:
            KeyTemplate.parse(value)  # raises on a malformed template
            return value

        @field_validator("auth_env")
        @classmethod
        def _env_name(cls, value: str | None) -> str | None:
            if value is not None and not _ENV_NAME.match(value):
                raise ValueError(f"auth_env {value!r} is not an environment variable name")
            return value

        @field_validator("auth_header")
        @classmethod
        def _header_name(cls, value: str) -> str:
            if not _HEADER_NAME.match(value):
                # Not echoed: a rejected value may be a misplaced secret.
                raise ValueError("auth_header is not a header name (letters, digits, '-'...)")
            return value

        @field_validator("auth_scheme")
        @classmethod
        def _auth_scheme(cls, value: str) -> str:
            if value and not _HEADER_NAME.match(value):
                raise ValueError("auth_scheme is not a single word such as Bearer")
            return value

        @field_validator("health_path")
        @classmethod
        def _health_path(cls, value: str | None) -> str | None:
            if value is not None and not value.startswith("/"):
                raise ValueError(f"health_path {value!r} must start with '/'")
            return value

        @model_validator(mode="after")
        def _consistent(self) -> HttpLookupEnricher.Params:
            if not self.path.startswith("/"):
                raise ValueError(f"path {self.path!r} must start with '/'")
            return self

        @property
        def base_url(self) -> str:
            """``scheme://host:port``, the host bracketed when it is IPv6."""
            host = f"[{self.host}]" if ":" in self.host else self.host
            port = f":{self.port}" if self.port is not None else ""
            return f"{self.scheme}://{host}{port}"

    def __init__(
        self,
        *,
        params: HttpLookupEnricher.Params,
        name: str | None = None,
        dependencies: str | Iterable[str] | None = None,
        priority: int | None = None,
        max_concurrency: int | None = None,
        **options: Any,
    ) -> None:
        self.params = params
        provides: tuple[str, ...] = (params.into,) if params.into else params.fields
        super().__init__(
            into=params.into,
            pool_size=params.max_connections,
            name=name,
            dependencies=dependencies,
            priority=priority,
            provides=provides,
            max_concurrency=max_concurrency,
            **options,
        )
        self._httpx = require_module("httpx", "http", self.name)
        # The template's own text is encoded once, here; event values per key.
        template = KeyTemplate.parse(params.path)
        self.template = KeyTemplate(
            template.text,
            tuple(quote(literal, safe=_TEMPLATE_SAFE) for literal in template.literals),
            template.placeholders,
            template.fields,
        )
        if params.auth_env is not None:
            self._token()  # refused at configure time, naming the variable
        self._client: Any = None
        #: One per connection: a request's deadline starts once it has one.
        self._slots: asyncio.Semaphore | None = None

    # -- lifecycle ---------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        params = self.params
        headers = {"Accept": "application/json", "User-Agent": "enrichlog"}
        if params.auth_env is not None:
            # Read at each start, so a restarted (or forked) enricher sends
            # the current credentials.
            token = self._token()
            scheme = params.auth_scheme
            headers[params.auth_header] = f"{scheme} {token}" if scheme else token
        return headers

    def _token(self) -> str:
        """The value of the ``auth_env`` variable, which must be usable in a
        header: set, not blank, printable ASCII (never shown in errors).

        Raises:
            EnricherConfigError: naming the variable, not its value.
        """
        name = self.params.auth_env
        token = os.environ.get(name) if name is not None else None
        if token is None:
            raise EnricherConfigError(
                f"enricher {self.name!r}: the environment variable {name!r} named by "
                "auth_env is not set"
            )
        if (
            not token.strip()
            or token != token.strip()
            or not all(" " <= char <= "~" for char in token)
        ):
            raise EnricherConfigError(
                f"enricher {self.name!r}: the environment variable {name!r} named by "
                "auth_env is blank, starts or ends with a space, or holds characters a "
                "header cannot (a line break, a control or non-ASCII character)"
            )
        return token

    async def _startup(self) -> None:
        """Create the client; no request is sent."""
        httpx, params = self._httpx, self.params
        self._client = httpx.AsyncClient(
            base_url=params.base_url,
            headers=self._headers(),
            # pool=None: a key waits for a free connection; the engine's
            # timeout bounds the whole lookup.
            timeout=httpx.Timeout(
                connect=params.connect_timeout,
                read=params.read_timeout,
                write=params.read_timeout,
                pool=None,
            ),
            limits=httpx.Limits(
                max_connections=params.max_connections,
                max_keepalive_connections=params.max_connections,
            ),
            follow_redirects=False,
            trust_env=False,  # no proxy or netrc credentials picked up behind the user's back
        )
        self._slots = asyncio.Semaphore(params.max_connections)

    async def _shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.wait_for(client.aclose(), _CLOSE_TIMEOUT)

    async def _health_check(self) -> bool:
        """``GET health_path`` answers 2xx; without ``health_path``, true
        without a request (the backend is judged by its lookups)."""
        if self._client is None:
            return False
        if self.params.health_path is None:
            return True
        response = await self._client.get(self.params.health_path)
        return bool(response.is_success)

    def is_transient(self, exc: BaseException) -> bool:
        """OS and timeout errors, transport errors and 502/503/504 answers."""
        httpx = self._httpx
        if isinstance(exc, httpx.HTTPStatusError):
            return exc.response.status_code in _TRANSIENT_STATUS
        return isinstance(exc, OSError | TimeoutError | httpx.TransportError)

    # -- lookups -----------------------------------------------------------

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        """The values of the path template's fields; ``None`` (no lookup)
        when one is missing, not usable as a key, or is ``.`` or ``..``
        (which would name another path)."""
        key = self.template.key(event_dict, self.params.max_key_length)
        if key is None or any(value in (".", "..") for value in key):
            return None
        return key

    def url_path(self, key: tuple[Any, ...]) -> str:
        """The request path for a cache key: each value percent-encoded as
        one segment (``/`` as ``%2F``, a space as ``%20``)."""
        return self.template.render(quote(str(value), safe="") for value in key)

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        """GET every key concurrently on the one client (HTTP has no
        multi-get): ``{key: value}`` for the keys found. A request that
        fails its key alone (its exception is the key's value), also
        when every request fails: each event then says why its own request
        failed, and the engine counts such an answer (an exception for
        every key) as one failure for the circuit breaker."""
        client = self._client
        if client is None:
            raise RuntimeError(f"enricher {self.name!r} is not started")
        unique = [key for key in dict.fromkeys(keys) if isinstance(key, tuple)]
        if len(unique) == 1:
            value = await self._get(client, unique[0])
            return {} if value is None else {unique[0]: value}
        # A key still unanswered a little before the engine's timeout fails
        # alone (TimeoutError: the reason 'timeout'), so that one slow key
        # does not time out the keys answered in time.
        deadline = self.batch_deadline()
        if deadline is not None:
            deadline = shortly_before(deadline, asyncio.get_running_loop().time())
        results = await asyncio.gather(
            *(self._get_before(deadline, client, key) for key in unique), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation, interrupts
        return {key: value for key, value in zip(unique, results, strict=True) if value is not None}

    async def _get_before(self, deadline: float | None, client: Any, key: tuple[Any, ...]) -> Any:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._get(client, key)
        except TimeoutError:
            raise TimeoutError("no answer before the enricher's timeout") from None

    async def _get(self, client: Any, key: tuple[Any, ...]) -> Any:
        # httpx's read timeout bounds each read, not the answer: a server
        # that sends a byte now and then would hold the key (and the batch
        # it is in) until the engine's timeout. Once the request has a
        # connection, the whole exchange gets connect_timeout + read_timeout,
        # and past it fails this key alone with ReadTimeout.
        params, slots = self.params, self._slots
        assert slots is not None
        async with slots:
            try:
                async with asyncio.timeout(params.connect_timeout + params.read_timeout):
                    response = await client.get(self.url_path(key))
            except TimeoutError:
                raise self._httpx.ReadTimeout(
                    f"no complete answer within {params.read_timeout}s"
                ) from None
        if response.status_code in _MISSING_STATUS:
            return None
        response.raise_for_status()  # anything else that is not 2xx
        body = response.json()
        fields = self.params.fields
        if isinstance(body, dict):
            if fields:
                body = {field: body[field] for field in fields if field in body}
            return body or None
        if self.into is None or fields:
            raise ValueError(
                f"enricher {self.name!r}: GET {response.request.url.path} answered a JSON "
                f"{type(body).__name__}, not an object; put it under into= without fields="
            )
        return body
