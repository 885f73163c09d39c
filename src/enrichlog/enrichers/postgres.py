"""``postgres-lookup://``: add columns of a PostgreSQL row to each event.

::

    postgres-lookup://app:secret@db.internal:5432/app?table=users&key=id
        &from=user_id&columns=name,email&into=user

looks up the row of ``users`` whose ``id`` equals the event's ``user_id`` and
adds ``{"user": {"name": ..., "email": ...}}``. Built on asyncpg (the
``postgres`` extra): a pool opened in ``_startup`` on the runtime loop,
prepared and parameterised queries only, table and column names validated as
SQL identifiers and quoted. Many keys are looked up in one query
(``WHERE key = ANY($1)``). See ``docs/integrations/postgres.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import re
import struct
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from structlog.typing import EventDict

from ..options import NotABool
from ..uri.params import CommaSeparated
from ._lookup import (
    DEFAULT_MAX_KEY_LENGTH,
    FieldName,
    IntoField,
    LookupEnricher,
    key_value,
    plain_value,
    reject_extra_keys,
    require_module,
)

__all__ = ["PostgresLookupEnricher"]

# Unquoted-style names only: quoting them is then exact, and nothing from a
# configuration can close the quotes. PostgreSQL truncates names at 63 bytes.
_SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}\Z")
_DATABASE = re.compile(r"/[^/]+\Z")
_CLOSE_TIMEOUT = 5.0
#: Seconds a connection whose query was cut short may take to answer its
#: cancellation before it is closed.
_RELEASE_GRACE = 2.0

_INT_BITS = {"int2": 16, "int4": 32, "int8": 64}
_TEXT_TYPES = frozenset({"text", "varchar", "name", "citext"})


def _sql_name(value: str, what: str) -> str:
    if not _SQL_NAME.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid SQL name: use letters, digits, '_' and '$', "
            "starting with a letter or '_', at most 63 characters"
        )
    return value


def quote_name(name: str) -> str:
    """``name`` (a validated identifier, maybe ``schema.table``) quoted."""
    return ".".join(f'"{part}"' for part in name.split("."))


def _int_key(bits: int) -> Callable[[Any], Any]:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def convert(value: Any) -> Any:
        if isinstance(value, float):
            value = int(value) if value.is_integer() else None
        elif isinstance(value, str):
            text = value.strip()
            digits = text.removeprefix("-").removeprefix("+")
            value = int(text) if digits.isascii() and digits.isdigit() and len(text) <= 21 else None
        if not isinstance(value, int) or not low <= value <= high:
            return None
        return int(value)  # a plain int: the driver refuses some subclasses (IntFlag)

    return convert


def _text_key(value: Any) -> Any:
    return value if isinstance(value, str) else str(value)


def _uuid_key(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _numeric(number: Decimal) -> Decimal | None:
    """``number`` if a ``numeric`` column can hold it: finite, at most
    131072 digits before the point and 16383 after."""
    if not number.is_finite():
        return None
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    return number if exponent >= -16383 and number.adjusted() < 131072 else None


def _numeric_key(value: Any) -> Any:
    if isinstance(value, int):
        return _numeric(Decimal(value))
    if isinstance(value, float):
        return _numeric(Decimal(repr(value)))  # 0.1 as 0.1, not its binary expansion
    if isinstance(value, str):
        try:
            return _numeric(Decimal(value.strip()))
        except InvalidOperation:
            return None
    return None


def _float_key(value: Any) -> Any:
    if isinstance(value, UUID):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _float4_key(value: Any) -> Any:
    """As the column holds it (single precision), so that the row's key
    read back is the value asked for."""
    number = _float_key(value)
    if number is None:
        return None
    try:
        single: float = struct.unpack("f", struct.pack("f", number))[0]
    except OverflowError:
        return None
    return single if math.isfinite(single) else None  # beyond single precision


def _bpchar_key(value: Any) -> Any:
    """``char(n)`` compares without trailing spaces, and reads back padded:
    both sides without them."""
    return _text_key(value).rstrip(" ")


def _timestamp_key(text: str) -> datetime.datetime:
    # As PostgreSQL reads such text into a timestamp without time zone: the
    # offset is dropped (the driver refuses an aware value for that type).
    return datetime.datetime.fromisoformat(text).replace(tzinfo=None)


def _time_key(text: str) -> datetime.time:
    # As PostgreSQL reads such text into a time without time zone.
    return datetime.time.fromisoformat(text).replace(tzinfo=None)


def _timestamptz_key(text: str) -> datetime.datetime:
    moment = datetime.datetime.fromisoformat(text)
    # Without an offset, UTC (as asyncpg sends it), and comparable with the
    # aware timestamp the row's key reads back as.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def _iso_key(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    """Dates, times and timestamps: given in events as ISO 8601 text."""

    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            return None
        try:
            return parse(value.strip())
        except ValueError:
            return None

    return convert


def _as_given(value: Any) -> Any:
    return value


def _row_key(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """How a row's key column, read back, is compared with the values asked
    for (converted by ``convert``)."""
    if convert is _bpchar_key:
        return lambda value: value.rstrip(" ")  # read back padded
    if convert is _as_given:
        return str
    return _as_given


_ISO_TYPES: dict[str, Callable[[str], Any]] = {
    "date": datetime.date.fromisoformat,
    "timestamp": _timestamp_key,
    "timestamptz": _timestamptz_key,
    "time": _time_key,
}


def _key_converter(type_name: str) -> Callable[[Any], Any]:
    """How an event value becomes a parameter for a key column of this type
    (``None``: it cannot match any row, so it is not sent). A value of the
    wrong type would make asyncpg refuse the whole batch. It runs on a
    cache miss, in enrich_many: cache keys hold the event's value itself."""
    # The parameter is an array: asyncpg names it "int4[]".
    element = type_name.removesuffix("[]")
    if element in _INT_BITS:
        return _int_key(_INT_BITS[element])
    if element == "bpchar":
        return _bpchar_key
    if element in _TEXT_TYPES:
        return _text_key
    if element == "uuid":
        return _uuid_key
    if element == "numeric":
        return _numeric_key
    if element == "float4":
        return _float4_key
    if element == "float8":
        return _float_key
    if element in _ISO_TYPES:
        return _iso_key(_ISO_TYPES[element])
    return _as_given  # other types: asyncpg decides (see enrich_many)


