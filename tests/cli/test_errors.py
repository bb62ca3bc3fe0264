"""Every error of the ``leveret`` command: one line on stderr that names the problem and
the fix, the exit status of its kind (1: failed while running, 2: bad usage), no
traceback, no password."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from leveret import __version__
from tests.cli.conftest import Project, base_env, free_port, leveret
from tests.conftest import AMQP_URL

REFUSED = (
    "Is RabbitMQ running? Start it with rabbitmq-server -detached, "
    "or point --url (or AMQP_URL) at your broker."
)
CHECK_ADDRESS = "Check the host and port in the URL (--url or AMQP_URL)."
HOST = AMQP_URL.split("@")[-1].split("/")[0]  # 127.0.0.1:5672


def assert_one_line(result: subprocess.CompletedProcess[str], line: str, status: int) -> None:
    """The command printed exactly ``line`` on stderr, nothing on stdout."""
    assert result.returncode == status, result.stderr
    assert result.stderr == line + "\n"
    assert result.stdout == ""


# -- bad usage: exit status 2 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "http://localhost/",
            "bad --url: URL scheme 'http' is not supported: use amqp:// or amqps://",
        ),
        (
            "guest:secret@localhost:5672",
            "bad --url: it has no scheme; write amqp://user:password@host:port/vhost",
        ),
        (
            "amqp://guest:secret@localhost:abc/",
            "bad --url: URL option port='abc' is not a whole number",
        ),
        (
            "amqp://guest:secret@localhost:99999/",
            "bad --url: URL option port=99999 is outside 1..65535",
        ),
        (
            "amqp://guest:secret@localhost/?heartbeat=abc",
            "bad --url: URL option heartbeat='abc' is not a whole number",
        ),
        ("", "--url is empty: give an amqp:// or amqps:// URL"),
    ],
)
def test_a_malformed_url_is_one_line_naming_what_is_wrong(url: str, problem: str) -> None:
    result = leveret("dlq", "list", "some.task", "--url", url)
    assert_one_line(result, f"leveret dlq list: {problem}", 2)
    assert "secret" not in result.stderr


def test_a_malformed_amqp_url_is_named_as_such() -> None:
    result = leveret("dlq", "list", "some.task", env=base_env(AMQP_URL="http://x/"))
    assert_one_line(
        result,
        "leveret dlq list: bad AMQP_URL: URL scheme 'http' is not supported: use amqp:// or amqps://",
        2,
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ("run", "demoapp:app", "--processes", "0"),
            "leveret run: --processes must be at least 1, not 0",
        ),
        (
            ("run", "demoapp:app", "--prefetch", "0"),
            "leveret run: --prefetch must be at least 1, not 0",
        ),
        (
            ("run", "demoapp:app", "--shutdown-timeout", "-1"),
            "leveret run: --shutdown-timeout must be at least 0, not -1",
        ),
        (
            ("run", "demoapp:app", "--processes", "2", "--url", "memory://"),
            "leveret run: --processes above 1 needs RabbitMQ: memory:// is in one process",
        ),
        (
            ("run", "demoapp"),
            "leveret run: TARGET 'demoapp' is not module:attribute (e.g. myapp.tasks:app)",
        ),
        (
            ("run", "nosuchmodule:app"),
            "leveret run: cannot import 'nosuchmodule': No module named 'nosuchmodule'",
        ),
        (
            ("status", "demoapp:nothing"),
            "leveret status: TARGET 'demoapp:nothing': module 'demoapp' has no 'nothing'",
        ),
        (
            ("status", "demoapp:out"),
            "leveret status: TARGET 'demoapp:out' is PosixPath, not a leveret.App",
        ),
        (
            ("dlq", "show", "some.task", "--", "-1"),
            "leveret dlq show: INDEX must be at least 0, not -1",
        ),
        (("demo", "--tasks", "-5"), "leveret demo: --tasks must be at least 0, not -5"),
    ],
)
def test_a_bad_option_or_target_is_one_line_with_exit_status_2(
    project: Project, args: tuple[str, ...], line: str
) -> None:
    assert_one_line(leveret(*args, env=project.env), line, 2)


@pytest.mark.parametrize("args", [("run", "demoapp:app"), ("demo",)])
def test_asking_for_uvloop_without_it_says_how_to_install_it(
    project: Project, tmp_path: Path, args: tuple[str, ...]
) -> None:
    blocked = tmp_path / "without-uvloop"
    blocked.mkdir()
    (blocked / "uvloop.py").write_text("raise ImportError('not installed')\n")
    env = {**project.env, "PYTHONPATH": f"{blocked}:{project.env['PYTHONPATH']}"}
    assert_one_line(
        leveret(*args, "--loop", "uvloop", env=env),
        f"leveret {args[0]}: --loop uvloop: uvloop is not installed: "
        "pip install 'leveret[speed]' (or --loop asyncio)",
        2,
    )


def test_an_unknown_option_points_at_the_help() -> None:
    result = leveret("run", "demoapp:app", "--proceses", "2")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("leveret run: ")
    assert "--proceses" in result.stderr and result.stderr.endswith("(see leveret run --help)\n")


# -- the broker cannot be reached: exit status 1, the hint that fits --------------------


@contextlib.contextmanager
def listener(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on a port of its own that ``handle``s each connection; yields the port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        held = []
        while not stop.is_set():
            try:
                peer, _ = server.accept()
            except TimeoutError:
                continue
            held.append(peer)
            with contextlib.suppress(OSError):
                handle(peer)
        for peer in held:
            peer.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


def _silent(peer: socket.socket) -> None:
    """Accepts, then never says a word (a firewall that swallows, a stuck service)."""


def _hang_up(peer: socket.socket) -> None:
    """Accepts, then closes at once (not an AMQP server)."""
    peer.close()


def _unresolvable_host_error() -> str:
    try:
        socket.getaddrinfo("nosuchhost.invalid", 5672)
    except socket.gaierror as exc:
        return str(exc.strerror)
    raise AssertionError("nosuchhost.invalid resolves here")


def _tls_server(peer: socket.socket) -> None:
    """A TLS server whose certificate was signed by a CA nobody trusts."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    peer.settimeout(5)
    with contextlib.suppress(ssl.SSLError, OSError):
        context.wrap_socket(peer, server_side=True).close()


