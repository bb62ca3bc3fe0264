"""Wire compatibility with aio-pika's ``JsonMaster`` and ``JsonRPC`` (a dev dependency).

A fleet can migrate one process at a time: aio-pika producers feed leveret
workers and the reverse, and RPC calls work in both directions, errors included.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.patterns import JsonMaster, JsonRPC
from aio_pika.patterns.master import CompressedJsonMaster as AioPikaCompressedJsonMaster
from aio_pika.patterns.rpc import JsonRPCError

from leveret.amqp import Channel
from leveret.exceptions import RemoteError, UnroutableError
from leveret.patterns import RPC, CompressedJsonMaster, Master
from leveret.serializers import JSONSerializer
from tests.patterns.conftest import Cleanup

# aio-pika speaks AMQP over a socket: only the real broker can serve both sides.
pytestmark = pytest.mark.rabbitmq_only

TASKS = [
    {"task_id": 1, "text": "h\u00e9llo"},
    {"task_id": 2, "items": [1, 2.5, None]},
    {"task_id": 3, "big": 2**70, "nested": {"\u00e9": [True, -0.5, 1e16]}},
]


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


#: The same wire format on both sides: (leveret's master class, aio-pika's). JSON is
#: encoded by orjson when the speed extra is installed, and by stock json when told.
MASTERS: dict[str, tuple[Callable[[Channel], Master], type[aio_pika.patterns.Master]]] = {
    "json": (Master, JsonMaster),
    "stock-json": (functools.partial(Master, serializer=JSONSerializer(fast=False)), JsonMaster),
    "compressed-json": (CompressedJsonMaster, AioPikaCompressedJsonMaster),
}


@pytest.mark.parametrize("wire", MASTERS)
async def test_aio_pika_master_tasks_are_run_by_a_leveret_worker(
    channel: Channel,
    aio_pika_channel: aio_pika.abc.AbstractChannel,
    unique: str,
    cleanup: Cleanup,
    wire: str,
) -> None:
    ours, theirs = MASTERS[wire]
    task, done = _collector(len(TASKS))
    worker = await ours(channel).create_worker(cleanup.queue(unique), task, auto_delete=True)
    try:
        producer = theirs(aio_pika_channel)
        for kwargs in TASKS:
            await producer.create_task(unique, kwargs=kwargs)
        assert await asyncio.wait_for(done, 10) == TASKS
    finally:
        await worker.close()


@pytest.mark.parametrize("wire", MASTERS)
async def test_leveret_master_tasks_are_run_by_an_aio_pika_worker(
    channel: Channel,
    aio_pika_channel: aio_pika.abc.AbstractChannel,
    unique: str,
    cleanup: Cleanup,
    wire: str,
) -> None:
    ours, theirs = MASTERS[wire]
    task, done = _collector(len(TASKS))
    worker = await theirs(aio_pika_channel).create_worker(
        cleanup.queue(unique), task, auto_delete=True
    )
    try:
        producer = ours(channel)
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
    assert isinstance(rpc, JsonRPC)  # aio-pika types create() as returning its base RPC
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
    assert isinstance(rpc, JsonRPC)
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


# -- RPC on a custom exchange ----------------------------------------------------------


async def test_aio_pika_caller_on_an_exchange_reaches_a_leveret_callee_on_it(
    channel: Channel,
    aio_pika_channel: aio_pika.abc.AbstractChannel,
    unique: str,
    cleanup: Cleanup,
) -> None:
    callee = await RPC.create(channel, exchange=unique)
    await callee.register("multiply", multiply, auto_delete=True)
    cleanup.queue(f"{unique}::multiply")
    caller = await JsonRPC.create(aio_pika_channel, exchange=unique)
    try:
        assert await asyncio.wait_for(caller.proxy.multiply(x=6, y=7), 10) == 42
    finally:
        await caller.close()
        await callee.close()


async def test_leveret_caller_on_an_exchange_reaches_an_aio_pika_callee_on_it(
    channel: Channel,
    aio_pika_channel: aio_pika.abc.AbstractChannel,
    unique: str,
    cleanup: Cleanup,
) -> None:
    callee = await JsonRPC.create(aio_pika_channel, exchange=unique)
    await callee.register("multiply", multiply, auto_delete=True)
    cleanup.queue(f"{unique}::multiply")
    caller = await RPC.create(channel, exchange=unique)
    try:
        assert await caller.call("multiply", {"x": 6, "y": 7}, timeout=10) == 42
        other = await RPC.create(channel, exchange=unique + "-other")
        with pytest.raises(UnroutableError):
            await asyncio.wait_for(other.call("multiply", {"x": 1, "y": 1}), 10)
        await other.close()
    finally:
        await caller.close()
        await callee.close()


# -- mixed callee fleets ---------------------------------------------------------------


async def test_aio_pika_and_leveret_callees_share_a_methods_queue(
    channel: Channel,
    aio_pika_channel: aio_pika.abc.AbstractChannel,
    unique: str,
    cleanup: Cleanup,
) -> None:
    served: list[str] = []

    async def who_leveret(*, n: int) -> str:
        served.append("leveret")
        return "leveret"

    async def who_aio_pika(*, n: int) -> str:
        served.append("aio-pika")
        return "aio-pika"

    theirs = await JsonRPC.create(aio_pika_channel)
    await theirs.register(cleanup.queue(unique), who_aio_pika)
    ours = await RPC.create(channel)  # the same queue arguments: no 406
    await ours.register(unique, who_leveret)
    caller = await RPC.create(await channel.connection.channel())
    try:
        answers = await asyncio.gather(
            *(caller.call(unique, {"n": n}, timeout=10) for n in range(40))
        )
        assert set(answers) == {"leveret", "aio-pika"}
        assert sorted(served) == sorted(answers)
    finally:
        await caller.close()
        await ours.close()
        await theirs.close()


async def test_aio_pika_callers_expired_call_in_a_leveret_callees_queue_comes_back_as_timeout(
    channel: Channel,
    aio_pika_channel: aio_pika.abc.AbstractChannel,
    unique: str,
    cleanup: Cleanup,
) -> None:
    # The queue stays after its leveret callee went away; aio-pika's caller learns of
    # its expired call through rpc.dlx, the dead-letter exchange both declare.
    callee = await RPC.create(channel)
    await callee.register(cleanup.queue(unique), multiply)
    await callee.close()
    caller = await JsonRPC.create(aio_pika_channel)
    try:
        with pytest.raises(TimeoutError) as caught:
            await asyncio.wait_for(caller.call(unique, kwargs={"x": 1, "y": 2}, expiration=1), 10)
        # aio-pika's own error for a call that came back through rpc.dlx, not wait_for's.
        assert caught.value.args[0] == "Message timed-out"
    finally:
        await caller.close()
