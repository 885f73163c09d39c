"""Masking of secrets: the one implementation behind every message, ``repr``,
plan and report in which enrichlog shows its configuration.

A secret is

* the password of any URI (``scheme://user:password@host``), also of a URI
  nested in a query value (``static://?upstream=postgres://app:pw@db/x``),
  percent-encoded or not;
* the value of a parameter whose name marks a secret (:func:`is_secret_name`):
  a URI query key, or ``key=value``, ``key: value`` and ``"key": "value"``
  in free text.

A masked value shows as ``***``. Where text is ambiguous the masking hides
too much rather than too little: a query that holds an ``@`` after a password
may lose its host in the message, never its password.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import quote, unquote, unquote_plus

__all__ = [
    "MASK",
    "is_secret_name",
    "mask_mapping",
    "mask_secrets",
    "mask_uri",
    "masked_parts",
    "password_cut_short",
    "scrub",
    "secrets_in",
    "split_authority",
]

MASK: Final = "***"
"""What a secret shows as."""

_SECRET_NAMES: Final = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "secret",
        "token",
        "auth",
        "authorization",
        "api_key",
        "apikey",
        "access_key",
        "private_key",
        "passphrase",
        "credentials",
        "signature",  # a signed URL's: X-Amz-Signature, Azure's sig
        "sig",
    }
)
# A name ending in '_' and one of these is a secret too: client_secret,
# x_auth_token, db_password, aws_secret_access_key, ssh_passphrase.
_SECRET_SUFFIXES: Final = tuple(f"_{name}" for name in sorted(_SECRET_NAMES | {"key"}))

# The secret names with nothing between their words: a name whose letters
# spell one (PassWord, passWORD, API-KEY) is one, whatever its case.
_SECRET_SQUASHED: Final = frozenset(name.replace("_", "") for name in _SECRET_NAMES)
_NOT_LETTERS = re.compile(r"[^a-z]+")
# Secret words long enough to end a run-together name (sessiontoken) without
# catching common words (bypass, monkey, oauth).
_SECRET_ENDINGS: Final = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credentials",
    "apikey",
    "accesskey",
    "privatekey",
)

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NAME_SEPARATORS = re.compile(r"[\s.\-]+")

# How deep a URI nested in a URI's query is followed; deeper text is masked
# by the patterns alone, which still hide every password.
_MAX_DEPTH = 6
# Bounded: unbounded, every position of a long run of letters (a 20,000
# character value) was a scheme start scanned to the run's end, quadratic
# time. A longer scheme still matches by its last 64 characters, so its
# URI's password is masked all the same.
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-_]{0,63}"
# A URI in free text: up to whitespace or a quote (messages quote URIs).
_URI_TOKEN = re.compile(_SCHEME + r"://[^\s'\"<>`]*")
# Where a URI starts; in a query value or a decoded token, which was one
# token before decoding, the URI runs to the end (a decoded password may
# hold a space).
_URI_START = re.compile(_SCHEME + "://")
# The password of a URI, when the URI pass above could not isolate it (a
# password holding a quote): greedy up to the token's last '@', so an '@'
# later in the query over-masks rather than leaks.
_URI_PASSWORD = re.compile(r"(?P<head>" + _SCHEME + r"://[^\s:/?#@]*:)(?!\*\*\*@)\S*@")
_SPACES = re.compile(r"(\s+)")
# What ends the text a loose 'user:password@' can be part of (a token), and
# what ends one of its segments ('/', a query's separators, a list's ',').
_LOOSE_TOKEN_END = re.compile(r"[\s'\"<>`@]")
_LOOSE_SEGMENT_END = re.compile(r"[/?#&=,;]")
# Characters a URL parser drops from anywhere in a URI (urlsplit does):
# 'pass\nword' is the key 'password' to the enricher that reads the URI.
_DROPPED_BY_PARSER = str.maketrans("", "", "\t\r\n")
# A bare 'Bearer <token>' ('Authorization: Bearer <token>' is a pair).
_BEARER = re.compile(r"\bBearer\s+(?!\*\*\*)[A-Za-z0-9\-._~+/]+=*")
# A pair's key and separator: 'password=', 'token: ', '"secret": '. Only
# these are scanned for, so a value holding a pair ('failed: password=x') is
# scanned too; a value is read only after a secret name (_secret_pairs).
_PAIR_KEY = re.compile(
    r"""
    (?<![\w.\-%])                           # a whole name, not the tail of one
    # Only a name holding a word of the secret names (is_secret_name has the
    # last word): the others are passed over here, in C, not one by one.
    (?=-{0,2}[\w.\-]*?(?i:pass|pwd|secret|token|auth|key|credential|sig))
    (?P<key>-{0,2}[A-Za-z_][\w.\-]*)         # --password=: a command line's
    (?P<key_quote>\\?['"]?)                  # \": JSON in a JSON string
    [^\S\n]*(?::=|[=:])[^\S\n]*\n?[^\S\n]*    # any spaces; the value may be on the next line
    """,
    re.VERBOSE,
)
_PAIR_VALUE = re.compile(
    r"""
        b?"(?:[^"\\]|\\.)*"                  # b: a bytes repr
      | b?'(?:[^'\\]|\\.)*'
      | \\(?P<escaped>["']).*?\\(?P=escaped)  # \"...\": JSON in a JSON string
      | b?["'][^\s"']*                       # a quote never closed (a message cut short)
      | (?:(?i:bearer|basic|digest|negotiate)[ \t]+)?[^\s&,;'"<>()\[\]{}]+
    """,
    re.VERBOSE,
)
# A (name, value) tuple: headers as a list of pairs, ("password", "x").
_TUPLE_PAIR = re.compile(
    r"""\(\s*(?P<quote>['"])(?P<key>[^'"\s]{1,100})(?P=quote)\s*,\s*"""
    r"""(?P<value>b?"(?:[^"\\]|\\.)*"|b?'(?:[^'\\]|\\.)*')"""
)
# A command line's flag and its value: --password hunter2, -p is too short.
_FLAG_PAIR = re.compile(
    r"""(?<![\w\-])--?(?P<key>[A-Za-z][\w.\-]{2,100})[ \t]+"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s'"=-][^\s'"]*)"""
)
# A PEM private key: its body (masked up to its END line, or the text's end).
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----")
#: The words every secret name holds one of (is_secret_name decides).
_SECRET_WORDS: Final = ("pass", "pwd", "secret", "token", "auth", "key", "credential", "sig")


def _may_hold_secret(text: str) -> bool:
    """Whether ``text`` holds a word of the secret names (a few fast
    substring searches: most messages hold none)."""
    lowered = text.lower()
    return any(word in lowered for word in _SECRET_WORDS)


#: Brackets a secret's value may open (a dict, a list, a tuple, ODBC's
#: PWD={...}): masked up to the one that closes it.
_CLOSERS: Final = {"{": "}", "[": "]", "(": ")"}
#: The most of a bracketed value looked through for its closing bracket.
_BRACKETED_MAX = 10_000
# From the start of a token only (the same matches: a token matches from its
# start if anywhere), not from each of its characters, which was quadratic.
_ENCODED_TOKEN = re.compile(r"(?<![^\s'\"])[^\s'\"]*%[0-9A-Fa-f]{2}[^\s'\"]*")
# Characters left readable when a masked, decoded value is percent-encoded
# again: a nested URI stays legible, '&', '=', '?' and '#' stay encoded.
_SHOWN = "*:/@,"


@functools.lru_cache(maxsize=4096)  # a long message repeats its keys: each is judged once
def is_secret_name(name: str) -> bool:
    """Whether a parameter called ``name`` holds a secret.

    Case, ``-``, ``.``, camel case and a trailing number do not matter:
    ``API-Key``, ``apiKey``, ``db.password`` and ``token_2`` are secret
    names. The secret names are ``password``, ``passwd``, ``pwd``,
    ``pass``, ``secret``, ``token``, ``auth``, ``authorization``,
    ``api_key``, ``apikey``, ``access_key``, ``private_key``,
    ``passphrase``, ``credentials``, ``signature``, ``sig``, and any name ending in ``_`` and one
    of them or ``key`` (``client_secret``, ``signing_key``); plain ``key``
    is not.
    """
    normal = _NAME_SEPARATORS.sub("_", _CAMEL_BOUNDARY.sub("_", name.strip())).lower()
    # A trailing number and the '_' before it: token_2 (rstrip, not a regex
    # anchored at the end, which tried every '_' of a long run: quadratic).
    normal = normal.rstrip("0123456789").strip("_")
    return (
        normal in _SECRET_NAMES
        or normal.endswith(_SECRET_SUFFIXES)
        or (squashed := _NOT_LETTERS.sub("", normal)) in _SECRET_SQUASHED
        or squashed.endswith(_SECRET_ENDINGS)  # SESSIONTOKEN, xauthtoken, mypassword
    )


def mask_uri(uri: str, secret_keys: Collection[str] = ()) -> str:
    """``uri`` with its secrets as ``***``.

    Masks the password, the value of every query key named like a secret
    (:func:`is_secret_name`) or listed in ``secret_keys``, and the secrets
    of URIs nested in query values (percent-encoded or not: a masked
    encoded value is shown decoded). Works on malformed URIs too: it is what
    error messages show.
    """
    masked = _mask_uri(uri, frozenset(secret_keys), 0)
    if not _WELL_FORMED.match(uri):
        masked = _mask_malformed_userinfo(masked)
    return _mask_repeats(masked, uri)


# A URI whose authority its parse reads: 'scheme://' and a host part.
_WELL_FORMED = re.compile(r"\A\s*[A-Za-z][A-Za-z0-9+.\-]*://[^/]")
# Where the user part of a malformed URI may start: after what can pass for
# a scheme and its separator (':', ';', slashes, in any number).
_USERINFO_START = re.compile(r"\A\s*(?:[A-Za-z][A-Za-z0-9+.\-]*)?[:;]?/*")


def _mask_malformed_userinfo(uri: str) -> str:
    """The last resort for a whole URI whose parse cannot find its user
    part (a slash missing or one too many, a mistyped separator): the text
    from the first ``:`` after its scheme to its last ``@`` as ``***``. A
    password may hold any character (a space, a quote, ``?``, ``#``), which
    the patterns for text take for its end."""
    at = uri.rfind("@")
    if at < 0:
        return uri
    start = _USERINFO_START.match(uri)
    colon = uri.find(":", start.end() if start else 0, at)
    if colon < 0 or uri[colon + 1 : at] == MASK:
        return uri
    return uri[: colon + 1] + MASK + uri[at:]


def mask_secrets(text: str) -> str:
    """``text`` (a message, a ``repr``) with every secret in it as ``***``.

    Finds URIs anywhere (their passwords and secret query values, nested
    URIs included), percent-encoded URIs, ``key=value``, ``key: value`` and
    ``"key": "value"`` pairs whose key is a secret name, and bearer tokens.
    """
    return _mask_text(text, 0)


def mask_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` fit to show: the value of a key named like a
    secret is ``***``, strings are passed through :func:`mask_secrets`, and
    nested mappings, lists and tuples are masked the same way."""
    return {key: MASK if is_secret_name(key) else _mask_any(value) for key, value in values.items()}


def secrets_in(text: str) -> list[str]:
    """The secret values ``text`` holds, as written and percent-decoded:
    URI passwords and the values of secret-named pairs.

    For :func:`scrub`: a message written by someone else (a validator, a
    constructor) may quote them in any form.
    """
    found: list[str] = []
    for form in _decodings(text):
        for match in _URI_START.finditer(form):
            password = _password_of(form[match.start() :])
            if password:
                found += [password, unquote(password)]
        for start, end in _loose_passwords(form):
            found += [form[start:end], unquote(form[start:end])]
        if _may_hold_secret(form):
            found += [_unquoted(value) for _, value, _, _ in _secret_pairs(form)]
    return [secret for secret in dict.fromkeys(found) if secret and secret != MASK]


def masked_parts(text: str, shown: str) -> list[str]:
    """What masking ``text`` as ``shown`` hid, and the pieces of it between
    the characters that split a URI (``/ ? # @ :``): for :func:`scrub`, on
    a message someone else wrote about ``text``. A parser that stopped at an
    unescaped ``/`` or ``#`` in a password quotes only the piece before it
    (``nonnumeric port: 'pa55'``)."""
    hidden: list[str] = []
    matcher = difflib.SequenceMatcher(None, text, shown, autojunk=False)
    for tag, start, end, _, _ in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            part = text[start:end]
            hidden += [part, *_URI_SPLIT.split(part)]
    # As written and percent-decoded: a parser may quote either.
    return [part for part in dict.fromkeys([*hidden, *map(unquote, hidden)]) if part]


_URI_SPLIT: Final = re.compile(r"[/?#@:]")


def scrub(text: str, secrets: Iterable[str], *, quoted_only: bool = False) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``.

    For messages enrichlog did not write (pydantic's, an enricher
    constructor's), which may echo a secret verbatim. A secret shorter than
    four characters, or any with ``quoted_only``, is replaced only where it
    appears quoted, so that a one-letter password does not mangle every
    word (nor a rejected ``table=table`` the message's own words).
    """
    for secret in sorted(set(secrets), key=len, reverse=True):
        if not secret:
            continue
        if len(secret) >= 4 and not quoted_only:
            text = text.replace(secret, MASK)
        else:
            for quoted in (repr(secret), f'"{secret}"'):
                text = text.replace(quoted, repr(MASK))
    return text


def password_cut_short(netloc: str, rest: str) -> bool:
    """Whether the authority ``netloc`` (what precedes the first ``/``,
    ``?`` or ``#``) was cut short by one of those characters unescaped in a
    password, ``rest`` being what follows it: ``user:pa/ss@host`` splits as
    ``user:pa`` and ``/ss@host``, and what follows ``:`` is then no port but
    the start of the password."""
    port_text = netloc.partition(":")[2]
    return (
        "@" not in netloc
        and not netloc.startswith("[")
        and bool(port_text)
        and not port_text.isdigit()
        and "@" in rest
    )


# -- implementation ----------------------------------------------------------


def _mask_any(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, Mapping):
        return mask_mapping({str(key): item for key, item in value.items()})
    if isinstance(value, list | tuple):
        return type(value)(_mask_any(item) for item in value)
    return value


def split_authority(tail: str) -> tuple[str, str]:
    """``tail`` (a URI after ``scheme://``) as (authority, rest). In a list
    of servers (``nats://a@h1,nats://b@h2``) the authority ends where the
    next address begins: its parse would run the first into the second."""
    end = min((i for i in (tail.find(c) for c in "/?#") if i >= 0), default=len(tail))
    following = _NEXT_SERVER.search(tail, 0, end + 2)
    if following:
        end = following.start()
    netloc, rest = tail[:end], tail[end:]
    if password_cut_short(netloc, rest):
        later_at = rest.find("@")
        netloc, rest = netloc + rest[: later_at + 1], rest[later_at + 1 :]
    return netloc, rest


def _password_of(uri: str) -> str | None:
    head, sep, tail = uri.partition("://")
    netloc, _ = split_authority(tail if sep else head)
    userinfo, at, _ = netloc.rpartition("@")
    if at and ":" in userinfo:
        return userinfo.partition(":")[2]
    if _port_may_be_password(netloc):
        return netloc.partition(":")[2]
    return None


def _port_may_be_password(netloc: str) -> bool:
    """Whether the port of ``netloc``, an authority without ``@``, is no
    port (not a number, or past 65535): ``user:password`` whose ``@host``
    was forgotten reads as a host and a port, the password in the port's
    place. (A password that is a valid port number cannot be told from
    one.)"""
    port = netloc.partition(":")[2]
    if "@" in netloc or netloc.startswith("[") or not port:
        return False
    return not (port.isascii() and port.isdigit()) or int(port) > 65535


#: Schemes whose user part without a password is masked whole: a NATS
#: server's (``nats://TOKEN@host``, ``tls://``) is its token form.
_TOKEN_AS_USER: Final = frozenset(
    {"http", "https", "ws", "wss", "ftp", "ftps", "sftp", "nats", "tls"}
)


def _token_as_user(scheme: str) -> bool:
    """Whether ``scheme`` is a web address's or a NATS server's, whose lone
    user part is a token as a rule: http(s), ws(s), ftp, nats, tls, and
    their variants (``git+https``, enrichlog's ``http-lookup``)."""
    scheme = scheme.lower()
    return scheme in _TOKEN_AS_USER or "http" in scheme or scheme.endswith(("+ftp", "+ssh"))


# A second server's address in a list (``nats://a@h1,nats://b@h2``).
_NEXT_SERVER = re.compile(r",\s*[A-Za-z][A-Za-z0-9+.\-]*://")


def _mask_uri(uri: str, secret_keys: frozenset[str], depth: int) -> str:
    head, sep, tail = uri.partition("://")
    if not sep:
        head, tail = "", uri
    netloc, rest = split_authority(tail)
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{hostport}"
    elif at and _token_as_user(head):
        # https://TOKEN@host, nats://TOKEN@host: a lone user part is a
        # token as a rule (a database's, postgres://app@db, is a user name).
        netloc = f"{MASK}@{hostport}"
    elif ":" in netloc and not netloc.startswith("[") and rest.startswith("#"):
        # 'user:pass#word' without '@host': the '#' cut a password that
        # reads as a port (a number, even), and the rest of it is the
        # "fragment": both masked, and all that follows.
        return f"{head}{sep}{netloc.partition(':')[0]}:{MASK}#{MASK}"
    elif _port_may_be_password(netloc):
        netloc = f"{netloc.partition(':')[0]}:{MASK}"
    before_query, qmark, query = rest.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
    else:
        before_query, hash_, fragment = before_query.partition("#")
    masked = head + sep + netloc + _mask_text(before_query, depth + 1)
    secret_last = False
    if qmark:
        fields = [_mask_field(field, secret_keys, depth) for field in _fields(query)]
        # The fragment may be the rest of a secret value holding an
        # unescaped '#' (of this URI's last field, or of a URI nested in it).
        secret_last = fields[-1].endswith(MASK)
        masked += "?" + "&".join(fields)
    if secret_last and hash_:
        return masked + hash_ + MASK
    masked += hash_ + _mask_text(fragment, depth + 1)
    if hash_ and _cut_by_hash(uri.partition("#")[0], fragment):
        # A password cut by an unescaped '#' (``postgres://app:pa#ss@db``,
        # nested in a query value too): up to the '@' after it.
        masked = _mask_cut_passwords(masked)
    return masked


#: How many of a URI's secret values :func:`_mask_repeats` looks for again
#: (each is one pass over the URI).
_MAX_REPEATED = 32


def _mask_repeats(masked: str, uri: str) -> str:
    """``masked`` (``uri`` masked) with each secret value of ``uri`` that
    shows again elsewhere in it (a user name that is the password,
    ``postgres://postgres:postgres@db``, a nested URI's) as ``***`` too;
    not in the scheme, and not a value shorter than four characters, which
    would mangle the rest."""
    secrets = [secret for secret in secrets_in(uri) if len(secret) >= 4]
    head, sep, tail = masked.partition("://")
    if not secrets or not sep:
        return masked
    for secret in sorted(set(secrets), key=len, reverse=True)[:_MAX_REPEATED]:
        tail = tail.replace(secret, MASK)
    return head + sep + tail


def _mask_cut_passwords(text: str) -> str:
    """:data:`_URI_PASSWORD` applied to each token of ``text`` up to its
    last ``@`` (nothing after it can match): a match is then found from its
    first candidate, where a failing candidate scanned to the end of the
    token, quadratic time for a long token of many ``x://``."""
    if "@" not in text:
        return text
    parts = _SPACES.split(text)
    for index, token in enumerate(parts):
        last = token.rfind("@")
        if last > 0:
            head = _URI_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", token[: last + 1])
            parts[index] = head + token[last + 1 :]
    return "".join(parts)


def _loose_passwords(text: str) -> list[tuple[int, int]]:
    """Where ``text`` holds the password of a ``user:password@`` (or
    ``:password@``) that is not after a ``://``: a URI with a slash missing
    or one too many (``postgres:/app:pw@db``, ``postgres:///app:pw@db``),
    a mistyped separator (``postgres;//``), no scheme (``app:pw@db``).
    Each is (start, end) of the password, ``end`` at its ``@``.

    For each ``@``, the nearest segment before it (up to a ``/``, a query's
    ``?``, ``&`` or ``=``, a ``,`` or ``;``) that holds a ``:`` is the user
    and password, split at that first ``:``: a password holding a ``/``
    (``u:pa/ss@h``) or a ``:`` is masked whole, with what follows it up to
    the ``@``. The ``:`` of a ``://`` is no such split, nor is an already
    masked password, nor the authority of a ``scheme://`` URI, which the
    URI masking reads. Later ``@`` with no ``/``, ``?`` or ``#`` before them
    are part of the password (``u:p@ss@h``). Linear: each ``@`` looks back
    no further than the ``@`` before it.
    """
    found: list[tuple[int, int]] = []
    limit = 0  # what the previous '@' ended
    at = text.find("@")
    while at >= 0:
        token_start = limit
        for match in _LOOSE_TOKEN_END.finditer(text, limit, at):
            token_start = match.end()
        colon = _loose_colon(text, token_start, at)
        end = at
        if colon >= 0 and text[colon + 1 : at] != MASK:
            # 'u:p@ss@h': an '@' before the host is the password's.
            following = text.find("@", end + 1)
            while following >= 0 and not re.search(r"[\s'\"<>`/?#]", text[end + 1 : following]):
                end, following = following, text.find("@", following + 1)
            found.append((colon + 1, end))
        limit = end + 1
        at = text.find("@", limit)
    return found


def _loose_colon(text: str, start: int, at: int) -> int:
    """The ':' that splits user and password in ``text[start:at]`` (see
    :func:`_loose_passwords`), or -1."""
    bounds = [start, *(m.start() + 1 for m in _LOOSE_SEGMENT_END.finditer(text, start, at)), at + 1]
    for begin, after in zip(reversed(bounds[:-1]), reversed(bounds[1:]), strict=True):
        if text.startswith("://", begin - 3) and begin >= 3:
            # The authority of a URI: what the URI masking found in it
            # stands (``http://api:8443/v1#frag@x`` has a port).
            return -1
        colon = text.find(":", begin, after - 1)
        while colon >= 0 and text.startswith("//", colon + 1):
            colon = text.find(":", colon + 1, after - 1)
        if colon >= 0:
            return colon
    return -1


def _mask_loose_passwords(text: str) -> str:
    """``text`` with each password :func:`_loose_passwords` finds as ``***``."""
    if "@" not in text:
        return text
    shown, last = [], 0
    for start, end in _loose_passwords(text):
        shown += [text[last:start], MASK]
        last = end
    return "".join(shown) + text[last:]


def _cut_by_hash(before: str, fragment: str) -> bool:
    """Whether a '#' cut the password of the last URI in ``before`` (the
    text before it), ``fragment`` holding the rest: see
    :func:`password_cut_short` (``api:8443`` is a host and its port)."""
    starts = list(_URI_START.finditer(before))
    if not starts:
        return False
    netloc, _ = split_authority(before[starts[-1].end() :])
    return password_cut_short(netloc, "#" + fragment)


def _fields(query: str) -> list[str]:
    """The ``key=value`` fields of ``query``; a piece without ``=``, or
    whose key holds ``@``, ``/``, ``?`` or ``:``, after a field is taken as
    the rest of that field's value, which held an unescaped ``&`` (a
    secret, or a nested URI's password or query)."""
    fields: list[str] = []
    for piece in query.split("&"):
        key, eq, _ = piece.partition("=")
        # No key, or none a query would have ('ss@db/x?sslmode' is the rest
        # of a password and the nested URI's own query).
        continues = not eq or any(char in key for char in "@/?:")
        if fields and "=" in fields[-1] and continues:
            fields[-1] += "&" + piece
        else:
            fields.append(piece)
    return fields


def _mask_field(field: str, secret_keys: frozenset[str], depth: int) -> str:
    key, eq, value = field.partition("=")
    if not eq:
        return _mask_text(field, depth + 1)
    name = unquote_plus(key)
    parsed_name = unquote_plus(key.translate(_DROPPED_BY_PARSER))
    if {name, parsed_name} & secret_keys or is_secret_name(name) or is_secret_name(parsed_name):
        return f"{key}={MASK}"
    masked = _mask_unit(value, depth)
    if masked != value:
        return f"{key}={masked}"
    for decoded in _decodings(value)[1:]:
        shown = _mask_unit(decoded, depth)
        if shown != decoded:
            return f"{key}={quote(shown, safe=_SHOWN)}"
    return field


def _mask_unit(text: str, depth: int) -> str:
    """Mask ``text`` that was one token (a query value, a decoded token):
    a URI in it runs to its end, spaces included."""
    if depth <= _MAX_DEPTH:
        start = _URI_START.search(text)
        if start is not None:
            index = start.start()
            text = text[:index] + _mask_uri(text[index:], frozenset(), depth + 1)
    return _mask_text(text, depth + 1)


def _mask_text(text: str, depth: int) -> str:
    if depth <= _MAX_DEPTH:
        text = _URI_TOKEN.sub(lambda m: _mask_uri(m.group(), frozenset(), depth + 1), text)
    text = _mask_cut_passwords(text)
    text = _mask_loose_passwords(text)
    text = _BEARER.sub(f"Bearer {MASK}", text)
    text = _mask_pairs(text)
    if "PRIVATE KEY-----" in text:
        text = _mask_private_keys(text)
    if depth <= _MAX_DEPTH:
        text = _ENCODED_TOKEN.sub(lambda m: _mask_encoded(m.group(), depth), text)
    return text


def _secret_pairs(text: str) -> Iterator[tuple[re.Match[str] | None, str, int, int]]:
    """The secret values of ``text``, in order, in one pass (a masked value
    is not scanned again): ``(key match, or None for a tuple pair or a
    command-line flag, value, start, end)``."""
    position = 0
    others = iter(_other_pairs(text))
    pending = next(others, None)
    while (key := _PAIR_KEY.search(text, position)) is not None:
        while pending is not None and pending[1] < key.start():
            if pending[0] >= position:
                yield None, text[pending[1] : pending[2]], pending[1], pending[2]
                position = pending[2]
            pending = next(others, None)
        if key.start() < position:
            continue
        position = key.end()
        if not is_secret_name(key["key"]):
            continue
        end = _bracketed_end(text, position)
        if end is not None:
            yield key, text[position:end], position, end
            position = end
        elif (value := _PAIR_VALUE.match(text, position)) is not None:
            yield key, value.group(), position, value.end()
            position = value.end()
    while pending is not None:
        if pending[0] >= position:
            yield None, text[pending[1] : pending[2]], pending[1], pending[2]
            position = pending[2]
        pending = next(others, None)


def _other_pairs(text: str) -> list[tuple[int, int, int]]:
    """``(start, value start, value end)`` of the secret ``(name, value)``
    tuples and command-line flags (``--password hunter2``) of ``text``, in
    order."""
    found = []
    if "(" in text:
        found += [
            (m.start(), m.start("value"), m.end("value"))
            for m in _TUPLE_PAIR.finditer(text)
            if is_secret_name(m["key"])
        ]
    if "-" in text:
        found += [
            (m.start(), m.start("value"), m.end("value"))
            for m in _FLAG_PAIR.finditer(text)
            if is_secret_name(m["key"])
        ]
    return sorted(found)


def _bracketed_end(text: str, start: int) -> int | None:
    """Where a value opening a bracket at ``start`` ends: after the bracket
    that closes it (quoted text skipped), or at the end of what is looked
    through; ``None`` when no bracket opens there."""
    opener = text[start : start + 1]
    if opener not in _CLOSERS:
        return None
    depth, quote, escaped = 0, "", False
    limit = min(len(text), start + _BRACKETED_MAX)
    for index in range(start, limit):
        char = text[index]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in _CLOSERS:
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return index + 1
    return limit


def _mask_private_keys(text: str) -> str:
    """``text`` with the body of each PEM private key masked (to its END
    line, or to the end of a text cut short)."""
    parts: list[str] = []
    done = 0
    for begin in _PEM_BEGIN.finditer(text):
        if begin.start() < done:
            continue
        end = text.find("-----END", begin.end())
        end = len(text) if end < 0 else end
        parts += [text[done : begin.end()], f"\n{MASK}\n"]
        done = end
    parts.append(text[done:])
    return "".join(parts)


def _mask_pairs(text: str) -> str:
    """``text`` with the values of its secret-named pairs masked."""
    if not _may_hold_secret(text):
        return text  # no name could be a secret's: the common message, in one C scan
    parts: list[str] = []
    done = 0
    for key, value, start, end in _secret_pairs(text):
        shown = _masked_value(key, value, text, end)
        if shown is not None:
            parts += [text[done:start], shown]
            done = end
    parts.append(text[done:])
    return "".join(parts)


def _masked_value(key: re.Match[str] | None, value: str, text: str, end: int) -> str | None:
    """What a secret pair's value is shown as; ``None`` when it is no pair."""
    if value[:1] in _CLOSERS:
        return f"{value[0]}{MASK}{value[-1] if value[-1] in ')]}' else ''}"
    if value[:2] in {'\\"', "\\'"}:
        return f"{value[:2]}{MASK}{value[:2]}"
    prefix = "b" if value[:2] in {"b'", 'b"'} else ""
    value = value[len(prefix) :]
    quoted = value[:1] in {"'", '"'}
    if key is not None and key["key_quote"] and not quoted:
        # "'token': Input should be ..." is a message about a key, not a
        # pair; a quoted key has a value in a dict or JSON object, where a
        # separator or the end follows it.
        after = text[end:].lstrip()[:1]
        if after not in {"", ",", "}", "]", ")"}:
            return None
    return f"{prefix}{value[0]}{MASK}{value[0]}" if quoted else MASK


def _mask_encoded(token: str, depth: int) -> str:
    for decoded in _decodings(token)[1:]:
        shown = _mask_unit(decoded, depth)
        if shown != decoded:
            return shown
    return token


def _decodings(text: str) -> list[str]:
    """``text``, then each distinct percent-decoding of it (``%2540`` is
    ``@`` decoded twice), at most three."""
    forms = [text]
    for _ in range(3):
        decoded = unquote_plus(forms[-1]) if "%" in forms[-1] else forms[-1]
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    return forms


def _unquoted(value: str) -> str:
    if value[:2] in {"b'", 'b"'}:
        value = value[1:]  # a bytes repr
    if len(value) >= 2 and value[0] == value[-1] and value[0] in {"'", '"'}:
        return value[1:-1]
    return value
