"""Benchmark leveret beside aio-pika, Celery, Dramatiq, FastStream and taskiq on the
local broker: the same job for each, one library at a time.

1. ``tasks``: one producer process enqueues N tasks ``{"task_id": i}`` on a durable
   queue (persistent messages), one worker process (the library's own worker
   command, in a process group of its own) runs them; every execution appends its id
   to a file of the run, so the table says how many were lost or doubled (should
   be 0). Tasks/s from the first measured send to the N-th execution.
2. ``rpc``: where the library has RPC, a caller process makes N calls
   ``multiply(x=i, y=2)`` to a callee (its worker command), one at a time and with
   64 in flight; calls/s and latency.

CPU per task (or call) of the producer (its own, over its sending), of the worker
(the whole process tree, read from /proc over the measured part) and of the broker.
Each library's settings, and its defaults where they differ, are in ``bench/peers/``
and in the JSON. Results go to ``bench/results/peers-<timestamp>.json`` and
``bench/results/peers-latest.json``. Nothing here asserts a time.

    python bench/peers_bench.py [--tasks 5000] [--calls 2000] [--only celery ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue as queue_module
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, NoReturn

# python bench/peers_bench.py: import the bench package from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._clients import DEFAULT_URL, Admin, broker_version
from bench._measure import (
    Phase,
    clock,
    loadavg,
    locate_broker,
    phase_numbers,
    tree_cpu_seconds,
    us_per,
)
from bench._processes import Children, WorkerCommand
from bench._report import Column, print_rows, rate_cells
from bench._results import finish, fmt, machine_info, median_at, utc_now
from bench._roles import Case, Sync, make_calls, run_timeout, send_tasks
from bench.peers import PEERS, Peer
from bench.peers._run import ENV, PeerRun, bytes_for, execution_check, recorded_bytes

LIBRARIES: Final = tuple(dict.fromkeys(peer.library for peer in PEERS))
PACKAGES: Final = (
    "leveret",
    "aio-pika",
    "aiormq",
    "celery",
    "kombu",
    "amqp",
    "dramatiq",
    "pika",
    "faststream",
    "taskiq",
    "taskiq-aio-pika",
)
QUICK: Final = {"tasks": 1000, "calls": 200, "warmup": 100}


class RunFailed(Exception):
    """A peer's run did not complete; the table shows why, the other peers go on."""


@contextlib.contextmanager
def environment(run: PeerRun) -> Iterator[dict[str, str]]:
    """The run in this process's environment while the block runs (spawned children
    inherit it); the worker command's environment."""
    os.environ.update(run.env())
    try:
        yield dict(os.environ)
    finally:
        os.environ.pop(ENV, None)


async def wait_executed(
    ids_dir: str, count: int, timeout: float, worker: WorkerCommand, children: Children
) -> float:
    """Poll the execution records until ``count`` ids are there; return when (``clock``).

    Raises ``RunFailed`` if the worker exits, a child fails, or after ``timeout`` s
    (with how many were executed by then).
    """
    target = bytes_for(count)
    deadline = clock() + timeout
    while (size := recorded_bytes(ids_dir)) < target:
        if not worker.alive():
            raise RunFailed(f"the worker exited:\n{worker.log_tail()}")
        with contextlib.suppress(queue_module.Empty):
            result = children.results.get_nowait()
            children.by_role[result["role"]] = result
        if children.errors():
            raise RunFailed(f"{children.errors()}")
        if clock() > deadline:
            raise RunFailed(f"{size}/{target} bytes of ids after {timeout:.0f} s: tasks lost")
        await asyncio.sleep(0.002)
    return clock()


