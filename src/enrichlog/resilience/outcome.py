"""What one enricher did for one event: its changes, or why it made none.

An :data:`Outcome` is ``(updated keys, removed keys, None)`` on success and
``(None, (), reason)`` on failure. It is a plain tuple, not a class: one is
built for every enricher of every event, and cached outcomes are shared
between events. The reasons are the ones ``enrichment_errors`` shows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

__all__ = [
    "CIRCUIT_OPEN",
    "FILTERED",
    "FILTERED_REASON",
    "IMMUTABLE",
    "INTERRUPTS",
    "INVALID_RETURN",
    "OVERLOADED",
    "TIMEOUT",
    "UNAVAILABLE",
    "Fills",
    "Outcome",
    "Written",
    "changes_of",
    "error_outcome",
    "fill",
    "hook_failed",
    "isolated_copy",
    "take_interrupt",
    "with_reasons",
    "written_copy",
]

Outcome = tuple[dict[str, Any] | None, tuple[str, ...], str | None]
"""``(updated, removed, reason)``: what an enricher did to its copy of an event."""


class Fills(dict[str, Any]):
    """The fields an enricher adds without replacing any the event has
    (``AsyncEnricher.keep_existing``): an outcome's ``updated`` of this
    class is merged by :func:`fill`, where a plain dict is merged by
    ``update``. The mark travels with the outcome, into the cache too."""

    __slots__ = ()


class Written(dict[str, Any]):
    """An enricher's copy of the event that records the keys it sets, for
    an outcome served to other events (cached, or a batch's key): a field
    set to the very value the event had (a call-site ``tier="gold"``, the
    same row) is a change all the same, which those events need.
    :func:`changes_of` reads :attr:`written` and :attr:`deleted`.

    Made by ``dict``'s own constructor (no ``__init__`` of its own): the
    sets are made on the first change, so a copy costs what a dict costs
    (once per batched key: a frame per copy showed in the batching
    benchmark)."""

    #: Keys it set (a set once it sets one).
    written: set[str] | frozenset[str] = frozenset()
    #: Keys it removed, or tried to (a pop of a key this event lacks
    #: removes it from the other events of the key: a redaction).
    deleted: set[str] | frozenset[str] = frozenset()

    def _wrote(self, keys: Iterable[str]) -> None:
        if self.written:
            self.written.update(keys)  # type: ignore[union-attr]
        else:
            self.written = set(keys)

    def _deleted(self, keys: Iterable[str]) -> None:
        if self.deleted:
            self.deleted.update(keys)  # type: ignore[union-attr]
        else:
            self.deleted = set(keys)

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, value)
        if self.written:
            self.written.add(key)  # type: ignore[union-attr]
        else:
            self.written = {key}

    def __delitem__(self, key: str) -> None:
        self._deleted((key,))
        dict.__delitem__(self, key)

    def pop(self, key: str, *default: Any) -> Any:
        self._deleted((key,))
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[str, Any]:
        item = dict.popitem(self)
        self._deleted((item[0],))
        return item

    def clear(self) -> None:
        self._deleted(list(self))
        dict.clear(self)

    def update(self, *args: Any, **kwargs: Any) -> None:
        fields = dict(*args, **kwargs)
        self._wrote(fields)
        dict.update(self, fields)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self._wrote((key,))
        return dict.setdefault(self, key, default)

    def __ior__(self, other: Any) -> Written:  # type: ignore[override,misc]
        self.update(other)
        return self


class _FlatWritten(Written):
    """A :class:`Written` copy of a flat event (every value immutable): its
    :attr:`written` and :attr:`deleted` are its whole change unless it was
    changed through ``dict``'s own methods, which :func:`changes_of` checks
    with one C comparison instead of comparing every field."""


def written_copy(event: Mapping[str, Any]) -> Written:
    """:func:`isolated_copy` of ``event`` as a :class:`Written`, in one copy."""
    if IMMUTABLE.issuperset(map(type, event.values())):
        return _FlatWritten(event)  # the common, flat event
    return Written(isolated_copy(event))


def with_reasons(existing: object, errors: dict[str, str]) -> dict[str, Any]:
    """The error field's value once ``errors`` join ``existing``, its value
    so far: a dict the application put there is copied, never changed (it
    may be passed to every call, or bound, and would carry one event's
    reasons to the others); anything else is replaced."""
    return {**dict.copy(existing), **errors} if isinstance(existing, dict) else errors


def fill(event_dict: MutableMapping[str, Any], fields: Mapping[str, Any]) -> None:
    """Merge ``fields`` into ``event_dict``: a plain dict's replace the
    event's, :class:`Fills` never do."""
    if fields.__class__ is dict:
        event_dict.update(fields)
        return
    for key, value in fields.items():
        event_dict.setdefault(key, value)


UNAVAILABLE: Outcome = (None, (), "unavailable")
"""Skipped: the enricher failed to start, failed its health check, or the
container is shutting down."""

CIRCUIT_OPEN: Outcome = (None, (), "circuit_open")
"""Skipped: the enricher's circuit breaker is open."""

TIMEOUT: Outcome = (None, (), "timeout")
"""The enricher did not answer within its timeout."""

OVERLOADED: Outcome = (None, (), "overloaded")
"""The runtime itself was too busy to give the enricher its time (waiting for
a concurrency slot, or a loop that fell behind); not the enricher's fault, so
not counted by its breaker."""

INVALID_RETURN: Outcome = (None, (), "invalid_return")
"""The enricher returned something that is not a mapping."""

FILTERED_REASON = "filtered by enricher"
"""The reason of :data:`FILTERED`; compared by identity, never written."""

FILTERED: Outcome = (None, (), FILTERED_REASON)
"""The enricher raised structlog's ``DropEvent``: the event is filtered out
on purpose, and no line is written."""

_ERROR_OUTCOMES: dict[type[BaseException], Outcome] = {}

#: Values with no parts an enricher could change in place: a copy of the event
#: shares them. (A tuple is immutable but may hold a dict: it is looked into.)
IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes})


