"""taskiq with taskiq-aio-pika's ``AioPikaBroker``, for the peers benchmark.

The worker runs as taskiq's own command (``taskiq worker
bench.peers.taskiq_peer:broker --workers 1``); the producer starts the same broker in
its process. Settings (taskiq's defaults in brackets):

- one worker process [2], up to 100 tasks at once in it [``--max-async-tasks 100``];
- ``qos=256`` [10]: the broker's prefetch, so the worker is not starved;
- the queue: a classic durable queue [quorum] named after the run, on an exchange of
  its own [``taskiq``] and with a dead-letter queue of its own [``taskiq.dead_letter``];
  messages persistent, each ``kiq`` awaits its publisher confirm (aio-pika's default
  channel); acked once the result is saved [``--ack-type when_saved``], with no
  result backend;
- RPC: none. taskiq returns results through a result backend (Redis and others);
  taskiq-aio-pika brings none.
"""

from __future__ import annotations

from typing import Any, Final

from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.exchange import Exchange
from taskiq_aio_pika.queue import Queue, QueueType

from bench._clients import Send
from bench.peers._run import PeerRun, Recorder

QOS: Final = 256

run = PeerRun.from_env()
broker: Final = AioPikaBroker(
    run.url,
    qos=QOS,
    exchange=Exchange(name=f"{run.queue}.exchange"),
    task_queues=[Queue(name=run.queue, type=QueueType.CLASSIC)],
    dead_letter_queue=Queue(name=f"{run.queue}.dead_letter", type=QueueType.CLASSIC),
)
_record = Recorder(run.ids_dir)


@broker.task(task_name="bench_record")
async def record(task_id: int) -> None:
    _record(task_id)


class TaskiqDriver:
    """Sends tasks with ``task.kiq(...)``, each awaiting its publisher confirm."""

    async def task_creator(self) -> Send:
        kiq = record.kiq

        async def create_task(queue: str, kwargs: dict[str, Any]) -> None:
            await kiq(**kwargs)

        return create_task

    async def rpc_caller(self) -> Send:
        raise NotImplementedError("taskiq-aio-pika has no result backend")

    async def close(self) -> None:
        await broker.shutdown()


async def open_driver() -> TaskiqDriver:
    await broker.startup()
    return TaskiqDriver()
