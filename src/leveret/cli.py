"""The ``leveret`` command (``pip install 'leveret[cli]'``).

- ``leveret demo``: a worker and a callee, a stream of tasks and calls, a summary;
- ``leveret run module:app``: serve an :class:`~leveret.App`'s tasks and RPC methods;
- ``leveret status module:app``: the queues an app uses, and what is in them;
- ``leveret dlq list|show|replay TASK``: look into a dead-letter queue, send tasks back.

The library never imports this module.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

try:
    import click
except ImportError:  # pragma: no cover - depends on the install
    sys.exit("the leveret command needs its extra: pip install 'leveret[cli]'")

from ._connect import ChannelLike, connect, connect_robust, safe_url
from .amqp import DEFAULT_URL
from .app import App
from .exceptions import ConnectError, LeveretError, NotFoundError
from .patterns import (
    DeadLetter,
    dead_letter_queue,
    list_dead_letters,
    replay_dead_letters,
    retry_queue,
    serve,
)

T = TypeVar("T")

url_option = click.option(
    "--url",
    default=lambda: os.environ.get("AMQP_URL", DEFAULT_URL),
    show_default="$AMQP_URL, else amqp://guest:guest@localhost/",
    help="The broker to talk to.",
)


START_RABBITMQ = (
    "Is RabbitMQ running? Start it with `rabbitmq-server -detached` "
    "(then `rabbitmqctl await_startup`), or point --url (or AMQP_URL) at your broker."
)


def _run(url: str, work: Callable[[ChannelLike], Awaitable[T]]) -> T:
    """Connect, run ``work`` on a channel, and turn failures into clear exits."""

    async def main() -> T:
        async with await connect(url, name="leveret cli") as connection:
            return await work(await connection.channel())

    try:
        return asyncio.run(main())
    except ConnectError as exc:
        raise click.ClickException(f"{exc}\n{START_RABBITMQ} (now {safe_url(url)})") from None
    except NotFoundError as exc:
        raise click.ClickException(f"{exc.reply_text}: is the task name right?") from None
    except LeveretError as exc:
        raise click.ClickException(str(exc)) from None


LOG_LEVELS = ["debug", "info", "warning", "error"]


def _log_level_option(default: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """``--log-level``, taken before the command (``leveret --log-level info run ...``)
    or after it (``leveret run ... --log-level info``)."""

    def configure(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        chosen = value or (ctx.obj or {}).get("log_level") or default
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", force=True)
        logging.getLogger().setLevel(chosen.upper())

    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS),
        callback=configure,
        expose_value=False,
        is_eager=True,
        help=f"What leveret logs to stderr (default: {default}).",
    )


@click.group()
@click.option("--log-level", type=click.Choice(LOG_LEVELS), help="The default for every command.")
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """leveret: Master/Worker and RPC over RabbitMQ."""
    ctx.obj = {"log_level": log_level}


@main.group()
def dlq() -> None:
    """Inspect a task's dead-letter queue (<task>.dlq) and replay its tasks."""


@dlq.command("list")
@_log_level_option("error")
@click.argument("task")
@click.option("--limit", default=50, show_default=True, help="How many to show, oldest first.")
@url_option
def dlq_list(task: str, limit: int, url: str) -> None:
    """List the dead letters of TASK (they stay in the queue)."""
    letters = _run(url, lambda channel: list_dead_letters(channel, task, limit=limit))
    if not letters:
        click.echo(f"{dead_letter_queue(task)} is empty")
        return
    click.echo(f"{'#':>3}  {'message id':<24}  {'attempts':>8}  {'dead-lettered at':<20}  reason")
    for index, letter in enumerate(letters):
        when = (
            letter.dead_lettered_at.strftime("%Y-%m-%d %H:%M:%S") if letter.dead_lettered_at else ""
        )
        error = (
            f" ({letter.exception_type}: {letter.exception_message})"
            if letter.exception_type
            else ""
        )
        click.echo(
            f"{index:>3}  {letter.message_id or '-':<24}  {letter.attempts or '-':>8}  "
            f"{when:<20}  {letter.reason}{error}"
        )


