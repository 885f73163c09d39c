"""Found by an outside tester: a child forked while another thread of the
parent was in ``shutdown()`` (or ``configure_logging()`` replacing the
container) lost every event it logged, and its own ``shutdown()`` waited
20 s. argv: output path, ``shutdown`` or ``reconfigure``.

The parent queues a backlog behind a slow enricher, a thread starts shutting
the container down (or replacing it), and the main thread forks while that
drain runs; the child logs 50 events and exits by ``sys.exit`` (the exit
drain). Summary: the child's lines, its exit status and how long it took;
the parent's lines.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from _harness import Tag, arg, read_json_lines, summary

from enrichlog import configure_logging, get_logger

output, what = arg(1), arg(2, "shutdown")
container = configure_logging(
    enrichers=[Tag(delay=0.01, max_concurrency=2)],
    output=output,
    shutdown_timeout=3.0,
    handle_sigterm=False,
)
log = get_logger()
for i in range(400):  # about 2 s of enrichment at 2 calls per 10 ms
    log.info("parent", i=i)
if what == "shutdown":
    stopper = threading.Thread(target=container.shutdown)
else:
    stopper = threading.Thread(
        target=lambda: configure_logging(output=output, handle_sigterm=False)
    )
stopper.start()
while container.running:  # until the other thread has begun
    time.sleep(0.001)
time.sleep(0.1)  # the drain is under way
started = time.monotonic()
pid = os.fork()
if pid == 0:
    for i in range(50):
        log.info("child", i=i)
    sys.exit(0)  # the exit drain: must not wait for the parent's shutdown
_, status = os.waitpid(pid, 0)
child_seconds = time.monotonic() - started
stopper.join()
lines = read_json_lines(output)
summary(
    child_status=os.waitstatus_to_exitcode(status),
    child_seconds=child_seconds,
    child_lines=sorted(line["i"] for line in lines if line["event"] == "child"),
    parent_lines=len({line["i"] for line in lines if line["event"] == "parent"}),
)
