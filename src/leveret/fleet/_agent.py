"""The fleet agent of one worker process: heartbeats, inspect answers, cancels.

An :class:`Agent` reports on the Masters and RPCs it is attached to. On its own
channel (no publisher confirms: control traffic never waits for the broker, and
never delays task traffic) it sends a heartbeat every ``interval`` seconds, and
consumes an exclusive queue bound to the inspect requests of its app and to
every live revocation. Its counts and the RPC latencies are those the workers
and callees keep themselves (a dict increment per delivery): it adds nothing to
the path of a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable
from typing import Any, Protocol

from .._version import __version__
from ..amqp import AsyncClosing, Delivery
from ..exceptions import AMQPError
from ..patterns import (
    ATTEMPT_HEADER,
    CONTROL_EXCHANGE,
    RPC,
    GetChannel,
    Master,
    Outcome,
    cancel_routing_key,
    load_revocations,
    parse_revocation,
    revocations,
)
from ._inspect import RunningTask, answer
from ._registry import (
    DEFAULT_INTERVAL,
    DROPPED_AFTER,
    WorkerInfo,
    declare_registry,
    heartbeat_key,
    inspect_key,
)

log = logging.getLogger("leveret.fleet")

#: The outcomes a heartbeat counts, by the names it gives them.
_COUNTED: dict[Outcome, str] = {
    "succeeded": "done",
    "failed": "failed",
    "retried": "retried",
    "dead_lettered": "dead_lettered",
}

#: The agents running in this process (a serve() hook leaves their services alone).
agents: list[Agent] = []


def new_worker_id() -> str:
    """A worker's id in the fleet: ``<host>:<pid>:<6 random hex digits>`` (a process
    restarted with the same pid is another worker)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class ControlChannel(GetChannel, Protocol):
    """The agent's own channel: the patterns' seam, and closing it."""

    async def close(self) -> None: ...


class ControlConnection(Protocol):
    """What an agent opens its channel on (a leveret connection, either broker)."""

    async def channel(self, *, publisher_confirms: bool = True) -> Any: ...


