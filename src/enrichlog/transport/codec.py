"""Events on the wire: one JSON object per message, the event's own fields
at the top level plus ``event_id``.

Encoding never raises: a value JSON cannot hold is written the way the
renderer writes it (its ``__structlog__()``, an ISO date, a UUID's text...,
else its ``repr``: :func:`enrichlog.engine.chain.json_default`), a key that
is not a string as its text. orjson is used when installed.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ..engine.chain import bounded_plain_json_value, plain_json_value, shown

__all__ = [
    "EVENT_ID",
    "ID_HEADER",
    "TRANSPORT_ID",
    "TRUNCATED",
    "decode_event",
    "encode_event",
    "fit_event",
    "new_event_id",
]

try:  # optional extra: several times faster than the stdlib encoder
    import orjson
except ImportError:  # pragma: no cover - exercised without the extra
    orjson = None  # type: ignore[assignment]

#: The field that identifies an event in the lines (set to the transport's
#: message id, the ``Nats-Msg-Id`` header, unless the application logged a
#: field of that name itself, which is then written unchanged).
EVENT_ID = "event_id"

#: The field a worker's line carries the transport's id in when the
#: application's own ``event_id`` field is something else.
TRANSPORT_ID = "enrichlog_id"

#: The header a replayed event carries its original message id in (its
#: ``Nats-Msg-Id`` is the replay's own).
ID_HEADER = "Enrichlog-Event-Id"

#: The field that lists the fields :func:`fit_event` cut, with their sizes.
TRUNCATED = "truncated_fields"

#: How deep :func:`_printable` goes before it shows a value by ``repr``.
_MAX_DEPTH = 16


def new_event_id() -> str:
    """A new unique event id: 32 hex digits (a random UUID)."""
    return uuid.uuid4().hex


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"


def encode_event(event: Mapping[str, Any]) -> bytes:
    """``event`` as compact JSON (UTF-8, no newline); never raises."""
    if orjson is not None:
        try:
            return orjson.dumps(
                event,
                default=plain_json_value,
                option=orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS,
            )
        except Exception:  # noqa: S110 - a lone surrogate, a huge integer: the stdlib below
            pass
    try:
        return json.dumps(
            _printable(event, 0, bounded_plain_json_value()),
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        ).encode("utf-8")
    except Exception as exc:  # pragma: no cover - _printable leaves nothing to refuse
        return json.dumps({"event": _repr(event), "encode_error": _repr(exc)}).encode("ascii")


def _printable(value: Any, depth: int, plain: Callable[[Any], Any]) -> Any:
    """A copy of ``value`` that the stdlib encoder accepts, odd values as
    the renderer writes them."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):  # a lone surrogate is not UTF-8: shown escaped
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, int):
        # Past 64 bits as text; past Python's 4,300 decimal digits in hex.
        return value if -(2**63) <= value < 2**64 else _int_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {
                _printable(k if isinstance(k, str) else _repr(k), depth, plain): _printable(
                    v, depth + 1, plain
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [_printable(v, depth + 1, plain) for v in value]
        made = plain(value)
        if made is not value:
            return _printable(made, depth + 1, plain)
    return _printable(shown(value), depth, plain)  # a repr may hold a lone surrogate too


def _int_text(value: int) -> str:
    try:
        return str(value)
    except ValueError:
        return hex(value)


def decode_event(data: bytes) -> dict[str, Any]:
    """The event a message carries.

    Raises:
        ValueError: the payload is not a JSON object.
    """
    event = orjson.loads(data) if orjson is not None else json.loads(data)
    if isinstance(event, dict):
        return event
    raise ValueError(f"expected a JSON object, got {type(event).__name__}")


def fit_event(payload: bytes, limit: int) -> bytes:
    """The event in ``payload`` cut to at most ``limit`` bytes of JSON, for
    a broker that refuses larger messages: the largest fields' values are
    cut to their beginning (a value that is not a string to the beginning
    of its JSON text) and end with ``…``, each listed in :data:`TRUNCATED`
    with its size in bytes before; ``payload`` itself when it fits. An
    event that cannot fit that way (thousands of small fields) keeps only
    ``event_id``, ``event``, ``level`` and ``timestamp``, themselves cut,
    and lists the whole event's size as ``"*"``."""
    if len(payload) <= limit:
        return payload
    try:
        event = decode_event(payload)
    except ValueError:
        event = {"event": payload.decode("utf-8", "replace")}
    event.pop(TRUNCATED, None)
    # event_id as well: enrichlog's own is short, and never cut (values of
    # 256 bytes and more are); an application's own may be of any size.
    essentials = {
        key: event[key] for key in ("event", "level", "timestamp", EVENT_ID) if key in event
    }
    cut: dict[str, int] = {}
    for _ in range(3):  # a second pass when escapes made a cut fall short
        if _cut_largest(event, cut, len(encode_event(event)) - limit + 512):
            break
    event[TRUNCATED] = cut
    fitted_event = encode_event(event)
    if len(fitted_event) <= limit:
        return fitted_event
    minimal: dict[str, Any] = {
        key: value if len(text := str(value)) < 256 else _head(text, (limit - 512) // 4) + "…"
        for key, value in essentials.items()
    }
    minimal[TRUNCATED] = {"*": len(payload)}
    return encode_event(minimal)


def _cut_largest(event: dict[str, Any], cut: dict[str, int], excess: int) -> bool:
    """Cut ``event``'s largest values, in place, until about ``excess``
    bytes of its JSON are gone; record each cut field's size before in
    ``cut`` (its first size). Whether it got there (``False``: run again,
    or what is left is many small fields)."""
    if excess <= 0:
        return True
    sizes = {key: len(encode_event({"": value})) - 5 for key, value in event.items()}
    for key in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if excess <= 0 or sizes[key] < 256:
            break
        value = event[key]
        text = value if isinstance(value, str) else encode_event({"": value})[4:-1].decode()
        # Bytes of JSON per byte of text: quotes, line feeds and control
        # characters take 2 to 6 once escaped.
        ratio = sizes[key] / max(1, len(text.encode("utf-8", "surrogatepass")))
        head = _head(text, max(0, int((sizes[key] - excess - 64) / ratio)))
        event[key] = head + "…"
        cut.setdefault(key, sizes[key])
        # Gone: the value's bytes, less what it is now and its entry in ``cut``.
        excess -= sizes[key] - (len(encode_event({"": event[key]})) - 5) - 32 - len(key)
    return excess <= 0


def _head(text: str, size: int) -> str:
    """The beginning of ``text`` that fits in ``size`` bytes of UTF-8."""
    return text.encode("utf-8", "backslashreplace")[:size].decode("utf-8", "ignore")
