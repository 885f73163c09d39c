"""Found by the second attack round: a forked child's counters included the
parent's. argv: output path.

The parent logs 100 events and flushes, then forks; the child logs 10 and
shuts down. Summary: the child's report and metrics, the parent's report.
"""

from __future__ import annotations

import json
import os
import sys

from _harness import Tag, arg, summary

from enrichlog import configure_logging, get_logger

output = arg(1)
container = configure_logging(enrichers=[Tag()], output=output, delivery="background")
log = get_logger()
for i in range(100):
    log.info("parent", i=i)
container.flush(timeout=10)

read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    for i in range(10):
        log.info("child", i=i)
    container.flush(timeout=10)
    metrics = container.metrics()
    report = container.shutdown()
    child = {
        "written": report.written,
        "events_in": metrics.events_in,
        "handed_off": metrics.handed_off,
        "calls": metrics.enrichers["tag"].calls,
        "latency_count": metrics.enrichers["tag"].latency.count,
    }
    os.write(write, json.dumps(child).encode())
    os._exit(0)
os.close(write)
with os.fdopen(read) as pipe:
    child = json.loads(pipe.read())
os.waitpid(pid, 0)
report = container.shutdown()
summary(child=child, parent_written=report.written)
sys.exit(0)