@dlq.command("show")
@_log_level_option("error")
@click.argument("task")
@click.option("--index", default=0, show_default=True, help="Which one (0: the oldest).")
@click.option("--message-id", help="Pick it by message id instead.")
@url_option
def dlq_show(task: str, index: int, message_id: str | None, url: str) -> None:
    """Show one dead letter of TASK in full: body, headers, traceback."""
    limit = 10_000 if message_id else index + 1
    letters = _run(url, lambda channel: list_dead_letters(channel, task, limit=limit))
    chosen = (
        [one for one in letters if one.message_id == message_id] if message_id else letters[index:]
    )
    if not chosen:
        raise click.ClickException(f"no such dead letter in {dead_letter_queue(task)}")
    _show(chosen[0])


def _show(letter: DeadLetter) -> None:
    click.echo(f"message id:  {letter.message_id}")
    click.echo(f"reason:      {letter.reason}")
    if letter.exception_type:
        click.echo(f"exception:   {letter.exception_type}: {letter.exception_message}")
    click.echo(f"attempts:    {letter.attempts}")
    click.echo(f"routing key: {letter.routing_key}")
    click.echo(f"at:          {letter.dead_lettered_at}")
    click.echo(f"properties:  {letter.properties!r}")
    try:
        body: Any = json.dumps(json.loads(letter.body), indent=2, ensure_ascii=False)
    except ValueError:
        body = repr(letter.body[:2000])
    click.echo(f"body:\n{body}")
    if letter.traceback:
        click.echo(f"traceback:\n{letter.traceback}")


@dlq.command("replay")
@_log_level_option("error")
@click.argument("task")
@click.option("--limit", type=int, help="Move at most this many (default: all).")
@click.option("--message-id", "message_ids", multiple=True, help="Only these (repeatable).")
@url_option
def dlq_replay(task: str, limit: int | None, message_ids: tuple[str, ...], url: str) -> None:
    """Send dead letters of TASK back to its queue, oldest first."""
    moved = _run(
        url,
        lambda channel: replay_dead_letters(
            channel, task, limit=limit, message_ids=set(message_ids) or None
        ),
    )
    click.echo(
        f"moved {moved} task{'s' if moved != 1 else ''} from {dead_letter_queue(task)} "
        f"back to {task}"
    )


