"""The ``leveret`` command (``pip install 'leveret[cli]'``).

- ``leveret demo``: a worker and a callee, a stream of tasks and calls, a summary;
- ``leveret run module:app``: serve an :class:`~leveret.App`'s tasks and RPC methods;
- ``leveret status module:app``: the queues an app uses, and what is in them;
- ``leveret dlq list|show|replay TASK``: look into a dead-letter queue, send tasks back;
- ``leveret schedule list module:app``: an app's schedules and their next fire times.
- ``leveret workers``, ``inspect``, ``cancel``, ``dashboard``: the fleet (in :mod:`._cli_fleet`).

Every error is one line on stderr (``leveret run: ...``) with an exit status of its
kind (:data:`EPILOG`); none shows a traceback. The library never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib
import json
import logging
import os
import signal
import sys
import sysconfig
import traceback
from typing import Any
from zoneinfo import ZoneInfo

try:
    import click
except ImportError:  # pragma: no cover - depends on the install
    sys.exit("the leveret command needs its extra: pip install 'leveret[cli]'")

from . import __version__
from ._cli_common import (
    _AMQP_URL_DEFAULT,
    _APP_URL_DEFAULT,
    EPILOG,
    LOG_LEVELS,
    _at_least,
    _BadValue,
    _broker_url,
    _Failure,
    _first_connection,
    _Leveret,
    _log_level_option,
    _loop_option,
    _run,
    _run_async,
    _url_option,
)
from ._cli_fleet import cancel_command, dashboard, inspect_command, workers
from ._connect import ChannelLike, connect, connect_robust, safe_url
from ._loops import event_loop_name
from ._supervisor import NotStopped, run_processes
from .amqp import QueueDeclareOk
from .app import App
from .exceptions import LeveretError, NotFoundError
from .fleet import DEFAULT_INTERVAL, Agent
from .patterns import (
    UNDELIVERABLE,
    DeadLetter,
    dead_letter_queue,
    delay_queues,
    list_dead_letters,
    read_last_fired,
    replay_dead_letters,
    serve,
)


@click.group(cls=_Leveret, epilog=EPILOG, context_settings={"max_content_width": 100})
@click.version_option(__version__, prog_name="leveret", message="%(prog)s %(version)s")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), help="The default for every command.")
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """leveret: Master/Worker and RPC over RabbitMQ."""
    ctx.obj = {"log_level": log_level}


@main.group(short_help="Look into a task's dead letters; send them back.")
def dlq() -> None:
    """Inspect a task's dead-letter queue (<task>.dlq) and replay its tasks."""


@dlq.command("list")
@_log_level_option("error")
@click.argument("task")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    callback=_at_least(1),
    help="How many to show, oldest first.",
)
@_url_option(_AMQP_URL_DEFAULT)
def dlq_list(task: str, limit: int, url: str | None) -> None:
    """List the dead letters of TASK (they stay in the queue)."""
    url = _broker_url(url)
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


@dlq.command("show", short_help="Show one dead letter of TASK in full.")
@_log_level_option("error")
@click.argument("task")
@click.argument("index", type=int, default=0, required=False, callback=_at_least(0))
@click.option("--message-id", help="Pick it by message id instead of INDEX.")
@_url_option(_AMQP_URL_DEFAULT)
def dlq_show(task: str, index: int, message_id: str | None, url: str | None) -> None:
    """Show dead letter INDEX of TASK (default 0: the oldest, as `dlq list` numbers
    them) in full: properties, headers, body, traceback."""
    url = _broker_url(url)
    limit = 10_000 if message_id else index + 1
    letters = _run(url, lambda channel: list_dead_letters(channel, task, limit=limit))
    chosen = (
        [one for one in letters if one.message_id == message_id] if message_id else letters[index:]
    )
    if not chosen:
        which = f"with message id {message_id!r}" if message_id else f"number {index}"
        raise _Failure(f"no dead letter {which} in {dead_letter_queue(task)}")
    _show(chosen[0])


