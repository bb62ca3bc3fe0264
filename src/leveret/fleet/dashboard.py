"""The fleet's live web dashboard (``pip install 'leveret[dashboard]'``, on aiohttp).

``leveret dashboard`` serves one page that updates itself through server-sent
events: the queues of the live workers' tasks (ready messages, consumers, rates),
their retry and delay depths, their dead-letter queues with the reasons and a
replay button, the workers with their heartbeat age and the tasks each runs now
(each with a cancel button), and the RPC methods' latency p50/p99. It keeps no
state beyond the broker's: the workers come from the registry and the
heartbeats, everything else is asked of the broker at each refresh. If
RabbitMQ's management plugin answers, unacked counts and the broker's rates
are shown too; otherwise the page says they are not.

It binds to 127.0.0.1 unless told otherwise; any other address needs a token
(given once as ``?token=``, then kept in a same-site cookie). Every action is a
POST of JSON carrying the page's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from ..amqp import Delivery
from ..exceptions import AMQPError, ConfigurationError, LeveretError, NotFoundError
from ..patterns import (
    CONTROL_EXCHANGE,
    dead_letter_queue,
    delay_queues,
    list_dead_letters,
    publish_revocation,
    replay_dead_letters,
)
from ._agent import ControlChannel, ControlConnection
from ._inspect import inspect
from ._registry import WorkerInfo, newer, read_workers

log = logging.getLogger("leveret.fleet")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Seconds between two looks at the broker.
REFRESH = 1.0
_COOKIE = "leveret_dashboard"


class Management:
    """RabbitMQ's management API, for what AMQP does not tell (unacked, rates)."""

    def __init__(self, url: str, user: str, password: str, vhost: str) -> None:
        self.url = url.rstrip("/")
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {credentials}"}  # never logged or shown
        self._vhost = vhost
        self._session: ClientSession | None = None

    async def queues(self) -> dict[str, dict[str, Any]] | None:
        """Queue name -> its management fields; ``None`` if the API does not answer."""
        if self._session is None:
            self._session = ClientSession(headers=self._headers, timeout=ClientTimeout(total=2))
        vhost = "%2F" if self._vhost == "/" else self._vhost
        try:
            async with self._session.get(f"{self.url}/api/queues/{vhost}") as response:
                if response.status != 200:
                    return None
                found: list[dict[str, Any]] = await response.json()
        except (ClientError, TimeoutError, ValueError):
            return None
        return {queue["name"]: queue for queue in found if "name" in queue}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _rate(stats: dict[str, Any], name: str) -> float | None:
    details = stats.get(f"{name}_details")
    return float(details["rate"]) if isinstance(details, dict) and "rate" in details else None


