"""The scheme registry: which class a URI scheme names.

Schemes come from four places, looked up in this order:

1. classes registered in this process: a class that declares
   ``scheme = "..."`` (registered when it is defined) or one passed to
   :func:`register`;
2. plugins already loaded;
3. the built-in table :data:`BUILTIN_SCHEMES`, ``scheme -> "module:Class"``,
   whose module is imported on the first lookup of one of its schemes;
4. installed packages that advertise the entry-point group
   :data:`ENTRY_POINT_GROUP` (the entry point's name is the scheme, its
   object the class), loaded on the first lookup of their scheme.

Scheme names are letters, digits, ``-``, ``+`` and ``.``, starting with a
letter; ``_`` is accepted as an alias of ``-`` and case does not matter.

The registry is per process, like Python's codec registry: a scheme names a
class, not an instance, so sharing it between containers is harmless. This
module imports no enricher (:mod:`enrichlog.enricher` imports it to register
classes); whether a class is an enricher is checked by
:class:`~enrichlog.uri.factory.EnricherFactory`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Final, Literal

from ..exceptions import EnricherConfigError

__all__ = [
    "BUILTIN_SCHEMES",
    "ENTRY_POINT_GROUP",
    "Source",
    "check_scheme",
    "describe",
    "known_schemes",
    "lookup",
    "normalise_scheme",
    "register",
    "unregister",
]

ENTRY_POINT_GROUP: Final = "enrichlog.enrichers"
"""The entry-point group in which installed packages advertise enrichers."""

BUILTIN_SCHEMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "env": "enrichlog.enrichers.builtin:EnvEnricher",
        "hostname": "enrichlog.enrichers.builtin:HostnameEnricher",
        "process": "enrichlog.enrichers.builtin:ProcessEnricher",
        "static": "enrichlog.enrichers.builtin:StaticEnricher",
        "http-lookup": "enrichlog.enrichers.http:HttpLookupEnricher",
        "otel": "enrichlog.enrichers.otel:OtelEnricher",
        "postgres-lookup": "enrichlog.enrichers.postgres:PostgresLookupEnricher",
        "redis-lookup": "enrichlog.enrichers.redis:RedisLookupEnricher",
    }
)
"""The schemes that ship with enrichlog: ``scheme -> "module:Class"``."""

Source = Literal["uri", "plugin"]
"""Where a scheme's class came from: registered or built in (``uri``), or an
installed package's entry point (``plugin``)."""

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-_]*\Z")

_registered: dict[str, type] = {}
_plugins: dict[str, type] = {}
_plugin_origins: dict[str, str] = {}


def normalise_scheme(scheme: str) -> str:
    """``scheme`` in its one spelling: lower case, ``_`` as ``-``."""
    return scheme.lower().replace("_", "-")


def check_scheme(scheme: object) -> str:
    """The normalised form of ``scheme``.

    Raises:
        EnricherConfigError: ``scheme`` is not a valid scheme name.
    """
    if not isinstance(scheme, str) or not _SCHEME.match(scheme):
        raise EnricherConfigError(
            f"scheme {scheme!r} is not valid; a scheme is letters, digits, "
            "'-', '+', '.' (or '_' for '-'), starting with a letter"
        )
    return normalise_scheme(scheme)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _builtin_qualname(scheme: str) -> str | None:
    target = BUILTIN_SCHEMES.get(scheme)
    return target.replace(":", ".") if target else None


def register(scheme: str, cls: type) -> None:
    """Make ``scheme`` name ``cls``.

    Registering a class again, or a redefinition of it (same module and
    qualified name), is allowed; a registered class takes precedence over a
    plugin of the same scheme.

    Raises:
        EnricherConfigError: the scheme is not a valid name, or it already
            names another class (registered, or built in).
    """
    try:
        normalised = check_scheme(scheme)
    except EnricherConfigError as exc:
        raise EnricherConfigError(f"registering enricher scheme {scheme!r}: {exc}") from None
    existing = _registered.get(normalised)
    taken_by = _qualname(existing) if existing is not None else _builtin_qualname(normalised)
    if taken_by is not None and taken_by != _qualname(cls):
        raise EnricherConfigError(
            f"enricher scheme {normalised!r} is already registered to "
            f"{taken_by}; cannot register {_qualname(cls)}"
        )
    _registered[normalised] = cls
    _plugins.pop(normalised, None)


