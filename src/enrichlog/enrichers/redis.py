"""``redis-lookup://``: add the value of a Redis key to each event.

::

    redis-lookup://:secret@cache.internal:6379/0?key=user:{user_id}&into=user

reads the hash ``user:<user_id>`` (``HGETALL``) and adds
``{"user": {field: value, ...}}``. With ``type=string`` the key holds a
plain string, with ``type=json`` a JSON document (``GET``). Built on
redis-py's asyncio client (the ``redis`` extra) with a connection pool; many
keys are read in one round trip (a pipeline of ``HGETALL``, or of
``GET``). See ``docs/integrations/redis.md``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from structlog.typing import EventDict

from ..options import NotABool
from ..uri.params import CommaSeparated
from ._lookup import (
    DEFAULT_MAX_KEY_LENGTH,
    IntoField,
    KeyTemplate,
    LookupEnricher,
    require_module,
)

__all__ = ["RedisLookupEnricher"]

_DB_PATH = re.compile(r"/\d{1,5}\Z")
_CLOSE_TIMEOUT = 5.0


class RedisLookupEnricher(LookupEnricher):
    """Adds the value stored under a key built from the event:
    ``redis-lookup://host:port/db?key=user:{user_id}&into=user``.

    ``type=hash`` (the default) reads a hash, whose fields go under ``into``
    as a mapping of strings, or into the event itself when ``into`` is not
    given. ``type=json`` reads a string holding JSON: an object is treated
    like a hash, any other value needs ``into``. ``type=string`` reads a
    plain string and puts it under ``into`` (required). ``fields`` keeps only
    the named fields. Keys the event already has are kept.

    An event that lacks a field of the key template is not looked up, and a
    key that does not exist adds nothing; neither is an error.
    """

    scheme = "redis-lookup"

    class Params(BaseModel):
        """Parameters of ``redis-lookup://``."""

        model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

        host: str = "127.0.0.1"
        port: Annotated[int, Field(ge=1, le=65535), NotABool] = 6379
        user: str | None = None
        password: SecretStr | None = None
        path: str = "/0"
        key: str
        type: Literal["hash", "string", "json"] = "hash"
        into: IntoField | None = None
        fields: CommaSeparated = ()
        max_connections: Annotated[int, Field(ge=1), NotABool] = 10
        connect_timeout: Annotated[float, Field(gt=0, allow_inf_nan=False), NotABool] = 2.0
        client_name: Annotated[str, Field(pattern=r"^[!-~]+$")] = "enrichlog"
        max_key_length: Annotated[int, Field(ge=1), NotABool] = DEFAULT_MAX_KEY_LENGTH

        @field_validator("key")
        @classmethod
        def _key_template(cls, value: str) -> str:
            if not KeyTemplate.parse(value).fields:
                raise ValueError(
                    f"key {value!r} has no {{field}} taken from the event, e.g. user:{{user_id}}"
                )
            return value

        @field_validator("path")
        @classmethod
        def _db_path(cls, value: str) -> str:
            if value not in ("", "/") and not _DB_PATH.match(value):
                raise ValueError(f"path {value!r} must be '/' and the database number, e.g. '/0'")
            return value

        @model_validator(mode="after")
        def _consistent(self) -> RedisLookupEnricher.Params:
            if self.type == "string" and self.into is None:
                raise ValueError("type=string needs into= (the event key for the value)")
            if self.type == "string" and self.fields:
                raise ValueError("fields= applies to type=hash and type=json, not type=string")
            return self

        @property
        def db(self) -> int:
            """The database number named by the path (default 0)."""
            return int(self.path.lstrip("/") or 0)

    def __init__(
        self,
        *,
        params: RedisLookupEnricher.Params,
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
        self._redis = require_module("redis.asyncio", "redis", self.name)
        self._errors = require_module("redis.exceptions", "redis", self.name)
        self.template = KeyTemplate.parse(params.key)
        self._client: Any = None

    # -- lifecycle ---------------------------------------------------------

    async def _startup(self) -> None:
        """Create the pool and check the server answers (a wrong address or
        password fails the start-up, not every event)."""
        params = self.params
        # Blocking: a burst beyond max_connections waits for a connection
        # (bounded by the engine's timeout) instead of failing at once.
        pool = self._redis.BlockingConnectionPool(
            host=params.host,
            port=params.port,
            db=params.db,
            username=params.user,
            password=params.password.get_secret_value() if params.password else None,
            max_connections=params.max_connections,
            timeout=None,
            socket_connect_timeout=params.connect_timeout,
            client_name=params.client_name,
            # Bytes, decoded here key by key: decoded by the client, one
            # value that is not UTF-8 failed the whole batch.
            decode_responses=False,
        )
        client = self._redis.Redis(connection_pool=pool)
        try:
            await client.ping()
        except BaseException:
            await pool.disconnect()
            raise
        self._client = client

    async def _shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.wait_for(client.connection_pool.disconnect(), _CLOSE_TIMEOUT)

    async def _health_check(self) -> bool:
        return self._client is not None and bool(await self._client.ping())

    def is_transient(self, exc: BaseException) -> bool:
        """OS and timeout errors, and Redis connection errors and timeouts."""
        errors = self._errors
        return isinstance(
            exc, OSError | TimeoutError | errors.ConnectionError | errors.TimeoutError
        )

    # -- lookups -----------------------------------------------------------

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        """The values of the key template's fields; ``None`` (no lookup) when
        one is missing or not usable as a key."""
        return self.template.key(event_dict, self.params.max_key_length)

    def redis_key(self, key: tuple[Any, ...]) -> str:
        """The Redis key for a cache key (the template filled in)."""
        return self.template.render(str(value) for value in key)

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        """Read every key in one round trip: ``{key: value}`` for the keys
        that exist (hashes as ``{field: value}``, strings as ``str``, JSON as
        parsed). A value that cannot be read (not JSON, a key of another
        type) fails its key alone: its exception is the key's value."""
        # cache_key() made each key a tuple; duplicates are read once.
        unique = [key for key in dict.fromkeys(keys) if isinstance(key, tuple)]
        if not unique:
            return {}
        values = await self.fetch([self.redis_key(key) for key in unique])
        found: dict[Hashable, Any] = {}
        for key, value in zip(unique, values, strict=True):
            if isinstance(value, Exception):  # this command failed (WRONGTYPE)
                found[key] = value
                continue
            try:
                decoded = self._decode(value)
            except Exception as exc:
                found[key] = exc
                continue
            if decoded is not None:
                found[key] = decoded
        return found

    async def fetch(self, names: list[str]) -> list[Any]:
        """Read the Redis keys ``names`` in one round trip (a pipeline of
        ``HGETALL``, or of ``GET``): the one backend call of a batch. Values
        are bytes; a command's error (a key of another type: ``WRONGTYPE``)
        is its key's value, not the batch's. (``MGET`` would read a key of
        another type as missing.)"""
        client = self._client
        if client is None:
            raise RuntimeError(f"enricher {self.name!r} is not started")
        read = "hgetall" if self.params.type == "hash" else "get"
        async with client.pipeline(transaction=False) as pipe:
            for name in names:
                getattr(pipe, read)(name)
            values: list[Any] = await pipe.execute(raise_on_error=False)
        return values

    def _decode(self, value: Any) -> Any:
        if value is None or value == {}:  # a missing key: None from GET, {} from HGETALL
            return None
        if isinstance(value, dict):
            value = {field.decode(): item.decode() for field, item in value.items()}
        elif isinstance(value, bytes):
            value = value.decode()
        if self.params.type == "json":
            value = json.loads(value)
            if value is None or value == {}:  # JSON null, or an object like an empty hash
                return None
            if not isinstance(value, dict) and (self.into is None or self.params.fields):
                raise ValueError(
                    f"enricher {self.name!r}: a JSON value that is not an object goes "
                    "under into= without fields="
                )
        fields = self.params.fields
        if fields and isinstance(value, dict):
            value = {field: value[field] for field in fields if field in value}
            return value or None
        return value
