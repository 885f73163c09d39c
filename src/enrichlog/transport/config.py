"""The transport URI: where events are published and consumed.

``nats://[user:password@]host[:port]?stream=LOGS&subject=logs.app`` names a
NATS server with JetStream, the stream events are stored in and the subject
they are published on. Parsing needs no client library, so settings are
validated (and ``python -m enrichlog check`` works) without the ``nats``
extra installed. Every message shows the URI with its secrets masked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from ..exceptions import EnricherConfigError
from ..uri.masking import MASK, mask_uri

__all__ = ["DEFAULT_PORT", "TransportConfig", "subject_matches"]

#: The NATS client port used when the URI names none.
DEFAULT_PORT = 4222

_SCHEMES = ("nats", "tls")
_KEYS = ("stream", "subject", "consumer", "enrich", "token")
# Stream and consumer names: no subject separators, wildcards or spaces.
_NAME = re.compile(r"[A-Za-z0-9_\-]+")
#: The longest stream or consumer name accepted. The server takes 255
#: characters; 200 leaves room for the dead-letter stream's ``_DLQ`` and
#: keeps the default spool directory (named after the stream) a legal
#: file name.
MAX_NAME = 200
# (No control character either: a NUL passed, then failed the spool's
# mkdir with a bare ValueError after the stream was made.)
_SUBJECT_PART = re.compile(r"[^\s.*>\x00-\x1f\x7f]+")
#: Subject prefixes the NATS server and its clients reserve: ``$`` for the
#: server's own APIs (``$JS.``, ``$SYS.``, ``$KV.``...), ``_INBOX.`` for
#: request replies. A stream cannot capture ``$JS.API`` (the server
#: refuses it), and events on the others would reach the wrong listeners.
_RESERVED = ("$", "_INBOX.")


@dataclass(frozen=True)
class TransportConfig:
    """A parsed transport URI.

    Attributes:
        uri: the URI as given (it may hold a password: show :attr:`masked`).
        server: the server URL for the client, credentials included.
        token: an authentication token (``?token=``), or ``None``.
        stream: the JetStream stream events are stored in.
        subject: the subject events are published on and consumed from.
        consumer: the durable consumer every worker of the stream shares.
        enrich: ``local`` or ``remote`` when the URI says (``?enrich=``),
            else ``None`` (the ``enrich`` setting decides).
        dlq_stream, dlq_subject: where workers dead-letter events.
    """

    uri: str
    server: str
    token: str | None
    stream: str
    subject: str
    consumer: str
    enrich: Literal["local", "remote"] | None
    dlq_stream: str
    dlq_subject: str

    @property
    def masked(self) -> str:
        """The URI with its secrets shown as ``***``."""
        return mask_uri(self.uri)

    @property
    def masked_server(self) -> str:
        """The server's URL (no query) with its secrets shown as ``***``."""
        return mask_uri(self.server)

    @classmethod
    def parse(cls, uri: str, *, dlq_subject: str | None = None) -> TransportConfig:
        """Parse and validate ``uri``.

        Args:
            uri: ``nats://[user:password@]host[:port]?stream=...&subject=...``.
            dlq_subject: the dead-letter subject (default
                ``enrichlog.dlq.<stream>``).

        Raises:
            EnricherConfigError: the URI is not a usable transport; the
                message shows it masked and names the part at fault.
        """

        def fail(
            problem: str, *, rejected: str | None = None, after_token: bool = False
        ) -> EnricherConfigError:
            # The value of the query key at fault (``rejected``) is never
            # echoed: it may be a secret pasted in the wrong place; nor is
            # what follows the token when it may be the rest of it.
            shown = mask_uri(uri, secret_keys=() if rejected is None else (rejected,))
            if after_token:
                shown = shown.partition("token=")[0] + f"token={MASK}&{MASK}"
            return EnricherConfigError(f"transport URI {shown!r}: {problem}")

        try:
            parts = urlsplit(uri.strip())
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise fail("the host or port is not valid") from None
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise fail(f"unknown scheme {parts.scheme!r}; expected nats:// (or tls://)")
        if parts.fragment:
            raise fail("a fragment ('#...') is not accepted; write '#' as %23")
        if parts.path not in ("", "/"):
            raise fail("a path is not accepted; name the stream with ?stream=")
        query = _query(parts.query, fail)
        stream = query.get("stream", "LOGS")
        subject = query.get("subject", "logs.app")
        consumer = query.get("consumer", "enrichlog")
        dlq = dlq_subject or f"enrichlog.dlq.{stream}"
        enrich = query.get("enrich")
        wrong = _check_names(stream, subject, consumer, dlq, enrich)
        if wrong is not None:
            key, problem = wrong
            raise fail(problem, rejected=key)
        host = parts.hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        credentials = ""
        if parts.username is not None:
            credentials = quote(unquote(parts.username), safe="")
            if parts.password is not None:
                credentials += ":" + quote(unquote(parts.password), safe="")
            credentials += "@"
        return cls(
            uri=uri,
            server=f"{scheme}://{credentials}{host}:{port}",
            token=query.get("token") or None,
            stream=stream,
            subject=subject,
            consumer=consumer,
            enrich=enrich,  # type: ignore[arg-type]
            dlq_stream=f"{stream}_DLQ",
            dlq_subject=dlq,
        )


