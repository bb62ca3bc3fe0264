"""Asking the live workers what they run right now.

A request goes to ``leveret.control`` with the routing key ``inspect.<app>`` (one
per app among the live workers) and ``reply_to`` an exclusive queue of the
asker's; each worker answers with the tasks it runs. The asker knows from the
registry which workers are alive, so it returns as soon as each has answered,
and names those that did not within the timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

from ..amqp import Delivery
from ..patterns import CONTROL_EXCHANGE, GetChannel
from ._registry import WorkerInfo, inspect_key, read_workers


@dataclasses.dataclass(frozen=True)
class RunningTask:
    """A task a worker runs now; ``running_for`` in seconds."""

    task: str
    message_id: str | None
    attempt: int
    running_for: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What :func:`inspect` found.

    Attributes:
        running: worker id -> the tasks it runs, for every worker that answered.
        workers: the live workers asked, by id.
        missing: the live workers that did not answer in time.
        seconds: how long asking took.
    """

    running: dict[str, list[RunningTask]]
    workers: dict[str, WorkerInfo]
    missing: list[WorkerInfo]
    seconds: float


def answer(worker_id: str, running: list[RunningTask]) -> bytes:
    """A worker's answer to an inspect request."""
    body = {"id": worker_id, "running": [task.as_dict() for task in running]}
    return json.dumps(body, separators=(",", ":")).encode()


def _parse_answer(body: bytes) -> tuple[str, list[RunningTask]] | None:
    try:
        data = json.loads(body)
        running = [
            RunningTask(
                str(item["task"]),
                None if item["message_id"] is None else str(item["message_id"]),
                int(item["attempt"]),
                float(item["running_for"]),
            )
            for item in data["running"]
        ]
        return str(data["id"]), running
    except (ValueError, TypeError, KeyError):
        return None


async def inspect(
    channel: GetChannel,
    app: str | None = None,
    *,
    timeout: float = 2.0,
    workers: Iterable[WorkerInfo] | None = None,
) -> Inspection:
    """Ask every live worker of ``app`` (``None``: of every app) what it runs.

    ``workers`` are the workers known already (by default those the registry
    lists). Returns as soon as each live worker answered, or after ``timeout``
    seconds with those that did not in :attr:`Inspection.missing`.
    """
    started = time.perf_counter()
    known = await read_workers(channel, app) if workers is None else workers
    live = {
        info.id: info
        for info in known
        if info.state() == "alive" and (app is None or info.app == app)
    }
    running: dict[str, list[RunningTask]] = {}
    if not live:
        return Inspection(running, live, [], time.perf_counter() - started)
    correlation = secrets.token_hex(8)
    all_answered = asyncio.get_running_loop().create_future()

    def on_answer(delivery: Delivery) -> None:
        if delivery.properties.correlation_id != correlation:
            return
        parsed = _parse_answer(delivery.body)
        if parsed is None:
            return
        running[parsed[0]] = parsed[1]
        if live.keys() <= running.keys() and not all_answered.done():
            all_answered.set_result(None)

    queue = (await channel.queue_declare("", exclusive=True, auto_delete=True)).queue
    tag = await channel.consume(queue, on_answer, no_ack=True, exclusive=True)
    try:
        for name in sorted({info.app for info in live.values()}):
            await channel.publish(
                b"{}",
                exchange=CONTROL_EXCHANGE,
                routing_key=inspect_key(name),
                reply_to=queue,
                correlation_id=correlation,
                delivery_mode=1,
                expiration=max(1, int(timeout * 1000)),
                content_type="application/json",
                confirm=False,
            )
        try:
            async with asyncio.timeout(timeout):
                await all_answered
        except TimeoutError:
            pass
    finally:
        await channel.cancel(tag)
        await channel.queue_delete(queue)
    missing = [info for worker_id, info in live.items() if worker_id not in running]
    return Inspection(
        {worker_id: running[worker_id] for worker_id in live if worker_id in running},
        live,
        missing,
        time.perf_counter() - started,
    )
