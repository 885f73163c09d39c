"""The structlog processors around enrichment, and the renderers.

A container installs::

    merge_contextvars -> add_level_and_stack -> TimeStamper(iso)     (pre_processors)
      -> AsyncEnricherProcessor (when enrichers are configured)
      -> format_exc_info -> renderer (json / console / logfmt)  (post_processors)

The renderer never raises: an event an enricher made unserialisable is
written with its odd values shown by ``repr`` and a ``render_error`` field.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import importlib.util
import json
import math
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any, TextIO
from uuid import UUID

import structlog
from structlog.processors import _figure_out_exc_info
from structlog.typing import EventDict, ExcInfo, Processor, WrappedLogger

from ..settings import LEVELS, LoggingSettings

__all__ = [
    "LoggerLevels",
    "SafeRenderer",
    "bounded_plain_json_value",
    "free_key",
    "json_default",
    "last_resort_line",
    "make_renderer",
    "plain_json_value",
    "post_processors",
    "pre_processors",
    "render_fallbacks",
    "shown",
]

try:  # optional extra: about twice as fast as the stdlib encoder here
    import orjson
except ImportError:  # pragma: no cover - exercised without the extra
    orjson = None  # type: ignore[assignment]


class SafeRenderer:
    """Wraps a renderer so that no event can make it raise.

    An event the renderer refuses (a key it cannot write, a value it cannot
    serialise, a string with lone surrogates) is rendered again from a
    printable copy: keys as strings without spaces, ``=`` or quotes, odd
    values by ``repr``, and a ``render_error`` field; :attr:`fallbacks`
    counts such events.

    Args:
        renderer: the structlog renderer to call.
    """

    __slots__ = ("_render", "fallbacks")

    def __init__(self, renderer: Callable[[WrappedLogger, str, EventDict], Any]) -> None:
        self._render = renderer
        self.fallbacks = 0

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> Any:
        exc_info = None
        if "exc_info" in event_dict:
            # The exception being handled now, while it is: once this call
            # is handling the renderer's own failure, exc_info=True would
            # read that one (the application's lost, or chained under it).
            exc_info = _figure_out_exc_info(event_dict["exc_info"]) or None
            event_dict = {**event_dict, "exc_info": exc_info}
        try:
            # A copy: the console renderer pops keys as it goes, and a
            # failure halfway must leave the event whole for the fallback.
            return self._render(logger, method_name, dict(event_dict))
        except BaseException as exc:  # a value's __repr__ may raise anything
            raise_if_interrupt(exc)
            self.fallbacks += 1
            try:
                safe = _printable_event(event_dict, exc, keys=_plain_key)
                if exc_info is not None:
                    safe["exc_info"] = exc_info  # the traceback formatter's
                return self._render(logger, method_name, safe)
            except BaseException as again:
                raise_if_interrupt(again)
            try:
                # Every value as text: a field the renderer expects to be a
                # string (the console's ``level``) may be anything; the
                # traceback too (its exception's text may be what failed).
                plain = {k: v for k, v in event_dict.items() if k != "exc_info"}
                safe = _printable_event(plain, exc, keys=_plain_key, values=_as_text)
                if exc_info is not None:
                    safe["exception"] = _traceback_text(exc_info)
                return self._render(logger, method_name, safe)
            except BaseException as again:
                raise_if_interrupt(again)
                return last_resort_line(event_dict, exc)


def _traceback_text(exc_info: Any) -> str:
    """A traceback as plain text, whatever its exception's text does."""
    try:
        return "".join(traceback.format_exception(*exc_info))
    except BaseException as exc:
        raise_if_interrupt(exc)
        return f"{getattr(exc_info[0], '__name__', '?')} (its traceback cannot be shown)"


