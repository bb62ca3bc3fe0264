"""Waiting until workers have done all their tasks, for a test to assert on the outcome."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable

from ..exceptions import ConfigurationError
from ..patterns import RPC, Master, Worker
from ._broker import MemoryBroker
from ._channel import MemoryChannel
from ._connection import MemoryConnection
from ._queue import MemoryQueue

Drainable = Master | Worker | RPC | MemoryQueue | MemoryChannel | MemoryConnection | str


async def drain(
    *targets: Drainable,
    broker: MemoryBroker | None = None,
    timeout: float = 10.0,
    retries: bool = True,
) -> None:
    """Run the event loop until the targets' task queues are empty and no task is in flight.

    A target is a :class:`~leveret.patterns.Master` (the queues of all its
    workers), a :class:`~leveret.patterns.Worker`, an :class:`~leveret.patterns.RPC`
    (the queues of the methods it serves), a :class:`MemoryQueue`, or a queue name.
    A name is looked up on the broker of the other targets; a
    :class:`MemoryChannel` or :class:`MemoryConnection` target (or ``broker=``)
    names that broker, so these are the same::

        await drain(leveret_master)                      # all its workers' queues
        await drain(leveret_channel, "images.resize")    # a queue, by name
        await drain("images.resize", broker=leveret_broker)

    A queue is drained when it has no ready and no unacked message; a worker when
    it holds no task. With ``retries`` (the default) a task waiting in its delay
    queues (``<task>.delay.<level>``: a retry or a delayed task) is still pending:
    it comes back once its delay (on the event loop's clock) runs out, so give
    retry policies short delays in tests. Dead-letter queues are where tasks end;
    they are not waited for. It waits for the broker to change state, never polls.

    Raises:
        TimeoutError: still not drained after ``timeout`` seconds; the message
            says what is left (ready, unacked, consumers per queue).
        ConfigurationError: a target is not on the in-memory broker, the targets
            are on different brokers, or a queue name was given with nothing that
            names its broker.
    """
    names: list[str] = []
    workers: list[Worker] = []
    for target in targets:
        if isinstance(target, str):
            names.append(target)
            continue
        found, target_broker, target_workers = _resolve(target)
        if broker is None:
            broker = target_broker
        elif target_broker is not broker:
            raise ConfigurationError("drain(): the targets are on different brokers")
        names.extend(found)
        workers.extend(target_workers)
    if broker is None:
        if names:
            raise ConfigurationError(
                f"drain({names[0]!r}): a queue name needs its broker: pass a channel or "
                f"connection of it (drain(leveret_channel, {names[0]!r})) or "
                "broker=leveret_broker"
            )
        return  # nothing to wait for

    def pending() -> list[str]:
        assert broker is not None
        left = []
        for name in _with_delay_queues(broker, names) if retries else names:
            queue = broker.queues.get(name)
            if queue is not None and (queue.message_count or queue.unacked_count):
                left.append(
                    f"queue {name!r}: {queue.message_count} ready, {queue.unacked_count} "
                    f"unacked, {queue.consumer_count} consumers"
                )
        left.extend(
            f"worker {worker.queue!r}: {worker.in_flight} tasks in flight"
            for worker in workers
            if worker.in_flight
        )
        return left

    try:
        async with asyncio.timeout(timeout):
            while pending():
                await broker._wait_for_change()
    except TimeoutError:
        raise TimeoutError(f"not drained after {timeout} s: {'; '.join(pending())}") from None


def _resolve(target: Drainable) -> tuple[list[str], MemoryBroker, list[Worker]]:
    """The queues a target stands for, its broker, and the workers it holds."""
    if isinstance(target, Master):
        return (
            [worker.queue for worker in target.workers],
            _broker_of(target.channel),
            list(target.workers),
        )
    if isinstance(target, Worker):
        return [target.queue], _broker_of(target.channel), [target]
    if isinstance(target, RPC):
        channel = _channel_of(target.channel)
        served = [
            subscription.queue.name
            for subscription in channel._consumers.values()
            if subscription.queue is not channel._reply_queue
        ]
        return served, channel._broker, []
    if isinstance(target, MemoryQueue):
        return [target.name], target._broker, []
    if isinstance(target, MemoryConnection):
        return [], target.broker, []
    return [], _broker_of(target), []


def _channel_of(channel: object) -> MemoryChannel:
    if not isinstance(channel, MemoryChannel):
        raise ConfigurationError(
            f"drain() works on the in-memory broker; {channel!r} is not a leveret.testing channel"
        )
    return channel


def _broker_of(channel: object) -> MemoryBroker:
    return _channel_of(channel)._broker


def _with_delay_queues(broker: MemoryBroker, names: Iterable[str]) -> list[str]:
    """The queues plus their delay queues (``<task>.delay.<level>``) that exist now."""
    wanted = list(names)
    patterns = [re.compile(re.escape(name) + r"\.delay\.\d+") for name in wanted]
    wanted.extend(
        queue for queue in broker.queues if any(pattern.fullmatch(queue) for pattern in patterns)
    )
    return wanted
