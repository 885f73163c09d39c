"""Events on the wire: one JSON object per message, the event's own fields
at the top level plus ``event_id``.

Encoding never raises: a value JSON cannot hold is written as its ``repr``
(the way the renderer writes an odd value), a key that is not a string as
its text. orjson is used when installed.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = ["EVENT_ID", "decode_event", "encode_event", "new_event_id"]

try:  # optional extra: several times faster than the stdlib encoder
    import orjson
except ImportError:  # pragma: no cover - exercised without the extra
    orjson = None  # type: ignore[assignment]

#: The field (and ``Nats-Msg-Id`` header) that identifies an event.
EVENT_ID = "event_id"

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
            return orjson.dumps(event, default=_repr, option=orjson.OPT_NON_STR_KEYS)
        except Exception:  # noqa: S110 - a lone surrogate, a huge integer: the stdlib below
            pass
    try:
        return json.dumps(
            _printable(event, 0), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode("utf-8")
    except Exception as exc:  # pragma: no cover - _printable leaves nothing to refuse
        return json.dumps({"event": _repr(event), "encode_error": _repr(exc)}).encode("ascii")


def _printable(value: Any, depth: int) -> Any:
    """A copy of ``value`` that the stdlib encoder accepts, odd values by
    ``repr``."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):  # a lone surrogate is not UTF-8: shown escaped
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {
                _printable(k if isinstance(k, str) else _repr(k), depth): _printable(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [_printable(v, depth + 1) for v in value]
    return _repr(value)


def decode_event(data: bytes) -> dict[str, Any]:
    """The event a message carries.

    Raises:
        ValueError: the payload is not a JSON object.
    """
    event = orjson.loads(data) if orjson is not None else json.loads(data)
    if isinstance(event, dict):
        return event
    raise ValueError(f"expected a JSON object, got {type(event).__name__}")
