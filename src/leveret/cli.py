"""The ``leveret`` command (``pip install 'leveret[cli]'``).

``leveret dlq list|show|replay TASK`` looks into a task's dead-letter queue and
sends its tasks back. The library never imports this module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

try:
    import click
except ImportError:  # pragma: no cover - depends on the install
    sys.exit("the leveret command needs its extra: pip install 'leveret[cli]'")

from .amqp import Channel, connect
from .amqp._url import DEFAULT_URL, parse_urls
from .exceptions import ConnectError, LeveretError, NotFoundError
from .patterns import DeadLetter, dead_letter_queue, list_dead_letters, replay_dead_letters

T = TypeVar("T")

url_option = click.option(
    "--url",
    default=lambda: os.environ.get("AMQP_URL", DEFAULT_URL),
    show_default="$AMQP_URL, else amqp://guest:guest@localhost/",
    help="The broker to talk to.",
)


def _run(url: str, work: Callable[[Channel], Awaitable[T]]) -> T:
    """Connect, run ``work`` on a channel, and turn failures into clear exits."""

    async def main() -> T:
        async with await connect(url, name="leveret cli") as connection:
            return await work(await connection.channel())

    try:
        return asyncio.run(main())
    except ConnectError as exc:
        raise click.ClickException(
            f"{exc}\nIs RabbitMQ running? Start it with `rabbitmq-server -detached`, "
            f"or point --url (or AMQP_URL) at your broker (now {parse_urls(url).safe_url()})."
        ) from None
    except NotFoundError as exc:
        raise click.ClickException(f"{exc.reply_text}: is the task name right?") from None
    except LeveretError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="error",
    show_default=True,
    help="What leveret logs to stderr (errors are reported either way).",
)
def main(log_level: str) -> None:
    """leveret: Master/Worker and RPC over RabbitMQ."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")


@main.group()
def dlq() -> None:
    """Inspect a task's dead-letter queue (<task>.dlq) and replay its tasks."""


@dlq.command("list")
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


if __name__ == "__main__":  # pragma: no cover
    main()
