"""`EnricherFactory`: enrichers named by URI.

A URI names an enricher class by its scheme and configures it with the rest::

    http-lookup://user:secret@users.internal:8080/users/{user_id}?ttl=60&name=user

Schemes come from the built-in enrichers (:mod:`enrichlog.enrichers`), from
classes that declare ``scheme = "..."`` (registered when the class is
defined), from :meth:`EnricherFactory.register`, and from installed packages
that advertise the entry-point group ``enrichlog.enrichers`` (the entry
point's name is the scheme, its object the enricher class). Scheme names are
letters, digits, ``-``, ``+`` and ``.``, starting with a letter; ``_`` is
accepted as an alias of ``-`` and case does not matter.

The ``Params`` convention
-------------------------
An enricher class declares the parameters its URI may carry as a pydantic
model in the class attribute ``Params``. URI parts map to the fields named
``host``, ``port``, ``user``, ``password`` (declare it as
:class:`pydantic.SecretStr` so that it never shows in a ``repr()``) and
``path`` (always starting with ``/``); every other field is a query key.
A field typed as a list, tuple or set takes repeated keys
(``?tag=a&tag=b``); :data:`CommaSeparated` also accepts ``?tags=a,b``.

A class that declares ``Params`` receives the validated model as the keyword
argument ``params`` of its constructor; a class without ``Params`` accepts no
URI parts and no query keys beyond the common ones, and its constructor is
called without ``params``::

    class LookupEnricher(AsyncEnricher):
        scheme = "lookup"

        class Params(BaseModel):
            model_config = ConfigDict(extra="forbid", frozen=True)
            host: str
            port: int = 80
            password: SecretStr | None = None

        def __init__(self, *, params: Params, **options: Any) -> None:
            super().__init__(**options)
            self.params = params

Common query keys, accepted by every scheme and passed to the constructor
as typed keyword arguments: ``name`` (str), ``dependencies`` (comma-separated
names, a tuple), ``priority`` (int) and, for :class:`AsyncEnricher`
subclasses only, ``timeout`` (seconds), ``ttl`` (seconds, passed as
``cache_ttl``) and ``max_concurrency`` (int). ``Params`` may not declare
fields with these names.

Every error is an :class:`~enrichlog.exceptions.EnricherConfigError` that
names the URI with its secrets masked (:func:`mask_uri`), the part at fault
and what was expected.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import types
from collections.abc import Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Annotated, Any, ClassVar, Final, Literal, Union, get_args, get_origin
from urllib.parse import parse_qsl, quote, unquote, unquote_plus, urlencode, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretBytes,
    SecretStr,
    ValidationError,
)

from ..enricher import AsyncEnricher, Enricher
from ..exceptions import EnricherConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "CommaSeparated",
    "CommonParams",
    "EnricherFactory",
    "EnricherSpec",
    "NoParams",
    "mask_uri",
]

ENTRY_POINT_GROUP: Final = "enrichlog.enrichers"
"""The entry-point group in which installed packages advertise enrichers."""

MASK: Final = "***"
"""What a secret shows as in URIs, messages and the plan."""

URI_PARTS: Final = ("host", "port", "user", "password", "path")
"""``Params`` fields that are filled from the URI's parts, not its query."""

ASYNC_ONLY_KEYS: Final = ("timeout", "ttl", "max_concurrency")
"""Common query keys that only :class:`AsyncEnricher` subclasses accept."""

COMMON_KEYS: Final = ("name", "dependencies", "priority", *ASYNC_ONLY_KEYS)
"""Query keys every scheme accepts, passed to the constructor typed."""

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-_]*\Z")
# Query keys whose values are masked even when no Params model says they are
# secret: a URI in an error message may not have reached its model yet.
_SECRET_KEY = re.compile(
    r"(?:^|[_\-.])(?:password|passwd|pwd|secret|token|api[_\-]?key|credentials?)\Z",
    re.IGNORECASE,
)
_PATH_SAFE = "/:@!$&'()*+,;={}"
_HOST_SAFE = "!$&'()*+,;="


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

_PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class NoParams(BaseModel):
    """The parameters of an enricher class that declares no ``Params``: none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CommonParams(BaseModel):
    """The query keys every scheme accepts, validated and typed.

    Only the keys given in the URI are set (``model_fields_set``); the rest
    keep the enricher class's own values.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1)] | None = None
    dependencies: CommaSeparated = ()
    priority: int | None = None
    timeout: _PositiveSeconds | None = None
    ttl: _PositiveSeconds | None = None
    max_concurrency: Annotated[int, Field(ge=1)] | None = None

    def constructor_kwargs(self) -> dict[str, Any]:
        """The keyword arguments these keys mean to an enricher constructor."""
        renamed = {"ttl": "cache_ttl"}
        return {renamed.get(key, key): getattr(self, key) for key in self.model_fields_set}


@dataclass(frozen=True, repr=False)
class EnricherSpec:
    """How :class:`EnricherFactory` built an enricher.

    Attributes:
        scheme: the normalised scheme (``_`` replaced by ``-``, lower case).
        uri: the URI as written, with its secrets masked.
        params: the validated ``Params`` (:class:`NoParams` if none).
        common: the common query keys given in the URI.
        source: ``"uri"``, or ``"plugin"`` when the scheme came from an
            installed package's entry point.
    """

    scheme: str
    uri: str
    params: BaseModel
    common: CommonParams
    source: Literal["uri", "plugin"]

    def __repr__(self) -> str:
        # The params of a careless class may hold a plain-str password; the
        # masked URI says everything a reader needs.
        return f"EnricherSpec({self.uri!r}, source={self.source!r})"


@dataclass(frozen=True)
class _ParsedURI:
    scheme: str
    parts: dict[str, Any]
    query: list[tuple[str, str]]


# -- masking -----------------------------------------------------------------


def _is_secret_key(key: str, secret_keys: Collection[str]) -> bool:
    return key in secret_keys or _SECRET_KEY.search(key) is not None


def _password_cut_short(netloc: str, rest: str) -> bool:
    port_text = netloc.partition(":")[2]
    return (
        "@" not in netloc
        and not netloc.startswith("[")
        and bool(port_text)
        and not port_text.isdigit()
        and "@" in rest
    )


