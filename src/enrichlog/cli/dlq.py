"""``python -m enrichlog dlq list|show|replay``: the events workers
dead-lettered, and publishing them again once the cause is fixed."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import TextIO

from ..exceptions import EnricherConfigError, EnrichlogError
from ..settings import resolve_settings
from ..transport.config import TransportConfig
from ..uri.masking import mask_secrets

__all__ = ["run_dlq"]


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
    try:
        config = _transport(action == "replay" and not (replay_all or sequences))
        return asyncio.run(_run(config, action, sequences, replay_all, keep, limit, fmt, out))
    except EnrichlogError as exc:
        print(f"error: {exc}", file=err)
    except BrokenPipeError:
        raise  # its reader stopped reading (| head): 141, quietly, as every command
    except Exception as exc:
        print(f"error: {mask_secrets(f'{type(exc).__name__}: {exc}')}", file=err)
    return 1


def _transport(nothing_to_replay: bool) -> TransportConfig:
    settings = resolve_settings(None, {})
    if not settings.transport:
        raise EnricherConfigError("ENRICHLOG_TRANSPORT is not set: no dead-letter stream")
    if nothing_to_replay:
        raise EnricherConfigError("dlq replay: name sequence numbers, or --all")
    return TransportConfig.parse(settings.transport, dlq_subject=settings.dlq_subject)


async def _run(
    config: TransportConfig,
    action: str,
    sequences: Sequence[int],
    replay_all: bool,
    keep: bool,
    limit: int | None,
    fmt: str,
    out: TextIO,
) -> int:
    from nats.js.errors import NotFoundError  # noqa: PLC0415

    from ..transport.deadletter import (  # noqa: PLC0415
        DeadLetter,
        get_dead_letter,
        read_dead_letters,
        replay,
    )
    from ..transport.nats import connect, ensure_stream  # noqa: PLC0415

    client = await connect(config, name="enrichlog-dlq", reconnect=False)
    try:
        js = client.jetstream()
        await ensure_stream(js, config.dlq_stream, config.dlq_subject)
        if action == "list":
            letters = await read_dead_letters(js, config, limit=limit)
            if fmt == "json":
                for letter in letters:
                    print(json.dumps(letter.as_dict()), file=out)
            else:
                print(f"{len(letters)} dead-lettered event(s) in {config.dlq_stream}", file=out)
                for letter in letters:
                    print(
                        f"{letter.sequence:>8}  {letter.event_id}  {letter.deliveries} "
                        f"deliveries  {letter.failed_at}  {letter.reason}",
                        file=out,
                    )
            return 0
        chosen: list[DeadLetter] = []
        if replay_all:
            chosen = await read_dead_letters(js, config, limit=limit)
        for sequence in sequences:
            try:
                chosen.append(await get_dead_letter(js, config, sequence))
            except NotFoundError:
                raise EnricherConfigError(
                    f"no dead letter {sequence} in {config.dlq_stream}"
                ) from None
        if action == "show":
            for letter in chosen:
                print(json.dumps(letter.as_dict(), indent=2), file=out)
            return 0
        await ensure_stream(js, config.stream, config.subject)
        count = await replay(js, config, chosen, keep=keep)
        print(f"replayed {count} event(s) to {config.subject}", file=out)
        return 0
    finally:
        await client.close()
