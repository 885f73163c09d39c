"""``python -m enrichlog dlq list|show|replay``: the events workers
dead-lettered, and publishing them again once the cause is fixed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from ..exceptions import EnricherConfigError, EnrichlogError
from ..settings import resolve_settings
from ..transport.config import TransportConfig
from ..uri.masking import mask_secrets
from . import printable

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from ..transport.deadletter import DeadLetter, Replayed

__all__ = ["run_dlq"]

#: The largest sequence number a stream can have.
_LAST_SEQUENCE = 2**64 - 1


def run_dlq(
    action: str,
    sequences: Sequence[int] = (),
    *,
    replay_all: bool = False,
    keep: bool = False,
    limit: int | None = None,
    fmt: str = "text",
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``dlq <action>`` against the environment's transport; 0 when it
    worked, 1 with the problem on stderr."""
    out, err = out or sys.stdout, err or sys.stderr
    # A sequence given twice is one dead letter (replayed, then deleted, once).
    sequences = list(dict.fromkeys(sequences))
    if replay_all and sequences:
        # --all replays (and deletes) them already: the numbers would then
        # name dead letters that are gone.
        print("error: give either --all or sequence numbers, not both", file=err)
        return 1
    try:
        config = _transport(action == "replay" and not (replay_all or sequences))
        _check_sequences(config, sequences)
        return asyncio.run(_run(config, action, sequences, replay_all, keep, limit, fmt, out, err))
    except EnrichlogError as exc:
        print(f"error: {exc}", file=err)
    except BrokenPipeError:
        raise  # its reader stopped reading (| head): 141, quietly, as every command
    except Exception as exc:
        # A bare TimeoutError has no text: its name alone, not "TimeoutError: ".
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        print(f"error: {mask_secrets(reason)}", file=err)
    return 1


def _transport(nothing_to_replay: bool) -> TransportConfig:
    settings = resolve_settings(None, {})
    if not settings.transport:
        raise EnricherConfigError("ENRICHLOG_TRANSPORT is not set: no dead-letter stream")
    if nothing_to_replay:
        raise EnricherConfigError("dlq replay: name sequence numbers, or --all")
    return TransportConfig.parse(settings.transport, dlq_subject=settings.dlq_subject)


def _check_sequences(config: TransportConfig, sequences: Sequence[int]) -> None:
    """Refuse a sequence number no stream has, before asking the server
    (which answers 0 or a negative one with a bare "bad request")."""
    for sequence in sequences:
        if sequence < 1:
            raise EnricherConfigError(
                f"no dead letter {sequence} in {config.dlq_stream}: sequence numbers start "
                "at 1 (dlq list shows them)"
            )


async def _run(
    config: TransportConfig,
    action: str,
    sequences: Sequence[int],
    replay_all: bool,
    keep: bool,
    limit: int | None,
    fmt: str,
    out: TextIO,
    err: TextIO,
) -> int:
    from ..transport.deadletter import read_dead_letters, replay  # noqa: PLC0415
    from ..transport.nats import connect, ensure_stream  # noqa: PLC0415

    client = await connect(config, name="enrichlog-dlq", reconnect=False)
    try:
        js = client.jetstream()
        await ensure_stream(js, config.dlq_stream, config.dlq_subject, server=config.masked_server)
        if action == "list":
            letters = await read_dead_letters(js, config, limit=limit)
            if fmt == "json":
                for letter in letters:
                    print(json.dumps(letter.as_dict()), file=out)
            else:
                print(f"{len(letters)} dead-lettered event(s) in {config.dlq_stream}", file=out)
                for letter in letters:
                    print(_list_line(letter), file=out)
            return 0
        chosen = await _choose(js, config, sequences, replay_all, limit)
        if action == "show":
            for letter in chosen:
                print(json.dumps(letter.as_dict(), indent=2), file=out)
            return 0
        await ensure_stream(js, config.stream, config.subject, server=config.masked_server)
        done = await replay(js, config, chosen, keep=keep)
        print(_replayed_line(config, done), file=out)
        if done.already_replayed:
            print(await _not_again(js, config, done.already_replayed, keep), file=out)
        if done.stopped_by is not None:
            print(
                f"error: stream {config.stream!r} refused the replay ({done.stopped_by}): "
                f"{len(done.left)} dead letter(s) not replayed (kept in {config.dlq_stream}); "
                "make room in the stream and replay them again",
                file=err,
            )
        if done.refused:
            reasons = "; ".join(
                f"dead letter {letter.sequence}: {printable(letter.malformed or '')}"
                for letter in done.refused
            )
            print(
                f"error: {len(done.refused)} malformed dead letter(s) not replayed (kept): "
                f"{reasons}",
                file=err,
            )
        return 1 if done.refused or done.stopped_by is not None else 0
    finally:
        await client.close()


