"""Master/Worker, on RabbitMQ and on the in-memory broker."""

import asyncio
import datetime
import json
import pickle
import re
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from leveret.amqp import Channel, Connection, Delivery
from leveret.exceptions import (
    BatchPublishError,
    ConfigurationError,
    MessageReturnedError,
    NotFoundError,
    PublishError,
    PublishNackedError,
    SerializationError,
    UnroutableError,
)
from leveret.patterns import (
    Kind,
    Master,
    NackMessage,
    Observer,
    RejectMessage,
    dead_letter_queue,
)
from tests.patterns.conftest import Cleanup, ConnectBroker, dead_letters
from tests.support.waiting import wait_until

REASON = "x-leveret-reason"


async def test_proxy_and_create_task_reach_the_worker_with_their_kwargs(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    received: list[int] = []
    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), lambda **kw: received.append(kw["task_id"]))
    for task_id in range(5):
        await getattr(master.proxy, unique)(task_id=task_id)
    for task_id in range(5, 10):
        await master.create_task(unique, kwargs={"task_id": task_id})
    await wait_until(lambda: len(received) == 10, 5, "ten tasks")
    assert sorted(received) == list(range(10))


async def test_dotted_proxy_names_become_dotted_task_names(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    seen: list[str] = []

    async def build(*, report: str) -> None:
        seen.append(report)

    master = Master(channel)
    await master.create_worker(cleanup.queue(f"{unique}.reports.build"), build)
    await getattr(master.proxy, unique).reports.build(report="q3")
    await wait_until(lambda: seen == ["q3"], 5, "the dotted task")


async def test_positional_arguments_to_a_proxy_raise_type_error(channel: Channel) -> None:
    with pytest.raises(TypeError, match="keyword arguments only"):
        await Master(channel).proxy.anything(1, 2)


async def test_kwargs_that_are_not_a_mapping_are_refused_with_what_to_pass(
    channel: Channel,
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        await Master(channel).create_task("anything", kwargs=[1, 2])  # type: ignore[arg-type]
    assert str(refused.value) == (
        "create_task('anything'): kwargs must be a mapping of keyword arguments "
        "(kwargs={'name': value}), not list"
    )


async def test_an_argument_that_does_not_encode_is_named(channel: Channel) -> None:
    when = datetime.datetime(2030, 1, 1)
    with pytest.raises(SerializationError) as refused:
        await Master(channel).create_task("anything", kwargs={"n": 1, "when": when})
    assert str(refused.value) == (
        "'when' (a datetime): cannot encode as JSON: "
        "Object of type datetime is not JSON serializable"
    )


@pytest.mark.parametrize(
    ("func", "problem"),
    [
        (lambda path, /: None, "has positional-only parameters (path, before a /)"),
        (lambda *paths: None, "takes only positional arguments (*args)"),
    ],
)
async def test_a_function_keyword_arguments_cannot_reach_is_refused_by_create_worker(
    channel: Channel, unique: str, func: Any, problem: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        await Master(channel).create_worker(unique, func)
    with pytest.raises(NotFoundError):  # refused before anything was declared
        await (await channel.connection.channel()).queue_declare(unique, passive=True)


async def test_task_nobody_consumes_raises_unroutable_at_once(
    channel: Channel, unique: str
) -> None:
    with pytest.raises(UnroutableError, match=f"no queue takes task '{unique}'") as info:
        await asyncio.wait_for(Master(channel).proxy.__getattr__(unique)(x=1), 5)
    assert info.value.returned.routing_key == unique
    assert channel.is_open


async def test_an_unroutable_task_is_a_publish_error_chained_to_the_broker_return(
    channel: Channel, unique: str
) -> None:
    with pytest.raises(PublishError) as info:
        await asyncio.wait_for(Master(channel).create_task(unique), 5)
    assert isinstance(info.value, UnroutableError)
    assert isinstance(info.value.__cause__, MessageReturnedError)
    assert info.value.message.routing_key == unique


async def test_tasks_are_persistent_json_with_a_message_id(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    await channel.queue_declare(cleanup.queue(unique))
    await Master(channel).create_task(unique, kwargs={"text": "héllo", "n": 1})
    delivery = await channel.get(unique, no_ack=True)
    assert delivery is not None
    assert json.loads(delivery.body) == {"text": "héllo", "n": 1}
    assert delivery.properties.content_type == "application/json"
    assert delivery.properties.delivery_mode == 2
    assert delivery.properties.message_id


async def test_task_is_acked_only_after_the_function_returns(
    connect_broker: ConnectBroker, unique: str, cleanup: Cleanup
) -> None:
    started = asyncio.Event()
    redelivered: list[int] = []

    async def stuck(*, n: int) -> None:
        started.set()
        await asyncio.Event().wait()

    async with await connect_broker() as second:
        first = await connect_broker()
        await Master(await first.channel()).create_worker(cleanup.queue(unique), stuck)
        await Master(await first.channel()).create_task(unique, kwargs={"n": 1})
        await asyncio.wait_for(started.wait(), 5)
        await first.close()

        async def finish(*, n: int) -> None:
            redelivered.append(n)

        await Master(await second.channel()).create_worker(unique, finish)
        await wait_until(lambda: redelivered == [1], 5, "the unfinished task to come back")


async def test_nack_and_reject_settle_the_task_as_the_function_asks(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    attempts: dict[int, int] = {}

    async def task(*, n: int) -> None:
        attempts[n] = attempts.get(n, 0) + 1
        if n == 0:
            raise RejectMessage(requeue=False)
        if n == 1:
            raise NackMessage(requeue=False)
        if n == 2 and attempts[n] == 1:
            raise NackMessage(requeue=True)
        if n == 3 and attempts[n] == 1:
            raise RejectMessage(requeue=True)

    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), task)
    for n in range(4):
        await master.create_task(unique, kwargs={"n": n})
    await wait_until(lambda: attempts.get(2) == 2 and attempts.get(3) == 2, 5, "the requeues")
    dead = await dead_letters(channel, unique, 2)
    reasons = {json.loads(d.body)["n"]: d.headers[REASON] for d in dead}
    assert reasons == {0: "rejected by the task function", 1: "nacked by the task function"}
    assert attempts == {0: 1, 1: 1, 2: 2, 3: 2}


async def test_failing_task_goes_to_the_dead_letter_queue_once_with_its_error(
    channel: Channel, unique: str, cleanup: Cleanup, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def explode(*, n: int) -> None:
        nonlocal calls
        calls += 1
        raise ValueError(f"bad n {n}")

    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), explode)
    await master.create_task(unique, kwargs={"n": 7}, message_id="m-7")
    (dead,) = await dead_letters(channel, unique, 1)
    headers = dead.headers
    assert headers[REASON] == "failed after 1 attempt"
    assert headers["x-leveret-exception-type"] == "ValueError"
    assert headers["x-leveret-exception-message"] == "bad n 7"
    assert "explode" in headers["x-leveret-traceback"]
    assert headers["x-leveret-original-routing-key"] == unique
    assert dead.properties.message_id == "m-7" and json.loads(dead.body) == {"n": 7}
    assert calls == 1  # acked once it was dead-lettered: it cannot come back
    assert f"task '{unique}'" in caplog.text and "Traceback" in caplog.text


async def test_without_a_dead_letter_queue_failed_tasks_are_rejected(
    channel: Channel, unique: str, cleanup: Cleanup, caplog: pytest.LogCaptureFixture
) -> None:
    async def explode() -> None:
        raise RuntimeError("boom")

    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), explode, dead_letter=False)
    await master.create_task(unique)
    await wait_until(lambda: "rejected without requeue" in caplog.text, 5, "the rejection")
    with pytest.raises(NotFoundError):
        await (await channel.connection.channel()).queue_declare(
            dead_letter_queue(unique), passive=True
        )


