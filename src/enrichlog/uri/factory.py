"""`EnricherFactory`: enrichers built from URIs, and URIs written back.

A URI names an enricher class by its scheme and configures it with the rest::

    http-lookup://user:secret@users.internal:8080/users/{user_id}?ttl=60&name=user

The scheme is looked up in the registry (:mod:`enrichlog.uri.schemes`); the
URI's parts and query keys are validated by the class's ``Params`` model
(:mod:`enrichlog.uri.params`), except the common query keys, which are
validated by :class:`~enrichlog.uri.params.CommonParams` and passed to the
constructor as typed keyword arguments: ``name``, ``dependencies``,
``priority`` and, for :class:`~enrichlog.enricher.AsyncEnricher` subclasses
only, every knob of :class:`~enrichlog.options.EnricherOptions` (``ttl`` is
accepted for ``cache_ttl``).

Every error is an :class:`~enrichlog.exceptions.EnricherConfigError` that
names the URI with its secrets masked (:func:`~enrichlog.uri.masking.mask_uri`),
the part at fault and what was expected; a message written by pydantic or by
a constructor is scrubbed of the URI's secret values.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, unquote_plus, urlencode, urlsplit

from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError

from ..enricher import AsyncEnricher, Enricher
from ..exceptions import EnricherConfigError, did_you_mean
from . import schemes
from .masking import (
    MASK,
    is_secret_name,
    mask_secrets,
    mask_uri,
    password_cut_short,
    scrub,
    secrets_in,
    split_authority,
)
from .params import (
    ASYNC_ONLY_KEYS,
    COMMON_KEYS,
    IDENTITY_KEYS,
    KEY_ALIASES,
    OPTION_KEYS,
    URI_PARTS,
    CommonParams,
    NoParams,
    accepts_many,
    allows_extra,
    check_params,
    params_model,
    secret_fields,
)

__all__ = ["EnricherFactory", "EnricherSpec"]

_PATH_SAFE = "/:@!$&'()*+,;={}"
_HOST_SAFE = "!$&'()*+,;="


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
    source: schemes.Source

    def __repr__(self) -> str:
        # The params of a careless class may hold a plain-str password; the
        # masked URI says everything a reader needs.
        return f"EnricherSpec({self.uri!r}, source={self.source!r})"


@dataclass(frozen=True)
class _ParsedURI:
    scheme: str
    parts: dict[str, Any]
    query: list[tuple[str, str]]


class _Fail:
    """Makes errors about one URI: prefixed with the masked URI, scrubbed of
    its secret values."""

    def __init__(
        self,
        masked: str,
        secrets: Sequence[str] = (),
        *,
        rest: str = "",
        uri: str | None = None,
        secret_keys: Collection[str] = (),
    ) -> None:
        self.masked = masked
        self.secrets = secrets
        self.rest = rest  # the URI after its authority, while parsing
        self._uri = uri
        self._secret_keys = secret_keys

    def __call__(self, detail: str, expected: str = "") -> EnricherConfigError:
        """The error: ``detail`` (from the URI: shortened, masked) and
        ``expected`` (what the scheme accepts: the project's own words,
        shown whole)."""
        shown = shortened(mask_secrets(scrub(detail, self.secrets)))
        return EnricherConfigError(f"enricher URI {shortened(self.masked)!r}: {shown}{expected}")

    def rejected(
        self, exc: ValidationError, names: Mapping[str, str] | None = None
    ) -> EnricherConfigError:
        """The error for a validation that failed: the URI it shows masks
        the values of the query keys at fault as well (a rejected value is
        never echoed: it may be a secret in the wrong place)."""
        detail = _validation_detail(exc, names)
        at_fault = [
            error
            for error in exc.errors(include_url=False, include_context=False)
            if error["loc"] and error["loc"][0] not in URI_PARTS
        ]
        keys = {(names or {}).get(str(error["loc"][0]), str(error["loc"][0])) for error in at_fault}
        return self.masking(keys)(detail)

    def hiding(self, part: str) -> _Fail:
        """This, showing the URI with its ``user`` part as ``***`` when it
        has no password (``TOKEN@host``: the user may be a token), or its
        ``path``; a password is masked already."""
        if self._uri is None:
            return self
        head, sep, tail = self.masked.partition("://")
        netloc, rest = split_authority(tail)
        userinfo, at, hostport = netloc.rpartition("@")
        if part == "user" and at and ":" not in userinfo:
            netloc = f"{MASK}@{hostport}"  # no password: the user may be a token
        elif part == "path" and rest.startswith("/"):
            end = min((i for i in (rest.find(c) for c in "?#") if i >= 0), default=len(rest))
            rest = f"/{MASK}{rest[end:]}"
        return _Fail(head + sep + netloc + rest, self.secrets)

    def masking(self, keys: Collection[str]) -> _Fail:
        """This, showing the URI with the values of query ``keys`` masked
        too (the keys at fault: a rejected value is never echoed)."""
        if self._uri is None or not keys:
            return self
        return _Fail(mask_uri(self._uri, {*self._secret_keys, *keys}), self.secrets)


#: The most of a URI, or of a detail, an error shows (a 100,000-character
#: value would make a message of that size).
_SHOWN_CHARACTERS = 300


def shortened(text: str, limit: int = _SHOWN_CHARACTERS) -> str:
    """``text``, or its first ``limit`` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text):,} characters)"


