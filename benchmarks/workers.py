"""Scale-out benchmark: throughput of one worker against two when enrichment is the
bottleneck.

Each worker runs an async lookup that takes ``--latency`` seconds (20 ms) with at most
``--concurrency`` calls in flight (8): a backend that answers slowly behind a small pool,
so one worker cannot go faster than ``concurrency / latency`` events per second however
many events it fetches. The events are published first (by a producer container), then the
workers are started as a user would (``python -m enrichlog worker``) and timed in the
steady state: from the moment every worker has written its first line to 90% of the events.
Target: two workers at least 1.8 times one.

    .venv/bin/python benchmarks/workers.py [--events 4000] [--latency 0.02] [--concurrency 8]

Needs a NATS server with JetStream (``--server``, default nats://127.0.0.1:4222). This is a
benchmark, not a test: it prints figures and PASS or FAIL, and exits 0 either way unless
``--strict`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from enrichlog import AsyncEnricher

TARGET = 1.8
HERE = Path(__file__).resolve().parent


class SlowLookup(AsyncEnricher):
    """A lookup that takes a fixed time: the enrichment bottleneck."""

    name = "lookup"
    timeout = 5.0

    def __init__(self, latency: float, **options: Any) -> None:
        super().__init__(**options)
        self.latency = latency

    async def enrich_async(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        await asyncio.sleep(self.latency)
        event_dict["account"] = f"acct-{event_dict.get('user_id')}"
        return event_dict


def enrichers() -> list[Any]:
    """What the workers run (``--enrichers workers:enrichers``), from the environment."""
    latency = float(os.environ.get("BENCH_LATENCY", "0.02"))
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "8"))
    return [SlowLookup(latency, max_concurrency=concurrency)]


def publish(uri: str, events: int, spool: Path) -> None:
    from enrichlog import configure_logging, get_logger

    container = configure_logging(transport=uri, spool_dir=str(spool), queue_size=events + 10)
    log = get_logger()
    for index in range(events):
        log.info("checkout", user_id=index % 97, index=index)
    report = container.shutdown()
    assert report["published"] == events, report


def count_lines(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        try:
            with path.open("rb") as handle:
                total += sum(
                    chunk.count(b"\n") for chunk in iter(lambda h=handle: h.read(1 << 20), b"")
                )
        except FileNotFoundError:
            pass
    return total


def run_workers(
    uri: str, count: int, events: int, workdir: Path, args: argparse.Namespace
) -> float:
    """Events per second of ``count`` workers, in the steady state."""
    outputs = [workdir / f"out-{count}-{i}.log" for i in range(count)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICHLOG_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")])),
        ENRICHLOG_TRANSPORT=uri,
        BENCH_LATENCY=str(args.latency),
        BENCH_CONCURRENCY=str(args.concurrency),
    )
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "enrichlog",
                "worker",
                "--enrichers",
                "workers:enrichers",
                "--stats-interval",
                "0",
            ],
            env={**env, "ENRICHLOG_OUTPUT": str(output)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for output in outputs
    ]
    try:
        # Steady state: from the moment every worker has written a line (start-up
        # skew left out) to 90% of the events (the tail, where one worker may finish
        # its last fetched events alone, left out).
        deadline = time.monotonic() + args.timeout
        while not all(count_lines([output]) for output in outputs):
            if time.monotonic() > deadline:
                raise SystemExit("a worker wrote nothing: is the server up?")
            time.sleep(0.005)
        start, first = time.monotonic(), count_lines(outputs)
        goal = int(events * 0.9)
        while (written := count_lines(outputs)) < goal:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {written} of {events} events written in time")
            time.sleep(0.005)
        return (written - first) / (time.monotonic() - start)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


async def delete_streams(server: str, names: list[str]) -> None:
    import nats

    client = await nats.connect(server)
    js = client.jetstream()
    for name in names:
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
    await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="nats://127.0.0.1:4222")
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--strict", action="store_true", help="exit 1 on FAIL")
    args = parser.parse_args()

    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for count in (1, 2):
            stream = f"BENCH{uuid.uuid4().hex[:8]}"
            uri = f"{args.server}?stream={stream}&subject=bench.{stream.lower()}"
            try:
                publish(uri, args.events, workdir / f"spool-{count}")
                rates[count] = run_workers(uri, count, args.events, workdir, args)
            finally:
                asyncio.run(delete_streams(args.server, [stream, f"{stream}_DLQ"]))

    ceiling = args.concurrency / args.latency
    ratio = rates[2] / rates[1]
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(
        f"enrichment: {args.latency * 1000:.0f} ms per event, {args.concurrency} at once per "
        f"worker (ceiling {ceiling:,.0f} events/s per worker); {args.events:,} events"
    )
    print(f"one worker:  {rates[1]:>8,.0f} events/s")
    print(f"two workers: {rates[2]:>8,.0f} events/s")
    print(f"{verdict}  workers  two against one: {ratio:.2f}x (target >= {TARGET}x)")
    return 1 if args.strict and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
