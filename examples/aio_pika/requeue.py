"""Master(channel, requeue=True, reject_on_redelivered=True): a task that raises goes
back to its queue once; raising again after that redelivery, it is rejected."""

import asyncio
import collections
import os
import sys

from aio_pika import connect_robust
from aio_pika.patterns import Master

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")


async def main(prefix: str) -> None:
    async with await connect_robust(URL) as connection:
        channel = await connection.channel()
        master = Master(channel, requeue=True, reject_on_redelivered=True)
        runs: collections.Counter[str] = collections.Counter()
        finished: asyncio.Queue[str] = asyncio.Queue()

        async def flaky(*, key: str) -> None:
            runs[key] += 1
            if key == "always" or runs[key] == 1:
                raise RuntimeError(f"{key} failed (run {runs[key]})")
            await finished.put(key)

        name = f"{prefix}.flaky"
        worker = await master.create_worker(name, flaky, auto_delete=True)
        await master.create_task(name, kwargs={"key": "once"})
        await master.create_task(name, kwargs={"key": "always"})
        assert await asyncio.wait_for(finished.get(), 10) == "once"
        for _ in range(100):
            if runs["always"] >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # long enough for a third run, if there were one
        assert runs == {"once": 2, "always": 2}, runs
        await worker.close()
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