def mask_uri(uri: str, secret_keys: Collection[str] = ()) -> str:
    """Return ``uri`` with its password, and the values of secret query keys,
    replaced by ``***``.

    Works on malformed URIs too (it is what error messages show). Query keys
    named in ``secret_keys``, and keys that look secret (``password``,
    ``token``, ``api_key``, ``client_secret``...), have their values masked.
    """
    head, sep, tail = uri.partition("://")
    if not sep:
        head, tail = "", uri
    netloc_end = min((i for i in (tail.find(c) for c in "/?#") if i >= 0), default=len(tail))
    netloc, rest = tail[:netloc_end], tail[netloc_end:]
    if _password_cut_short(netloc, rest):
        # 'u:pa/ss@host': a password with an unescaped '/', '?' or '#' ends
        # the authority early; what follows ':' is then no port, so hide it.
        later_at = rest.find("@")
        netloc, rest = netloc + rest[: later_at + 1], rest[later_at + 1 :]
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{hostport}"
    before_query, qmark, query = rest.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        fields = []
        for field in query.split("&"):
            key, eq, _ = field.partition("=")
            if eq and _is_secret_key(unquote_plus(key), secret_keys):
                field = f"{key}={MASK}"  # noqa: PLW2901 - rewriting in place
            fields.append(field)
        rest = f"{before_query}?{'&'.join(fields)}{hash_}{fragment}"
    return f"{head}{sep}{netloc}{rest}"


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove secret values from a message we did not write (pydantic's, a
    constructor's); very short secrets only where they appear quoted, so that
    a one-letter password does not mangle every word."""
    for secret in secrets:
        if not secret:
            continue
        if len(secret) >= 4:
            text = text.replace(secret, MASK)
        else:
            for quoted in (repr(secret), f'"{secret}"'):
                text = text.replace(quoted, repr(MASK))
    return text


# -- parsing -----------------------------------------------------------------


def _normalise_scheme(scheme: str) -> str:
    return scheme.lower().replace("_", "-")


def _check_scheme(scheme: object) -> str:
    """The normalised form of ``scheme``; raises if it is not a valid name."""
    if not isinstance(scheme, str) or not _SCHEME.match(scheme):
        raise EnricherConfigError(
            f"scheme {scheme!r} is not valid; a scheme is letters, digits, "
            "'-', '+', '.' (or '_' for '-'), starting with a letter"
        )
    return _normalise_scheme(scheme)


def _parse_port(text: str, fail: _Fail) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise fail(f"port {text!r} is not a number from 0 to 65535")
    return int(text)


def _parse_netloc(netloc: str, fail: _Fail) -> dict[str, Any]:
    if _password_cut_short(netloc, fail.rest):
        # Do not echo what follows ':': it is likely the start of a password.
        raise fail(
            "the host part ends before the '@': percent-encode any '/', '?', "
            "'#' or '@' in the user or password (e.g. '/' as %2F)"
        )
    parts: dict[str, Any] = {}
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            parts["user"] = unquote(user)
        if colon:
            parts["password"] = unquote(password)
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise fail(f"host {hostport!r} opens '[' but never closes it")
        host, after = hostport[1:end], hostport[end + 1 :]
        if after and not after.startswith(":"):
            raise fail(f"unexpected {after!r} after the host [{host}]")
        port_text = after[1:]
    else:
        host, _, port_text = hostport.partition(":")
    if host:
        parts["host"] = unquote(host)
    if port_text:
        parts["port"] = _parse_port(port_text, fail)
    return parts


def _parse_query(query: str, fail: _Fail) -> list[tuple[str, str]]:
    try:
        return parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        bad = next((f for f in query.split("&") if "=" not in f), query)
        what = "an empty query field (a doubled '&'?)" if not bad else repr(bad)
        raise fail(f"query: {what} is not key=value") from None


def _parse(uri: str) -> _ParsedURI:
    fail = _Fail(mask_uri(uri))
    text = uri.strip()
    if not text:
        raise EnricherConfigError(
            "enricher URI is empty; expected scheme://..., e.g. 'hostname://'"
        )
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise fail("missing '://' after the scheme; expected scheme://..., e.g. 'hostname://'")
    try:
        normalised = _check_scheme(scheme)
    except EnricherConfigError as exc:
        raise fail(str(exc)) from None
    # urlsplit only knows RFC schemes (no '_'), so it is given no scheme.
    try:
        split = urlsplit(f"//{rest}")
    except ValueError as exc:
        raise fail(f"the host part is malformed: {exc}") from None
    fail.rest = rest[len(split.netloc) :]
    parts = _parse_netloc(split.netloc, fail)
    if split.fragment or rest.endswith("#"):
        raise fail("a fragment ('#...') is not accepted; write '#' as %23")
    if split.path:
        parts["path"] = unquote(split.path)
    return _ParsedURI(normalised, parts, _parse_query(split.query, fail))


class _Fail:
    """Makes errors about one URI: prefixed with the masked URI, scrubbed of
    its secret values."""

    def __init__(self, masked: str, secrets: Sequence[str] = (), *, rest: str = "") -> None:
        self.masked = masked
        self.secrets = secrets
        self.rest = rest  # the URI after its authority, while parsing

    def __call__(self, detail: str) -> EnricherConfigError:
        return EnricherConfigError(f"enricher URI {self.masked!r}: {_scrub(detail, self.secrets)}")


# -- Params models -----------------------------------------------------------

_MANY = (list, tuple, set, frozenset, Sequence, AbstractSet)


def _accepts_many(annotation: Any) -> bool:
    """Whether a field takes several values (so repeated query keys)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _accepts_many(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_accepts_many(arg) for arg in get_args(annotation))
    return (origin or annotation) in _MANY


def _is_secret_annotation(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _is_secret_annotation(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return any(_is_secret_annotation(arg) for arg in get_args(annotation))
    return annotation in (SecretStr, SecretBytes)


def _params_model(cls: type[Enricher]) -> type[BaseModel]:
    model = getattr(cls, "Params", NoParams)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise EnricherConfigError(
            f"enricher class {_qualname(cls)}: Params must be a pydantic "
            f"BaseModel subclass, got {model!r}"
        )
    return model


def _secret_fields(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(
        name for name, info in model.model_fields.items() if _is_secret_annotation(info.annotation)
    )


def _allows_extra(model: type[BaseModel]) -> bool:
    return model.model_config.get("extra") == "allow"


def _describe_loc(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "parameters"
    head, *tail = loc
    what = str(head) if head in URI_PARTS else f"query key {head!r}"
    return what + "".join(f"[{item!r}]" for item in tail)


def _validation_detail(exc: ValidationError) -> str:
    # include_input=False: pydantic would otherwise echo the value, which
    # may be the secret.
    return "; ".join(
        f"{_describe_loc(error['loc'])}: {error['msg'].removeprefix('Value error, ')}"
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    )


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# -- entry points ------------------------------------------------------------


def _entry_points() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if _SCHEME.match(ep.name):
            found.setdefault(_normalise_scheme(ep.name), []).append(ep)
    return found


def _distribution_of(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None)
    return f"distribution {name!r}" if name else "an unknown distribution"


def _load_plugin(scheme: str, candidates: list[EntryPoint]) -> type[Enricher]:
    if len(candidates) > 1:
        owners = ", ".join(f"{ep.value} from {_distribution_of(ep)}" for ep in candidates)
        raise EnricherConfigError(
            f"enricher scheme {scheme!r} is advertised by several installed "
            f"packages: {owners}; uninstall all but one"
        )
    (ep,) = candidates
    where = f"enricher plugin {ep.name!r} ({ep.value}, from {_distribution_of(ep)})"
    try:
        loaded = ep.load()
    except Exception as exc:
        raise EnricherConfigError(
            f"{where} could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(loaded, type) and issubclass(loaded, Enricher)):
        raise EnricherConfigError(
            f"{where} is {loaded!r}, not a subclass of AsyncEnricher or SyncEnricher"
        )
    return loaded


# -- the factory -------------------------------------------------------------


class EnricherFactory:
    """Builds enrichers from URIs; keeps the scheme -> class registry.

    The registry is per process, like Python's codec registry: a scheme names
    a class, not an instance, so sharing it between containers is harmless.
    """

    _registry: ClassVar[dict[str, type[Enricher]]] = {}
    _plugins: ClassVar[dict[str, type[Enricher]]] = {}
    _builtins_loaded: ClassVar[bool] = False

    @classmethod
    def _ensure_builtins(cls) -> None:
        if cls._builtins_loaded:
            return
        # Set first: importing the module registers its classes, which calls
        # back into register() and so into here.
        cls._builtins_loaded = True
        # Lazily, because enrichers.builtin imports enricher.py, which imports
        # this module from Enricher.__init_subclass__.
        importlib.import_module("enrichlog.enrichers.builtin")

    @classmethod
    def register(cls, scheme: str, enricher_cls: type[Enricher]) -> None:
        """Make ``scheme://`` build ``enricher_cls``.

        Registering a class again, or a redefinition of it (same module and
        qualified name), is allowed.

        Raises:
            EnricherConfigError: the scheme is not a valid name, the class is
                not an enricher or its ``Params`` is unusable, or the scheme
                already names another class.
        """
        where = f"registering enricher scheme {scheme!r}"
        try:
            normalised = _check_scheme(scheme)
        except EnricherConfigError as exc:
            raise EnricherConfigError(f"{where}: {exc}") from None
        if not (isinstance(enricher_cls, type) and issubclass(enricher_cls, Enricher)):
            raise EnricherConfigError(
                f"{where}: {enricher_cls!r} is not an AsyncEnricher or SyncEnricher subclass"
            )
        reserved = set(_params_model(enricher_cls).model_fields) & set(COMMON_KEYS)
        if reserved:
            raise EnricherConfigError(
                f"enricher class {_qualname(enricher_cls)}: Params may not declare "
                f"{', '.join(sorted(reserved))}; every scheme accepts "
                f"{', '.join(COMMON_KEYS)} as common query keys"
            )
        cls._ensure_builtins()
        existing = cls._registry.get(normalised)
        if existing is not None and _qualname(existing) != _qualname(enricher_cls):
            raise EnricherConfigError(
                f"enricher scheme {normalised!r} is already registered to "
                f"{_qualname(existing)}; cannot register {_qualname(enricher_cls)}"
            )
        cls._registry[normalised] = enricher_cls
        cls._plugins.pop(normalised, None)

    @classmethod
    def unregister(cls, scheme: str) -> None:
        """Forget ``scheme`` (a registered class or a loaded plugin); for tests.

        Does nothing if the scheme is not registered. An installed plugin's
        scheme stays known: it is loaded again when next requested.
        """
        normalised = _normalise_scheme(scheme)
        cls._registry.pop(normalised, None)
        cls._plugins.pop(normalised, None)

    @classmethod
    def known_schemes(cls) -> list[str]:
        """Every scheme :meth:`build` accepts, sorted: built-ins, registered
        classes and installed plugins (which are not loaded by this call)."""
        cls._ensure_builtins()
        return sorted({*cls._registry, *cls._plugins, *_entry_points()})

    @classmethod
    def lookup(cls, scheme: str) -> tuple[type[Enricher], Literal["uri", "plugin"]]:
        """The class ``scheme`` names, and whether it came from a plugin.

        Plugins are loaded here, on first request, and only for schemes not
        registered otherwise.

        Raises:
            EnricherConfigError: the scheme is unknown (the message lists the
                known ones and suggests the closest) or its plugin is broken.
        """
        normalised = _check_scheme(scheme)
        cls._ensure_builtins()
        if normalised in cls._plugins:
            return cls._plugins[normalised], "plugin"
        if normalised in cls._registry:
            return cls._registry[normalised], "uri"
        candidates = _entry_points().get(normalised)
        if candidates:
            plugin = _load_plugin(normalised, candidates)
            cls._plugins[normalised] = plugin
            return plugin, "plugin"
        known = cls.known_schemes()
        close = difflib.get_close_matches(normalised, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise EnricherConfigError(
            f"unknown scheme {normalised!r}{hint} Known schemes: {', '.join(known) or '(none)'}"
        )

    @classmethod
    def build(cls, uri: str) -> Enricher:
        """Build the enricher that ``uri`` names, configured by it.

        Raises:
            EnricherConfigError: the URI is malformed, its scheme unknown, a
                part or query key not accepted or not valid, or the
                enricher's constructor refused the values. The message shows
                the URI with its secrets masked and names the part at fault.
        """
        if not isinstance(uri, str):
            raise EnricherConfigError(f"an enricher URI must be a string, got {type(uri).__name__}")
        parsed = _parse(uri)
        try:
            enricher_cls, source = cls.lookup(parsed.scheme)
        except EnricherConfigError as exc:
            # Keep the plugin's import error, if any, as the cause.
            raise _Fail(mask_uri(uri))(str(exc)) from exc.__cause__
        model = _params_model(enricher_cls)
        secret_keys = _secret_fields(model)
        secrets = [
            value
            for key, value in (*parsed.parts.items(), *parsed.query)
            if isinstance(value, str) and (key == "password" or _is_secret_key(key, secret_keys))
        ]
        fail = _Fail(mask_uri(uri, secret_keys), secrets)
        common, rest = _split_common(parsed.query, enricher_cls, fail)
        params = _validate_params(
            model, parsed, rest, fail, is_async=issubclass(enricher_cls, AsyncEnricher)
        )
        kwargs = common.constructor_kwargs()
        if model is not NoParams:
            kwargs["params"] = params
        enricher = _construct(enricher_cls, kwargs, fail)
        enricher.source = source
        # Stored under a private name: Enricher declares no slot for it, and
        # spec_of() is the way to read it.
        enricher._enrichlog_spec = EnricherSpec(  # type: ignore[attr-defined]
            parsed.scheme, fail.masked, params, common, source
        )
        return enricher

    @classmethod
    def spec_of(cls, enricher: Enricher) -> EnricherSpec | None:
        """How ``enricher`` was built, or ``None`` if not by :meth:`build`."""
        spec = getattr(enricher, "_enrichlog_spec", None)
        return spec if isinstance(spec, EnricherSpec) else None

    @classmethod
    def to_uri(cls, enricher: Enricher, *, reveal_secrets: bool = False) -> str:
        """Write the URI that builds ``enricher`` again.

        The password and secret parameters show as ``***`` unless
        ``reveal_secrets`` is true. The URI is in canonical form: parameters
        in field order, then the common keys given.

        Raises:
            EnricherConfigError: ``enricher`` was not built by :meth:`build`,
                or a parameter has no URI form (a nested model, a mapping).
        """
        spec = cls.spec_of(enricher)
        if spec is None:
            raise EnricherConfigError(
                f"enricher {enricher.name!r} was not built from a URI, so it has none to write"
            )
        return _write_uri(spec, reveal_secrets=reveal_secrets)


def _split_common(
    query: list[tuple[str, str]], enricher_cls: type[Enricher], fail: _Fail
) -> tuple[CommonParams, list[tuple[str, str]]]:
    given: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for key, value in query:
        if key not in COMMON_KEYS:
            rest.append((key, value))
        elif key == "dependencies" and key in given:
            given[key] = f"{given[key]},{value}"
        elif key in given:
            raise fail(f"query key {key!r} is given more than once")
        else:
            given[key] = value
    misplaced = [key for key in ASYNC_ONLY_KEYS if key in given]
    if misplaced and not issubclass(enricher_cls, AsyncEnricher):
        raise fail(
            f"query key {misplaced[0]!r} applies to async enrichers only; "
            f"{enricher_cls.__name__} runs inline without a timeout, cache or "
            "concurrency limit"
        )
    try:
        return CommonParams.model_validate(given), rest
    except ValidationError as exc:
        raise fail(_validation_detail(exc)) from None


def _validate_params(
    model: type[BaseModel],
    parsed: _ParsedURI,
    query: list[tuple[str, str]],
    fail: _Fail,
    *,
    is_async: bool,
) -> BaseModel:
    fields = model.model_fields
    data: dict[str, Any] = {}
    for part, value in parsed.parts.items():
        if part == "path" and value == "/" and part not in fields:
            continue  # 'scheme:///' and 'scheme:///?k=v' mean no path
        if part not in fields:
            raise fail(
                f"the {part} part is not accepted by scheme {parsed.scheme!r}"
                + _accepted_parts(fields)
            )
        data[part] = value
    for key, value in query:
        if key in URI_PARTS and key in fields:
            raise fail(f"{key} belongs in the URI's {key} part, not in its query")
        if key not in fields and not _allows_extra(model):
            unknown = sorted({k for k, _ in query if k not in fields})
            raise fail(
                f"unknown query key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; accepted keys: "
                f"{', '.join(_accepted_keys(fields, is_async))}"
            )
        if key in fields and _accepts_many(fields[key].annotation):
            data.setdefault(key, []).append(value)
        elif key in data:
            raise fail(f"query key {key!r} is given more than once")
        else:
            data[key] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise fail(_validation_detail(exc)) from None


def _accepted_keys(fields: Mapping[str, Any], is_async: bool) -> list[str]:
    common = COMMON_KEYS if is_async else COMMON_KEYS[: -len(ASYNC_ONLY_KEYS)]
    return [*(key for key in fields if key not in URI_PARTS), *common]


def _accepted_parts(fields: Mapping[str, Any]) -> str:
    parts = [part for part in URI_PARTS if part in fields]
    return f" (it takes: {', '.join(parts)})" if parts else " (it takes none)"


def _construct(enricher_cls: type[Enricher], kwargs: dict[str, Any], fail: _Fail) -> Enricher:
    try:
        inspect.signature(enricher_cls).bind(**kwargs)
    except TypeError as exc:
        raise fail(
            f"{_qualname(enricher_cls)} cannot be constructed with "
            f"{', '.join(sorted(kwargs))} ({exc}); a class that declares "
            "Params must accept params=, and the common keys as keywords"
        ) from None
    except ValueError:
        pass  # no introspectable signature: let the call itself decide
    try:
        return enricher_cls(**kwargs)
    except ValidationError as exc:
        raise fail(_validation_detail(exc)) from None
    except ValueError as exc:  # EnricherConfigError is a ValueError too
        raise fail(str(exc)) from None


# -- writing URIs ------------------------------------------------------------


def _uri_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise EnricherConfigError(f"parameter {key!r} has no URI form (a {type(value).__name__})")


def _param_items(params: BaseModel, reveal_secrets: bool) -> dict[str, list[str]]:
    dumped = params.model_dump(mode="json", exclude_unset=True)
    items: dict[str, list[str]] = {}
    for key, value in dumped.items():
        raw = getattr(params, key, None)
        if isinstance(raw, SecretStr | SecretBytes):
            secret = raw.get_secret_value()
            text = secret.decode() if isinstance(secret, bytes) else secret
            items[key] = [text if reveal_secrets else MASK]
        elif value is None:
            continue  # a URI cannot say None; the field keeps its default
        elif isinstance(value, list):
            items[key] = [_uri_value(key, item) for item in value]
        else:
            items[key] = [_uri_value(key, value)]
    return items


def _write_netloc(items: dict[str, list[str]], reveal_secrets: bool) -> str:
    def one(part: str) -> str | None:
        values = items.pop(part, None)
        return values[0] if values else None

    user, password, host, port = one("user"), one("password"), one("host"), one("port")
    netloc = ""
    if user is not None or password is not None:
        netloc = quote(user or "", safe="")
        if password is not None:
            shown = password if reveal_secrets else MASK
            netloc += ":" + (quote(shown, safe="") if reveal_secrets else shown)
        netloc += "@"
    if host is not None:
        netloc += f"[{host}]" if ":" in host else quote(host, safe=_HOST_SAFE)
    if port is not None:
        netloc += f":{port}"
    return netloc


def _write_uri(spec: EnricherSpec, *, reveal_secrets: bool) -> str:
    items = _param_items(spec.params, reveal_secrets)
    netloc = _write_netloc(items, reveal_secrets)
    path_values = items.pop("path", None)
    path = ""
    if path_values:
        path = quote(path_values[0], safe=_PATH_SAFE)
        if not path.startswith("/"):
            path = "/" + path
    query = [(key, value) for key, values in items.items() for value in values]
    common = spec.common
    for key in COMMON_KEYS:
        if key in common.model_fields_set:
            value = getattr(common, key)
            text = ",".join(value) if key == "dependencies" else _uri_value(key, value)
            query.append((key, text))
    uri = f"{spec.scheme}://{netloc}{path}"
    if query:
        # Sub-delimiters, legal in a query: keeps '***' and 'a,b' readable.
        uri += "?" + urlencode(query, safe="*,")
    return uri
