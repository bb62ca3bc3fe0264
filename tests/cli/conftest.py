"""Running the ``leveret`` command as a user does: a subprocess, its output and exit status."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import AMQP_URL

APP_MODULE = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path
    from leveret import App

    app = App(prefix=os.environ["APP_PREFIX"])
    out = Path(os.environ["APP_OUT"])

    @app.task(prefetch_count=10)
    async def record(*, n: int) -> None:
        with out.open("a") as f:
            f.write(f"{os.getpid()} {n}\\n")

    @app.task
    async def hog(*, seconds: float) -> None:
        with out.open("a") as f:
            f.write(f"{os.getpid()} hogging\\n")
        time.sleep(seconds)  # blocks its event loop: its process cannot stop in time

    @app.task
    def nap(*, seconds: float) -> None:
        with out.open("a") as f:
            f.write(f"{os.getpid()} napping\\n")
        time.sleep(seconds)  # a plain function blocked in C: no interruption reaches it

    @app.rpc
    def multiply(*, x: int, y: int) -> int:
        return x * y
    """
)


@dataclass
class Project:
    """A folder with a user's app module (``demoapp:app``) and the environment to run it."""

    folder: Path
    env: dict[str, str]

    @property
    def prefix(self) -> str:
        return self.env["APP_PREFIX"]

    @property
    def out(self) -> Path:
        return self.folder / "out.txt"

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment: no AMQP_URL unless given, unbuffered output."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "80",
    }
    env.update(extra)
    return env


@pytest.fixture
def project(tmp_path: Path) -> Project:
    (tmp_path / "demoapp.py").write_text(APP_MODULE)
    env = base_env(
        AMQP_URL=AMQP_URL,
        APP_PREFIX=f"app-{uuid.uuid4().hex[:8]}",
        APP_OUT=str(tmp_path / "out.txt"),
        PYTHONPATH=str(tmp_path),
    )
    return Project(tmp_path, env)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "leveret.cli", *args]


def leveret(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``leveret ARGS`` to its end."""
    return subprocess.run(
        command(*args),
        env=dict(env) if env is not None else base_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn(*args: str, env: Mapping[str, str]) -> subprocess.Popen[str]:
    """Start ``leveret ARGS`` and leave it running."""
    return subprocess.Popen(
        command(*args), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def free_port() -> int:
    """A port nothing listens on (the OS just handed it out and took it back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def command_line(pid: int) -> list[bytes]:
    """What ``ps`` shows of a process: its argv."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


class Reaper:
    """Processes a test started, and the pids of their children: killed at its end if
    they are still there."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []
        self.pids: list[int] = []

    def __call__(self, process: subprocess.Popen[str]) -> subprocess.Popen[str]:
        self.processes.append(process)
        return process

    def reap(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    reaper = Reaper()
    yield reaper
    reaper.reap()
