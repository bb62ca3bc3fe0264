"""Replicas of ``leveret run`` firing one schedule, leaders killed with ``kill -9``.

:func:`run_fleet` writes an app with one interval schedule, starts ``replicas``
``leveret run`` processes of it on a shared broker, and records each tick that
reaches the schedule's queue (a consumer in this process: the replicas run no
worker for it, so none of the counting dies with a replica). At each offset of
``kills`` (seconds after the first tick; moved to ``before`` seconds ahead of the
tick due next, so that a tick falls due while nobody leads) it kills the replica
that leads (the one that logged "leads now" last) and notes when another took over. The fault suite
runs it short (tests/faults/test_scheduler_failover.py); bench/scheduler_failover.py
runs the full minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from leveret.amqp import Delivery, connect
from leveret.patterns import scheduler_queue
from tests.support.waiting import wait_until

_APP = textwrap.dedent(
    """
    import os
    from leveret import App

    app = App(prefix=os.environ["FLEET_PREFIX"])
    app.schedule(
        os.environ["FLEET_PREFIX"] + ".ticks", every=float(os.environ["FLEET_EVERY"]), name="ticks"
    )
    """
)
_LEADS = "this process leads now"


@dataclasses.dataclass
class Kill:
    """One leader killed: when, and what followed."""

    pid: int
    at: float  # wall-clock time of the kill -9
    taken_over: float | None = None  # when another replica was seen to lead
    next_tick: datetime.datetime | None = None  # the first tick that arrived after the kill
    next_arrival: float | None = None

    @property
    def takeover_seconds(self) -> float | None:
        return None if self.taken_over is None else self.taken_over - self.at

    @property
    def failover_seconds(self) -> float | None:
        """From the kill to the next tick's arrival."""
        return None if self.next_arrival is None else self.next_arrival - self.at

    @property
    def late_seconds(self) -> float | None:
        """How late the next tick arrived after it fell due."""
        if self.next_tick is None or self.next_arrival is None:
            return None
        return self.next_arrival - self.next_tick.timestamp()


@dataclasses.dataclass
class FleetRun:
    """What arrived (message id, wall-clock arrival), and the kills."""

    every: float
    arrivals: list[tuple[str, float]]
    kills: list[Kill]

    def ticks(self) -> list[datetime.datetime]:
        return [datetime.datetime.fromisoformat(mid.rpartition("@")[2]) for mid, _ in self.arrivals]

    @property
    def duplicates(self) -> int:
        counts = Counter(mid for mid, _ in self.arrivals)
        return sum(count - 1 for count in counts.values())

    @property
    def coalesced(self) -> int:
        """Ticks of the grid between the first and last that fired as part of a later one."""
        ticks = sorted(set(self.ticks()))
        if len(ticks) < 2:
            return 0
        span = round((ticks[-1] - ticks[0]).total_seconds() / self.every) + 1
        return span - len(ticks)

    def figures(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "ticks": len(self.arrivals),
            "duplicates": self.duplicates,
            "coalesced": self.coalesced,
            "kills": [
                {
                    "takeover_s": rounded(kill.takeover_seconds),
                    "failover_s": rounded(kill.failover_seconds),
                    "next_tick_late_s": rounded(kill.late_seconds),
                }
                for kill in self.kills
            ],
        }


class _Replica:
    def __init__(self, folder: Path, index: int, env: dict[str, str]) -> None:
        self.log = folder / f"replica-{index}.log"
        with self.log.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "leveret.cli", "run", "fleetapp:app"],
                env=env,
                cwd=folder,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.leads_seen = 0

    def newly_leading(self) -> bool:
        count = self.log.read_text().count(_LEADS)
        new = count > self.leads_seen
        self.leads_seen = count
        return new and self.process.poll() is None


async def run_fleet(
    url: str,
    folder: Path,
    *,
    duration: float,
    kills: list[float],
    every: float = 1.0,
    replicas: int = 3,
    before: float = 0.005,
) -> FleetRun:
    """Run the fleet for ``duration`` seconds after its first tick (see the module)."""
    prefix = f"leveret-fleet-{uuid.uuid4().hex[:8]}"
    (folder / "fleetapp.py").write_text(_APP)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join([str(folder), *sys.path]),
        "AMQP_URL": url,
        "FLEET_PREFIX": prefix,
        "FLEET_EVERY": repr(every),
    }
    arrivals: list[tuple[str, float]] = []
    done: list[Kill] = []

    def record(delivery: Delivery) -> None:
        arrivals.append((delivery.properties.message_id or "", time.time()))
        delivery.ack()

    async with await connect(url, name="leveret fleet counter") as connection:
        channel = await connection.channel()
        await channel.queue_declare(f"{prefix}.ticks", durable=True)
        tag = await channel.consume(f"{prefix}.ticks", record)
        fleet = [_Replica(folder, i, env) for i in range(replicas)]
        leader: list[_Replica] = []

        async def watch() -> None:
            while True:
                for replica in fleet:
                    if replica.newly_leading():
                        leader[:] = [replica]
                        if done and done[-1].taken_over is None:
                            done[-1].taken_over = time.time()
                await asyncio.sleep(0.01)

        watcher = asyncio.ensure_future(watch())
        try:
            await wait_until(lambda: arrivals, 60, "a first tick")
            start = arrivals[0][1]
            for offset in kills:
                due = (math.floor((start + offset) / every) + 1) * every
                await asyncio.sleep(max(0.0, due - before - time.time()))
                await wait_until(lambda: leader, 30, "a leader")
                victim = leader.pop()
                victim.process.send_signal(signal.SIGKILL)
                done.append(Kill(victim.process.pid, time.time()))
                victim.process.wait()
            await asyncio.sleep(max(0.0, start + duration - time.time()))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for replica in fleet:
                if replica.process.poll() is None:
                    replica.process.send_signal(signal.SIGTERM)
            for replica in fleet:
                try:
                    replica.process.wait(30)
                except subprocess.TimeoutExpired:
                    replica.process.kill()
                    replica.process.wait()
            await channel.cancel(tag)
            cleanup = await connection.channel()
            for queue in (f"{prefix}.ticks", scheduler_queue(prefix)):
                await cleanup.queue_delete(queue)
    run = FleetRun(every, arrivals, done)
    for kill in done:
        after = [(mid, at) for mid, at in arrivals if at > kill.at]
        if after:
            mid, at = after[0]
            kill.next_tick = datetime.datetime.fromisoformat(mid.rpartition("@")[2])
            kill.next_arrival = at
    return run
