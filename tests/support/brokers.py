"""Private RabbitMQ nodes for tests that stop, restart, block or reconfigure a broker.

The shared broker on 127.0.0.1:5672 is never touched by these tests. Node
names and ports derive from the test process id so parallel runs do not
collide; every node is stopped and its folder removed at the end, and
:data:`NODES_ROOT` too once no test run has a folder left in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

NODES_ROOT = Path("/tmp/leveret-nodes")


MAX_NODES = 10  # per test process: indexes 0..9
# Who uses which index, so that modules run in one process never share a node:
#   0: tests/faults/test_broker_restart.py    1: tests/faults/test_delayed_tasks.py
#   3: tests/amqp/conftest.py (private_node)  4: tests/amqp/test_tls.py
#   5, 6, 7: tests/faults/test_cluster.py     8: tests/faults/test_consumer_timeout.py
#   9: tests/amqp/test_message_size.py


def _base_port() -> int:
    # Ports 10000..19999, 20 per test process (an AMQP and a TLS port for each of
    # 10 nodes), with the Erlang distribution ports 10000 higher: all below Linux's
    # ephemeral range (32768+), so no outgoing connection can hold one of them.
    return 10000 + (os.getpid() % 500) * 2 * MAX_NODES


class PrivateNode:
    """One RabbitMQ node of the test's own: ``start()``, ``stop()``, ``ctl(...)``."""

    def __init__(
        self,
        index: int = 0,
        *,
        config: Iterable[str] = (),
        plugins: Iterable[str] = (),
        advanced: str = "",
    ) -> None:
        if not 0 <= index < MAX_NODES:
            raise ValueError(f"node index {index} is outside 0..{MAX_NODES - 1}")
        self.index = index
        self.name = f"lvt{os.getpid()}n{index}@localhost"
        self.port = _base_port() + index * 2
        self.tls_port = self.port + 1
        self.dir = NODES_ROOT / self.name.split("@")[0]
        self.config = list(config)
        self.plugins = list(plugins)
        #: Erlang terms for advanced.config (settings rabbitmq.conf has no key for).
        self.advanced = advanced

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.port + 10000),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.dir / "pid"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
        )
        return env

    def start(self) -> None:
        """Start the node (first time: create its folder and config) and wait for it."""
        if not self.dir.exists():
            self.dir.mkdir(parents=True)
            plugins = ",".join(self.plugins)
            (self.dir / "enabled_plugins").write_text(f"[{plugins}].\n")
            lines = [
                f"listeners.tcp.1 = 127.0.0.1:{self.port}",
                "loopback_users = none",
                *self.config,
            ]
            (self.dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
            (self.dir / "advanced.config").write_text(f"[{self.advanced}].\n")
            shutil.chown(self.dir, "rabbitmq", "rabbitmq")
            for path in self.dir.rglob("*"):
                shutil.chown(path, "rabbitmq", "rabbitmq")
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self._env(),
            check=True,
            capture_output=True,
        )
        self.wait_started()

    def wait_started(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = self.ctl("await_startup", check=False, timeout=timeout)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start: {result.stderr}")
            time.sleep(0.5)

    def ctl(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n <node> args...``."""
        return subprocess.run(
            ["rabbitmqctl", "-n", self.name, *args],
            env=self._env(),
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        """Stop the node (its data stays, so ``start()`` brings it back)."""
        self.ctl("stop", check=False)

    def destroy(self) -> None:
        """Stop the node and delete its folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[PrivateNode]:
        """Started for the ``with`` block, destroyed after it (whatever happened)."""
        try:
            self.start()
            yield self
        finally:
            self.destroy()


def consumer_timeout_node(index: int, timeout_ms: int) -> PrivateNode:
    """A node that closes the channel of a delivery left unacked for ``timeout_ms``.

    RabbitMQ 3.10 checks ``consumer_timeout`` on its channel tick, every few seconds
    by default: the tick is set to 200 ms so that the timeout fires when due.
    """
    return PrivateNode(
        index,
        config=[f"consumer_timeout = {timeout_ms}"],
        advanced="{rabbit, [{channel_tick_interval, 200}]}",
    )


def remove_nodes_root_if_empty() -> None:
    """Remove :data:`NODES_ROOT` if it is empty (at the end of a test session).

    Another test run's node folders keep it: only an empty folder is removed.
    """
    with contextlib.suppress(OSError):  # missing, or not empty
        NODES_ROOT.rmdir()
