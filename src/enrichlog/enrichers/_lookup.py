"""What the lookup enrichers (``postgres-lookup``, ``redis-lookup``,
``http-lookup``) share: the lazy import of their client library, the key
templates whose ``{fields}`` come from the event, the screening of event
values used as keys, and how a looked-up value goes into the event.

Nothing here imports an optional library: importing
:mod:`enrichlog.enrichers` must work without asyncpg, redis or httpx.
"""

from __future__ import annotations

import importlib
import math
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, Field
from structlog.typing import EventDict

from ..enricher import AsyncEnricher
from ..exceptions import EnricherConfigError, did_you_mean
from ..uri.params import COMMON_KEYS

__all__ = [
    "DEFAULT_MAX_KEY_LENGTH",
    "FieldName",
    "IntoField",
    "KeyTemplate",
    "KeyValue",
    "LookupEnricher",
    "key_value",
    "plain_value",
    "reject_extra_keys",
    "require_module",
]

#: Event values longer than this (in characters) are not used as keys: no
#: real identifier is that long, and a hostile one would otherwise be sent to
#: the backend and held in the cache.
DEFAULT_MAX_KEY_LENGTH = 1024

# An int key longer than this many bits is no identifier (a UUID as an int
# has 128); it also keeps str() of it cheap and within Python's digit limit.
_MAX_INT_BITS = 128

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

FieldName = Annotated[str, Field(min_length=1)]
"""An event key: any non-empty string."""

# Keys every event has: a value put there with setdefault would never land.
_EVENT_KEYS = frozenset({"event", "level", "timestamp"})


def _free_key(value: str) -> str:
    if value in _EVENT_KEYS:
        raise ValueError(
            f"into names a key every event has ({', '.join(sorted(_EVENT_KEYS))}), so the "
            "looked-up value would never be added; choose another key"
        )
    return value


IntoField = Annotated[str, Field(min_length=1), AfterValidator(_free_key)]
"""Where a looked-up value goes: an event key that events do not all have."""

KeyValue = str | int | float | UUID
"""The event values a lookup accepts as (part of) a key."""