def _query(text: str, fail: Callable[..., EnricherConfigError]) -> dict[str, str]:
    query: dict[str, str] = {}
    previous = ""
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key not in _KEYS:
            if previous == "token":
                # Perhaps the rest of a token cut at a raw '&': not named.
                raise fail(
                    "an unknown query key follows the token (does the token hold a raw "
                    f"'&'? percent-encode it as %26); accepted keys: {', '.join(_KEYS)}",
                    after_token=True,
                )
            raise fail(
                f"unknown query key {key!r}; accepted keys: {', '.join(_KEYS)}", rejected=key
            )
        previous = key
        if key in query:
            raise fail(f"query key {key!r} is given twice", rejected=key)
        query[key] = value
    return query


def _is_subject(text: str) -> bool:
    return all(_SUBJECT_PART.fullmatch(part) for part in text.split("."))


def _is_reserved(subject: str) -> bool:
    return subject.startswith(_RESERVED) or subject == "_INBOX"


def _reserved_problem(what: str) -> str:
    return (
        f"{what}: subjects that start with '$' ($JS., $SYS., $KV. ...) or '_INBOX.' are "
        "reserved for the NATS server and its clients; choose another, such as logs.app"
    )


def _check_names(
    stream: str, subject: str, consumer: str, dlq: str, enrich: str | None
) -> tuple[str | None, str] | None:
    """What is wrong with the names, if anything: the query key at fault
    (``None``: no one key) and the problem."""
    if not _NAME.fullmatch(stream):
        return "stream", (
            "query key 'stream': a stream name is letters, digits, '-' and '_' "
            "(no '.', '*', '>' or spaces)"
        )
    if len(stream) > MAX_NAME:
        return "stream", (
            f"query key 'stream': a stream name is at most {MAX_NAME} characters "
            f"(this one has {len(stream)})"
        )
    if not _is_subject(subject):
        return "subject", (
            "query key 'subject': expected dot-separated tokens without spaces, control "
            "characters or wildcards, such as logs.app"
        )
    if _is_reserved(subject):
        return "subject", _reserved_problem("query key 'subject'")
    if not _NAME.fullmatch(consumer):
        return "consumer", "query key 'consumer': letters, digits, '-' and '_' only"
    if len(consumer) > MAX_NAME:
        return "consumer", (
            f"query key 'consumer': a consumer name is at most {MAX_NAME} characters "
            f"(this one has {len(consumer)})"
        )
    if enrich not in (None, "local", "remote"):
        return "enrich", "query key 'enrich': expected 'local' or 'remote'"
    if not _is_subject(dlq):
        return None, f"dead-letter subject {dlq!r}: expected dot-separated tokens"
    if _is_reserved(dlq):
        return None, _reserved_problem(f"dead-letter subject {dlq!r} (dlq_subject)")
    if dlq == subject:
        return None, "the dead-letter subject must differ from the subject"
    return None


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether the NATS subject ``pattern`` (``*`` one token, ``>`` the
    rest) matches ``subject``."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, part in enumerate(wanted):
        if part == ">":
            return len(tokens) > index
        if index >= len(tokens) or (part != "*" and part != tokens[index]):
            return False
    return len(wanted) == len(tokens)
