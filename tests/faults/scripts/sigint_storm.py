"""Extra: SIGINT after SIGINT while the main thread logs, so that
``KeyboardInterrupt`` lands anywhere inside enrichlog's log call.

argv: output path, delivery (inline, background). env: SECONDS (2).

A SIGINT handler raises ``KeyboardInterrupt`` only while a log call is in
progress (the flag is set just before and cleared just after it), so the
script's own bookkeeping is never interrupted. Summary: the numbers of the
calls attempted, of those that returned, flush and shutdown results.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from _harness import Tag, arg, env_float, plain, read_json_lines, summary

from enrichlog import configure_logging, get_logger

output, delivery = arg(1), arg(2, "background")
seconds = env_float("SECONDS", 2.0)

container = configure_logging(
    enrichers=[Tag()], output=output, delivery=delivery, shutdown_timeout=10
)
log = get_logger()
armed = [False]


def on_sigint(_signum: int, _frame: object) -> None:
    if armed[0]:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, on_sigint)
stop = threading.Event()


def storm() -> None:
    while not stop.is_set():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.0007)


threading.Thread(target=storm, daemon=True).start()
attempted: list[int] = []
returned: list[int] = []
interrupted = 0
deadline = time.monotonic() + seconds
i = 0
while time.monotonic() < deadline:
    try:
        try:
            attempted.append(i)
            armed[0] = True
            log.info("e", i=i)
            armed[0] = False
            returned.append(i)
        except KeyboardInterrupt:
            armed[0] = False
            interrupted += 1
    except KeyboardInterrupt:  # landed in the handler above, before it disarmed
        armed[0] = False
        interrupted += 1
    i += 1
armed[0] = False
stop.set()

flush_started = time.monotonic()
flushed = container.flush(10)
flush_seconds = time.monotonic() - flush_started
metrics = plain(container.metrics())
report = container.shutdown()
written = [line["i"] for line in read_json_lines(output)]
summary(
    attempted=len(attempted),
    returned=len(returned),
    interrupted=interrupted,
    lines=len(written),
    distinct=len(set(written)),
    returned_not_written=sorted(set(returned) - set(written))[:20],
    written_not_attempted=sorted(set(written) - set(attempted))[:20],
    flushed=flushed,
    flush_seconds=flush_seconds,
    pending_after_flush=metrics["pending"],
    report=dict(report),
)