class Board:
    """What the page shows, refreshed from the broker every :data:`REFRESH` seconds."""

    def __init__(
        self,
        connection: ControlConnection,
        app: str | None,
        management: Management | None,
    ) -> None:
        self.connection = connection
        self.app = app
        self.management = management
        self.workers: dict[str, WorkerInfo] = {}
        self.snapshot: dict[str, Any] = {}
        self.changed = asyncio.Event()
        self._channel: ControlChannel | None = None
        self._done: dict[str, tuple[float, int]] = {}  # task -> (when, tasks done by then)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the registry, follow the heartbeats and start refreshing.

        Raises:
            AMQPError: the broker cannot be reached or refused.
        """
        listen: ControlChannel = await self.connection.channel(publisher_confirms=False)
        for info in await read_workers(listen, self.app):
            self.workers[info.id] = info
        queue = (await listen.queue_declare("", exclusive=True, auto_delete=True)).queue
        await listen.queue_bind(queue, CONTROL_EXCHANGE, "heartbeat.#")
        await listen.consume(queue, self._heard, no_ack=True, exclusive=True)
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._refreshing())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.management is not None:
            await self.management.close()

    def _heard(self, delivery: Delivery) -> None:
        info = WorkerInfo.parse(delivery.body)
        mine = info is not None and (self.app is None or info.app == self.app)
        if info is not None and mine and newer(self.workers, info):
            self.workers[info.id] = info

    async def _refreshing(self) -> None:
        while True:
            await asyncio.sleep(REFRESH)
            await self.refresh()

    async def channel(self) -> ControlChannel:
        """The channel the board asks on (a new one after the broker closed it)."""
        if self._channel is None or self._channel.is_closed:
            self._channel = await self.connection.channel()
        return self._channel

    async def refresh(self) -> None:
        try:
            self.snapshot = await self._look()
        except (AMQPError, LeveretError) as exc:
            self.snapshot = {**self.snapshot, "error": f"the broker: {exc}"}
        self.changed.set()
        self.changed = asyncio.Event()

    async def _depth(self, queue: str) -> tuple[int, int] | None:
        """(ready, consumers) of ``queue``; ``None`` if it does not exist."""
        channel = await self.channel()
        try:
            ok = await channel.queue_declare(queue, passive=True)
        except NotFoundError:
            return None
        return ok.message_count, ok.consumer_count

    async def _look(self) -> dict[str, Any]:
        now = time.time()
        for worker_id in [w for w, info in self.workers.items() if info.dropped(now)]:
            del self.workers[worker_id]
        workers = sorted(self.workers.values(), key=lambda info: (info.app, info.id))
        tasks = sorted({task for info in workers for task in info.tasks})
        found = await inspect(await self.channel(), self.app, timeout=1.0, workers=workers)
        managed = await self.management.queues() if self.management is not None else None
        queues, dead = [], []
        for task in tasks:
            depth = await self._depth(task)
            done = sum(info.done.get(task, 0) for info in workers)
            # Delayed copies (delayed tasks and retries) wait in the task's ladder
            # queues, declared all at once: none if its lowest level is missing.
            levels = delay_queues(task)
            delayed = 0
            if await self._depth(levels[-1]) is not None:
                for level in levels:
                    depth_of_level = await self._depth(level)
                    delayed += depth_of_level[0] if depth_of_level else 0
            row: dict[str, Any] = {
                "name": task,
                "ready": depth[0] if depth else None,
                "consumers": depth[1] if depth else None,
                "done_rate": self._done_rate(task, now, done),
                "delayed": delayed,
            }
            stats = (managed or {}).get(task)
            if stats is not None:
                message_stats = stats.get("message_stats", {})
                row["unacked"] = stats.get("messages_unacknowledged")
                row["in_rate"] = _rate(message_stats, "publish")
                row["out_rate"] = _rate(message_stats, "ack")
            queues.append(row)
            letters = await self._depth(dead_letter_queue(task))
            reasons: Counter[str] = Counter()
            if letters and letters[0]:
                with contextlib.suppress(NotFoundError):
                    for letter in await list_dead_letters(await self.channel(), task, limit=100):
                        error = letter.exception_type
                        why = f" ({error}: {letter.exception_message})" if error else ""
                        reasons[letter.reason + why] += 1
            dead.append(
                {
                    "task": task,
                    "queue": dead_letter_queue(task),
                    "count": letters[0] if letters else 0,
                    "reasons": reasons.most_common(5),
                }
            )
        rpc = [
            {"worker": info.id, "method": method, **latency}
            for info in workers
            for method, latency in sorted(info.rpc_latency.items())
        ]
        return {
            "app": self.app,
            "at": now,
            "workers": [
                {
                    "id": info.id,
                    "app": info.app,
                    "state": info.state(now),
                    "age": info.age(now),
                    "in_flight": info.in_flight,
                    "counts": info.counts,
                    "tasks": info.tasks,
                    "rpc": info.rpc,
                    "running": [task.as_dict() for task in found.running.get(info.id, [])],
                    "answered": info.id in found.running,
                }
                for info in workers
            ],
            "queues": queues,
            "dead_letters": dead,
            "rpc": rpc,
            "management": managed is not None,
            "not_shown": None
            if managed is not None
            else (
                "unacked counts and the broker's in/out rates: RabbitMQ's management plugin "
                + (
                    f"does not answer at {self.management.url}"
                    if self.management is not None
                    else "was not given (--management URL)"
                )
                + "; the rate shown is tasks done per second, from the heartbeats"
            ),
        }

    def _done_rate(self, task: str, now: float, done: int) -> float | None:
        before = self._done.get(task)
        self._done[task] = (now, done)
        if before is None or now <= before[0]:
            return None
        return max(0.0, (done - before[1]) / (now - before[0]))

    async def replay(self, task: str) -> int:
        return await replay_dead_letters(await self.channel(), task)

    async def cancel(self, task: str, message_id: str) -> None:
        await publish_revocation(await self.channel(), task, message_id)


def _page(csrf: str) -> str:
    html = resources.files(__package__).joinpath("dashboard.html").read_text()
    return html.replace("{{csrf}}", csrf)


def make_app(board: Board, *, token: str | None = None) -> web.Application:
    """The dashboard's web application over ``board``; with ``token``, every request
    must carry it."""
    csrf = secrets.token_urlsafe(24)

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if token is not None:
            given = request.query.get("token") or request.cookies.get(_COOKIE, "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise web.HTTPUnauthorized(text="a token is needed: open the page with ?token=")
            if "token" in request.query:  # out of the address bar, into a cookie
                found = web.HTTPFound(request.path)
                found.set_cookie(_COOKIE, token, httponly=True, samesite="Strict")
                raise found
        if request.method == "POST":
            sent = request.headers.get("X-CSRF-Token", "")
            if not hmac.compare_digest(sent.encode(), csrf.encode()):
                raise web.HTTPForbidden(text="missing or wrong X-CSRF-Token")
            if request.content_type != "application/json":
                raise web.HTTPUnsupportedMediaType(text="actions are JSON")
        response: web.StreamResponse = await handler(request)
        return response

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=_page(csrf), content_type="text/html")

    async def state(request: web.Request) -> web.Response:
        return web.json_response(board.snapshot)

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            while True:
                await response.write(f"data: {json.dumps(board.snapshot)}\n\n".encode())
                await board.changed.wait()
        except ConnectionResetError:  # the page was closed
            return response

    async def action(request: web.Request, run: Callable[[dict[str, Any]], Any]) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("not an object")
            result = await run(body)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        except (AMQPError, LeveretError) as exc:
            return web.json_response({"error": str(exc)}, status=502)
        await board.refresh()
        return web.json_response(result)

    async def replay(request: web.Request) -> web.Response:
        async def run(body: dict[str, Any]) -> dict[str, Any]:
            return {"replayed": await board.replay(str(body["task"]))}

        return await action(request, run)

    async def cancel(request: web.Request) -> web.Response:
        async def run(body: dict[str, Any]) -> dict[str, Any]:
            await board.cancel(str(body["task"]), str(body["message_id"]))
            return {"cancelled": body["message_id"]}

        return await action(request, run)

    app = web.Application(middlewares=[guard])
    app.router.add_get("/", page)
    app.router.add_get("/state", state)
    app.router.add_get("/events", events)
    app.router.add_post("/replay", replay)
    app.router.add_post("/cancel", cancel)
    return app


@contextlib.asynccontextmanager
async def serve_dashboard(
    connection: ControlConnection,
    app: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    management: Management | None = None,
) -> AsyncIterator[str]:
    """Serve the dashboard for the block; yields its address.

    Raises:
        ConfigurationError: ``host`` is not a loopback address and no ``token`` is given.
        OSError: the port is taken.
    """
    if host not in LOCAL_HOSTS and not token:
        raise ConfigurationError(
            f"the dashboard binds to {host} only with a token (--token): anyone who "
            "reaches it could replay and cancel tasks"
        )
    board = Board(connection, app, management)
    await board.start()
    runner = web.AppRunner(make_app(board, token=token), handle_signals=False)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        yield f"http://{'127.0.0.1' if host in LOCAL_HOSTS else host}:{bound}/"
    finally:
        await runner.cleanup()
        await board.close()
