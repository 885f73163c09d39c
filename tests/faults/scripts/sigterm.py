"""Held before: SIGTERM, with no handler of the application's, drains
every queued event before the process dies.

argv: output path, mode (``self``: log EVENTS events, print the summary,
then send itself SIGTERM; ``twice``: the same, SIGTERM sent twice at once,
as coreutils' timeout sends it; ``insist``: SIGTERM, then another one
INSIST seconds later; ``stream``: log continuously, numbering the events,
and say ``ready`` once EVENTS are logged; the parent's SIGTERM ends the
process).
env: EVENTS (2000), DELAY (0.002 s per enricher call).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from _harness import Tag, arg, env_float, env_int, summary

from enrichlog import configure_logging, get_logger

output, mode = arg(1), arg(2, "self")
events = env_int("EVENTS", 2000)

container = configure_logging(
    enrichers=[Tag(delay=env_float("DELAY", 0.002))],
    output=output,
    delivery="background",
    max_in_flight=32,  # keep most events queued when SIGTERM arrives
)
log = get_logger()

if mode in ("self", "twice", "insist"):
    for i in range(events):
        log.info("e", i=i)
    summary(logged=events, pending=container.metrics()["pending"])
    os.kill(os.getpid(), signal.SIGTERM)
    if mode == "twice":
        os.kill(os.getpid(), signal.SIGTERM)
    elif mode == "insist":
        time.sleep(env_float("INSIST", 0.6))
        os.kill(os.getpid(), signal.SIGTERM)
    while True:
        signal.pause()
else:
    i = 0
    while True:
        log.info("e", i=i)
        i += 1
        if i == events:  # the parent sends SIGTERM once it reads this
            print("ready", flush=True)
            sys.stdout.close()
