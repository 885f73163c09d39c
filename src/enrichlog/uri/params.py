"""The ``Params`` convention: how an enricher class declares what its URI carries.

An enricher class declares the parameters its URI may carry as a pydantic
model in the class attribute ``Params``. URI parts map to the fields named
``host``, ``port``, ``user``, ``password`` (declare it as
:class:`pydantic.SecretStr` so that it never shows) and ``path`` (always
starting with ``/``); every other field is a query key. A field typed as a
list, tuple or set takes repeated keys (``?tag=a&tag=b``);
:data:`CommaSeparated` also accepts ``?tags=a,b``.

A class that declares ``Params`` receives the validated model as the keyword
argument ``params`` of its constructor; a class without ``Params`` accepts no
URI parts and no query keys beyond the common ones (:class:`CommonParams`),
and its constructor is called without ``params``.

This module imports no enricher: :mod:`enrichlog.enricher` uses it to check
a class's ``Params`` when the class is defined.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Annotated, Any, Final, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretBytes,
    SecretStr,
    field_validator,
)

from ..exceptions import EnricherConfigError
from ..options import EnricherOptions

__all__ = [
    "ASYNC_ONLY_KEYS",
    "COMMON_KEYS",
    "IDENTITY_KEYS",
    "KEY_ALIASES",
    "OPTION_KEYS",
    "URI_PARTS",
    "CommaSeparated",
    "CommonParams",
    "NoParams",
    "accepts_many",
    "allows_extra",
    "check_params",
    "params_model",
    "secret_fields",
]

URI_PARTS: Final = ("host", "port", "user", "password", "path")
"""``Params`` fields that are filled from the URI's parts, not its query."""

IDENTITY_KEYS: Final = ("name", "dependencies", "priority")
"""Common query keys that say who an enricher is and when it runs."""

OPTION_KEYS: Final = tuple(EnricherOptions.model_fields)
"""Common query keys that set a resilience knob (async enrichers only)."""

KEY_ALIASES: Final[Mapping[str, str]] = types.MappingProxyType({"ttl": "cache_ttl"})
"""Short query keys and the knob each one sets."""

ASYNC_ONLY_KEYS: Final = (*OPTION_KEYS, *KEY_ALIASES)
"""Common query keys that only :class:`~enrichlog.enricher.AsyncEnricher`
subclasses accept."""

COMMON_KEYS: Final = (*IDENTITY_KEYS, *ASYNC_ONLY_KEYS)
"""Query keys every scheme accepts (the knobs: async ones only), passed to
the constructor typed. ``Params`` may not declare fields with these names."""


MAX_NAME: Final = 100
"""The longest enricher name (and name of a dependency): it is a metrics
label, a key of every line's error field and a column of ``plan``."""


def _split_commas(value: Any) -> Any:
    # Repeated query keys arrive as a list of strings, a single one as a str;
    # both may hold comma-separated items.
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(item.strip() for text in value for item in text.split(",") if item.strip())
    return value


CommaSeparated = Annotated[tuple[str, ...], BeforeValidator(_split_commas)]
"""A ``Params`` field type for ``?key=a,b`` (and ``?key=a&key=b``).

Items are stripped of whitespace; empty items are dropped.
"""


class NoParams(BaseModel):
    """The parameters of an enricher class that declares no ``Params``: none."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class CommonParams(EnricherOptions):
    """The query keys every scheme accepts, validated and typed.

    The identity keys (``name``, ``dependencies``, ``priority``) and every
    knob of :class:`~enrichlog.options.EnricherOptions`, validated by that
    model; ``ttl`` is read as ``cache_ttl``. Only the keys given in the URI
    are set (``model_fields_set``); the rest keep the enricher class's own
    values.
    """

    name: Annotated[str, Field(min_length=1)] | None = None
    dependencies: CommaSeparated = ()
    priority: int | None = None

    @field_validator("dependencies")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Checked as names are (the enricher's own checks): a name no
        # enricher can have is a mistake, and a long one would fill the
        # "not configured" message. Neither is echoed.
        for name in value:
            if len(name) > MAX_NAME:
                raise ValueError(f"a dependency name is longer than {MAX_NAME} characters")
            if not name.isprintable():
                raise ValueError("a dependency name holds a control character")
        return value

    def constructor_kwargs(self) -> dict[str, Any]:
        """The keyword arguments these keys mean to an enricher constructor."""
        return {key: getattr(self, key) for key in self.model_fields_set}


# -- Params models -------------------------------------------------------------

_MANY = (list, tuple, set, frozenset, Sequence, AbstractSet)


def accepts_many(annotation: Any) -> bool:
    """Whether a field of this type takes several values (repeated keys)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return accepts_many(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(accepts_many(arg) for arg in get_args(annotation))
    return (origin or annotation) in _MANY


def _is_secret_annotation(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _is_secret_annotation(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_is_secret_annotation(arg) for arg in get_args(annotation))
    return annotation in (SecretStr, SecretBytes)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def params_model(cls: type) -> type[BaseModel]:
    """The ``Params`` model of an enricher class (:class:`NoParams` if none).

    Raises:
        EnricherConfigError: ``Params`` is not a pydantic model.
    """
    model = getattr(cls, "Params", NoParams)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise EnricherConfigError(
            f"enricher class {_qualname(cls)}: Params must be a pydantic "
            f"BaseModel subclass, got {model!r}"
        )
    return model


def check_params(cls: type) -> None:
    """Check that ``cls.Params`` is usable: a pydantic model that declares
    none of the :data:`COMMON_KEYS`.

    Raises:
        EnricherConfigError: naming the class and the fields at fault.
    """
    reserved = [key for key in params_model(cls).model_fields if key in COMMON_KEYS]
    if reserved:
        raise EnricherConfigError(
            f"enricher class {_qualname(cls)}: Params may not declare "
            f"{', '.join(reserved)}; every scheme accepts {', '.join(IDENTITY_KEYS)} "
            f"and the resilience keys ({', '.join(ASYNC_ONLY_KEYS)}) as common query keys"
        )


def secret_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of ``model`` declared as :class:`~pydantic.SecretStr` or
    :class:`~pydantic.SecretBytes` (optional or not)."""
    return frozenset(
        name for name, info in model.model_fields.items() if _is_secret_annotation(info.annotation)
    )


def allows_extra(model: type[BaseModel]) -> bool:
    """Whether ``model`` takes query keys it does not declare (``extra="allow"``)."""
    return model.model_config.get("extra") == "allow"
