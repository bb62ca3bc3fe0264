"""App: decorators, handles, where it connects, and testing an app's own code.

The command line that serves an App is tested in tests/cli.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from leveret import App, RejectMessage, connect
from leveret.exceptions import ConfigurationError
from leveret.patterns import RPC, delay_queues
from leveret.testing import MemoryBroker, drain
from tests.support.waiting import wait_until

#: One App for the whole module, as users declare theirs: each test has its own
#: event loop, and the app must serve every one of them.
shared = App(prefix="shared")
shared_done: list[int] = []


@shared.task
async def record(*, n: int) -> None:
    shared_done.append(n)


@shared.rpc
async def double(*, x: int) -> int:
    return 2 * x


def _app() -> App:
    return App(prefix=f"app-{uuid.uuid4().hex[:8]}")


async def test_handles_are_plain_callables_and_reach_workers_started_by_the_app(
    amqp_url: str,
) -> None:
    app = App(amqp_url, prefix=f"app-{uuid.uuid4().hex[:8]}")
    seen: list[str] = []

    @app.task()
    async def greet(*, name: str) -> None:
        seen.append(name)

    @app.rpc()
    async def shout(*, word: str) -> str:
        return word.upper()

    await greet(name="local")  # the plain functions, as a unit test would call them
    assert await shout(word="local") == "LOCAL"
    async with await connect(amqp_url) as serving, app:
        master, rpc = await app.start(serving)
        await greet.send(name="remote")
        assert await shout.call(word="hi") == "HI"
        await wait_until(lambda: seen == ["local", "remote"], 5, "the remote task")
        with pytest.raises(TypeError, match="keyword arguments only"):
            await greet.send("positional")  # type: ignore[call-arg]
        await master.close()
        await rpc.close()
        channel = await serving.channel()
        for queue in (greet.name, f"{greet.name}.dlq", *delay_queues(greet.name), shout.name):
            await channel.queue_delete(queue)


def test_decorators_work_with_and_without_parentheses() -> None:
    app = App(prefix="shop")

    @app.task
    def bare_task(*, n: int) -> int:
        return n

    @app.task(name="named", prefetch_count=3)
    def task_with_options(*, n: int) -> int:
        return n

    @app.rpc
    def bare_rpc(*, n: int) -> int:
        return -n

    @app.rpc(name="negate")
    def rpc_with_options(*, n: int) -> int:
        return -n

    assert sorted(app.tasks) == ["shop.bare_task", "shop.named"]
    assert sorted(app.rpcs) == ["shop.bare_rpc", "shop.negate"]
    assert app.tasks["shop.named"].options["prefetch_count"] == 3
    assert (bare_task(n=1), task_with_options(n=2), bare_rpc(n=3), rpc_with_options(n=4)) == (
        1,
        2,
        -3,
        -4,
    )


def test_a_name_declared_twice_is_refused() -> None:
    app = App()

    @app.task()
    def same() -> None: ...

    with pytest.raises(ConfigurationError, match="declared twice"):

        @app.rpc(name="same")
        def other() -> None: ...


@pytest.mark.parametrize(
    ("func", "problem"),
    [
        (lambda order, /: None, "positional-only parameters \\(order, before a /\\)"),
        (lambda *orders: None, "takes only positional arguments \\(\\*args\\)"),
    ],
)
def test_functions_that_cannot_take_keyword_arguments_are_refused_when_declared(
    func: Any, problem: str
) -> None:
    app = App()
    with pytest.raises(ConfigurationError, match=problem):
        app.task(name="t")(func)
    with pytest.raises(ConfigurationError, match=problem):
        app.rpc(name="r")(func)
    assert not app.tasks and not app.rpcs


async def test_a_send_or_call_that_does_not_fit_the_signature_is_refused_before_sending() -> None:
    app = _app()

    @app.task
    async def send_receipt(*, order: int, email: str) -> None: ...

    @app.rpc
    def price(*, sku: str, quantity: int = 1) -> float:
        return 9.5 * quantity

    async with app.testing() as running:
        with pytest.raises(TypeError) as refused:
            await send_receipt.send(orderr=1, email="a@example.com")  # type: ignore[call-arg]
        assert str(refused.value) == (
            f"{send_receipt.name}.send(): missing argument order; unexpected argument orderr; "
            "the function is send_receipt(*, order: int, email: str) -> None"
        )
        with pytest.raises(TypeError, match=r"\.call\(\): missing argument sku; the function"):
            await price.call(quantity=2)  # type: ignore[call-arg]
        assert running.broker.queues[send_receipt.name].message_count == 0
        assert await price.call(sku="x") == 9.5


async def test_an_rpc_handle_can_be_registered_as_the_function_it_wraps(
    leveret_rpc: RPC,
) -> None:
    app = _app()

    @app.rpc
    async def square(*, x: int) -> int:
        return x * x

    await leveret_rpc.register("square", square)  # the handle, not square.func
    assert await leveret_rpc.call("square", {"x": 7}, timeout=2) == 49


async def test_the_app_reads_amqp_url_when_it_connects_not_when_it_is_made(
    monkeypatch: pytest.MonkeyPatch, leveret_url: str, leveret_broker: MemoryBroker
) -> None:
    app = App(prefix="env")
    runs: list[int] = []

    @app.task
    async def count(*, n: int) -> None:
        runs.append(n)

    monkeypatch.setenv("AMQP_URL", leveret_url)  # after the App was made
    assert app.url == leveret_url
    async with await leveret_broker.connect() as serving, app:
        master, rpc = await app.start(serving)
        await count.send(n=1)  # RabbitMQ has no worker for it: this reached the test's broker
        await drain(master)
        assert runs == [1]
        await master.close()
        await rpc.close()


@pytest.mark.parametrize("run", [1, 2])
async def test_an_app_is_tested_on_an_in_memory_broker_of_its_own_test_after_test(
    run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")  # never reached
    shared_done.clear()
    async with shared.testing() as running:
        assert shared.url == running.url and running.url.startswith("memory://")
        for n in range(5):
            await record.send(n=n * run)
        await running.drain()
        assert await double.call(x=21) == 42
    assert sorted(shared_done) == [n * run for n in range(5)]
    assert shared.url == "amqp://guest:guest@127.0.0.1:1/"  # as before the block


async def test_a_task_that_rejects_its_input_ends_in_the_dead_letter_queue_of_the_test_broker() -> (
    None
):
    app = _app()

    @app.task
    async def charge(*, amount: int) -> None:
        if amount < 0:
            raise RejectMessage()

    async with app.testing() as running:
        await charge.send(amount=5)
        await charge.send(amount=-1)
        await running.drain()
        letters = await running.dead_letters(charge)
    assert [letter.body for letter in letters] == [b'{"amount":-1}']
    assert letters[0].reason == "rejected by the task function"


def test_an_app_is_named_after_its_prefix_unless_named() -> None:
    assert App(prefix="shop").name == "shop"
    assert App(prefix="shop", name="billing").name == "billing"
    assert App().name == "leveret"


async def test_connect_and_connect_robust_reach_the_in_memory_broker() -> None:
    from leveret import connect_robust

    async with await connect("memory://app-test") as serving:
        callee = await RPC.create(await serving.channel())
        await callee.register("double", lambda *, x: 2 * x)
        async with await connect_robust("memory://app-test") as client:
            caller = await RPC.create(await client.channel())
            assert await caller.call("double", {"x": 21}) == 42


async def test_send_many_queues_every_task_and_refuses_a_misfit_before_sending_any() -> None:
    app = _app()
    done: list[int] = []

    @app.task
    async def resize(*, image_id: int, width: int = 640) -> None:
        done.append(image_id)

    async with app.testing() as running:
        await resize.send_many({"image_id": n} for n in range(300))
        await running.drain()
        assert sorted(done) == list(range(300))
        with pytest.raises(TypeError) as refused:
            await resize.send_many([{"image_id": 1}, {"image": 2}])
        assert str(refused.value) == (
            f"task 1: {resize.name}.send_many(): missing argument image_id; unexpected "
            "argument image; the function is resize(*, image_id: int, width: int = 640) -> None"
        )
        assert running.broker.queues[resize.name].message_count == 0
