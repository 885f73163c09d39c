"""Case 3: multiprocessing children log through an async enricher.

argv: output path, start method (fork, forkserver, spawn), kind (process,
pool). env: CHILDREN (4), EVENTS (1000 per child).

Logging is configured at module level, outside ``if __name__ ==
"__main__"``, so that forkserver and spawn children configure it when they
import this module. Each child logs EVENTS events and returns; nobody calls
shutdown. The parent counts the children's lines once they have all ended.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter

from _harness import Tag, arg, env_int, read_json_lines, summary

from enrichlog import configure_logging, get_logger

OUTPUT = os.environ["FAULTS_OUTPUT"]
CHILDREN = env_int("CHILDREN", 4)
EVENTS = env_int("EVENTS", 1000)

configure_logging(
    enrichers=[Tag(delay=float(os.environ.get("TAG_DELAY", "0")))],
    output=OUTPUT,
    delivery="background",
    max_in_flight=env_int("MAX_IN_FLIGHT", 512),
)
log = get_logger()


def child(number: int) -> int:
    for i in range(EVENTS):
        log.info("child", child=number, i=i)
    return EVENTS


def main() -> None:
    method, kind = arg(1), arg(2, "process")
    context = multiprocessing.get_context(method)
    if kind == "pool":
        with context.Pool(CHILDREN) as pool:
            logged = sum(pool.map(child, range(CHILDREN)))
            pool.close()
            pool.join()
    elif kind == "pool-terminate":
        # The idiom: leaving the with block terminates the workers (SIGTERM)
        # as soon as map() returned, events possibly still queued in them.
        with context.Pool(CHILDREN) as pool:
            logged = sum(pool.map(child, range(CHILDREN)))
    elif kind == "pool-maxtasks":
        with context.Pool(CHILDREN, maxtasksperchild=1) as pool:
            logged = sum(pool.map(child, range(CHILDREN * 2), chunksize=1))
            pool.close()
            pool.join()
    else:
        processes = [context.Process(target=child, args=(n,)) for n in range(CHILDREN)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        logged = CHILDREN * EVENTS
    lines = [line for line in read_json_lines(OUTPUT) if line["event"] == "child"]
    per_child = Counter(line["child"] for line in lines)
    summary(
        logged=logged,
        lines=len(lines),
        distinct=len({(line["child"], line["i"]) for line in lines}),
        kind=kind,
        tagged=sum(1 for line in lines if line.get("tag") == "seen"),
        per_child={str(k): v for k, v in sorted(per_child.items())},
    )


if __name__ == "__main__":
    main()
