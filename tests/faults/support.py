"""What fault tests share: counting tasks by id, a task stream, looking into queues.

A :class:`Ledger` holds the ids whose ``create_task`` returned (confirmed by the
broker), the ids whose ``create_task`` raised (the broker may or may not have
taken them), and how many times each id was processed. Its :meth:`~Ledger.figures`
are what the fault report records for every test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from leveret.amqp import RobustConnection, connect, connect_robust
from leveret.exceptions import AMQPError, NotFoundError
from leveret.patterns import Master, current_task
from tests.support.brokers import PrivateNode


async def robust(url: str | list[str], **options: Any) -> RobustConnection:
    """A robust connection that retries fast, so outages in tests stay short."""
    options.setdefault("reconnect_interval", 0.05)
    options.setdefault("max_reconnect_interval", 0.5)
    options.setdefault("connection_timeout", 1)
    options.setdefault("reconnect_timeout", 60)
    return await connect_robust(url, **options)


@dataclasses.dataclass
class Ledger:
    """Task ids sent, confirmed, and processed."""

    confirmed: set[int] = dataclasses.field(default_factory=set)
    unconfirmed: set[int] = dataclasses.field(default_factory=set)
    publish_errors: Counter[str] = dataclasses.field(default_factory=Counter)
    runs: Counter[int] = dataclasses.field(default_factory=Counter)
    #: Tasks that ran at least once as a redelivery (the broker gave them out again).
    redelivered: set[int] = dataclasses.field(default_factory=set)

    def processed(self, task_id: int) -> None:
        """Count one finished run of ``task_id``."""
        self.runs[task_id] += 1

    @property
    def lost(self) -> set[int]:
        """Confirmed tasks nobody processed."""
        return self.confirmed - self.runs.keys()

    @property
    def duplicated(self) -> set[int]:
        """Tasks processed more than once."""
        return {task_id for task_id, runs in self.runs.items() if runs > 1}

    @property
    def duplicates(self) -> int:
        """Runs beyond the first, over all tasks."""
        return sum(runs - 1 for runs in self.runs.values())

    def all_confirmed_processed(self) -> bool:
        return self.confirmed <= self.runs.keys()

    def figures(self) -> dict[str, Any]:
        """The counts the fault report records."""
        return {
            "sent": len(self.confirmed) + len(self.unconfirmed),
            "confirmed": len(self.confirmed),
            "unconfirmed": len(self.unconfirmed),
            "processed": len(self.runs),
            "runs": sum(self.runs.values()),
            "duplicates": self.duplicates,
            "lost": len(self.lost),
            "max_runs": max(self.runs.values(), default=0),
            "redelivered": len(self.redelivered),
            "publish_errors": dict(self.publish_errors),
        }


def recording_task(ledger: Ledger, seconds: float) -> Callable[..., Awaitable[None]]:
    """A task function that takes ``seconds`` and then counts its run in ``ledger``."""

    async def task(*, task_id: int) -> None:
        await asyncio.sleep(seconds)
        info = current_task()
        # A classic queue's redelivery is counted by leveret; a quorum queue counts its own.
        if info.redeliveries or info.headers.get("x-delivery-count"):
            ledger.redelivered.add(task_id)
        ledger.processed(task_id)

    return task


async def publish_until(
    master: Master,
    queue: str,
    ledger: Ledger,
    stop: asyncio.Event,
    *,
    concurrency: int = 8,
    limit: int | None = None,
    first: int = 0,
) -> None:
    """Create tasks ``{"task_id": n}`` (``n`` from ``first`` on) with ``concurrency`` in
    flight until ``stop`` is set (or ``limit`` tasks were sent), recording each in ``ledger``.

    A ``create_task`` that raises a client error is recorded as unconfirmed, by
    error type, and the stream goes on (as a producer that logs and carries on
    would); any other exception ends the stream and is raised.
    """
    ids: Iterator[int] = (
        iter(range(first, first + limit)) if limit is not None else itertools.count(first)
    )

    async def publisher() -> None:
        for task_id in ids:
            if stop.is_set():
                return
            try:
                await master.create_task(queue, {"task_id": task_id})
            except AMQPError as exc:
                ledger.unconfirmed.add(task_id)
                ledger.publish_errors[type(exc).__name__] += 1
            else:
                ledger.confirmed.add(task_id)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(publisher())


async def declared(url: str | list[str], queue: str) -> tuple[int, int]:
    """``(message_count, consumer_count)`` of ``queue`` from a passive declare.

    ``message_count`` counts ready messages only: unacked ones are not in it.
    """
    async with await connect(url) as conn:
        ok = await (await conn.channel()).queue_declare(queue, passive=True)
        return ok.message_count, ok.consumer_count


def broker_counts(queue: str, node: PrivateNode | None = None) -> tuple[int, int]:
    """``(ready, unacked)`` of ``queue`` as ``rabbitmqctl list_queues`` reports them.

    On the shared broker unless ``node`` is given (reading only: never changes it).
    """
    args = ["list_queues", "name", "messages_ready", "messages_unacknowledged"]
    args += ["--no-table-headers", "-q"]
    if node is not None:
        out = node.ctl(*args).stdout
    else:
        out = subprocess.run(
            ["rabbitmqctl", *args], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    for line in out.splitlines():
        fields = line.split("\t")
        if fields[0] == queue:
            return int(fields[1]), int(fields[2])
    raise AssertionError(f"queue {queue!r} is not listed: {out[:2000]!r}")


async def settled_and_empty(queue: str, node: PrivateNode | None = None) -> bool:
    """Whether ``queue`` holds nothing: no ready message and none unacked."""
    return await asyncio.to_thread(broker_counts, queue, node) == (0, 0)


async def delete_queues(url: str | list[str], names: Iterable[str]) -> None:
    """Delete queues (missing ones are fine) over a connection of its own."""
    async with await connect(url) as conn:
        channel = await conn.channel()
        for name in names:
            try:
                await channel.queue_delete(name)
            except NotFoundError:
                channel = await conn.channel()


def read_log(path: Path) -> list[list[str]]:
    """The lines of a process log, split into fields (a line cut by a kill is dropped)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.split() for line in text.splitlines(keepends=True) if line.endswith("\n")]


def runs_in(path: Path) -> list[int]:
    """Task ids of the ``done`` lines of a worker log, in order."""
    return [int(fields[1]) for fields in read_log(path) if fields[0] == "done"]