# -- parsing -----------------------------------------------------------------


def _parse_port(text: str, fail: _Fail) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        # Not echoed: 'user:password' without '@host' reads as host and port.
        raise fail(
            "the port is not a number from 0 to 65535 (or a password is missing the "
            "'@host' after it)"
        )
    return int(text)


def _parse_netloc(netloc: str, fail: _Fail) -> dict[str, Any]:
    if password_cut_short(netloc, fail.rest):
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
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise _query_error(query, fail) from None
    fields = query.split("&")
    for previous, field in itertools.pairwise(fields):
        key = field.partition("=")[0]
        if any(char in key for char in "@/?") and _may_be_cut(previous):
            # After a nested URI or a secret, such a key ('ss@db/x?sslmode')
            # is the rest of its value cut at a raw '&', which must neither
            # be shown nor become a field.
            raise fail("query: a field is not key=value (percent-encode '&' as %26)")
    return pairs


def _may_be_cut(field: str) -> bool:
    """Whether the value of query ``field`` may have been cut at a raw '&'
    that it held: a secret's, or a nested URI's (its password or query)."""
    return "://" in field or is_secret_name(unquote_plus(field.partition("=")[0]))


def _query_error(query: str, fail: _Fail) -> EnricherConfigError:
    """The error for a query that is not ``key=value&...``; a field that
    may be the rest of a secret is not quoted."""
    fields = query.split("&")
    bad = next((index for index, field in enumerate(fields) if "=" not in field), 0)
    if not fields[bad]:
        return fail("query: an empty query field (a doubled '&'?) is not key=value")
    if any(_may_be_cut(field) for field in fields[:bad]) or any(
        char in fields[bad] for char in "@:"
    ):
        # After a secret or a nested URI, the field may be the rest of it (a
        # password cut at a raw '&'): not shown.
        return fail("query: a field is not key=value (percent-encode '&' as %26)")
    return fail(f"query: {fields[bad]!r} is not key=value")


def _parse(uri: str) -> _ParsedURI:
    fail = _Fail(mask_uri(uri), uri=uri)
    text = uri.strip()
    if not text:
        raise EnricherConfigError(
            "enricher URI is empty; expected scheme://..., e.g. 'hostname://'"
        )
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise fail("missing '://' after the scheme; expected scheme://..., e.g. 'hostname://'")
    try:
        normalised = schemes.check_scheme(scheme)
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
        # Every query value masked: the '#' may be in a secret whose key is
        # mistyped ('passwrod=S3cr#t'), which the masking does not know.
        keys = [field.partition("=")[0] for field in split.query.split("&") if "=" in field]
        raise fail.masking(keys)("a fragment ('#...') is not accepted; write '#' as %23")
    if split.path:
        parts["path"] = unquote(split.path)
    return _ParsedURI(normalised, parts, _parse_query(split.query, fail))


