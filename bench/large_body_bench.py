"""The publisher's memory for one large body: peak RSS and peak traced allocations.

One process publishes one body (100 MiB by default) with a confirm to
``amq.direct`` with a routing key no queue is bound to (the broker reads it and
drops it), and reports, beyond the body itself:

- ``rss_growth_mib``: how much the process's peak RSS (``ru_maxrss``) grew
  during the publish (the body was in memory before it started), and
  ``peak_rss_mib``: the process's peak RSS at the end;
- ``traced_peak_mib``: the peak of the Python allocations ``tracemalloc`` saw
  during the publish (the body was allocated before it started).

It prints a table and writes ``bench/results/large-body-<time>.json``; it asserts
nothing. Run it with ``python bench/large_body_bench.py`` (``--mib``, ``--url``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

from leveret.amqp import connect

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


async def measure(url: str, mib: int) -> dict[str, Any]:
    body = bytes(range(256)) * (mib * MIB // 256)  # pages touched: RSS counts them
    async with await connect(url) as connection:
        channel = await connection.channel()
        before = _peak_rss()
        tracemalloc.start()
        started = time.perf_counter()
        cpu = time.process_time()
        await channel.publish(
            body, exchange="amq.direct", routing_key=f"bench-nobody-{uuid.uuid4().hex}"
        )
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        grown = max(0, _peak_rss() - before)
    return {
        "body_mib": mib,
        "rss_growth_mib": round(grown / MIB, 1),
        "peak_rss_mib": round(_peak_rss() / MIB, 1),
        "traced_peak_mib": round(traced / MIB, 1),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--label", default="", help="a name for this run in the results file")
    args = parser.parse_args()
    row = asyncio.run(measure(args.url, args.mib))
    row["label"] = args.label
    print("  ".join(f"{key}={value}" for key, value in row.items()))
    RESULTS.mkdir(exist_ok=True)
    label = f"-{args.label}" if args.label else ""
    path = RESULTS / f"large-body-{time.strftime('%Y%m%d-%H%M%S')}{label}.json"
    path.write_text(json.dumps(row, indent=2) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