async def test_plain_functions_run_in_a_thread_pool(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    threads: list[int] = []
    master = Master(channel)
    await master.create_worker(
        cleanup.queue(unique), lambda *, n: threads.append(threading.get_ident())
    )
    await master.create_task(unique, kwargs={"n": 1})
    await wait_until(lambda: threads, 5, "the task")
    assert threads[0] != threading.get_ident()


async def test_concurrent_executions_never_exceed_the_prefetch(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    running = peak = done = 0

    async def task(*, n: int) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        done += 1

    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), task, prefetch_count=4)
    await asyncio.gather(*(master.create_task(unique, kwargs={"n": n}) for n in range(40)))
    await wait_until(lambda: done == 40, 10, "forty tasks")
    assert peak == 4


async def test_bad_tasks_are_dead_lettered_with_a_reason_and_good_ones_keep_flowing(
    channel: Channel, unique: str, cleanup: Cleanup, caplog: pytest.LogCaptureFixture
) -> None:
    good: list[int] = []

    async def task(*, n: int, label: str = "") -> None:
        good.append(n)

    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), task)
    bad: list[tuple[bytes, str | None, str]] = [
        (b"{not json", "application/json", "does not decode"),
        (b"[1, 2]", "application/json", "payload is list"),
        (pickle.dumps({"n": 1}), "application/python-pickle", "is not accepted"),
        (b'{"label": "x"}', "application/json", "missing argument n"),
        (b'{"n": 1, "extra": 2}', "application/json", "unexpected argument extra"),
        (b"\xff\xfe", None, "does not decode"),
    ]
    for i, (body, content_type, _) in enumerate(bad):
        await channel.publish(body, routing_key=unique, content_type=content_type)
        await master.create_task(unique, kwargs={"n": i})
    await wait_until(lambda: len(good) == len(bad), 5, "the good tasks")
    assert sorted(good) == list(range(len(bad)))
    dead = await dead_letters(channel, unique, len(bad))
    assert [d.body for d in dead] == [body for body, _, _ in bad]
    for delivery, (_, _, reason) in zip(dead, bad, strict=True):
        assert reason in delivery.headers[REASON]
        assert reason in caplog.text
    assert caplog.text.count(f"task '{unique}'") >= len(bad)


