"""Wire compatibility with aio-pika's ``JsonMaster`` and ``JsonRPC`` (a dev dependency).

A fleet can migrate one process at a time: aio-pika producers feed leveret
workers and the reverse, and RPC calls work in both directions, errors included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.patterns import JsonMaster, JsonRPC
from aio_pika.patterns.rpc import JsonRPCError

from leveret.amqp import Channel
from leveret.exceptions import RemoteError
from leveret.patterns import RPC, Master
from tests.patterns.conftest import Cleanup

# aio-pika speaks AMQP over a socket: only the real broker can serve both sides.
pytestmark = pytest.mark.rabbitmq_only

TASKS = [{"task_id": 1, "text": "h\u00e9llo"}, {"task_id": 2, "items": [1, 2.5, None]}]


class InsufficientFunds(Exception):
    """An exception class the caller's side does not know."""


async def multiply(*, x: int, y: int) -> int:
    return x * y


async def refuse(*, x: int) -> None:
    raise ValueError("bad x", x)


async def overdraw(*, amount: int) -> None:
    raise InsufficientFunds(f"cannot pay {amount}")


@pytest.fixture
async def aio_pika_channel(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A channel of aio-pika's own, on a connection closed after the test."""
    connection = await aio_pika.connect(amqp_url)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


def _collector(count: int) -> tuple[Any, asyncio.Future[list[dict[str, Any]]]]:
    """A task function, and a future of the kwargs of the first ``count`` tasks."""
    received: list[dict[str, Any]] = []
    done: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()

    async def task(**kwargs: Any) -> None:
        received.append(kwargs)
        if len(received) == count and not done.done():
            done.set_result(received)

    return task, done


# -- Master / Worker -----------------------------------------------------------------


async def test_aio_pika_json_master_tasks_are_run_by_a_leveret_worker(
    channel: Channel,
    aio_pika_channel: aio_pika.abc.AbstractChannel,
    unique: str,
    cleanup: Cleanup,
) -> None:
    task, done = _collector(len(TASKS))
    worker = await Master(channel).create_worker(cleanup.queue(unique), task, auto_delete=True)
    try:
        producer = JsonMaster(aio_pika_channel)
        for kwargs in TASKS:
            await producer.create_task(unique, kwargs=kwargs)
        assert await asyncio.wait_for(done, 10) == TASKS
    finally:
        await worker.close()


async def test_leveret_master_tasks_are_run_by_an_aio_pika_json_master_worker(
    channel: Channel,
    aio_pika_channel: aio_pika.abc.AbstractChannel,
    unique: str,
    cleanup: Cleanup,
) -> None:
    task, done = _collector(len(TASKS))
    worker = await JsonMaster(aio_pika_channel).create_worker(
        cleanup.queue(unique), task, auto_delete=True
    )
    try:
        producer = Master(channel)
        for kwargs in TASKS:
            await producer.create_task(unique, kwargs=kwargs)
        assert await asyncio.wait_for(done, 10) == TASKS
    finally:
        await worker.close()


# -- RPC: aio-pika calls leveret -----------------------------------------------------


@pytest.fixture
async def leveret_callee(channel: Channel) -> AsyncIterator[RPC]:
    rpc = await RPC.create(channel)
    try:
        yield rpc
    finally:
        await rpc.close()


@pytest.fixture
async def aio_pika_caller(
    aio_pika_channel: aio_pika.abc.AbstractChannel,
) -> AsyncIterator[JsonRPC]:
    rpc = await JsonRPC.create(aio_pika_channel)
    try:
        yield rpc
    finally:
        await rpc.close()


async def test_aio_pika_json_rpc_caller_gets_the_result_of_a_leveret_callee(
    leveret_callee: RPC, aio_pika_caller: JsonRPC, unique: str, cleanup: Cleanup
) -> None:
    await leveret_callee.register(cleanup.queue(unique), multiply, auto_delete=True)
    assert await aio_pika_caller.call(unique, kwargs={"x": 6, "y": 7}) == 42


async def test_aio_pika_json_rpc_caller_gets_a_leveret_callees_exception_as_aio_pikas_error_object(
    leveret_callee: RPC, aio_pika_caller: JsonRPC, unique: str, cleanup: Cleanup
) -> None:
    await leveret_callee.register(cleanup.queue(unique), refuse, auto_delete=True)
    with pytest.raises(JsonRPCError) as caught:
        await aio_pika_caller.call(unique, kwargs={"x": 3})
    # aio-pika raises JsonRPCError("RPC exception", payload) with the error object
    # exactly as its own JsonRPC callee writes it; leveret only adds fields.
    message, payload = caught.value.args
    assert message == "RPC exception"
    error = payload["error"]
    assert error["type"] == "ValueError"
    assert error["message"] == "ValueError('bad x', 3)"
    assert error["args"] == ["bad x", 3]


# -- RPC: leveret calls aio-pika -----------------------------------------------------


@pytest.fixture
async def aio_pika_callee(
    aio_pika_channel: aio_pika.abc.AbstractChannel,
) -> AsyncIterator[JsonRPC]:
    rpc = await JsonRPC.create(aio_pika_channel)
    try:
        yield rpc
    finally:
        await rpc.close()


@pytest.fixture
async def leveret_caller(channel: Channel) -> AsyncIterator[RPC]:
    rpc = await RPC.create(channel)
    try:
        yield rpc
    finally:
        await rpc.close()


async def test_leveret_rpc_caller_gets_the_result_of_an_aio_pika_json_rpc_callee(
    aio_pika_callee: JsonRPC, leveret_caller: RPC, unique: str, cleanup: Cleanup
) -> None:
    await aio_pika_callee.register(cleanup.queue(unique), multiply, auto_delete=True)
    assert await leveret_caller.call(unique, kwargs={"x": 6, "y": 7}, timeout=10) == 42
    assert await getattr(leveret_caller.proxy, unique)(x=2, y=3) == 6


async def test_leveret_rpc_caller_raises_an_aio_pika_callees_value_error_as_remote_value_error(
    aio_pika_callee: JsonRPC, leveret_caller: RPC, unique: str, cleanup: Cleanup
) -> None:
    await aio_pika_callee.register(cleanup.queue(unique), refuse, auto_delete=True)
    with pytest.raises(ValueError, match="bad x") as caught:
        await leveret_caller.call(unique, kwargs={"x": 3}, timeout=10)
    error = caught.value
    assert isinstance(error, RemoteError)
    assert error.args == ("bad x", 3)
    assert error.remote_type == "ValueError"


async def test_leveret_rpc_caller_raises_an_unknown_aio_pika_callee_exception_as_remote_error(
    aio_pika_callee: JsonRPC, leveret_caller: RPC, unique: str, cleanup: Cleanup
) -> None:
    await aio_pika_callee.register(cleanup.queue(unique), overdraw, auto_delete=True)
    with pytest.raises(RemoteError, match="InsufficientFunds") as caught:
        await leveret_caller.call(unique, kwargs={"amount": 5}, timeout=10)
    # The class is not registered with the caller: nothing is looked up by the
    # name that came over the wire.
    assert type(caught.value) is RemoteError
    assert caught.value.remote_type == "InsufficientFunds"
    assert "cannot pay 5" in str(caught.value)
