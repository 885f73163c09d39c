"""Extra: the application's own signal handler logs, and its signal lands
while the main thread is inside a log call.

argv: output path, path (``plain``: no enricher, lines written on the
calling thread; ``background``: an async enricher). env: SECONDS (1.5),
PERIOD (0.01 s between signals).

A thread sends SIGUSR1 every PERIOD seconds (SECONDS / PERIOD signals in
all) while the main thread logs; the handler logs one event per signal.
Summary: events logged by the main thread and by the handler, and the lines
written.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from _harness import Tag, arg, count_lines, env_float, summary

from enrichlog import configure_logging, get_logger

output, path = arg(1), arg(2, "plain")
seconds = env_float("SECONDS", 1.5)
period = env_float("PERIOD", 0.01)

container = configure_logging(
    enrichers=[] if path == "plain" else [Tag()],
    output=output,
    delivery="inline" if path == "plain" else "background",
)
log = get_logger()
handled = [0]


def on_usr1(_signum: int, _frame: object) -> None:
    handled[0] += 1
    log.warning("from the signal handler", n=handled[0])


signal.signal(signal.SIGUSR1, on_usr1)
stop = threading.Event()


def send() -> None:
    # A fixed number of signals, whatever the main thread does meanwhile.
    for _ in range(int(seconds / period)):
        if stop.is_set():
            return
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(period)


sender = threading.Thread(target=send, daemon=True)
sender.start()
logged = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    log.info("main", i=logged)
    logged += 1
stop.set()
sender.join()
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
report = container.shutdown()
summary(
    logged=logged + handled[0],
    main=logged,
    handled=handled[0],
    lines=count_lines(output),
    report=dict(report),
)