async def run_peer(
    peer: Peer, case: Case, args: argparse.Namespace, round_no: int
) -> dict[str, Any]:
    """One run of ``peer``: its worker command, a producer or caller child, the
    measured part, the execution check, and every queue and exchange deleted."""
    queue = f"peers-bench.{peer.slug}.{case.scenario}.{os.getpid()}.{round_no}"
    queues, exchanges = peer.declares(queue)
    tasks = case.is_master
    admin = await Admin.open(args.url, "peers_bench admin")
    left: dict[str, int] | None = None
    with tempfile.TemporaryDirectory(prefix="leveret-bench-peers-") as ids_dir:
        run = PeerRun(args.url, queue, ids_dir, "tasks" if tasks else "rpc")
        try:
            with environment(run) as env:
                worker = WorkerCommand(
                    peer.command(run), env | dict(peer.env), Path(ids_dir) / "worker.log"
                )
                try:
                    with worker:
                        result = await measure(peer, case, args, queue, worker, admin, ids_dir)
                except RunFailed as exc:
                    if not tasks:
                        raise
                    checked = execution_check(ids_dir, case.warmup + case.n)
                    counts = ", ".join(f"{key} {value}" for key, value in checked.items())
                    raise RunFailed(f"{exc}\n({counts})") from None
                # the worker has stopped: whatever it ran is on file now
                result["worker_tracebacks"] = worker.tracebacks()
            if tasks:
                result["executions"] = execution_check(ids_dir, case.warmup + case.n)
            left = await admin.delete(queues, exchanges)
            return result | {"left_in_queues": left}
        finally:
            if left is None:  # the run failed: clean up what may be there
                with contextlib.suppress(Exception):
                    await admin.delete(queues, exchanges)
            await admin.close()


async def measure(
    peer: Peer,
    case: Case,
    args: argparse.Namespace,
    queue: str,
    worker: WorkerCommand,
    admin: Admin,
    ids_dir: str,
) -> dict[str, Any]:
    """The part of a run with the worker up: start the producer or caller, warm up,
    measure, collect."""
    try:
        await admin.wait_for_consumer(queue, 120.0, worker.alive)
    except (TimeoutError, RuntimeError) as exc:
        raise RunFailed(f"{exc}\n{worker.log_tail()}") from None
    role, main = ("producer", send_tasks) if case.is_master else ("caller", make_calls)
    sync = Sync.create(ready=2, go=2)
    load_before = loadavg()
    async with Children() as children:
        children.start(role, main, (case, args.url, queue, sync), sync.barriers)
        try:
            await asyncio.to_thread(sync.ready.wait, 180.0)
            if case.is_master and case.warmup:
                await wait_executed(ids_dir, case.warmup, 120.0, worker, children)
                sync.warmed.set()
            await asyncio.to_thread(sync.go.wait, run_timeout(case))
            machine, worker_cpu = Phase(), tree_cpu_seconds(worker.pid)
            if case.is_master:
                total = case.warmup + case.n
                end = await wait_executed(ids_dir, total, run_timeout(case), worker, children)
            worker_cpu_end = tree_cpu_seconds(worker.pid)
            if role not in children.by_role:
                await children.collect(1, run_timeout(case) + 60.0)
            if not case.is_master:
                end = children.by_role[role].get("end", clock())
                worker_cpu_end = tree_cpu_seconds(worker.pid)
            machine.stop(end)
        except (threading.BrokenBarrierError, queue_module.Empty) as exc:
            await children.collect_after_failure()
            raise RunFailed(f"{children.errors() or repr(exc)}\n{worker.log_tail()}") from None
        if children.errors():
            raise RunFailed(f"{children.errors()}")
    driver = children.by_role[role]
    n = case.n
    worker_seconds = (
        worker_cpu_end - worker_cpu
        if worker_cpu is not None and worker_cpu_end is not None
        else None
    )
    client_cpu = driver["cpu_seconds"] + (worker_seconds or 0.0)
    result: dict[str, Any] = {
        "machine": phase_numbers(n, machine, client_cpu_seconds=client_cpu),
        "driver_cpu_us_per_msg": us_per(driver["cpu_seconds"], n),
        "server_cpu_us_per_msg": None if worker_seconds is None else us_per(worker_seconds, n),
        "load_before": load_before,
        "load_after": loadavg(),
    }
    driver_seconds = driver["end"] - driver["start"]
    if case.is_master:
        seconds = end - driver["start"]  # first measured send to the N-th execution
        return result | {
            "seconds": round(seconds, 4),
            "per_s": round(n / seconds),
            "producer_seconds": round(driver_seconds, 4),
            "producer_per_s": round(n / driver_seconds),
        }
    return result | {
        "seconds": round(driver_seconds, 4),
        "per_s": round(n / driver_seconds),
        "latency_ms": driver["latency_ms"],
    }