def error_outcome(exc: BaseException) -> Outcome:
    """The outcome for an enricher that raised ``exc`` (``error: Type``);
    ``timeout`` for a ``TimeoutError`` (a lookup of its own that timed out,
    as good as the runtime's timeout)."""
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    kind = type(exc)
    outcome = _ERROR_OUTCOMES.get(kind)
    if outcome is None:
        outcome = (None, (), f"error: {kind.__name__}")
        if len(_ERROR_OUTCOMES) < 1024:  # bounded: exception types are few
            _ERROR_OUTCOMES[kind] = outcome
    return outcome


def changes_of(  # noqa: PLR0912 - the recorded path inline: no frame per batched key
    before: Mapping[str, Any], after: Mapping[str, Any], reserved: str | None = None
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """What an enricher did to its copy of the event: (set keys, removed keys).

    A value is unchanged when it is the very object the event had (its copy
    shares immutable values) or, for a copied container, an equal one.
    ``reserved`` (the error field) is left out of both: it holds the
    runtime's reasons, which no enricher (nor a backend's row or answer it
    merges into the event) may set or remove. Raises whatever reading
    ``after`` raises (a mapping that fails when read is the enricher's
    fault: the caller turns it into ``invalid_return``).
    """
    if after.__class__ is _FlatWritten:
        # The copy of a flat event the enricher returned: its change is
        # what it recorded, unless a change made through dict's own methods
        # (which it cannot record) shows in one C comparison with the event
        # as those records make it. Once per batched key: no frame.
        written, deleted = after.written, after.deleted
        expected = dict(before)
        if deleted:
            for key in deleted:
                expected.pop(key, None)
        updated = {}
        for key in written:
            if key in after:
                expected[key] = updated[key] = after[key]
        if expected == after:
            updated.pop(reserved, None)  # type: ignore[arg-type]
            if len(updated) > 1:  # in the event's order, as the line shows them
                updated = {key: value for key, value in after.items() if key in updated}
            if not deleted:
                return updated, ()
            return updated, tuple(key for key in deleted if key not in after and key != reserved)
    # Once per enricher call: a plain loop with bound lookups is about a
    # third cheaper than the equivalent comprehensions.
    updated = {}
    get = before.get
    for key, value in after.items():
        old = get(key, _ABSENT)
        if old is not value and (
            old is _ABSENT or type(value) in IMMUTABLE or not _equal(old, value)
        ):
            updated[key] = value
    if len(after) - len(updated) >= len(before):
        removed: tuple[str, ...] = ()  # every key of before is still there
    else:
        removed = tuple(key for key in before if key not in after and key != reserved)
    if isinstance(after, Written):  # _FlatWritten too, changed through dict's own methods
        for key in after.written:
            if key not in updated and key in after:
                updated[key] = after[key]  # set to the value it had: a change all the same
        if after.deleted:
            gone = [
                key
                for key in after.deleted
                if key not in after and key not in removed and key != reserved
            ]
            removed = (*removed, *gone)  # removed where it was not: it is where it is
    if reserved is not None:
        updated.pop(reserved, None)
    return updated, removed


#: A key a mapping does not have.
_ABSENT: Any = object()


def _equal(old: Any, new: Any) -> bool:
    """Whether a copied container is still equal to the event's: anything
    that cannot say (an array's ``==``) counts as changed."""
    try:
        return bool(old == new)
    except Exception:
        return False


def isolated_copy(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` an enricher may change freely, nested values too.

    Containers (dicts, lists, sets, and tuples holding any) are copied all
    the way down; everything else is shared, since strings and numbers cannot
    be changed in place. So a failing enricher leaves nothing behind, siblings of one level
    never see each other's changes, and the application's own objects passed
    as field values are never modified.
    """
    copy = dict(event)
    if IMMUTABLE.issuperset(map(type, copy.values())):
        return copy  # the common, flat event: checked in C, nothing to copy
    for key, value in copy.items():
        if type(value) not in IMMUTABLE:
            try:
                copy[key] = _isolated(value)
            except RecursionError:  # a value that holds itself, or nested very deep
                copy[key] = _copied_or_shared(value)
    return copy


def _copied_or_shared(value: Any) -> Any:
    """``value`` copied by ``copy.deepcopy`` (which follows cycles and keeps
    a subclass's type); shared when it cannot be copied, or is nested deeper
    than the interpreter's recursion limit: the event is still enriched and
    written, and only an enricher that changes such a value in place could
    reach the application's."""
    import copy  # noqa: PLC0415 - rare

    try:
        return copy.deepcopy(value)
    except Exception:  # RecursionError included
        return value


def _isolated(value: Any) -> Any:
    kind = type(value)
    if kind in IMMUTABLE:
        return value
    if kind is dict:
        return {key: _isolated(item) for key, item in value.items()}
    if kind is list:
        return [_isolated(item) for item in value]
    if kind is set:
        return {_isolated(item) for item in value}
    if kind is tuple or kind is frozenset:
        items = [_isolated(item) for item in value]
        unchanged = all(new is old for new, old in zip(items, value, strict=True))
        return value if unchanged else kind(items)
    if isinstance(value, dict | list | set):
        return _copied_or_shared(value)  # subclasses (OrderedDict...) keep their type
    return value


#: ``(thread ident, exception)``: a ``KeyboardInterrupt`` or ``SystemExit``
#: an enricher's hook raised on the calling thread (a sync enricher, a
#: ``cache_key()``). The application's own thread re-raises it once
#: its event is written (:func:`take_interrupt`); elsewhere it stays a
#: reason. Empty but for that moment, so the hot path only checks it.
INTERRUPTS: list[tuple[int, BaseException]] = []


def hook_failed(exc: BaseException) -> Outcome:
    """The outcome of an enricher's hook that raised ``exc`` on the calling
    thread; a ``KeyboardInterrupt`` or ``SystemExit`` is also kept for
    :func:`take_interrupt`, so that the application's thread gets it back
    once its event is written."""
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        INTERRUPTS.append((threading.get_ident(), exc))
    return error_outcome(exc)


def take_interrupt() -> BaseException | None:
    """Remove and return the interrupt a sync enricher raised on this
    thread, if any."""
    ident = threading.get_ident()
    for index, (thread, exc) in enumerate(INTERRUPTS):
        if thread == ident:
            del INTERRUPTS[index]
            return exc
    return None