def _secret_values(uri: str, parsed: _ParsedURI, secret_keys: frozenset[str]) -> list[str]:
    """Every secret value of ``uri``, for scrubbing messages we did not write."""
    found = list(secrets_in(uri))
    password = parsed.parts.get("password")
    if isinstance(password, str):
        found.append(password)
    for key, value in parsed.query:
        if key in secret_keys or is_secret_name(key):
            found.append(value)
        found += secrets_in(value)
    return found


# -- validating ----------------------------------------------------------------


def _as_given(value: object) -> list[str]:
    """A rejected value's texts as a message may quote them: the value as
    the URI wrote it, and each item of a comma-separated list
    (``columns=a,a``)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        return []
    # A comma-separated list may arrive split or not yet.
    items = [part for item in value for part in item.split(",")]
    return [*value, *items, ",".join(value)]


def _describe_loc(loc: tuple[int | str, ...], names: Mapping[str, str]) -> str:
    if not loc:
        return "parameters"
    head, *tail = loc
    what = str(head) if head in URI_PARTS else f"query key {names.get(str(head), head)!r}"
    return what + "".join(f"[{item!r}]" for item in tail)


def _validation_detail(exc: ValidationError, names: Mapping[str, str] | None = None) -> str:
    # pydantic's own messages do not hold the input (it is not asked for:
    # it may be the secret), but a validator's may quote the value it
    # refused, in any form: scrubbed of it.
    return "; ".join(
        f"{_describe_loc(error['loc'], names or {})}: {_error_message(error)}"
        for error in exc.errors(include_url=False, include_context=False)
    )


def _error_message(error: Any) -> str:
    """One pydantic error's message; a validator's (a ``ValueError`` or an
    assertion) without the value it refused."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] in ("value_error", "assertion_error"):
        return _without_value(message, error.get("input"))
    return message


def _without_value(message: str, rejected: object) -> str:
    """``message`` with each text of the ``rejected`` value as ``***``:
    quoted, and as a whole word where it has four characters or more (a
    shorter one would mangle the message's own words)."""
    texts = _as_given(rejected)
    message = scrub(message, texts, quoted_only=True)
    for text in sorted(set(texts), key=len, reverse=True):
        if len(text) >= 4:
            pattern = rf"(?<![\w]){re.escape(text)}(?![\w])"
            message = re.sub(pattern, lambda _: MASK, message)
    return message


def _split_common(
    query: list[tuple[str, str]], enricher_cls: type[Enricher], fail: _Fail
) -> tuple[CommonParams, list[tuple[str, str]]]:
    given: dict[str, str] = {}
    written: dict[str, str] = {}  # field -> the key as the URI writes it
    rest: list[tuple[str, str]] = []
    for key, value in query:
        if key not in COMMON_KEYS:
            rest.append((key, value))
            continue
        field = KEY_ALIASES.get(key, key)
        if field == "dependencies" and field in given:
            given[field] = f"{given[field]},{value}"
        elif field in given:
            also = "" if written[field] == key else f" (also as {written[field]!r})"
            raise fail(f"query key {key!r} is given more than once{also}")
        else:
            given[field], written[field] = value, key
    misplaced = [written[field] for field in given if field in OPTION_KEYS]
    if misplaced and not issubclass(enricher_cls, AsyncEnricher):
        raise fail(
            f"query key {misplaced[0]!r} applies to async enrichers only; "
            f"{enricher_cls.__name__} runs inline without a timeout, cache, circuit "
            "breaker, retries, concurrency limit or batching"
        )
    try:
        return CommonParams.model_validate(given), rest
    except ValidationError as exc:
        raise fail.rejected(exc, written) from None


