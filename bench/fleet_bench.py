"""The fleet: how soon a killed worker shows as lost, how fast inspect answers, and
what heartbeats cost.

Three figures, on the local broker:

- ``lost``: 4 ``leveret run`` processes (heartbeats every 2 s); one is killed with
  SIGKILL; the time until the registry (what ``leveret workers`` and the dashboard
  read) shows it lost. The rule is two missed intervals, so it lies between 2
  and 4 s after the kill, depending on when in its interval the process died.
- ``inspect``: :func:`leveret.fleet.inspect` of those 4 workers (the answer of
  all four), 30 times in a row: median and p95; and one ``leveret inspect`` run
  as a subprocess (Python's start included).
- ``cancel``: a running ``async def`` task cancelled from another connection
  (``leveret.fleet.cancel``): the time until it gets ``CancelledError``, 5 times.
- ``throughput``: 20,000 no-op tasks through one worker in this process, with
  and without an agent attached (heartbeats every 2 s, inspect answered),
  alternated three times: the median rate and CPU time per task of each.

It prints a table and writes ``bench/results/fleet-<time>.json``; it asserts
nothing. Figures from a shared, loaded machine vary: read the CPU time per task
rather than the rate. Run it with ``python bench/fleet_bench.py`` (``--url``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from leveret import connect
from leveret.fleet import Agent, cancel, inspect, read_workers
from leveret.patterns import Master, dead_letter_queue, revoked_queue

RESULTS = Path(__file__).resolve().parent / "results"
APP = textwrap.dedent(
    """
    import os
    from leveret import App

    app = App(prefix=os.environ["APP_PREFIX"])

    @app.task
    async def noop(*, n: int) -> None:
        return None
    """
)


async def _wait(condition: Any, timeout: float, what: str) -> float:
    began = time.monotonic()
    while not await condition():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - began


def _start_workers(env: dict[str, str], count: int) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "leveret.cli", "run", "benchapp:app"]
    quiet = subprocess.DEVNULL
    return [subprocess.Popen(command, env=env, stdout=quiet, stderr=quiet) for _ in range(count)]


def _reap(runners: list[subprocess.Popen[bytes]]) -> None:
    for runner in runners:
        runner.wait(60)


async def fleet_figures(url: str) -> dict[str, Any]:
    prefix = f"bench-fleet-{uuid.uuid4().hex[:8]}"
    folder = Path(tempfile.mkdtemp())
    (folder / "benchapp.py").write_text(APP)
    env = {**os.environ, "APP_PREFIX": prefix, "PYTHONPATH": str(folder), "AMQP_URL": url}
    runners = _start_workers(env, 4)
    try:
        async with await connect(url) as connection:
            channel = await connection.channel()

            async def states() -> list[str]:
                return [info.state() for info in await read_workers(channel, prefix)]

            async def four_alive() -> bool:
                return (await states()).count("alive") == 4

            await _wait(four_alive, 60, "4 workers alive")
            inspections = []
            for _ in range(30):
                found = await inspect(channel, prefix, timeout=5)
                assert len(found.running) == 4, found.missing
                inspections.append(found.seconds)
            began = time.perf_counter()
            command = [sys.executable, "-m", "leveret.cli", "inspect", prefix]
            await asyncio.to_thread(
                subprocess.run, command, env=env, check=True, capture_output=True
            )
            cli_inspect = time.perf_counter() - began
            os.kill(runners[0].pid, signal.SIGKILL)

            async def one_lost() -> bool:
                return "lost" in await states()

            lost_after = await _wait(one_lost, 30, "worker shown lost")
        return {
            "lost_after_s": lost_after,
            "interval_s": 2.0,
            "inspect_median_ms": statistics.median(inspections) * 1000,
            "inspect_p95_ms": sorted(inspections)[int(len(inspections) * 0.95)] * 1000,
            "cli_inspect_ms": cli_inspect * 1000,
        }
    finally:
        for runner in runners:
            if runner.poll() is None:
                runner.send_signal(signal.SIGTERM)
        await asyncio.to_thread(_reap, runners)
        async with await connect(url) as connection:
            channel = await connection.channel()
            task = f"{prefix}.noop"
            for queue in (task, dead_letter_queue(task), revoked_queue(task)):
                await channel.queue_delete(queue)


async def cancel_latency(url: str, rounds: int = 5) -> dict[str, Any]:
    name = f"bench-fleet-cancel-{uuid.uuid4().hex[:8]}"
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def long(n: int) -> None:
        started.set()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            stopped.set()
            raise

    delays = []
    async with await connect(url) as serving, await connect(url) as elsewhere:
        master = Master(await serving.channel(), observers=[])
        async with Agent(serving, name) as agent:
            agent.attach(master)
            await agent.start()
            await master.create_worker(name, long)
            other = await elsewhere.channel()
            for n in range(rounds):
                started.clear()
                stopped.clear()
                await master.create_task(name, {"n": n}, message_id=f"run-{n}")
                await started.wait()
                began = time.perf_counter()
                await cancel(other, name, f"run-{n}")
                await stopped.wait()
                delays.append(time.perf_counter() - began)
            await master.close()
        for queue in (name, dead_letter_queue(name), revoked_queue(name)):
            await other.queue_delete(queue)
    return {
        "cancel_median_ms": statistics.median(delays) * 1000,
        "cancel_max_ms": max(delays) * 1000,
    }


async def _throughput(url: str, tasks: int, heartbeats: bool) -> tuple[float, float]:
    """(tasks per second, CPU µs per task) of one worker in this process."""
    name = f"bench-fleet-tp-{uuid.uuid4().hex[:8]}"
    done = asyncio.Event()
    count = 0

    async def noop(n: int) -> None:
        nonlocal count
        count += 1
        if count == tasks:
            done.set()

    async with await connect(url) as connection:
        master = Master(await connection.channel(), observers=[])
        agent = Agent(connection, name) if heartbeats else None
        if agent is not None:
            agent.attach(master)
            await agent.start()
        await master.create_worker(name, noop, prefetch_count=200)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(master.create_task(name, {"n": n}) for n in range(tasks)))
        await done.wait()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await master.close()
        if agent is not None:
            await agent.close()
        channel = await connection.channel()
        await channel.queue_delete(name)
        await channel.queue_delete(dead_letter_queue(name))
    return tasks / wall, cpu / tasks * 1e6


async def throughput(url: str, tasks: int = 20_000, rounds: int = 3) -> dict[str, Any]:
    found: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for _ in range(rounds):
        for case in ("off", "on"):
            found[case].append(await _throughput(url, tasks, heartbeats=case == "on"))
    figures: dict[str, Any] = {"tasks": tasks, "rounds": rounds}
    for case, runs in found.items():
        figures[f"rate_{case}"] = statistics.median(rate for rate, _ in runs)
        figures[f"cpu_us_{case}"] = statistics.median(cpu for _, cpu in runs)
    figures["cpu_cost_percent"] = (figures["cpu_us_on"] / figures["cpu_us_off"] - 1) * 100
    figures["rate_cost_percent"] = (1 - figures["rate_on"] / figures["rate_off"]) * 100
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
    )
    parser.add_argument("--label", default="", help="A note saved with the results.")
    options = parser.parse_args()
    figures = {
        **await fleet_figures(options.url),
        **await cancel_latency(options.url),
        **await throughput(options.url),
    }
    print(f"{'figure':<44} {'value':>12}")
    rows = [
        ("killed worker shown lost after (s)", figures["lost_after_s"], ".2f"),
        ("  heartbeat interval (s)", figures["interval_s"], ".1f"),
        ("inspect, 4 workers, median (ms)", figures["inspect_median_ms"], ".1f"),
        ("inspect, 4 workers, p95 (ms)", figures["inspect_p95_ms"], ".1f"),
        ("leveret inspect, subprocess (ms)", figures["cli_inspect_ms"], ".0f"),
        ("cancel of a running task, median (ms)", figures["cancel_median_ms"], ".1f"),
        ("cancel of a running task, max (ms)", figures["cancel_max_ms"], ".1f"),
        ("tasks/s, no agent", figures["rate_off"], ",.0f"),
        ("tasks/s, agent (heartbeats every 2 s)", figures["rate_on"], ",.0f"),
        ("CPU µs/task, no agent", figures["cpu_us_off"], ".1f"),
        ("CPU µs/task, agent", figures["cpu_us_on"], ".1f"),
        ("CPU cost of the agent (%)", figures["cpu_cost_percent"], "+.1f"),
        ("rate cost of the agent (%)", figures["rate_cost_percent"], "+.1f"),
    ]
    for label, value, spec in rows:
        print(f"{label:<44} {format(value, spec):>12}")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"fleet-{stamp}.json"
    path.write_text(json.dumps({"label": options.label, **figures}, indent=2) + "\n")
    print(f"written: {path}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