#: (what, the URL, how the line shows it, a server of the test's own, what the line says
#: after it). ``{port}`` is that server's port (or a free one); ``{host}`` the broker's.
CONNECT_FAILURES: list[tuple[str, str, str, Callable[[socket.socket], None] | None, str]] = [
    (
        "wrong credentials",
        "amqp://guest:wrong-secret@{host}/",
        "amqp://guest:******@{host}/",
        None,
        "the broker refused the user name or password (ACCESS_REFUSED). Check the "
        "credentials in the URL (--url or AMQP_URL).",
    ),
    (
        "unknown virtual host",
        "amqp://guest:guest@{host}/no-such-vhost",
        "amqp://guest:******@{host}/no-such-vhost",
        None,
        "NOT_ALLOWED - vhost no-such-vhost not found. Check the virtual host (the URL's "
        "path): it must exist (rabbitmqctl add_vhost NAME) and the user needs permissions "
        "on it (rabbitmqctl set_permissions).",
    ),
    (
        "TLS to a plain port",
        "amqps://guest:guest@{host}/",
        "amqps://guest:******@{host}/",
        None,
        "the TLS handshake failed (WRONG_VERSION_NUMBER). Is that port a TLS listener? "
        "RabbitMQ takes amqps:// on 5671 by default and amqp:// on 5672.",
    ),
    (
        "a certificate nobody vouched for",
        "amqps://guest:guest@127.0.0.1:{port}/",
        "amqps://guest:******@127.0.0.1:{port}/",
        _tls_server,
        "the broker's TLS certificate could not be verified (unable to get local issuer "
        "certificate). Name the CA that signed it in the URL: ?cafile=/path/to/ca.pem.",
    ),
    (
        "connection refused",
        "amqp://guest:guest@127.0.0.1:{port}/",
        "amqp://guest:******@127.0.0.1:{port}/",
        None,
        f"connection refused. {REFUSED}",
    ),
    (
        "a host name that does not resolve",
        "amqp://guest:guest@nosuchhost.invalid/",
        "amqp://guest:******@nosuchhost.invalid:5672/",
        None,
        "the host name does not resolve ({gaierror}). " + CHECK_ADDRESS,
    ),
    (
        "a server that never answers",
        "amqp://guest:guest@127.0.0.1:{port}/?connection_timeout=0.5",
        "amqp://guest:******@127.0.0.1:{port}/",
        _silent,
        "no answer in time. Check the host and port in the URL (--url or AMQP_URL), and "
        "that no firewall drops the connection.",
    ),
    (
        "a server that is not RabbitMQ",
        "amqp://guest:guest@127.0.0.1:{port}/",
        "amqp://guest:******@127.0.0.1:{port}/",
        _hang_up,
        "the server closed the connection during the AMQP handshake. Is it RabbitMQ on "
        "that port, and does it expect TLS (amqps://)?",
    ),
]