def _validate_params(
    model: type[BaseModel],
    parsed: _ParsedURI,
    query: list[tuple[str, str]],
    fail: _Fail,
    *,
    is_async: bool,
) -> BaseModel:
    fields = model.model_fields
    if allows_extra(model):
        # Its unknown keys are refused by its own validation: their values
        # are not echoed either (a mistyped 'passwrod=...').
        aliases = {info.alias for info in fields.values() if info.alias}
        fail = fail.masking({key for key, _ in query if key not in fields and key not in aliases})
    data: dict[str, Any] = {}
    for part, value in parsed.parts.items():
        if part == "path" and value == "/" and part not in fields:
            continue  # 'scheme:///' and 'scheme:///?k=v' mean no path
        if part not in fields:
            # The rejected part is not echoed: a user part without a
            # password may be a token ('https://TOKEN@host'), a path a
            # misplaced password.
            shown = fail if part in ("host", "port") else fail.hiding(part)
            raise shown(
                f"the {part} part is not accepted by scheme {parsed.scheme!r}",
                _accepted_parts(fields),
            )
        data[part] = value
    for key, value in query:
        if key in URI_PARTS and key in fields:
            raise fail(f"{key} belongs in the URI's {key} part, not in its query")
        if key not in fields and not allows_extra(model):
            unknown = sorted({k for k, _ in query if k not in fields})
            # Their values not echoed: a mistyped key may be a mistyped
            # secret name ('passwrod=...').
            raise fail.masking(unknown)(
                f"unknown query key{'s' if len(unknown) > 1 else ''} "
                f"{_with_hints(unknown, _key_names(fields, is_async))}",
                f"; accepted keys: {_accepted_keys(fields, is_async)}",
            )
        if key in fields and accepts_many(fields[key].annotation):
            data.setdefault(key, []).append(value)
        elif key in data:
            raise fail(f"query key {key!r} is given more than once")
        else:
            data[key] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise fail.rejected(exc) from None
    except _PLUGIN_FAILURES as exc:
        # A validator may raise what pydantic does not turn into a
        # validation error (KeyError, ZeroDivisionError, even SystemExit):
        # still a problem of this URI, and of the parameter whose value set
        # it off.
        raise _validator_failed(model, data, exc, fail) from None


#: What a plugin's code (a validator, a constructor) may raise that is a
#: configuration problem, not the application's end: everything but Ctrl-C.
#: (A SystemExit(0) from a validator used to end `check` with status 0, and
#: the application, silently.)
_PLUGIN_FAILURES = (Exception, SystemExit, GeneratorExit)


def _describe(exc: BaseException) -> str:
    """``str(exc)``, or its type's name when even that raises."""
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose message cannot be shown>"


def _validator_failed(
    model: type[BaseModel], data: dict[str, Any], exc: BaseException, fail: _Fail
) -> EnricherConfigError:
    """The error for a ``Params`` validator that raised ``exc``, neither a
    ``ValueError`` nor an ``AssertionError``: names the parameter whose
    value sets it off (without it the validation no longer raises that),
    and never echoes its value."""
    culprits: list[str] = []
    for key in data:
        try:
            model.model_validate({k: v for k, v in data.items() if k != key})
        except ValidationError:
            culprits.append(key)  # fails otherwise without it: a suspect
        except _PLUGIN_FAILURES as again:
            if type(again) is type(exc):
                continue
            culprits.append(key)
        else:
            culprits.append(key)
    culprit = culprits[0] if len(culprits) == 1 else None
    message = _describe(exc)
    for value in data.values():
        message = _without_value(message, value)
    keys: list[str] = []
    if culprit is None:
        where = "parameters"
    elif culprit in URI_PARTS:
        where = culprit
    else:
        where, keys = f"query key {culprit!r}", [culprit]
    return fail.masking(keys)(
        f"{where}: the validator of {_qualname(model)} failed with {type(exc).__name__}: {message}"
    )


def _shown_key(key: str) -> str:
    """A query key as an error shows it: not at all when it is no plain
    name (``pw?x@db/0?key`` is what a password holding a ``?`` leaves of a
    malformed URI)."""
    return key if _PLAIN_KEY.fullmatch(key) else "<a key that is not a plain name>"


_PLAIN_KEY = re.compile(r"[A-Za-z_][\w.\-\[\]]{0,63}")


