"""CompressedJsonMaster: tasks travel as gzip-compressed JSON."""

import asyncio
import os
import sys

from aio_pika import connect_robust
from aio_pika.patterns.master import CompressedJsonMaster

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")


class SmallestMaster(CompressedJsonMaster):
    COMPRESS_LEVEL = 9


async def main(prefix: str) -> None:
    async with await connect_robust(URL) as connection:
        channel = await connection.channel()
        received: asyncio.Queue[dict[str, object]] = asyncio.Queue()

        async def store(**kwargs: object) -> None:
            await received.put(kwargs)

        name = f"{prefix}.store"
        worker = await CompressedJsonMaster(channel).create_worker(name, store, auto_delete=True)
        document = {"text": "h\u00e9llo " * 500, "items": list(range(100))}
        await SmallestMaster(channel).create_task(name, kwargs=document)
        await CompressedJsonMaster(channel).create_task(name, kwargs={"text": "second"})
        assert await asyncio.wait_for(received.get(), 10) == document
        assert await asyncio.wait_for(received.get(), 10) == {"text": "second"}
        await worker.close()
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
