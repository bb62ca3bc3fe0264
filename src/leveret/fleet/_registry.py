"""The fleet on the wire: heartbeats, the registry that keeps the latest of them, and
reading it.

Every worker process sends a heartbeat (JSON, transient, no confirm) to the topic
exchange ``leveret.control`` with the routing key ``heartbeat.<app>.<worker id>``
every ``interval`` seconds, and a last one with ``"state": "stopped"`` when it
stops gracefully. The non-durable queue ``leveret.workers`` is bound to every
heartbeat and keeps each for five intervals (per-message TTL; at most
:data:`REGISTRY_MAX_LENGTH` messages in all): a reader fetches them all with
``basic.get``, keeps the latest per worker and requeues them, so it knows the
fleet at once, without waiting for the next heartbeats.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any, Literal

from ..amqp import Delivery
from ..patterns import CONTROL_EXCHANGE, GetChannel

#: The queue that keeps the latest heartbeats of every worker.
REGISTRY_QUEUE = "leveret.workers"
#: Heartbeats kept in it at most (the oldest are dropped first).
REGISTRY_MAX_LENGTH = 10_000
#: Seconds between heartbeats, unless a worker is given another interval.
DEFAULT_INTERVAL = 2.0
#: A worker not heard from for this many intervals is lost ...
LOST_AFTER = 2
#: ... and for this many, forgotten.
DROPPED_AFTER = 5

#: What a reader makes of a worker: heard within two intervals, not heard since, or
#: said it stopped.
State = Literal["alive", "lost", "stopped"]


def heartbeat_key(app: str, worker_id: str) -> str:
    return f"heartbeat.{app}.{worker_id}"


def inspect_key(app: str | None) -> str:
    """Where an inspect request for ``app`` goes (``None``: every worker)."""
    return "inspect" if app is None else f"inspect.{app}"


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """One worker process as its latest heartbeat describes it.

    Attributes:
        id: ``<host>:<pid>:<6 hex digits>``, stable for the process's life.
        prefetch, attempts: per task, its prefetch and its retry policy's ``max_attempts``.
        counts: tasks ``done``, ``failed``, ``retried``, ``dead_lettered`` (the cancelled
            among them) since the process started; ``done`` the tasks done per task.
        rpc_latency: per RPC method served, ``{"p50": s, "p99": s, "count": n}`` over
            its latest calls.
        sent_at, started_at: epoch seconds.
    """

    id: str
    app: str
    host: str
    pid: int
    version: str
    tasks: list[str]
    rpc: list[str]
    prefetch: dict[str, int]
    attempts: dict[str, int]
    in_flight: int
    counts: dict[str, int]
    done: dict[str, int]
    rpc_latency: dict[str, dict[str, float]]
    started_at: float
    sent_at: float
    interval: float
    stopped: bool

    @classmethod
    def parse(cls, body: bytes) -> WorkerInfo | None:
        """The heartbeat in ``body``; ``None`` if it is not one."""
        try:
            data = json.loads(body)
            return cls(
                id=str(data["id"]),
                app=str(data["app"]),
                host=str(data["host"]),
                pid=int(data["pid"]),
                version=str(data["version"]),
                tasks=[str(task) for task in data["tasks"]],
                rpc=[str(method) for method in data["rpc"]],
                prefetch={str(k): int(v) for k, v in data["prefetch"].items()},
                attempts={str(k): int(v) for k, v in data["attempts"].items()},
                in_flight=int(data["in_flight"]),
                counts={str(k): int(v) for k, v in data["counts"].items()},
                done={str(k): int(v) for k, v in data["done"].items()},
                rpc_latency={
                    str(k): {str(n): float(x) for n, x in v.items()}
                    for k, v in data["rpc_latency"].items()
                },
                started_at=float(data["started_at"]),
                sent_at=float(data["sent_at"]),
                interval=float(data["interval"]),
                stopped=data["state"] == "stopped",
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def encode(self) -> bytes:
        data: dict[str, Any] = dataclasses.asdict(self)
        data["state"] = "stopped" if data.pop("stopped") else "alive"
        return json.dumps(data, separators=(",", ":")).encode()

    def age(self, now: float | None = None) -> float:
        """Seconds since the heartbeat was sent."""
        return max(0.0, (time.time() if now is None else now) - self.sent_at)

    def state(self, now: float | None = None) -> State:
        if self.stopped:
            return "stopped"
        return "lost" if self.age(now) > LOST_AFTER * self.interval else "alive"

    def dropped(self, now: float | None = None) -> bool:
        """Whether a reader forgets it: not heard from for five intervals."""
        return self.age(now) > DROPPED_AFTER * self.interval


async def declare_registry(channel: GetChannel) -> None:
    """The control exchange and the registry queue bound to every heartbeat."""
    await channel.exchange_declare(CONTROL_EXCHANGE, "topic", durable=True)
    await channel.queue_declare(REGISTRY_QUEUE, arguments={"x-max-length": REGISTRY_MAX_LENGTH})
    await channel.queue_bind(REGISTRY_QUEUE, CONTROL_EXCHANGE, "heartbeat.#")


async def read_workers(channel: GetChannel, app: str | None = None) -> list[WorkerInfo]:
    """The workers of ``app`` (``None``: of every app) heard from in the last five
    intervals, each by its latest heartbeat, ordered by app and id.

    The registry is read without being consumed: what is fetched is requeued.
    Two readers at the same instant may each see part of it.
    """
    await declare_registry(channel)
    latest: dict[str, WorkerInfo] = {}
    fetched: list[Delivery] = []
    try:
        while (delivery := await channel.get(REGISTRY_QUEUE)) is not None:
            fetched.append(delivery)
            info = WorkerInfo.parse(delivery.body)
            if info is not None and newer(latest, info):
                latest[info.id] = info
    finally:
        for delivery in fetched:
            if delivery.settled is None and not channel.is_closed:
                delivery.nack(requeue=True)
    now = time.time()
    return sorted(
        (
            info
            for info in latest.values()
            if not info.dropped(now) and (app is None or info.app == app)
        ),
        key=lambda info: (info.app, info.id),
    )


def newer(known: Mapping[str, WorkerInfo], heard: WorkerInfo) -> bool:
    """Whether ``heard`` is newer than what ``known`` holds for its worker."""
    seen = known.get(heard.id)
    return seen is None or seen.sent_at <= heard.sent_at
