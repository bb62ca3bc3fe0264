"""The fleet agent of one worker process: heartbeats, inspect answers, cancels.

An :class:`Agent` reports on the Masters and RPCs it is attached to. On its own
channel (no publisher confirms: control traffic never waits for the broker, and
never delays task traffic) it sends a heartbeat every ``interval`` seconds, and
consumes an exclusive queue bound to the inspect requests of its app and to
every live revocation. It is an :class:`~leveret.patterns.Observer` of the
services it reports on, for its counts and the RPC latencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import deque
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
    Kind,
    Master,
    Observer,
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

#: RPC durations kept per method for its p50/p99.
LATENCY_WINDOW = 1000
#: The outcomes a heartbeat counts, by the names it gives them.
_COUNTED = {
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


class Agent(Observer, AsyncClosing):
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
        self.counts = {"done": 0, "failed": 0, "retried": 0, "dead_lettered": 0}
        #: Tasks done, per task.
        self.done: dict[str, int] = {}
        self.started_at = time.time()
        self._latencies: dict[str, deque[float]] = {}
        self._channel: ControlChannel | None = None
        self._beating: asyncio.Task[None] | None = None
        self._clock = time.perf_counter

    def attach(self, *services: Master | RPC) -> None:
        """Report on these Masters and RPCs (their workers and callees as they are
        at each heartbeat), and observe them."""
        for service in services:
            if isinstance(service, Master) and service not in self.masters:
                self.masters.append(service)
            elif isinstance(service, RPC) and service not in self.rpcs:
                self.rpcs.append(service)
            else:
                continue
            service.observers.add(self)

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
        for master in self.masters:
            master.observers.remove(self)
        for rpc in self.rpcs:
            rpc.observers.remove(self)
        if channel is None:
            return
        with contextlib.suppress(AMQPError):
            await self._publish_heartbeat(channel, stopped=True)
            await channel.close()

    # -- what it tells ---------------------------------------------------------------

    def _tasks(self) -> list[str]:
        return [worker.name for master in self.masters for worker in master.workers]

    def info(self, *, stopped: bool = False) -> WorkerInfo:
        """This process as its next heartbeat describes it."""
        workers = [worker for master in self.masters for worker in master.workers]
        latency = {}
        for method, seconds in self._latencies.items():
            ordered = sorted(seconds)
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
            rpc=[method for rpc in self.rpcs for method in rpc.methods],
            prefetch={worker.name: worker.limit for worker in workers},
            attempts={worker.name: worker.retries.max_attempts for worker in workers},
            in_flight=sum(worker.in_flight for worker in workers),
            counts=dict(self.counts),
            done=dict(self.done),
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

    # -- the observer ----------------------------------------------------------------

    def on_start(self, kind: Kind, name: str, delivery: Delivery) -> Any:
        return self._clock()

    def on_finish(
        self, kind: Kind, name: str, token: Any, outcome: Outcome, error: BaseException | None
    ) -> None:
        if kind == "call":
            if token is not None:
                window = self._latencies.get(name)
                if window is None:
                    window = self._latencies[name] = deque(maxlen=LATENCY_WINDOW)
                window.append(self._clock() - token)
            return
        counted = _COUNTED.get(outcome)
        if counted is not None:
            self.counts[counted] += 1
        if outcome == "succeeded":
            self.done[name] = self.done.get(name, 0) + 1
