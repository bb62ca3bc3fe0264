"""A call nobody will answer fails within about a second, not after its timeout: its
method's queue is there, but no callee consumes it (on both brokers)."""

from __future__ import annotations

import asyncio
import time

import pytest

from leveret.amqp import Channel
from leveret.exceptions import NoCalleeError, UnroutableError
from leveret.patterns import RPC
from tests.patterns.conftest import Cleanup, ConnectBroker

# Fails "within about a second": the bound is loose for a loaded machine, and far
# below the calls' 30 s timeout, which is what they would wait without the check.
FAST = 10.0


async def multiply(*, x: int, y: int) -> int:
    return x * y


async def test_a_call_to_a_method_whose_callees_stopped_fails_fast_with_no_callee(
    channel: Channel, connect_broker: ConnectBroker, unique: str, cleanup: Cleanup
) -> None:
    conn = await connect_broker()
    callee = await RPC.create(await conn.channel())
    await callee.register(cleanup.queue(unique), multiply)
    caller = await RPC.create(channel, timeout=30)
    assert await caller.call(unique, {"x": 2, "y": 3}) == 6
    await callee.close()  # its queue stays, with nobody consuming it
    await conn.close()
    started = time.monotonic()
    with pytest.raises(NoCalleeError, match=rf"nobody serves '{unique}' now: .* no consumer"):
        await caller.call(unique, {"x": 2, "y": 3})
    assert time.monotonic() - started < FAST


async def test_a_call_whose_callee_goes_away_while_it_runs_fails_fast(
    channel: Channel, connect_broker: ConnectBroker, unique: str, cleanup: Cleanup
) -> None:
    started_running = asyncio.Event()

    async def stuck(**_: int) -> None:
        started_running.set()
        await asyncio.Event().wait()

    conn = await connect_broker()
    await (await RPC.create(await conn.channel())).register(cleanup.queue(unique), stuck)
    caller = await RPC.create(channel, timeout=30)
    call = asyncio.ensure_future(caller.call(unique, {}))
    await asyncio.wait_for(started_running.wait(), 10)
    await conn.close()  # the callee's process dies: the call goes back to its queue
    started = time.monotonic()
    with pytest.raises(NoCalleeError):
        await call
    assert time.monotonic() - started < FAST


async def test_a_busy_callee_is_waited_for(
    channel: Channel, connect_broker: ConnectBroker, unique: str, cleanup: Cleanup
) -> None:
    async def slow(*, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    conn = await connect_broker()
    callee = await RPC.create(await conn.channel(), prefetch_count=1)
    await callee.register(cleanup.queue(unique), slow)
    caller = await RPC.create(channel, timeout=30)
    # Longer than two looks at the queue; the second call waits behind the first.
    results = await asyncio.gather(*(caller.call(unique, {"seconds": 1.5}) for _ in range(2)))
    assert results == ["done", "done"]
    await callee.close()
    await conn.close()


async def test_a_call_to_a_method_whose_queue_is_deleted_meanwhile_fails_fast(
    channel: Channel, connect_broker: ConnectBroker, unique: str, cleanup: Cleanup
) -> None:
    async def stuck(**_: int) -> None:
        await asyncio.Event().wait()

    conn = await connect_broker()
    callee = await RPC.create(await conn.channel())
    await callee.register(cleanup.queue(unique), stuck)
    caller = await RPC.create(channel, timeout=30)
    call = asyncio.ensure_future(caller.call(unique, {}))
    await asyncio.sleep(0)  # sent
    other = await connect_broker()
    await (await other.channel()).queue_delete(unique)
    with pytest.raises(NoCalleeError, match="was deleted"):
        await asyncio.wait_for(call, FAST)
    # The look at a missing queue did not cost the caller its channel: the next call
    # is simply unroutable.
    with pytest.raises(UnroutableError):
        await caller.call(unique, {})
    await other.close()
    await callee.close(timeout=0)
    await conn.close()


async def test_fail_fast_false_waits_for_the_timeout_as_aio_pika_does(
    channel: Channel, connect_broker: ConnectBroker, unique: str, cleanup: Cleanup
) -> None:
    conn = await connect_broker()
    callee = await RPC.create(await conn.channel())
    await callee.register(cleanup.queue(unique), multiply)
    await callee.close()
    await conn.close()
    caller = await RPC.create(channel, timeout=2, fail_fast=False)
    with pytest.raises(TimeoutError, match="no reply"):
        await caller.call(unique, {"x": 1, "y": 1})