def require_module(module: str, extra: str, enricher: str) -> Any:
    """Import ``module`` for the enricher named ``enricher``, or explain
    which extra installs it.

    Raises:
        EnricherConfigError: the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EnricherConfigError(
            f"enricher {enricher!r} needs the {module.partition('.')[0]!r} package, "
            f"which is not installed: pip install 'enrichlog[{extra}]'"
        ) from exc


def key_value(value: object, max_length: int) -> KeyValue | None:
    """``value`` if it can be (part of) a lookup key, else ``None``.

    Keys are strings, integers, finite floats and UUIDs. Everything else
    (``None``, booleans, containers, objects) means "no lookup", as do empty
    strings, strings longer than ``max_length``, strings holding NUL or
    unpaired surrogates (which no backend stores and some reject outright),
    and integers of more than 128 bits.
    """
    if isinstance(value, str):
        if not value or len(value) > max_length or "\x00" in value:
            return None
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return None
        return value
    if isinstance(value, bool):  # a bool is an int, but never an identifier
        return None
    if isinstance(value, int):
        return value if value.bit_length() <= _MAX_INT_BITS else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, UUID):
        return value
    return None


def plain_value(value: KeyValue) -> KeyValue:
    """``value`` as the built-in type it derives from: a subclass of
    ``str``, ``int`` or ``float`` (an Enum member, or one whose ``__eq__``,
    ``__int__`` or ``__str__`` raises) read through the built-in type's own
    code, which none of its methods can change."""
    kind = value.__class__
    if kind is str or kind is int or kind is float:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return value


@dataclass(frozen=True)
class KeyTemplate:
    """A text with ``{field}`` placeholders filled from the event, such as
    ``user:{user_id}`` or ``/users/{user_id}``.

    Placeholders are plain names: no attribute access, index, conversion or
    format spec (``{user.__class__}`` is refused), so an event value is only
    ever inserted, never interpreted. ``{{`` and ``}}`` are literal braces.

    Attributes:
        text: the template as written.
        literals: the text around the placeholders (one more than
            ``placeholders``).
        placeholders: the field name of each placeholder, in order.
        fields: the distinct field names, in order of first use: the order
            of the values in a cache key.
    """

    text: str
    literals: tuple[str, ...]
    placeholders: tuple[str, ...]
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> KeyTemplate:
        """Parse ``text``.

        Raises:
            ValueError: unbalanced braces, or a placeholder that is not a
                plain name.
        """
        literals: list[str] = []
        placeholders: list[str] = []
        pending = ""
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(
                f"template {text!r}: {exc} (write a literal brace as {{{{ or }}}})"
            ) from None
        for literal, field, spec, conversion in parsed:
            pending += literal
            if field is None:
                continue
            if not _IDENTIFIER.match(field) or spec or conversion:
                raise ValueError(
                    f"template {text!r}: placeholder {{{field}"
                    f"{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}} "
                    "must be a plain event field name such as {user_id}"
                )
            literals.append(pending)
            placeholders.append(field)
            pending = ""
        literals.append(pending)
        return cls(text, tuple(literals), tuple(placeholders), tuple(dict.fromkeys(placeholders)))

    def key(self, event_dict: EventDict, max_length: int) -> tuple[KeyValue, ...] | None:
        """The values of :attr:`fields` in ``event_dict``, or ``None`` when
        one is missing or unusable as a key (see :func:`key_value`). A value
        that is not exactly a ``str``, ``int`` or ``UUID`` is given as the
        text it fills in as: Python finds ``1`` and ``1.0``, ``0.0`` and
        ``-0.0``, or a ``(str, Enum)`` member and its value, equal, and they
        would be one key for the cache or a batch, though they fill in
        differently."""
        values: list[KeyValue] = []
        for field in self.fields:
            value = key_value(event_dict.get(field), max_length)
            if value is None:
                return None
            kind = value.__class__
            values.append(value if kind is str or kind is int or kind is UUID else str(value))
        return tuple(values)

    def render(self, key: Iterable[str]) -> str:
        """The template with each field replaced by its (already encoded)
        value; ``key`` holds one value per field, in :attr:`fields` order."""
        by_field = dict(zip(self.fields, key, strict=True))
        parts = [self.literals[0]]
        for field, literal in zip(self.placeholders, self.literals[1:], strict=True):
            parts.append(by_field[field])
            parts.append(literal)
        return "".join(parts)


def reject_extra_keys(model: type[BaseModel], data: Any, scheme: str) -> None:
    """Refuse the keys of ``data`` (a ``Params`` model's input) that the
    model does not declare by name or alias. Called as a ``mode="before"``
    validator of a model with ``extra="allow"`` (there only to let an
    aliased key such as ``from`` past the factory, which checks keys against
    field names), so that a mistyped key is named before the required keys
    it leaves missing.

    Raises:
        ValueError: naming the unknown keys, the closest accepted key of
            each, and the accepted ones.
    """
    if not isinstance(data, Mapping):
        return
    fields = model.model_fields
    accepted = [
        info.alias or name
        for name, info in fields.items()
        if name not in ("host", "port", "user", "password", "path")
    ]
    known = {*fields, *(info.alias for info in fields.values() if info.alias)}
    unknown = sorted(str(key) for key in data if key not in known)
    if not unknown:
        return
    hinted = [*accepted, *COMMON_KEYS]
    listed = ", ".join(f"{key!r}{did_you_mean(key, hinted)}" for key in unknown)
    raise ValueError(
        f"unknown query key{'s' if len(unknown) > 1 else ''} {listed} for {scheme}://; "
        f"accepted keys: {', '.join(accepted)}, and the common keys"
    )


class LookupEnricher(AsyncEnricher):
    """Base of the lookup enrichers: a batched, cached lookup whose value is
    a mapping put under ``into``, or merged into the event when ``into`` is
    ``None``.

    Neither way overwrites a key the event already has: a value given at the
    call site wins, as with the built-in enrichers (``keep_existing``: the
    runtime keeps each event's own values, cached and batched values too).
    """

    keep_existing = True

    def __init__(
        self,
        *,
        into: str | None,
        pool_size: int,
        max_concurrency: int | None = None,
        **options: Any,
    ) -> None:
        # Without a limit, a burst of events would queue for the pool inside
        # the client library, past the engine's view; with the pool's size
        # as the limit they wait in the engine, under its timeout.
        if max_concurrency is None and type(self).max_concurrency is None:
            max_concurrency = pool_size
        super().__init__(max_concurrency=max_concurrency, **options)
        self.into = into

    def apply(self, event_dict: EventDict, value: Any) -> EventDict:
        """Put ``value`` under ``into``, or merge its items into the event.
        (The same for every event of a key: the runtime keeps the keys an
        event already has, ``keep_existing``.)"""
        if self.into is not None:
            event_dict[self.into] = dict(value) if isinstance(value, Mapping) else value
        elif isinstance(value, Mapping):
            event_dict.update(value)
        return event_dict
