"""The pytest plugin, as a user meets it: a test file of theirs run in a sub-session.

The sub-session has no conftest: the fixtures come from the ``pytest11`` entry
point alone. It runs in pytest-asyncio's strict mode, so the fixtures are shown
to work without ``asyncio_mode = auto``.
"""

import pytest

USER_TESTS = """
import asyncio

import pytest

from leveret.patterns import RetryPolicy, current_task
from leveret.testing import connect_memory, drain

pytestmark = pytest.mark.asyncio


async def test_tasks_run_and_retry(leveret_master):
    done = []

    async def resize(*, path):
        if current_task().attempt == 1 and path == "b.png":
            raise OSError("disk busy")
        done.append(path)

    policy = RetryPolicy(max_attempts=2, backoff=0.01)
    await leveret_master.create_worker("images.resize", resize, retries=policy)
    await leveret_master.proxy.images.resize(path="a.png")
    await leveret_master.create_task("images.resize", kwargs={"path": "b.png"})
    await drain(leveret_master)
    assert sorted(done) == ["a.png", "b.png"]


async def test_rpc_calls_come_back(leveret_rpc):
    async def multiply(*, x, y):
        return x * y

    await leveret_rpc.register("multiply", multiply)
    assert await leveret_rpc.proxy.multiply(x=6, y=7) == 42
    with pytest.raises(TypeError, match="missing argument y"):
        await leveret_rpc.call("multiply", {"x": 1})


async def test_code_under_test_reaches_the_broker_by_url(
    leveret_url, leveret_broker, leveret_channel
):
    async with await connect_memory(leveret_url) as app_connection:  # as the app would
        await (await app_connection.channel()).queue_declare("app.queue")
    assert "app.queue" in leveret_broker.queues
    ok = await leveret_channel.queue_declare("app.queue", passive=True)
    assert ok.message_count == 0


async def test_the_fixtures_come_from_the_entry_point(request):
    from leveret.testing import pytest_plugin

    assert request.config.pluginmanager.get_plugin("leveret") is pytest_plugin


@pytest.mark.parametrize("run", [1, 2])
async def test_each_test_gets_a_fresh_broker(leveret_channel, leveret_broker, run):
    assert dict(leveret_broker.queues) == {}
    await leveret_channel.queue_declare("left.behind")
    await leveret_channel.publish(b"x", routing_key="left.behind")
"""

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""


def test_user_tests_run_master_worker_and_rpc_on_the_plugins_fixtures(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
