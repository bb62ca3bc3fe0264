"""Several RPC objects on one channel, and a call with an expiration but no timeout
to a method whose queue has no consumer any more."""

import asyncio
import os
import sys

from aio_pika import connect_robust
from aio_pika.patterns import RPC

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")


async def echo(*, value: int) -> int:
    await asyncio.sleep(0.001 * (value % 3))
    return value


async def idle_echo(*, value: int) -> int:
    return value


async def main(prefix: str) -> None:
    async with await connect_robust(URL) as connection:
        channel = await connection.channel()
        callee = await RPC.create(channel)
        await callee.register(f"{prefix}.echo", echo, auto_delete=True)

        first = await RPC.create(channel)
        second = await RPC.create(channel)
        results = await asyncio.gather(
            *(
                rpc.call(f"{prefix}.echo", kwargs={"value": n})
                for n in range(50)
                for rpc in (first, second)
            )
        )
        assert results == [n for n in range(50) for _ in range(2)], results
        await first.close()
        assert await second.call(f"{prefix}.echo", kwargs={"value": 7}) == 7

        # A queue that stays after its callee went away: the call expires in it.
        idle = f"{prefix}.idle"
        await callee.register(idle, idle_echo)
        await callee.unregister(idle_echo)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await second.call(idle, kwargs={"value": 1}, expiration=1)
        except TimeoutError:
            elapsed = loop.time() - started
            assert 0.5 < elapsed < 5, elapsed
        else:
            raise AssertionError("a call nobody took did not time out")
        await second.close()
        await callee.close()
        await channel.queue_delete(idle)
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