# -- the plan -----------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[tuple[Peer, Case]]:
    """Every run of one round, one library at a time."""
    runs: list[tuple[Peer, Case]] = []
    for peer in PEERS:
        if args.only and peer.library not in args.only:
            continue
        lanes = peer.lanes or args.lanes
        runs.append(
            (peer, Case("tasks", peer.library, peer.variant, args.tasks, args.warmup, lanes, True))
        )
        if args.no_rpc:
            continue
        for scenario in peer.rpc:
            lanes = 1 if scenario == "rpc-sequential" else args.in_flight
            warmup = min(args.warmup, args.calls)
            runs.append(
                (peer, Case(scenario, peer.library, peer.variant, args.calls, warmup, lanes))
            )
    return runs


async def run(args: argparse.Namespace) -> dict[str, Any]:
    broker_pid = locate_broker(args.url)
    version = await broker_version(args.url)
    report: dict[str, Any] = {
        "started": utc_now(),
        "machine": machine_info(PACKAGES),
        "broker_version": version,
        "url": args.url.split("@")[-1],  # no credentials in the results
        "tasks": args.tasks,
        "calls": args.calls,
        "warmup": args.warmup,
        "lanes": args.lanes,
        "in_flight": args.in_flight,
        "rounds": args.rounds,
        "load_at_start": loadavg(),
        "broker_pid_found": broker_pid is not None,
        "peers": [
            {
                "library": peer.library,
                "variant": peer.variant,
                "settings": peer.settings,
                "rpc": list(peer.rpc),
                "no_rpc": peer.no_rpc,
            }
            for peer in PEERS
            if not args.only or peer.library in args.only
        ],
        "cases": [],
    }
    runs = plan(args)
    rounds: dict[str, list[dict[str, Any]]] = {case.key: [] for _, case in runs}
    for round_no in range(1, args.rounds + 1):
        for peer, case in runs:
            print(f"[{case.key}] round {round_no} ...", flush=True, end=" ")
            try:
                result = await run_peer(peer, case, args, round_no)
            except RunFailed as exc:
                result = {"error": str(exc)}
            rounds[case.key].append(result)
            print(describe(result), flush=True)
    for peer, case in runs:
        report["cases"].append(
            {
                "scenario": case.scenario,
                "library": peer.library,
                "variant": peer.variant,
                "options": {
                    "n": case.n,
                    "warmup": case.warmup,
                    "lanes": case.lanes,
                    "durable": True,
                },
                "rounds": rounds[case.key],
                "summary": summarize(rounds[case.key]),
            }
        )
    report["finished"] = utc_now()
    return report


