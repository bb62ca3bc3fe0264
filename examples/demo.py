"""leveret in one screen: a worker and an RPC callee, a stream of tasks and calls.

Run it against a local RabbitMQ::

    python examples/demo.py            # or --url amqp://user:pass@host/ --tasks 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from leveret import connect_robust
from leveret.patterns import RPC, Master


async def main(url: str, tasks: int, calls: int) -> None:
    done = asyncio.Event()
    processed = 0

    async def resize(*, image_id: int, width: int) -> None:
        nonlocal processed
        processed += 1
        if processed == tasks:
            done.set()

    async def multiply(*, x: int, y: int) -> int:
        return x * y

    async with (
        await connect_robust(url, name="leveret demo worker") as worker_conn,
        await connect_robust(url, name="leveret demo client") as client_conn,
    ):
        # The serving side: a worker for "demo.resize", a callee for "demo.multiply".
        worker_master = Master(await worker_conn.channel())
        await worker_master.create_worker("demo.resize", resize, auto_delete=True)
        callee = await RPC.create(await worker_conn.channel())
        await callee.register("demo.multiply", multiply, auto_delete=True)

        # The client side: tasks from 64 concurrent producers, then RPC calls.
        master = Master(await client_conn.channel())
        started = time.perf_counter()

        async def produce(first: int) -> None:
            for image_id in range(first, tasks, 64):
                await master.proxy.demo.resize(image_id=image_id, width=640)

        await asyncio.gather(*(produce(lane) for lane in range(min(64, tasks))))
        confirmed = time.perf_counter() - started
        await asyncio.wait_for(done.wait(), 60)
        task_time = time.perf_counter() - started

        rpc = await RPC.create(await client_conn.channel(), timeout=5)
        latencies = []
        for i in range(calls):
            sent = time.perf_counter()
            assert await rpc.proxy.demo.multiply(x=i, y=3) == i * 3
            latencies.append((time.perf_counter() - sent) * 1000)
        latencies.sort()

        await worker_master.close()
        await callee.close()

    print(
        f"tasks   sent+confirmed {tasks} in {confirmed:.2f} s, all {processed} done "
        f"in {task_time:.2f} s ({tasks / task_time:,.0f} tasks/s)"
    )
    print(
        f"calls   {calls} sequential RPC calls: p50 {statistics.median(latencies):.3f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1]:.3f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=1_000)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.tasks, args.calls))
