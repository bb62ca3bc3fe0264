"""An in-memory RabbitMQ for unit tests: no broker, no sockets, the same behaviour.

::

    from leveret.patterns import Master
    from leveret.testing import connect_memory, drain

    async def test_resize_runs() -> None:
        async with await connect_memory("memory://") as connection:
            master = Master(await connection.channel())
            done = []
            await master.create_worker("resize", lambda *, path: done.append(path))
            await master.proxy.resize(path="a.png")
            await drain(master)
            assert done == ["a.png"]

Its channels implement the pattern seam (:class:`leveret.patterns.PatternChannel`)
with RabbitMQ 3.10's semantics: routing by queue name, direct, fanout, topic and
headers exchanges, exchange-to-exchange bindings, alternate and internal
exchanges, declare equivalence and argument checks with RabbitMQ's errors, acks,
nack/reject with requeue, prefetch, consumer priorities, single active
consumer, transactions, message and queue TTLs with dead-lettering and
``x-death``, ``x-expires``, quorum queues with delivery limits, mandatory
returns, publisher confirms, direct reply-to and ``basic.get``. What it does
not do it refuses (540, "not supported by the in-memory broker"), never
ignores. So Master/Worker, RPC, retries, dead-letter queues and the
dead-letter tools run unchanged. :meth:`MemoryBroker.advance` moves its clock
on, so hours of TTLs pass in a test at once.

With pytest, the plugin :mod:`leveret.testing.pytest_plugin` (registered as an
entry point) provides fixtures: ``leveret_broker``, ``leveret_url``,
``leveret_connection``, ``leveret_channel``, ``leveret_master``, ``leveret_rpc``.
"""

from ._broker import MemoryBroker
from ._channel import MemoryChannel
from ._connection import MemoryConnection, connect_memory, forget_brokers, get_broker
from ._drain import drain
from ._message import QueuedMessage
from ._queue import MemoryQueue

__all__ = [
    "MemoryBroker",
    "MemoryChannel",
    "MemoryConnection",
    "MemoryQueue",
    "QueuedMessage",
    "connect_memory",
    "drain",
    "forget_brokers",
    "get_broker",
]
