"""JsonRPC on an exchange of its own, with aio-pika's arguments of create, register
and call."""

import asyncio
import os
import sys

from aio_pika import connect_robust
from aio_pika.patterns import JsonRPC
from aio_pika.patterns.rpc import JsonRPCError

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")


async def multiply(*, x: int, y: int) -> int:
    return x * y


def divide(*, x: int, y: int) -> float:  # a plain function
    return x / y


async def main(prefix: str) -> None:
    async with await connect_robust(URL) as connection:
        callee = await JsonRPC.create(
            await connection.channel(),
            exchange=prefix,
            durable=False,
            auto_delete=True,
            host_exceptions=True,
        )
        await callee.register("multiply", multiply, auto_delete=True, durable=False)
        await callee.register("divide", divide, auto_delete=True, arguments={"x-max-priority": 9})

        caller = await JsonRPC.create(await connection.channel(), exchange=prefix)
        assert await caller.proxy.multiply(x=6, y=7) == 42
        assert await caller.call("divide", kwargs=dict(x=1, y=4), expiration=10) == 0.25
        assert await caller.call("multiply", {"x": 2, "y": 3}, priority=9, delivery_mode=2) == 6
        try:
            await caller.call("divide", kwargs={"x": 1, "y": 0})
        except JsonRPCError:
            pass
        else:
            raise AssertionError("a ZeroDivisionError in the callee did not reach the caller")

        await callee.unregister(divide)
        await caller.close()
        await callee.close()
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