class Agent(AsyncClosing):
    """Announces this process's workers and answers for them (see the module).

    ``async with Agent(connection, "shop") as agent:`` starts and stops it; or
    :meth:`start` and :meth:`close`.
    """

    def __init__(
        self, connection: ControlConnection, app: str, *, interval: float = DEFAULT_INTERVAL
    ) -> None:
        self.connection = connection
        self.app = app
        self.interval = interval
        #: Stable for the agent's life (one per ``leveret run`` process).
        self.id = new_worker_id()
        self.masters: list[Master] = []
        self.rpcs: list[RPC] = []
        self.started_at = time.time()
        self._channel: ControlChannel | None = None
        self._beating: asyncio.Task[None] | None = None

    def attach(self, *services: Master | RPC) -> None:
        """Report on these Masters and RPCs (their workers and callees as they are
        at each heartbeat)."""
        for service in services:
            if isinstance(service, Master) and service not in self.masters:
                self.masters.append(service)
            elif isinstance(service, RPC) and service not in self.rpcs:
                self.rpcs.append(service)

    def reports_on(self, service: object) -> bool:
        return service in self.masters or service in self.rpcs

    async def start(self, tasks: Iterable[str] = ()) -> None:
        """Open the control channel, read the revocations of ``tasks`` and of the
        tasks attached so far, answer requests and start the heartbeats.

        Start it before the workers consume, so that no revoked task starts.

        Raises:
            AMQPError: the broker refused a declaration or the connection is gone.
        """
        channel: ControlChannel = await self.connection.channel(publisher_confirms=False)
        self._channel = channel
        await declare_registry(channel)
        for task in sorted({*tasks, *self._tasks()}):
            await load_revocations(channel, task)
        queue = (await channel.queue_declare("", exclusive=True, auto_delete=True)).queue
        for key in (inspect_key(None), inspect_key(self.app), cancel_routing_key("#")):
            await channel.queue_bind(queue, CONTROL_EXCHANGE, key)
        await channel.consume(queue, self._on_control, no_ack=True, exclusive=True)
        await self.beat()
        agents.append(self)
        self._beating = asyncio.get_running_loop().create_task(
            self._keep_beating(), name=f"leveret fleet heartbeats {self.id}"
        )

    async def close(self) -> None:
        """Stop the heartbeats and say this worker stopped (idempotent)."""
        beating, self._beating = self._beating, None
        if beating is not None:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
        channel, self._channel = self._channel, None
        if self in agents:
            agents.remove(self)
        if channel is None:
            return
        with contextlib.suppress(AMQPError):
            await self._publish_heartbeat(channel, stopped=True)
            await channel.close()

    # -- what it tells ---------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Tasks done, failed, retried and dead-lettered by the workers reported on."""
        counts = dict.fromkeys(_COUNTED.values(), 0)
        for master in self.masters:
            for worker in master.workers:
                for outcome, name in _COUNTED.items():
                    counts[name] += worker.outcomes[outcome]
        return counts

    def _tasks(self) -> list[str]:
        return [worker.name for master in self.masters for worker in master.workers]

    def info(self, *, stopped: bool = False) -> WorkerInfo:
        """This process as its next heartbeat describes it."""
        workers = [worker for master in self.masters for worker in master.workers]
        callees = {name: callee for rpc in self.rpcs for name, callee in rpc.callees.items()}
        latency = {}
        for method, callee in callees.items():
            ordered = sorted(callee.durations or ())
            if ordered:
                latency[method] = {
                    "p50": ordered[len(ordered) // 2],
                    "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
                    "count": float(len(ordered)),
                }
        return WorkerInfo(
            id=self.id,
            app=self.app,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            tasks=[worker.name for worker in workers],
            rpc=list(callees),
            prefetch={worker.name: worker.limit for worker in workers},
            attempts={worker.name: worker.retries.max_attempts for worker in workers},
            in_flight=sum(worker.in_flight for worker in workers),
            counts=self.counts(),
            done={worker.name: worker.outcomes["succeeded"] for worker in workers},
            rpc_latency=latency,
            started_at=self.started_at,
            sent_at=time.time(),
            interval=self.interval,
            stopped=stopped,
        )

    def running(self) -> list[RunningTask]:
        """The tasks this process runs now."""
        now = asyncio.get_running_loop().time()
        found = []
        for master in self.masters:
            for worker in master.workers:
                for delivery, started in list(worker.running.items()):
                    attempt = (delivery.properties.headers or {}).get(ATTEMPT_HEADER, 1)
                    found.append(
                        RunningTask(
                            worker.name,
                            delivery.properties.message_id,
                            attempt if isinstance(attempt, int) else 1,
                            now - started,
                        )
                    )
        return found

    async def _publish_heartbeat(self, channel: GetChannel, *, stopped: bool = False) -> None:
        await channel.publish(
            self.info(stopped=stopped).encode(),
            exchange=CONTROL_EXCHANGE,
            routing_key=heartbeat_key(self.app, self.id),
            delivery_mode=1,
            expiration=int(DROPPED_AFTER * self.interval * 1000),
            content_type="application/json",
            confirm=False,
        )

    async def beat(self) -> None:
        """Send a heartbeat now (as after attaching what was started since :meth:`start`)."""
        if self._channel is not None:
            await self._publish_heartbeat(self._channel)

    async def _keep_beating(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except AMQPError as exc:  # a robust channel comes back; the next beat goes then
                log.debug("fleet heartbeat not sent: %s", exc)

    # -- what it is asked ------------------------------------------------------------

    async def _on_control(self, delivery: Delivery) -> None:
        channel = self._channel
        if channel is None:
            return
        key = delivery.routing_key
        if key.startswith("cancel."):
            parsed = parse_revocation(delivery.body)
            if parsed is None:
                return
            task, message_id, at = parsed
            revocations.add(task, message_id, at)
            for master in self.masters:
                for worker in master.workers:
                    if worker.name == task and worker.cancel(message_id):
                        log.info("task %r (message %s): cancelled while running", task, message_id)
        elif delivery.properties.reply_to:
            with contextlib.suppress(AMQPError):
                await channel.publish(
                    answer(self.id, self.running()),
                    routing_key=delivery.properties.reply_to,
                    correlation_id=delivery.properties.correlation_id,
                    delivery_mode=1,
                    content_type="application/json",
                    confirm=False,
                )
