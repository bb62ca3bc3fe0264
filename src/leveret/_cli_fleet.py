"""``leveret workers``, ``inspect``, ``cancel`` and ``dashboard``: the fleet from the
command line (see :mod:`leveret.fleet`)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import click

from ._cli_common import (
    _AMQP_URL_DEFAULT,
    _at_least,
    _BadValue,
    _broker_url,
    _Failure,
    _log_level_option,
    _run,
    _run_async,
    _url_option,
)
from ._connect import connect
from .amqp import parse_urls
from .fleet import DROPPED_AFTER, Inspection, WorkerInfo, cancel, inspect, read_workers


def _ago(seconds: float) -> str:
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _nobody(app: str | None) -> str:
    whose = f"of app {app!r} " if app else ""
    return f"no worker {whose}has sent a heartbeat lately (they are forgotten {DROPPED_AFTER} "


@click.command(short_help="List the worker processes of the fleet: alive, lost or stopped.")
@_log_level_option("error")
@click.argument("app", required=False)
@_url_option(_AMQP_URL_DEFAULT)
def workers(app: str | None, url: str | None) -> None:
    """List the worker processes of APP (default: of every app) by their latest heartbeat.

    A worker not heard from for two heartbeat intervals is shown as lost; after five
    it is forgotten. A worker that stopped gracefully is shown as stopped.
    """
    url = _broker_url(url)
    found: list[WorkerInfo] = _run(url, lambda channel: read_workers(channel, app))
    if not found:
        click.echo(_nobody(app) + "intervals after their last)")
        return
    now = time.time()
    click.echo(
        f"{'worker':<34} {'app':<14} {'state':<8} {'heard':>12} {'in flight':>9} "
        f"{'done':>8} {'failed':>7}  serves"
    )
    for info in found:
        serves = ", ".join([*info.tasks, *(f"{method}()" for method in info.rpc)]) or "-"
        click.echo(
            f"{info.id:<34} {info.app:<14} {info.state(now):<8} {_ago(info.age(now)):>12} "
            f"{info.in_flight:>9} {info.counts.get('done', 0):>8} "
            f"{info.counts.get('failed', 0):>7}  {serves}"
        )


@click.command("inspect", short_help="Show what every live worker runs right now.")
@_log_level_option("error")
@click.argument("app", required=False)
@click.option(
    "--timeout",
    default=2.0,
    show_default=True,
    callback=_at_least(0.01),
    help="Seconds to wait for the slowest worker.",
)
@_url_option(_AMQP_URL_DEFAULT)
def inspect_command(app: str | None, timeout: float, url: str | None) -> None:
    """Show the tasks every live worker of APP (default: of every app) runs right now.

    Returns as soon as every live worker has answered; one that did not answer
    within --timeout is named, and the exit status is 1.
    """
    url = _broker_url(url)
    found: Inspection = _run(url, lambda channel: inspect(channel, app, timeout=timeout))
    if not found.workers:
        click.echo(_nobody(app) + "intervals after their last)")
        return
    click.echo(f"{'worker':<34} {'task':<24} {'message id':<26} {'attempt':>7} {'running':>9}")
    for worker_id, tasks in found.running.items():
        if not tasks:
            click.echo(f"{worker_id:<34} (idle)")
        for task in sorted(tasks, key=lambda task: -task.running_for):
            click.echo(
                f"{worker_id:<34} {task.task:<24} {task.message_id or '-':<26} "
                f"{task.attempt:>7} {task.running_for:>8.1f}s"
            )
    if found.missing:
        names = ", ".join(f"{info.id} ({info.app})" for info in found.missing)
        raise _Failure(f"no answer within {timeout:g} s from {names}")


@click.command(short_help="Cancel a task: queued, delayed, waiting for a retry, or running.")
@_log_level_option("error")
@click.argument("task")
@click.argument("message_id")
@_url_option(_AMQP_URL_DEFAULT)
def cancel_command(task: str, message_id: str, url: str | None) -> None:
    """Cancel TASK's task MESSAGE_ID wherever it is.

    Queued, delayed or waiting for a retry, it never starts: the worker it reaches
    (one started later too) sends it to TASK.dlq with the reason "cancelled". A
    running async def task is cancelled within a second and dead-lettered the same
    way; a running plain function is interrupted in its thread (one blocked in C code
    is left to finish, and its result is discarded). It is never retried. The
    revocation is kept for a day (10,000 per task at most).
    """
    url = _broker_url(url)
    _run(url, lambda channel: cancel(channel, task, message_id))
    click.echo(
        f"task {task!r} message {message_id}: cancelled (dead-lettered as it reaches a worker)"
    )


def _read_token(given: str | None) -> str | None:
    """``--token`` (``-``: a line read from stdin), else ``$LEVERET_DASHBOARD_TOKEN``."""
    if given == "-":
        given = sys.stdin.readline().strip()
    given = given or os.environ.get("LEVERET_DASHBOARD_TOKEN") or None
    if given is not None and len(given) < 16:
        raise _BadValue("the dashboard's token must be at least 16 characters")
    return given


@click.command(short_help="Serve the fleet's live web dashboard.")
@_log_level_option("warning")
@click.argument("app", required=False)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free."
)
@click.option(
    "--token",
    help="Needed to bind another address than 127.0.0.1: '-' reads it from stdin (default: "
    "$LEVERET_DASHBOARD_TOKEN). Open the page once with ?token=...",
)
@click.option(
    "--management",
    metavar="URL",
    help="RabbitMQ's management API, for unacked counts and rates (default: "
    "http://BROKER-HOST:15672, with the broker URL's user).",
)
@_url_option(_AMQP_URL_DEFAULT)
def dashboard(
    app: str | None,
    host: str,
    port: int,
    token: str | None,
    management: str | None,
    url: str | None,
) -> None:
    """Serve a live page of the fleet of APP (default: every app) until Ctrl-C.

    It shows the workers (heartbeat age, tasks running now, with a cancel button),
    their task queues (ready, consumers, rates, retries waiting), the dead-letter
    queues (reasons, a replay button) and the RPC methods' latency p50/p99. Needs
    the extra: pip install 'leveret[dashboard]'.
    """
    try:
        from .fleet.dashboard import Management, serve_dashboard
    except ImportError:
        raise _Failure("the dashboard needs its extra: pip install 'leveret[dashboard]'") from None
    url = _broker_url(url)
    secret = _read_token(token)
    if host not in ("127.0.0.1", "localhost", "::1") and secret is None:
        raise _BadValue(
            f"--host {host} needs a token (--token - or $LEVERET_DASHBOARD_TOKEN): anyone "
            "who reaches the page could replay and cancel tasks"
        )
    params = parse_urls(url) if not url.startswith("memory://") else None
    api = None
    if params is not None:
        broker_host = params.addresses[0][0]
        api = Management(
            management or f"http://{broker_host}:15672",
            params.username,
            params.password,
            params.virtualhost,
        )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[None] = loop.create_future()

        def stopping() -> None:
            if not stop.done():
                stop.set_result(None)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping)
        async with await connect(url, name="leveret dashboard") as connection:
            try:
                serving = serve_dashboard(
                    connection, app, host=host, port=port, token=secret, management=api
                )
                async with serving as address:
                    click.echo(f"leveret dashboard on {address} (Ctrl-C stops it)")
                    await stop
            except OSError as exc:
                raise _Failure(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None

    _run_async(url, main)
