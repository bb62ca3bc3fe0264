"""``leveret demo``: a worker and a callee, a stream of tasks and calls, a summary.

Runs in one process against the broker at ``url`` (``memory://`` runs it on
the in-memory broker). Used by the CLI only; rich draws the progress. The bars
and the summary read the same clocks, so their rates agree.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

from . import connect_robust
from ._loops import event_loop_name
from .patterns import RPC, Master


@dataclass
class Stream:
    """Items of one kind (tasks sent, tasks done, calls): how many, from when to when."""

    total: int
    count: int = 0
    started: float | None = None
    finished: float | None = None

    def start(self) -> None:
        self.started = time.perf_counter()
        if self.total == 0:
            self.finished = self.started

    def add(self) -> None:
        self.count += 1
        if self.count == self.total:
            self.finished = time.perf_counter()

    @property
    def seconds(self) -> float:
        """From the start to the last item (or to now, while it runs)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.perf_counter()) - self.started

    @property
    def rate(self) -> float:
        seconds = self.seconds
        return self.count / seconds if seconds > 0 else 0.0


@dataclass
class DemoResult:
    sent: Stream
    done: Stream
    calls: Stream
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


class _Rate(ProgressColumn):
    """A stream's items per second, as the summary computes it."""

    def render(self, task: Task) -> Text:
        stream: Stream = task.fields["stream"]
        return Text(f"{stream.rate:,.0f}/s" if stream.count else "")


class _Seconds(ProgressColumn):
    """A stream's time so far (frozen at its last item)."""

    def render(self, task: Task) -> Text:
        stream: Stream = task.fields["stream"]
        return Text(f"{stream.seconds:.2f} s" if stream.started is not None else "")


async def run_demo(url: str, shown: str, tasks: int, calls: int, console: Console) -> DemoResult:
    """Serve a resize task and a multiply method; send ``tasks`` tasks and make ``calls``
    calls, one at a time. ``shown`` is the URL as it may be printed."""
    if url == "memory://":
        url = "memory://leveret-demo"  # both connections must reach the same broker
    # Names of this run's own: two demos on one broker must not share a queue.
    prefix = f"demo-{secrets.token_hex(3)}"
    result = DemoResult(Stream(tasks), Stream(tasks), Stream(calls))
    all_done = asyncio.Event()

    async def resize(*, image_id: int, width: int) -> None:
        result.done.add()
        if result.done.finished is not None:
            all_done.set()

    async def multiply(*, x: int, y: int) -> int:
        return x * y

    async with (
        await connect_robust(url, name="leveret demo worker") as serving,
        await connect_robust(url, name="leveret demo client") as client,
    ):
        worker_master = Master(await serving.channel())
        await worker_master.create_worker(
            f"{prefix}.resize", resize, auto_delete=True, dead_letter=False
        )
        callee = await RPC.create(await serving.channel(publisher_confirms=False))
        await callee.register(f"{prefix}.multiply", multiply, auto_delete=True)
        master = Master(await client.channel())
        rpc = await RPC.create(await client.channel(publisher_confirms=False), timeout=10)
        console.print(f"leveret demo against {shown} (event loop {event_loop_name()})")

        async def produce(first: int) -> None:
            for image_id in range(first, tasks, 64):
                await master.create_task(
                    f"{prefix}.resize", kwargs={"image_id": image_id, "width": 640}
                )
                result.sent.add()

        async def call() -> None:
            result.calls.start()
            for i in range(calls):
                sent = time.perf_counter()
                product = await rpc.call(f"{prefix}.multiply", {"x": i, "y": 3})
                result.latencies_ms.append((time.perf_counter() - sent) * 1000)
                if product != i * 3:
                    raise RuntimeError(f"multiply(x={i}, y=3) returned {product!r}")
                result.calls.add()

        with Progress(
            TextColumn("[bold]{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            _Rate(),
            _Seconds(),
            console=console,
        ) as progress:
            bars = {
                progress.add_task(name, total=stream.total, stream=stream): stream
                for name, stream in (
                    ("sent", result.sent),
                    ("done", result.done),
                    ("calls", result.calls),
                )
            }

            def refresh() -> None:
                for bar, stream in bars.items():
                    progress.update(bar, completed=stream.count)

            async def keep_refreshing() -> None:
                while True:
                    refresh()
                    await asyncio.sleep(0.1)

            async with asyncio.TaskGroup() as group:
                refresher = group.create_task(keep_refreshing())
                try:
                    result.sent.start()
                    result.done.start()
                    if tasks == 0:
                        all_done.set()
                    async with asyncio.TaskGroup() as producers:
                        for lane in range(min(64, tasks)):
                            producers.create_task(produce(lane))
                    await all_done.wait()
                    await call()
                finally:
                    refresher.cancel()
            refresh()

        await worker_master.close()
        await callee.close()
    return result


def summary(result: DemoResult) -> Table:
    """The numbers, in a table that fits 80 columns."""
    table = Table(
        title="leveret demo",
        caption="rate: per second, from the first to the last; sent: confirmed by the "
        "broker; done: run by the worker; calls: one at a time",
        caption_justify="left",
    )
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_column("rate", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("p50", justify="right")
    table.add_column("p99", justify="right")
    for name, stream in (("tasks sent", result.sent), ("tasks done", result.done)):
        table.add_row(name, f"{stream.count:,}", f"{stream.rate:,.0f}/s", f"{stream.seconds:.2f}")
    latencies = (
        [f"{statistics.median(result.latencies_ms):.3f} ms", f"{result.percentile(0.99):.3f} ms"]
        if result.latencies_ms
        else []
    )
    table.add_row(
        "RPC calls",
        f"{result.calls.count:,}",
        f"{result.calls.rate:,.0f}/s",
        f"{result.calls.seconds:.2f}",
        *latencies,
    )
    return table
