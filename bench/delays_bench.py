"""Delayed tasks on the delay ladder: none lost, none early, how late, at what cost.

One process, the local broker. First ``--tasks`` plain tasks are sent (64 in
flight) to a queue of their own and consumed: the plain enqueue rate and broker
CPU per task. Then as many delayed tasks, each with a delay drawn at random from
``[--min-delay, --max-delay]`` seconds (so sent in no order of their delays), to a
task whose worker notes when each arrives. It waits until all have arrived (or
``--max-delay`` + 60 s) and reports:

- lost (never arrived), doubled (arrived twice), early (arrived before the time
  ``create_task`` was called plus its delay: must be 0);
- lateness (arrival minus that time) p50, p99 and max: it includes the publish,
  the rounding up to 16 ms, the hops down the ladder and the delivery;
- the enqueue rate of delayed and of plain tasks in the same run, and broker CPU
  per task for both (the broker's CPU over the whole phase, so on a shared broker
  other clients' work is counted in: see ``other_load_cores``; for the delayed
  tasks also net of the broker's idle CPU, measured for 3 s before).

It prints a table and writes ``bench/results/delays-<time>.json``; it asserts
nothing. ``python bench/delays_bench.py`` (about 2.5 minutes), ``--quick`` for
1,000 tasks with delays up to 10 s; ``--url`` for another broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._measure import Phase, clock, loadavg, locate_broker, phase_numbers, us_per
from bench._report import Column, print_rows
from bench._results import finish, machine_info, utc_now
from leveret import connect
from leveret.patterns import Master, delay_queues

IN_FLIGHT = 64
#: Seconds the broker's CPU is measured while nothing is sent, to subtract its idle use.
IDLE_SECONDS = 3.0


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) of ``values``, nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def send_all(
    master: Master, task: str, delays: list[float | None], sent: dict[int, float]
) -> float:
    """Send one task per delay, ``IN_FLIGHT`` at a time; returns the seconds it took.
    Each task's kwargs carry its index; ``sent[i]`` is when its ``create_task`` began."""
    began = clock()
    todo = iter(range(len(delays)))

    async def lane() -> None:
        for i in todo:
            sent[i] = clock()
            await master.create_task(task, {"i": i}, delay=delays[i])

    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    return clock() - began


async def run(url: str, tasks: int, low: float, high: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    delays = [rng.uniform(low, high) for _ in range(tasks)]
    plain, delayed = f"bench-plain-{uuid.uuid4().hex[:8]}", f"bench-delay-{uuid.uuid4().hex[:8]}"
    arrived: dict[str, dict[int, list[float]]] = {plain: {}, delayed: {}}
    sent: dict[int, float] = {}

    everything = {plain: asyncio.Event(), delayed: asyncio.Event()}

    def recorder(task: str) -> Any:
        async def record(*, i: int) -> None:
            arrived[task].setdefault(i, []).append(clock())
            if len(arrived[task]) == tasks:
                everything[task].set()

        return record

    async def all_arrived(task: str, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everything[task].wait(), timeout)

    locate_broker(url)
    async with await connect(url) as connection:
        master = Master(await connection.channel())
        try:
            for task in (plain, delayed):
                await master.create_worker(task, recorder(task), prefetch_count=256)
            phase = Phase()
            plain_seconds = await send_all(master, plain, [None] * tasks, {})
            await all_arrived(plain, 60)
            plain_phase = phase_numbers(tasks, phase.stop())

            idle = Phase()  # the broker's CPU while this benchmark sends nothing
            await asyncio.sleep(IDLE_SECONDS)
            idle.stop()
            phase = Phase()
            delayed_seconds = await send_all(master, delayed, list(delays), sent)
            await all_arrived(delayed, high + 60)
            delayed_phase = phase_numbers(tasks, phase.stop())
            if idle.broker_cpu_seconds is not None and phase.broker_cpu_seconds is not None:
                net = (
                    phase.broker_cpu_seconds
                    - idle.broker_cpu_seconds / idle.seconds * phase.seconds
                )
                delayed_phase["broker_cpu_us_per_msg_net_of_idle"] = us_per(max(0.0, net), tasks)
        finally:
            await master.close()
            channel = await connection.channel()
            for queue in (plain, delayed, f"{plain}.dlq", f"{delayed}.dlq"):
                await channel.queue_delete(queue)
            for task in (plain, delayed):
                for queue in delay_queues(task):
                    await channel.queue_delete(queue)

    lateness = []
    early = 0
    for i, times in arrived[delayed].items():
        late = times[0] - (sent[i] + delays[i])
        early += late < 0
        lateness.append(late)
    return {
        "tasks": tasks,
        "delays_s": [low, high],
        "seed": seed,
        "lost": tasks - len(arrived[delayed]),
        "doubled": sum(len(times) - 1 for times in arrived[delayed].values()),
        "early": early,
        "lateness_s": {
            "p50": percentile(lateness, 0.5),
            "p99": percentile(lateness, 0.99),
            "max": max(lateness, default=None),
        },
        "enqueue_per_s": {
            "delayed": round(tasks / delayed_seconds),
            "plain": round(tasks / plain_seconds),
        },
        "plain_lost": tasks - len(arrived[plain]),
        "delayed_phase": delayed_phase,
        "plain_phase": plain_phase,
    }


def show(report: dict[str, Any]) -> None:
    r = report["result"]
    late = r["lateness_s"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:,.0f} ms"

    print(
        f"{r['tasks']:,} delayed tasks, delays {r['delays_s'][0]}..{r['delays_s'][1]} s "
        f"(load average {report['loadavg']})"
    )
    print_rows(
        [
            Column("lost", 6),
            Column("doubled", 9),
            Column("early", 7),
            Column("late p50", 11),
            Column("late p99", 11),
            Column("late max", 11),
        ],
        [
            [
                str(r["lost"]),
                str(r["doubled"]),
                str(r["early"]),
                ms(late["p50"]),
                ms(late["p99"]),
                ms(late["max"]),
            ]
        ],
    )
    print()
    rows = []
    for kind in ("delayed", "plain"):
        phase = r[f"{kind}_phase"]
        rows.append(
            [
                kind,
                f"{r['enqueue_per_s'][kind]:,}",
                f"{phase.get('broker_cpu_us_per_msg', '-')}",
                f"{phase.get('broker_cpu_us_per_msg_net_of_idle', '-')}",
                f"{phase['client_cpu_us_per_msg']}",
                f"{phase.get('other_load_cores', '-')}",
            ]
        )
    print_rows(
        [
            Column("tasks", 9, "<"),
            Column("enqueued/s", 12),
            Column("broker µs/task", 16),
            Column("net of idle", 13),
            Column("client µs/task", 16),
            Column("other load", 12),
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--min-delay", type=float, default=0.1)
    parser.add_argument("--max-delay", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks, delays up to 10 s")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.max_delay = 1_000, 10.0
    result = asyncio.run(run(args.url, args.tasks, args.min_delay, args.max_delay, args.seed))
    report = {
        "when": utc_now(),
        "machine": machine_info(["leveret"]),
        "loadavg": loadavg(),
        "result": result,
    }
    finish("delays", report, save=not args.no_save, show=show)


if __name__ == "__main__":
    main()