@pytest.mark.parametrize(
    ("url", "shown", "server", "says"),
    [case[1:] for case in CONNECT_FAILURES],
    ids=[case[0] for case in CONNECT_FAILURES],
)
def test_a_broker_that_cannot_be_reached_gets_the_hint_that_fits(
    request: pytest.FixtureRequest,
    url: str,
    shown: str,
    server: Callable[[socket.socket], None] | None,
    says: str,
) -> None:
    if "{host}" in url:
        request.getfixturevalue("amqp_url")  # the shared broker: skips (or fails in CI) without
    with listener(server) if server else contextlib.nullcontext(free_port()) as port:
        result = leveret("dlq", "list", "t", "--url", url.format(host=HOST, port=port))
    assert_one_line(
        result,
        f"leveret dlq list: cannot connect to {shown.format(host=HOST, port=port)}: "
        + says.format(gaierror=_unresolvable_host_error()),
        1,
    )


# -- the same error, the same line and status in every command ---------------------------

COMMANDS = [
    ("run", "demoapp:app"),
    ("run", "demoapp:app", "--processes", "2"),
    ("status", "demoapp:app"),
    ("demo",),
    ("dlq", "list", "t"),
    ("dlq", "show", "t"),
    ("dlq", "replay", "t"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_command_reports_an_unreachable_broker_alike(
    project: Project, args: tuple[str, ...]
) -> None:
    port = free_port()
    env = {**project.env, "AMQP_URL": f"amqp://guest:secret@127.0.0.1:{port}/"}
    where = " ".join(args[:2] if args[0] == "dlq" else args[:1])
    assert_one_line(
        leveret(*args, env=env),
        f"leveret {where}: cannot connect to amqp://guest:******@127.0.0.1:{port}/: "
        f"connection refused. {REFUSED}",
        1,
    )


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_every_command_reports_a_malformed_url_alike(
    project: Project, args: tuple[str, ...]
) -> None:
    where = " ".join(args[:2] if args[0] == "dlq" else args[:1])
    assert_one_line(
        leveret(*args, "--url", "amqp://guest:secret@localhost:0/", env=project.env),
        f"leveret {where}: bad --url: URL option port=0 is outside 1..65535",
        2,
    )


def test_leveret_run_reports_a_refused_login_once(amqp_url: str, project: Project) -> None:
    """run logs at info: the library's own warning about the refusal must not repeat it."""
    result = leveret("run", "demoapp:app", "--url", f"amqp://guest:wrong@{HOST}/", env=project.env)
    assert_one_line(
        result,
        f"leveret run: cannot connect to amqp://guest:******@{HOST}/: the broker refused "
        "the user name or password (ACCESS_REFUSED). Check the credentials in the URL "
        "(--url or AMQP_URL).",
        1,
    )


# -- help and version ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "names"),
    [
        (
            (),
            [
                "cancel",
                "dashboard",
                "demo",
                "dlq",
                "inspect",
                "run",
                "schedule",
                "status",
                "workers",
            ],
        ),
        (("dlq",), ["list", "replay", "show"]),
        (("schedule",), ["list"]),
    ],
)
def test_the_help_lists_every_command_in_full(group: tuple[str, ...], names: list[str]) -> None:
    result = leveret(*group, "--help")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("Commands:\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in commands] == names
    assert not any(line.endswith("...") for line in commands)
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_the_help_says_what_each_exit_status_means() -> None:
    result = leveret("--help")
    text = " ".join(result.stdout.split())
    assert "Exit status: 0 done; 1 a failure while running" in text
    assert "2 bad usage" in text and "130 interrupted" in text
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


@pytest.mark.parametrize("group", [(), ("dlq",)])
def test_a_group_without_its_command_shows_its_help(group: tuple[str, ...]) -> None:
    result = leveret(*group)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"Usage: leveret {' '.join((*group, ''))}[OPTIONS] COMMAND")
    assert "(see " not in result.stderr


def test_the_demo_help_is_plain_text() -> None:
    result = leveret("demo", "--help")
    assert result.returncode == 0, result.stderr
    assert "With --url memory:// it all runs in this process" in " ".join(result.stdout.split())
    assert "``" not in result.stdout


def test_version_names_the_installed_leveret() -> None:
    result = leveret("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"leveret {__version__}\n",
        "",
    )


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("def broken(:\n", "line 1: invalid syntax"),
        ("import os\nos.environ['NO_SUCH_SETTING']\n", "line 2: KeyError: 'NO_SUCH_SETTING'"),
    ],
)
def test_an_app_module_that_fails_to_import_is_one_line_naming_where(
    project: Project, source: str, words: str
) -> None:
    (project.folder / "badapp.py").write_text(source)
    result = leveret("run", "badapp:app", env=project.env)
    module = project.folder / "badapp.py"
    assert_one_line(result, f"leveret run: cannot import 'badapp': {module}, {words}", 2)
