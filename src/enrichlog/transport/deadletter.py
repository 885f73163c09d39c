"""The dead-letter stream: events workers gave up on, and how to read and
replay them.

A worker dead-letters an event once it was delivered ``max_deliver`` times
without being written. The dead-letter message is a JSON object: ``reason``
(the last failure), ``deliveries``, ``event_id``, ``subject`` and
``stream_sequence`` (where the event was), ``failed_at`` (UTC, ISO 8601),
``worker`` (host and pid) and ``event`` (the original event; ``payload``, its
text, when it was not a JSON object). A dead letter that would not fit in a
message is published with its event cut to fit, ``truncated: true`` and
``original_size`` (the event's size in bytes) telling so.

Replaying publishes the original event again on the subject it came from
(the main subject when the stream does not capture that one), with a
message id of its own (``<event_id>:replay:<dead-letter sequence>``), so the
server's duplicate window does not swallow it as a copy of the original
publish, and keeps its ``event_id`` so readers of the output still recognise
it; then deletes the dead letter. The id is the same at every replay of one
dead letter, so replaying it again within the main stream's duplicate window
(a ``--keep`` replay run twice, a command run again after it failed halfway)
publishes nothing: the server answers that it already has the message, and
:func:`replay` reports it apart.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .codec import EVENT_ID, ID_HEADER, decode_event, encode_event, fit_event

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from .config import TransportConfig

__all__ = [
    "DeadLetter",
    "Replayed",
    "dead_letter_body",
    "get_dead_letter",
    "read_dead_letters",
    "replay",
    "replay_id",
]

#: Header naming the dead letter a replayed event comes from.
REPLAY_HEADER = "Enrichlog-Replay-Of"


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered event.

    Attributes:
        sequence: its sequence number in the dead-letter stream.
        event_id: the event's id.
        reason: why the worker gave up (the last failure).
        deliveries: how many times it was delivered.
        failed_at: when it was dead-lettered (UTC, ISO 8601).
        worker: the worker that gave up (host and pid).
        subject: the subject the event was published on.
        event: the original event (``None`` when it was not a JSON object;
            ``payload`` then holds its text).
        payload: the original payload's text, when ``event`` is ``None``.
        stream_sequence: where the event was in the event stream (0 when
            the dead letter does not say).
        truncated: the event was cut to fit in the dead letter
            (``original_size``: its size before, in bytes).
        malformed: why the dead letter is not one a worker writes (not a
            JSON object, a field of the wrong type, no event), else
            ``None``; such a dead letter is shown, never replayed.
    """

    sequence: int
    event_id: str
    reason: str
    deliveries: int
    failed_at: str
    worker: str
    subject: str
    event: dict[str, Any] | None
    payload: str | None = None
    stream_sequence: int = 0
    truncated: bool = False
    original_size: int = 0
    malformed: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)

    def original(self) -> bytes:
        """The message to publish again."""
        if self.event is not None:
            return encode_event(self.event)
        return (self.payload or "").encode("utf-8", "surrogateescape")


