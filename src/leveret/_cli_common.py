"""What every ``leveret`` command shares: exit statuses, one-line errors, the URL
and log-level options, connecting and running a coroutine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, NoReturn, TypeVar

import click

from ._connect import ChannelLike, connect
from ._hints import connect_failure
from ._loops import LOOPS, loop_factory
from .amqp import DEFAULT_URL, parse_urls
from .app import App
from .exceptions import ConfigurationError, ConnectError, LeveretError, NotFoundError

T = TypeVar("T")

#: Exit statuses, the same for every command.
EXIT_FAILURE = 1  # it was tried and failed: the broker cannot be reached or said no, ...
EXIT_USAGE = 2  # what was asked cannot be tried: an option, argument or URL is wrong
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it

EPILOG = (
    "Exit status: 0 done; 1 a failure while running (the broker cannot be reached or "
    "refused, a queue or dead letter is missing, a process of leveret run failed); 2 bad "
    "usage (an unknown option, a value out of range, a malformed URL, a TARGET that is "
    "not an App); 130 interrupted. Errors are one line on stderr."
)


class _Failure(click.ClickException):
    """A command failed while running: one line, exit status 1."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        ctx = click.get_current_context(silent=True)
        self.command_path = ctx.command_path if ctx else "leveret"


class _Interrupted(_Failure):
    exit_code = EXIT_INTERRUPTED


class _BadValue(click.UsageError):
    """A value leveret checked itself (a URL, a range, a TARGET): its message says all,
    so no pointer to --help."""


class _Leveret(click.Group):
    """The top-level group: every error becomes one line, ``leveret CMD: message``,
    on stderr, and the exit status of its kind."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        kwargs.setdefault("prog_name", "leveret")  # not "python -m leveret.cli"
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as exc:
            if exc.ctx is not None and exc.format_message() == exc.ctx.get_help():
                _exit(exc.format_message(), EXIT_USAGE)  # a group without its command
            where = exc.ctx.command_path if exc.ctx else "leveret"
            hint = "" if isinstance(exc, _BadValue) else f" (see {where} --help)"
            _exit(f"{where}: {exc.format_message()}{hint}", EXIT_USAGE)
        except _Failure as exc:
            _exit(f"{exc.command_path}: {exc.format_message()}", exc.exit_code)
        except click.ClickException as exc:
            _exit(f"leveret: {exc.format_message()}", exc.exit_code)
        except click.Abort:
            _exit("leveret: interrupted", EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


def _exit(line: str, code: int) -> NoReturn:
    click.echo(line, err=True)
    sys.exit(code)


def _at_least(minimum: float) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback: the value (if given) is at least ``minimum``."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and value < minimum:
            name = param.opts[0] if param.param_type_name == "option" else param.human_readable_name
            raise _BadValue(f"{name} must be at least {minimum:g}, not {value:g}", ctx)
        return value

    return check


def _url_option(default: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    return click.option(
        "--url",
        metavar="URL",
        help=f"The broker (default: {default}). '-' reads it from stdin, out of sight of ps.",
    )


_AMQP_URL_DEFAULT = "$AMQP_URL, else amqp://guest:guest@localhost/"
_APP_URL_DEFAULT = "the app's: App(url), else $AMQP_URL, else amqp://guest:guest@localhost/"


def _broker_url(given: str | None, app: App | None = None, target: str = "") -> str:
    """The URL a command talks to, checked: ``--url`` (``-``: a line read from stdin),
    else the app's URL, else ``$AMQP_URL``, else the default.

    Raises:
        _BadValue: the URL is empty or malformed; the message says where it came
            from (never the URL itself: it may hold a password).
    """
    if given == "-":
        given, source = sys.stdin.readline().strip(), "URL read from stdin (--url -)"
    else:
        source = "--url"
    if given == "":
        raise _BadValue(f"{source} is empty: give an amqp:// or amqps:// URL")
    if given is None:
        given = app.url if app is not None else os.environ.get("AMQP_URL") or DEFAULT_URL
        source = "AMQP_URL" if given == os.environ.get("AMQP_URL") else f"URL of {target}"
    if "://" not in given:  # not echoed: "user:password@host" would show the password
        raise _BadValue(
            f"bad {source}: it has no scheme; write amqp://user:password@host:port/vhost"
        )
    if not given.startswith("memory://"):
        try:
            parse_urls(given)
        except ConfigurationError as exc:
            raise _BadValue(f"bad {source}: {exc}") from None
    return given


def _loop_option() -> Callable[[Callable[..., T]], Callable[..., T]]:
    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        try:
            loop_factory(value)
        except ConfigurationError as exc:
            raise _BadValue(f"--loop {value}: {exc}", ctx) from None
        return value

    return click.option(
        "--loop",
        type=click.Choice(LOOPS),
        default="auto",
        show_default=True,
        callback=check,
        help="The event loop: uvloop (pip install 'leveret[speed]'), asyncio's own, or "
        "auto: uvloop when it is installed.",
    )


def _run_async(url: str, main: Callable[[], Coroutine[Any, Any, T]], loop: str = "asyncio") -> T:
    """``asyncio.run(main())`` on the event loop ``loop`` names (see ``--loop``), its
    failures turned into one-line exits."""
    try:
        with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
            return runner.run(main())
    except ConnectError as exc:
        raise _Failure(connect_failure(exc, url)) from None
    except NotFoundError as exc:
        raise _Failure(f"{exc.reply_text}: is the task name right?") from None
    except LeveretError as exc:
        raise _Failure(str(exc)) from None
    except KeyboardInterrupt:
        raise _Interrupted("interrupted") from None


def _run(url: str, work: Callable[[ChannelLike], Awaitable[T]]) -> T:
    """Connect, run ``work`` on a channel, and turn failures into clear exits."""

    async def main() -> T:
        async with await connect(url, name="leveret cli") as connection:
            return await work(await connection.channel())

    return _run_async(url, main)


@contextlib.contextmanager
def _first_connection() -> Iterator[None]:
    """While a command opens its first connection, leveret.amqp's warnings are held
    back: a broker that refuses the handshake is logged by the library and raised,
    and the command reports what was raised, once."""

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.name.startswith("leveret.amqp")

    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


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
