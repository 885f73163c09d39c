"""Found by an outside tester: with ``runtime="loop"``, a child forked from a
thread other than the loop's lost every event it logged (its fork hook raised
"none is running here"). argv: output path, ``thread`` or ``loop`` (where the
fork is called from).

The application starts enrichlog on its loop; the fork happens on another
thread or in a coroutine on the loop; the child logs 50 events and exits.
Summary: the child's status and lines, and what its fork hook printed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading

from _harness import Tag, arg, read_json_lines, summary

from enrichlog import configure_logging, get_logger

output, where = arg(1), arg(2, "thread")


def fork_and_log() -> int:
    pid = os.fork()
    if pid == 0:
        for i in range(50):
            get_logger().info("child", i=i)
        os._exit(0)  # no exit drain needed: the child's lines are written at once
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


async def main() -> int:
    container = configure_logging(enrichers=[Tag()], output=output, runtime="loop")
    await container.astartup()
    await get_logger().ainfo("parent")
    if where == "loop":
        status = fork_and_log()
    else:
        result: list[int] = []
        forker = threading.Thread(target=lambda: result.append(fork_and_log()))
        forker.start()
        while forker.is_alive():
            await asyncio.sleep(0.01)
        status = result[0]
    await container.ashutdown()
    return status


status = asyncio.run(main())
lines = read_json_lines(output)
summary(
    child_status=status,
    child_lines=sorted(line["i"] for line in lines if line["event"] == "child"),
    parent_tagged=[line.get("tag") for line in lines if line["event"] == "parent"],
)
sys.exit(0)
