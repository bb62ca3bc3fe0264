"""What guards the dashboard's actions, and what it shows from the management API."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from leveret.exceptions import ConfigurationError
from leveret.fleet import Agent
from leveret.fleet.dashboard import Board, Management, serve_dashboard
from leveret.patterns import Master, RetryPolicy
from tests.fleet.conftest import Cleanup
from tests.support.waiting import wait_until

TOKEN = "a-token-long-enough-for-the-test"


async def _csrf(session: aiohttp.ClientSession, address: str) -> str:
    async with session.get(address) as response:
        page = await response.text()
    return page.split('name="csrf-token" content="')[1].split('"')[0]


async def test_an_action_without_the_pages_csrf_token_is_refused(connection: Any) -> None:
    async with (
        serve_dashboard(connection, "guarded", port=0) as address,
        aiohttp.ClientSession() as session,
    ):
        async with session.post(address + "replay", json={"task": "x"}) as response:
            assert response.status == 403
            assert "X-CSRF-Token" in await response.text()
        headers = {"X-CSRF-Token": await _csrf(session, address)}
        form = {"task": "x"}
        async with session.post(address + "replay", data=form, headers=headers) as response:
            assert response.status == 415  # a form from another site is not JSON
        async with session.post(address + "cancel", json={}, headers=headers) as response:
            assert response.status == 400


async def test_with_a_token_nothing_is_served_to_who_lacks_it(connection: Any) -> None:
    # A browser keeps a cookie of 127.0.0.1; aiohttp's client only when told to.
    jar = aiohttp.CookieJar(unsafe=True)
    async with (
        serve_dashboard(connection, "guarded", port=0, token=TOKEN) as address,
        aiohttp.ClientSession(cookie_jar=jar) as session,
    ):
        async with session.get(address + "state") as response:
            assert response.status == 401
        async with session.get(address + f"?token={TOKEN}") as response:
            assert response.status == 200 and str(response.url) == address  # out of the URL
        async with session.get(address + "state") as response:  # the cookie carries it
            assert response.status == 200


async def test_binding_another_address_than_loopback_needs_a_token(connection: Any) -> None:
    with pytest.raises(ConfigurationError, match="only with a token"):
        async with serve_dashboard(connection, host="0.0.0.0", port=0):
            pass


@pytest.mark.rabbitmq_only
async def test_the_board_shows_unacked_and_rates_when_the_management_api_answers(
    connection: Any, cleanup: Cleanup, revoked: list[str]
) -> None:
    task = cleanup.queue(f"board-{uuid.uuid4().hex[:10]}")
    revoked.append(task)
    seen: list[str] = []

    async def queues(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        stats = {"publish_details": {"rate": 12.5}, "ack_details": {"rate": 11.0}}
        return web.json_response(
            [{"name": task, "messages_unacknowledged": 3, "message_stats": stats}]
        )

    api = web.Application()
    api.router.add_get("/api/queues/{vhost}", queues)
    runner = web.AppRunner(api)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    master = Master(await connection.channel())

    async def work(n: int) -> None:
        return None

    app = f"board-{uuid.uuid4().hex[:6]}"
    try:
        async with Agent(connection, app, interval=60) as agent:
            agent.attach(master)
            await master.create_worker(task, work)
            await agent.start()
            board = Board(connection, app, Management(f"http://127.0.0.1:{port}", "u", "p", "/"))
            await board.start()
            [row] = board.snapshot["queues"]
            await board.close()
            await master.close()
    finally:
        await runner.cleanup()
    assert (row["unacked"], row["in_rate"], row["out_rate"]) == (3, 12.5, 11.0)
    assert board.snapshot["not_shown"] is None and seen[0].startswith("Basic ")


async def test_the_board_shows_a_task_waiting_for_its_retry_and_its_dead_letters(
    connection: Any, cleanup: Cleanup
) -> None:
    task = cleanup.queue(f"board-{uuid.uuid4().hex[:10]}")
    master = Master(await connection.channel())

    async def broken(n: int) -> None:
        raise RuntimeError(f"broken {n}")

    app = f"board-{uuid.uuid4().hex[:6]}"
    async with Agent(connection, app, interval=60) as agent:
        agent.attach(master)
        await agent.start()  # nothing attached yet: no revocation queue to read
        await master.create_worker(task, broken, retries=RetryPolicy(max_attempts=2, backoff=60))
        await master.create_worker(f"{task}-once", broken)
        cleanup.queue(f"{task}-once")
        await master.create_task(task, {"n": 1})
        await master.create_task(f"{task}-once", {"n": 2})
        await agent.beat()
        board = Board(connection, app, None)
        await board.start()

        async def shown() -> dict[str, Any] | None:
            await board.refresh()
            rows = {row["name"]: row for row in board.snapshot["queues"]}
            letters = {row["task"]: row for row in board.snapshot["dead_letters"]}
            waiting = rows.get(task, {}).get("delayed") == 1
            once: dict[str, Any] = letters.get(f"{task}-once", {})
            return once if waiting and once.get("count") == 1 else None

        letters = await wait_until(shown, 10, "a retry waiting and a dead letter")
        await board.close()
        await master.close()
    [(reason, count)] = letters["reasons"]
    assert count == 1 and "RuntimeError: broken 2" in reason
    assert "management plugin was not given" in board.snapshot["not_shown"]