def _show(letter: DeadLetter) -> None:
    click.echo(f"message id:  {letter.message_id}")
    click.echo(f"reason:      {letter.reason}")
    if letter.exception_type:
        click.echo(f"exception:   {letter.exception_type}: {letter.exception_message}")
    click.echo(f"attempts:    {letter.attempts}")
    click.echo(f"routing key: {letter.routing_key}")
    click.echo(f"at:          {letter.dead_lettered_at}")
    properties = letter.properties
    click.echo("properties:")
    for name in (
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    ):
        value = getattr(properties, name)
        if value is not None:
            click.echo(f"  {name}: {value}")
    click.echo("headers:")
    for key, value in (properties.headers or {}).items():
        shown = value.decode(errors="replace") if isinstance(value, bytes) else value
        if shown != letter.traceback:  # shown once, in full, below
            click.echo(f"  {key}: {shown}")
    try:
        body: Any = json.dumps(json.loads(letter.body), indent=2, ensure_ascii=False)
    except ValueError:
        body = repr(letter.body[:2000])
    click.echo(f"body:\n{body}")
    if letter.traceback:
        click.echo(f"traceback:\n{letter.traceback.rstrip()}")


@dlq.command("replay")
@_log_level_option("error")
@click.argument("task")
@click.option(
    "--limit", type=int, callback=_at_least(1), help="Move at most this many (default: all)."
)
@click.option("--message-id", "message_ids", multiple=True, help="Only these (repeatable).")
@_url_option(_AMQP_URL_DEFAULT)
def dlq_replay(task: str, limit: int | None, message_ids: tuple[str, ...], url: str | None) -> None:
    """Send dead letters of TASK back to its queue, oldest first."""
    url = _broker_url(url)
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


_PYTHON_PATHS = tuple(
    sysconfig.get_paths()[kind] + os.sep for kind in ("stdlib", "platstdlib", "purelib", "platlib")
)