def _with_hints(unknown: list[str], known: list[str]) -> str:
    """The unknown keys as an error lists them, each with the accepted key
    it is closest to (a key that is no plain name: neither shown nor
    hinted)."""
    listed: dict[str, str] = {}
    for key in unknown:
        shown = _shown_key(key)
        listed[shown] = did_you_mean(key, known) if shown == key else ""
    return ", ".join(f"{shown!r}{hint}" for shown, hint in listed.items())


def _scheme_keys(fields: Mapping[str, Any]) -> list[str]:
    """The query keys of a scheme's own parameters, and the identity keys."""
    return [*(key for key in fields if key not in URI_PARTS), *IDENTITY_KEYS]


def _key_names(fields: Mapping[str, Any], is_async: bool) -> list[str]:
    """Every query key a scheme accepts."""
    return [*_scheme_keys(fields), *ASYNC_ONLY_KEYS] if is_async else _scheme_keys(fields)


def _accepted_keys(fields: Mapping[str, Any], is_async: bool) -> str:
    keys = _scheme_keys(fields)
    if is_async:
        alias_of = {knob: alias for alias, knob in KEY_ALIASES.items()}
        keys += [
            f"{knob} (or {alias_of[knob]})" if knob in alias_of else knob for knob in OPTION_KEYS
        ]
    return ", ".join(keys)


def _accepted_parts(fields: Mapping[str, Any]) -> str:
    parts = [part for part in URI_PARTS if part in fields]
    return f" (it takes: {', '.join(parts)})" if parts else " (it takes none)"


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


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
        raise fail.rejected(exc) from None
    except ValueError as exc:  # EnricherConfigError is a ValueError too
        raise fail(str(exc)) from None
    except _PLUGIN_FAILURES as exc:
        # A constructor that fails otherwise is still a configuration problem
        # of this URI; its message is scrubbed like any other.
        raise fail(
            f"{_qualname(enricher_cls)} could not be constructed: "
            f"{type(exc).__name__}: {_describe(exc)}"
        ) from None


# -- the factory -------------------------------------------------------------