class PostgresLookupEnricher(LookupEnricher):
    """Adds columns of the row whose ``key`` column equals the event's
    ``from`` field: ``postgres-lookup://user:pass@host:port/db?table=users
    &key=id&from=user_id&columns=name,email&into=user``.

    The columns go under ``into`` as a mapping, or into the event itself
    when ``into`` is not given; keys the event already has are kept. An event
    without the ``from`` field, or whose value cannot match the key column's
    type, is not looked up; a key without a row adds nothing. Neither is an
    error.

    Construct it in code with ``PostgresLookupEnricher(params=
    PostgresLookupEnricher.Params(host="db", path="/app", table="users",
    from_="user_id", columns=("name",)))``.
    """

    scheme = "postgres-lookup"

    class Params(BaseModel):
        """Parameters of ``postgres-lookup://``."""

        # extra="allow" only so that the query key 'from' (a Python keyword,
        # hence the alias) gets past the factory; other keys are refused below.
        model_config = ConfigDict(
            extra="allow",
            frozen=True,
            populate_by_name=True,
            serialize_by_alias=True,
            hide_input_in_errors=True,  # built in code, an error must not show the password
        )

        host: str = "127.0.0.1"
        port: Annotated[int, Field(ge=1, le=65535), NotABool] = 5432
        user: str | None = None
        password: SecretStr | None = None
        path: str = "/"
        table: str
        key: str = "id"
        from_: FieldName | None = Field(None, alias="from")
        columns: Annotated[CommaSeparated, Field(min_length=1)]
        into: IntoField | None = None
        min_size: Annotated[int, Field(ge=0), NotABool] = 1
        max_size: Annotated[int, Field(ge=1), NotABool] = 10
        connect_timeout: Annotated[float, Field(gt=0, allow_inf_nan=False), NotABool] = 5.0
        ssl: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
            None
        )
        application_name: Annotated[str, Field(min_length=1, max_length=63)] = "enrichlog"
        max_key_length: Annotated[int, Field(ge=1), NotABool] = DEFAULT_MAX_KEY_LENGTH

        @field_validator("table")
        @classmethod
        def _table_name(cls, value: str) -> str:
            parts = value.split(".")
            if len(parts) > 2:
                raise ValueError(
                    f"table {value!r} is not a SQL name: write 'table' or 'schema.table'"
                )
            for part in parts:
                _sql_name(part, "table" if len(parts) == 1 else f"table {value!r}: part")
            return value

        @field_validator("key")
        @classmethod
        def _key_name(cls, value: str) -> str:
            return _sql_name(value, "key column")

        @field_validator("host", "user", "path", "application_name")
        @classmethod
        def _no_nul(cls, value: str | None) -> str | None:
            # The start-up packet ends each name at a NUL: the server would
            # refuse every connection, for as long as the process runs.
            if value is not None and "\x00" in value:
                raise ValueError("must not contain NUL (\\x00)")
            return value

        @field_validator("columns")
        @classmethod
        def _column_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
            for column in value:
                _sql_name(column, "column")
            if len(set(value)) != len(value):
                raise ValueError(f"columns {','.join(value)!r} name a column twice")
            return value

        @field_validator("path")
        @classmethod
        def _database_path(cls, value: str) -> str:
            if value not in ("", "/") and not _DATABASE.match(value):
                raise ValueError(f"path {value!r} must be '/' and the database name, e.g. '/app'")
            return value

        @model_validator(mode="before")
        @classmethod
        def _known_keys(cls, data: Any) -> Any:
            reject_extra_keys(cls, data, "postgres-lookup")
            return data

        @model_validator(mode="after")
        def _consistent(self) -> PostgresLookupEnricher.Params:
            if self.password is not None and "\x00" in self.password.get_secret_value():
                # Said here, not as the field's error: a masked message would
                # hide the word after "password:".
                raise ValueError("a NUL (\\x00) in the password is refused (no server accepts it)")
            if self.min_size > self.max_size:
                raise ValueError(
                    f"min_size ({self.min_size}) is larger than max_size ({self.max_size})"
                )
            return self

        @property
        def database(self) -> str | None:
            """The database named by the path; ``None``: the server's default
            (the user's name)."""
            return self.path.lstrip("/") or None

        @property
        def event_field(self) -> str:
            """The event field holding the key (``from``, else ``key``)."""
            return self.from_ or self.key

    def __init__(
        self,
        *,
        params: PostgresLookupEnricher.Params,
        name: str | None = None,
        dependencies: str | Iterable[str] | None = None,
        priority: int | None = None,
        max_concurrency: int | None = None,
        **options: Any,
    ) -> None:
        self.params = params
        super().__init__(
            into=params.into,
            pool_size=params.max_size,
            name=name,
            dependencies=dependencies,
            priority=priority,
            provides=(params.into,) if params.into else params.columns,
            max_concurrency=max_concurrency,
            **options,
        )
        self._asyncpg = require_module("asyncpg", "postgres", self.name)
        selected = ", ".join(quote_name(c) for c in (params.key, *params.columns))
        # Identifiers were validated and are quoted; the only value is $1.
        self.query = (
            f"SELECT {selected} FROM {quote_name(params.table)} "  # noqa: S608
            f"WHERE {quote_name(params.key)} = ANY($1)"
        )
        self._field = params.event_field
        self._pool: Any = None
        self._convert: Callable[[Any], Any] = _as_given
        #: Connections handed back in the background (kept: a task nobody
        #: holds may be collected before it ends).
        self._releasing: dict[asyncio.Task[None], Any] = {}

    # -- lifecycle ---------------------------------------------------------

    async def _startup(self) -> None:
        """Open the pool and prepare the query once: a missing table or
        column fails the start-up, naming it, instead of every event."""
        params = self.params
        pool = await self._asyncpg.create_pool(
            host=params.host,
            port=params.port,
            user=params.user,
            password=params.password.get_secret_value() if params.password else None,
            database=params.database,
            min_size=params.min_size,
            max_size=params.max_size,
            timeout=params.connect_timeout,
            server_settings={"application_name": params.application_name},
            **({"ssl": params.ssl} if params.ssl else {}),
        )
        try:
            async with pool.acquire() as connection:
                statement = await connection.prepare(self.query)
                (parameter,) = statement.get_parameters()
        except self._asyncpg.exceptions.UndefinedObjectError as exc:
            pool.terminate()
            if "could not find array type" not in str(exc):
                raise
            # "= ANY($1)" sends the keys as an array of the column's type.
            raise RuntimeError(
                f"key column {params.key!r} of table {params.table!r} cannot be looked up: "
                f"its type has no array type ({exc}); a column holding arrays cannot be a "
                "lookup key"
            ) from exc
        except BaseException:
            pool.terminate()
            raise
        self._convert = _key_converter(parameter.name)
        self._pool = pool

    async def _shutdown(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for connection in self._releasing.values():
            connection.terminate()  # its query was cut short: no goodbye to wait for
        try:
            # Graceful: waits for queries in flight, then says goodbye.
            await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            pool.terminate()
            raise

    async def _health_check(self) -> bool:
        return self._pool is not None and await self._query("fetchval", "SELECT 1") == 1

    def is_transient(self, exc: BaseException) -> bool:
        """OS and timeout errors, lost connections, and a server shutting down
        or refusing connections for now."""
        errors = self._asyncpg.exceptions
        return isinstance(
            exc,
            OSError
            | TimeoutError
            | errors.PostgresConnectionError
            | errors.OperatorInterventionError
            | errors.TooManyConnectionsError
            # A pooled connection whose server process was terminated while
            # idle, used before asyncpg noticed, fails this way once.
            | errors.InternalClientError,
        )

    # -- lookups -----------------------------------------------------------

    def cache_key(self, event_dict: EventDict) -> Hashable | None:
        """``(value of the from field,)``, a float with its text beside it, a
        subclass (an Enum member) with its class; ``None`` (no lookup) when
        the field is missing or its value is not usable as a key. (Python
        finds ``1`` and ``1.0``, or ``0.0`` and ``-0.0``, equal; for a text
        key column they are different rows. Not converted here: a cache hit
        pays nothing for the column's type.)"""
        value = key_value(event_dict.get(self._field), self.params.max_key_length)
        if value is None:
            return None
        kind = value.__class__
        if kind is str or kind is int or kind is UUID:
            return (value,)
        # A float with its text; a subclass (an Enum member) with its class:
        # not one key with the plain value it equals.
        return (value, repr(value)) if kind is float else (value, kind)

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        """One query for all ``keys``: ``{key: {column: value}}`` for the
        keys that have a row."""
        wanted: dict[Any, list[Hashable]] = {}
        found: dict[Hashable, Any] = {}
        for key in keys:
            # cache_key() made each key a tuple of the value (and, for a
            # float, its text); anything else matches nothing.
            if not (isinstance(key, tuple) and 0 < len(key) < 3):
                continue
            try:
                value = self._convert(plain_value(key[0]))
            except Exception as exc:  # a value whose own code raises fails its key alone
                found[key] = exc
                continue
            if value is not None:
                wanted.setdefault(value, []).append(key)
        if not wanted:
            return found
        try:
            rows = await self.fetch(list(wanted))
        except self._asyncpg.exceptions.DataError:
            # A value the driver could not send, or the server refused (a key
            # column of a type not converted above, a value out of the
            # column's range): asked one by one, it fails its key alone, not
            # the batch.
            if len(wanted) == 1:
                raise
            rows = await self._fetch_one_by_one(wanted, found)
        columns = self.params.columns
        read = _row_key(self._convert)
        if self._convert is _as_given:
            # Given as it is (an inet as text), read back as the driver's type
            # (an IPv4Address): matched by their text.
            by_text: dict[Any, list[Hashable]] = {}
            for value, of_value in wanted.items():
                by_text.setdefault(str(value), []).extend(of_value)
            wanted = by_text
        for row in rows:
            # Several rows for one key (a key column that is not unique):
            # the first returned wins.
            for key in wanted.get(read(row[0]), ()):
                if key not in found:
                    found[key] = {column: row[i] for i, column in enumerate(columns, 1)}
        return found

    async def _fetch_one_by_one(
        self, wanted: dict[Any, list[Hashable]], found: dict[Hashable, Any]
    ) -> list[Any]:
        """The rows of each value of ``wanted`` asked alone; a value refused
        with ``DataError`` fails its keys (their value in ``found``)."""
        rows: list[Any] = []
        for value, keys in wanted.items():
            try:
                rows.extend(await self.fetch([value]))
            except self._asyncpg.exceptions.DataError as exc:
                found.update(dict.fromkeys(keys, exc))
        return rows

    async def fetch(self, values: list[Any]) -> Sequence[Any]:
        """Run the lookup query for ``values``: the one backend call of a batch."""
        rows: Sequence[Any] = await self._query("fetch", self.query, values)
        return rows

    async def _query(self, method: str, *args: Any) -> Any:
        """``connection.<method>(*args)`` on a pooled connection.

        Cut short (its timeout, a cancelled call), the query's connection is
        handed back to the pool in the background: asyncpg first waits for
        the server to answer the cancellation it sends, which a slow or
        broken network path holds for as long as it lasts (the call used to
        wait with it: it ignored its cancellation, was abandoned, and held
        shutdown for seconds). A connection whose cancellation is not
        answered within :data:`_RELEASE_GRACE` is closed; the pool opens a
        new one when it needs one.
        """
        pool = self._pool
        if pool is None:
            raise RuntimeError(f"enricher {self.name!r} is not started")
        connection = await pool.acquire()
        try:
            result = await getattr(connection, method)(*args)
        except asyncio.CancelledError:
            task = asyncio.get_running_loop().create_task(_release(pool, connection))
            self._releasing[task] = connection
            task.add_done_callback(self._releasing.pop)
            raise
        except BaseException:
            await pool.release(connection)
            raise
        await pool.release(connection)
        return result


async def _release(pool: Any, connection: Any) -> None:
    """Hand back a connection whose query was cut short: once the server
    answers the cancellation asyncpg sent, or closed after
    :data:`_RELEASE_GRACE` (asyncpg closes a connection it could not
    reset in time; the error says no more than that)."""
    with contextlib.suppress(Exception):
        await pool.release(connection, timeout=_RELEASE_GRACE)
