"""Dramatiq on RabbitMQ (pika, ``RabbitmqBroker``), for the peers benchmark.

The worker runs as Dramatiq's own command (``dramatiq bench.peers.dramatiq_peer:broker
--processes 1 --threads 8``, see ``bench/peers/__init__.py``); the producer opens
the same broker in its process. Settings (Dramatiq's defaults in brackets):

- one worker process [one per CPU] with 8 threads [8];
- prefetch 256 per worker process through ``dramatiq_queue_prefetch`` [2 x threads
  = 16]: the documented knob, so the worker is not starved between round trips;
- the queue: the actor's ``queue_name`` = the run's queue (durable, with Dramatiq's
  ``.DQ`` delay and ``.XQ`` dead-letter queues beside it), messages persistent;
  ``confirm_delivery=False`` (Dramatiq's default), each ``send`` one synchronous
  publish; acked after the actor ran (Dramatiq's way); default middleware.
- RPC: none. Dramatiq returns results only through its Results middleware, whose
  backends are Redis, Memcached or in-process (no RabbitMQ backend).
"""

from __future__ import annotations

from typing import Any, Final

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench._clients import Send
from bench.peers._run import PeerRun, Recorder

PREFETCH: Final = 256

run = PeerRun.from_env()
broker: Final = RabbitmqBroker(url=run.url)
dramatiq.set_broker(broker)
_record = Recorder(run.ids_dir)


@dramatiq.actor(queue_name=run.queue, actor_name="bench_record")
def record(task_id: int) -> None:
    _record(task_id)


class DramatiqDriver:
    """Sends tasks with ``actor.send``: synchronous, one at a time."""

    async def task_creator(self) -> Send:
        send = record.send

        async def create_task(queue: str, kwargs: dict[str, Any]) -> None:
            send(**kwargs)

        return create_task

    async def rpc_caller(self) -> Send:
        raise NotImplementedError("Dramatiq has no RPC over RabbitMQ")

    async def close(self) -> None:
        broker.close()


async def open_driver() -> DramatiqDriver:
    return DramatiqDriver()
