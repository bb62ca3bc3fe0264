"""aio-pika's patterns API on leveret: its names, its arguments with their meaning, and
the places where leveret keeps a safer default. Run on RabbitMQ and in memory."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import json
import logging
import zlib
from typing import Any

import pytest

import leveret.patterns
from leveret.amqp import Channel, Connection
from leveret.exceptions import NotFoundError, RemoteError, UnroutableError
from leveret.patterns import (
    RPC,
    CompressedJsonMaster,
    CompressedJsonRPC,
    JsonMaster,
    JsonRPC,
    Master,
    RetryPolicy,
    dead_letter_queue,
    delay_queues,
)
from leveret.patterns import base as patterns_base
from leveret.patterns import master as patterns_master
from leveret.patterns import rpc as patterns_rpc
from tests.patterns.conftest import Cleanup, ConnectBroker, dead_letters
from tests.support.waiting import wait_until

REASON = "x-leveret-reason"


async def multiply(*, x: int, y: int) -> int:
    return x * y


class AlwaysFails:
    """A task function that raises every time; counts its runs."""

    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self) -> None:
        self.runs += 1
        raise RuntimeError("boom")


async def _exists(connection: Connection, queue: str) -> bool:
    """Whether ``queue`` exists (a passive declare on a channel of its own)."""
    channel = await connection.channel()
    try:
        await channel.queue_declare(queue, passive=True)
    except NotFoundError:
        return False
    await channel.close()
    return True


async def _gone(connection: Connection, queue: str) -> None:
    """Wait until ``queue`` no longer exists (the broker deletes auto-delete queues soon
    after their last consumer goes); fail after 5 s."""

    async def gone() -> bool:
        return not await _exists(connection, queue)

    await wait_until(gone, 5, f"{queue} to be deleted")


# -- names and module paths ----------------------------------------------------------


def test_aio_pikas_names_import_from_the_package_and_its_module_paths() -> None:
    assert patterns_master.Master is leveret.patterns.Master
    assert patterns_master.JsonMaster is JsonMaster
    assert patterns_master.CompressedJsonMaster is CompressedJsonMaster
    assert patterns_master.Worker is leveret.patterns.Worker
    assert patterns_master.NackMessage is leveret.patterns.NackMessage
    assert patterns_master.RejectMessage is leveret.patterns.RejectMessage
    assert patterns_rpc.RPC is RPC
    assert patterns_rpc.JsonRPC is JsonRPC
    assert patterns_rpc.CompressedJsonRPC is CompressedJsonRPC
    assert patterns_rpc.JsonRPCError is RemoteError
    call: str = patterns_rpc.RPCMessageType.CALL  # a str, as aio-pika's is
    assert call == "call"
    assert issubclass(Master, patterns_base.Base)
    assert issubclass(RPC, patterns_base.Base)
    assert JsonMaster.CONTENT_TYPE == JsonRPC.CONTENT_TYPE == "application/json"
    assert CompressedJsonMaster.CONTENT_TYPE == "application/json;compression=gzip"


# -- unknown arguments name the method called ----------------------------------------


async def test_an_unknown_argument_raises_type_error_naming_the_method_called(
    channel: Channel,
) -> None:
    with pytest.raises(
        TypeError, match=r"RPC\.create\(\) got an unexpected keyword argument 'colour'"
    ):
        await RPC.create(channel, colour="red")
    with pytest.raises(TypeError, match=r"JsonRPC\.create\(\) got an unexpected keyword"):
        await JsonRPC.create(channel, colour="red")
    with pytest.raises(TypeError, match=r"Master\.__init__\(\) got an unexpected keyword"):
        Master(channel, colour="red")  # type: ignore[call-arg]
    master = Master(channel)
    with pytest.raises(TypeError, match=r"create_worker\(\) got an unexpected keyword"):
        await master.create_worker("x", multiply, colour="red")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"create_task\(\) got an unexpected keyword"):
        await master.create_task("x", colour="red")  # type: ignore[call-arg]
    rpc = await RPC.create(channel)
    with pytest.raises(TypeError, match=r"register\(\) got an unexpected keyword"):
        await rpc.register("x", multiply, colour="red")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"call\(\) got an unexpected keyword"):
        await rpc.call("x", colour="red")  # type: ignore[call-arg]
    await rpc.close()


# -- Master: requeue and reject_on_redelivered ---------------------------------------


async def test_by_default_a_failing_task_is_dead_lettered_not_requeued(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    fail = AlwaysFails()

    await Master(channel).create_worker(cleanup.queue(unique), fail)
    await Master(channel).create_task(unique)
    (letter,) = await dead_letters(channel, unique, 1)
    assert letter.headers[REASON] == "failed after 1 attempt"
    assert fail.runs == 1


async def test_requeue_true_requeues_a_failing_task_until_the_redelivery_limit(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    fail = AlwaysFails()

    master = Master(channel, requeue=True)
    await master.create_worker(cleanup.queue(unique), fail, retries=RetryPolicy(max_redeliveries=3))
    await master.create_task(unique)
    (letter,) = await dead_letters(channel, unique, 1)
    assert "redelivered 4 times" in letter.headers[REASON]
    assert fail.runs == 4  # the first run and three redeliveries: bounded, never a hot loop


async def test_requeue_true_runs_a_task_again_until_it_succeeds(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("not yet")

    worker = await Master(channel, True).create_worker(cleanup.queue(unique), flaky)
    await Master(channel).create_task(unique)
    await wait_until(lambda: runs == 3 and worker.in_flight == 0, 10, "the third run")
    assert await dead_letters(channel, unique, 0) == []


async def test_reject_on_redelivered_dead_letters_a_task_that_fails_after_a_redelivery(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    fail = AlwaysFails()

    master = Master(channel, requeue=True, reject_on_redelivered=True)
    await master.create_worker(cleanup.queue(unique), fail)
    await master.create_task(unique)
    (letter,) = await dead_letters(channel, unique, 1)
    assert "reject_on_redelivered" in letter.headers[REASON]
    assert fail.runs == 2


# -- Master: aio-pika's create_task and create_worker arguments ----------------------


async def test_create_task_passes_aio_pikas_message_properties_on(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    await channel.queue_declare(cleanup.queue(unique))
    sent_at = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    await Master(channel).create_task(
        unique,
        kwargs={"n": 1},
        expiration=datetime.timedelta(minutes=1),
        priority=3,
        headers={"origin": "test"},
        message_id="m-1",
        correlation_id="c-1",
        reply_to="replies",
        content_encoding="identity",
        timestamp=sent_at,
        type="resize",
        app_id="tests",
        delivery_mode=1,
    )
    delivery = await channel.get(unique, no_ack=True)
    assert delivery is not None
    props = delivery.properties
    assert json.loads(delivery.body) == {"n": 1}
    assert (props.expiration, props.priority, props.message_id) == ("60000", 3, "m-1")
    assert (props.correlation_id, props.reply_to, props.content_encoding) == (
        "c-1",
        "replies",
        "identity",
    )
    assert (props.type, props.app_id, props.delivery_mode) == ("resize", "tests", 1)
    assert props.timestamp == int(sent_at.timestamp())
    assert props.headers == {"origin": "test"}


async def test_create_worker_takes_passive_and_timeout_as_aio_pikas_declare_queue(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    master = Master(channel)
    with pytest.raises(NotFoundError):
        await master.create_worker(cleanup.queue(unique), multiply, passive=True)
    channel = await channel.connection.channel()
    master = Master(channel)
    await master.create_worker(unique, multiply, timeout=10, robust=True)
    second = await master.create_worker(unique, multiply, passive=True)
    assert second.consumer_tag


# -- throwaway workers leave nothing behind ------------------------------------------


@pytest.mark.parametrize("throwaway", ["auto_delete", "exclusive"])
async def test_a_throwaway_worker_leaves_no_queue_of_its_own_after_it_closes(
    connection: Connection, unique: str, cleanup: Cleanup, throwaway: str
) -> None:
    attempts: list[int] = []

    async def fail() -> None:
        attempts.append(1)
        raise RuntimeError("boom")

    master = Master(await connection.channel())
    options: dict[str, Any] = {throwaway: True}
    worker = await master.create_worker(
        cleanup.queue(unique),
        fail,
        retries=RetryPolicy(max_attempts=2, backoff=0.05, jitter=0),
        **options,
    )
    await master.create_task(unique)
    await wait_until(lambda: len(attempts) == 2 and worker.in_flight == 0, 10, "two attempts")
    assert await _exists(connection, dead_letter_queue(unique))
    assert all([await _exists(connection, queue) for queue in delay_queues(unique)])
    await worker.close()
    if throwaway == "exclusive":
        await master.channel.queue_delete(unique)  # exclusive queues go with the connection
    for queue in (unique, dead_letter_queue(unique), *delay_queues(unique)):
        await _gone(connection, queue)


async def test_a_durable_worker_keeps_its_dead_letter_queue_after_it_closes(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    async def reject() -> None:
        raise leveret.patterns.RejectMessage(requeue=False)

    master = Master(await connection.channel())
    worker = await master.create_worker(cleanup.queue(unique), reject)
    await master.create_task(unique)
    await wait_until(lambda: worker.in_flight == 0, 5, "the task")
    await worker.close()
    assert await _exists(connection, unique)
    assert await _exists(connection, dead_letter_queue(unique))


async def test_an_auto_delete_callee_leaves_no_queue_after_it_closes(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    rpc = await RPC.create(await connection.channel())
    await rpc.register(cleanup.queue(unique), multiply, auto_delete=True)
    assert await rpc.call(unique, {"x": 2, "y": 3}, timeout=10) == 6
    await rpc.close()
    await _gone(connection, unique)


# -- quorum dead-letter queues stay quorum -------------------------------------------


async def test_a_quorum_workers_dead_letter_queue_comes_back_as_a_quorum_queue(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    async def reject() -> None:
        raise leveret.patterns.RejectMessage(requeue=False)

    channel = await connection.channel()
    master = Master(channel)
    worker = await master.create_worker(cleanup.queue(unique), reject, queue_type="quorum")
    await channel.queue_delete(dead_letter_queue(unique))
    await master.create_task(unique)
    await wait_until(lambda: worker.in_flight == 0, 10, "the task")
    assert len(await dead_letters(channel, unique, 1)) == 1
    # Declaring it as a quorum queue again is only equivalent if it is one.
    await channel.queue_declare(
        dead_letter_queue(unique), durable=True, arguments={"x-queue-type": "quorum"}
    )


# -- serialization -------------------------------------------------------------------


async def test_compressed_json_tasks_and_calls_round_trip(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    received: list[dict[str, Any]] = []
    master = CompressedJsonMaster(channel)
    await master.create_worker(cleanup.queue(unique), lambda **kw: received.append(kw))
    document = {"text": "h\u00e9llo " * 200}
    await master.create_task(unique, kwargs=document)
    await wait_until(lambda: received == [document], 5, "the compressed task")

    rpc = await CompressedJsonRPC.create(channel)
    await rpc.register(cleanup.queue(unique + ".rpc"), lambda *, text: text.upper())
    assert await rpc.call(unique + ".rpc", {"text": "abc"}) == "ABC"
    await rpc.close()


async def test_compressed_json_is_gzip_of_utf8_json_on_the_wire(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    await channel.queue_declare(cleanup.queue(unique))
    await CompressedJsonMaster(channel).create_task(unique, kwargs={"name": "\u00e9"})
    delivery = await channel.get(unique, no_ack=True)
    assert delivery is not None
    assert delivery.properties.content_type == "application/json;compression=gzip"
    assert json.loads(gzip.decompress(delivery.body)) == {"name": "\u00e9"}


async def test_a_compressed_body_that_inflates_past_the_limit_is_dead_lettered(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    ran: list[object] = []
    await CompressedJsonMaster(channel).create_worker(
        cleanup.queue(unique), lambda **kwargs: ran.append(kwargs)
    )
    bomb = gzip.compress(b'{"x": "' + b"a" * (129 * 1024 * 1024) + b'"}', compresslevel=9)
    assert len(bomb) < 1024 * 1024
    await channel.publish(
        bomb,
        routing_key=unique,
        content_type="application/json;compression=gzip",
        message_id="bomb",
    )
    (letter,) = await dead_letters(channel, unique, 1)
    assert "inflates past" in letter.headers[REASON]
    assert ran == []


async def test_a_json_worker_refuses_compressed_json_and_the_reverse(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    await JsonMaster(channel).create_worker(cleanup.queue(unique), lambda **kw: None)
    await CompressedJsonMaster(channel).create_task(unique, kwargs={"a": 1})
    (letter,) = await dead_letters(channel, unique, 1)
    assert "is not accepted" in letter.headers[REASON]


class Base64Json:
    """A wire format leveret does not know, as a module with dumps/loads."""

    @staticmethod
    def dumps(data: Any) -> bytes:
        return zlib.compress(json.dumps(data).encode())

    @staticmethod
    def loads(data: bytes) -> Any:
        return json.loads(zlib.decompress(data))


class ZlibMaster(Master):
    SERIALIZER = Base64Json
    CONTENT_TYPE = "application/x-zlib-json"


class ZlibRPC(RPC):
    SERIALIZER = Base64Json
    CONTENT_TYPE = "application/x-zlib-json"


async def test_subclasses_that_set_serializer_and_content_type_use_them(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    received: list[int] = []
    master = ZlibMaster(channel)
    await master.create_worker(cleanup.queue(unique), lambda *, n: received.append(n))
    await channel.queue_declare(cleanup.queue(unique + ".peek"))
    await master.create_task(unique, kwargs={"n": 5})
    await master.create_task(unique + ".peek", kwargs={"n": 6})
    await wait_until(lambda: received == [5], 5, "the task")
    peeked = await channel.get(unique + ".peek", no_ack=True)
    assert peeked is not None
    assert peeked.properties.content_type == "application/x-zlib-json"
    assert json.loads(zlib.decompress(peeked.body)) == {"n": 6}

    rpc = await ZlibRPC.create(channel)
    await rpc.register(cleanup.queue(unique + ".rpc"), multiply)
    assert await rpc.call(unique + ".rpc", {"x": 3, "y": 4}) == 12
    await rpc.close()


async def test_json_rpc_sends_what_json_cannot_encode_as_its_repr(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    when = datetime.date(2026, 12, 1)
    rpc = await JsonRPC.create(channel)
    await rpc.register(cleanup.queue(unique), lambda: when)
    assert await rpc.call(unique) == repr(when)
    await rpc.close()


# -- RPC: any number per channel -----------------------------------------------------


async def test_many_rpcs_share_one_channel_and_each_gets_its_own_replies(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    callee = await RPC.create(await connection.channel())
    await callee.register(cleanup.queue(unique), multiply)
    channel = await connection.channel()
    callers = [await RPC.create(channel) for _ in range(3)]
    results = await asyncio.gather(
        *(
            caller.call(unique, {"x": index, "y": n})
            for n in range(40)
            for index, caller in enumerate(callers)
        )
    )
    assert results == [index * n for n in range(40) for index in range(3)]
    for caller in callers:
        await caller.close()
    await callee.close()


async def test_closing_one_rpc_of_a_channel_fails_only_its_own_pending_calls(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    release = asyncio.Event()

    async def wait(*, n: int) -> int:
        await release.wait()
        return n

    callee = await RPC.create(await connection.channel())
    await callee.register(cleanup.queue(unique), wait)
    channel = await connection.channel()
    closing, staying = await RPC.create(channel), await RPC.create(channel)
    doomed = asyncio.create_task(closing.call(unique, {"n": 1}))
    kept = asyncio.create_task(staying.call(unique, {"n": 2}))
    await wait_until(lambda: len(closing._pending) == len(staying._pending) == 1, 5, "calls")
    await closing.close()
    with pytest.raises(leveret.patterns.CallInterruptedError, match="RPC was closed"):
        await doomed
    release.set()
    assert await asyncio.wait_for(kept, 10) == 2
    assert await staying.call(unique, {"n": 3}, timeout=10) == 3
    await staying.close()
    # The last RPC of the channel stopped its reply consumer; a new one starts it again.
    again = await RPC.create(channel)
    assert await again.call(unique, {"n": 4}, timeout=10) == 4
    await again.close()
    await callee.close()


# -- RPC: expiration without a timeout -----------------------------------------------


async def test_a_call_with_an_expiration_and_no_timeout_raises_timeout_error_in_time(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    await channel.queue_declare(cleanup.queue(unique))  # a queue with no consumer
    rpc = await RPC.create(channel, fail_fast=False)  # waits, as aio-pika does
    assert rpc.timeout is None
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError, match=f"no reply to '{unique}' within 1 s"):
        await asyncio.wait_for(rpc.call(unique, expiration=1), 10)
    assert 0.9 < loop.time() - started < 3
    await rpc.close()


# -- RPC: custom exchanges -----------------------------------------------------------


async def test_calls_on_an_exchange_reach_the_callee_registered_on_it(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    callee = await RPC.create(await connection.channel(), exchange=unique, durable=False)
    await callee.register("multiply", multiply, auto_delete=True)
    cleanup.queue(f"{unique}::multiply")
    assert await _exists(connection, f"{unique}::multiply")
    caller = await RPC.create(await connection.channel(), exchange=unique)
    assert await caller.proxy.multiply(x=6, y=7) == 42
    assert await caller.call("multiply", {"x": 2, "y": 5}, timeout=10) == 10

    other = await RPC.create(await connection.channel(), exchange=unique + "-other")
    with pytest.raises(
        UnroutableError, match=f"nobody serves 'multiply' on exchange '{unique}-other'"
    ):
        await asyncio.wait_for(other.call("multiply", {"x": 1, "y": 1}), 10)
    default = await RPC.create(await connection.channel())
    with pytest.raises(UnroutableError, match="nobody serves 'multiply'"):
        await asyncio.wait_for(default.call("multiply", {"x": 1, "y": 1}), 10)
    for rpc in (other, default, caller, callee):
        await rpc.close()


async def test_rpc_accepts_aio_pikas_reply_queue_arguments_and_ignores_them(
    connect_broker: ConnectBroker, unique: str, cleanup: Cleanup
) -> None:
    connection = await connect_broker()
    rpc = await RPC.create(
        await connection.channel(),
        auto_delete=False,
        durable=False,
        exclusive=True,
        passive=False,
        arguments={"x-expires": 1000},
        robust=True,
        host_exceptions=False,
        timeout=10,
    )
    await rpc.register(cleanup.queue(unique), multiply, durable=False, timeout=5)
    assert await rpc.call(unique, {"x": 3, "y": 3}) == 9
    await rpc.close()


async def test_host_exceptions_logs_a_callees_exception_with_its_traceback(
    channel: Channel, unique: str, cleanup: Cleanup, caplog: pytest.LogCaptureFixture
) -> None:
    async def refuse() -> None:
        raise ValueError("refused")

    rpc = await RPC.create(channel, host_exceptions=True)
    await rpc.register(cleanup.queue(unique), refuse)
    with (
        caplog.at_level(logging.INFO, logger="leveret.patterns"),
        pytest.raises(ValueError, match="refused"),
    ):
        await rpc.call(unique, timeout=10)
    (record,) = [r for r in caplog.records if "raised" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    await rpc.close()
