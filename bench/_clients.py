"""Each library behind one small interface, so every benchmark drives them alike.

- :class:`AmqpClient`: a raw AMQP client (leveret.amqp, aiormq): one connection, a
  confirming publisher channel and a consumer channel.
- :class:`TaskDriver`: what sends tasks and makes RPC calls (every library, the
  peers in ``bench/peers`` included); :class:`PatternsClient` adds the worker and
  callee sides of the aio-pika patterns API (leveret.patterns, aio-pika).
- :class:`Admin`: the main process's own connection, which waits for a worker's
  consumer and deletes what a run declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from bench._measure import clock, run_lanes

if TYPE_CHECKING:  # imported where used, so one library is enough to run its part
    import aio_pika.abc
    import aio_pika.patterns
    import aiormq.abc

    import leveret
    from leveret import amqp, patterns

DEFAULT_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"
BODY: Final = b'{"task_id": 1}'

TaskFunc = Callable[..., Awaitable[Any]]
#: ``create_task(name, kwargs)`` or ``call(name, kwargs)`` of any library.
Send = Callable[[str, dict[str, Any]], Awaitable[Any]]


# -- raw AMQP clients ---------------------------------------------------------------------


class AmqpClient(Protocol):
    """What a scenario needs from a library: one connection, a confirming
    publisher channel and a consumer channel with the given prefetch."""

    broker_version: str

    async def declare_fresh(self, queue: str) -> None:
        """Declare a plain (non-durable) queue and purge it."""

    async def delete(self, queue: str) -> int:
        """Delete the queue; return how many messages were still in it."""

    async def publish(self, queue: str, n: int, lanes: int) -> None:
        """Publish ``n`` messages, ``lanes`` coroutines each awaiting its own confirm."""

    async def consume(self, queue: str, n: int, timeout: float) -> tuple[float, float]:
        """Consume and ack ``n`` messages; return (first delivery, last ack) times."""

    async def close(self) -> None: ...


class LeveretAmqp:
    def __init__(
        self, connection: amqp.Connection, publisher: amqp.Channel, consumer: amqp.Channel
    ) -> None:
        self._connection = connection
        self._publisher = publisher
        self._consumer = consumer
        version = connection.server_properties.get("version", "?")
        self.broker_version = version.decode() if isinstance(version, bytes) else str(version)

    @classmethod
    async def open(cls, url: str, prefetch: int) -> LeveretAmqp:
        from leveret import amqp

        connection = await amqp.connect(url, name="amqp_bench leveret")
        publisher = await connection.channel(publisher_confirms=True)
        consumer = await connection.channel(publisher_confirms=False)
        await consumer.qos(prefetch)
        return cls(connection, publisher, consumer)

    async def declare_fresh(self, queue: str) -> None:
        await self._publisher.queue_declare(queue)
        await self._publisher.queue_purge(queue)

    async def delete(self, queue: str) -> int:
        count: int = await self._publisher.queue_delete(queue)
        return count

    async def publish(self, queue: str, n: int, lanes: int) -> None:
        publish = self._publisher.publish

        def publish_one(_: int) -> Awaitable[None]:
            result: Awaitable[None] = publish(BODY, routing_key=queue)
            return result

        await run_lanes(n, lanes, publish_one)

    async def consume(self, queue: str, n: int, timeout: float) -> tuple[float, float]:
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        count = 0
        first = 0.0

        def on_delivery(delivery: amqp.Delivery) -> None:
            nonlocal count, first
            if count == 0:
                first = clock()
            delivery.ack()
            count += 1
            if count == n and not done.done():
                done.set_result(clock())

        tag = await self._consumer.consume(queue, on_delivery)
        try:
            async with asyncio.timeout(timeout):
                last = await done
        finally:
            await self._consumer.cancel(tag)
        return first, last

    async def close(self) -> None:
        await self._connection.close()


class AiormqAmqp:
    def __init__(
        self,
        connection: aiormq.abc.AbstractConnection,
        publisher: aiormq.abc.AbstractChannel,
        consumer: aiormq.abc.AbstractChannel,
    ) -> None:
        self._connection = connection
        self._publisher = publisher
        self._consumer = consumer
        version = connection.server_properties.get("version", "?")
        self.broker_version = version.decode() if isinstance(version, bytes) else str(version)

    @classmethod
    async def open(cls, url: str, prefetch: int) -> AiormqAmqp:
        import aiormq

        connection = await aiormq.connect(url)
        publisher = await connection.channel(publisher_confirms=True)
        consumer = await connection.channel(publisher_confirms=False)
        await consumer.basic_qos(prefetch_count=prefetch)
        return cls(connection, publisher, consumer)

    async def declare_fresh(self, queue: str) -> None:
        await self._publisher.queue_declare(queue)
        await self._publisher.queue_purge(queue)

    async def delete(self, queue: str) -> int:
        reply = await self._publisher.queue_delete(queue)
        return reply.message_count or 0

    async def publish(self, queue: str, n: int, lanes: int) -> None:
        from pamqp.commands import Basic

        basic_publish = self._publisher.basic_publish

        async def publish_one(_: int) -> None:
            confirmation = await basic_publish(BODY, routing_key=queue)
            if not isinstance(confirmation, Basic.Ack):
                raise RuntimeError(f"aiormq publish not acked: {confirmation!r}")

        await run_lanes(n, lanes, publish_one)

    async def consume(self, queue: str, n: int, timeout: float) -> tuple[float, float]:
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        count = 0
        first = 0.0
        channel = self._consumer

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal count, first
            if count == 0:
                first = clock()
            delivery_tag = message.delivery_tag
            assert delivery_tag is not None  # a basic.deliver always carries one
            await channel.basic_ack(delivery_tag)
            count += 1
            if count == n and not done.done():
                done.set_result(clock())

        consume_ok = await channel.basic_consume(queue, on_message)
        tag = consume_ok.consumer_tag
        assert tag is not None
        try:
            async with asyncio.timeout(timeout):
                last = await done
        finally:
            await channel.basic_cancel(tag)
        return first, last

    async def close(self) -> None:
        await self._connection.close()


async def open_amqp_client(library: str, url: str, prefetch: int) -> AmqpClient:
    if library == "leveret":
        return await LeveretAmqp.open(url, prefetch)
    if library == "aiormq":
        return await AiormqAmqp.open(url, prefetch)
    raise ValueError(f"unknown library {library!r}")


# -- the patterns clients ---------------------------------------------------------------


class TaskDriver(Protocol):
    """What a producer or caller process needs: send a task, make a call."""

    async def task_creator(self) -> Send: ...

    async def rpc_caller(self) -> Send: ...

    async def close(self) -> None: ...


class PatternsClient(TaskDriver, Protocol):
    """One robust connection with one channel, and the Master/Worker and RPC calls
    of the aio-pika patterns API."""

    async def start_worker(
        self, queue: str, func: TaskFunc, durable: bool, prefetch: int | None
    ) -> None: ...

    async def start_callee(self, queue: str, func: TaskFunc, prefetch: int | None) -> None: ...


class LeveretPatterns:
    def __init__(
        self,
        connection: leveret.RobustConnection,
        channel: leveret.Channel,
        options: dict[str, Any],
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._master: patterns.Master | None = None
        self._rpc: patterns.RPC | None = None
        self._options = options  # for Master and RPC: the JSON serializer, if chosen

    @classmethod
    async def open(
        cls, url: str, name: str, confirms: bool, speed: bool | None = None
    ) -> LeveretPatterns:
        """``speed``: JSON on orjson (True) or on stock json (False); None: the default."""
        import leveret

        options: dict[str, Any] = {}
        if speed is not None:
            from leveret.serializers import JSONSerializer

            options["serializer"] = JSONSerializer(fast=speed)
        connection = await leveret.connect_robust(url, name=name)
        channel = await connection.channel(publisher_confirms=confirms)
        return cls(connection, channel, options)

    async def start_worker(
        self, queue: str, func: TaskFunc, durable: bool, prefetch: int | None
    ) -> None:
        from leveret.patterns import Master

        self._master = Master(self._channel, **self._options)
        await self._master.create_worker(queue, func, durable=durable, prefetch_count=prefetch)

    async def task_creator(self) -> Send:
        from leveret.patterns import Master

        self._master = Master(self._channel, **self._options)
        return self._master.create_task

    async def start_callee(self, queue: str, func: TaskFunc, prefetch: int | None) -> None:
        from leveret.patterns import RPC

        self._rpc = await RPC.create(self._channel, **self._options)
        await self._rpc.register(queue, func, prefetch_count=prefetch)

    async def rpc_caller(self) -> Send:
        from leveret.patterns import RPC

        self._rpc = await RPC.create(self._channel, **self._options)
        return self._rpc.call

    async def close(self) -> None:
        try:
            if self._master is not None:
                await self._master.close()
            if self._rpc is not None:
                await self._rpc.close()
        finally:
            await self._connection.close()


class AioPikaPatterns:
    def __init__(
        self,
        connection: aio_pika.abc.AbstractRobustConnection,
        channel: aio_pika.abc.AbstractChannel,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._worker: aio_pika.patterns.master.Worker | None = None
        self._rpc: aio_pika.patterns.RPC | None = None

    @classmethod
    async def open(cls, url: str, name: str, confirms: bool) -> AioPikaPatterns:
        import aio_pika

        connection = await aio_pika.connect_robust(url, client_properties={"connection_name": name})
        channel = await connection.channel(publisher_confirms=confirms)
        return cls(connection, channel)

    async def start_worker(
        self, queue: str, func: TaskFunc, durable: bool, prefetch: int | None
    ) -> None:
        from aio_pika.patterns import JsonMaster

        if prefetch is not None:  # by default aio-pika sends no basic.qos: no limit
            await self._channel.set_qos(prefetch_count=prefetch)
        master = JsonMaster(self._channel)
        self._worker = await master.create_worker(queue, func, durable=durable)

    async def task_creator(self) -> Send:
        from aio_pika.patterns import JsonMaster

        return JsonMaster(self._channel).create_task

    async def start_callee(self, queue: str, func: TaskFunc, prefetch: int | None) -> None:
        from aio_pika.patterns import JsonRPC

        if prefetch is not None:
            await self._channel.set_qos(prefetch_count=prefetch)
        self._rpc = await JsonRPC.create(self._channel)
        await self._rpc.register(queue, func)

    async def rpc_caller(self) -> Send:
        from aio_pika.patterns import JsonRPC

        self._rpc = await JsonRPC.create(self._channel)
        return self._rpc.call

    async def close(self) -> None:
        try:
            if self._worker is not None:
                await self._worker.close()
            if self._rpc is not None:
                await self._rpc.close()
        finally:
            await self._connection.close()


async def open_patterns_client(
    library: str, url: str, name: str, confirms: bool = True, speed: bool | None = None
) -> PatternsClient:
    """``speed``: leveret's JSON on orjson or not (see :meth:`LeveretPatterns.open`)."""
    if library == "leveret":
        return await LeveretPatterns.open(url, name, confirms, speed)
    if library == "aio-pika":
        return await AioPikaPatterns.open(url, name, confirms)
    raise ValueError(f"unknown library {library!r}")


