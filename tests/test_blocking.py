"""The blocking client, used from plain threads against the real broker."""

import asyncio
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from leveret import connect
from leveret.blocking import BlockingClient
from leveret.exceptions import ConnectError, ConnectionClosedError, UnroutableError
from leveret.patterns import RPC, Master
from tests.conftest import AMQP_URL
from tests.support.waiting import wait_until


class Server:
    """A worker and a callee on an event loop in a thread of their own."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.done: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.stop: asyncio.Event | None = None

    def _main(self) -> None:
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        async def task(*, n: int) -> None:
            self.done.append(n)

        async def divide(*, a: float, b: float) -> float:
            return a / b

        self.stop = asyncio.Event()
        async with await connect(AMQP_URL) as connection:
            master = Master(await connection.channel())
            await master.create_worker(
                f"{self.prefix}.task", task, auto_delete=True, dead_letter=False
            )
            rpc = await RPC.create(await connection.channel())
            await rpc.register(f"{self.prefix}.divide", divide, auto_delete=True)
            self.ready.set()
            await self.stop.wait()
            await master.close()
            await rpc.close()

    def __enter__(self) -> "Server":
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


@pytest.fixture
def server(amqp_url: str) -> Iterator[Server]:
    with Server(f"blocking-{uuid.uuid4().hex[:8]}") as running:
        yield running


def test_tasks_and_calls_from_plain_code(server: Server) -> None:
    with BlockingClient(AMQP_URL, timeout=5) as client:
        for n in range(20):
            client.create_task(f"{server.prefix}.task", {"n": n})
        assert client.call(f"{server.prefix}.divide", {"a": 1, "b": 4}) == 0.25
    asyncio.run(wait_until(lambda: len(server.done) == 20, 5, "the twenty tasks"))
    assert sorted(server.done) == list(range(20))


def test_many_threads_share_one_client(server: Server) -> None:
    with BlockingClient(AMQP_URL, timeout=5) as client:

        def work(i: int) -> Any:
            client.create_task(f"{server.prefix}.task", {"n": i})
            return client.call(f"{server.prefix}.divide", {"a": i, "b": 2})

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(64)))
    assert results == [i / 2 for i in range(64)]


def test_errors_are_the_same_as_the_async_api(server: Server) -> None:
    with BlockingClient(AMQP_URL, timeout=5) as client:
        with pytest.raises(ZeroDivisionError):
            client.call(f"{server.prefix}.divide", {"a": 1, "b": 0})
        with pytest.raises(UnroutableError):
            client.create_task(f"{server.prefix}.nobody")
        with pytest.raises(TimeoutError):
            client.call(f"{server.prefix}.divide", {"a": 1, "b": 1}, timeout=0.000001)
    with pytest.raises(ConnectionClosedError):
        client.call(f"{server.prefix}.divide", {"a": 1, "b": 1})
    client.close()


def test_an_unreachable_broker_fails_at_construction_and_leaves_no_thread() -> None:
    before = threading.active_count()
    with pytest.raises(ConnectError, match=r"127\.0\.0\.1:1"):
        BlockingClient("amqp://guest:secret@127.0.0.1:1/")
    assert threading.active_count() == before
