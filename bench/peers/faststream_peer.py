"""FastStream's ``RabbitBroker`` (on aio-pika), for the peers benchmark.

The worker runs as FastStream's own command (``faststream run
bench.peers.faststream_peer:app``, one worker process [1]); the producer and caller
open a broker of their own. Settings (FastStream's defaults in brackets):

- ``logger=None`` [a log line per message received and processed];
- the queue: ``RabbitQueue(queue, durable=True)`` (durable said outright), published
  with ``persist=True`` [False] on FastStream's default channel (publisher confirms
  on, mandatory: each publish awaits its confirm); no prefetch limit [none: FastStream
  sends no ``basic.qos`` unless a ``Channel(prefetch_count=...)`` is given, like
  aio-pika]; acked after the handler returned [``AckPolicy.REJECT_ON_ERROR``];
- RPC: ``broker.request(...)`` (RabbitMQ's direct reply-to), the handler's return
  value is the reply.
"""

from __future__ import annotations

from typing import Any, Final

from faststream import FastStream
from faststream.rabbit import RabbitBroker, RabbitQueue

from bench._clients import Send
from bench.peers._run import PeerRun, Recorder

run = PeerRun.from_env()
broker: Final = RabbitBroker(run.url, logger=None)
app: Final = FastStream(broker, logger=None)
_record = Recorder(run.ids_dir)

if run.mode == "tasks":

    @broker.subscriber(RabbitQueue(run.queue, durable=True))
    async def record(body: dict[str, int]) -> None:
        _record(body["task_id"])

else:

    @broker.subscriber(RabbitQueue(run.queue, durable=True))
    async def multiply(body: dict[str, int]) -> int:
        return body["x"] * body["y"]


class FastStreamDriver:
    """Publishes tasks and makes requests on a broker of its own (no subscribers)."""

    def __init__(self, client: RabbitBroker) -> None:
        self._client = client

    async def task_creator(self) -> Send:
        publish = self._client.publish

        async def create_task(queue: str, kwargs: dict[str, Any]) -> None:
            await publish(kwargs, queue=queue, persist=True)

        return create_task

    async def rpc_caller(self) -> Send:
        request = self._client.request

        async def call(queue: str, kwargs: dict[str, Any]) -> Any:
            reply = await request(kwargs, queue=queue, timeout=60.0)
            return await reply.decode()

        return call

    async def close(self) -> None:
        await self._client.stop()


async def open_driver() -> FastStreamDriver:
    client = RabbitBroker(run.url, logger=None)
    await client.connect()
    return FastStreamDriver(client)
