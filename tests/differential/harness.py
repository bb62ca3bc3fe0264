"""Scenarios written once, run on RabbitMQ and on the in-memory broker, records compared.

A scenario is an ``async def scenario(broker: Side) -> None`` that does things
through :class:`Side` and writes down what a user would observe with
:meth:`Side.note` (bodies, flags, counts, reply codes, what closed). :func:`compare`
runs it on both brokers and returns the two records, which a test asserts
equal (and, where it matters, equal to what RabbitMQ is known to do).

Names a scenario uses go through :meth:`Side.name` (unique per run, deleted
from RabbitMQ afterwards); records show them without their unique prefix, so
the two runs' records compare equal.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from leveret.amqp import Channel, Delivery, connect
from leveret.exceptions import BrokerError, ConfigurationError, PublishError
from leveret.testing import MemoryBroker
from tests.support.waiting import wait_until

Scenario = Callable[["Side"], Awaitable[None]]


class Side:
    """One broker a scenario runs on: connections, unique names, the record."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self._url = url
        self.memory = MemoryBroker() if kind == "memory" else None
        self.prefix = f"diff-{uuid.uuid4().hex[:10]}-"
        self.record: list[Any] = []
        self._connections: list[Any] = []
        self._queues: list[str] = []
        self._exchanges: list[str] = []

    def name(self, short: str, *, exchange: bool = False) -> str:
        """The unique name of ``short`` in this run (deleted afterwards)."""
        full = self.prefix + short
        (self._exchanges if exchange else self._queues).append(full)
        return full

    def track(self, queue: str) -> str:
        """Delete ``queue`` (a full name something else made) afterwards too."""
        self._queues.append(queue)
        return queue

    def exchange(self, short: str) -> str:
        return self.name(short, exchange=True)

    async def connection(self) -> Any:
        connection: Any
        if self.memory is not None:
            connection = await self.memory.connect()
        else:
            connection = await connect(self._url, name="leveret-differential")
        self._connections.append(connection)
        return connection

    async def channel(self, *, publisher_confirms: bool = True) -> Any:
        """A channel on a new connection of its own."""
        return await (await self.connection()).channel(publisher_confirms=publisher_confirms)

    def note(self, *items: Any) -> None:
        """Write an observation down (names lose their unique prefix)."""
        self.record.append(self._shown(items[0] if len(items) == 1 else items))

    def _shown(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.replace(self.prefix, "")
        if isinstance(value, bytes):
            return value.replace(self.prefix.encode(), b"")
        if isinstance(value, tuple | list):
            return type(value)(self._shown(item) for item in value)
        if isinstance(value, dict):
            return {self._shown(k): self._shown(v) for k, v in value.items()}
        return value

    async def attempt(self, what: str, operation: Awaitable[Any]) -> Any:
        """Run ``operation`` and note how it ended: its result, or the error's reply
        code, text and scope (or its class, for a client-side error)."""
        try:
            result = await operation
        except BrokerError as error:
            self.note(what, error.reply_code, error.reply_text, error.scope)
            return None
        except ConfigurationError as error:  # refused by the client, nothing sent
            self.note(what, type(error).__name__)
            return None
        except PublishError as error:
            cause = error.__cause__ or error.__context__
            if isinstance(cause, BrokerError):
                self.note(what, type(error).__name__, cause.reply_code, cause.reply_text)
            else:
                self.note(what, type(error).__name__)
            return None
        self.note(what, "ok")
        return result

    async def get_all(self, channel: Any, queue: str) -> list[Delivery]:
        """Fetch (and ack) every message in a queue."""
        found = []
        while (delivery := await channel.get(queue, no_ack=True)) is not None:
            found.append(delivery)
        return found

    async def ready(self, channel: Any, queue: str, count: int) -> int:
        """Wait until ``queue`` holds ``count`` ready messages; returns the count."""

        async def counted() -> int | None:
            ok = await channel.queue_declare(queue, passive=True)
            return ok.message_count if ok.message_count == count else None

        if count == 0:
            await asyncio.sleep(0)
            current: int = (await channel.queue_declare(queue, passive=True)).message_count
            return current
        return await wait_until(counted, 10, f"{count} messages in {queue}")

    async def settle_down(self) -> None:
        """Let what was sent arrive: a round trip on a fresh channel of every connection."""
        for connection in self._connections:
            if connection.is_open:
                channel = await connection.channel()
                await channel.queue_declare("", exclusive=True)
                await channel.close()

    async def close(self) -> None:
        for connection in self._connections:
            await connection.close()
        if self.memory is not None:
            await self.memory.close()
            return
        async with await connect(self._url) as connection:
            channel = await connection.channel()
            for queue in self._queues:
                await channel.queue_delete(queue)
            for exchange in self._exchanges:
                await channel.exchange_delete(exchange)


async def run(kind: str, url: str, scenario: Scenario) -> list[Any]:
    side = Side(kind, url)
    try:
        await scenario(side)
    finally:
        await side.close()
    return side.record


async def compare(url: str, scenario: Scenario, *, needs: str | None = None) -> list[Any]:
    """Run ``scenario`` on RabbitMQ and on memory; assert the records are equal and
    return RabbitMQ's.

    ``needs`` names a method of the channel the scenario uses: while leveret's AMQP
    channel lacks it, only the in-memory run happens (and its record is returned,
    for the test to hold against what RabbitMQ was seen to do).
    """
    if needs is not None and not hasattr(Channel, needs):
        return await run("memory", url, scenario)
    real = await run("rabbitmq", url, scenario)
    memory = await run("memory", url, scenario)
    assert memory == real, _difference(real, memory)
    return real


def _difference(real: list[Any], memory: list[Any]) -> str:
    lines = ["the in-memory broker's record differs from RabbitMQ's:"]
    for index in range(max(len(real), len(memory))):
        a = real[index] if index < len(real) else "<nothing>"
        b = memory[index] if index < len(memory) else "<nothing>"
        mark = "  " if a == b else "!="
        lines.append(f"{mark} rabbitmq: {a!r}\n   memory:   {b!r}")
    return "\n".join(lines)
