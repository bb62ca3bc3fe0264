"""The module paths patterns.base, .master and .rpc, and subclasses that change the
serialization by setting SERIALIZER and CONTENT_TYPE."""

import asyncio
import base64
import json
import os
import sys
from typing import Any

from aio_pika import connect_robust
from aio_pika.patterns.base import Base
from aio_pika.patterns.master import Master, NackMessage, RejectMessage, Worker
from aio_pika.patterns.rpc import RPC

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")


class Base64Json:
    """A made-up wire format: JSON, base64-encoded."""

    @staticmethod
    def dumps(data: Any) -> bytes:
        return base64.b64encode(json.dumps(data).encode())

    @staticmethod
    def loads(data: bytes) -> Any:
        return json.loads(base64.b64decode(data))


class Base64Master(Master):
    SERIALIZER = Base64Json
    CONTENT_TYPE = "application/x-base64-json"


class Base64RPC(RPC):
    SERIALIZER = Base64Json
    CONTENT_TYPE = "application/x-base64-json"


async def main(prefix: str) -> None:
    assert issubclass(Master, Base)
    assert issubclass(RPC, Base)
    assert issubclass(NackMessage, Exception)
    assert issubclass(RejectMessage, Exception)
    async with await connect_robust(URL) as connection:
        channel = await connection.channel()
        received: asyncio.Queue[int] = asyncio.Queue()

        async def count(*, n: int) -> None:
            await received.put(n)

        worker = await Base64Master(channel).create_worker(
            f"{prefix}.count", count, auto_delete=True
        )
        assert isinstance(worker, Worker)
        await Base64Master(channel).create_task(f"{prefix}.count", kwargs={"n": 3})
        assert await asyncio.wait_for(received.get(), 10) == 3

        rpc = await Base64RPC.create(channel)
        await rpc.register(f"{prefix}.square", lambda *, n: n * n, auto_delete=True)
        assert await rpc.call(f"{prefix}.square", kwargs={"n": 12}) == 144
        await rpc.close()
        await worker.close()
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