def describe(result: dict[str, Any]) -> str:
    if "error" in result:
        error: str = result["error"]
        return "FAILED: " + error.splitlines()[0]
    text = f"{fmt(result['per_s'])}/s"
    if "executions" in result:
        checked = result["executions"]
        text += f", {checked['executed']:,} executed, lost {checked['lost']}, "
        text += f"doubled {checked['doubled']}"
    if "latency_ms" in result:
        text += f", p50 {result['latency_ms']['p50']:.3f} ms"
    if result["worker_tracebacks"]:
        text += f", {result['worker_tracebacks']} tracebacks in the worker's log"
    return text + f", other load {fmt(result['machine'].get('other_load_cores'), 2)}"


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds that completed; lost and doubled over all of them."""
    done = [r for r in rounds if "error" not in r]
    summary: dict[str, Any] = {
        "completed_rounds": len(done),
        "errors": [r["error"] for r in rounds if "error" in r],
        "per_s": median_at(done, "per_s"),
        "producer_per_s": median_at(done, "producer_per_s"),
        "p50_ms": median_at(done, "latency_ms", "p50"),
        "p99_ms": median_at(done, "latency_ms", "p99"),
        "driver_cpu_us_per_msg": median_at(done, "driver_cpu_us_per_msg"),
        "server_cpu_us_per_msg": median_at(done, "server_cpu_us_per_msg"),
        "broker_cpu_us_per_msg": median_at(done, "machine", "broker_cpu_us_per_msg"),
        "other_load_cores": median_at(done, "machine", "other_load_cores"),
    }
    checked = [r["executions"] for r in done if "executions" in r]
    if checked:
        summary["lost"] = sum(c["lost"] for c in checked)
        summary["doubled"] = sum(c["doubled"] for c in checked)
    return summary


# -- report -------------------------------------------------------------------------------

COLUMNS: Final = (
    Column("scenario", 15, "<"),
    Column("library", 34, "<"),
    Column("rate/s", 9),
    Column("producer/s", 11),
    Column("p50 ms", 8),
    Column("p99 ms", 8),
    Column("prod cpu", 10),
    Column("wrk cpu", 9),
    Column("brk cpu", 9),
    Column("lost", 6),
    Column("dup", 5),
    Column("other", 7),
)


def print_table(report: dict[str, Any]) -> None:
    print()
    print(
        f"tasks={report['tasks']}  calls={report['calls']}  warmup={report['warmup']}  "
        f"lanes={report['lanes']}  in flight={report['in_flight']}  rounds={report['rounds']}  "
        f"broker RabbitMQ {report['broker_version']}  leveret {report['machine']['leveret_commit']}"
    )
    print(
        "(rate = tasks/s end to end or calls/s, median over rounds; producer = its sends/s; "
        "cpu = CPU µs per task or call of the producer/caller, the worker/callee (its whole "
        "process tree) and the broker; lost/dup = tasks never run / run twice; other = cores "
        "busy with neither this benchmark nor the broker)"
    )
    rows: list[list[str]] = []
    for case in report["cases"]:
        row = case["summary"]
        name = f"{case['library']} ({case['variant']})"
        if not row["completed_rounds"]:
            rows.append([case["scenario"], name, "FAILED: " + row["errors"][0].splitlines()[0]])
            continue
        rows.append(
            [
                case["scenario"],
                name,
                *rate_cells(row, "producer_per_s"),
                fmt(row.get("lost")),
                fmt(row.get("doubled")),
                fmt(row["other_load_cores"], 2),
            ]
        )
    print_rows(COLUMNS, rows)
    print("\nsettings ([the library's default] where it differs):")
    for peer in report["peers"]:
        rpc = ", ".join(peer["rpc"]) or peer["no_rpc"]
        if peer["rpc"] and peer["no_rpc"]:
            rpc += f"; {peer['no_rpc']}"
        print(f"  {peer['library']} ({peer['variant']}): {peer['settings']}; RPC: {rpc}")
    print()


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=5_000, help="tasks per run")
    parser.add_argument("--calls", type=int, default=2_000, help="RPC calls per run")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up tasks/calls per run")
    parser.add_argument(
        "--only", choices=LIBRARIES, action="append", help="run this library (repeatable)"
    )
    parser.add_argument("--no-rpc", action="store_true", help="tasks only")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each run (median shown)")
    parser.add_argument("--lanes", type=int, default=128, help="producer coroutines (async)")
    parser.add_argument("--in-flight", type=int, default=64, help="concurrent RPC calls")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small runs ({', '.join(f'--{k} {v}' for k, v in QUICK.items())}): "
        "check that everything works",
    )
    parser.add_argument("--url", default=os.environ.get("AMQP_URL", DEFAULT_URL))
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if min(args.tasks, args.calls, args.rounds, args.lanes, args.in_flight) < 1:
        parser.error("--tasks, --calls, --rounds, --lanes and --in-flight must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def _terminated(signum: int, frame: object) -> NoReturn:
    raise SystemExit(f"stopped by signal {signum}")  # so every worker group is ended


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    report = asyncio.run(run(args))
    finish("peers", report, save=not args.no_save, show=print_table)


if __name__ == "__main__":
    main()
