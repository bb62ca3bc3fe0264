"""RPC over direct reply-to, on RabbitMQ and on the in-memory broker."""

import asyncio
import logging
import threading
from typing import Any

import pytest

from leveret.amqp import Channel, Connection
from leveret.exceptions import (
    CallInterruptedError,
    ConfigurationError,
    RemoteError,
    UnroutableError,
)
from leveret.patterns import RPC
from tests.patterns.conftest import Cleanup, ConnectBroker
from tests.support.waiting import wait_until


class InsufficientFunds(Exception):
    pass


async def multiply(*, x: int, y: int) -> int:
    return x * y


@pytest.fixture
async def callee(connect_broker: ConnectBroker) -> Any:
    """An RPC on a connection of its own, closed after the test."""
    conn = await connect_broker()
    rpc = await RPC.create(await conn.channel())
    yield rpc
    await rpc.close(timeout=1)
    await conn.close()


async def test_proxy_and_call_return_the_remote_result(
    channel: Channel, callee: RPC, unique: str, cleanup: Cleanup
) -> None:
    await callee.register(cleanup.queue(unique), multiply)
    caller = await RPC.create(channel)
    assert await getattr(caller.proxy, unique)(x=6, y=7) == 42
    assert await caller.call(unique, kwargs={"x": 2, "y": 3}) == 6


async def test_many_calls_in_flight_are_matched_by_correlation_id(
    channel: Channel, callee: RPC, unique: str, cleanup: Cleanup
) -> None:
    async def slow_echo(*, value: int) -> int:
        await asyncio.sleep(0.001 * (value % 5))
        return value

    await callee.register(cleanup.queue(unique), slow_echo)
    caller = await RPC.create(channel)
    results = await asyncio.gather(*(caller.call(unique, {"value": v}) for v in range(300)))
    assert results == list(range(300))


async def test_call_without_a_reply_in_time_raises_timeout_error(
    channel: Channel, callee: RPC, unique: str, cleanup: Cleanup
) -> None:
    async def never(**kwargs: Any) -> None:
        await asyncio.Event().wait()

    await callee.register(cleanup.queue(unique), never)
    caller = await RPC.create(channel, timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError, match=f"no reply to '{unique}' within 0.3 s"):
        await caller.call(unique)
    assert 0.25 < loop.time() - started < 2
    with pytest.raises(TimeoutError):
        await caller.call(unique, timeout=0.1)


async def test_call_to_a_method_nobody_registered_fails_at_once(
    channel: Channel, unique: str
) -> None:
    caller = await RPC.create(channel, timeout=30)
    with pytest.raises(UnroutableError, match=f"nobody serves '{unique}'"):
        await asyncio.wait_for(caller.call(unique), 5)


