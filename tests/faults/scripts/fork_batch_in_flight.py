"""Found by the third attack round: a child forked while a batched lookup ran
in the parent never got that key's fields (the parent's batch, which never
comes back in the child, stayed "fetching" the key). argv: output path.

The parent logs uid=1 and forks while enrich_many runs for it; the child logs
uid=1 and uid=2 three times each, then shuts down. Summary: the child's lines
(uid, name, errors).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from _harness import arg, read_json_lines, summary

from enrichlog import AsyncEnricher, configure_logging, get_logger

fetching = threading.Event()


class Users(AsyncEnricher):
    name = "user"

    def cache_key(self, event_dict: Any) -> Hashable | None:
        return event_dict.get("uid")

    async def enrich_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
        fetching.set()
        await asyncio.sleep(0.3)
        return {key: f"name{key}" for key in keys}

    def apply(self, event_dict: Any, value: Any) -> Any:
        event_dict["uname"] = value
        return event_dict


output = arg(1)
container = configure_logging(enrichers=[Users()], output=output, delivery="background")
log = get_logger()
log.info("parent", who="parent", uid=1)
fetching.wait(10)  # the parent's batch for uid=1 is running now

read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    for _ in range(3):
        log.info("child", who="child", uid=1)
        log.info("child", who="child", uid=2)
    container.flush(timeout=10)
    container.shutdown()
    os.write(write, b"done")
    os._exit(0)
os.close(write)
with os.fdopen(read) as pipe:
    pipe.read()
os.waitpid(pid, 0)
container.shutdown()
lines = read_json_lines(output)
summary(
    child=[
        [line["uid"], line.get("uname"), line.get("enrichment_errors")]
        for line in lines
        if line["who"] == "child"
    ],
    parent=[line.get("uname") for line in lines if line["who"] == "parent"],
)
sys.exit(0)
