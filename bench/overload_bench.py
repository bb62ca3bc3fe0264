"""Workers and callees under overload: how much work is done for nobody.

Four cases, each on a fresh queue of the local broker, one process:

- ``worker-plain-limit``: 60 tasks of 0.5 s for a plain (not async) worker with
  ``time_limit=2`` and the default prefetch: how many were dead-lettered without
  ever starting, and how many ran.
- ``callee-plain``: 2,000 calls at once, each with a 2 s timeout, to a plain callee
  that takes 20 ms: how many were answered in time, how many ran, and how many
  started after their caller had given up.
- ``callee-plain-256``: the same with ``prefetch_count=256`` set by the user.
- ``callee-async-cpu``: 2,000 calls with a 2 s timeout to an ``async def`` callee
  that does 10 ms of CPU work without yielding.

It prints a table and writes ``bench/results/overload-<time>.json``; it asserts
nothing. Run it with ``python bench/overload_bench.py`` (``--url`` for another broker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from leveret import connect
from leveret.patterns import RPC, Master

RESULTS = Path(__file__).resolve().parent / "results"


def _burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def worker_plain_limit(url: str) -> dict[str, Any]:
    tasks, seconds, limit = 60, 0.5, 2.0
    name = f"bench-overload-{uuid.uuid4().hex[:8]}"
    started: list[int] = []

    def work(*, n: int) -> None:
        started.append(n)
        time.sleep(seconds)

    async with await connect(url) as connection:
        channel = await connection.channel()
        master = Master(channel)
        worker = await master.create_worker(name, work, time_limit=limit)
        began = time.monotonic()
        for n in range(tasks):
            await master.create_task(name, kwargs={"n": n})
        while time.monotonic() - began < 60:
            state = await channel.queue_declare(name, passive=True)
            letters = await channel.queue_declare(f"{name}.dlq", passive=True)
            if state.message_count == 0 and worker.in_flight == 0:
                break
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - began
        dead = letters.message_count
        await worker.close(1)
        for queue in (name, f"{name}.dlq"):
            await channel.queue_delete(queue)
    return {
        "tasks": tasks,
        "ran": len(set(started)),
        "dead_lettered": dead,
        "dead_lettered_unrun": tasks - len(set(started)) if dead else 0,
        "seconds": round(elapsed, 1),
    }


async def callee(url: str, kind: str, prefetch: int | None) -> dict[str, Any]:
    calls, timeout = 2000, 2.0
    name = f"bench-overload-{uuid.uuid4().hex[:8]}"
    starts: list[float] = []  # how long after its caller gave up each call started

    def plain(*, n: int, gives_up: float) -> int:
        starts.append(time.time() - gives_up)
        time.sleep(0.02)
        return n

    async def cpu(*, n: int, gives_up: float) -> int:
        starts.append(time.time() - gives_up)
        _burn(0.01)
        return n

    async def call(n: int) -> Any:
        return await client.call(name, {"n": n, "gives_up": time.time() + timeout}, timeout=timeout)

    async with await connect(url) as serving, await connect(url) as calling:
        server = await RPC.create(await serving.channel())
        await server.register(name, plain if kind == "plain" else cpu, prefetch_count=prefetch)
        client = await RPC.create(await calling.channel(publisher_confirms=False))
        results = await asyncio.gather(*map(call, range(calls)), return_exceptions=True)
        await asyncio.sleep(3)  # calls already taken finish; late ones are skipped or run
        await server.close(5)
        await client.close()
        channel = await serving.channel()
        await channel.queue_delete(name)
    return {
        "calls": calls,
        "answered_in_time": sum(isinstance(result, int) for result in results),
        "ran": len(starts),
        "ran_for_callers_gone": sum(late > 0 for late in starts),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")
    )
    parser.add_argument("--label", default="", help="a name for this run in the results file")
    options = parser.parse_args()
    rows = {
        "worker-plain-limit": await worker_plain_limit(options.url),
        "callee-plain": await callee(options.url, "plain", None),
        "callee-plain-256": await callee(options.url, "plain", 256),
        "callee-async-cpu": await callee(options.url, "async", None),
    }
    for case, figures in rows.items():
        cells = "  ".join(f"{key}={value}" for key, value in figures.items())
        print(f"{case:<20} {cells}")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"overload-{stamp}.json"
    path.write_text(json.dumps({"label": options.label, "cases": rows}, indent=2) + "\n")
    print(f"written: {path}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