async def open_driver(
    library: str, url: str, name: str, confirms: bool = True, speed: bool | None = None
) -> TaskDriver:
    """The producer/caller side of ``library``: the patterns client, or a peer's driver
    (which reads its run from the environment: see ``bench/peers/_run.py``)."""
    if library in ("leveret", "aio-pika"):
        return await open_patterns_client(library, url, name, confirms, speed)
    from bench.peers import PEERS

    modules = {peer.driver for peer in PEERS if peer.library == library and peer.driver}
    if not modules:
        raise ValueError(f"unknown library {library!r}")
    module = importlib.import_module(modules.pop())
    driver: TaskDriver = await module.open_driver()  # its run is in the environment
    return driver


# -- the main process's own connection ------------------------------------------------------


class Admin:
    """The main process's connection: the broker's version, waiting for a worker's
    consumer, deleting what a run declared. Never configures the broker."""

    def __init__(self, connection: amqp.Connection) -> None:
        self._connection = connection
        version = connection.server_properties.get("version", "?")
        self.broker_version = version.decode() if isinstance(version, bytes) else str(version)

    @classmethod
    async def open(cls, url: str, name: str) -> Admin:
        from leveret import amqp

        return cls(await amqp.connect(url, name=name))

    async def consumers(self, queue: str) -> int | None:
        """How many consumers ``queue`` has (``None``: it does not exist yet)."""
        from leveret.exceptions import NotFoundError

        channel = await self._connection.channel()
        try:
            declared = await channel.queue_declare(queue, passive=True)
        except NotFoundError:
            return None  # the broker closed that channel
        await channel.close()
        return declared.consumer_count

    async def wait_for_consumer(
        self, queue: str, timeout: float, alive: Callable[[], bool] = lambda: True
    ) -> None:
        """Return once ``queue`` has a consumer; raise ``TimeoutError`` after ``timeout``
        seconds, or ``RuntimeError`` as soon as ``alive()`` says the worker died."""
        deadline = clock() + timeout
        # Each probe of a queue not declared yet costs a channel, which the client
        # logs as a warning: expected here, so not shown.
        amqp_log = logging.getLogger("leveret.amqp")
        level = amqp_log.level
        amqp_log.setLevel(logging.ERROR)
        try:
            while not await self.consumers(queue):
                if not alive():
                    raise RuntimeError(f"the worker exited before it consumed from {queue}")
                if clock() > deadline:
                    raise TimeoutError(f"no consumer on {queue} after {timeout:.0f} s")
                await asyncio.sleep(0.05)
        finally:
            amqp_log.setLevel(level)

    async def delete(self, queues: Sequence[str], exchanges: Sequence[str] = ()) -> dict[str, int]:
        """Delete the queues (returning what was left in each: should be 0) and exchanges."""
        left: dict[str, int] = {}
        channel = await self._connection.channel()
        try:
            for name in queues:
                left[name] = await channel.queue_delete(name)
            for name in exchanges:
                await channel.exchange_delete(name)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return left

    async def close(self) -> None:
        await self._connection.close()


async def broker_version(url: str) -> str:
    """The version the broker behind ``url`` announces."""
    admin = await Admin.open(url, "bench probe")
    await admin.close()
    return admin.broker_version