def _list_line(letter: DeadLetter) -> str:
    """The ``dlq list`` line of one dead letter."""
    if letter.malformed is not None:
        return (
            f"{letter.sequence:>8}  {printable(letter.event_id) or '-'}  malformed dead letter: "
            f"{printable(letter.malformed)}"
        )
    return (
        f"{letter.sequence:>8}  {printable(letter.event_id)}  {letter.deliveries} "
        f"deliveries  {printable(letter.failed_at)}  {printable(letter.reason)}"
    )


def _replayed_line(config: TransportConfig, done: Replayed) -> str:
    """``replayed N event(s) to <subject>``; per subject when they went to
    several (each to the subject it came from)."""
    counts: dict[str, int] = {}
    for letter in (*done.published, *done.already_replayed):
        subject = done.subjects.get(letter.sequence, config.subject)
        if letter in done.published:
            counts[subject] = counts.get(subject, 0) + 1
        else:
            counts.setdefault(subject, 0)
    published = len(done.published)
    if len(counts) <= 1:
        subject = next(iter(counts), config.subject)
        return f"replayed {published} event(s) to {printable(subject)}"
    each = ", ".join(f"{printable(subject)} ({count})" for subject, count in counts.items())
    return f"replayed {published} event(s) to {each}"


async def _choose(
    js: JetStreamContext,
    config: TransportConfig,
    sequences: Sequence[int],
    replay_all: bool,
    limit: int | None,
) -> list[DeadLetter]:
    """The dead letters a command names: every one (``--all``), then those
    of ``sequences``.

    Raises:
        EnricherConfigError: a sequence names no dead letter.
    """
    from nats.js.errors import NotFoundError  # noqa: PLC0415

    from ..transport.deadletter import get_dead_letter, read_dead_letters  # noqa: PLC0415

    chosen = await read_dead_letters(js, config, limit=limit) if replay_all else []
    for sequence in sequences:
        letter = None
        if sequence <= _LAST_SEQUENCE:  # past it, the server would call it bad JSON
            with contextlib.suppress(NotFoundError):
                letter = await get_dead_letter(js, config, sequence)
        if letter is None:
            raise EnricherConfigError(
                f"no dead letter {sequence} in {config.dlq_stream} (dlq list shows them)"
            )
        chosen.append(letter)
    return chosen


async def _not_again(
    js: JetStreamContext, config: TransportConfig, letters: Sequence[DeadLetter], keep: bool
) -> str:
    """The line for dead letters a replay did not publish: the server
    already had them, from an earlier replay within its duplicate window."""
    try:
        window = (await js.stream_info(config.stream)).config.duplicate_window
    except Exception:  # the line says what happened without the figure
        window = None
    seconds = f" ({window:g} s)" if window else ""
    numbers = ", ".join(str(letter.sequence) for letter in letters)
    # Deleted all the same without --keep: their event is in the stream.
    fate = "" if keep else "; deleted, as their earlier replay is in the stream"
    return (
        f"{len(letters)} event(s) not published again (dead letter {numbers}): already "
        f"replayed within the duplicate window of {config.stream}{seconds}{fate}"
    )