class EnricherFactory:
    """Builds enrichers from URIs and writes their URIs back.

    Its scheme methods (:meth:`register`, :meth:`lookup`,
    :meth:`known_schemes`) act on the process-wide registry of
    :mod:`enrichlog.uri.schemes`, checking that the classes are enrichers.
    """

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
        if not (isinstance(enricher_cls, type) and issubclass(enricher_cls, Enricher)):
            raise EnricherConfigError(
                f"registering enricher scheme {scheme!r}: {enricher_cls!r} is not an "
                "AsyncEnricher or SyncEnricher subclass"
            )
        check_params(enricher_cls)
        schemes.register(scheme, enricher_cls)

    @classmethod
    def unregister(cls, scheme: str) -> None:
        """Forget ``scheme`` (a registered class or a loaded plugin); for tests.

        Does nothing if the scheme is not registered. A built-in or installed
        plugin's scheme stays known: it is loaded again when next requested.
        """
        schemes.unregister(scheme)

    @classmethod
    def known_schemes(cls) -> list[str]:
        """Every scheme :meth:`build` accepts, sorted: built-ins, registered
        classes and installed plugins (none is imported by this call)."""
        return schemes.known_schemes()

    @classmethod
    def lookup(cls, scheme: str) -> tuple[type[Enricher], schemes.Source]:
        """The class ``scheme`` names, and whether it came from a plugin.

        Built-in modules and plugins are imported here, on the first lookup
        of one of their schemes.

        Raises:
            EnricherConfigError: the scheme is unknown (the message lists the
                known ones and suggests the closest), or its class cannot be
                loaded, is no enricher or has an unusable ``Params``.
        """
        normalised = schemes.check_scheme(scheme)
        found = schemes.lookup(normalised)
        if found is None:
            known = schemes.known_schemes()
            listed = ", ".join(known) or "(none)"
            close = difflib.get_close_matches(normalised, known, n=1)
            if close:
                raise EnricherConfigError(
                    f"unknown scheme {normalised!r}; did you mean {close[0]!r}? "
                    f"Known schemes: {listed}"
                )
            raise EnricherConfigError(f"unknown scheme {normalised!r}; known schemes: {listed}")
        enricher_cls, source = found
        if not issubclass(enricher_cls, Enricher):
            raise EnricherConfigError(
                f"{schemes.describe(normalised)} is {enricher_cls!r}, not a subclass of "
                "AsyncEnricher or SyncEnricher"
            )
        check_params(enricher_cls)
        return enricher_cls, source

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
        model = params_model(enricher_cls)
        secret_keys = secret_fields(model)
        fail = _Fail(
            mask_uri(uri, secret_keys),
            _secret_values(uri, parsed, secret_keys),
            uri=uri,
            secret_keys=secret_keys,
        )
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

        Unless ``reveal_secrets`` is true, every secret shows as ``***``:
        the password, ``SecretStr`` parameters, parameters named like a
        secret (``client_secret``, ``token``...) and the passwords of URIs
        in parameter values. The URI is in canonical form: parameters in
        field order, then the common keys given (``cache_ttl``, not ``ttl``).

        Raises:
            EnricherConfigError: ``enricher`` was not built by :meth:`build`,
                or a parameter has no URI form (a nested model, a mapping).
        """
        spec = cls.spec_of(enricher)
        if spec is None:
            raise EnricherConfigError(
                f"enricher {enricher.name!r} was not built from a URI, so it has none to write"
            )
        uri = _write_uri(spec)
        return uri if reveal_secrets else mask_uri(uri, secret_fields(type(spec.params)))


# -- writing URIs ------------------------------------------------------------


def _uri_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise EnricherConfigError(f"parameter {key!r} has no URI form (a {type(value).__name__})")


def _param_items(params: BaseModel) -> dict[str, list[str]]:
    dumped = params.model_dump(mode="json", exclude_unset=True)
    items: dict[str, list[str]] = {}
    for key, value in dumped.items():
        raw = getattr(params, key, None)
        if isinstance(raw, SecretStr | SecretBytes):
            secret = raw.get_secret_value()
            items[key] = [secret.decode() if isinstance(secret, bytes) else secret]
        elif value is None:
            continue  # a URI cannot say None; the field keeps its default
        elif isinstance(value, list):
            items[key] = [_uri_value(key, item) for item in value]
        else:
            items[key] = [_uri_value(key, value)]
    return items


def _write_netloc(items: dict[str, list[str]], parts: Collection[str]) -> str:
    """The authority from the ``parts`` (the URI parts the scheme's
    parameters declare), taken out of ``items``."""

    def one(part: str) -> str | None:
        values = items.pop(part, None) if part in parts else None
        return values[0] if values else None

    user, password, host, port = one("user"), one("password"), one("host"), one("port")
    netloc = ""
    if user is not None or password is not None:
        netloc = quote(user or "", safe="")
        if password is not None:
            netloc += ":" + quote(password, safe="")
        netloc += "@"
    if host is not None:
        netloc += f"[{host}]" if ":" in host else quote(host, safe=_HOST_SAFE)
    if port is not None:
        netloc += f":{port}"
    return netloc


def _write_uri(spec: EnricherSpec) -> str:
    """The canonical URI of ``spec``, secrets included."""
    items = _param_items(spec.params)
    # URI parts are the parameters declared under their names; a query key
    # of the same name (static://?host=web1: a field to add) stays one.
    parts = set(URI_PARTS) & set(type(spec.params).model_fields)
    netloc = _write_netloc(items, parts)
    path_values = items.pop("path", None) if "path" in parts else None
    path = ""
    if path_values:
        path = quote(path_values[0], safe=_PATH_SAFE)
        if not path.startswith("/"):
            path = "/" + path
    query = [(key, value) for key, values in items.items() for value in values]
    common = spec.common
    for key in (*IDENTITY_KEYS, *OPTION_KEYS):
        if key in common.model_fields_set:
            value = getattr(common, key)
            text = ",".join(value) if key == "dependencies" else _uri_value(key, value)
            query.append((key, text))
    uri = f"{spec.scheme}://{netloc}{path}"
    if query:
        # Sub-delimiters, legal in a query: keeps 'a,b' readable.
        uri += "?" + urlencode(query, safe="*,")
    return uri
