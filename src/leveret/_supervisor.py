"""``leveret run --processes N``: start N runners, pass signals on, stop them all together.

Each runner gets the broker URL on its stdin, never in its command line (which ``ps``
shows anyone). Each is in a process group of its own, so that Ctrl-C reaches only the
supervisor, which passes it on once: a second signal would cut a runner's graceful stop
short, as a second Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("leveret.cli")

#: What a runner gets beyond its shutdown timeout to close its connection before it
#: is killed.
STOP_GRACE = 10.0


class NotStopped(Exception):
    """Runners that did not stop within their bound were killed."""


def run_processes(commands: Sequence[Sequence[str]], url: str, shutdown_timeout: float) -> int:
    """Run one process per command until SIGINT or SIGTERM, or until one exits; the
    worst exit status (a process killed by signal N counts as 128 + N).

    A signal is passed on to every process; then they get ``shutdown_timeout`` plus
    :data:`STOP_GRACE` seconds before those left are killed. A process that exits on
    its own takes the others down (SIGTERM), so that whatever supervises this one
    sees the failure.

    Raises:
        NotStopped: processes were still there at the deadline (they were killed).
    """
    children: list[subprocess.Popen[str]] = []
    deadline: list[float] = []  # set once asked to stop

    def stop(signum: int, frame: object = None) -> None:
        if not deadline:
            deadline.append(time.monotonic() + shutdown_timeout + STOP_GRACE)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for command in commands:
            if deadline:
                break
            child = subprocess.Popen(command, stdin=subprocess.PIPE, text=True, process_group=0)
            children.append(child)
            assert child.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it died at once: its status says why
                child.stdin.write(url + "\n")
                child.stdin.close()
        log.info("started %d processes: %s", len(children), ", ".join(str(c.pid) for c in children))
        return _supervise(children, deadline, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _supervise(
    children: list[subprocess.Popen[str]],
    deadline: list[float],
    stop: Callable[[int], None],
) -> int:
    while running := [child for child in children if child.poll() is None]:
        if not deadline:
            exited = next((child for child in children if child.returncode is not None), None)
            if exited is not None:
                log.error(
                    "process %d exited with status %d: stopping the others",
                    exited.pid,
                    exit_status(exited.returncode),
                )
                stop(signal.SIGTERM)
        elif time.monotonic() > deadline[0]:
            for child in running:
                child.kill()
                child.wait()
            raise NotStopped(
                f"{len(running)} of {len(children)} processes did not stop in time "
                f"(--shutdown-timeout plus {STOP_GRACE:g} s): killed"
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            running[0].wait(timeout=0.2)
    return max(exit_status(child.returncode) for child in children)


def exit_status(returncode: int) -> int:
    """A process's exit status as a shell shows it (killed by signal N: 128 + N)."""
    return returncode if returncode >= 0 else 128 - returncode
