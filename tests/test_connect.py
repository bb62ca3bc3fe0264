"""Connecting by URL: the scheme picks the broker, and every URL is shown without its password."""

from __future__ import annotations

import pytest

import leveret
from leveret import amqp, safe_url
from leveret.blocking import BlockingClient
from leveret.exceptions import ConfigurationError
from leveret.testing import MemoryConnection


async def test_a_memory_url_connects_to_the_in_memory_broker_robust_or_not() -> None:
    async with await leveret.connect("memory://connect-test") as plain:
        assert isinstance(plain, MemoryConnection)
        async with await leveret.connect_robust("memory://connect-test") as robust:
            assert isinstance(robust, MemoryConnection)
            channel = await robust.channel()
            await channel.queue_declare("shared")
            # The same named broker: what one connection declared, the other sees.
            ok = await (await plain.channel()).queue_declare("shared", passive=True)
            assert ok.queue == "shared"


async def test_an_amqp_url_connects_to_rabbitmq(amqp_url: str) -> None:
    async with await leveret.connect(amqp_url, name="leveret-tests") as connection:
        assert isinstance(connection, amqp.Connection)
        assert not isinstance(connection, amqp.RobustConnection)
    async with await leveret.connect_robust(amqp_url, name="leveret-tests") as robust:
        assert isinstance(robust, amqp.RobustConnection)


async def test_the_amqp_client_refuses_a_memory_url_and_says_where_it_belongs() -> None:
    for connect in (amqp.connect, amqp.connect_robust):
        with pytest.raises(ConfigurationError, match="scheme 'memory'") as refused:
            await connect("memory://")
        assert "leveret.connect()" in str(refused.value)


async def test_an_unknown_scheme_is_refused_naming_the_ones_there_are() -> None:
    with pytest.raises(ConfigurationError, match="scheme 'http'") as refused:
        await leveret.connect("http://localhost/")
    assert "amqp://" in str(refused.value) and "memory://" in str(refused.value)


async def test_several_memory_urls_are_refused_as_one_broker_is_named_by_one() -> None:
    with pytest.raises(ConfigurationError, match="one broker"):
        await leveret.connect(["memory://a", "memory://b"])


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://user:s3cret@host:5673/vh", "amqp://user:******@host:5673/vh"),
        ("amqps://user:s3cret@host/", "amqps://user:******@host:5671/"),
        ("memory://", "memory://"),
        ("memory://user:s3cret@name", "memory://user:******@name"),
        ("amqp://user:s3cret@host:notaport/", "amqp://user:******@host:notaport/"),
        ("nonsense", "nonsense"),
    ],
)
def test_every_url_is_shown_with_its_password_masked(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_a_cluster_of_urls_is_shown_as_one_with_every_address() -> None:
    shown = safe_url(["amqp://u:pw@node1/", "amqp://u:pw@node2/"])
    assert shown == "amqp://u:******@node1:5672,node2:5672/"


def test_a_blocking_client_on_the_in_memory_broker_has_a_repr() -> None:
    with BlockingClient("memory://blocking-repr") as client:
        assert repr(client) == "<BlockingClient memory://blocking-repr>"
    assert repr(client) == "<BlockingClient memory://blocking-repr closed>"
