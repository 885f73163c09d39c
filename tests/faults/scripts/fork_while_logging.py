"""Held before: os.fork() while other threads log.

argv: output path, how children end (``exit``: sys.exit, so atexit drains;
``shutdown``: container.shutdown() then os._exit). env: ROUNDS (5),
CHILD_EVENTS (100), THREADS (3).

Parent threads log until the forks are done; each child logs CHILD_EVENTS
events through the async enricher. Summary: what the parent logged, what
each child logged, and the lines of each.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter

from _harness import Tag, arg, env_int, read_json_lines, summary

from enrichlog import configure_logging, get_logger

output, ending = arg(1), arg(2, "exit")
rounds = env_int("ROUNDS", 5)
child_events = env_int("CHILD_EVENTS", 100)
threads_n = env_int("THREADS", 3)

container = configure_logging(enrichers=[Tag()], output=output, delivery="background")
log = get_logger()
stop = threading.Event()
parent_logged = [0] * threads_n


def chatter(number: int) -> None:
    while not stop.is_set():
        log.info("parent", t=number, i=parent_logged[number])
        parent_logged[number] += 1
        if parent_logged[number] % 20 == 0:
            time.sleep(0.001)  # a steady stream, not a flood


workers = [threading.Thread(target=chatter, args=(n,)) for n in range(threads_n)]
for worker in workers:
    worker.start()
children = []
for round_ in range(rounds):
    time.sleep(0.02)
    pid = os.fork()
    if pid == 0:
        for i in range(child_events):
            log.info("child", round=round_, i=i)
        if ending == "shutdown":
            container.shutdown()
            os._exit(0)
        sys.exit(0)  # atexit drains in the child
    children.append(pid)
statuses = [os.waitpid(pid, 0)[1] for pid in children]
stop.set()
for worker in workers:
    worker.join()
report = container.shutdown()

lines = read_json_lines(output)
kinds = Counter(line["event"] for line in lines)
summary(
    parent_logged=sum(parent_logged),
    parent_lines=kinds["parent"],
    parent_distinct=len({(ln["t"], ln["i"]) for ln in lines if ln["event"] == "parent"}),
    child_logged=rounds * child_events,
    child_lines=kinds["child"],
    child_distinct=len({(ln["round"], ln["i"]) for ln in lines if ln["event"] == "child"}),
    child_tagged=sum(1 for ln in lines if ln["event"] == "child" and ln.get("tag") == "seen"),
    statuses=statuses,
    report=dict(report),
)
