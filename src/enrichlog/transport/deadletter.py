"""The dead-letter stream: events workers gave up on, and how to read and
replay them.

A worker dead-letters an event once it was delivered ``max_deliver`` times
without being written. The dead-letter message is a JSON object: ``reason``
(the last failure), ``deliveries``, ``event_id``, ``subject`` and
``stream_sequence`` (where the event was), ``failed_at`` (UTC, ISO 8601),
``worker`` (host and pid) and ``event`` (the original event; ``payload``, its
text, when it was not a JSON object).

Replaying publishes the original event again on the main subject, with a
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

import datetime
import os
import socket
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .codec import EVENT_ID, decode_event, encode_event

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
) -> bytes:
    """The dead-letter message for one event."""
    body: dict[str, Any] = {
        "reason": reason,
        "deliveries": deliveries,
        EVENT_ID: event_id,
        "subject": subject,
        "stream_sequence": stream_sequence,
        "failed_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    if event is not None:
        body["event"] = event
    else:
        body["payload"] = data.decode("utf-8", "backslashreplace")
    return encode_event(body)


def _parse(sequence: int, data: bytes | None) -> DeadLetter:
    try:
        body = decode_event(data or b"")
    except ValueError:
        body = {
            "reason": "unreadable dead letter",
            "payload": (data or b"").decode(errors="replace"),
        }
    event = body.get("event")
    return DeadLetter(
        sequence=sequence,
        event_id=str(body.get(EVENT_ID, "")),
        reason=str(body.get("reason", "")),
        deliveries=int(body.get("deliveries", 0) or 0),
        failed_at=str(body.get("failed_at", "")),
        worker=str(body.get("worker", "")),
        subject=str(body.get("subject", "")),
        event=event if isinstance(event, dict) else None,
        payload=None if isinstance(event, dict) else str(body.get("payload", "")),
        stream_sequence=_int(body.get("stream_sequence")),
    )


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return 0


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
    """

    published: tuple[DeadLetter, ...] = ()
    already_replayed: tuple[DeadLetter, ...] = ()


async def replay(
    js: JetStreamContext, config: TransportConfig, letters: list[DeadLetter], *, keep: bool = False
) -> Replayed:
    """Publish each dead letter's event on the main subject again, then
    delete the dead letter (unless ``keep``).

    A dead letter replayed before within the main stream's duplicate window
    is not stored again (the server says so in its acknowledgement): it is
    counted in ``already_replayed``, not ``published``, and deleted all the
    same unless ``keep`` (its event is in the stream, from that replay).
    """
    published: list[DeadLetter] = []
    already: list[DeadLetter] = []
    for letter in letters:
        ack = await js.publish(
            config.subject,
            letter.original(),
            headers={
                "Nats-Msg-Id": f"{letter.event_id}:replay:{letter.sequence}",
                REPLAY_HEADER: str(letter.sequence),
            },
        )
        (already if ack.duplicate else published).append(letter)
        if not keep:
            await js.delete_msg(config.dlq_stream, letter.sequence)
    return Replayed(tuple(published), tuple(already))