def _load_app(target: str) -> App:
    """``package.module:attribute`` -> the App it names.

    Raises:
        _BadValue: TARGET is not of that form, does not import, or is not an App.
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise _BadValue(f"TARGET {target!r} is not module:attribute (e.g. myapp.tasks:app)")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _BadValue(f"cannot import {module_name!r}: {exc}") from None
    except LeveretError as exc:  # an App that refused a declaration while importing
        raise _BadValue(f"cannot load {module_name!r}: {exc}") from None
    except SyntaxError as exc:
        where = f"{exc.filename}, line {exc.lineno}"
        raise _BadValue(f"cannot import {module_name!r}: {where}: {exc.msg}") from None
    except Exception as exc:  # the module's own code failed: where, in one line
        frames = traceback.extract_tb(exc.__traceback__)
        # The deepest line of the user's own files: not Python's, an installed
        # package's, importlib's frozen ones or leveret's.
        theirs = (*_PYTHON_PATHS, os.path.dirname(__file__) + os.sep, "<")
        own = [f for f in frames if not f.filename.startswith(theirs)]
        frame = (own or frames)[-1]
        where = f"{frame.filename}, line {frame.lineno}"
        raise _BadValue(
            f"cannot import {module_name!r}: {where}: {type(exc).__name__}: {exc}"
        ) from None
    if not hasattr(module, attribute):
        raise _BadValue(f"TARGET {target!r}: module {module_name!r} has no {attribute!r}")
    app = getattr(module, attribute)
    if not isinstance(app, App):
        raise _BadValue(f"TARGET {target!r} is {type(app).__name__}, not a leveret.App")
    return app


def _counted(app: App) -> str:
    tasks, methods, schedules = len(app.tasks), len(app.rpcs), len(app.schedules)
    return (
        f"{tasks} task{'s' if tasks != 1 else ''}, "
        f"{methods} RPC method{'s' if methods != 1 else ''}"
        + (f", {schedules} schedule{'s' if schedules != 1 else ''}" if schedules else "")
    )


@main.command(short_help="Serve an app's tasks and RPC methods until SIGINT/SIGTERM.")
@_log_level_option("info")
@click.argument("target")
@click.option(
    "--processes",
    default=1,
    show_default=True,
    callback=_at_least(1),
    help="Worker processes to run.",
)
@click.option(
    "--prefetch",
    type=int,
    callback=_at_least(1),
    help="Tasks per worker at once (default: each task's).",
)
@click.option(
    "--shutdown-timeout",
    default=30.0,
    show_default=True,
    callback=_at_least(0),
    help="Seconds running tasks get to finish on SIGINT/SIGTERM.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics here (needs leveret[metrics]).",
)
@_loop_option()
@click.option(
    "--heartbeat-interval",
    default=DEFAULT_INTERVAL,
    show_default=True,
    callback=_at_least(0),
    help="Seconds between the fleet's heartbeats (0: none, and no inspect or live cancel).",
)
@_url_option(_APP_URL_DEFAULT)
def run(
    target: str,
    processes: int,
    prefetch: int | None,
    shutdown_timeout: float,
    metrics_port: int | None,
    loop: str,
    heartbeat_interval: float,
    url: str | None,
) -> None:
    """Serve the tasks and RPC methods of TARGET (module:app) until SIGINT or SIGTERM.

    With --processes N, each process has its own connection, and gets the URL on
    its stdin (never in its command line); SIGINT or SIGTERM to the first process
    stops them all, gracefully, within --shutdown-timeout plus 10 s. If one of
    them fails, the others are stopped. With --metrics-port P, process i serves
    its metrics on port P+i. Each process announces itself to the fleet (see
    leveret workers) every --heartbeat-interval seconds.
    """
    app = _load_app(target)
    url = _broker_url(url, app, target)
    if processes > 1:
        if url.startswith("memory://"):
            raise _BadValue("--processes above 1 needs RabbitMQ: memory:// is in one process")
        sys.exit(
            _run_processes(
                target,
                processes,
                prefetch,
                shutdown_timeout,
                metrics_port,
                loop,
                heartbeat_interval,
                url,
            )
        )
    _serve(app, target, url, prefetch, shutdown_timeout, metrics_port, loop, heartbeat_interval)


def _serve(
    app: App,
    target: str,
    url: str,
    prefetch: int | None,
    shutdown_timeout: float,
    metrics_port: int | None,
    loop: str,
    heartbeat_interval: float,
) -> None:
    log = logging.getLogger("leveret.cli")
    if metrics_port is not None:
        from .metrics import enable_metrics

        enable_metrics(metrics_port, observers=app.observers)

    async def main() -> None:
        with _first_connection():
            connection = await connect_robust(url, name=f"{app.name} worker")
        # Once workers may take tasks, a signal is kept for later rather than the
        # default death; serve() takes the signals over without a gap.
        running = asyncio.get_running_loop()
        early: list[signal.Signals] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(signum, early.append, signum)
        async with connection, contextlib.AsyncExitStack() as fleet:
            agent = None
            if heartbeat_interval > 0:
                # Started before the workers consume: no revoked task starts.
                agent = Agent(connection, app.name, interval=heartbeat_interval)
                await agent.start(tasks=list(app.tasks))
                fleet.push_async_callback(agent.close)
            master, rpc = await app.start(connection, prefetch_count=prefetch)
            if agent is not None:
                agent.attach(master, rpc)
                await agent.beat()  # the fleet sees what it serves at once
            scheduler = await app.start_scheduler(connection)
            services = (master, rpc) if scheduler is None else (master, rpc, scheduler)
            log.info(
                "serving %s (app %r: %s) on %s, pid %d, event loop %s",
                target,
                app.name,
                _counted(app),
                safe_url(url),
                os.getpid(),
                event_loop_name(),
            )
            if early:
                log.info("%s received while starting: stopping", early[0].name)
                await asyncio.gather(*(service.close(shutdown_timeout) for service in services))
            else:
                await serve(*services, timeout=shutdown_timeout)

    _run_async(url, main, loop)


def _check_broker(url: str) -> None:
    """Open and close one connection: a broker that refuses is reported once, here,
    rather than by every process."""

    async def check() -> None:
        with _first_connection():
            connection = await connect(url, name="leveret run")
            await connection.close()

    _run_async(url, check)


def _run_processes(
    target: str,
    processes: int,
    prefetch: int | None,
    shutdown_timeout: float,
    metrics_port: int | None,
    loop: str,
    heartbeat_interval: float,
    url: str,
) -> int:
    """Run ``processes`` single-process runners (see :mod:`._supervisor`)."""
    _check_broker(url)
    level = logging.getLevelName(logging.getLogger().level).lower()
    command = [sys.executable, "-m", "leveret.cli", "--log-level", level, "run", target]
    command += ["--shutdown-timeout", repr(shutdown_timeout), "--loop", loop, "--url", "-"]
    command += ["--heartbeat-interval", repr(heartbeat_interval)]
    if prefetch is not None:
        command += ["--prefetch", str(prefetch)]
    commands = [
        command if metrics_port is None else [*command, "--metrics-port", str(metrics_port + i)]
        for i in range(processes)
    ]
    try:
        return run_processes(commands, url, shutdown_timeout)
    except NotStopped as exc:
        raise _Failure(str(exc)) from None


@main.command(short_help="Show an app's queues: ready, consumers, delayed.")
@_log_level_option("error")
@click.argument("target")
@_url_option(_APP_URL_DEFAULT)
def status(target: str, url: str | None) -> None:
    """Show the queues TARGET (module:app) uses: ready messages, consumers, and
    for a task the copies that wait in its delay queues (delayed tasks and retries).

    (AMQP does not tell how many messages are unacked; RabbitMQ's management UI does.)
    """
    app = _load_app(target)
    url = _broker_url(url, app, target)
    # (queue, its delay queues: None for a queue that is not a task's)
    names: list[tuple[str, list[str] | None]] = []
    for task in app.tasks.values():
        names.append((task.name, delay_queues(task.name)))
        if task.options.get("dead_letter", True):
            names.append((dead_letter_queue(task.name), None))
    names += [(name, None) for name in app.rpcs]
    names.append((UNDELIVERABLE, None))

    async def look(channel: ChannelLike) -> list[tuple[str, str, str, str]]:
        async def declared(name: str) -> QueueDeclareOk | None:
            nonlocal channel
            try:
                return await channel.queue_declare(name, passive=True)
            except NotFoundError:  # the broker closed the channel: go on with another
                channel = await channel.connection.channel()
                return None

        rows = []
        for name, ladder in names:
            ok = await declared(name)
            if ok is None:
                rows += [] if name == UNDELIVERABLE else [(name, "missing", "", "")]
                continue
            waiting = [await declared(queue) for queue in ladder or ()]
            delayed = "" if ladder is None else f"{sum(w.message_count for w in waiting if w):,}"
            rows.append((name, f"{ok.message_count:,}", f"{ok.consumer_count}", delayed))
        return rows

    rows = _run(url, look)
    click.echo(f"{'queue':<50} {'ready':>10} {'consumers':>10} {'delayed':>10}")
    for name, ready, consumers, delayed in rows:
        click.echo(f"{name:<50} {ready:>10} {consumers:>10} {delayed:>10}")


@main.group(short_help="Look at an app's schedules.")
def schedule() -> None:
    """Look at the schedules of an app."""


@schedule.command("list", short_help="Show the schedules of TARGET and their next fire times.")
@_log_level_option("error")
@click.argument("target")
@click.option(
    "--count", default=3, show_default=True, callback=_at_least(1), help="Fire times to show."
)
@_url_option(_APP_URL_DEFAULT)
def schedule_list(target: str, count: int, url: str | None) -> None:
    """Show the schedules of TARGET (module:app): timing, timezone and next fire times,
    with the last tick fired when no scheduler runs (a running leader holds that, and
    it is not taken from it)."""
    app = _load_app(target)
    if not app.schedules:
        click.echo(f"{target} has no schedules")
        return
    fired = _run(_broker_url(url, app, target), lambda ch: read_last_fired(ch, app.name))
    now = datetime.datetime.now(datetime.UTC)
    first = next(iter(app.schedules.values()))
    for entry in app.schedules.values():
        timing = entry.schedule
        zone = ZoneInfo(timing.timezone) if timing.cron is not None else datetime.UTC
        shown = [tick.astimezone(zone).isoformat(" ") for tick in timing.next_ticks(now, count)]
        if fired is None:
            last = "not shown: a running scheduler holds it"
        else:
            tick = fired.get(entry.id)
            last = "never" if tick is None else tick.astimezone(zone).isoformat(" ")
        click.echo(f"\n{entry.id}" if entry is not first else entry.id)
        click.echo(f"  task:     {entry.task}")
        click.echo(f"  timing:   {timing.cron or f'every {timing.every:g} s'} ({timing.timezone})")
        click.echo(f"  next:     {', '.join(shown)}")
        click.echo(f"  last:     {last}")


@main.command(short_help="Send tasks and calls to a worker and a callee; show the numbers.")
@_log_level_option("error")
@click.option(
    "--tasks", default=10_000, show_default=True, callback=_at_least(0), help="Tasks to send."
)
@click.option(
    "--calls",
    default=1_000,
    show_default=True,
    callback=_at_least(0),
    help="Sequential RPC calls to make.",
)
@_loop_option()
@_url_option(_AMQP_URL_DEFAULT)
def demo(tasks: int, calls: int, loop: str, url: str | None) -> None:
    """Start a worker and an RPC callee, send them tasks and calls, and show the numbers.

    With --url memory:// it all runs in this process, on the in-memory broker.
    """
    from rich.console import Console

    from ._demo import run_demo, summary

    url = _broker_url(url)
    console = Console()
    result = _run_async(url, lambda: run_demo(url, safe_url(url), tasks, calls, console), loop)
    console.print(summary(result))


main.add_command(workers)
main.add_command(inspect_command, "inspect")
main.add_command(cancel_command, "cancel")
main.add_command(dashboard)


if __name__ == "__main__":  # pragma: no cover
    main()
