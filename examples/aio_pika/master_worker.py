"""Master/Worker with JsonMaster, using aio-pika's arguments of Master, create_worker
and create_task."""

import asyncio
import datetime
import os
import sys

from aio_pika import connect_robust
from aio_pika.patterns import JsonMaster, NackMessage, RejectMessage

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")


async def main(prefix: str) -> None:
    connection = await connect_robust(URL, client_properties={"connection_name": prefix})
    async with connection:
        channel = await connection.channel()
        master = JsonMaster(channel, False, False)  # requeue, reject_on_redelivered
        resized: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

        async def resize(*, path: str, width: int) -> None:
            if width < 0:
                raise RejectMessage(requeue=False)
            if width == 0:
                raise NackMessage(requeue=False)
            await resized.put((path, width))

        name = f"{prefix}.resize"
        first = await master.create_worker(
            name,
            resize,
            durable=False,
            exclusive=False,
            auto_delete=True,
            arguments={"x-max-priority": 10},
            timeout=10,
            robust=True,
        )
        # A second worker on the same queue: passive, it only checks that it exists.
        second = await master.create_worker(name, resize, passive=True)

        await getattr(master.proxy, prefix).resize(path="a.png", width=640)
        await master.create_task(
            name,
            kwargs={"path": "b.png", "width": 320},
            priority=5,
            expiration=60,
            headers={"origin": "example"},
            message_id="task-b",
            correlation_id="order-7",
            app_id="example",
            type="resize",
            timestamp=datetime.datetime.now(datetime.UTC),
        )
        await master.create_task(name, kwargs={"path": "c.png", "width": 0})
        await master.create_task(name, kwargs={"path": "d.png", "width": -1})
        await master.create_task(name, {"path": "e.png", "width": 100})

        got = sorted([await asyncio.wait_for(resized.get(), 10) for _ in range(3)])
        assert got == [("a.png", 640), ("b.png", 320), ("e.png", 100)], got
        await asyncio.sleep(0.2)
        assert resized.empty(), "a nacked or rejected task ran"
        await first.close()
        await second.close()
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
