"""``leveret demo``: a worker and a callee, a stream of tasks and calls, a summary.

Runs in one process against the broker at ``url`` (``memory://`` runs it on
the in-memory broker). Used by the CLI only; rich draws the progress.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from . import connect_robust
from .patterns import RPC, Master


@dataclass
class DemoResult:
    tasks_sent: int = 0
    tasks_done: int = 0
    task_seconds: float = 0.0
    calls: int = 0
    call_seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


class _Rate(ProgressColumn):
    """Items per second since the bar started."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        return Text(f"{task.completed / elapsed:,.0f}/s" if elapsed else "")


async def run_demo(url: str, tasks: int, calls: int, console: Console) -> DemoResult:
    """Serve ``demo.resize`` and ``demo.multiply``; send ``tasks`` tasks and ``calls`` calls."""
    if url == "memory://":
        url = "memory://leveret-demo"  # both connections must reach the same broker
    result = DemoResult()
    done = asyncio.Event()

    async def resize(*, image_id: int, width: int) -> None:
        result.tasks_done += 1
        if result.tasks_done == tasks:
            done.set()

    async def multiply(*, x: int, y: int) -> int:
        return x * y

    async with (
        await connect_robust(url, name="leveret demo worker") as serving,
        await connect_robust(url, name="leveret demo client") as client,
    ):
        worker_master = Master(await serving.channel())
        await worker_master.create_worker(
            "demo.resize", resize, auto_delete=True, dead_letter=False
        )
        callee = await RPC.create(await serving.channel(publisher_confirms=False))
        await callee.register("demo.multiply", multiply, auto_delete=True)
        master = Master(await client.channel())
        rpc = await RPC.create(await client.channel(publisher_confirms=False), timeout=10)

        with Progress(
            TextColumn("[bold]{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            sent_bar = progress.add_task("sent", total=tasks)
            done_bar = progress.add_task("done", total=tasks)
            started = time.perf_counter()

            async def produce(first: int) -> None:
                for image_id in range(first, tasks, 64):
                    await master.proxy.demo.resize(image_id=image_id, width=640)
                    result.tasks_sent += 1

            producers = asyncio.gather(*(produce(lane) for lane in range(min(64, tasks))))
            finished: asyncio.Future[Any] = asyncio.ensure_future(done.wait())
            try:
                while not (producers.done() and finished.done()):
                    waiting: list[asyncio.Future[Any]] = [producers, finished]
                    await asyncio.wait(waiting, timeout=0.1)
                    if producers.done() and producers.exception() is not None:
                        break  # a send failed: say so below rather than wait forever
                    progress.update(sent_bar, completed=result.tasks_sent)
                    progress.update(done_bar, completed=result.tasks_done)
                await producers
            finally:
                finished.cancel()
            result.task_seconds = time.perf_counter() - started
            progress.update(sent_bar, completed=result.tasks_sent)
            progress.update(done_bar, completed=result.tasks_done)

            calls_bar = progress.add_task("calls", total=calls)
            started = time.perf_counter()
            for i in range(calls):
                sent = time.perf_counter()
                assert await rpc.proxy.demo.multiply(x=i, y=3) == i * 3
                result.latencies_ms.append((time.perf_counter() - sent) * 1000)
                result.calls += 1
                if i % 50 == 0:
                    progress.update(calls_bar, completed=result.calls)
            progress.update(calls_bar, completed=result.calls)
            result.call_seconds = time.perf_counter() - started

        await worker_master.close()
        await callee.close()
    return result


def summary(result: DemoResult) -> Table:
    table = Table(title="leveret demo")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_column("rate", justify="right")
    table.add_column("latency p50", justify="right")
    table.add_column("latency p99", justify="right")
    task_rate = result.tasks_done / result.task_seconds if result.task_seconds else 0
    call_rate = result.calls / result.call_seconds if result.call_seconds else 0
    table.add_row(
        "tasks (sent / done)",
        f"{result.tasks_sent:,} / {result.tasks_done:,}",
        f"{task_rate:,.0f}/s",
        "",
        "",
    )
    table.add_row(
        "RPC calls (sequential)",
        f"{result.calls:,}",
        f"{call_rate:,.0f}/s",
        f"{statistics.median(result.latencies_ms) if result.latencies_ms else 0:.3f} ms",
        f"{result.percentile(0.99):.3f} ms",
    )
    return table