def unregister(scheme: str) -> None:
    """Forget the class registered or loaded for ``scheme``; for tests.

    Does nothing if there is none. A built-in or installed plugin's scheme
    stays known: it is loaded again on its next lookup.
    """
    normalised = normalise_scheme(scheme)
    _registered.pop(normalised, None)
    _plugins.pop(normalised, None)


def known_schemes() -> list[str]:
    """Every scheme :func:`lookup` accepts, sorted; imports nothing."""
    return sorted({*_registered, *_plugins, *BUILTIN_SCHEMES, *_entry_points()})


def lookup(scheme: str) -> tuple[type, Source] | None:
    """The class ``scheme`` names and where it came from, or ``None`` if no
    class or installed package provides it.

    Raises:
        EnricherConfigError: the scheme is not a valid name, or its built-in
            or plugin class cannot be loaded.
    """
    normalised = check_scheme(scheme)
    if normalised in _registered:
        return _registered[normalised], "uri"
    if normalised in _plugins:
        return _plugins[normalised], "plugin"
    if normalised in BUILTIN_SCHEMES:
        return _load_builtin(normalised), "uri"
    candidates = _entry_points().get(normalised)
    if candidates:
        _plugins[normalised] = _load_plugin(normalised, candidates)
        return _plugins[normalised], "plugin"
    return None


def describe(scheme: str) -> str:
    """Where the class of ``scheme`` comes from, for messages: the plugin's
    entry point and distribution, or the scheme and its class."""
    normalised = normalise_scheme(scheme)
    if normalised in _plugin_origins and normalised not in _registered:
        return _plugin_origins[normalised]
    cls = _registered.get(normalised)
    return f"enricher scheme {normalised!r}" + (f" ({_qualname(cls)})" if cls else "")


def _load_builtin(scheme: str) -> type:
    target = BUILTIN_SCHEMES[scheme]
    module_name, _, class_name = target.partition(":")
    try:
        # Importing the module defines its classes, which register their schemes.
        cls = getattr(importlib.import_module(module_name), class_name)
    except (Exception, SystemExit) as exc:
        # An optional dependency of a built-in enricher may be missing.
        raise EnricherConfigError(
            f"built-in enricher scheme {scheme!r} ({target}) could not be loaded: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    _registered.setdefault(scheme, cls)
    return _registered[scheme]


def _entry_points() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if _SCHEME.match(ep.name):
            found.setdefault(normalise_scheme(ep.name), []).append(ep)
    return found


def _distribution_of(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None)
    return f"distribution {name!r}" if name else "an unknown distribution"


def _load_plugin(scheme: str, candidates: list[EntryPoint]) -> type:
    if len(candidates) > 1:
        owners = ", ".join(f"{ep.value} from {_distribution_of(ep)}" for ep in candidates)
        raise EnricherConfigError(
            f"enricher scheme {scheme!r} is advertised by several installed "
            f"packages: {owners}; uninstall all but one"
        )
    (ep,) = candidates
    where = f"enricher plugin {ep.name!r} ({ep.value}, from {_distribution_of(ep)})"
    _plugin_origins[scheme] = where
    try:
        loaded = ep.load()
    except (Exception, SystemExit) as exc:
        # A module that calls sys.exit() on import is broken like one that
        # raises: not a reason to end the application (or `check`).
        raise EnricherConfigError(
            f"{where} could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(loaded, type):
        raise EnricherConfigError(
            f"{where} is {loaded!r}, not a subclass of AsyncEnricher or SyncEnricher"
        )
    return loaded