def _load_app(target: str) -> App:
    """``package.module:attribute`` -> the App it names."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"{target!r} is not module:attribute (e.g. myapp.tasks:app)")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        raise click.BadParameter(f"{target!r} is {type(app).__name__}, not a leveret.App")
    return app


@main.command()
@_log_level_option("info")
@click.argument("target")
@click.option("--processes", default=1, show_default=True, help="Worker processes to run.")
@click.option("--prefetch", type=int, help="Tasks per worker at once (default: each task's).")
@click.option(
    "--shutdown-timeout",
    default=30.0,
    show_default=True,
    help="Seconds running tasks get to finish on SIGINT/SIGTERM.",
)
@click.option(
    "--metrics-port", type=int, help="Serve Prometheus metrics here (needs leveret[metrics])."
)
@url_option
def run(
    target: str,
    processes: int,
    prefetch: int | None,
    shutdown_timeout: float,
    metrics_port: int | None,
    url: str,
) -> None:
    """Serve the tasks and RPC methods of TARGET (module:app) until SIGINT or SIGTERM.

    With --processes N, each process has its own connection; with --metrics-port P,
    process i serves its metrics on port P+i.
    """
    app = _load_app(target)
    if processes > 1:
        sys.exit(_run_processes(target, processes, prefetch, shutdown_timeout, metrics_port, url))
    sys.exit(_serve(app, url, prefetch, shutdown_timeout, metrics_port))


def _serve(
    app: App, url: str, prefetch: int | None, shutdown_timeout: float, metrics_port: int | None
) -> int:
    log = logging.getLogger("leveret.cli")
    if metrics_port is not None:
        from .metrics import enable_metrics

        enable_metrics(metrics_port, observers=app.observers)

    async def main() -> None:
        async with await connect_robust(url, name=f"{app.name} worker") as connection:
            master, rpc = await app.start(connection, prefetch_count=prefetch)
            log.info(
                "serving %d tasks and %d rpc methods of %r on %s (pid %d)",
                len(app.tasks),
                len(app.rpcs),
                app.name,
                safe_url(url),
                os.getpid(),
            )
            await serve(master, rpc, timeout=shutdown_timeout)

    try:
        asyncio.run(main())
    except ConnectError as exc:
        click.echo(f"leveret run: {exc}\n{START_RABBITMQ}", err=True)
        return 2
    return 0


def _run_processes(
    target: str,
    processes: int,
    prefetch: int | None,
    shutdown_timeout: float,
    metrics_port: int | None,
    url: str,
) -> int:
    """Run ``processes`` single-process runners; forward SIGTERM; the worst exit code."""
    command = [
        sys.executable,
        "-m",
        "leveret.cli",
        "run",
        target,
        "--processes",
        "1",
        "--shutdown-timeout",
        str(shutdown_timeout),
        "--url",
        url,
    ]
    if prefetch is not None:
        command += ["--prefetch", str(prefetch)]
    command += ["--log-level", logging.getLevelName(logging.getLogger().level).lower()]
    children = [
        subprocess.Popen(
            command if metrics_port is None else [*command, "--metrics-port", str(metrics_port + i)]
        )
        for i in range(processes)
    ]

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    # Ctrl-C reaches the children from the terminal by itself; do not die before them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return max(child.wait() for child in children)


@main.command()
@_log_level_option("error")
@click.argument("target")
@url_option
def status(target: str, url: str) -> None:
    """Show the queues TARGET (module:app) uses: ready messages and consumers.

    (AMQP does not tell how many messages are unacked; RabbitMQ's management UI does.)
    """
    app = _load_app(target)
    names: list[str] = []
    for task in app.tasks.values():
        names.append(task.name)
        if task.options.get("dead_letter", True):
            names.append(dead_letter_queue(task.name))
        policy = task.options.get("retries")
        attempts = policy.max_attempts if policy is not None else 1
        names += [retry_queue(task.name, n) for n in range(2, attempts + 1)]
    names += list(app.rpcs)

    async def look(channel: ChannelLike) -> list[tuple[str, str, str]]:
        rows = []
        for name in names:
            try:
                ok = await channel.queue_declare(name, passive=True)
                rows.append((name, f"{ok.message_count:,}", f"{ok.consumer_count}"))
            except NotFoundError:
                rows.append((name, "missing", ""))
                channel = await channel.connection.channel()
        return rows

    click.echo(f"{'queue':<50} {'ready':>10} {'consumers':>10}")
    for name, ready, consumers in _run(url, look):
        click.echo(f"{name:<50} {ready:>10} {consumers:>10}")


@main.command()
@_log_level_option("error")
@click.option("--tasks", default=10_000, show_default=True, help="Tasks to send.")
@click.option("--calls", default=1_000, show_default=True, help="Sequential RPC calls to make.")
@url_option
def demo(tasks: int, calls: int, url: str) -> None:
    """Start a worker and an RPC callee, send them tasks and calls, and show the numbers.

    ``--url memory://`` runs it all in this process on the in-memory broker.
    """
    from rich.console import Console

    from ._demo import run_demo, summary

    console = Console()
    console.print(f"leveret demo against {safe_url(url)}")
    try:
        result = asyncio.run(run_demo(url, tasks, calls, console))
    except ConnectError as exc:
        raise click.ClickException(f"{exc}\n{START_RABBITMQ}") from None
    console.print(summary(result))


if __name__ == "__main__":  # pragma: no cover
    main()