class _SafeJSONRenderer(structlog.processors.JSONRenderer):
    """structlog's ``JSONRenderer`` that formats exceptions itself and falls
    back instead of raising.

    One processor where structlog's chain has two (``ExceptionRenderer``,
    then the renderer), and a subclass rather than a :class:`SafeRenderer`
    around it: two Python frames less per event, which is most of what
    separates enrichlog without enrichers from plain structlog
    (docs/benchmarks.md, "Hot-path choices"). The fallback is the standard
    library's encoder on a printable copy, with every non-ASCII character
    escaped (so lone surrogates become ``\\udcxx`` escapes, not an error).

    Args:
        exceptions: formats ``exc_info`` into ``exception``; never raises.
    """

    fallbacks = 0

    def __init__(
        self, exceptions: Callable[[WrappedLogger, str, EventDict], EventDict], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._exceptions = exceptions

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str | bytes:
        if "exc_info" in event_dict:
            event_dict = self._exceptions(logger, name, event_dict)
        try:
            return self._dumps(event_dict, **self._dumps_kw)
        except BaseException as exc:  # a value's __str__ may raise anything
            raise_if_interrupt(exc)
            self.fallbacks += 1
            try:
                return json.dumps(
                    _printable_event(event_dict, exc, keys=_text, odd=bounded_plain_json_value()),
                    ensure_ascii=True,
                )
            except BaseException as again:
                raise_if_interrupt(again)
                return last_resort_line(event_dict, exc)


class _SafeExceptionRenderer(structlog.processors.ExceptionRenderer):
    """structlog's ``ExceptionRenderer`` that never raises: an exception it
    cannot format is shown by its type."""

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        exc_info = event_dict.pop("exc_info", None)
        if exc_info:
            try:
                exc_info = _figure_out_exc_info(exc_info)
                if exc_info:
                    event_dict["exception"] = self.format_exception(exc_info)
            except BaseException as exc:
                raise_if_interrupt(exc)
                event_dict["exception"] = f"<exception not formattable: {type(exc).__name__}>"
        return event_dict


#: How deep a printable copy goes before it shows a value by ``repr``.
_MAX_DEPTH = 16
_INVALID_KEY_CHARS = str.maketrans({" ": "_", "=": "_", '"': "_", "\\": "_", "\n": "_", "\t": "_"})


def _text(key: object) -> str:
    """A key as text: a hooked one by its ``__structlog__()`` when that is
    text, else by its type (:func:`shown`), not by the ``repr`` it hides."""
    if isinstance(key, str):
        return key
    if _has_hook(key):
        plain = plain_json_value(key)
        return plain if isinstance(plain, str) else shown(key)
    return _repr(key)


def _plain_key(key: object) -> str:
    """A key logfmt and the console can write: printable (a lone surrogate
    shown as its ``\\udcxx`` escape), without spaces, ``=`` or quotes."""
    text = _text(key)
    if not text.isprintable():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = text.translate(_INVALID_KEY_CHARS)
    return "".join(c if c.isprintable() else "_" for c in text) or "_"


def _printable_event(
    event_dict: EventDict,
    exc: BaseException,
    *,
    keys: Callable[[object], str],
    values: Callable[[Any], Any] | None = None,
    odd: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """A copy of the event that a renderer can write: keys by ``keys``,
    values made plain (odd ones by ``odd``, else ``repr``; or all turned by
    ``values``), and ``render_error``."""
    if values is None:
        safe = _printable(event_dict, keys, 0, odd)
    else:
        safe = _unique_keys(((keys(k), values(v)) for k, v in event_dict.items()))
    if "render_error" in safe:  # the application's own: kept beside ours
        safe[free_key(safe, "render_error")] = safe.pop("render_error")
    safe["render_error"] = f"{type(exc).__name__}: {_repr(exc)[:200]}"
    return safe  # type: ignore[no-any-return]


def _unique_keys(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A dict of ``items`` where a key made plain that another already took
    (``a b`` and ``a_b``) gets a suffix instead of overwriting its value."""
    made: dict[str, Any] = {}
    for key, value in items:
        made[free_key(made, key) if key in made else key] = value
    return made


def free_key(taken: Mapping[str, Any], key: str) -> str:
    """``key`` with the first suffix ``_2``, ``_3``... that ``taken`` lacks."""
    number = 2
    while f"{key}_{number}" in taken:
        number += 1
    return f"{key}_{number}"


def _printable(
    value: Any, keys: Callable[[object], str], depth: int, odd: Callable[[Any], Any] | None
) -> Any:
    """``value`` made plain; any other value turned by ``odd`` (the JSON
    renderer's :func:`plain_json_value`, so that the fallback writes what
    the line would have: a ``__structlog__()``, an ISO date...), else shown
    by ``repr``."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value if -(2**63) <= value < 2**64 else _int_text(value)
    if kind is float:
        return value if math.isfinite(value) else str(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, dict):
            return _unique_keys(
                (keys(k), _printable(v, keys, depth + 1, odd)) for k, v in value.items()
            )
        if isinstance(value, list | tuple):
            return [_printable(v, keys, depth + 1, odd) for v in value]
        if odd is not None:
            plain = odd(value)
            if plain is not value:
                return _printable(plain, keys, depth + 1, odd)
    return shown(value)


def _as_text(value: object) -> str:
    return value if type(value) is str else _repr(value)


def _int_text(value: int) -> str:
    """``value`` in decimal, or in hexadecimal past the interpreter's limit
    on decimal digits (``sys.set_int_max_str_digits``), which has none."""
    try:
        return str(value)
    except ValueError:
        return hex(value)


def last_resort_line(event_dict: EventDict, exc: BaseException) -> str:
    """A JSON line that cannot fail: the event's message and why rendering
    failed."""
    message = _repr(event_dict.get("event"))
    return json.dumps(
        {"event": message, "render_error": f"{type(exc).__name__}"}, ensure_ascii=True
    )


def _repr(value: object) -> str:
    try:
        if type(value) is int:
            return _int_text(value)
        return repr(value)
    except BaseException as exc:  # a __repr__ may raise anything
        raise_if_interrupt(exc)
        return f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"


def is_application_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` may be the application's interrupt: a
    ``KeyboardInterrupt`` or ``SystemExit`` on the main thread, where signal
    handlers run (Ctrl-C landing in a render or a write). Anywhere else it
    can only come from user code (a value's ``__repr__``, a sink)."""
    return isinstance(exc, KeyboardInterrupt | SystemExit) and (
        threading.current_thread() is threading.main_thread()
    )


def raise_if_interrupt(exc: BaseException) -> None:
    """Raise ``exc`` again if it may be the application's interrupt (see
    :func:`is_application_interrupt`); anything else is survived."""
    if is_application_interrupt(exc):
        raise exc


def json_default(value: Any) -> Any:
    """A value JSON has no type for, as it is written whichever encoder runs
    (orjson, or the standard library's without the extra): by its
    ``__structlog__()`` when it has one, as structlog does (a dataclass's
    too: orjson would write its fields, passwords included); UUIDs (also a
    database driver's own UUID type) and decimals as their text, exactly;
    dates and times in ISO 8601 and an enum member by its value, as orjson
    writes them; a set or a deque as a list; a dataclass as a mapping of its
    fields; anything else by ``repr``. May raise what a hook or a ``__repr__`` raises."""
    try:
        hook = value.__structlog__
    except AttributeError:
        pass
    else:
        return hook()
    if isinstance(value, UUID | Decimal):
        return str(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | collections.deque):
        # As a list, so that its items are written as items are (a hooked
        # one by its hook), not inside the container's repr.
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    return repr(value)


def plain_json_value(value: Any) -> Any:
    """:func:`json_default`, or, when that raises, the value shown without
    its ``__structlog__()`` (:func:`shown`): never raises, but for the
    application's interrupt."""
    try:
        return json_default(value)
    except BaseException as exc:
        raise_if_interrupt(exc)
        if _has_hook(value):
            return f"<{type(value).__name__}: __structlog__() failed ({type(exc).__name__})>"
        return _repr(value)


#: Values a plain copy converts at most (by :func:`plain_json_value`): a
#: ``__structlog__()`` that returns several hooked objects, each of which
#: does too, would make the line grow exponentially with the depth.
MAX_CONVERSIONS = 1_000


def bounded_plain_json_value() -> Callable[[Any], Any]:
    """:func:`plain_json_value` for one plain copy: past
    :data:`MAX_CONVERSIONS` values, each is only :func:`shown`."""
    left = MAX_CONVERSIONS

    def convert(value: Any) -> Any:
        nonlocal left
        if left <= 0:
            return shown(value)
        left -= 1
        return plain_json_value(value)

    return convert


def shown(value: object) -> str:
    """A value given up on, as text: its ``repr``, unless it has a
    ``__structlog__()``, whose author wrote it to keep the ``repr`` (a
    password, say) out of the line: then its type only. A container (nested
    too deep) shows its type and size: its ``repr`` would show its items',
    hooks or not."""
    if _has_hook(value):
        return f"<{type(value).__name__}>"
    if isinstance(value, dict | list | tuple | set | frozenset):
        return f"<{type(value).__name__} of {len(value)}, nested too deep>"
    return _repr(value)


def _has_hook(value: object) -> bool:
    return getattr(type(value), "__structlog__", None) is not None


#: orjson's options for a line: a dataclass goes to :func:`json_default`
#: (its ``__structlog__()``), as with the standard library's encoder.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS if orjson is not None else 0


def make_renderer(fmt: str, *, colors: bool = False) -> Processor:
    """The renderer for ``json``, ``console`` or ``logfmt``, made safe; the
    JSON one also formats exceptions (structured, without local variables:
    locals are where passwords and tokens live)."""
    renderer: Callable[[WrappedLogger, str, EventDict], Any]
    if fmt == "json":
        return _SafeJSONRenderer(
            _SafeExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            serializer=orjson.dumps if orjson is not None else json.dumps,
            default=json_default,
            **({"option": _ORJSON_OPTIONS} if orjson is not None else {}),
        )
    if fmt == "console":
        renderer = _escaping_controls(
            structlog.dev.ConsoleRenderer(
                colors=colors, exception_formatter=_console_exceptions(colors=colors)
            ),
            colors=colors,
        )
    elif fmt == "logfmt":
        renderer = _plain_keys(_LogfmtRenderer())
    else:
        raise ValueError(f"unknown format {fmt!r}; expected json, console or logfmt")
    return SafeRenderer(renderer)


def _console_exceptions(*, colors: bool) -> structlog.typing.ExceptionRenderer:
    """How the console shows a traceback: rich's, when installed, without
    local variables (where passwords and tokens live; showing them also
    calls every local's ``__repr__`` again) and in colour only when the
    lines are; else the plain one."""
    if importlib.util.find_spec("rich") is None:
        return structlog.dev.plain_traceback
    rich_traceback = structlog.dev.RichTracebackFormatter(
        show_locals=False, color_system="truecolor" if colors else None
    )

    def console_traceback(sio: TextIO, exc_info: ExcInfo) -> None:
        # rich follows __cause__/__context__ without end when they loop
        # (an exception made its own cause's cause): the log call never
        # returned, and memory grew. The standard library stops at a loop.
        if _chain_loops(exc_info[1]):
            structlog.dev.plain_traceback(sio, exc_info)
        else:
            rich_traceback(sio, exc_info)

    return console_traceback


#: Exceptions a chain is followed through at most, looking for a loop.
_CHAIN_LIMIT = 1_000


def _chain_loops(exc: BaseException | None) -> bool:
    """Whether the chain a traceback shows from ``exc`` (its ``__cause__``,
    else its unsuppressed ``__context__``, and so on; the members of an
    exception group each with theirs) comes back to an exception already
    shown, or runs past :data:`_CHAIN_LIMIT` exceptions in all. Without
    recursion (a group inside its own chain), and an exception reached twice
    through a group's members counts as a loop too: the plain formatter
    shows such a chain well enough."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        while current is not None:
            if id(current) in seen or len(seen) >= _CHAIN_LIMIT:
                return True
            seen.add(id(current))
            members = getattr(current, "exceptions", None)
            if isinstance(current, BaseExceptionGroup) and isinstance(members, tuple | list):
                todo.extend(member for member in members if isinstance(member, BaseException))
            if current.__cause__ is not None:
                current = current.__cause__
            elif not current.__suppress_context__:
                current = current.__context__
            else:
                current = None
    return False


class _LogfmtRenderer(structlog.processors.LogfmtRenderer):
    """structlog's logfmt, with every value that is not plain quoted and
    escaped: structlog quotes only values with a space, ``=`` or a quote,
    and escapes only line feeds, so a tab, a carriage return or another
    control character went out raw (``user=mallory\tadmin=1`` reads back
    as two fields in readers that end a value at any blank, and a raw CR
    splits the line for a reader in universal-newline mode)."""

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> str:
        elements: list[str] = []
        for key, value in self._ordered_items(event_dict):
            if value is None:
                elements.append(f"{key}=")
                continue
            if isinstance(value, bool):
                if self.bool_as_flag and value:
                    elements.append(key)
                    continue
                text = "true" if value else "false"
            else:
                text = str(value)
            if text.isprintable() and not any(char in text for char in ' ="'):
                elements.append(f"{key}={text}")
            else:
                elements.append(f'{key}="{_logfmt_escaped(text)}"')
        return " ".join(elements)


_LOGFMT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _logfmt_escaped(text: str) -> str:
    r"""``text`` for a quoted logfmt value: backslash, quote, line feed,
    carriage return and tab as ``\\``, ``\"``, ``\n``, ``\r``, ``\t``; any
    other character that is not printable as ``\xNN``, ``\uNNNN`` or
    ``\UNNNNNNNN``."""
    out = []
    for char in text:
        escape = _LOGFMT_ESCAPES.get(char)
        if escape is not None:
            out.append(escape)
        elif char.isprintable() or char == " ":
            out.append(char)
        else:
            code = ord(char)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    return "".join(out)


#: What the console shows escaped in text values and the message: control
#: characters but the line feed and tab (ESC would reach the terminal raw,
#: CR overwrite the line), DEL, the C1 controls and the Unicode line and
#: paragraph separators (which split the line for many readers).
_CONSOLE_ESCAPES = {
    code: f"\\x{code:02x}"
    for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))
    if code not in (0x0A, 0x09)
}
_CONSOLE_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
#: A colour code: the only escape sequence a coloured console line keeps.
_SGR = re.compile(r"\x1b\[[0-9;]*m")
_SGR_SPLIT = re.compile(r"(\x1b\[[0-9;]*m)")


def _escaping_controls(
    render: Callable[[WrappedLogger, str, EventDict], Any], *, colors: bool
) -> Callable[[WrappedLogger, str, EventDict], Any]:
    """The console renderer with control characters escaped (see
    :data:`_CONSOLE_ESCAPES`): nothing logged can colour the terminal,
    overwrite a line, or break one where a reader of the file would. Line
    feeds stay (a message or a traceback may span lines on purpose).

    Without colours the renderer adds no control character of its own, so
    its whole output is escaped: keys, values, the message, whatever
    ``str()`` or ``repr()`` of an object gives, tracebacks. With colours its
    own escape sequences must stay, so what goes in is escaped instead: text
    keys and values, the message's ``str()``, and other values' ``repr()``
    (which the renderer shows anyway); an exception's own text in a
    traceback is escaped in the output, all but colour codes."""
    if not colors:

        def render_plain(logger: WrappedLogger, name: str, event_dict: EventDict) -> Any:
            line = render(logger, name, event_dict)
            return line if line.isprintable() else line.translate(_CONSOLE_ESCAPES)

        return render_plain

    def render_escaped(logger: WrappedLogger, name: str, event_dict: EventDict) -> Any:
        escaped: EventDict = {}
        for key, value in event_dict.items():
            if isinstance(key, str) and not key.isprintable():
                key = key.translate(_CONSOLE_ESCAPES)  # noqa: PLW2901 - the escaped key
            if key == "exc_info":
                pass  # the traceback formatter's
            elif key == "event" and not isinstance(value, str):
                value = str(value)  # noqa: PLW2901 - shown by its str()
            elif not isinstance(value, str | int | float | bool | type(None)):
                value = repr(value)  # noqa: PLW2901 - shown by its repr() anyway
            if isinstance(value, str) and not value.isprintable():
                value = str(value).translate(_CONSOLE_ESCAPES)  # noqa: PLW2901
            escaped[key] = value
        line = render(logger, name, escaped)
        if line.isprintable():
            return line
        # What is left (a traceback's exception text): everything but the
        # colour codes (SGR sequences) the renderer and the traceback
        # formatter write themselves.
        return "".join(
            part if _SGR.fullmatch(part) else part.translate(_CONSOLE_ESCAPES)
            for part in _SGR_SPLIT.split(line)
        )

    return render_escaped


def _plain_keys(
    render: Callable[[WrappedLogger, str, EventDict], Any],
) -> Callable[[WrappedLogger, str, EventDict], Any]:
    """logfmt writes a key as it is: one with ``=``, a quote or a space would
    read back as other fields (``level=error=1``). Such a key is refused here,
    so that :class:`SafeRenderer` renders the event from its printable copy
    (keys made plain, ``level_error``; counted, and marked ``render_error``)."""

    def render_plain(logger: WrappedLogger, name: str, event_dict: EventDict) -> Any:
        for key in event_dict:
            if key.__class__ is not str or not _is_plain(key):
                raise ValueError(f"logfmt cannot write the key {key!r} as it is")
        return render(logger, name, event_dict)

    return render_plain


def _is_plain(key: str) -> bool:
    return bool(key) and key.isprintable() and not any(char in key for char in ' ="\\')


def render_fallbacks(processors: Iterable[Processor]) -> int:
    """How many events the renderers among ``processors`` had to render
    from a printable copy."""
    return sum(getattr(processor, "fallbacks", 0) for processor in processors)


def _stdout_is_tty() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


#: structlog's level names for the method names that differ.
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}
#: Renders ``stack_info=True`` as ``stack``, from the first frame outside
#: structlog and enrichlog (on the logging thread, where the call was made).
_STACK_INFO = structlog.processors.StackInfoRenderer(additional_ignores=["enrichlog"])


def add_level_and_stack(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """structlog's ``add_log_level`` and ``StackInfoRenderer`` in one frame
    (the stack check costs a dict lookup per event, a processor of its own
    a Python call)."""
    event_dict["level"] = _LEVEL_OF_METHOD.get(method_name, method_name)
    if "stack_info" in event_dict:
        return _STACK_INFO(logger, method_name, event_dict)
    return event_dict


def pre_processors() -> list[Processor]:
    """What runs on the logging thread before enrichment."""
    return [
        structlog.contextvars.merge_contextvars,
        add_level_and_stack,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def post_processors(settings: LoggingSettings) -> list[Processor]:
    """What runs after enrichment: exception formatting and the renderer."""
    if settings.format == "console":
        # ConsoleRenderer formats exceptions itself, prettier than a string.
        colors = settings.output == "stdout" and _stdout_is_tty()
        return [make_renderer(settings.format, colors=colors)]
    if settings.format == "json":
        return [make_renderer("json")]  # formats exceptions itself: one frame less
    return [_SafeExceptionRenderer(), make_renderer(settings.format)]


# -- per-logger levels ---------------------------------------------------------


class LoggerLevels:
    """The minimum level of each logger name: the ``levels`` setting matched
    by dotted prefix (``app`` covers ``app`` and ``app.db``, not
    ``application``), the most specific name winning; any other name, and
    an unnamed logger, has the ``level`` setting.

    Used where a level is decided once per logger, not per event: when a
    structlog logger is bound (its class then filters by level at no cost
    per call) and by the stdlib bridge for each record's logger name
    (remembered per name).

    Args:
        default: the ``level`` setting, as a stdlib number.
        levels: logger name to level name (validated by the settings).
    """

    __slots__ = ("_known", "_levels", "default")

    def __init__(self, default: int, levels: Mapping[str, str]) -> None:
        self.default = default
        self._levels = {name: LEVELS[level] for name, level in levels.items()}
        self._known: dict[str, int] = {}

    def __bool__(self) -> bool:
        """Whether any logger has a level of its own."""
        return bool(self._levels)

    @property
    def lowest(self) -> int:
        """The lowest level any logger may write at."""
        return min(self.default, *self._levels.values())

    def level_of(self, name: str | None) -> int:
        """The minimum level of the logger ``name`` (``None``: unnamed)."""
        if name is None or not self._levels:
            return self.default
        known = self._known.get(name)
        if known is not None:
            return known
        level = self.default
        prefix = name
        while True:
            found = self._levels.get(prefix)
            if found is not None:
                level = found
                break
            prefix, dot, _ = prefix.rpartition(".")
            if not dot:
                break
        if len(self._known) < _KNOWN_NAMES:
            self._known[name] = level
        return level


#: Logger names whose level :class:`LoggerLevels` remembers, at most.
_KNOWN_NAMES = 4096
