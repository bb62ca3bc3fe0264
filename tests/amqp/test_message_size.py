"""Bodies over the broker's max_message_size, and the memory a large body costs.

RabbitMQ refuses a body over ``max_message_size`` (128 MiB by default) by closing
the channel; the handshake does not tell the limit, so the connection has an
option of the same name, checked before anything is sent.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest

from leveret.amqp import Connection, connect, connect_robust
from leveret.exceptions import MessageTooLargeError
from tests.support.brokers import PrivateNode

MIB = 1024 * 1024
# The node index this module owns: see the list in tests/support/brokers.py.
_NODE_INDEX = 9
NODE_LIMIT = 1 * MIB


@pytest.fixture(scope="module")
def small_limit_node() -> Iterator[PrivateNode]:
    with PrivateNode(_NODE_INDEX, config=[f"max_message_size = {NODE_LIMIT}"]).running() as node:
        yield node


async def test_the_limit_is_rabbitmqs_default_unless_the_url_or_a_keyword_says(
    connection: Connection, amqp_url: str
) -> None:
    assert connection.max_message_size == 128 * MIB
    async with await connect(f"{amqp_url}?max_message_size=1000") as small:
        assert small.max_message_size == 1000
    async with await connect(amqp_url, max_message_size=2000) as small:
        assert small.max_message_size == 2000


async def test_a_body_over_the_limit_is_refused_before_sending_and_the_channel_goes_on(
    amqp_url: str, queue: str
) -> None:
    async with await connect(amqp_url, max_message_size=1000) as connection:
        channel = await connection.channel()
        with pytest.raises(MessageTooLargeError) as refused:
            await channel.publish(b"x" * 1001, routing_key=queue)
        assert (refused.value.size, refused.value.limit) == (1001, 1000)
        words = str(refused.value)
        assert "1001 bytes" in words and "1000 bytes" in words and "nothing was sent" in words
        assert "final" in words and "max_message_size" in words
        await channel.publish(b"x" * 1000, routing_key=queue)
        assert (await channel.queue_declare(queue, passive=True)).message_count == 1


async def test_the_brokers_refusal_of_a_body_over_its_limit_says_so_and_is_final(
    small_limit_node: PrivateNode,
) -> None:
    # The client thinks the limit is higher than the node's: the broker refuses.
    async with await connect_robust(
        small_limit_node.url, max_message_size=4 * NODE_LIMIT, reconnect_interval=0.05
    ) as connection:
        channel = await connection.channel()
        body = b"x" * (2 * NODE_LIMIT)
        with pytest.raises(MessageTooLargeError) as refused:
            await channel.publish(body, exchange="amq.direct", routing_key="nobody")
        assert (refused.value.size, refused.value.limit) == (len(body), NODE_LIMIT)
        words = str(refused.value)
        assert "the broker refused" in words and "final" in words, words
        assert f"{len(body)} bytes" in words and f"{NODE_LIMIT} bytes" in words, words
        # The robust channel reopened; a body under the limit goes through.
        await channel.publish(b"x" * NODE_LIMIT, exchange="amq.direct", routing_key="nobody")


async def test_a_large_body_is_sent_from_views_of_it_not_copies(connection: Connection) -> None:
    channel = await connection.channel()
    body = bytes(range(256)) * (32 * MIB // 256)
    tracemalloc.start()
    try:
        await channel.publish(body, exchange="amq.direct", routing_key="leveret-nobody")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Whole copies of the body would be 32 MiB each; frames made one at a time as the
    # socket drains cost a few of frame_max (128 KiB).
    assert peak < 4 * MIB, f"{peak / MIB:.1f} MiB allocated while publishing a 32 MiB body"