def dead_letter_body(
    *,
    data: bytes,
    event: dict[str, Any] | None,
    event_id: str,
    reason: str,
    deliveries: int,
    subject: str,
    stream_sequence: int,
    limit: int | None = None,
) -> bytes:
    """The dead-letter message for one event, at most ``limit`` bytes: an
    event that does not fit beside the dead letter's own fields (one near
    the server's maximum payload) is cut to fit, its largest values first
    (as :func:`~enrichlog.transport.codec.fit_event` does; a payload that
    is not a JSON object to its beginning), and the dead letter says so:
    ``truncated: true`` and ``original_size``, the event's size in bytes."""
    body: dict[str, Any] = {
        "reason": reason,
        "deliveries": deliveries,
        EVENT_ID: event_id,
        "subject": subject,
        "stream_sequence": stream_sequence,
        "failed_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    text = data.decode("utf-8", "backslashreplace")
    if event is not None:
        body["event"] = event
    else:
        body["payload"] = text
    encoded = encode_event(body)
    if limit is None or len(encoded) <= limit:
        return encoded
    body["reason"] = reason[:4096]
    body["truncated"] = True
    body["original_size"] = len(data)
    body.pop("event", None)
    body.pop("payload", None)
    room = max(limit - len(encode_event(body)) - 64, 0)
    if event is not None:
        fitted = fit_event(encode_event(event), room)
        try:
            body["event"] = decode_event(fitted)
        except ValueError:  # pragma: no cover - fit_event writes an object
            body["payload"] = fitted.decode("utf-8", "replace")
    else:
        body["payload"] = text
    encoded = encode_event(body)
    while len(encoded) > limit and room > 0:
        # What is left: the payload's beginning (escapes make its JSON
        # longer than its text, so cut again until it fits).
        room = room * 3 // 4 if room > 64 else 0
        body.pop("event", None)
        body["payload"] = text.encode("utf-8")[:room].decode("utf-8", "ignore")
        encoded = encode_event(body)
    return encoded


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse(sequence: int, data: bytes | None) -> DeadLetter:
    """The dead letter in ``data``; never raises: one that is not as a
    worker writes it is returned with ``malformed`` saying why."""
    raw = data or b""
    why: str | None
    try:
        # Strict: NaN and Infinity are not JSON (a replay would publish them).
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        body, why = None, f"not JSON ({exc})"
    else:
        why = None if isinstance(body, dict) else f"not a JSON object ({type(body).__name__})"
    if not isinstance(body, dict):
        return DeadLetter(
            sequence=sequence,
            event_id="",
            reason="",
            deliveries=0,
            failed_at="",
            worker="",
            subject="",
            event=None,
            payload=raw.decode("utf-8", "replace"),
            malformed=why,
        )
    problems: list[str] = []

    def text(key: str) -> str:
        value = body.get(key, "")
        if isinstance(value, str):
            return value
        problems.append(f"{key!r} is not a string")
        return json.dumps(value)

    def number(key: str) -> int:
        value = body.get(key, 0)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        problems.append(f"{key!r} is not a count ({json.dumps(value)[:40]})")
        return 0

    event = body.get("event")
    payload = body.get("payload")
    if event is not None and not isinstance(event, dict):
        problems.append(f"'event' is not a JSON object ({type(event).__name__})")
        event = None
    elif event is None and not isinstance(payload, str):
        problems.append("it has neither an 'event' object nor a 'payload' text")
    truncated = body.get("truncated", False)
    if not isinstance(truncated, bool):
        problems.append("'truncated' is not true or false")
        truncated = False
    letter = DeadLetter(
        sequence=sequence,
        event_id=text(EVENT_ID),
        reason=text("reason"),
        deliveries=number("deliveries"),
        failed_at=text("failed_at"),
        worker=text("worker"),
        subject=text("subject"),
        event=event,
        payload=None if event is not None else (payload if isinstance(payload, str) else None),
        stream_sequence=number("stream_sequence"),
        truncated=truncated,
        original_size=number("original_size"),
    )
    if problems:
        letter = dataclasses.replace(letter, malformed="; ".join(problems))
    return letter


async def get_dead_letter(
    js: JetStreamContext, config: TransportConfig, sequence: int
) -> DeadLetter:
    """The dead letter at ``sequence``.

    Raises:
        nats.js.errors.NotFoundError: there is none.
    """
    message = await js.get_msg(config.dlq_stream, seq=sequence)
    return _parse(sequence, message.data)


async def read_dead_letters(
    js: JetStreamContext, config: TransportConfig, *, limit: int | None = None
) -> list[DeadLetter]:
    """The dead letters, oldest first (at most ``limit``)."""
    from nats.js.errors import NotFoundError  # noqa: PLC0415

    letters: list[DeadLetter] = []
    sequence = 1
    while limit is None or len(letters) < limit:
        try:
            message = await js.get_msg(
                config.dlq_stream, seq=sequence, subject=config.dlq_subject, next=True
            )
        except NotFoundError:
            break
        assert message.seq is not None
        letters.append(_parse(message.seq, message.data))
        sequence = message.seq + 1
    return letters


@dataclass(frozen=True)
class Replayed:
    """What :func:`replay` did.

    Attributes:
        published: the dead letters whose event was published again.
        already_replayed: those the server did not store again: a replay
            of the same dead letter (the same message id) is already in the
            main stream, published within its duplicate window.
        refused: malformed dead letters (``malformed`` says why): not
            published, not deleted.
        subjects: the subject each dead letter (by sequence) was published
            on again.
        left: those not replayed because the main stream refused a replay
            (full, discarding new messages): kept, not deleted.
        stopped_by: why it refused (the server's reason), when it did.
    """

    published: tuple[DeadLetter, ...] = ()
    already_replayed: tuple[DeadLetter, ...] = ()
    refused: tuple[DeadLetter, ...] = ()
    subjects: dict[int, str] = field(default_factory=dict)
    left: tuple[DeadLetter, ...] = ()
    stopped_by: str | None = None


def _plain_subject(subject: str) -> bool:
    """Whether ``subject`` is one a message can be published on (tokens,
    no wildcard, no white space)."""
    if not subject or any(char.isspace() or not char.isprintable() for char in subject):
        return False
    return all(token and token not in ("*", ">") for token in subject.split("."))


def replay_id(config: TransportConfig, letter: DeadLetter) -> str:
    """The id a replay gives the dead letter's event: its ``event_id``; for
    a dead letter without one (not written by a worker), the event's own
    ``event_id`` field when that is a non-empty string, else
    ``<dead-letter stream>-<sequence>`` (``LOGS_DLQ-4``): the same at every
    replay of that dead letter, never empty."""
    if letter.event_id:
        return letter.event_id
    own = (letter.event or {}).get(EVENT_ID)
    if isinstance(own, str) and own:
        return own
    return f"{config.dlq_stream}-{letter.sequence}"


async def replay(
    js: JetStreamContext, config: TransportConfig, letters: list[DeadLetter], *, keep: bool = False
) -> Replayed:
    """Publish each dead letter's event again, on the subject it came from
    (its ``subject``) when the main stream captures that subject, else on
    the configured one; then delete the dead letter (unless ``keep``).

    A dead letter replayed before within the main stream's duplicate window
    is not stored again (the server says so in its acknowledgement): it is
    counted in ``already_replayed``, not ``published``, and deleted all the
    same unless ``keep`` (its event is in the stream, from that replay). A
    malformed dead letter is not published (it would publish whatever it
    holds, not an event) and is kept: ``refused``. When the main stream
    refuses a replay (full, discarding new messages), the replay stops
    there: that dead letter and the rest are kept (``left``), with the
    server's reason (``stopped_by``).
    """
    from nats.js.errors import APIError  # noqa: PLC0415

    from .config import subject_matches  # noqa: PLC0415
    from .nats import server_said  # noqa: PLC0415

    patterns = list((await js.stream_info(config.stream)).config.subjects or [])
    published: list[DeadLetter] = []
    already: list[DeadLetter] = []
    refused: list[DeadLetter] = []
    subjects: dict[int, str] = {}
    for index, letter in enumerate(letters):
        if letter.malformed is not None:
            refused.append(letter)
            continue
        subject = config.subject
        if _plain_subject(letter.subject) and any(
            subject_matches(pattern, letter.subject) for pattern in patterns
        ):
            subject = letter.subject
        event_id = replay_id(config, letter)
        try:
            ack = await js.publish(
                subject,
                letter.original(),
                headers={
                    "Nats-Msg-Id": f"{event_id}:replay:{letter.sequence}",
                    REPLAY_HEADER: str(letter.sequence),
                    ID_HEADER: event_id,
                },
            )
        except APIError as exc:
            if exc.err_code is None:
                raise  # no answer from the stream: the command's error
            left = tuple(rest for rest in letters[index:] if rest.malformed is None)
            refused += [rest for rest in letters[index + 1 :] if rest.malformed is not None]
            return Replayed(
                tuple(published), tuple(already), tuple(refused), subjects, left, server_said(exc)
            )
        subjects[letter.sequence] = subject
        (already if ack.duplicate else published).append(letter)
        if not keep:
            await js.delete_msg(config.dlq_stream, letter.sequence)
    return Replayed(tuple(published), tuple(already), tuple(refused), subjects)
