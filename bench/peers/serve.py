"""``python -m bench.peers.serve LIBRARY``: a leveret or aio-pika worker (or RPC
callee) for the peers benchmark, run like the peers' own worker commands.

Serves the run in ``LEVERET_BENCH_PEER`` (a durable queue, the library's default
prefetch) until SIGTERM or SIGINT, then closes its connection.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from bench._clients import open_patterns_client
from bench._roles import multiply
from bench.peers._run import PeerRun, Recorder


async def serve(library: str) -> None:
    run = PeerRun.from_env()
    record = Recorder(run.ids_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def task(*, task_id: int) -> None:
        record(task_id)

    client = await open_patterns_client(library, run.url, f"bench peers {library} worker")
    try:
        if run.mode == "tasks":
            await client.start_worker(run.queue, task, True, None)
        else:
            await client.start_callee(run.queue, multiply, None)
        await stop.wait()
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