class _MakesAFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


async def test_pickle_sent_to_a_json_worker_is_never_unpickled(
    channel: Channel, unique: str, cleanup: Cleanup, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    seen: list[Any] = []
    master = Master(channel)
    await master.create_worker(cleanup.queue(unique), lambda **kw: seen.append(kw))
    await channel.publish(
        pickle.dumps({"n": _MakesAFile(marker)}),
        routing_key=unique,
        content_type="application/python-pickle",
    )
    await master.create_task(unique, kwargs={"after": True})
    await wait_until(lambda: seen == [{"after": True}], 5, "the task after the pickle")
    assert not marker.exists()


async def test_pickle_is_used_only_when_chosen(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    received: list[Any] = []
    master = Master(await connection.channel(), serializer="pickle")
    assert master.CONTENT_TYPE == "application/python-pickle"
    await master.create_worker(cleanup.queue(unique), lambda *, value: received.append(value))
    await master.create_task(unique, kwargs={"value": {1, 2, 3}})
    await wait_until(lambda: received == [{1, 2, 3}], 5, "the pickled set")
    with pytest.raises(SerializationError, match="JSON"):
        await Master(await connection.channel()).create_task(unique, kwargs={"value": {1}})


async def test_workers_share_a_queue_round_robin(
    connect_broker: ConnectBroker, unique: str, cleanup: Cleanup
) -> None:
    counts = {"a": 0, "b": 0}

    def worker(name: str) -> Any:
        async def run(*, n: int) -> None:
            counts[name] += 1
            await asyncio.sleep(0.001)

        return run

    async with await connect_broker() as a, await connect_broker() as b:
        await Master(await a.channel()).create_worker(
            cleanup.queue(unique), worker("a"), prefetch_count=1
        )
        await Master(await b.channel()).create_worker(unique, worker("b"), prefetch_count=1)
        master = Master(await a.channel())
        await asyncio.gather(*(master.create_task(unique, kwargs={"n": n}) for n in range(100)))
        await wait_until(lambda: sum(counts.values()) == 100, 10, "a hundred tasks")
    assert counts["a"] >= 30 and counts["b"] >= 30


class _Overfetching:
    """The test's channel, except that every consumer may hold ``prefetch`` unacked
    deliveries: more than a worker runs at once, so the rest wait inside the worker."""

    def __init__(self, channel: Channel, prefetch: int) -> None:
        self._channel = channel
        self._prefetch = prefetch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)  # the rest of the seam, unchanged

    async def consume(
        self, queue: str, callback: Callable[[Delivery], Awaitable[Any] | None], **options: Any
    ) -> str:
        options["prefetch_count"] = self._prefetch
        return await self._channel.consume(queue, callback, **options)


async def test_worker_close_lets_running_tasks_finish_and_requeues_waiting_ones(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    release = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []

    async def task(*, n: int) -> None:
        started.append(n)
        await release.wait()
        finished.append(n)

    master = Master(_Overfetching(channel, prefetch=6))
    worker = await master.create_worker(cleanup.queue(unique), task, prefetch_count=2)
    for n in range(6):
        await master.create_task(unique, kwargs={"n": n})
    # Two tasks run; the other four were delivered and wait for a free slot.
    await wait_until(lambda: worker.in_flight == 6, 5, "six tasks in the worker")
    assert started == [0, 1]
    closing = asyncio.create_task(worker.close())
    await asyncio.sleep(0.05)  # proves a negative: close waits for the running tasks
    assert not closing.done()
    release.set()
    await asyncio.wait_for(closing, 5)
    # The waiting four never ran: they went back to the queue.
    assert sorted(finished) == [0, 1] and started == [0, 1]
    ok = await channel.queue_declare(unique, passive=True)
    assert ok.message_count == 4


async def test_subclass_with_its_own_serializer_round_trips(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    import msgpack  # type: ignore[import-untyped,unused-ignore]

    class MsgpackMaster(Master):
        CONTENT_TYPE = "application/msgpack"

        def serialize(self, data: Any) -> bytes:
            packed: bytes = msgpack.dumps(data)
            return packed

        def deserialize(self, data: bytes) -> Any:
            return msgpack.loads(data)

    got: list[bytes] = []
    master = MsgpackMaster(channel)
    await master.create_worker(cleanup.queue(unique), lambda *, blob: got.append(blob))
    await master.create_task(unique, kwargs={"blob": b"\x00\x01"})
    await wait_until(lambda: got == [b"\x00\x01"], 5, "the msgpack task")


@pytest.mark.parametrize(
    "content_type", ["application/json", "Application/JSON", "application/json; charset=UTF-8"]
)
async def test_json_content_types_are_matched_as_media_types(
    channel: Channel, unique: str, cleanup: Cleanup, content_type: str
) -> None:
    seen: list[int] = []
    await Master(channel).create_worker(cleanup.queue(unique), lambda *, n: seen.append(n))
    await channel.publish(b'{"n": 1}', routing_key=unique, content_type=content_type)
    await wait_until(lambda: seen == [1], 5, "the task")


async def test_copies_made_by_the_worker_carry_the_senders_user_id_as_a_header(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    async def explode() -> None:
        raise ValueError("no")

    await Master(channel).create_worker(cleanup.queue(unique), explode)
    await channel.publish(
        b"{}", routing_key=unique, content_type="application/json", user_id="guest"
    )
    (dead,) = await dead_letters(channel, unique, 1)
    assert dead.properties.user_id is None  # the broker would refuse a copy from another user
    assert dead.headers["x-leveret-original-user-id"] == "guest"


async def test_a_master_used_with_async_with_closes_its_workers_on_the_way_out(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    async with Master(channel) as master:
        await master.create_worker(cleanup.queue(unique), lambda: None)
        assert (await channel.queue_declare(unique, passive=True)).consumer_count == 1
    assert master.workers == []
    await wait_until(
        lambda: _consumers(channel, unique), 5, "the worker's consumer to be cancelled"
    )


async def _consumers(channel: Channel, queue: str) -> bool:
    return (await channel.queue_declare(queue, passive=True)).consumer_count == 0


# -- create_tasks: many at once ------------------------------------------------------


async def _consumed(channel: Channel, queue: str) -> list[Delivery]:
    """Declare ``queue``; what arrives in it from now on, as delivered (and acked)."""
    received: list[Delivery] = []

    def take(delivery: Delivery) -> None:
        received.append(delivery)
        delivery.ack()

    await channel.queue_declare(queue)
    await channel.consume(queue, take, prefetch_count=100)
    return received


async def test_create_tasks_delivers_every_task_once_as_create_task_would_send_it(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    count = 1200  # more than one batch of writes
    received = await _consumed(channel, cleanup.queue(unique))
    master = Master(channel)
    await master.create_task(unique, kwargs={"n": -1})
    await master.create_tasks(unique, ({"n": n} for n in range(count)))
    await wait_until(lambda: len(received) == count + 1, 20, "every task")
    single, batch = received[0], received[1:]
    assert sorted(json.loads(d.body)["n"] for d in batch) == list(range(count))
    assert len({d.properties.message_id for d in received}) == count + 1
    for delivery in batch:
        shown = delivery.properties.replace(message_id=None)
        assert shown == single.properties.replace(message_id=None)
    assert single.properties.content_type == "application/json"
    assert single.properties.delivery_mode == 2


async def test_create_tasks_gives_every_task_the_options(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    received = await _consumed(channel, cleanup.queue(unique))
    master = Master(channel)
    await master.create_tasks(
        unique,
        [{"n": 1}, {"n": 2}],
        headers={"tenant": "acme"},
        expiration=60,
        priority=3,
        correlation_id="batch-7",
        app_id="importer",
        delivery_mode=1,
    )
    await wait_until(lambda: len(received) == 2, 10, "both tasks")
    for delivery in received:
        props = delivery.properties
        assert (props.headers or {}).get("tenant") == "acme"
        assert (props.expiration, props.priority) == ("60000", 3)
        assert (props.correlation_id, props.app_id, props.delivery_mode) == (
            "batch-7",
            "importer",
            1,
        )


async def test_create_tasks_nobody_takes_raise_one_error_naming_every_task(
    channel: Channel, unique: str
) -> None:
    with pytest.raises(BatchPublishError) as refused:
        await Master(channel).create_tasks(unique, [{"n": n} for n in range(3)])
    error = refused.value
    assert isinstance(error, PublishError) and error.count == 3
    assert sorted(error.failures) == [0, 1, 2]
    assert all(isinstance(e, UnroutableError) for e in error.failures.values())
    assert str(error).startswith(
        f"3 of 3 tasks {unique!r} were not taken by the broker (the others were): "
        f"tasks 0, 1, 2: UnroutableError: no queue takes task {unique!r}"
    )


async def test_create_tasks_a_full_queue_refuses_are_listed_and_the_rest_are_taken(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    await channel.queue_declare(
        cleanup.queue(unique), arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
    )
    with pytest.raises(BatchPublishError) as refused:
        await Master(channel).create_tasks(unique, [{"n": n} for n in range(5)])
    assert sorted(refused.value.failures) == [2, 3, 4]
    assert all(isinstance(e, PublishNackedError) for e in refused.value.failures.values())
    assert "3 of 5 tasks" in str(refused.value) and "tasks 2, 3, 4: " in str(refused.value)
    assert (await channel.queue_declare(unique, passive=True)).message_count == 2


@pytest.mark.parametrize(
    ("batch", "error", "words"),
    [
        ([{"n": 1}, [2]], ConfigurationError, "task 1 is list, not a mapping"),
        (
            [{"n": 1}, {"n": 2, "when": datetime.datetime(2030, 1, 1)}],
            SerializationError,
            "task 1: 'when' (a datetime): cannot encode as JSON",
        ),
    ],
)
async def test_create_tasks_sends_nothing_when_one_task_is_not_right(
    channel: Channel, unique: str, cleanup: Cleanup, batch: list[Any], error: type, words: str
) -> None:
    await channel.queue_declare(cleanup.queue(unique))
    with pytest.raises(error) as refused:
        await Master(channel).create_tasks(unique, batch)
    assert words in str(refused.value)
    assert (await channel.queue_declare(unique, passive=True)).message_count == 0


async def test_create_tasks_lets_observers_give_each_task_its_own_headers(
    channel: Channel, unique: str, cleanup: Cleanup
) -> None:
    class Numbering(Observer):
        sent = 0

        def on_send(self, kind: Kind, name: str, headers: dict[str, Any]) -> None:
            self.sent += 1
            headers["seq"] = self.sent

    received = await _consumed(channel, cleanup.queue(unique))
    master = Master(channel, observers=[Numbering()])
    await master.create_tasks(unique, [{"n": n} for n in range(3)], headers={"tenant": "acme"})
    await wait_until(lambda: len(received) == 3, 10, "three tasks")
    assert sorted((d.properties.headers or {})["seq"] for d in received) == [1, 2, 3]
    assert {(d.properties.headers or {})["tenant"] for d in received} == {"acme"}