async def test_a_call_nobody_takes_in_time_is_dropped_by_the_broker(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    await channel.queue_declare(cleanup.queue(unique))  # a queue with no callee
    caller = await RPC.create(channel)
    with pytest.raises(TimeoutError):
        await caller.call(unique, timeout=0.2)

    async def queue_is_empty() -> bool:
        return (await channel.queue_declare(unique, passive=True)).message_count == 0

    await wait_until(queue_is_empty, 5, "the broker to drop the expired call")


async def test_callee_skips_a_call_whose_deadline_has_passed(
    channel: Channel,
    callee: RPC,
    unique: str,
    cleanup: Cleanup,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="leveret.patterns")
    release = asyncio.Event()
    ran: list[int] = []

    async def one_at_a_time(*, n: int) -> int:
        ran.append(n)
        if n == 1:
            await release.wait()
        return n

    await callee.register(cleanup.queue(unique), one_at_a_time, prefetch_count=1)
    caller = await RPC.create(channel)
    first = asyncio.create_task(caller.call(unique, {"n": 1}))
    await wait_until(lambda: ran == [1], 5, "the first call to start")
    with pytest.raises(TimeoutError):
        await caller.call(unique, {"n": 2}, timeout=0.1, expiration=30)
    release.set()
    assert await first == 1
    await wait_until(lambda: "skipped" in caplog.text, 5, "the late call to be skipped")
    assert ran == [1]


async def test_builtin_exceptions_come_back_as_their_own_type_with_remote_details(
    channel: Channel, callee: RPC, unique: str, cleanup: Cleanup
) -> None:
    async def check_positive(*, value: int) -> int:
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value

    await callee.register(cleanup.queue(unique), check_positive)
    caller = await RPC.create(channel)
    with pytest.raises(ValueError, match="-5 is negative") as info:
        await caller.call(unique, {"value": -5})
    error = info.value
    assert isinstance(error, RemoteError)
    assert error.remote_type == "ValueError"
    assert error.remote_message == "-5 is negative"
    assert "check_positive" in error.remote_traceback
    assert any("check_positive" in note for note in error.__notes__)


async def test_registered_exception_classes_come_back_as_that_class(
    channel: Channel, callee: RPC, unique: str, cleanup: Cleanup
) -> None:
    async def pay(*, amount: int) -> None:
        raise InsufficientFunds("balance is 3", amount)

    await callee.register(cleanup.queue(unique), pay)
    caller = await RPC.create(channel, exceptions=[InsufficientFunds])
    with pytest.raises(InsufficientFunds) as info:
        await caller.call(unique, {"amount": 10})
    assert info.value.args == ("balance is 3", 10)
    assert isinstance(info.value, RemoteError)


async def test_unknown_exception_types_become_a_plain_remote_error(
    connection: Connection, callee: RPC, unique: str, cleanup: Cleanup
) -> None:
    async def pay(*, amount: int) -> None:
        raise InsufficientFunds("nope")

    await callee.register(cleanup.queue(unique), pay)
    caller = await RPC.create(await connection.channel())
    with pytest.raises(RemoteError, match="InsufficientFunds: nope") as info:
        await caller.call(unique, {"amount": 1})
    assert type(info.value) is RemoteError
    assert info.value.remote_type == "InsufficientFunds"


async def test_arguments_that_do_not_fit_come_back_as_type_error(
    channel: Channel, callee: RPC, unique: str, cleanup: Cleanup
) -> None:
    await callee.register(cleanup.queue(unique), multiply)
    caller = await RPC.create(channel)
    with pytest.raises(TypeError, match="missing argument y"):
        await caller.call(unique, {"x": 1})
    with pytest.raises(TypeError, match="unexpected argument z"):
        await caller.call(unique, {"x": 1, "y": 2, "z": 3})


async def test_close_fails_pending_calls_and_leaves_the_channel_usable(
    channel: Channel, callee: RPC, unique: str, cleanup: Cleanup
) -> None:
    started = asyncio.Event()

    async def hang(**kwargs: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    await callee.register(cleanup.queue(unique), hang)
    caller = await RPC.create(channel)
    pending = asyncio.create_task(caller.call(unique))
    await asyncio.wait_for(started.wait(), 5)
    await caller.close()
    with pytest.raises(CallInterruptedError, match="RPC was closed"):
        await pending
    await channel.queue_declare("", exclusive=True)
    again = await RPC.create(channel)
    await again.close()


async def test_a_closed_channel_interrupts_pending_calls_at_once(
    connection: Connection, callee: RPC, unique: str, cleanup: Cleanup
) -> None:
    running: list[None] = []

    async def hang(**kwargs: Any) -> None:
        running.append(None)
        await asyncio.Event().wait()

    await callee.register(cleanup.queue(unique), hang)
    channel = await connection.channel()
    caller = await RPC.create(channel)
    pending = [asyncio.create_task(caller.call(unique, timeout=30)) for _ in range(3)]
    await wait_until(lambda: len(running) == 3, 5, "the three calls to reach the callee")
    await channel.close()
    for call in pending:
        with pytest.raises(CallInterruptedError, match="channel closed"):
            await asyncio.wait_for(call, 2)


async def test_unregister_works_by_name_and_by_function_sync_or_async(
    channel: Channel, callee: RPC, unique: str, cleanup: Cleanup
) -> None:
    def add(*, a: int, b: int) -> int:
        return a + b

    await callee.register(cleanup.queue(unique + ".add"), add)
    await callee.register(cleanup.queue(unique + ".mul"), multiply)
    caller = await RPC.create(channel)
    assert await caller.call(unique + ".add", {"a": 1, "b": 2}) == 3
    await callee.unregister(add)
    await callee.unregister(unique + ".mul")
    with pytest.raises(ConfigurationError, match="not registered"):
        await callee.unregister(add)

    async def unconsumed(name: str) -> bool:
        return (await channel.queue_declare(name, passive=True)).consumer_count == 0

    await wait_until(lambda: unconsumed(unique + ".add"), 5, "the add consumer to go")
    await wait_until(lambda: unconsumed(unique + ".mul"), 5, "the mul consumer to go")


async def test_plain_callee_functions_run_in_a_thread(
    channel: Channel, callee: RPC, unique: str, cleanup: Cleanup
) -> None:
    await callee.register(cleanup.queue(unique), lambda: threading.get_ident())
    caller = await RPC.create(channel)
    assert await caller.call(unique) != threading.get_ident()


async def test_callee_concurrency_is_bounded_by_its_prefetch(
    channel: Channel, callee: RPC, unique: str, cleanup: Cleanup
) -> None:
    running = peak = 0

    async def work(*, n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return n

    await callee.register(cleanup.queue(unique), work, prefetch_count=3)
    caller = await RPC.create(channel)
    assert await asyncio.gather(*(caller.call(unique, {"n": n}) for n in range(30))) == list(
        range(30)
    )
    assert peak == 3


async def test_one_function_per_name_on_an_rpc(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    rpc = await RPC.create(channel)
    await rpc.register(cleanup.queue(unique), multiply)
    with pytest.raises(ConfigurationError, match="already registered"):
        await rpc.register(unique, multiply)
    await rpc.close()


async def test_msgpack_serializer_round_trips_bytes(
    channel: Channel, callee: RPC, unique: str, cleanup: Cleanup, connection: Connection
) -> None:
    server = await RPC.create(await connection.channel(), serializer="msgpack")
    await server.register(cleanup.queue(unique), lambda *, blob: blob[::-1])
    caller = await RPC.create(channel, serializer="msgpack")
    assert await caller.call(unique, {"blob": b"\x01\x02"}) == b"\x02\x01"
    await server.close()


async def test_an_rpc_used_with_async_with_closes_on_the_way_out(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    async with await RPC.create(channel) as rpc:
        await rpc.register(cleanup.queue(unique), multiply)
        assert await rpc.call(unique, {"x": 2, "y": 2}) == 4
    with pytest.raises(ConfigurationError, match="not listening"):
        await rpc.call(unique, {"x": 1, "y": 1})


async def test_call_kwargs_that_are_not_a_mapping_are_refused_with_what_to_pass(
    channel: Channel,
) -> None:
    rpc = await RPC.create(channel)
    with pytest.raises(ConfigurationError) as refused:
        await rpc.call("anything", [1, 2])  # type: ignore[arg-type]
    assert str(refused.value) == (
        "call('anything'): kwargs must be a mapping of keyword arguments "
        "(kwargs={'name': value}), not list"
    )
